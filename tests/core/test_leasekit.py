"""RenewalManager / RenewalPolicy with an injected clock: plain timers, real
leases in the fabric, partitions of a topic, and what cannot be renewed."""
from __future__ import annotations

import time

import pytest

from grafos import Fabric
from grafos.errors import InvalidArgument, InvalidType, LeaseExpired, NotFound
from grafos.leasekit import RenewalManager, RenewalPolicy
from grafos.mq.topic import TopicConfig, TopicManager

T0 = time.time()


@pytest.fixture
def fabric():
    f = Fabric(8 << 20)
    yield f
    f.close()


@pytest.fixture
def mgr():
    m = TopicManager(size=8 << 20)
    m.create("events", TopicConfig(num_partitions=4, partition_capacity=16, partition_stride=128,
                                   retention_secs=100.0))
    yield m
    m.close()


def test_should_run_the_seed_loop_as_written():
    retention_secs = 3600
    renewals = RenewalManager()
    now = time.time()
    for i in range(4):
        renewals.register(i, now + retention_secs, RenewalPolicy())
    assert len(renewals) == 4
    assert renewals.tick() == []                                  # nothing is due yet
    assert renewals.tick(now=now + 0.6 * retention_secs) == [0, 1, 2, 3]
    assert renewals.ttl_remaining(2, now=now + 0.6 * retention_secs) == pytest.approx(retention_secs, abs=1)


def test_should_renew_a_timer_at_half_life_by_default():
    r = RenewalManager()
    r.register("job", T0 + 10, now=T0)
    assert r.tick(now=T0 + 4.9) == []
    assert r.ttl_remaining("job", now=T0 + 4.9) == pytest.approx(5.1)
    assert r.tick(now=T0 + 5.0) == ["job"]
    assert r.ttl_remaining("job", now=T0 + 5.0) == pytest.approx(10.0)
    assert r.tick(now=T0 + 9.0) == []
    assert r.tick(now=T0 + 10.0) == ["job"]
    assert r.registrations()[0].renewals == 2


def test_should_follow_renew_before_and_ttl_of_the_policy():
    r = RenewalManager()
    r.register(1, T0 + 10, RenewalPolicy(renew_before=2.0, ttl=60.0), now=T0)
    assert r.tick(now=T0 + 7.9) == []
    assert r.tick(now=T0 + 8.0) == [1]
    assert r.ttl_remaining(1, now=T0 + 8.0) == pytest.approx(60.0)
    r.register(2, T0 + 10, RenewalPolicy(renew_fraction=0.1), now=T0)
    assert r.tick(now=T0 + 8.5) == []
    assert r.tick(now=T0 + 9.0) == [2]


def test_should_move_a_real_lease_when_registered_and_ticked(fabric):
    lease = fabric.acquire(4096, ttl=10, now=T0)
    r = RenewalManager()
    key = r.register(lease, T0 + 20, now=T0)
    assert key == lease
    assert lease.expires_at == pytest.approx(T0 + 20)
    assert r.tick(now=T0 + 15) == [lease]
    assert lease.expires_at == pytest.approx(T0 + 35)
    assert r.ttl_remaining(lease, now=T0 + 15) == pytest.approx(20)
    lease.renew(expires_at=T0 + 50, now=T0 + 16)                    # renewed by someone else:
    assert r.ttl_remaining(lease, now=T0 + 16) == pytest.approx(34)   # the fabric is the truth
    assert r.tick(now=T0 + 30) == []


def test_should_refuse_to_renew_an_expired_lease(fabric):
    dead = fabric.acquire(4096, ttl=1, now=T0)
    alive = fabric.acquire(4096, ttl=1, now=T0)
    r = RenewalManager()
    with pytest.raises(LeaseExpired):
        r.register(dead, T0 + 100, now=T0 + 2)
    assert dead not in r
    r.register(alive, T0 + 10, now=T0)
    r.register("timer", T0 + 10, now=T0)
    other = fabric.acquire(4096, ttl=100, now=T0)
    r.register(other, T0 + 10, now=T0)
    # all three now expire at T0 + 10; a tick at T0 + 11 cannot bring them back
    assert r.tick(now=T0 + 11) == []
    assert set(r.expired) == {alive, "timer", other}
    assert len(r) == 0
    with pytest.raises(NotFound):
        r.ttl_remaining("timer")


def test_should_keep_renewing_others_when_one_lease_died(fabric):
    a = fabric.acquire(4096, ttl=100, now=T0)
    b = fabric.acquire(4096, ttl=100, now=T0)
    r = RenewalManager()
    r.register(a, T0 + 10, now=T0)
    r.register(b, T0 + 10, now=T0)
    b.release()
    assert r.tick(now=T0 + 6) == [a]
    assert r.expired == [b]
    with pytest.raises(LeaseExpired):
        r.renew_now(a, now=T0 + 100)


