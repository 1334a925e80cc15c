"""Share groups (the queue model) on every backend: records locked one by one to
a member, acked, released, rejected, renewed, redelivered when a lock runs
out, dead-lettered with their provenance at the delivery limit. A backend
without share groups (``caps.share_groups`` False) refuses them clearly."""
from __future__ import annotations

import asyncio
import time

import pytest

from grafos.errors import InvalidArgument, InvalidType, LockLost, NotFound, Unsupported
from grafos.mq import Consumer, Producer, SeekPolicy, TopicConfig

LOCK = 1.0


def share(bus, topic="jobs", group="g", **kw):
    """A share consumer on the bus, or None after checking the clear refusal."""
    if not bus.caps.share_groups:
        with pytest.raises(Unsupported, match="share groups"):
            bus.mgr.share_consumer(topic, group=group, **kw)
        return None
    return bus.mgr.share_consumer(topic, group=group, **kw)


def setup(bus, n=6, partitions=2, dlq=False):
    bus.mgr.create("jobs", TopicConfig(num_partitions=partitions, partition_capacity=64))
    if dlq:
        bus.mgr.create("jobs-dlq", TopicConfig(num_partitions=1, partition_capacity=64))
    prod = Producer("jobs")
    return [prod.send_keyed(bus.mgr, b"k%d" % i, b"v%d" % i) for i in range(n)]


def test_members_share_partitions_and_acked_records_never_come_again(bus):
    where = setup(bus)
    a = share(bus, member="a")
    if a is None:
        return
    b = share(bus, member="b")
    ra, rb = a.poll(4), b.poll(10)
    assert len(ra) == 4 and len(rb) == 2
    got = sorted((r.partition, r.offset) for r in ra + rb)
    assert got == sorted(where)                                 # each record to one member
    assert all(r.delivery_count == 1 for r in ra + rb)
    assert {r.value for r in ra + rb} == {b"v%d" % i for i in range(6)}
    assert a.ack(ra) == 4 and b.ack(rb[0]) == 1
    assert a.poll(10) == [] and b.poll(10) == []                # rb[1] is still locked to b
    b.ack_range(rb[1].partition, rb[1].offset, rb[1].offset + 1)
    states = a.describe()
    assert sum(s.acked for s in states) == 6 and sum(s.in_flight for s in states) == 0
    assert all(s.floor == s.latest for s in states)


def test_released_record_comes_again_at_once_with_its_count(bus):
    setup(bus, n=1, partitions=1)
    a = share(bus, member="a")
    if a is None:
        return
    b = share(bus, member="b")
    (r,) = a.poll(10)
    a.release(r)
    (again,) = b.poll(10)
    assert (again.offset, again.delivery_count, again.value) == (r.offset, 2, r.value)
    with pytest.raises(LockLost):
        a.ack(r)                                                 # b holds it now
    b.ack(again)
    (s,) = b.describe()
    assert (s.released, s.redelivered, s.acked) == (1, 1, 1)


def test_lock_runs_out_the_record_comes_again_and_the_late_ack_is_refused(bus):
    setup(bus, n=2, partitions=1)
    a = share(bus, member="a", lock_secs=LOCK)
    if a is None:
        return
    b = share(bus, member="b", lock_secs=LOCK)
    held = a.poll(10)
    assert b.poll(10) == []
    time.sleep(LOCK + 0.1)
    again = b.poll(10, timeout=5)
    assert [(r.offset, r.delivery_count) for r in again] == [(0, 2), (1, 2)]
    with pytest.raises(LockLost) as e:
        a.ack(held)
    assert sorted(r.offset for r in e.value.records) == [0, 1]
    assert b.ack(again) == 2


