"""Background heartbeats: a member busy for longer than its stale threshold
keeps its partitions while ``keep_alive`` runs; one whose process dies loses
them once the threshold passes; without it, a busy member is taken over."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import mp_helpers
from grafos.errors import Fenced, InvalidArgument, LockTimeout
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.topic import TopicConfig, TopicManager

STALE = 0.3


@pytest.fixture
def bus(shm_name):
    mgr = TopicManager.open(shm_name, size=16 << 20)
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=16, partition_stride=128))
    yield shm_name, mgr
    mgr.close()


def epochs(g: ConsumerGroup) -> dict[int, int]:
    return {p: c.epoch for p, c in g.claims().items()}


def test_a_busy_member_with_keep_alive_should_keep_its_partitions(bus):
    name, mgr = bus
    g = ConsumerGroup("workers", "events", 4, STALE, mgr=mgr)
    other = ConsumerGroup.attach(TopicManager.open(name), "workers", "events")   # another handle, as another process
    assert g.claim("w1") == [0, 1, 2, 3]
    before = epochs(g)
    with g.keep_alive("w1") as ka:
        time.sleep(3 * STALE)                      # "processing" for 3x the stale threshold
        assert "w1" not in other.stale_members()
        assert other.claim("w2") == []             # nothing stale to take over
        assert epochs(other) == before
    assert ka.beats >= 3 and not ka.running
    # w1 was never fenced: its commit goes through (the rebalance to w2 comes at a heartbeat)
    store = FabricOffsetStore(mgr)
    assert g.commit(store, "w1", "events", {p: 0 for p in g.owned("w1")})


def test_a_busy_member_without_keep_alive_should_be_taken_over(bus):
    name, mgr = bus
    g = ConsumerGroup("workers", "events", 4, STALE, mgr=mgr)
    assert g.claim("w1") == [0, 1, 2, 3]
    time.sleep(3 * STALE)
    assert g.claim("w2") == [0, 1, 2, 3]
    with pytest.raises(Fenced):
        g.commit(FabricOffsetStore(mgr), "w1", "events", {0: 0})


def test_a_member_whose_process_dies_should_lose_its_partitions(bus, procs):
    name, mgr = bus
    g = ConsumerGroup("workers", "events", 4, STALE, mgr=mgr)
    ready = mp.get_context("spawn").Queue()
    child = mp_helpers.start(procs, mp_helpers.keep_alive_member, name, "workers", "events", "child", ready)
    assert ready.get(timeout=60) == [0, 1, 2, 3]
    time.sleep(3 * STALE)
    assert g.claim("w2") == [] and "child" not in g.stale_members()   # alive: its thread beats
    before = epochs(g)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    time.sleep(STALE * 1.5)
    assert "child" in g.stale_members()
    assert g.claim("w2") == [0, 1, 2, 3]
    assert all(epochs(g)[p] == before[p] + 1 for p in range(4))


def test_keep_alive_should_work_as_async_with():
    g = ConsumerGroup("workers", "events", 2, STALE)
    g.claim("w1")

    async def main():
        async with g.keep_alive("w1", interval=0.05) as ka:
            await asyncio.sleep(3 * STALE)
            assert g.claim("w2") == []
        return ka

    ka = asyncio.run(main())
    assert ka.beats >= 3


def test_keep_alive_should_report_a_heartbeat_error_when_the_block_ends():
    g = ConsumerGroup("workers", "events", 2, STALE)
    calls = []

    def broken(member, now=None):
        calls.append(member)
        if len(calls) > 1:
            raise RuntimeError("fabric gone")
        return [0, 1]

    g.heartbeat = broken       # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="fabric gone"):
        with g.keep_alive("w1", interval=0.02) as ka:
            time.sleep(0.2)
    assert not ka.running and len(calls) == 2


def test_keep_alive_should_refuse_an_interval_not_below_the_threshold():
    g = ConsumerGroup("workers", "events", 2, STALE)
    with pytest.raises(InvalidArgument, match="shorter than the stale threshold"):
        g.keep_alive("w1", interval=STALE)


# another process inside the metadata lock for longer than the lock timeout ----------------
HOLD = """
import sys, time
from grafos.mq.group import ConsumerGroup
from grafos.mq.topic import TopicManager
name, seconds, take = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "take"
mgr = TopicManager.open(name, create=False)
g = ConsumerGroup.attach(mgr, "workers", "events")
with mgr.fabric.locked():
    print("held", flush=True)
    time.sleep(seconds)              # paused inside the lock
    if take:
        print(g.claim("w2"), flush=True)
"""


def hold_the_lock(name: str, seconds: float, take: bool = False) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, name, str(seconds), "take" if take else "-"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_a_slow_lock_should_not_stop_keep_alive(bus):
    name, mgr = bus
    stale = 2.0
    mgr.fabric.lock_timeout = 0.1            # every heartbeat during the hold times out
    g = ConsumerGroup("workers", "events", 4, stale, mgr=mgr)
    assert g.claim("w1") == [0, 1, 2, 3]
    before = epochs(g)
    with g.keep_alive("w1", interval=0.2) as ka:
        holder = hold_the_lock(name, 1.0)    # more than the lock timeout, less than the threshold
        holder.communicate(timeout=60)
        assert holder.returncode == 0
        time.sleep(stale + 0.5)              # past the threshold since the last beat before the hold
        assert ka.running and ka.retries >= 1
        assert "w1" not in g.stale_members()
        assert g.claim("w2") == []           # nothing stale to take over
    assert ka.owned == [0, 1, 2, 3] and epochs(g) == before
    assert g.commit(FabricOffsetStore(mgr), "w1", "events", {p: 0 for p in range(4)})


def test_keep_alive_should_report_partitions_taken_while_a_lock_outlasted_the_threshold(bus):
    name, mgr = bus
    stale = 0.4
    mgr.fabric.lock_timeout = 0.1
    g = ConsumerGroup("workers", "events", 4, stale, mgr=mgr)
    assert g.claim("w1") == [0, 1, 2, 3]
    with pytest.raises(Fenced) as e:
        with g.keep_alive("w1", interval=0.1) as ka:
            holder = hold_the_lock(name, 3 * stale, take=True)    # w1 goes stale; w2 takes it all
            out, _ = holder.communicate(timeout=60)
            assert out.strip() == "[0, 1, 2, 3]"
            deadline = time.monotonic() + 10
            while ka.running and time.monotonic() < deadline:
                time.sleep(0.05)
    assert e.value.partitions == [0, 1, 2, 3] and set(e.value.owners.values()) == {"w2"}
    assert ka.retries >= 1


def test_keep_alive_should_report_a_member_left_unable_to_beat_for_the_threshold(bus):
    name, mgr = bus
    stale = 0.4
    mgr.fabric.lock_timeout = 0.1
    g = ConsumerGroup("workers", "events", 4, stale, mgr=mgr)
    g.claim("w1")
    holder = None
    try:
        with pytest.raises(LockTimeout):
            with g.keep_alive("w1", interval=0.1) as ka:
                holder = hold_the_lock(name, 30)
                time.sleep(3 * stale)        # the block ends while the lock is still held
        assert ka.retries >= 1
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
