"""Worker functions for the share-group process tests (run under "spawn").

A worker logs with one os.write per line, so what it wrote survives its
SIGKILL: ``G p o v`` when it got a record (before processing it), ``A p o``
once the ack of that record returned.
"""
from __future__ import annotations

import os
import time

from grafos.errors import LockLost
from grafos.mq.topic import TopicManager


def worker(name: str, topic: str, group: str, lock_secs: float, log: str, ready, stop, batch: int,
           member: str) -> None:
    mgr = TopicManager.open(name)
    c = mgr.share_consumer(topic, group=group, lock_secs=lock_secs, member=member, max_deliveries=50)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ready.set()
    while not stop.is_set():
        recs = c.poll(batch, timeout=0.1)
        if not recs:
            continue
        os.write(fd, "".join(f"G {r.partition} {r.offset} {r.delivery_count}\n" for r in recs).encode())
        try:
            c.ack(recs)
        except LockLost as e:
            lost = {(r.partition, r.offset) for r in e.records}
            recs = [r for r in recs if (r.partition, r.offset) not in lost]
        os.write(fd, "".join(f"A {r.partition} {r.offset}\n" for r in recs).encode())
    c.close()
    mgr.close()


def hold_then_ack(name: str, topic: str, group: str, lock_secs: float, n: int, out, go) -> None:
    """Take n records, say which, wait for `go` (the test stops us in between with
    SIGSTOP), then try to ack them and say what happened."""
    mgr = TopicManager.open(name)
    c = mgr.share_consumer(topic, group=group, lock_secs=lock_secs, member="stalled")
    recs = []
    deadline = time.monotonic() + 30
    while len(recs) < n and time.monotonic() < deadline:
        recs += c.poll(n - len(recs), timeout=0.5)
    out.put(sorted((r.partition, r.offset) for r in recs))
    go.wait(60)
    try:
        c.ack(recs)
        out.put(("acked", len(recs)))
    except LockLost as e:
        out.put(("refused", sorted((r.partition, r.offset) for r in e.records)))
    mgr.close()
