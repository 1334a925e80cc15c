"""A worker of the consumer group "workers" on a named bus; see
``examples/producer_service.py``. Start as many as you like, in as many
terminals: they share the topic's partitions with no coordinator process
(the group's state lives in the bus), and when one stops -- Ctrl-C, or killed
-- the others take over its partitions from its last committed offset::

    python examples/worker.py shop
    python examples/worker.py shop --member alice

Ctrl-C leaves the group at once (its partitions go to the others without
waiting for the stale threshold). ``kill -9`` does not: the others take over
after ``--stale`` seconds, and re-process only what this worker had polled
but not yet committed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from grafos.errors import Fenced, GrafosError
from grafos.fabric import Fabric
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.topic import TopicManager

from _service import serve   # examples/_service.py, beside this script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Process orders from a named grafos bus as a group member.")
    ap.add_argument("bus", help="bus name (shared memory /dev/shm/grafos.BUS)")
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--group", default="workers")
    ap.add_argument("--member", default=f"{socket.gethostname().split('.')[0]}-{os.getpid()}",
                    help="this worker's name in the group (default host-pid)")
    ap.add_argument("--stale", type=float, default=5.0,
                    help="seconds without a heartbeat before others take our partitions (default 5)")
    ap.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait for the bus and topic to appear (default 60)")
    ap.add_argument("--quiet", action="store_true", help="print only assignment changes and a summary")
    args = ap.parse_args(argv)
    if args.stale <= 0 or args.wait < 0:
        ap.error("--stale must be positive and --wait >= 0")
    return args


def wait_for_topic(args: argparse.Namespace) -> TopicManager:
    """The producer service creates the bus and topic; if we start first, wait."""
    deadline = time.monotonic() + args.wait
    said = False
    while True:
        if Fabric.exists(args.bus):
            mgr = TopicManager.open(args.bus, create=False)
            if mgr.exists(args.topic):
                return mgr
            mgr.close()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no topic {args.topic!r} on bus {args.bus!r} after {args.wait:g}s "
                               "(start examples/producer_service.py first)")
        if not said:
            print(f"waiting for topic {args.topic!r} on bus {args.bus!r}...", flush=True)
            said = True
        time.sleep(0.2)


def run(args: argparse.Namespace) -> int:
    mgr = wait_for_topic(args)
    n = mgr.topic(args.topic).n
    store = FabricOffsetStore(mgr)
    group = ConsumerGroup(args.group, args.topic, n, args.stale, mgr=mgr)
    consumer = group.consumer(args.member)
    me = args.member
    print(f"{me}: joined group {args.group!r} on {args.topic!r} ({n} partitions)", flush=True)
    owned: list[int] = []
    done = 0
    try:
        while True:
            now_owned = group.claim(me)            # heartbeat, give back or take partitions
            if now_owned != owned:
                print(f"{me}: partitions {owned or '[]'} -> {now_owned or '[]'}", flush=True)
                owned = now_owned
                if owned:
                    consumer.assign(owned)
                    consumer.seek(mgr, store, SeekPolicy.Committed)
            if not owned:
                time.sleep(0.2)
                continue
            for part, msg in consumer.poll(mgr, 100, timeout=0.2):
                order = json.loads(msg.value)
                done += 1
                if not args.quiet:
                    print(f"{me}: order {order['order']:>6} for {order['customer']:<12} "
                          f"{order['amount']:>8.2f}  (partition {part} offset {msg.offset})", flush=True)
            try:
                consumer.commit(store)             # commit before the next claim
            except Fenced as e:
                print(f"{me}: lost partitions {getattr(e, 'partitions', '?')} to another member", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if owned:
                consumer.commit(store)
        except GrafosError:
            pass
        group.leave(me)
        print(f"{me}: processed {done} orders, left the group", flush=True)
        mgr.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # SIGTERM stops us the way Ctrl-C does: commit, leave the group, exit
        return serve(run, args, (GrafosError, TimeoutError))
    except KeyboardInterrupt:       # while still waiting for the bus
        return 0


if __name__ == "__main__":
    sys.exit(main())
