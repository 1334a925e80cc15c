"""The README's walkthrough snippet runs as written."""
from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _walkthrough_snippet() -> str:
    text = README.read_text()
    section = text.split("## The walkthrough", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under 'The walkthrough'"
    return match.group(1)


def test_readme_walkthrough_should_run_and_do_what_it_says():
    scope: dict = {}
    exec(compile(_walkthrough_snippet(), str(README), "exec"), scope)   # noqa: S102 - our own README
    mgr = scope["mgr"]
    assert mgr.topics() == ["events", "events-dlq"]
    # the keyed order landed on Kafka's partition for its key, and was consumed and committed
    from grafos.mq.producer import kafka_partition
    p = kafka_partition(b"user-42", 4)
    assert scope["store"].committed("processors", "events", p) == 1
    assert scope["group"].assignments()[p] == "worker-1"
