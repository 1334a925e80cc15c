"""grafos.aio: an awaiting task gets every message a producer process sends,
woken through the fabric's futex (not by polling); cancellation and timeouts
leave the consumer's positions where they were; an idle await costs no CPU;
it runs on asyncio's loop and on uvloop."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import pytest

from helpers import mp_helpers
from grafos.aio import AsyncConsumer, AsyncProducer
from grafos.errors import InvalidType
from grafos.mq import Consumer, MemOffsetStore, Partitioner, SeekPolicy, TopicConfig, TopicManager


def _uvloop_runner():
    uvloop = pytest.importorskip("uvloop")   # optional: tested when it is installed
    return uvloop.run


LOOPS = {"asyncio": lambda: asyncio.run, "uvloop": _uvloop_runner}


@pytest.fixture(params=list(LOOPS))
def run(request):
    return LOOPS[request.param]()


@pytest.fixture
def mgr():
    m = TopicManager(size=32 << 20)
    m.create("events", TopicConfig(num_partitions=2, partition_capacity=256, partition_stride=128))
    yield m
    m.close()


def test_an_awaiting_task_should_get_every_message_from_a_producer_process(shm_name, procs, run):
    n = 3000
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("events", TopicConfig(num_partitions=3, partition_capacity=1024, partition_stride=64))
    go = mp.get_context("spawn").Event()
    mp_helpers.start(procs, mp_helpers.burst_producer, shm_name, "events", n, 100, 0.02, go)
    consumer = mgr.consumer("events", group="aio")
    consumer.seek(SeekPolicy.Earliest)
    async def main():
        seen = []
        async with AsyncConsumer(consumer) as c:
            go.set()
            async for _, msg in c.messages(batch=64):
                seen.append(int.from_bytes(msg.value, "little"))
                if len(seen) == n:
                    break
            assert sum(c.lost().values()) == 0
            woken = c.woken
        return seen, woken

    seen, woken = run(asyncio.wait_for(main(), 120))
    assert sorted(seen) == list(range(n))
    # the task really slept between bursts and was woken by the other process's
    # publish (a wait that ended readable), not only by its wait running out
    assert woken >= 1
    mgr.close()


def test_poll_should_time_out_with_nothing_and_return_at_once_without_timeout(mgr, run):
    async def main():
        c = AsyncConsumer(mgr.consumer("events"))
        c.seek(SeekPolicy.Latest)
        t = time.monotonic()
        assert await c.poll(10, timeout=0.3) == []
        slept = time.monotonic() - t
        t = time.monotonic()
        assert await c.poll(10) == []          # timeout 0: a look, no wait
        assert await c.poll(timeout=0.0) == []
        await c.aclose()
        return slept, time.monotonic() - t

    slept, quick = run(main())
    assert slept >= 0.29 and quick < slept


def test_a_cancelled_poll_should_leave_the_position_where_it_was(mgr, run):
    prod = mgr.producer("events", Partitioner.RoundRobin)
    for i in range(4):
        prod.send(b"old%d" % i)

    async def main():
        c = AsyncConsumer(mgr.consumer("events"))
        c.seek(SeekPolicy.Latest)
        before = c.positions()
        task = asyncio.create_task(c.poll(10, timeout=None))
        await asyncio.sleep(0.1)                # the helper thread is asleep on the futex
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.positions() == before
        prod.send(b"new")                       # wakes the helper thread: it must not read it
        await asyncio.sleep(0.1)
        assert c.positions() == before
        got = await c.poll(10, timeout=1.0)
        await c.aclose()
        return [m.value for _, m in got]

    assert run(main()) == [b"new"]


def test_wait_for_around_poll_should_cancel_cleanly_and_the_next_poll_should_work(mgr, run):
    async def main():
        c = AsyncConsumer(mgr.consumer("events"))
        c.seek(SeekPolicy.Latest)
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.poll(10, timeout=None), 0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: mgr.producer("events").send(b"late"))
        got = await c.poll(10, timeout=5.0)
        await c.aclose()
        return [m.value for _, m in got]

    assert run(main()) == [b"late"]


def test_leaving_messages_mid_batch_should_commit_only_what_was_seen(mgr, run):
    prod = mgr.producer("events", Partitioner.RoundRobin)
    for i in range(10):
        prod.send(b"m%d" % i)
    store = MemOffsetStore()

    async def main():
        async with AsyncConsumer(mgr.consumer("events", group="g")) as c:
            c.seek(SeekPolicy.Earliest)
            seen = []
            async for p, msg in c.messages(batch=100):
                seen.append((p, msg.offset))
                if len(seen) == 3:
                    break
            committed = await c.commit(store)
            rest = [(p, m.offset) for p, m in await c.poll(100)]
        return seen, committed, rest

    seen, committed, rest = run(main())
    per = {p: max(o for q, o in seen if q == p) + 1 for p, _ in seen}
    assert committed == {p: per.get(p, 0) for p in (0, 1)}
    assert sorted(seen + rest) == sorted((p, o) for p in (0, 1) for o in range(5))


def test_cancelling_a_task_in_async_for_should_give_the_rest_back(mgr, run):
    prod = mgr.producer("events", Partitioner.RoundRobin)
    store = MemOffsetStore()

    async def main():
        c = AsyncConsumer(mgr.consumer("events", group="g"))
        c.seek(SeekPolicy.Earliest)
        seen = []
        first = asyncio.Event()

        async def reader():
            async for _, msg in c.messages(batch=100):
                seen.append(msg.value)
                first.set()
                await asyncio.sleep(3600)          # "processing" the first one

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.05)
        for i in range(6):
            prod.send(b"m%d" % i)
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        committed = await c.commit(store)
        await c.aclose()
        return seen, committed

    seen, committed = run(main())
    assert len(seen) == 1 and sum(committed.values()) == 1


def test_an_idle_await_should_use_no_cpu(mgr, run):
    async def main():
        c = AsyncConsumer(mgr.consumer("events"))
        c.seek(SeekPolicy.Latest)
        cpu, wall = time.process_time(), time.monotonic()
        assert await c.poll(10, timeout=2.0) == []
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        await c.aclose()
        return cpu, wall

    cpu, wall = run(main())
    assert wall >= 1.99
    assert cpu < 0.1, f"an idle 2 s await used {cpu:.3f} s of CPU"   # a polling loop uses ~2 s


def test_async_producer_should_send_and_the_consumer_commit(mgr, run):
    store = MemOffsetStore()

    async def main():
        async with AsyncProducer(Producer_ := mgr.producer("events")) as p:
            assert p.producer is Producer_
            a = await p.send_keyed(b"k", b"v1")
            b = await p.send(mgr, b"v2")                  # the manager-first spelling
            parts, _ = await p.send_batch([b"v3", b"v4"])
        async with AsyncConsumer(Consumer("events", "g"), mgr=mgr) as c:
            c.seek(SeekPolicy.Earliest)
            got = await c.poll(mgr, 10, timeout=1.0)
            committed = await c.commit(store)
        return a, b, list(parts), got, committed

    a, b, parts, got, committed = run(main())
    assert sorted(m.value for _, m in got) == [b"v1", b"v2", b"v3", b"v4"]
    assert sum(committed.values()) == 4 and store.committed("g", "events", a[0]) >= 1


def test_async_handles_should_refuse_bad_input(mgr):
    with pytest.raises(InvalidType, match="Consumer"):
        AsyncConsumer("events")                           # type: ignore[arg-type]
    with pytest.raises(InvalidType, match="Producer"):
        AsyncProducer(object())                           # type: ignore[arg-type]

    async def main():
        c = AsyncConsumer(Consumer("events"))            # not bound, no mgr=
        with pytest.raises(InvalidType, match="pass mgr"):
            await c.poll(10)
        with pytest.raises(InvalidType):
            await c.poll(mgr, 10, timeout="soon")
        await c.aclose()

    asyncio.run(main())


def test_the_waiter_thread_should_answer_without_reading_and_stop_promptly(mgr):
    import os as _os
    import select

    from grafos.reader import Waiter
    c = mgr.consumer("events")
    c.seek(SeekPolicy.Latest)
    w = Waiter()
    fd = w.fd
    try:
        n = c.wait_request(w, mgr, 0.05)                 # nothing to read: answered when time is up
        assert select.select([w.fd], [], [], 5)[0] == [w.fd]
        assert w.answered() == (n, False)
        n = c.wait_request(w, mgr, None)                 # no timeout: answered by a publish
        assert select.select([w.fd], [], [], 0.1)[0] == []
        mgr.producer("events").send(b"x")
        assert select.select([w.fd], [], [], 5)[0] == [w.fd]
        assert w.answered() == (n, True)
        assert c.positions() == {0: 0, 1: 0}             # nothing was read
        c.poll(10)
        old = c.wait_request(w, mgr, None)               # superseded by a newer request
        new = c.wait_request(w, mgr, 0.05)
        assert select.select([w.fd], [], [], 5)[0] == [w.fd]
        done, readable = w.answered()
        assert done == new and Waiter.is_answered(old, done) and not readable
        c.wait_request(w, mgr, None)                     # a wait with no end in progress ...
    finally:
        t = time.monotonic()
        assert w.close()                                 # ... does not hold up close
        assert time.monotonic() - t < 1.0
    with pytest.raises(OSError):
        _os.fstat(fd)
