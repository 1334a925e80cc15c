"""What the example services share (``producer_service.py``, ``worker.py``):
SIGTERM (a service manager, ``kill``) stops them the way Ctrl-C does, and an
error ends them with one line on stderr and exit status 1. Imported from the
scripts' own directory, so they still run as ``python examples/<script>.py``."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from grafos.errors import GrafosError


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
          errors: tuple[type[BaseException], ...] = (GrafosError,)) -> int:
    """``run(args)`` with SIGTERM raising KeyboardInterrupt; ``errors`` print and return 1."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        return run(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
