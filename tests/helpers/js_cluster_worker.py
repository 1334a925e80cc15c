"""A producer or a group consumer process for the 3-node cluster test.

    python js_cluster_worker.py produce <servers> <name> <out> <stop-file>
    python js_cluster_worker.py consume <servers> <name> <out> <stop-file>

A producer sends keyed messages until the stop file appears and writes one
line per *acknowledged* message: ``A <partition> <offset> <value>``. A
consumer is a member of group "workers": it claims, seeks to the committed
offsets, polls, writes ``C <partition> <offset> <value>`` per message, then
commits and writes ``K <partition> <offset>`` per acknowledged commit and
``R`` per rewind (every seek to committed offsets). Errors of a node going
away (Unavailable, Fenced, LockTimeout, ...) are written as ``E`` lines and
the loop goes on; it leaves the group when ``<stop-file>.drained`` appears.
"""
from __future__ import annotations

import os
import sys
import time

from grafos.errors import GrafosError
from grafos.jetstream import KvOffsetStore
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

TOPIC = "orders"
PARTITIONS = 2
STALE = 3.0
BATCH = 50


def produce(mgr, name: str, out, stop: str) -> None:   # noqa: ANN001
    prod = Producer(TOPIC)
    n = 0
    while not os.path.exists(stop):
        value = f"{name}-{n}"
        try:
            p, off = prod.send_keyed(mgr, f"key-{n % 17}".encode(), value.encode())
            out.write(f"A {p} {off} {value}\n")
        except GrafosError as e:
            out.write(f"E {type(e).__name__} {str(e)[:200]!r}\n")
        out.flush()
        n += 1
        time.sleep(0.005)


def consume(mgr, name: str, out, stop: str) -> None:   # noqa: ANN001
    group = ConsumerGroup("workers", TOPIC, PARTITIONS, STALE, mgr=mgr)
    store = KvOffsetStore(mgr)
    consumer = group.consumer(name)
    owned: list[int] | None = None
    last_beat = 0.0
    while not os.path.exists(stop + ".drained"):
        try:
            if owned is None or time.monotonic() - last_beat > STALE / 3:
                now_owned = group.claim(name)
                last_beat = time.monotonic()
                if now_owned != owned:
                    owned = now_owned
                    consumer.assign(owned)
                    consumer.seek(mgr, store, SeekPolicy.Committed)
                    out.write("R\n")
            if not owned:
                time.sleep(0.1)
                continue
            msgs = consumer.poll(mgr, BATCH, timeout=0.2)
            for p, m in msgs:
                out.write(f"C {p} {m.offset} {m.value.decode()}\n")
            if msgs:
                done = consumer.commit(store)
                for p, off in done.items():
                    out.write(f"K {p} {off}\n")
        except GrafosError as e:       # Unavailable, Fenced, LockTimeout while a node is down
            out.write(f"E {type(e).__name__} {str(e)[:200]!r}\n")
            owned = None          # claim again, and seek to the committed offsets
            time.sleep(0.1)
        out.flush()
    try:
        group.leave(name)
    except GrafosError:
        pass


def main() -> int:
    role, servers, name, path, stop = sys.argv[1:6]
    mgr = TopicManager.connect(servers.split(","), replicas=3, timeout=4.0, dont_randomize=True)
    with open(path, "a") as out:
        (produce if role == "produce" else consume)(mgr, name, out, stop)
    mgr.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
