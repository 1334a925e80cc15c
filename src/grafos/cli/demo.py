"""``grafos demo``: the walkthrough on an in-process bus (see :mod:`grafos.demo`)."""
from __future__ import annotations

from . import main


@main.command()
def demo() -> None:
    """Walk through the bus: topics with retention, keyed producing, a consumer
    group with failover and fencing, dead letters, lease renewal."""
    from ..demo import run
    run()
