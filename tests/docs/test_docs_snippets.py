"""Every Python block of the documentation site (docs/**/*.md) runs as written,
each in a fresh interpreter, as a reader would paste it. Blocks that connect
to ``nats://127.0.0.1:4222`` run against the test NATS server instead."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from helpers.snippets import docs_blocks

NATS_URL = "nats://127.0.0.1:4222"
BLOCKS = docs_blocks()


def _run(code: str, cwd: pathlib.Path) -> None:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stderr


def test_docs_should_have_their_python_examples():
    pages = {name.split(":")[0] for name, _ in BLOCKS}
    # the walkthrough, each concept with an example, both backends
    for page in ["getting-started.md", "concepts/fabric.md", "concepts/rings.md", "concepts/groups.md",
                 "concepts/gates.md", "concepts/transactions.md", "concepts/share-groups.md",
                 "backends/shared-memory.md", "jetstream.md"]:
        assert f"docs/{page}" in pages, f"docs/{page} has no python example"


@pytest.mark.parametrize("code", [c for _, c in BLOCKS if NATS_URL not in c],
                         ids=[n for n, c in BLOCKS if NATS_URL not in c])
def test_every_docs_python_block_should_run_on_its_own(code, tmp_path):
    _run(code, tmp_path)


@pytest.mark.parametrize("code", [c for _, c in BLOCKS if NATS_URL in c],
                         ids=[n for n, c in BLOCKS if NATS_URL in c])
def test_every_docs_jetstream_block_should_run_against_a_server(code, tmp_path, nats_url):
    _run(code.replace(NATS_URL, nats_url), tmp_path)
