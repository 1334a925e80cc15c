"""The ``grafos`` command. One module per concern registers its commands on
:data:`main`: ``demo`` (walkthrough), ``inspect`` (topics, describe, groups,
tail, produce on a live named bus), ``bench`` (benchmarks against peers),
``gc`` (remove named buses nobody uses any more).

Exit codes: 0 ok, 1 error reported by grafos, 2 usage error (click).
"""
from __future__ import annotations

import importlib

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grafos")
def main() -> None:
    """grafos: a message bus that forgets on a schedule."""


for _mod in ("demo", "inspect", "bench", "gc"):
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as e:   # a command module not written yet
        if e.name != f"{__name__}.{_mod}":
            raise
