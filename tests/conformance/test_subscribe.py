"""The subscribe consumer (``mgr.subscribe``) on every backend: it joins its
group, takes its fair share, commits through the group, hands partitions over
in order (revoke, then assign) when members come and go, and iterates."""
from __future__ import annotations

import asyncio
import pickle
import time

import pytest

from grafos.errors import (CorruptFabric, InvalidArgument, InvalidType, LockTimeout, NotFound, NotPortable,
                           Unsupported)
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig

N_PARTS = 4
FAST = dict(heartbeat_interval=0.05, session_timeout=5.0)


def make_topic(bus, name: str, per_partition: int = 5) -> dict[int, int]:
    """A topic of 4 partitions with ``per_partition`` messages on each; returns the ends."""
    bus.mgr.create(name, TopicConfig(num_partitions=N_PARTS, partition_capacity=256, partition_stride=256))
    prod = Producer(name)
    for p in range(N_PARTS):
        for i in range(per_partition):
            prod.send_keyed(bus.mgr, _key_for(p), b"m-%d-%d" % (p, i))
    return {p: per_partition for p in range(N_PARTS)}


def _key_for(p: int) -> bytes:
    """A key that lands on partition ``p`` of 4 (Kafka's partitioner)."""
    i = 0
    while kafka_partition(b"k%d" % i, N_PARTS) != p:
        i += 1
    return b"k%d" % i


def send(bus, topic: str, partition: int, n: int) -> None:
    prod = Producer(topic)
    for i in range(n):
        prod.send_keyed(bus.mgr, _key_for(partition), b"late-%d" % i)


def drain(sub, want: int, deadline: float = 10.0) -> list:
    got: list = []
    end = time.monotonic() + deadline
    while len(got) < want and time.monotonic() < end:
        got += sub.poll(100, timeout=0.1)
    return got


def committed(bus, group: str, topic: str) -> dict[int, int | None]:
    store = bus.store()
    return {p: store.committed(group, topic, p) for p in range(N_PARTS)}


