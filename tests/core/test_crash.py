"""A writer that dies between claiming a slot and publishing it must not stall
readers: they step over the slot after the fabric's bounded wait and count it.

The deterministic tests use ``gf_test_claim_slot``, which leaves a slot
claimed-but-unpublished exactly as a killed writer would. The stress test
SIGKILLs real producer processes in the middle of their appends.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

from grafos import Fabric
from grafos._native import ffi, lib
from grafos.partition import Partition

from helpers.core_procs import produce_spans_until_killed, produce_until_killed, stress_scale, unseal

SLACK = 2.0   # seconds on top of the bounded wait: a shared 2-core machine is noisy


def claim(part: Partition) -> int:
    n = lib.gf_test_claim_slot(part.handle)
    assert n >= 0
    return n


def timed_poll(reader, n, timeout):
    t0 = time.monotonic()
    got = reader.poll(n, timeout=timeout)
    return got, time.monotonic() - t0


@pytest.fixture
def fab():
    with Fabric(16 << 20) as f:
        yield f


def test_reader_steps_over_a_claimed_but_unpublished_slot_after_the_bounded_wait(fab):
    bw = 0.3
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 16, 64, ttl=600)
    part.append(b"before")
    dead = claim(part)
    part.append(b"after")
    rd = part.reader(0)
    assert [m.value for _, m in rd.poll(10)] == [b"before"]   # stops at the hole, does not skip it yet
    got, waited = timed_poll(rd, 10, timeout=bw + 10)
    assert [(m.offset, m.value) for _, m in got] == [(dead + 1, b"after")]
    assert waited >= bw * 0.9, "a slot still being written was skipped before the bounded wait"
    assert waited <= bw + SLACK
    assert rd.counters(0) == {"lost": 0, "abandoned": 1, "corrupt": 0, "expired": 0}
    assert part.state().abandoned == 1
    # a second reader finds the slot already marked and does not wait at all
    rd2 = part.reader(0)
    assert [m.value for _, m in rd2.poll(10)] == [b"before", b"after"]
    assert rd2.counters(0)["abandoned"] == 1


def test_a_poll_without_timeout_steps_over_a_dead_writer_instead_of_hanging(fab):
    bw = 0.3
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 16, 64, ttl=600)
    claim(part)
    part.append(b"after the hole")
    done = threading.Event()

    def rescue():   # if poll hangs, unblock it with a message the test then rejects
        if not done.wait(bw + 10):
            part.append(b"rescue")

    t = threading.Thread(target=rescue)
    t.start()
    try:
        got = part.reader(0).poll(10, timeout=None)
    finally:
        done.set()
        t.join()
    assert [m.value for _, m in got] == [b"after the hole"]


def test_a_half_written_batch_costs_readers_one_bounded_wait_not_one_per_slot(fab):
    bw = 0.6
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 32, 64, ttl=600)
    holes = [claim(part) for _ in range(6)]
    part.append(b"survivor")
    rd = part.reader(0)
    got, waited = timed_poll(rd, 10, timeout=len(holes) * bw + 10)
    assert [(m.offset, m.value) for _, m in got] == [(len(holes), b"survivor")]
    assert rd.counters(0)["abandoned"] == len(holes)
    # one wait (0.6 s) covers every slot claimed before it began; one per slot would be 3.6 s
    assert waited <= bw + SLACK


def test_a_writer_claimed_after_the_stall_began_gets_its_own_full_wait(fab):
    bw = 0.4
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 32, 64, ttl=600)
    claim(part)
    rd = part.reader(0)
    assert rd.poll(10) == []          # the stall starts now, with one slot claimed
    time.sleep(bw * 0.75)
    second = claim(part)              # claimed late: its writer deserves its own wait
    part.append(b"x")
    got = rd.poll(10, timeout=bw * 0.5)
    assert got == [] and rd.position(0) == second
    assert rd.counters(0)["abandoned"] == 1
    got = rd.poll(10, timeout=bw + SLACK)
    assert [m.value for _, m in got] == [b"x"]
    assert rd.counters(0)["abandoned"] == 2


def test_a_late_writer_is_told_its_slot_was_abandoned_and_readers_never_see_it(fab):
    fab.set_bounded_wait(0.1)
    part = Partition.create(fab, 8, 64, ttl=600)
    n = claim(part)       # as a writer descheduled right after its claim
    rd = part.reader(0)
    deadline = time.monotonic() + 0.1 + SLACK
    while rd.counters(0)["abandoned"] == 0 and time.monotonic() < deadline:
        rd.poll(10, timeout=0.05)
    assert rd.counters(0)["abandoned"] == 1
    rc = lib.gf_test_publish(part.handle, n, b"late", 4)
    assert rc == lib.GF_E_ABANDONED, ffi.string(lib.gf_last_error())
    part.append(b"next")
    assert [m.value for _, m in part.reader(0).poll(10)] == [b"next"]
    assert [m.value for _, m in rd.poll(10)] == [b"next"]


def test_next_lap_writer_does_not_hang_on_a_dead_writers_slot(fab):
    bw = 0.3
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 2, 64, ttl=600)
    claim(part)                    # offset 0, slot 0: never published
    part.append(b"one")            # offset 1, slot 1
    t0 = time.monotonic()
    assert part.append(b"two") == 2    # slot 0 again: waits out the dead writer, then takes it
    assert time.monotonic() - t0 <= bw + SLACK
    rd = part.reader(0)
    assert [(m.offset, m.value) for _, m in rd.poll(10)] == [(1, b"one"), (2, b"two")]
    assert rd.counters(0)["lost"] == 1


def test_a_writer_dead_inside_a_multi_slot_message_costs_one_bounded_wait(fab):
    bw = 0.3
    fab.set_bounded_wait(bw)
    part = Partition.create(fab, 16, 64, ttl=600)
    part.append(b"before")
    dead = lib.gf_test_claim_span(part.handle, 5)     # five slots claimed, none published
    assert dead == 1
    after = b"a" * 200                                # itself four slots
    assert part.append(after) == 6
    rd = part.reader(0)
    assert [m.value for _, m in rd.poll(10)] == [b"before"]
    got, waited = timed_poll(rd, 10, timeout=bw + 10)
    assert [(m.offset, m.value) for _, m in got] == [(6, after)]
    assert bw * 0.9 <= waited <= bw + SLACK           # one wait for all five slots, not five
    assert rd.counters(0)["abandoned"] == 5 and rd.gaps(0) == 3
    # a writer that comes back after the wait is refused, and its bytes never show
    assert lib.gf_test_publish(part.handle, dead, b"late", 4) == lib.GF_E_ABANDONED
    assert [m.offset for _, m in part.reader(0).poll(10)] == [0, 6]


# ---- SIGKILL in the middle of appends ------------------------------------------

@pytest.mark.stress
@pytest.mark.parametrize("body", [produce_until_killed, produce_spans_until_killed],
                         ids=["one-slot messages", "multi-slot messages"])
def test_sigkilled_producer_never_stalls_readers_past_the_bounded_wait_nor_corrupts(shm_name, body):
    iterations = max(1, round(50 * stress_scale()))
    bw = 0.25
    ctx = mp.get_context("spawn")
    rnd = random.Random(1234)
    with Fabric.open(shm_name, size=32 << 20) as fab:
        fab.set_bounded_wait(bw)
        for it in range(iterations):
            part = Partition.create(fab, 1024, 256, ttl=600)
            rd = part.reader(0, max_batch=1024)
            ready = ctx.Event()
            child = ctx.Process(target=body,
                                args=(shm_name, part.lease.index, part.lease.id, ready, it))
            child.start()
            try:
                assert ready.wait(60), "producer did not start"
                delivered = []
                # read alongside the producer for a moment, then kill it mid-append
                until = time.monotonic() + rnd.uniform(0.0, 0.05)
                while time.monotonic() < until:
                    delivered += rd.poll(1024)
            finally:
                os.kill(child.pid, signal.SIGKILL)
                child.join(30)
            assert child.exitcode == -signal.SIGKILL
            killed_at = time.monotonic()
            tail = part.state().latest
            while rd.position(0) < tail:
                delivered += rd.poll(1024, timeout=0.05)
                assert time.monotonic() - killed_at <= bw + SLACK, (
                    f"iteration {it}: reader stuck at {rd.position(0)} of {tail}")
            c = rd.counters(0)
            bad = [m.offset for _, m in delivered if unseal(m.value) is None]
            assert bad == [], f"iteration {it}: partial or torn messages at offsets {bad[:5]}"
            assert c["corrupt"] == 0
            offsets = [m.offset for _, m in delivered]
            assert offsets == sorted(set(offsets))
            # every offset is accounted for exactly once: delivered, lost to the ring,
            # abandoned, or a gap (the further slots of a multi-slot message, padding)
            spans = rd.gaps(0)
            assert len(delivered) + c["lost"] + c["abandoned"] + spans == tail
            part.lease.release()