def test_a_settle_whose_own_clock_says_the_lock_holds_is_fenced_where_the_state_fences_it(bus):
    setup(bus, n=1, partitions=1)
    a = share(bus, member="a", lock_secs=LOCK)
    if a is None:
        return
    b = share(bus, member="b", lock_secs=LOCK)
    polled_at = time.time()
    held = a.poll(10)
    time.sleep(LOCK + 0.1)
    again = b.poll(10, timeout=5)
    assert [r.delivery_count for r in again] == [2]
    if bus.caps.share_fenced:       # the record's state knows b holds it now
        with pytest.raises(LockLost):
            a.ack(held, now=polled_at)
        assert b.ack(again) == 1
    else:                           # only a's clock guards it: the server applies a's ack
        assert a.ack(held, now=polled_at) == 1
        assert b.poll(10, timeout=LOCK + 0.5) == []
    assert a.describe()[0].floor == 1


def test_a_lock_that_runs_out_at_the_limit_sends_the_record_to_the_dlq_with_its_last_member(bus):
    setup(bus, n=1, partitions=1, dlq=True)
    a = share(bus, member="a", lock_secs=LOCK, max_deliveries=2, dlq="jobs-dlq")
    if a is None:
        return
    b = share(bus, member="b", lock_secs=LOCK, max_deliveries=2, dlq="jobs-dlq")
    assert [r.delivery_count for r in a.poll(10)] == [1]
    time.sleep(LOCK + 0.1)
    assert [r.delivery_count for r in b.poll(10, timeout=5)] == [2]
    time.sleep(LOCK + 0.1)
    assert a.poll(10, timeout=LOCK) == []
    (m,) = _read_all(bus, "jobs-dlq")
    h = dict(m.headers)
    assert (m.value, h["x-delivery-count"], h["x-last-member"], h["x-source-offset"]) == (b"v0", b"2", b"b", b"0")
    (s,) = a.describe()
    assert (s.dead_lettered, s.expired_locks, s.floor) == (1, 2, 1)


def test_renewed_lock_outlives_its_first_term(bus):
    setup(bus, n=1, partitions=1)
    a = share(bus, member="a", lock_secs=LOCK)
    if a is None:
        return
    b = share(bus, member="b", lock_secs=LOCK)
    (r,) = a.poll(10)
    time.sleep(LOCK * 0.6)
    assert a.renew(r) == 1
    time.sleep(LOCK * 0.6)
    assert b.poll(10) == []
    assert a.ack(r) == 1


def test_poison_record_goes_to_the_dlq_with_its_provenance_after_the_limit(bus):
    setup(bus, n=2, partitions=1, dlq=True)
    a = share(bus, member="worker-a", max_deliveries=3, dlq="jobs-dlq")
    if a is None:
        return
    for attempt in range(1, 4):
        recs = a.poll(10)
        poison = [r for r in recs if r.value == b"v0"]
        assert [r.delivery_count for r in poison] == [attempt]
        a.ack([r for r in recs if r.value != b"v0"])
        a.release(poison)                       # fails every time
    assert a.poll(10) == []
    msgs = _read_all(bus, "jobs-dlq")
    assert len(msgs) == 1
    h = dict(msgs[0].headers)
    assert msgs[0].value == b"v0" and msgs[0].key == b"k0"
    assert (h["x-source-topic"], h["x-source-partition"], h["x-source-offset"]) == (b"jobs", b"0", b"0")
    assert (h["x-delivery-count"], h["x-last-member"], h["x-share-group"]) == (b"3", b"worker-a", b"g")
    (s,) = a.describe()
    assert (s.dead_lettered, s.acked, s.floor) == (1, 1, 2)


def test_rejected_record_goes_to_the_dlq_at_once(bus):
    setup(bus, n=1, partitions=1, dlq=True)
    a = share(bus, member="a", dlq="jobs-dlq")
    if a is None:
        return
    (r,) = a.poll(10)
    assert a.reject(r) == 1
    assert a.poll(10) == []
    (m,) = _read_all(bus, "jobs-dlq")
    assert dict(m.headers)["x-delivery-count"] == b"1"
    (s,) = a.describe()
    assert (s.rejected, s.floor) == (1, 1)


