"""Worker functions for the back-pressure tests (spawned processes import them)."""
from __future__ import annotations

import os
import time
from typing import Any

from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager


def slow_member(name: str, topic: str, group: str, partitions: int, stale: float, expect: int,
                delay: float, out: Any) -> None:
    """A group member that reads slowly, committing after every poll, until it
    has ``expect`` messages; reports (values, lost) on ``out``."""
    mgr = TopicManager.open(name)
    g = ConsumerGroup(group, topic, partitions, stale, mgr=mgr)
    store = FabricOffsetStore(mgr)
    g.claim("slow")
    c = g.consumer("slow", max_batch=8)
    c.seek(mgr, store, SeekPolicy.Committed)
    out.put(("ready", os.getpid()))
    got: list[bytes] = []
    deadline = time.monotonic() + 120
    while len(got) < expect and time.monotonic() < deadline:
        msgs = c.poll(mgr, 8, timeout=0.2)
        got += [m.value for _, m in msgs]
        if msgs:
            c.commit(store)
            time.sleep(delay)
        g.heartbeat("slow")
    lost = sum(c.lost().values())
    out.put(("done", got, lost))
    c.close()
    mgr.close()


def hold_and_sleep(name: str, topic: str, group: str, partitions: int, stale: float, commit: int,
                   out: Any) -> None:
    """Claim every partition, commit ``commit`` on each, report, then hang (to be killed)."""
    mgr = TopicManager.open(name)
    g = ConsumerGroup(group, topic, partitions, stale, mgr=mgr)
    g.claim("holder")
    g.commit(FabricOffsetStore(mgr), "holder", topic, {p: commit for p in range(partitions)})
    out.put(("ready", os.getpid()))
    time.sleep(600)


def blocked_sender(name: str, topic: str, out: Any) -> None:
    """Send to a full "block" topic with no timeout; report how it ended."""
    mgr = TopicManager.open(name)
    p = Producer(topic)
    out.put(("sending", os.getpid()))
    try:
        p.send(mgr, b"waits")
        out.put(("sent", None))
    except KeyboardInterrupt:
        out.put(("interrupted", None))
    finally:
        mgr.close()


def blocked_sender_on(where: dict[str, str], topic: str, out: Any) -> None:
    """Open the bus ``TopicManager.open(**where)`` (a name or a path), report,
    then send to its full "block" topic with no timeout (to be killed there)."""
    mgr = TopicManager.open(**where)
    p = Producer(topic)
    out.put(("sending", os.getpid()))
    p.send(mgr, b"waits")
    out.put(("sent", None))
