"""Every Python example of the README runs as written on every backend: the
manager construction (``TopicManager()``) is replaced by the backend's, and
nothing else changes. A block that needs a capability the backend lacks
(transactions or share groups on JetStream) stops at a clear ``Unsupported``."""
from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

from grafos.errors import Unsupported
from grafos.mq.producer import kafka_partition
from grafos.mq.topic import TopicManager

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
_MAKE = "TopicManager()"
#: the blocks that use a bus (the others, such as the Queue's, have no backend to vary:
#: tests/test_readme.py runs every block as a script)
BUS_BLOCKS = [b for b in BLOCKS if _MAKE in b]


def _opener(bus, opened: list):
    """What ``TopicManager()`` becomes in a block: a manager on the bus under test."""
    def open_bus() -> object:
        if bus.kind == "inproc":
            m = TopicManager(size=64 << 20)
        elif bus.kind == "named":
            m = TopicManager.open(bus.address)
        elif bus.kind == "file":
            m = TopicManager.open(path=bus.address)
        else:
            m = TopicManager.connect(bus.address)
        opened.append(m)
        return m
    return open_bus


def _run(code: str, bus) -> tuple[dict, str]:
    opened: list = []
    scope: dict = {"__open_bus__": _opener(bus, opened), "__name__": "__readme__"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace(_MAKE, "__open_bus__()"), str(README), "exec"), scope)  # noqa: S102
        if "mgr" in scope:
            scope["topics"] = scope["mgr"].topics()
    finally:
        for m in opened:
            m.close()
    return scope, out.getvalue()


def test_the_readme_should_make_its_managers_in_one_spelling_the_suite_can_replace():
    # a block that made its manager another way would run in process only here
    assert len(BUS_BLOCKS) >= 5
    for code in BLOCKS:
        assert "TopicManager(" not in code.replace(_MAKE, "")


@pytest.mark.parametrize("index", range(len(BUS_BLOCKS)), ids=[f"block{i}" for i in range(len(BUS_BLOCKS))])
def test_every_readme_python_block_should_run_unchanged_on_every_backend(bus, index):
    code = BUS_BLOCKS[index]
    if "begin(" in code and not bus.caps.transactions:
        # the block's offsets store and its transaction both need what the bus lacks
        with pytest.raises(Unsupported, match="KvOffsetStore|transactions are not available"):
            _run(code, bus)
        return
    if "share_consumer(" in code and not bus.caps.share_groups:
        with pytest.raises(Unsupported, match="share groups"):
            _run(code, bus)
        return
    scope, printed = _run(code, bus)
    # what a block says it prints, it prints
    for expected in re.findall(r"print\(.*?\)\s+# (.+)", code):
        assert expected.strip() in printed


def test_the_walkthrough_should_do_what_it_says_on_every_backend(bus):
    # the block that wires a group by hand and registers every partition's lease
    walkthrough = [b for b in BLOCKS if "ConsumerGroup(" in b and "partition_leases" in b]
    assert len(walkthrough) == 1
    scope, _ = _run(walkthrough[0], bus)
    p = kafka_partition(b"user-42", 4)
    assert scope["store"].committed("processors", "events", p) == 1
    assert scope["group"].assignments()[p] == "worker-1"
    assert len(scope["renewals"]) == 4            # every partition's lease, on every bus
    assert scope["topics"] == ["events", "events-dlq"]
