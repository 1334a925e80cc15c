"""Every Python example of the README and of the documentation site (docs/)
that makes a bus runs as written on every backend: the manager construction
(``TopicManager()``) is replaced by the backend's, and nothing else changes.
A block that needs a capability the backend lacks (transactions or share
groups on JetStream) stops at a clear ``Unsupported``."""
from __future__ import annotations

import contextlib
import io
import re

import pytest

from grafos.errors import Unsupported
from grafos.mq.producer import kafka_partition
from grafos.mq.topic import TopicManager
from helpers.snippets import README, docs_blocks, readme_blocks

BLOCKS = [code for _, code in readme_blocks()]
_MAKE = "TopicManager()"


def _bus_blocks() -> list[tuple[str, str]]:
    """(where, code) of every block that makes a bus, README first, then the site's pages.

    The others (the Queue's, the ones that open a named bus or connect to a
    server) have no backend to vary: tests/test_readme.py and
    tests/test_docs_snippets.py run every block as a script."""
    return [(where, code) for where, code in readme_blocks() + docs_blocks() if _MAKE in code]


BUS_BLOCKS = _bus_blocks()


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


def _run(code: str, bus, where: str = str(README)) -> tuple[dict, str]:
    opened: list = []
    scope: dict = {"__open_bus__": _opener(bus, opened), "__name__": "__readme__"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code.replace(_MAKE, "__open_bus__()"), where, "exec"), scope)  # noqa: S102
        if "mgr" in scope:
            scope["topics"] = scope["mgr"].topics()
    finally:
        for m in opened:
            m.close()
    return scope, out.getvalue()


def test_the_readme_and_the_site_should_make_their_managers_in_one_spelling_the_suite_can_replace():
    # a block that made its manager another way would run in process only here
    where = {w.split(":")[0] for w, _ in BUS_BLOCKS}
    assert "README.md" in where and len(where) >= 5      # the README, the getting started page, the concepts
    for w, code in BUS_BLOCKS + [("README.md", b) for b in BLOCKS]:
        assert "TopicManager(" not in code.replace(_MAKE, ""), w
    # a block run only under `if __name__ == "__main__":` would run nothing here
    assert not [w for w, code in BUS_BLOCKS if "__main__" in code]


@pytest.mark.parametrize("index", range(len(BUS_BLOCKS)), ids=[w for w, _ in BUS_BLOCKS])
def test_every_readme_and_docs_python_block_should_run_unchanged_on_every_backend(bus, index):
    where, code = BUS_BLOCKS[index]
    if "begin(" in code and not bus.caps.transactions:
        # the block's offsets store and its transaction both need what the bus lacks
        with pytest.raises(Unsupported, match="KvOffsetStore|transactions are not available"):
            _run(code, bus, where)
        return
    needs = [("loan(", bus.caps.loans, "loans write a message in place"),
             ("on_full=\"raise\"", bus.caps.gating, "gating"),
             ("on_full=\"block\"", bus.caps.gating, "gating"),
             ("mgr.fabric", bus.caps.shared_memory, "has no fabric")]
    lacking = [why for spelling, has, why in needs if spelling in code and not has]
    if lacking:
        with pytest.raises(Unsupported, match="|".join(lacking)):
            _run(code, bus, where)
        return
    if "share_consumer(" in code and not bus.caps.share_groups:
        with pytest.raises(Unsupported, match="share groups"):
            _run(code, bus, where)
        return
    scope, printed = _run(code, bus, where)
    # what a block says it prints, it prints (a comment after the value says why: "# 8: every one")
    for expected in re.findall(r"print\(.*?\)\s+# (.+)", code):
        assert expected.split(": ")[0].strip() in printed


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
