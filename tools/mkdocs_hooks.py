"""MkDocs hook: the docstrings use Sphinx cross-reference roles
(:class:`~grafos.errors.Unsupported`); mkdocstrings renders Markdown, so a role
is shown as its name as code, the last dotted part when written with ``~``."""
from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([^<]*)</code>")


def _name(m: re.Match) -> str:
    tilde, target = m.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_name, html)