def settle(subs, check, deadline: float = 10.0) -> None:
    """Poll every subscriber in turn until ``check()`` holds."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, [s.assignment() for s in subs]
        for s in subs:
            s.poll(10, timeout=0.02)


def test_a_subscriber_should_join_take_every_partition_poll_and_commit_through_the_group(bus):
    ends = make_topic(bus, "sub-basic")
    log: list = []
    with bus.mgr.subscribe("sub-basic", group="g", member="m1", auto_commit=False,
                           on_assign=lambda ps: log.append(("assign", ps)), **FAST) as sub:
        assert sub.assignment() == []            # joins at its first poll, as a Kafka consumer does
        got = drain(sub, sum(ends.values()))
        assert sub.assignment() == [0, 1, 2, 3] and log == [("assign", [0, 1, 2, 3])]
        assert sorted((p, m.offset) for p, m in got) == [(p, o) for p in range(4) for o in range(ends[p])]
        assert committed(bus, "g", "sub-basic") == {p: None for p in range(4)}   # auto_commit off
        assert sub.commit() == ends
        assert committed(bus, "g", "sub-basic") == ends
        assert sub.positions() == ends and sub.lag() == {p: 0 for p in range(4)}
        assert sub.commit({0: 2}) == {0: 2}
        assert committed(bus, "g", "sub-basic")[0] == 2
        assert sub.consumer_group.assignments() == {p: "m1" for p in range(4)}
    assert sub.consumer_group.assignments() == {}     # it left
    with pytest.raises(InvalidArgument):
        sub.poll(1)


def test_auto_commit_should_commit_what_the_previous_poll_returned_at_the_next_poll_and_at_close(bus):
    make_topic(bus, "sub-auto", per_partition=3)
    sub = bus.mgr.subscribe("sub-auto", group="g", member="m1", **FAST)
    first = sub.poll(4, timeout=5.0)
    assert len(first) == 4
    assert committed(bus, "g", "sub-auto") == {p: None for p in range(4)}   # not processed yet
    pos_after_first = sub.positions()
    second = sub.poll(4, timeout=5.0)
    assert len(second) == 4
    assert committed(bus, "g", "sub-auto") == pos_after_first              # the first poll's messages
    pos_after_second = sub.positions()
    sub.close()
    assert committed(bus, "g", "sub-auto") == pos_after_second
    # a new member of the group starts where the group committed: nothing repeats
    with bus.mgr.subscribe("sub-auto", group="g", member="m2", **FAST) as again:
        rest = drain(again, 12 - 8)
        seen = {(p, m.offset) for p, m in first + second}
        assert len(rest) == 4 and not seen & {(p, m.offset) for p, m in rest}


def test_auto_commit_interval_should_commit_at_most_that_often_and_always_at_close(bus):
    make_topic(bus, "sub-interval", per_partition=3)
    sub = bus.mgr.subscribe("sub-interval", group="g", member="m1", auto_commit_interval=60.0, **FAST)
    assert sub.poll(4, timeout=5.0)
    pos1 = sub.positions()
    assert sub.poll(4, timeout=5.0)
    assert committed(bus, "g", "sub-interval") == pos1     # the first commit is due at once
    assert sub.poll(4, timeout=5.0)
    assert committed(bus, "g", "sub-interval") == pos1     # within the interval: none
    pos3 = sub.positions()
    assert pos3 != pos1
    sub.close()
    assert committed(bus, "g", "sub-interval") == pos3     # close always commits


def test_a_second_member_should_take_half_revoke_then_assign_after_a_last_commit(bus):
    ends = make_topic(bus, "sub-join")
    log: list = []
    store = bus.store()

    def revoked(name, sub_ref):
        def cb(parts):
            # the last commit of the partitions comes before they are given away
            s = sub_ref[0]
            log.append((name, "revoke", parts, {p: store.committed("g", "sub-join", p) for p in parts},
                        {p: s.position(p) for p in parts}))
        return cb

    r1: list = []
    m1 = bus.mgr.subscribe("sub-join", group="g", member="m1", on_revoke=revoked("m1", r1),
                           on_assign=lambda ps: log.append(("m1", "assign", ps)), **FAST)
    r1.append(m1)
    got1 = drain(m1, sum(ends.values()))
    assert len(got1) == sum(ends.values())
    m2 = bus.mgr.subscribe("sub-join", group="g", member="m2",
                           on_assign=lambda ps: log.append(("m2", "assign", ps)), **FAST)
    try:
        settle([m1, m2], lambda: m1.assignment() == [0, 1] and m2.assignment() == [2, 3])
        assert [e[:3] for e in log] == [("m1", "assign", [0, 1, 2, 3]), ("m1", "revoke", [2, 3]),
                                        ("m2", "assign", [2, 3])]
        _, _, _, at_revoke, positions = log[1]
        assert at_revoke == positions == {2: ends[2], 3: ends[3]}
        # m2 starts at the group's commit: it sees only what comes after
        send(bus, "sub-join", 2, 2)
        late = drain(m2, 2)
        assert [(p, m.offset) for p, m in late] == [(2, ends[2]), (2, ends[2] + 1)]
    finally:
        m2.close()
        m1.close()


def test_without_auto_commit_on_revoke_should_be_able_to_commit_what_it_gives_away(bus):
    ends = make_topic(bus, "sub-manual")
    subs: list = []
    committed_in_revoke: list = []

    def on_revoke(parts):
        committed_in_revoke.append(subs[0].commit({p: subs[0].position(p) for p in parts}))

    m1 = bus.mgr.subscribe("sub-manual", group="g", member="m1", auto_commit=False, on_revoke=on_revoke, **FAST)
    subs.append(m1)
    m2 = bus.mgr.subscribe("sub-manual", group="g", member="m2", auto_commit=False, **FAST)
    try:
        drain(m1, sum(ends.values()))
        settle([m1, m2], lambda: m1.assignment() == [0, 1] and m2.assignment() == [2, 3])
        assert committed_in_revoke == [{2: ends[2], 3: ends[3]}]
        assert m2.positions() == {2: ends[2], 3: ends[3]}      # the new owner starts after them
    finally:
        m2.close()
        m1.close()


def test_a_subscriber_on_a_block_topic_should_keep_its_producer_going_and_lose_nothing(bus):
    import threading
    cfg = TopicConfig(num_partitions=2, partition_capacity=8, partition_stride=128, on_full="block")
    if not bus.caps.gating:
        with pytest.raises(Unsupported):
            bus.mgr.create("sub-block", cfg)
        return
    bus.mgr.create("sub-block", cfg)
    n = 200
    with bus.mgr.subscribe("sub-block", group="g", member="m1", **FAST) as sub:
        assert sub.poll(10) == [] and sub.assignment() == [0, 1]     # joined: the group gates the topic
        errors: list = []

        def produce() -> None:
            try:
                prod = Producer("sub-block", timeout=20.0)
                for i in range(n):
                    prod.send(bus.mgr, b"%d" % i)
            except Exception as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
        t = threading.Thread(target=produce)
        t.start()
        got = []
        stuck = threading.Timer(30.0, sub.wakeup)  # ends the loop if the messages stop coming
        stuck.start()
        for partition, msg in sub:              # each poll commits the one before: the gate moves on
            got.append(int(msg.value))
            if len(got) == n:
                break
        stuck.cancel()
        t.join(30)
        assert not errors and sorted(got) == list(range(n))
        assert sub.lost() == {}


def test_close_should_hand_the_partitions_over_at_once(bus):
    make_topic(bus, "sub-close", per_partition=2)
    log: list = []
    # a long session: only leaving (not a stale member) can move the partitions this fast
    opts = dict(heartbeat_interval=0.05, session_timeout=60.0)
    m1 = bus.mgr.subscribe("sub-close", group="g", member="m1", **opts)
    m2 = bus.mgr.subscribe("sub-close", group="g", member="m2",
                           on_assign=lambda ps: log.append(("assign", ps)),
                           on_revoke=lambda ps: log.append(("revoke", ps)), **opts)
    try:
        assert len(drain(m1, 8)) == 8
        settle([m1, m2], lambda: m1.assignment() == [0, 1] and m2.assignment() == [2, 3])
        m1.close()
        t0 = time.monotonic()
        settle([m2], lambda: m2.assignment() == [0, 1, 2, 3])
        assert time.monotonic() - t0 < 5.0
        assert log == [("assign", [2, 3]), ("assign", [0, 1])]
        send(bus, "sub-close", 0, 1)
        assert [(p, m.offset) for p, m in drain(m2, 1)] == [(0, 2)]    # from m1's commit on
    finally:
        m2.close()
    assert log[-1] == ("revoke", [0, 1, 2, 3])     # close revokes what it held


def test_iterating_should_hand_out_every_message_and_commit_only_what_was_handed_out(bus):
    ends = make_topic(bus, "sub-iter", per_partition=5)
    sub = bus.mgr.subscribe("sub-iter", group="g", member="m1", **FAST)
    seen = []
    for partition, msg in sub:
        seen.append((partition, msg.offset))
        if len(seen) == 7:
            break
    sub.close()
    # the loop polled a whole batch; what it did not hand out is not committed
    c = committed(bus, "g", "sub-iter")
    assert sum(v or 0 for v in c.values()) == 7
    assert {(p, o) for p in range(4) for o in range(c[p] or 0)} == set(seen)
    with bus.mgr.subscribe("sub-iter", group="g", member="m2", **FAST) as again:
        rest = []
        for partition, msg in again:
            rest.append((partition, msg.offset))
            if len(rest) == sum(ends.values()) - 7:
                break
    assert sorted(seen + rest) == [(p, o) for p in range(4) for o in range(5)]


def test_wakeup_from_another_thread_should_end_a_blocking_loop(bus):
    make_topic(bus, "sub-wake", per_partition=1)
    import threading
    with bus.mgr.subscribe("sub-wake", group="g", member="m1", **FAST) as sub:
        seen = []
        threading.Timer(0.5, sub.wakeup).start()
        t0 = time.monotonic()
        for partition, msg in sub:               # 4 messages, then it would wait for ever
            seen.append((partition, msg.offset))
        assert sorted(seen) == [(p, 0) for p in range(4)]
        assert 0.4 < time.monotonic() - t0 < 5.0
        threading.Timer(0.3, sub.wakeup).start()
        assert sub.poll(10, timeout=None) == []  # a poll that would wait for ever returns
        send(bus, "sub-wake", 2, 1)
        assert [(p, m.offset) for p, m in drain(sub, 1)] == [(2, 1)]   # and it reads on as before

        async def loop() -> list:
            asyncio.get_running_loop().call_later(0.3, sub.wakeup)
            return [(p, m.offset) async for p, m in sub]
        assert asyncio.run(loop()) == []


def test_async_iteration_should_hand_out_every_message(bus):
    ends = make_topic(bus, "sub-async", per_partition=4)

    async def main() -> list:
        out = []
        async with bus.mgr.subscribe("sub-async", group="g", member="m1", **FAST) as sub:
            async for partition, msg in sub:
                out.append((partition, msg.offset))
                if len(out) == sum(ends.values()):
                    break
            # a wait that is cancelled loses nothing: a message sent after it is read next
            task = asyncio.ensure_future(sub.__anext__())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            send(bus, "sub-async", 1, 1)
            out.append(await asyncio.wait_for(sub.__anext__(), 10.0))
        return out

    out = asyncio.run(main())
    assert sorted(out[:-1]) == [(p, o) for p in range(4) for o in range(4)]
    p, m = out[-1]
    assert (p, m.offset) == (1, 4)
    assert committed(bus, "g", "sub-async") == {0: 4, 1: 5, 2: 4, 3: 4}


def test_a_member_that_went_stale_should_revoke_what_was_taken_without_committing_it(bus):
    make_topic(bus, "sub-stale", per_partition=2)
    log: list = []
    m1 = bus.mgr.subscribe("sub-stale", group="g", member="m1", heartbeat_interval=0.05, session_timeout=0.6,
                           on_revoke=lambda ps: log.append(("revoke", ps)),
                           on_assign=lambda ps: log.append(("assign", ps)))
    m2 = bus.mgr.subscribe("sub-stale", group="g", member="m2", heartbeat_interval=0.05, session_timeout=0.6)
    try:
        drain(m1, 8)
        real = m1.consumer_group.beat

        def stuck(member, now=None):
            raise LockTimeout("held elsewhere (test)")
        m1.consumer_group.beat = stuck            # its heartbeats fail: it goes stale, but it is not fatal
        time.sleep(0.8)
        # m1's last poll was never committed: the new owner reads it again (at least once)
        c = committed(bus, "g", "sub-stale")
        expect = [(p, o) for p in range(4) for o in range(c[p] or 0, 2)]
        assert expect
        again = drain(m2, len(expect))
        assert m2.assignment() == [0, 1, 2, 3]    # took everything over
        assert sorted((p, m.offset) for p, m in again) == expect
        assert m1.beat_retries >= 3
        m1.consumer_group.beat = real
        m1.poll(10, timeout=0.2)                  # its commit is refused: it learns it lost them
        assert ("revoke", [0, 1, 2, 3]) in log
        settle([m1, m2], lambda: sorted(m1.assignment() + m2.assignment()) == [0, 1, 2, 3]
               and len(m1.assignment()) == 2)
    finally:
        m1.close()
        m2.close()


def test_a_heartbeat_that_hits_a_lock_timeout_should_be_retried_before_the_member_goes_stale(bus):
    make_topic(bus, "sub-retry", per_partition=1)
    # one beat every 1.5 s in a 2 s session: a failed beat retried only at the next
    # interval (3 s) would leave the member stale from 2 s on
    sub = bus.mgr.subscribe("sub-retry", group="g", member="m1", heartbeat_interval=1.5, session_timeout=2.0)
    try:
        drain(sub, 4)
        real, failed = sub.consumer_group.beat, []

        def once_stuck(member, now=None):
            if not failed:
                failed.append(time.monotonic())
                raise LockTimeout("held elsewhere (test)")
            return real(member, now)
        sub.consumer_group.beat = once_stuck
        from grafos.mq.group import ConsumerGroup
        other = ConsumerGroup.attach(bus.attach(), "g", "sub-retry")
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            assert "m1" not in other.stale_members()
            time.sleep(0.1)
        assert failed and sub.beat_retries == 1 and sub.beats >= 1
        assert other.assignments() == {p: "m1" for p in range(4)}
    finally:
        sub.close()


def test_a_heartbeat_error_that_is_not_transient_should_be_raised_by_the_next_poll(bus):
    make_topic(bus, "sub-err", per_partition=1)
    with bus.mgr.subscribe("sub-err", group="g", member="m1", **FAST) as sub:
        sub.poll(10, timeout=1.0)
        real = sub.consumer_group.beat

        def broken(member, now=None):
            raise CorruptFabric("damaged group record (test)")
        sub.consumer_group.beat = broken
        time.sleep(0.3)
        with pytest.raises(CorruptFabric):
            sub.poll(10, timeout=0.5)
        sub.consumer_group.beat = real
        sub.poll(10, timeout=0.2)                 # beats again
        beats = sub.beats
        time.sleep(0.3)
        assert sub.beats > beats


def test_a_member_that_stops_polling_should_leave_and_join_again_at_its_next_poll(bus):
    make_topic(bus, "sub-idle", per_partition=2)
    log: list = []
    sub = bus.mgr.subscribe("sub-idle", group="g", member="m1", auto_commit=False, max_poll_interval=0.3,
                            on_assign=lambda ps: log.append(("assign", ps)),
                            on_revoke=lambda ps: log.append(("revoke", ps)), **FAST)
    try:
        assert len(drain(sub, 8)) == 8
        time.sleep(0.6)                      # heartbeats go on, polls do not
        assert sub.consumer_group.assignments() == {} and "m1" not in sub.consumer_group.members()
        again = drain(sub, 8)                # nothing was committed: it reads them again
        assert log == [("assign", [0, 1, 2, 3]), ("revoke", [0, 1, 2, 3]), ("assign", [0, 1, 2, 3])]
        assert sorted((p, m.offset) for p, m in again) == [(p, o) for p in range(4) for o in range(2)]
    finally:
        sub.close()


def test_polling_from_a_rebalance_callback_should_be_refused(bus):
    make_topic(bus, "sub-reenter", per_partition=1)
    errors: list = []
    subs: list = []

    def on_assign(parts):
        try:
            subs[0].poll(1)
        except InvalidArgument as e:
            errors.append(e)
        subs[0].commit()                     # committing from a callback is what callbacks are for

    with bus.mgr.subscribe("sub-reenter", group="g", member="m1", on_assign=on_assign, **FAST) as sub:
        subs.append(sub)
        drain(sub, 4)
        assert len(errors) == 1 and "on_assign" in str(errors[0])


def test_subscribe_should_refuse_bad_arguments_clearly(bus):
    make_topic(bus, "sub-bad", per_partition=0)
    with pytest.raises(NotFound):
        bus.mgr.subscribe("no-such-topic", group="g")
    with pytest.raises(InvalidType):
        bus.mgr.subscribe("sub-bad", group="g", on_assign=3)
    with pytest.raises(InvalidType):
        bus.mgr.subscribe("sub-bad", group="g", auto_commit="yes")
    with pytest.raises(InvalidArgument):
        bus.mgr.subscribe("sub-bad", group="g", session_timeout=1.0, heartbeat_interval=2.0)
    with pytest.raises(InvalidArgument):
        bus.mgr.subscribe("sub-bad", group="g", member="no/slash")
    sub = bus.mgr.subscribe("sub-bad", group="g")
    try:
        with pytest.raises(NotPortable):
            pickle.dumps(sub)
        assert sub.member.count("-") >= 2          # host-pid-counter
        with bus.mgr.subscribe("sub-bad", group="g") as other:
            assert other.member != sub.member
    finally:
        sub.close()
