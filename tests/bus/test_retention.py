"""Retention = lease TTL. With a RenewalManager ticking a topic outlives its
TTL; stop ticking and its partitions expire, read as empty, give their memory
back, and the topic can be restarted and read from Earliest. Tiered retention:
a short-TTL topic expires beside a long-TTL one that keeps its messages.

Reads use the real clock, so the TTLs here are a fraction of a second; the
renewal decisions use an injected clock where the test does not need reads."""
from __future__ import annotations

import time

import pytest

from helpers.bus_helpers import make_mgr, read_all
from grafos.errors import LeaseExpired
from grafos.leasekit import RenewalManager, RenewalPolicy
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig

TTL = 0.4
TTL_RENEWED = 0.6


@pytest.fixture(params=["inproc", "named"])
def mgr(request, shm_name):
    m = make_mgr(request.param, shm_name)
    yield m
    m.close()


def _fill(mgr, topic: str, n: int, size: int = 400) -> None:
    prod = Producer(topic, Partitioner.RoundRobin)
    for i in range(n):
        prod.send(mgr, (b"%06d" % i).ljust(size, b"."))


def test_should_live_past_its_ttl_while_renewed_then_expire_reclaim_and_restart(mgr):
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=256, partition_stride=512,
                                     retention_secs=TTL_RENEWED))
    _fill(mgr, "events", 800)
    renewals = RenewalManager(mgr, topic="events")
    start = time.time()
    # renew when less than 90% of the TTL is left: a tick may come late by ~0.3 s on a
    # loaded machine and the topic still lives
    for i in range(4):
        renewals.register(i, start + TTL_RENEWED, RenewalPolicy(renew_fraction=0.9))
    consumer = Consumer("events", "g")
    store = MemOffsetStore()
    consumer.seek(mgr, store, SeekPolicy.Earliest)

    while time.time() < start + 2.5 * TTL_RENEWED:   # well past its TTL
        renewals.tick()
        time.sleep(TTL_RENEWED / 8)
    assert renewals.expired == []
    assert all(p.alive for p in mgr.describe("events").partitions)
    got = consumer.poll(mgr, 1000)
    assert len(got) == 800                           # every message still there

    # stop ticking: the partitions expire, reads return nothing
    deadline = time.time() + 5
    while any(p.alive for p in mgr.describe("events").partitions):
        assert time.time() < deadline
        time.sleep(TTL_RENEWED / 4)
    assert all(p.ttl_remaining == 0.0 for p in mgr.describe("events").partitions)
    consumer.seek(mgr, store, SeekPolicy.Earliest)
    assert consumer.poll(mgr, 1000) == []
    assert renewals.tick() == [] and sorted(renewals.expired) == [0, 1, 2, 3]

    # the memory goes back to the fabric (and to the OS)
    blocks = mgr.fabric.blocks
    leased = mgr.fabric.info().bytes_leased
    assert mgr.fabric.reap() == 4
    assert mgr.fabric.blocks < blocks
    assert mgr.fabric.info().bytes_leased < leased

    # restart: fresh leases, offsets from 0, read from Earliest
    mgr.restart("events")
    prod = Producer("events").with_partitioner(Partitioner.KeyHash)
    sent = [prod.send_keyed(mgr, b"k%d" % i, b"again-%d" % i) for i in range(10)]
    consumer.seek(mgr, store, SeekPolicy.Earliest)
    got = consumer.poll(mgr, 100)
    assert sorted((p, m.offset) for p, m in got) == sorted(sent)
    assert {m.value for _, m in got} == {b"again-%d" % i for i in range(10)}


def test_should_expire_a_short_topic_beside_a_long_one(mgr):
    mgr.create("clicks", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=512,
                                     retention_secs=TTL))
    mgr.create("orders", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=512,
                                     retention_secs=600.0))
    _fill(mgr, "clicks", 100)
    _fill(mgr, "orders", 100)
    time.sleep(TTL + 0.1)
    clicks, orders = mgr.describe("clicks"), mgr.describe("orders")
    assert not any(p.alive for p in clicks.partitions)
    assert all(p.alive and p.ttl_remaining > 500 for p in orders.partitions)
    assert read_all(mgr, "clicks") == []
    assert len(read_all(mgr, "orders")) == 100 - orders.lost
    assert mgr.fabric.reap() == 2
    assert len(read_all(mgr, "orders")) == 100 - orders.lost          # untouched by the reap
    with pytest.raises(LeaseExpired):
        Producer("clicks").send(mgr, b"late")


def test_should_keep_only_the_renewed_tier_with_an_injected_clock(mgr):
    """Decisions at an injected clock: ticks renew the long tier and not the short
    one; at a time past the short tier's TTL only the long tier is alive and a
    reap at that time reclaims exactly the short tier's leases."""
    t0 = time.time()
    mgr.create("hot", TopicConfig(num_partitions=3, partition_capacity=16, partition_stride=256,
                                  retention_secs=10.0), now=t0)
    mgr.create("cold", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=256,
                                   retention_secs=10.0), now=t0)
    renewals = RenewalManager(mgr)
    ids = renewals.register_topic("hot", now=t0)
    for k in range(1, 6):                             # t0 + 6, 12, ..., 30
        assert renewals.tick(now=t0 + 6 * k) == ids
    later = t0 + 31
    assert all(p.alive for p in mgr.describe("hot", now=later).partitions)
    assert [p.ttl_remaining for p in mgr.describe("hot", now=later).partitions] == \
        [pytest.approx(9.0)] * 3          # renewed at t0 + 30 for 10 s
    assert not any(p.alive for p in mgr.describe("cold", now=later).partitions)
    cold_leases = set(mgr.partition_leases("cold"))
    hot_leases = set(mgr.partition_leases("hot"))
    assert mgr.fabric.reap(now=later) == 2
    live = set(mgr.fabric.leases())
    assert hot_leases <= live and not (cold_leases & live)
