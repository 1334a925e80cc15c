"""Clock jumps (injected ``now=``): an expired lease never comes back, and a
renewed one never dies before its expiry.

The rule (docs/hardening.md, "Clocks"): expiry is decided by the first read,
append, renewal, reap or :meth:`MemLease.alive` that sees ``now >= expires_at``;
from then on the lease is dead for every process whatever a later clock says.
:meth:`MemLease.expired` is a what-if query about any time and decides nothing.
A lease that nobody has seen expired is alive for every ``now`` before its
expiry -- the tolerance for a renewed lease is zero: it is never dead early.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grafos import Fabric
from grafos._clock import to_ns
from grafos.errors import LeaseExpired
from grafos.leasekit import RenewalManager, RenewalPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition

T0 = 1_700_000_000.0
MiB = 1 << 20


@pytest.fixture
def fab():
    with Fabric(8 * MiB) as f:
        yield f


def test_expired_lease_stays_dead_when_the_clock_goes_back(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    lease.write(0, b"x", now=T0 + 1)
    with pytest.raises(LeaseExpired):
        lease.read(0, 1, now=T0 + 11)              # seen expired: decided
    for back in (T0 + 9, T0 + 5, T0, T0 - 3600):
        with pytest.raises(LeaseExpired):
            lease.read(0, 1, now=back)
        with pytest.raises(LeaseExpired):
            lease.renew(ttl=60, now=back)
        assert lease.expired(now=back) and not lease.alive(now=back)
        assert lease.ttl_remaining(now=back) == 0.0
    assert fab.reap(now=T0 - 3600) == 1            # reaped even by a clock from before its expiry


def test_a_failed_renewal_decides_the_expiry(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    with pytest.raises(LeaseExpired):
        lease.renew(ttl=10, now=T0 + 10)
    with pytest.raises(LeaseExpired):
        lease.renew(ttl=10, now=T0 + 2)
    assert lease.expires_at == pytest.approx(T0 + 10)   # the expiry itself is kept, for the record


def test_what_if_queries_decide_nothing(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    assert lease.expired(now=T0 + 1000)        # "would it be expired then?" -- yes
    assert lease.alive(now=T0 + 5)             # ... and it is not killed by asking
    lease.renew(ttl=10, now=T0 + 5)
    assert lease.read(0, 1, now=T0 + 14) == b"\0"


def test_partition_expired_by_a_poll_stays_empty_when_the_clock_goes_back(fab):
    t = time.time()                                  # appends use the real clock
    part = Partition.create(fab, 8, 128, ttl=100, now=t)
    part.append(b"a")
    rd = part.reader(0)
    assert [m.value for _, m in rd.poll(10, now=t + 1)] == [b"a"]
    rd.seek(0, 0)
    assert rd.poll(10, now=t + 101) == [] and rd.counters(0)["expired"] == 1
    assert rd.poll(10, now=t + 1) == []
    assert not part.state(now=t + 1).alive
    with pytest.raises(LeaseExpired):
        part.lease.renew(ttl=100, now=t + 1)


def test_renewed_lease_is_alive_before_its_new_expiry_whatever_the_jumps(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    lease.renew(expires_at=T0 + 30, now=T0 + 9)
    for t in (T0 + 29.999, T0 - 100, T0 + 15, T0 + 10, T0 + 29):    # forward, back, around the old expiry
        assert lease.alive(now=t)
        assert lease.read(0, 1, now=t) == b"\0"
    assert not lease.alive(now=T0 + 30)                             # and dead exactly at it


def test_appends_are_judged_by_the_wall_clock_not_by_a_stepped_back_one():
    with TopicManager(size=8 * MiB) as mgr:
        mgr.create("t", TopicConfig(1, 8, 128, 3600.0))
        prod = Producer("t")
        prod.send(mgr, b"ok")
        lease = mgr.partition_leases("t")[0]
        assert lease.alive()                      # real clock: alive for an hour
        assert not lease.alive(now=lease.expires_at + 1)   # a jump past its expiry decides it
        with pytest.raises(LeaseExpired):
            prod.send(mgr, b"after")              # real clock is back, the lease stays dead
        assert mgr.describe("t").partitions[0].alive is False


def test_renewal_manager_never_shortens_and_never_resurrects(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    rm = RenewalManager()
    rm.register(lease, T0 + 10, RenewalPolicy(ttl=10), now=T0)
    assert rm.tick(now=T0 + 6) == [lease]                           # due at half-life
    assert lease.expires_at == pytest.approx(T0 + 16)
    assert rm.tick(now=T0 - 1000) == []                             # clock back: nothing due
    rm.renew_now(lease, now=T0 - 1000)                              # forced: must not move it back
    assert lease.expires_at == pytest.approx(T0 + 16)
    assert rm.tick(now=T0 + 10_000) == []                           # clock far ahead: expired, dropped
    assert rm.expired == [lease]
    assert not lease.alive(now=T0 + 12)                             # and it stays dead


# ---- the rule as a model, under random clocks ----------------------------------------------------
OPS = st.lists(st.tuples(st.sampled_from(["read", "renew", "alive", "query", "reap"]),
                         st.floats(min_value=-50, max_value=50, allow_nan=False),
                         st.floats(min_value=0.5, max_value=30, allow_nan=False)),
               min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_lease_follows_the_decided_once_rule_under_any_clock(ops):
    """Model: dead = dead or (a deciding op at t >= expiry). Renewals succeed
    exactly when not dead and t < expiry; reads likewise; queries decide nothing.
    The model keeps time in integer nanoseconds converted exactly as the API
    converts float seconds (float64 resolves ~256 ns at today's epoch), so
    boundary cases compare the same numbers."""
    with Fabric(4 * MiB) as fab:
        lease = fab.acquire(4096, expires_at=T0 + 10, now=T0 - 100)
        expiry, dead, gone = to_ns(T0 + 10), False, False
        for op, dt, ttl in ops:
            t = T0 + dt
            tn = to_ns(t)
            alive_now = not gone and not dead and tn < expiry
            if op == "query":
                assert lease.expired(now=t) == (gone or dead or tn >= expiry)
                continue
            if op == "reap":
                n = fab.reap(now=t)
                reaped = not gone and (dead or tn >= expiry)
                assert n == int(reaped)
                gone = gone or reaped
                continue
            if op == "alive":
                assert lease.alive(now=t) == alive_now
            elif op == "read":
                if alive_now:
                    assert lease.read(0, 1, now=t) == b"\0"
                else:
                    with pytest.raises(LeaseExpired):
                        lease.read(0, 1, now=t)
            else:
                if alive_now:
                    lease.renew(ttl=ttl, now=t)
                    expiry = tn + to_ns(ttl)
                else:
                    with pytest.raises(LeaseExpired):
                        lease.renew(ttl=ttl, now=t)
            dead = dead or (not gone and tn >= expiry)
