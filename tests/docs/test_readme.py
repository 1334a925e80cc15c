"""The README's Python examples run as written: the walkthrough (checked for
what it says it does) and every other block, each on its own."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers.snippets import README, python_blocks


def _walkthrough_snippet() -> str:
    text = README.read_text()
    section = text.split("## The walkthrough", 1)[1].split("\n## ", 1)[0]
    # the section opens with the recommended consumer; the walkthrough proper wires a group by hand
    blocks = [b for b in python_blocks(section) if "ConsumerGroup(" in b]
    assert blocks, "README has no walkthrough block (with a ConsumerGroup) under 'The walkthrough'"
    return blocks[0]


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


BLOCKS = python_blocks(README.read_text())


def test_readme_should_have_its_walkthrough_and_link_only_to_pages_that_exist():
    assert _walkthrough_snippet() in BLOCKS and len(BLOCKS) >= 2     # subscribe, the walkthrough
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert any(link.startswith("docs/") for link in links), "README does not link to the documentation"
    missing = [link for link in links if "://" not in link and not (README.parent / link).is_file()]
    assert not missing, f"README links to files that do not exist: {missing}"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_readme_python_block_should_run_on_its_own(code, tmp_path):
    # a fresh interpreter per block, as a reader would paste it
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
