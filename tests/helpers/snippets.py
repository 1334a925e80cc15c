"""The Python blocks a reader sees: the README's and the documentation site's
(docs/**/*.md), as (name, code) pairs, for the tests that run them and the
one that type-checks them."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a markdown text, in order."""
    return _PYTHON.findall(text)


def page_blocks(page: pathlib.Path) -> list[tuple[str, str]]:
    """``("docs/concepts/fabric.md:0", code)``: each block named by its page
    (relative to the repository) and its index on the page."""
    return [(f"{page.relative_to(ROOT)}:{i}", code) for i, code in enumerate(python_blocks(page.read_text()))]


def readme_blocks() -> list[tuple[str, str]]:
    return page_blocks(README)


def docs_blocks() -> list[tuple[str, str]]:
    return [b for page in sorted(DOCS.rglob("*.md")) for b in page_blocks(page)]
