"""The ``grafos`` command. One module per concern registers its commands on
:data:`main`: ``demo`` (walkthrough), ``inspect`` (topics, describe, groups,
tail, produce on a live named bus), ``bench`` (benchmarks against peers),
``gc`` (remove named buses nobody uses any more), ``metrics`` (a Prometheus endpoint for a live bus),
``top`` (a live view of a bus).

Exit codes: 0 ok, 1 error reported by grafos, 2 usage error (click).
"""
from __future__ import annotations

import importlib

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grafos")
def main() -> None:
    """grafos: a message bus that forgets on a schedule."""


COMMAND_MODULES = ("demo", "inspect", "bench", "gc", "metrics", "top")


class CommandModuleError(ImportError):
    """A command module of the ``grafos`` command failed to import: the command
    would be missing, so ``grafos`` refuses to start instead."""


for _mod in COMMAND_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except Exception as e:   # a missing command is a broken install, never a quiet one
        raise CommandModuleError(f"grafos: the command module {__name__}.{_mod} failed to import: "
                                 f"{type(e).__name__}: {e}") from e
