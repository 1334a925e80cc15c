"""docs/architecture.md names the file of each layer and building block: every
path it names exists, and every class it puts in a file is defined there, so
the page cannot drift from the tree without this failing."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"`((?:src|csrc|tests|benchmarks|tools|docs)/[\w./-]+)`")


def _rows() -> list[list[str]]:
    """The cells of every table row of the page."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in PAGE.read_text().splitlines() if line.startswith("|") and "---" not in line]


def _classes(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}


def test_every_path_the_page_names_exists():
    named = set(PATH.findall(PAGE.read_text()))
    assert len(named) > 30
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_class_the_page_puts_in_a_file_is_defined_there():
    checked = 0
    for cells in _rows():
        files = [f for c in cells for f in PATH.findall(c) if f.endswith(".py")]
        if len(cells) < 3 or len(files) != 1:
            continue
        # the class column: names in backticks, before any parenthesis that names another module
        classes = re.findall(r"`(\w+)`", cells[2].split("(")[0])
        defined = _classes(ROOT / files[0])
        for name in classes:
            assert name in defined, f"docs/architecture.md puts class {name} in {files[0]}, which does not define it"
            checked += 1
    assert checked > 20
