"""A writer paused mid-copy (SIGSTOP, a debugger, a frozen cgroup) for longer
than the bounded wait is stepped over by readers, but its slots are not handed
to another writer while it may still copy into them: when it resumes, no
acknowledged message of another producer is destroyed, on every ``on_full``
policy. What the stall costs shows in the counters (``abandoned``, ``lost``)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from grafos import Fabric
from grafos.errors import BufferFull, SlotAbandoned
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition

from helpers.mp_helpers import stopped

CAPACITY, STRIDE = 256, 256
BIG = 9000                          # 36 slots of 256 bytes
OTHERS = CAPACITY                    # one lap of the ring: they run over the paused writer's slots

# The paused producer: it stops itself after taking its message's slots, before copying its value.
PAUSED = textwrap.dedent("""
    import sys
    from grafos._native import lib
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicManager
    mgr = TopicManager.open(sys.argv[1])
    lib.gf_test_fault(lib.GF_FAULT_COPY, lib.GF_FAULT_STOP)
    try:
        _, off = Producer("t").send(mgr, b"A" * int(sys.argv[2]))
        print("acked", off, flush=True)
    except Exception as e:
        print("failed", type(e).__name__, e, flush=True)
""")


def _wait_stopped(child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not stopped(child.pid):
        assert child.poll() is None, "the paused producer exited before its copy"
        assert time.monotonic() < deadline, "the paused producer never reached its copy"
        time.sleep(0.005)


def _gated_topic_and_paused_writer(shm_name: str, on_full: str):  # noqa: ANN202 - five handles
    """A one-partition topic of `on_full`, gated by member "m" of group "g" (the
    returned reader reads for it from the earliest offset), and a child producer
    that takes the slots of a BIG message and stops before copying it."""
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("t", TopicConfig(1, CAPACITY, STRIDE, 3600.0, on_full=on_full))
    store = FabricOffsetStore(mgr)
    group = ConsumerGroup("g", "t", 1, 3600.0, mgr=mgr)
    group.claim("m")                    # gates a "block" or "raise" topic
    reader = Consumer("t", "g")
    reader.seek(mgr, store, SeekPolicy.Earliest)
    child = subprocess.Popen([sys.executable, "-c", PAUSED, shm_name, str(BIG)], stdout=subprocess.PIPE)
    return mgr, store, group, reader, child


def _resume_until_done(child: subprocess.Popen, keep_reading) -> str:
    """SIGCONT the child each time it stops (a retried send stops again at the same
    point), reading meanwhile so that a retry into a gated ring finds room."""
    deadline = time.monotonic() + 60
    while child.poll() is None:
        assert time.monotonic() < deadline, "the paused producer never finished"
        if stopped(child.pid):
            os.kill(child.pid, signal.SIGCONT)
        keep_reading()
        time.sleep(0.005)
    out, _ = child.communicate()
    return out.decode()


@pytest.mark.parametrize("on_full", ["overwrite", "block", "raise"])
def test_a_paused_writer_never_destroys_another_writers_acknowledged_message(shm_name, on_full):
    mgr, store, group, reader, child = _gated_topic_and_paused_writer(shm_name, on_full)
    try:
        _wait_stopped(child)            # its 36 slots (offsets 0..35) taken, its value not copied yet
        # the reader waits out the bounded wait, steps over the paused message and commits past it
        assert reader.poll(mgr, 100, timeout=2.0) == []
        assert reader.position(0) == 36
        group.commit(store, "m", "t", {0: reader.position(0)})

        # another producer runs a whole lap over the paused writer's slots
        prod = Producer("t", timeout=0.05)
        acked: dict[int, bytes] = {}
        for i in range(OTHERS):
            value = b"b-%03d" % i
            for _ in range(1000):
                try:
                    _, off = prod.send(mgr, value)
                    break
                except BufferFull:      # a gating reader is behind: read and commit, then again
                    reader.poll(mgr, 100, timeout=0.01)
                    group.commit(store, "m", "t", {0: reader.position(0)})
            else:
                pytest.fail("no room came")
            acked[off] = value
        assert len(acked) == OTHERS

        def keep_reading():
            reader.poll(mgr, 100, timeout=0)
            group.commit(store, "m", "t", {0: reader.position(0)})

        out = _resume_until_done(child, keep_reading)     # the paused writer copies on, and finishes
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    if out.startswith("acked"):         # its retry landed (a send that was stepped over is sent again)
        acked[int(out.split()[1])] = b"A" * BIG
    else:                               # or it was refused: not acknowledged, nothing to check
        assert out.startswith("failed"), out

    # a late reader reads the whole ring after the paused writer's last byte
    part = mgr.topic("t").partitions[0]
    late = part.reader(0, max_batch=1024)
    got = {m.offset: m.value for _, m in late.poll(1024, timeout=0.5)}
    counters = late.counters(0)
    assert counters["corrupt"] == 0, f"{counters['corrupt']} slots destroyed"
    earliest = part.state().earliest
    for off, value in acked.items():
        if off >= earliest:             # still in the ring: delivered, intact
            assert got.get(off) == value, f"acknowledged message at offset {off} destroyed"
        else:                           # overwritten by the ring: counted lost
            assert counters["lost"] >= earliest - off
    assert all(v.startswith(b"b-") or v == b"A" * BIG for v in got.values())
    # what the stall cost is counted: the paused message's 36 slots at least
    assert mgr.describe("t").partitions[0].abandoned >= 36
    mgr.close()


def test_a_killed_writers_slots_are_taken_by_the_next_lap(shm_name):
    """The owner word tells a dead writer from a paused one: after a SIGKILL
    mid-copy, the next lap takes the slots after the bounded wait (no offset
    gives way), and the dead writer's message is the one lost."""
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("t", TopicConfig(1, CAPACITY, STRIDE, 3600.0))
    child = subprocess.Popen([sys.executable, "-c", PAUSED, shm_name, str(BIG)], stdout=subprocess.PIPE)
    try:
        _wait_stopped(child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    prod = Producer("t")
    offsets = [prod.send(mgr, b"b-%03d" % i)[1] for i in range(CAPACITY)]
    assert offsets == list(range(36, 36 + CAPACITY))     # every slot taken in turn, none skipped
    part = mgr.topic("t").partitions[0]
    rd = part.reader(0, max_batch=1024)
    got = [(m.offset, m.value) for _, m in rd.poll(1024, timeout=0.5)]
    assert got == [(o, b"b-%03d" % i) for i, o in enumerate(offsets)]
    assert rd.counters(0)["corrupt"] == 0 and rd.counters(0)["lost"] == 36
    mgr.close()


def _ring_with_a_stalled_loan():  # noqa: ANN202 - four handles
    """A 16-slot ring (24 value bytes a slot) whose first 4 slots a loan holds
    past the bounded wait, and a reader that has stepped over them."""
    fab = Fabric(16 << 20)
    fab.set_bounded_wait(0.05)
    part = Partition.create(fab, 16, 64, ttl=600)
    loan = part.loan(200)                               # offsets 0..3
    rd = part.reader(0)
    assert rd.poll(10, timeout=1.0) == []               # stepped over after the bounded wait
    return fab, part, loan, rd


def test_a_loan_held_past_the_bounded_wait_keeps_its_slots_from_the_next_lap():
    """A loan is a writer that may copy at any time until it is committed: the
    ring's next lap gives way to it, so filling it late lands in no one else's
    message, and its commit is refused."""
    fab, part, loan, rd = _ring_with_a_stalled_loan()
    acked = {part.append(b"m%02d" % i): b"m%02d" % i for i in range(16)}   # a whole lap
    loan.write(b"L" * 200)                              # the late writer fills its slots
    with pytest.raises(SlotAbandoned):
        loan.commit()
    late = part.reader(0)
    got = {m.offset: m.value for _, m in late.poll(64, timeout=0.2)}
    earliest = part.state().earliest
    assert {o: v for o, v in acked.items() if o >= earliest} == got
    assert len(got) == 12
    # what the stall cost: the loan's 4 slots, and the 4 offsets of the next lap that gave way
    # (no message: a reader steps over them as gaps, the ring counts them abandoned)
    assert sorted(acked) == list(range(4, 16)) + list(range(20, 24))
    assert part.state().abandoned == 8
    assert late.counters(0)["abandoned"] == 0 and late.gaps(0) == 4
    part.close()
    fab.close()


def _in_order(offsets) -> bool:
    return all(a < b for a, b in zip(offsets, offsets[1:]))


@pytest.mark.parametrize("on_full", ["overwrite", "block", "raise"])
def test_a_batch_over_a_paused_writers_slots_lands_whole_and_in_order(shm_name, on_full):
    """A batch message whose slot gives way to a paused writer is claimed again,
    as a send's is, and so are the batch's later messages: every message lands
    once, in the batch's order, at the offset the call reports."""
    mgr, store, group, reader, child = _gated_topic_and_paused_writer(shm_name, on_full)
    got: list[tuple[int, bytes]] = []

    def read():
        got.extend((m.offset, m.value) for _, m in reader.poll(mgr, 1000, timeout=0))
        group.commit(store, "m", "t", {0: reader.position(0)})

    try:
        _wait_stopped(child)            # its 36 slots (offsets 0..35) taken, its value not copied yet
        assert reader.poll(mgr, 100, timeout=2.0) == []      # stepped over after the bounded wait
        group.commit(store, "m", "t", {0: reader.position(0)})
        prod = Producer("t", timeout=0.05)
        sent: list[tuple[int, bytes]] = []
        moved = 0
        for b in range(2 * CAPACITY // 7):     # two laps over the paused writer's slots, 7 at a time
            values = [b"b-%03d-%d" % (b, i) for i in range(7)]
            for _ in range(1000):
                try:
                    parts, offs = prod.send_batch(mgr, values)
                    break
                except BufferFull:      # a gating reader is behind: read and commit, then again
                    read()
            else:
                pytest.fail("no room came")
            assert parts.tolist() == [0] * 7
            assert _in_order(offs.tolist()), offs
            moved += offs[-1] - offs[0] != 6
            sent.extend(zip(offs.tolist(), values))
            read()
        for _ in range(100):
            if len(got) >= len(sent):
                break
            read()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert moved                        # some batch met the paused writer's slots and was claimed again
    assert got == sent                  # every message once, in order, where the batch said
    mgr.close()


def test_append_batch_over_a_loans_slots_lands_whole_and_in_order():
    """Partition.append_batch reports each message's offset: a message whose slot
    gives way to a loan held past the bounded wait, and the batch's messages
    after it, are written at fresh offsets, in order."""
    fab, part, loan, rd = _ring_with_a_stalled_loan()
    sent: list[tuple[int, bytes]] = []
    got: list[tuple[int, bytes]] = []
    for b in range(10):                                 # two laps, 3 at a time
        values = [b"m%02d-%d" % (b, i) for i in range(3)]
        offs = part.append_batch(values, keys=[b"k"] * 3)
        assert _in_order(offs.tolist()), offs
        sent.extend(zip(offs.tolist(), values))
        got.extend((m.offset, m.value) for _, m in rd.poll(64, timeout=0))
    # the loan's slots hold offsets 16..19 of the next lap: the batch that met them went on at 20
    assert [o for o, _ in sent][9:15] == [13, 14, 15, 20, 21, 22]
    assert got == sent
    with pytest.raises(SlotAbandoned):
        loan.commit()
    part.close()
    fab.close()


def test_a_batch_over_two_partitions_and_several_slots_keeps_each_partitions_order(shm_name):
    """Spread over two partitions, with messages of several slots: the partition
    whose message gave way claims it and its later ones again; the other
    partition's messages land where the batch claimed them."""
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("t", TopicConfig(2, CAPACITY, STRIDE, 3600.0))
    reader = Consumer("t", "g")
    reader.seek(mgr, FabricOffsetStore(mgr), SeekPolicy.Earliest)
    child = subprocess.Popen([sys.executable, "-c", PAUSED, shm_name, str(BIG)], stdout=subprocess.PIPE)
    got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
    sent: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
    try:
        _wait_stopped(child)
        assert reader.poll(mgr, 100, timeout=2.0) == []      # stepped over after the bounded wait
        prod = Producer("t")
        for b in range(3 * CAPACITY // 9):
            values = [(b"b-%03d-%d-" % (b, i)).ljust(600 if i % 3 == 2 else 10, b"x") for i in range(9)]
            parts, offs = prod.send_batch(mgr, values)
            for p in (0, 1):
                mine = offs[parts == p].tolist()
                assert _in_order(mine), mine
                sent[p].extend(zip(mine, [v for v, q in zip(values, parts.tolist()) if q == p]))
            for p, m in reader.poll(mgr, 1000, timeout=0):
                got[p].append((m.offset, m.value))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # offsets of these batches gave way to the paused message's 36 slots (counted abandoned with them)
    assert sum(p.abandoned for p in mgr.describe("t").partitions) > 36
    assert got == sent
    mgr.close()
