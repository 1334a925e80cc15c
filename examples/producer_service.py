"""A producer service on a named bus. Run it in one terminal and
``examples/worker.py`` in one or more others::

    python examples/producer_service.py shop             # terminal 1
    python examples/worker.py shop                       # terminal 2 (and 3, 4, ...)
    grafos topics shop; grafos groups shop               # terminal 5: look inside

It creates the bus ``shop`` (``/dev/shm/grafos.shop``) and the topic
``orders`` if they are not there yet, then sends one order per tick, keyed by
customer so each customer's orders stay in order on one partition. It also
renews the partitions' leases: retention is the lease TTL, so when this
service stops renewing, the orders expire ``--retention`` seconds later and
their memory returns to the system. Ctrl-C stops it cleanly; ``--unlink``
also removes the bus name on the way out (attached workers keep working
until they exit).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from grafos.errors import AlreadyExists
from grafos.leasekit import RenewalManager
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager

from _service import serve   # examples/_service.py, beside this script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Send orders to a named grafos bus.")
    ap.add_argument("bus", help="bus name (shared memory /dev/shm/grafos.BUS)")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--partitions", type=int, default=8, help="partitions if the topic is created (default 8)")
    ap.add_argument("--retention", type=float, default=300.0,
                    help="seconds an order lives after renewals stop (default 300)")
    ap.add_argument("--rate", type=float, default=5.0, help="orders per second (default 5)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many orders (default: run until Ctrl-C)")
    ap.add_argument("--customers", type=int, default=12, help="distinct customer keys (default 12)")
    ap.add_argument("--quiet", action="store_true", help="print only a summary")
    ap.add_argument("--unlink", action="store_true", help="remove the bus name on exit")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.partitions < 1 or args.retention <= 0 or args.count < 0 or args.customers < 1:
        ap.error("--rate, --partitions, --retention, --customers must be positive and --count >= 0")
    return args


def open_topic(args: argparse.Namespace) -> TopicManager:
    """Attach to (or create) the bus and the topic; several services may race here."""
    mgr = TopicManager.open(args.bus, size=64 << 20)
    try:
        mgr.create(args.topic, TopicConfig(args.partitions, 4096, 256, args.retention))
        print(f"created topic {args.topic!r} with {args.partitions} partitions on bus {args.bus!r}")
    except AlreadyExists:
        n = mgr.topic(args.topic).n
        print(f"topic {args.topic!r} already on bus {args.bus!r} ({n} partitions)")
        if any(not p.alive for p in mgr.describe(args.topic).partitions):
            mgr.restart(args.topic)
            print(f"topic {args.topic!r} had expired: restarted with fresh leases")
    return mgr


def run(args: argparse.Namespace) -> int:
    mgr = open_topic(args)
    renewals = RenewalManager(mgr)
    renewals.register_topic(args.topic)
    prod = Producer(args.topic).with_partitioner(Partitioner.KeyHash)
    rng = random.Random()
    sent = 0
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    next_tick = 0.0
    try:
        while args.count == 0 or sent < args.count:
            now = time.monotonic()
            if now >= next_tick:
                renewals.tick()            # keep retention rolling while we run
                next_tick = now + 1.0
            customer = f"customer-{rng.randrange(args.customers)}"
            order = {"order": sent, "customer": customer, "amount": round(rng.uniform(1, 500), 2),
                     "at": time.time()}
            part, off = prod.send_keyed(mgr, customer.encode(), json.dumps(order).encode())
            sent += 1
            if not args.quiet:
                print(f"sent order {sent - 1:>6} for {customer:<12} -> partition {part} offset {off}",
                      flush=True)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped after {sent} orders; the orders expire {args.retention:g}s after the last renewal",
              flush=True)
        mgr.close()
        if args.unlink:
            TopicManager.unlink(args.bus)
            print(f"removed bus {args.bus!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(run, parse_args(argv))      # SIGTERM stops us the way Ctrl-C does


if __name__ == "__main__":
    sys.exit(main())
