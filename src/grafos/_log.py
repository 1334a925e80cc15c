"""grafos's loggers: one per area under ``grafos`` (``grafos.group``,
``grafos.fabric``, ``grafos.producer``, ``grafos.leasekit``,
``grafos.transaction``, ``grafos.jetstream``). The ``grafos`` logger has a
NullHandler, as a library's should: records reach an application once it
configures logging. They are the events an operator needs (rebalances,
fences, expired and reaped leases, lock takeovers, long blocks, aborted
transactions, reconnects), never one per message."""
from __future__ import annotations

import logging

logging.getLogger("grafos").addHandler(logging.NullHandler())


def get(area: str) -> logging.Logger:
    """The logger ``grafos.<area>``."""
    return logging.getLogger(f"grafos.{area}")
