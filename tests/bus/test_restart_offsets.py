"""After a topic restart, a group's old committed offsets must not skip the new messages."""
from __future__ import annotations

import time

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager


def test_should_read_fresh_ring_from_start_when_commit_predates_restart():
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128,
                                retention_secs=30))
    prod = Producer("t")
    for i in range(10):
        prod.send(mgr, b"old-%d" % i)
    store = MemOffsetStore()
    c = Consumer("t", "g")
    c.seek(mgr, store, SeekPolicy.Committed)
    assert len(c.poll(mgr, 100)) == 10
    c.commit(store)
    assert store.committed("g", "t", 0) == 10

    later = time.time() + 60                       # the lease is long dead by then
    mgr.fabric.reap(now=later)
    mgr.restart("t", now=later)
    for i in range(3):
        prod.send(mgr, b"new-%d" % i)              # offsets 0..2 of the fresh ring
    c2 = Consumer("t", "g")
    c2.seek(mgr, store, SeekPolicy.Committed)
    got = [m.value for _, m in c2.poll(mgr, 100)]
    assert got == [b"new-0", b"new-1", b"new-2"]


def test_should_resume_at_commit_within_one_incarnation():
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128))
    prod = Producer("t")
    for i in range(5):
        prod.send(mgr, b"%d" % i)
    store = MemOffsetStore()
    store.commit("g", "t", 0, 3)
    c = Consumer("t", "g")
    c.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c.poll(mgr, 100)] == [b"3", b"4"]
