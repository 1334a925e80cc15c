"""``grafos demo``: the walkthrough on an in-process bus (see :mod:`grafos.demo`),
or with ``--nats URL`` on a JetStream server."""
from __future__ import annotations

import click

from . import main


@main.command()
@click.option("--nats", "nats_url", metavar="URL", default=None,
              help="Run it on the JetStream server at URL (nats://host:port).")
def demo(nats_url: str | None) -> None:
    """Walk through the bus: topics with retention, keyed producing, a consumer
    group with failover and fencing, dead letters, lease renewal."""
    from ..demo import run
    run(nats=nats_url)
