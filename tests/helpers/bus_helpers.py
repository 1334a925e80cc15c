"""Helpers shared by the bus tests (topics, groups, DLQ, offsets, retention):
building managers of each kind and snapshotting the whole visible state of a
bus, so a test can say "this bad call changed nothing"."""
from __future__ import annotations

import time
from dataclasses import asdict

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

SMALL = 32 << 20        # bytes: an in-process fabric big enough for a few small topics

#: a fixed clock for describe(): makes the lease TTL column comparable between snapshots
FROZEN = time.time() + 1.0


def make_mgr(kind: str, shm_name: str, request=None) -> TopicManager:
    """``inproc``: TopicManager() on its own fabric; ``named``: a named shared bus;
    ``jetstream``: a connection to the test run's NATS server (``request`` is the
    pytest request, to start it; the server is wiped after the test)."""
    if kind == "inproc":
        return TopicManager(size=SMALL)
    if kind == "named":
        return TopicManager.open(shm_name, size=SMALL)
    if kind == "jetstream":
        return TopicManager.connect(request.getfixturevalue("nats_url"))
    raise ValueError(kind)


def bus_store(mgr):
    """The offset store every process of the bus shares: in the fabric, or on the
    JetStream server (fenced through the group's record)."""
    from grafos.mq.offset import FabricOffsetStore
    if isinstance(mgr, TopicManager):
        return FabricOffsetStore(mgr)
    from grafos.jetstream import KvOffsetStore
    return KvOffsetStore(mgr)


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


def observed_bus(shm_name: str) -> tuple[TopicManager, Producer]:
    """A named bus whose transactional producer "obs" of topic "out" has been
    fenced once, aborted one transaction and holds one open."""
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("out", TopicConfig(num_partitions=2))
    old = Producer("out", transactional_id="obs")
    old.register(mgr)
    new = Producer("out", transactional_id="obs")
    new.register(mgr)                      # fences old
    with new.begin(mgr) as txn:
        new.send(mgr, b"a")
        txn.abort()
    new.begin(mgr)
    new.send(mgr, b"b")                    # left open
    return mgr, new
