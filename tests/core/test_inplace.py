"""Zero-copy writes (loans) and reads (peeks): what is published, what readers
skip, and that a value read in place is never trusted after a writer touched it."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grafos import Fabric
from grafos.errors import InvalidArgument, LeaseExpired, MessageTooLarge, SlotAbandoned
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition
from grafos.peek import ViewsInUse
from grafos.reader import Reader

from helpers.core_procs import loan_until_killed, produce_spans_until_killed, replace_topic, stress_scale, unseal

SLACK = 2.0


@pytest.fixture
def fab():
    with Fabric(16 << 20) as f:
        yield f


@pytest.fixture(params=[True, False], ids=["checksum", "no-checksum"])
def checksum(request):
    """Each ring here is made with slot checksums and without: loans and peeks
    must behave the same either way."""
    return request.param


# ---- loans -----------------------------------------------------------------------------
def test_a_committed_loan_is_one_message_with_its_key_headers_and_value_in_place(fab, checksum):
    part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)
    frame = np.arange(1000, dtype=np.float32).reshape(20, 50)
    part.append(b"before")
    with part.loan(frame.nbytes, key=b"cam-1", headers=[("shape", b"20x50")]) as ln:
        np.copyto(ln.array(np.float32, frame.shape), frame)
    assert not ln.open and ln.offset == 1
    part.append(b"after")
    got = [m for _, m in part.reader(0).poll(10)]
    assert [m.offset for m in got] == [0, 1, 1 + -(-(40 + 5 + 14 + frame.nbytes) // 256)]
    m = got[1]
    assert m.key == b"cam-1" and m.headers == (("shape", b"20x50"),)
    assert np.array_equal(np.frombuffer(m.value, np.float32).reshape(20, 50), frame)
    with pytest.raises(ValueError):
        ln.view[0]                                  # released at commit


def test_an_exception_in_the_block_abandons_the_loan_and_readers_skip_it_at_once(fab, checksum):
    fab.set_bounded_wait(30.0)                      # a stalled slot would cost half a minute
    part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)
    rd = part.reader(0)
    with pytest.raises(RuntimeError):
        with part.loan(3000) as ln:
            ln.view[:5] = b"half-"
            raise RuntimeError("producer failed mid-frame")
    part.append(b"next")
    t0 = time.monotonic()
    assert [m.value for _, m in rd.poll(10, timeout=5)] == [b"next"]
    assert time.monotonic() - t0 < 1.0
    assert rd.counters(0)["abandoned"] == 1


def test_a_loan_held_past_the_bounded_wait_is_refused_at_commit_and_never_published(fab, checksum):
    fab.set_bounded_wait(0.1)
    part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)
    rd = part.reader(0)
    ln = part.loan(1000)
    ln.view[:] = b"x" * 1000
    deadline = time.monotonic() + 0.1 + SLACK
    while rd.counters(0)["abandoned"] == 0 and time.monotonic() < deadline:
        rd.poll(10, timeout=0.05)
    with pytest.raises(SlotAbandoned, match="bounded wait"):
        ln.commit()
    part.append(b"next")
    assert [m.value for _, m in part.reader(0).poll(10)] == [b"next"]


def test_a_producer_loan_lands_where_send_keyed_would_send(fab, checksum):
    mgr = TopicManager(fab)
    mgr.create("frames", TopicConfig(4, 64, 256, 600.0, checksum=checksum))
    prod = Producer("frames")
    for key in [b"a", b"bb", b"camera-7"]:
        with prod.loan(mgr, 600, key=key) as ln:
            ln.view[:] = key * (600 // len(key)) + b"!" * (600 % len(key))
        assert ln.partition == kafka_partition(key, 4)
    c = Consumer("frames")
    got = {m.key: (p, len(m.value)) for p, m in c.poll(mgr, 10)}
    assert got == {k: (kafka_partition(k, 4), 600) for k in [b"a", b"bb", b"camera-7"]}


def test_bad_loans_raise_clear_errors_and_leave_the_ring_as_it_was(fab, checksum):
    part = Partition.create(fab, 8, 128, ttl=600, checksum=checksum)
    with pytest.raises(MessageTooLarge, match="larger than the partition's ring"):
        part.loan(8 * 128)
    with pytest.raises(InvalidArgument):
        part.loan(-1)
    with pytest.raises(TypeError):
        part.loan(10, key="text")
    assert part.state().latest == 0
    with part.loan(100) as ln:
        with pytest.raises(InvalidArgument, match="needs 400 bytes"):
            ln.array(np.float32, (10, 10))
        with pytest.raises(InvalidArgument, match="whole number"):
            ln.array(np.float64)
        ln.view[:] = bytes(100)
    with pytest.raises(InvalidArgument, match="no longer open"):
        ln.array()
    with pytest.raises(InvalidArgument, match="already committed"):
        ln.commit()
    assert [len(m.value) for _, m in part.reader(0).poll(10)] == [100]


def test_write_copies_any_contiguous_buffer_into_the_loan_at_its_place(fab, checksum):
    part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)
    frame = np.arange(2000, dtype=np.uint16)
    with part.loan(4100) as ln:
        assert ln.write(b"head") == 4
        assert ln.write(frame, at=4) == 4000
        assert ln.write(memoryview(bytearray(b"tail" * 24)), at=4004) == 96
    (_, m), = part.reader(0).poll(10)
    assert bytes(m.value) == b"head" + frame.tobytes() + b"tail" * 24


def test_bad_writes_raise_clear_errors_and_write_nothing(fab, checksum):
    part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)
    with part.loan(100) as ln:
        ln.view[:] = b"." * 100
        with pytest.raises(InvalidArgument, match="do not fit a 100-byte loan"):
            ln.write(b"x" * 101)
        with pytest.raises(InvalidArgument, match="do not fit"):
            ln.write(b"x" * 2, at=99)
        with pytest.raises(InvalidArgument, match="at"):
            ln.write(b"x", at=101)
        with pytest.raises(TypeError, match="contiguous buffer, not str"):
            ln.write("text")
        with pytest.raises(TypeError, match="contiguous buffer"):
            ln.write(np.arange(20, dtype=np.uint8)[::2])
    with pytest.raises(InvalidArgument, match="no longer open"):
        ln.write(b"late")
    (_, m), = part.reader(0).poll(10)
    assert bytes(m.value) == b"." * 100


# ---- peeks -----------------------------------------------------------------------------
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(2, 12), sizes=st.lists(st.integers(0, 300), min_size=1, max_size=10),
       more=st.lists(st.integers(0, 300), max_size=20), n=st.integers(1, 10), checksum=st.booleans())
def test_a_writer_lapping_a_peek_is_detected_for_exactly_the_messages_it_touched(capacity, sizes, more, n, checksum):
    with Fabric(4 << 20) as fab:
        part = Partition.create(fab, capacity, 64, ttl=600, checksum=checksum)
        sizes = [s for s in sizes if s <= part.max_message] or [0]
        for i, s in enumerate(sizes):
            part.append(bytes([i]) * s)
        rd = part.reader(0)
        with rd.peek(n) as pk:
            seen = [(m.offset, bytes(m.value)) for m in pk]
            for s in more:
                if s <= part.max_message:
                    part.append(b"\xee" * s)
        tail = part.state().latest
        for m in pk:
            assert m.intact == (tail <= m.offset + capacity)
        assert pk.overwritten == [m for m in pk if not m.intact]
        # what the peek saw before the writer came is what a copying read sees
        assert all(v == bytes([v[0]]) * len(v) for _, v in seen if v)


def test_a_released_value_cannot_be_read_and_a_held_one_is_reported(fab, checksum):
    part = Partition.create(fab, 16, 128, ttl=600, checksum=checksum)
    part.append(b"a" * 200)
    part.append(b"b" * 10)
    rd = part.reader(0)
    pk = rd.peek(10)
    v = pk[0].value
    assert bytes(v) == b"a" * 200 and v.readonly
    assert pk.release() == []
    with pytest.raises(ValueError):
        bytes(v)
    part.append(b"c" * 10)
    with pytest.raises(ViewsInUse, match="1 peeked value"):
        with rd.peek(10) as pk2:
            rows = struct.iter_unpack("<B", pk2[0].value)   # holds a buffer of the value
    assert pk2[0].intact is True and next(rows) == (ord("c"),)


def test_a_consumer_peek_moves_its_position_like_a_poll(fab, checksum):
    mgr = TopicManager(fab)
    mgr.create("t", TopicConfig(2, 64, 128, 600.0, checksum=checksum))
    prod = Producer("t")
    sent = [prod.send_keyed(mgr, b"k%d" % i, b"v" * (i * 40)) for i in range(8)]
    c = Consumer("t")
    with c.peek(mgr, 100) as pk:
        got = sorted((m.partition, m.offset, m.key, len(m.value)) for m in pk)
    assert got == sorted((p, o, b"k%d" % i, i * 40) for i, (p, o) in enumerate(sent))
    assert all(m.intact for m in pk)
    ends = {p: max(o + (1 if 40 * i <= 88 - 2 else -(-(40 + 2 + 40 * i) // 128)) for i, (pp, o) in enumerate(sent)
                   if pp == p) for p, _ in sent}
    assert c.positions() == ends
    assert c.poll(mgr, 10) == []


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(2, 12), start=st.integers(0, 30), sizes=st.lists(st.integers(0, 200), min_size=1, max_size=12),
       n=st.integers(1, 14), keyed=st.booleans(), checksum=st.booleans())
def test_arrays_hold_every_peeked_value_in_order_in_runs_of_one_length(capacity, start, sizes, n, keyed, checksum):
    with Fabric(4 << 20) as fab:
        part = Partition.create(fab, capacity, 64, ttl=600, checksum=checksum)
        for _ in range(start):                 # wherever the ring's end falls
            part.append(b"")
        rd = part.reader(part.state().latest)
        sizes = [s for s in sizes if s <= part.max_message - 2][-capacity:] or [0]
        for i, s in enumerate(sizes):
            v = bytes((i * 31 + j) & 0xFF for j in range(s))
            part.append(v, key=b"k%d" % (i % 10) if keyed else None)
        with rd.peek(n) as pk:
            arrays = pk.arrays()
            rows = [bytes(r) for a in arrays for r in a]
            assert rows == [bytes(m.value) for m in pk]
            assert all(a.ndim == 2 and a.dtype == np.uint8 and not a.flags.writeable for a in arrays)
            # a run ends only where a length changes or the ring wraps
            sizes_in = [len(r) for r in rows]
            breaks = sum(1 for a, b in zip(pk.messages, pk.messages[1:])
                         if len(a.value) != len(b.value) or b.offset % capacity < a.offset % capacity)
            assert len(arrays) == (1 + breaks if rows else 0)
            assert sum(map(len, arrays)) == len(pk) == len(sizes_in)
            del arrays
        assert pk.intact.tolist() == [True] * len(pk)


def test_arrays_cover_each_ring_of_a_peek_and_a_held_one_is_reported(fab, checksum):
    parts = [Partition.create(fab, 16, 128, ttl=600, checksum=checksum) for _ in range(2)]
    for p, fill in zip(parts, b"xy"):
        for _ in range(3):
            p.append(bytes([fill]) * 100)
    rd = Reader(fab, parts)
    with rd.peek(10) as pk:
        arrays = pk.arrays()
        assert [(a.shape, bytes(a[0, :1])) for a in arrays] == [((3, 100), b"x"), ((3, 100), b"y")]
        del arrays
    with pytest.raises(InvalidArgument, match="released"):
        pk.arrays()
    parts[0].append(b"z" * 100)
    with pytest.raises(ViewsInUse, match="1 peeked value"):
        with rd.peek(10) as pk2:
            kept = pk2.arrays()[0]
    assert pk2.intact.tolist() == [True] and kept.shape == (1, 100)


def test_a_peek_read_only_through_arrays_still_reports_what_was_overwritten(fab, checksum):
    part = Partition.create(fab, 4, 128, ttl=600, checksum=checksum)
    offsets = [part.append(bytes([i]) * 50) for i in range(4)]
    rd = part.reader(0)
    with rd.peek(4) as pk:
        (a,) = pk.arrays()
        assert a[:, 0].tolist() == [0, 1, 2, 3]
        del a
        part.append(b"\xee" * 50)               # laps the first one
        part.append(b"\xee" * 50)               # and the second
    assert [m.offset for m in pk.overwritten] == offsets[:2]
    assert pk.intact.tolist() == [False, False, True, True]
    assert [m.intact for m in pk] == [False, False, True, True]
    with pytest.raises(ValueError):              # built after the block: values come released
        bytes(pk[3].value)
    with pytest.raises(InvalidArgument, match="when the peek is released"):
        rd.peek(1).intact


@pytest.mark.stress
def test_peeks_racing_a_producer_in_another_process_never_pass_a_torn_value(shm_name, checksum):
    ctx = mp.get_context("spawn")
    seconds = max(1.0, 4.0 * stress_scale())
    with Fabric.open(shm_name, size=32 << 20) as fab:
        part = Partition.create(fab, 64, 256, ttl=600, checksum=checksum)   # small: the producer laps the reader often
        ready = ctx.Event()
        child = ctx.Process(target=produce_spans_until_killed,
                            args=(shm_name, part.lease.index, part.lease.id, ready, 7))
        child.start()
        intact = overwritten = 0
        try:
            assert ready.wait(60)
            rd = part.reader(0)
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                with rd.peek(8) as pk:
                    seen = [unseal(bytes(m.value)) is not None for m in pk]
                for m, ok in zip(pk, seen):
                    if m.intact:
                        assert ok, f"offset {m.offset}: a torn value was reported intact"
                        intact += 1
                    else:
                        overwritten += 1
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
        assert intact > 0
        part.lease.release()


@pytest.mark.stress
def test_a_writer_killed_mid_loan_never_stalls_readers_past_the_bounded_wait(shm_name, checksum):
    iterations = max(1, round(20 * stress_scale()))
    bw = 0.25
    ctx = mp.get_context("spawn")
    rnd = random.Random(99)
    with Fabric.open(shm_name, size=32 << 20) as fab:
        fab.set_bounded_wait(bw)
        for it in range(iterations):
            part = Partition.create(fab, 1024, 256, ttl=600, checksum=checksum)
            rd = part.reader(0)
            ready = ctx.Event()
            child = ctx.Process(target=loan_until_killed,
                                args=(shm_name, part.lease.index, part.lease.id, ready, it))
            child.start()
            delivered = []
            try:
                assert ready.wait(60)
                until = time.monotonic() + rnd.uniform(0.0, 0.05)
                while time.monotonic() < until:
                    delivered += rd.poll(1024)
            finally:
                os.kill(child.pid, signal.SIGKILL)
                child.join(30)
            killed_at = time.monotonic()
            tail = part.state().latest
            while rd.position(0) < tail:
                delivered += rd.poll(1024, timeout=0.05)
                assert time.monotonic() - killed_at <= bw + SLACK, f"iteration {it}: reader stuck"
            c = rd.counters(0)
            assert [m.offset for _, m in delivered if unseal(m.value) is None] == []
            assert c["corrupt"] == 0
            assert len(delivered) + c["lost"] + c["abandoned"] + rd.gaps(0) == tail
            part.lease.release()


def test_a_loan_whose_topic_another_process_replaced_never_writes_into_the_new_one(shm_name):
    # the other process deletes the topic and its region goes to a new topic: nothing
    # this process knows of runs, so each write path must find the lease ended itself
    ctx = mp.get_context("spawn")
    with TopicManager.open(shm_name, size=32 << 20) as mgr:
        mgr.create("old", TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128))
        where = mgr.topic("old").partitions[0].lease.offset
        ln = Producer("old").loan(mgr, 64)
        child = ctx.Process(target=replace_topic, args=(shm_name, "old", "new", 8, 128, b"acknowledged 0"))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert mgr.refresh("new").partitions[0].lease.offset == where
        for write in (lambda: ln.write(b"X" * 64), lambda: ln.view, lambda: ln.array(), ln.commit):
            with pytest.raises(LeaseExpired):
                write()
        c = Consumer("new", "check")
        c.seek(mgr, SeekPolicy.Earliest)
        assert [bytes(m.value) for _, m in c.poll(mgr, 10)] == [b"acknowledged 0"]
        assert mgr.describe("new").partitions[0].abandoned == 0
