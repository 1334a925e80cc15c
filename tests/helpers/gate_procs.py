"""Worker functions for the failover tests of tests/bus/test_gate_contract.py
(spawned processes import them)."""
from __future__ import annotations

import os
import time
from typing import Any

from grafos.errors import Fenced
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.topic import TopicManager

POLL = 16       #: messages one poll may take: the most a killed worker can leave uncommitted


def member(name: str, topic: str, group: str, partitions: int, stale: float, who: str, log: str,
           ready: Any, stop: Any) -> None:
    """A group member in the README's spelling (claim, a consumer bound to the
    member, seek Committed, poll, commit to the bus's offset store,
    heartbeat), rebalancing when its share changes. Every delivered message
    is written to ``log`` as ``partition offset`` before the commit that
    covers it, with a plain write() that survives the process being killed."""
    mgr = TopicManager.open(name)
    g = ConsumerGroup(group, topic, partitions, stale, mgr=mgr)
    store = FabricOffsetStore(mgr)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    owned = g.claim(who)
    c = g.consumer(who)
    c.assign(owned)
    c.seek(mgr, store, SeekPolicy.Committed)
    ready.set()
    while not stop.is_set():
        msgs = c.poll(mgr, POLL, timeout=0.02)
        if msgs:
            os.write(fd, "".join(f"{p} {m.offset}\n" for p, m in msgs).encode())
        try:
            c.commit(store)
        except Fenced:
            pass            # taken over while we read: the new owner reads it from the commit
        now_owned = g.claim(who)
        if now_owned != c.assignment():
            c = g.consumer(who)
            c.assign(now_owned)
            c.seek(mgr, store, SeekPolicy.Committed)
        elif not msgs:
            time.sleep(0.005)
    g.leave(who)
    os.close(fd)
    mgr.close()
