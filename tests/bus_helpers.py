"""Helpers shared by the bus tests (topics, groups, DLQ, offsets, retention):
building managers of each kind and snapshotting the whole visible state of a
bus, so a test can say "this bad call changed nothing"."""
from __future__ import annotations

import time
from dataclasses import asdict

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.topic import TopicManager

SMALL = 32 << 20        # bytes: an in-process fabric big enough for a few small topics

#: a fixed clock for describe(): makes the lease TTL column comparable between snapshots
FROZEN = time.time() + 1.0


def make_mgr(kind: str, shm_name: str) -> TopicManager:
    """``inproc``: TopicManager() on its own fabric; ``named``: a named shared bus."""
    if kind == "inproc":
        return TopicManager(size=SMALL)
    if kind == "named":
        return TopicManager.open(shm_name, size=SMALL)
    raise ValueError(kind)


def snapshot(mgr: TopicManager, *stores) -> dict:
    """Everything a user could observe: the topic list, every topic's description
    (at a frozen clock) and the items of the given offset stores."""
    return {
        "topics": mgr.topics(),
        "describe": {n: asdict(mgr.describe(n, now=FROZEN)) for n in mgr.topics()},
        "stores": [s.items() for s in stores],
    }


def read_all(mgr: TopicManager, topic: str, group: str = "reader") -> list:
    """Every message of ``topic`` from Earliest, as (partition, Message)."""
    c = Consumer(topic, group)
    c.seek(mgr, None, SeekPolicy.Earliest)
    out = []
    while True:
        got = c.poll(mgr, 1000)
        if not got:
            return out
        out += got
