"""``mypy --strict`` passes on the code a reader copies: every Python block of
the README and of the documentation site, and ``examples/``, type-checked
against the installed package (its ``py.typed`` and ``_fast.pyi``)."""
from __future__ import annotations

import re
import shutil

from mypy import api

from helpers.snippets import EXAMPLES, docs_blocks, readme_blocks


def test_the_readme_the_docs_and_the_examples_should_pass_mypy_strict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # mypy names files relative to here: blocks/README_md_1.py:12
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    for where, code in readme_blocks() + docs_blocks():
        # one module per block, named after where it is: "docs/concepts/fabric.md:0" -> docs_concepts_fabric_md_0
        (blocks / (re.sub(r"\W", "_", where) + ".py")).write_text(code)
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    out, err, status = api.run(["--strict", "--cache-dir", "mypy-cache", "--no-color-output", "blocks", "examples"])
    assert status == 0, out + err
