"""``grafos metrics NAME --port 9464``: serve ``/metrics`` (Prometheus text
format) for a live bus until interrupted. The bus is read at every scrape;
see :mod:`grafos.metrics` for what is exported. Needs the ``metrics`` extra."""
from __future__ import annotations

import signal
import sys
import threading

import click

from . import main
from .inspect import NAME, _bus


@main.command()
@NAME
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="TCP port to serve on (0: any free port; the URL is printed).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0 for every interface).")
def metrics(name: str, port: int, host: str) -> None:
    """Serve Prometheus metrics of bus NAME on http://HOST:PORT/metrics: per partition
    produced, lost, abandoned, lease TTL and reserved bytes; per group consumed, lag,
    members, stale members and the assignment map. Stops on SIGINT or SIGTERM."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from ..metrics import BusCollector
    except ImportError:
        raise click.ClickException('grafos metrics needs prometheus-client, which is not installed: '
                                   'pip install "grafos[metrics]"') from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _bus(name) as mgr:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BusCollector(mgr))
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
        click.echo(f"serving http://{host}:{server.server_port}/metrics for bus {name!r}")
        sys.stdout.flush()
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