def test_a_member_on_another_handle_shares_the_same_state(bus):
    setup(bus, n=4, partitions=1)
    a = share(bus, member="a")
    if a is None:
        return
    other = bus.attach().share_consumer("jobs", group="g", member="b")
    ra = a.poll(2)
    rb = other.poll(10)
    assert [r.offset for r in ra] == [0, 1] and [r.offset for r in rb] == [2, 3]
    other.ack(rb)
    a.ack(ra)
    assert a.describe()[0].acked == 4


def test_group_settings_belong_to_the_group(bus):
    setup(bus, n=1)
    a = share(bus, lock_secs=5, max_deliveries=2)
    if a is None:
        return
    with pytest.raises(InvalidArgument, match="lock_secs=5"):
        bus.mgr.share_consumer("jobs", group="g", lock_secs=6, max_deliveries=2)


@pytest.mark.parametrize("kw, err", [
    (dict(lock_secs=0), InvalidArgument), (dict(lock_secs="1"), InvalidType),
    (dict(max_deliveries=0), InvalidArgument), (dict(max_deliveries=255), InvalidArgument),
    (dict(dlq="jobs"), InvalidArgument), (dict(dlq="nope"), NotFound), (dict(group="a/b"), InvalidArgument),
    (dict(member=""), InvalidArgument), (dict(buf_size="x"), InvalidType), (dict(buf_size=0), InvalidArgument),
])
def test_bad_settings_are_refused_and_name_what_was_wrong(bus, kw, err):
    setup(bus, n=0)
    if not bus.caps.share_groups:
        share(bus)
        return
    with pytest.raises(err):
        bus.mgr.share_consumer("jobs", **({"group": "g"} | kw))


def test_bad_calls_are_refused_and_change_nothing(bus):
    setup(bus, n=1, partitions=1)
    a = share(bus)
    if a is None:
        return
    with pytest.raises(InvalidArgument):
        a.poll(0)
    with pytest.raises(InvalidType):
        a.poll(1, timeout="soon")
    (r,) = a.poll(1)
    for bad in (b"x", 3, [r, "x"]):
        with pytest.raises(InvalidType):
            a.ack(bad)
    with pytest.raises(InvalidArgument):
        a.ack_range(0, 5, 2)
    assert a.describe()[0].in_flight == 1
    assert a.ack(r) == 1


def test_iteration_context_manager_and_async_forms(bus):
    setup(bus, n=3, partitions=1)
    if share(bus) is None:
        return
    with bus.mgr.share_consumer("jobs", group="it") as c:
        seen = []
        for r in c:
            seen.append(r.value)
            c.ack(r)
            if len(seen) == 3:
                break
    assert sorted(seen) == [b"v0", b"v1", b"v2"]

    async def go():
        async with bus.mgr.share_consumer("jobs", group="aio") as ac:
            recs = await ac.apoll(10, timeout=5)
            await ac.aack(recs[:1])
            await ac.arelease(recs[1:])
            again = await ac.apoll(10, timeout=5)
            assert [r.delivery_count for r in again] == [2, 2]
            await ac.aack(again)
            return ac.describe()
    (s,) = asyncio.run(go())
    assert (s.acked, s.released) == (3, 2)


def test_closing_releases_what_the_member_held(bus):
    setup(bus, n=2, partitions=1)
    a = share(bus, member="a")
    if a is None:
        return
    a.poll(10)
    a.close()
    b = share(bus, member="b")
    assert [(r.offset, r.delivery_count) for r in b.poll(10)] == [(0, 2), (1, 2)]


def _read_all(bus, topic):
    c = Consumer(topic, f"read-{time.monotonic_ns()}")
    c.seek(bus.mgr, None, SeekPolicy.Earliest)
    out, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        got = c.poll(bus.mgr, 100, timeout=0.2)
        if not got and out:
            break
        out += [m for _, m in got]
    return out