def test_should_map_ints_to_partitions_of_a_topic(mgr):
    r = RenewalManager(mgr, topic="events")
    for i in range(4):
        r.register(i, T0 + 30, RenewalPolicy(), now=T0)
    leases = mgr.partition_leases("events")
    assert [l.expires_at for l in leases] == [pytest.approx(T0 + 30)] * 4
    assert r.tick(now=T0 + 16) == [0, 1, 2, 3]
    d = mgr.describe("events", now=T0 + 16)
    assert [p.ttl_remaining for p in d.partitions] == [pytest.approx(30)] * 4
    assert r.ttl_remaining(3, now=T0 + 16) == pytest.approx(30)
    with pytest.raises(InvalidArgument):
        r.register(4, T0 + 30, now=T0)                       # events has 4 partitions
    assert 4 not in r


def test_should_register_every_partition_of_a_topic(mgr):
    r = RenewalManager(mgr)
    before = [l.expires_at for l in mgr.partition_leases("events")]
    ids = r.register_topic("events")
    assert ids == [("events", i) for i in range(4)]
    assert [l.expires_at for l in mgr.partition_leases("events")] == before   # unchanged
    late = time.time() + 60                                      # past half of 100 s
    assert r.tick(now=late) == ids
    assert all(l.expires_at == pytest.approx(late + 100, abs=0.01) for l in mgr.partition_leases("events"))
    assert r.deregister(("events", 2)) is True
    assert r.deregister(("events", 2)) is False
    assert r.tick(now=late + 60) == [("events", 0), ("events", 1), ("events", 3)]


def test_should_drop_an_expired_partition_and_renew_it_after_a_restart(mgr):
    r = RenewalManager(mgr)
    mgr.create("short", TopicConfig(num_partitions=1, partition_capacity=16, partition_stride=128,
                                    retention_secs=0.2))
    r.register(("short", 0), time.time() + 0.2)
    time.sleep(0.25)                                       # nobody ticked: it expired
    assert r.tick() == []
    assert r.expired == [("short", 0)]
    old = mgr.partition_leases("short")[0]
    mgr.restart("short")
    fresh = mgr.partition_leases("short")[0]
    assert fresh != old
    r.register(("short", 0), time.time() + 0.2, RenewalPolicy(ttl=30))
    assert r.tick(now=time.time() + 0.15) == [("short", 0)]
    assert fresh.ttl_remaining() > 20


def test_should_tick_in_the_background(fabric):
    lease = fabric.acquire(4096, ttl=0.3)
    with RenewalManager() as r:
        r.register(lease, time.time() + 0.3)
        r.start(interval=0.03)
        with pytest.raises(InvalidArgument):
            r.start(interval=0.03)
        time.sleep(0.8)
        assert not lease.expired()
        assert r.registrations()[0].renewals >= 2
    renewals = r.registrations()[0].renewals
    time.sleep(0.1)
    assert r.registrations()[0].renewals == renewals           # stopped


def test_should_refuse_bad_input_and_register_nothing(mgr):
    r = RenewalManager()
    rm = RenewalManager(mgr, topic="events")
    before = [l.expires_at for l in mgr.partition_leases("events")]
    bad = [
        (InvalidArgument, lambda: RenewalPolicy(ttl=-1)),
        (InvalidArgument, lambda: RenewalPolicy(ttl=0)),
        (InvalidArgument, lambda: RenewalPolicy(renew_fraction=0)),
        (InvalidArgument, lambda: RenewalPolicy(renew_fraction=1.5)),
        (InvalidArgument, lambda: RenewalPolicy(renew_before=-2)),
        (InvalidType, lambda: RenewalPolicy(ttl="1h")),
        (InvalidArgument, lambda: r.register(1, T0 - 5, now=T0)),        # already in the past
        (InvalidType, lambda: r.register(1, "tomorrow")),
        (InvalidArgument, lambda: r.register(1, float("nan"))),
        (InvalidType, lambda: r.register(None, T0 + 5, now=T0)),
        (InvalidType, lambda: r.register(True, T0 + 5, now=T0)),
        (InvalidType, lambda: r.register(1.5, T0 + 5, now=T0)),
        (InvalidType, lambda: r.register(1, T0 + 5, "policy", now=T0)),
        (InvalidArgument, lambda: r.register(("events", 0), T0 + 5, now=T0)),    # needs a manager
        (InvalidArgument, lambda: rm.register(-1, T0 + 5, now=T0)),
        (NotFound, lambda: rm.register(("nope", 0), T0 + 5, now=T0)),
        (InvalidArgument, lambda: RenewalManager(topic="events")),
        (InvalidType, lambda: RenewalManager("mgr")),
        (NotFound, lambda: r.ttl_remaining("never")),
        (InvalidType, lambda: r.ttl_remaining([1])),
    ]
    for exc, call in bad:
        with pytest.raises(exc):
            call()
    assert len(r) == 0 and len(rm) == 0
    assert [l.expires_at for l in mgr.partition_leases("events")] == before
