"""The per-message crossing (grafos._fast): invisible except in speed.

send, send_keyed, poll and peek enter C once through a hand-written extension that
calls the cffi-built core. These tests hold it to what the Python paths did:
the same results and Message records, the same errors when the bus changes
under a bound handle, no leaked references or memory, and correctness with
threads sharing a producer.
"""
from __future__ import annotations

import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grafos import _crossing, _fast
from grafos._core import ffi
from grafos.errors import CorruptFabric, InvalidArgument, NotFound
from grafos.message import Message, decode_headers, encode_headers
from grafos.mq import share
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.reader import META_DTYPE

SCALE = float(os.environ.get("GRAFOS_STRESS_SCALE", "1"))


def _bus(partitions: int = 2, capacity: int = 256, stride: int = 256) -> TopicManager:
    mgr = TopicManager(size=max(16 << 20, 2 * partitions * capacity * stride))
    mgr.create("t", TopicConfig(num_partitions=partitions, partition_capacity=capacity,
                                partition_stride=stride))
    return mgr


# ---- what comes back -------------------------------------------------------------------------

def test_polled_messages_should_be_the_records_the_python_api_makes():
    mgr = _bus()
    prod = Producer("t")
    p, off = prod.send_keyed(mgr, b"key", b"value", headers={"trace": b"abc", "n": b""})
    [(part, msg)] = Consumer("t").poll(mgr, 10)
    assert (part, msg.offset) == (p, off)
    assert type(msg) is Message
    expected = Message.make(off, b"key", b"value", msg.timestamp, (("trace", b"abc"), ("n", b"")), "t", p)
    assert msg == expected and hash(msg) == hash(expected)
    assert repr(msg) == repr(expected)
    assert pickle.loads(pickle.dumps(msg)) == msg
    assert msg.key == b"key" and msg.value == b"value" and msg.headers == expected.headers
    assert abs(msg.timestamp - time.time_ns()) < 60 * 10**9
    assert (msg.topic, msg.partition) == ("t", p)


def test_a_message_built_by_hand_should_say_where_it_was_read_only_when_told():
    m = Message((3, b"k", b"v", 10, ()))
    assert (m.topic, m.partition, m.offset, m.value) == (None, None, 3, b"v")
    full = Message((3, b"k", b"v", 10, (), "orders", 2))
    assert (full.topic, full.partition) == ("orders", 2) and full != m
    assert pickle.loads(pickle.dumps(full)) == full and pickle.loads(pickle.dumps(m)).topic is None
    assert Message.make(3, b"k", b"v", 10, topic="orders", partition=2) == full
    with pytest.raises(InvalidArgument, match="not 6 fields"):
        Message((3, b"k", b"v", 10, (), "orders"))


def test_bytearray_and_memoryview_should_send_what_bytes_would():
    mgr = _bus(partitions=1)
    prod = Producer("t")
    big = bytearray(b"0123456789")
    prod.send_keyed(mgr, bytearray(b"k1"), big)
    prod.send_keyed(mgr, memoryview(b"xxk2xx")[2:4], memoryview(big)[2:6])
    prod.send(mgr, memoryview(np.arange(4, dtype=np.uint8)))
    prod.send(mgr, memoryview(b"abcdef")[::2])           # not contiguous: copied by the slow path
    got = [(m.key, m.value) for _, m in Consumer("t").poll(mgr, 10)]
    assert got == [(b"k1", b"0123456789"), (b"k2", b"2345"), (None, b"\x00\x01\x02\x03"),
                   (None, b"ace")]


def test_send_keyed_none_key_should_go_round_robin_without_a_key():
    mgr = _bus(partitions=4)
    prod = Producer("t")
    parts = [prod.send_keyed(mgr, None, b"v")[0] for _ in range(8)]
    assert sorted(parts) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(m.key is None for _, m in Consumer("t").poll(mgr, 10))


def test_keyword_arguments_should_reach_the_same_calls():
    mgr = _bus(partitions=1)
    prod = Producer("t")
    prod.send_keyed(mgr=mgr, key=b"k", value=b"a", headers=[("h", b"1")])
    prod.send(mgr, value=b"b", headers=None)
    c = Consumer("t")
    got = c.poll(mgr=mgr, max_messages=5, timeout=0.0, spin=0.0)
    assert [(m.key, m.value, m.headers) for _, m in got] == [(b"k", b"a", (("h", b"1"),)), (None, b"b", ())]
    with pytest.raises(TypeError):
        prod.send(mgr, b"x", None, "extra")
    with pytest.raises(TypeError):
        c.poll(mgr, 1, 0.0, 0.0)          # spin is keyword-only


@settings(max_examples=60, deadline=None)
@given(headers=st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=16)), max_size=6),
       key=st.one_of(st.none(), st.binary(max_size=24)), value=st.binary(max_size=64))
def test_what_is_sent_should_be_what_is_polled(headers, key, value):
    mgr = _bus(partitions=1, stride=512)
    try:
        Producer("t").send_keyed(mgr, key, value, headers=headers)
        [(_, m)] = Consumer("t").poll(mgr, 5)
        assert (m.key, m.value) == (key, value)
        assert m.headers == tuple((k, v) for k, v in headers)
        blob = encode_headers(headers)
        assert _fast.encode_headers(headers) == blob        # one wire form, two encoders
        assert decode_headers(blob) == m.headers
    finally:
        mgr.close()


def test_batch_iteration_should_refuse_malformed_headers():
    meta = np.zeros(1, dtype=META_DTYPE)
    meta["hdr_len"] = 5
    meta["val_len"] = 1
    data = b"\x02\x00\x01\x00xy"       # says two headers, holds part of one
    with pytest.raises(CorruptFabric, match="headers"):
        _crossing.decode(meta.tobytes(), data, [0], None)
    meta["val_len"] = 50               # and a row that points past the data
    with pytest.raises(CorruptFabric, match="outside"):
        _crossing.decode(meta.tobytes(), data, [0], None)


# ---- the bus changing under a bound handle ---------------------------------------------------

def test_a_closed_manager_should_refuse_sends_and_polls():
    mgr = _bus()
    prod, cons = Producer("t"), Consumer("t")
    prod.send(mgr, b"x")
    cons.poll(mgr, 1)
    mgr.close()
    with pytest.raises(InvalidArgument, match="closed"):
        prod.send(mgr, b"y")
    with pytest.raises(InvalidArgument, match="closed"):
        prod.send_keyed(mgr, b"k", b"y")
    with pytest.raises(InvalidArgument, match="closed"):
        cons.poll(mgr, 1)
    other = _bus()                      # a fresh bus is untouched by the dead one
    assert prod.send(other, b"z")[1] == 0
    assert [m.value for _, m in Consumer("t").poll(other, 5)] == [b"z"]


def test_a_deleted_topic_between_two_sends_should_raise_not_found_and_leave_the_rest():
    mgr = _bus()
    mgr.create("keep", TopicConfig(num_partitions=1))
    prod, cons = Producer("t"), Consumer("t")
    prod.send_keyed(mgr, b"k", b"v")
    cons.poll(mgr, 5)
    mgr.delete("t")
    with pytest.raises(NotFound):
        prod.send_keyed(mgr, b"k", b"v")
    with pytest.raises(NotFound):
        prod.send(mgr, b"v")
    with pytest.raises(NotFound):
        cons.poll(mgr, 5)
    assert mgr.topics() == ["keep"]
    assert mgr.describe("keep").produced == 0


def test_a_restarted_topic_between_two_sends_should_get_the_next_send():
    mgr = TopicManager(size=16 << 20)
    mgr.create("t", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128,
                                retention_secs=30))
    prod, cons = Producer("t"), Consumer("t")
    cons.seek(mgr, None, SeekPolicy.Earliest)
    for i in range(5):
        prod.send(mgr, b"old-%d" % i)
    assert len(cons.poll(mgr, 10)) == 5
    later = time.time() + 60
    mgr.fabric.reap(now=later)
    mgr.restart("t", now=later)
    assert prod.send(mgr, b"new-0") == (0, 0)          # the fresh ring, not the old one
    assert prod.send_keyed(mgr, b"k", b"new-1") == (0, 1)
    assert [m.value for _, m in cons.poll(mgr, 10)] == [b"new-0", b"new-1"]


def test_another_manager_should_not_reuse_a_binding():
    a, b = _bus(), _bus()
    prod = Producer("t")
    prod.send(a, b"to-a")
    prod.send(b, b"to-b")
    prod.send(a, b"to-a-again")
    assert sorted(m.value for _, m in Consumer("t").poll(a, 10)) == [b"to-a", b"to-a-again"]
    assert [m.value for _, m in Consumer("t").poll(b, 10)] == [b"to-b"]


def test_a_blocking_poll_should_wake_for_a_send_from_another_thread():
    mgr = _bus()
    cons = Consumer("t")
    cons.seek(mgr, None, SeekPolicy.Latest)
    prod = Producer("t")
    timer = threading.Timer(0.2, lambda: prod.send(mgr, b"late"))
    timer.start()
    t0 = time.monotonic()
    got = cons.poll(mgr, 5, timeout=None)
    timer.join()
    assert [m.value for _, m in got] == [b"late"]
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    assert cons.poll(mgr, 5, timeout=0.3) == []
    assert 0.25 < time.monotonic() - t0 < 5


# ---- references, memory, threads -------------------------------------------------------------

def test_sends_and_polls_should_not_change_reference_counts():
    mgr = _bus(partitions=2, capacity=1024)
    prod, cons = Producer("t"), Consumer("t")
    key, value, view = b"the-key", b"the-value" * 4, memoryview(bytearray(b"view-value"))
    headers = {"h": b"header-value"}
    hlist = [("a", b"1"), ("b", b"2")]
    prod.send_keyed(mgr, key, value)      # bind first: the binding holds its own references
    cons.poll(mgr, 1000)
    before = [sys.getrefcount(o) for o in (key, value, view, headers, hlist, mgr)]
    for _ in range(2000):
        prod.send_keyed(mgr, key, value)
        prod.send(mgr, view, headers=headers)
        prod.send_keyed(mgr, key, value, headers=hlist)
        cons.poll(mgr, 3)
    after = [sys.getrefcount(o) for o in (key, value, view, headers, hlist, mgr)]
    assert after == before


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.stress
def test_a_million_sends_and_polls_should_not_grow_memory():
    n = max(100_000, int(1_000_000 * SCALE))
    mgr = _bus(partitions=4, capacity=4096, stride=256)
    prod, cons = Producer("t"), Consumer("t", max_batch=1000)
    key, value = b"k" * 16, b"v" * 100
    hdrs = {"h": b"1"}

    def run(count: int) -> None:
        send_keyed, poll = prod.send_keyed, cons.poll
        for i in range(count // 1000):
            for _ in range(999):
                send_keyed(mgr, key, value)
            send_keyed(mgr, key, value, headers=hdrs)
            got = 0
            while got < 1000:
                got += len(poll(mgr, 1000))

    run(50_000)                          # warm: rings first-touched, free lists filled
    base = _rss()
    run(n)
    grown = _rss() - base
    assert grown < 8 << 20, f"RSS grew {grown >> 10} KiB over {n} sends and polls"
    assert cons.consumed == n + 50_000


def test_four_threads_on_one_producer_and_two_consumers_should_deliver_each_message_once():
    per_thread = max(2000, int(20_000 * SCALE))
    mgr = _bus(partitions=4, capacity=1 << 15, stride=128)
    prod = Producer("t")
    consumers = [Consumer("t", "g"), Consumer("t", "g")]
    consumers[0].assign([0, 1])
    consumers[1].assign([2, 3])
    for c in consumers:
        c.seek(mgr, None, SeekPolicy.Earliest)
    got: list[list[bytes]] = [[], []]
    done = threading.Event()

    def send(t: int) -> None:
        for i in range(per_thread):
            if i % 3:
                prod.send_keyed(mgr, b"key-%d" % (i % 97), b"%d:%d" % (t, i))
            else:
                prod.send(mgr, b"%d:%d" % (t, i), headers={"t": b"%d" % t})

    def consume(k: int) -> None:
        c = consumers[k]
        while True:
            batch = c.poll(mgr, 500, timeout=0.05)
            got[k] += [m.value for _, m in batch]
            if not batch and done.is_set():
                return

    readers = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    writers = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for th in readers + writers:
        th.start()
    for th in writers:
        th.join()
    done.set()
    for th in readers:
        th.join()
    everything = got[0] + got[1]
    expected = {b"%d:%d" % (t, i) for t in range(4) for i in range(per_thread)}
    assert len(everything) == len(expected) and set(everything) == expected
    assert all(sum(c.lost().values()) == 0 for c in consumers)


def test_closing_a_producer_while_another_thread_sends_large_batches_should_lose_and_corrupt_nothing():
    """A large batch is written without the GIL: a close (which unbinds the
    handle and drops its sender state) from another thread meanwhile leaves the
    batch whole, and the next batch binds again."""
    mgr = _bus(partitions=2, capacity=1 << 14, stride=256)
    prod = Producer("t")
    rows = np.full((400, 128), 0x5A, dtype=np.uint8)        # 51 KiB: over the GIL-free size
    listed = [b"y" * 100] * 300
    sent, errors = [0], []
    stop = threading.Event()

    def send() -> None:
        try:
            while not stop.is_set():
                parts, offs = prod.send_batch(mgr, rows if sent[0] % 2 else listed)
                sent[0] += len(offs)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    th = threading.Thread(target=send)
    th.start()
    end = time.monotonic() + 0.5
    closes = 0
    while time.monotonic() < end:
        prod.close()
        closes += 1
        time.sleep(0.0005)
    stop.set()
    th.join(10)
    assert not errors, errors
    assert closes > 100 and sent[0] > 0
    cons = Consumer("t", max_batch=4096)      # the rings overwrote most: read what is left
    cons.seek(mgr, None, SeekPolicy.Earliest)
    last: dict[int, int] = {}
    while batch := cons.poll(mgr, 4096):
        for p, m in batch:
            assert bytes(m.value) in (rows[0].tobytes(), listed[0])
            last[p] = m.offset
    assert sum(o + 1 for o in last.values()) == sent[0]    # every batch sent, and only those


def test_poll_should_leave_the_garbage_collector_as_it_found_it():
    import gc
    mgr = _bus()
    prod, cons = Producer("t"), Consumer("t")
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            prod.send_batch(mgr, [b"x"] * 50)
            assert len(cons.poll(mgr, 100)) == 50
            assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


# ---- peek --------------------------------------------------------------------------------------

def _peek_bus():
    mgr = _bus(partitions=1, capacity=1024, stride=128)
    prod = Producer("t")
    prod.send(mgr, b"plain")
    prod.send_keyed(mgr, b"k1", b"keyed")
    prod.send_keyed(mgr, b"k2", b"with headers" * 30, headers=[("a", b"1"), ("b", b"")])
    prod.send(mgr, b"")
    return mgr


def test_peeked_messages_should_be_the_records_poll_returns():
    mgr = _peek_bus()
    try:
        polled = [m for _, m in Consumer("t").poll(mgr, 10)]
        with Consumer("t").peek(mgr, 10) as pk:
            peeked = [(m.offset, m.key, bytes(m.value), m.timestamp, m.headers) for m in pk]
            assert all(m.value.readonly and m.partition == 0 and m.intact is None for m in pk)
        assert peeked == [(m.offset, m.key, m.value, m.timestamp, m.headers) for m in polled]
        assert [m.intact for m in pk] == [True] * 4 and pk.overwritten == []
    finally:
        mgr.close()


def test_a_peeked_message_class_of_another_shape_should_be_built_through_its_init():
    """The crossing fills PeekedMessage's slots in place; a subclass (or any other
    class) is called instead, so its own __init__ runs."""
    mgr = _peek_bus()
    try:
        from grafos.peek import PeekedMessage

        class Tagged(PeekedMessage):
            __slots__ = ("tag",)

            def __init__(self, *a) -> None:
                super().__init__(*a)
                self.tag = "made by __init__"

        c = Consumer("t")
        rd = c._session(mgr)._ensure(c)     # the reader of its shared-memory session
        c.peek(mgr, 4).release()          # the reader's rows now hold four
        c.seek_partition(mgr, 0, 0)
        pid, index, part, slots, stride = rd._peek_sources[0]
        seg, _ = _crossing.peek_take(rd.poller, index, 4, slots, stride, part)
        plain = _crossing.peek_build(seg, pid, PeekedMessage, "t")
        tagged = _crossing.peek_build(seg, pid, Tagged, "t")
        assert [type(m) for m in plain] == [PeekedMessage] * 4 and {m.tag for m in tagged} == {"made by __init__"}
        fields = ("topic", "partition", "offset", "timestamp", "key", "headers", "intact")
        assert [[getattr(m, f) for f in fields] + [bytes(m.value)] for m in plain] == \
               [[getattr(m, f) for f in fields] + [bytes(m.value)] for m in tagged]
        assert [m.offset for m in plain] == [0, 1, 2, 6] and plain[0].intact is None and plain[0].topic == "t"
    finally:
        mgr.close()


def test_peeks_should_not_change_reference_counts():
    mgr = _peek_bus()
    try:
        from grafos.peek import PeekedMessage
        c = Consumer("t")
        c.peek(mgr, 1).release()
        before = [sys.getrefcount(o) for o in (PeekedMessage, c, mgr)]
        for _ in range(500):
            c.seek_partition(mgr, 0, 0)
            with c.peek(mgr, 10) as pk:
                assert len(pk) == 4
        del pk
        after = [sys.getrefcount(o) for o in (PeekedMessage, c, mgr)]
        assert after == before
    finally:
        mgr.close()


def test_the_peek_calls_should_refuse_a_row_outside_the_slots_they_are_given():
    """The crossing checks each row against the slot bytes it is given at the take,
    takes the reader's Poller and its own Segments (never an address), and
    refuses bad arguments with an exception, never a crash."""
    mgr = _peek_bus()
    try:
        from grafos.peek import PeekedMessage
        c = Consumer("t")
        rd = c._session(mgr)._ensure(c)     # the reader of its shared-memory session
        c.peek(mgr, 4).release()          # the reader's rows now hold four
        c.seek_partition(mgr, 0, 0)
        pid, index, part, slots, stride = rd._peek_sources[0]
        with pytest.raises(CorruptFabric, match="row 2 points outside the ring"):
            _crossing.peek_take(rd.poller, index, 4, memoryview(slots)[:2 * stride], stride, part)
        c.seek_partition(mgr, 0, 0)
        seg, plain = _crossing.peek_take(rd.poller, index, 4, slots, stride, part)
        assert len(seg) == 4 and plain is False     # _peek_bus's messages have keys
        with pytest.raises(TypeError, match="peek_take"):
            _crossing.peek_take(rd.poller, index, 4)
        with pytest.raises(TypeError, match="Poller"):
            _crossing.peek_take(0x7F0000001000, index, 4, slots, stride, part)     # an address is no Poller
        with pytest.raises(ValueError, match="out of range"):
            _crossing.peek_take(rd.poller, index, 4, slots, 0, part)
        with pytest.raises(ValueError, match="out of range"):
            _crossing.peek_take(rd.poller, len(rd), 4, slots, stride, part)
        rows = bytes(len(seg) * _crossing.ROW)
        for call in (lambda: _crossing.peek_build(rows, pid, PeekedMessage, None),
                     lambda: _crossing.peek_runs(rows), lambda: _crossing.peek_check(rows),
                     lambda: _crossing.peek_release([], 0, rows, [])):
            with pytest.raises(TypeError, match="Segment"):
                call()
        with pytest.raises(ValueError, match="not checked"):
            _crossing.peek_release([None] * 4, 0, seg, [])
        with pytest.raises(ValueError, match="after peek_check"):
            seg.flags
        assert _crossing.peek_check(seg) == 0 and seg.flags == b"\x01" * 4
        with pytest.raises(ValueError, match="out of the list"):
            _crossing.peek_release([], 0, seg, [])
        with pytest.raises(TypeError, match="peek_release"):
            _crossing.peek_release((), 0, seg, [])
    finally:
        mgr.close()


@pytest.mark.parametrize("rows", [
    np.arange(40, dtype=np.uint8).reshape(5, 8),                  # C-contiguous: sent in place
    np.arange(20, dtype=np.float32).reshape(5, 4),                # rows of 16 bytes
    np.arange(80, dtype=np.uint8).reshape(5, 16)[:, ::2],          # strided: the packing path
    np.arange(80, dtype=np.uint8).reshape(10, 8)[::2],             # every other row
], ids=["uint8", "float32", "strided-columns", "strided-rows"])
def test_numpy_batches_should_send_each_row_as_one_message_whatever_their_layout(rows):
    mgr = _bus(partitions=1)
    try:
        ro = rows.view()
        ro.flags.writeable = False                                # read-only arrays are taken too
        for batch in (rows, ro):
            parts, offs = Producer("t").send_batch(mgr, batch)
            assert parts.tolist() == [0] * len(batch)
        got = [m.value for _, m in Consumer("t").poll(mgr, 100)]
        want = [r.tobytes() for r in rows]
        assert got == want + want
    finally:
        mgr.close()


def test_numpy_batches_should_not_change_reference_counts():
    mgr = _bus(partitions=2, capacity=1024)
    prod = Producer("t")
    rows = np.zeros((8, 32), dtype=np.uint8)
    prod.send_batch(mgr, rows)
    before = [sys.getrefcount(o) for o in (rows, mgr)]
    for _ in range(2000):
        prod.send_batch(mgr, rows)
    assert [sys.getrefcount(o) for o in (rows, mgr)] == before
    mgr.close()


# ---- share groups: the records of an acquisition, built in C -------------------------
def _share_bus() -> TopicManager:
    mgr = TopicManager(size=16 << 20)
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=64))
    prod = Producer("jobs")
    prod.send_keyed(mgr, b"k0", b"v0", headers=[("h", b"1")])
    prod.send(mgr, b"v1")
    prod.send_keyed(mgr, b"", b"")
    return mgr


def test_share_poll_records_should_carry_each_field_the_ring_holds():
    mgr = _share_bus()
    try:
        c = mgr.share_consumer("jobs", group="g", lock_secs=30.0)
        t0 = time.time_ns()
        recs = c.poll(10)
        assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in recs] == [
            (0, 0, b"k0", b"v0", (("h", b"1"),)), (0, 1, None, b"v1", ()), (0, 2, b"", b"", ())]
        assert all(r.delivery_count == 1 and t0 / 1e9 + 29 < r.deadline < time.time() + 31 for r in recs)
        assert all(type(r) is share.ShareRecord and type(r.timestamp) is int and r.timestamp > 0 for r in recs)
        assert c.held() == [(0, 0), (0, 1), (0, 2)]
        assert c.ack(recs) == 3 and c.held() == []
        c.close()
    finally:
        mgr.close()


def _acquire(c, n: int):
    """One raw acquire into the consumer's buffers: (got, rows, meta, the buffers the crossing takes, size)."""
    bufs = c._buffers()
    sp = c._parts[0]
    got = sp.handle.acquire(sp.member, n, time.time_ns(), bufs)
    return got, bufs.rows, bufs.meta, bufs.views, bufs.size


def test_share_records_should_refuse_a_row_outside_the_buffer_and_build_nothing():
    mgr = _share_bus()
    try:
        c = mgr.share_consumer("jobs", group="g")
        got, rows, meta, (ra, ma, ba), size = _acquire(c, 3)
        assert got == 3
        out, held = ["earlier"], {}
        pos = meta[0].pos
        meta[0].pos = size - 1          # forged: its bytes would run past the buffer
        with pytest.raises(CorruptFabric, match="outside the read buffer"):
            _crossing.share_records(ra, ma, ba, size, got, 0, 7, share.ShareRecord, out, held, "t")
        assert out == ["earlier"] and held == {}
        meta[0].pos = pos
        meta[1].hdr_len, meta[1].key_len = 3, 0     # forged: headers too short to parse
        with pytest.raises(CorruptFabric, match="headers"):
            _crossing.share_records(ra, ma, ba, size, got, 0, 7, share.ShareRecord, out, held, "t")
        assert out == ["earlier"] and held == {}
        c.close(release=False)
    finally:
        mgr.close()


def test_share_records_should_refuse_buffers_smaller_than_the_rows_and_size_it_is_told():
    """The crossing takes the acquire's buffers, never addresses, and checks each
    holds what the row count and buf_size say before it reads a row."""
    mgr = _share_bus()
    try:
        c = mgr.share_consumer("jobs", group="g")
        got, rows, meta, (ra, ma, ba), size = _acquire(c, 3)
        assert got == 3
        out, held = [], {}
        short = memoryview(ra)[:2 * (len(ra) // len(rows))]      # two rows' bytes
        for args in ((short, ma, ba, size), (ra, memoryview(ma)[:_crossing.ROW], ba, size),
                     (ra, ma, memoryview(ba)[:size - 1], size)):
            with pytest.raises(ValueError, match="smaller than n and buf_size say"):
                _crossing.share_records(*args, got, 0, 7, share.ShareRecord, out, held, "t")
        with pytest.raises(TypeError):
            _crossing.share_records(0x7F0000001000, ma, ba, size, got, 0, 7, share.ShareRecord, out, held, "t")
        assert out == [] and held == {}
        c.close(release=False)
    finally:
        mgr.close()


def test_share_records_should_leave_rows_at_the_delivery_limit_to_the_caller():
    mgr = _share_bus()
    try:
        c = mgr.share_consumer("jobs", group="g")
        got, rows, meta, (ra, ma, ba), size = _acquire(c, 3)
        out, held = [], {}
        rows[1].flags = 1   # GF_SHARE_DEAD
        assert _crossing.share_records(ra, ma, ba, size, got, 0, 7, share.ShareRecord, out, held, "t") is None
        assert out == [] and held == {}
        rows[1].flags = 0
        offs, words, packed = _crossing.share_records(ra, ma, ba, size, got, 0, 7, share.ShareRecord, out, held, "t")
        assert offs == [0, 1, 2] and words == [rows[j].word for j in range(3)]
        assert np.frombuffer(packed, dtype=np.uint64).tolist() == offs + words
        assert held == dict(zip(offs, words)) and [r[9] for r in out] == [7, 7, 7]
        assert [r.topic for r in out] == ["t", "t", "t"]
        c.close(release=False)
    finally:
        mgr.close()


def test_share_polls_and_acks_should_not_change_reference_counts():
    mgr = TopicManager(size=16 << 20)
    try:
        mgr.create("jobs", TopicConfig(num_partitions=2, partition_capacity=256))
        prod = Producer("jobs")
        c = mgr.share_consumer("jobs", group="g")
        region = c._parts[0].region.id
        before = [sys.getrefcount(o) for o in (share.ShareRecord, c, region)]
        for _ in range(300):
            for i in range(8):
                prod.send_keyed(mgr, b"k%d" % i, b"v", headers=[("a", b"b")])
            batch = c.poll(8)
            assert len(batch) == 8
            assert c.ack(batch) == 8
        del batch
        after = [sys.getrefcount(o) for o in (share.ShareRecord, c, region)]
        assert after == before
        c.close()
    finally:
        mgr.close()


def test_the_poll_and_loan_calls_should_take_the_objects_that_own_their_memory_never_an_address():
    """A reader's gf_poller lives in the crossing's Poller, whose bytes are exactly
    the struct; messages() and a consumer's binding take that Poller, and a loan's
    span a writable buffer over its value: an int, however it was made, is refused."""
    mgr = _peek_bus()
    try:
        c = Consumer("t")
        rd = c._session(mgr)._ensure(c)     # the reader of its shared-memory session
        assert type(rd.poller) is _fast.Poller and memoryview(rd.poller).nbytes == ffi.sizeof("gf_poller")
        rd._p.expired = 0xABCDEF01      # what cffi writes is the Poller's own bytes
        assert (0xABCDEF01).to_bytes(4, sys.byteorder) in bytes(memoryview(rd.poller))
        rd._p.expired = 0
        assert rd.poll(10) and _fast.messages(rd.poller, 0, None, "t") == []
        for bad in (0x7F0000001000, rd):
            with pytest.raises(TypeError, match="Poller"):
                _fast.messages(bad, 0, None, "t")
            with pytest.raises(TypeError, match="Poller"):
                c._bind_fast(mgr, _fast.Binding(), bad, rd, False, "t")
        with pytest.raises(ValueError, match="count out of range"):
            _fast.messages(rd.poller, rd.max_batch + 1, None, "t")
        with pytest.raises(TypeError):
            _fast.span(0x7F0000001000)
        with pytest.raises((TypeError, BufferError)):
            _fast.span(b"read-only bytes")
        value = bytearray(b"abcd")
        s = _fast.span(value)
        memoryview(s)[:2] = b"xy"
        assert value == bytearray(b"xycd") and s.revoke() == 0
    finally:
        mgr.close()


def test_the_crossing_should_take_the_core_s_table_as_its_bytes_and_refuse_anything_else():
    """bind() takes a buffer over the entry-point table and checks its size and
    version against its own build; an address or a wrong table is refused and
    leaves the crossing bound as it was."""
    from grafos._check import raise_for
    for bad, err, what in ((0x7F0000001000, TypeError, "bytes-like"), (b"1234", ImportError, "too few"),
                           (bytes(200), ImportError, "version 0 \\(200 bytes\\)")):
        with pytest.raises(err, match=what):
            _fast.bind(bad, raise_for, CorruptFabric, Message)
    mgr = _bus(partitions=1)
    try:
        Producer("t").send(mgr, b"still bound")
        assert [m.value for _, m in Consumer("t").poll(mgr, 10)] == [b"still bound"]
    finally:
        mgr.close()


def test_a_send_path_sends_through_the_crossing_s_own_sender_and_takes_no_address():
    """The gf_sender a producer's sends go through lives in a crossing object that
    the binding layer fills in through the buffer protocol: what one side writes
    the other reads, and a SendPath binds to that object, never to an int."""
    from grafos._core.sender import Sender
    from grafos.mq.producer import Partitioner
    mgr = _bus(partitions=3)
    prod = Producer("t", Partitioner.RoundRobin)
    assert [prod.send(mgr, b"x")[0] for _ in range(4)] == [0, 1, 2, 0]
    s = prod._session(mgr)._bound[0]       # the Sender of its shared-memory session
    assert isinstance(s.state, _fast.SenderState) and memoryview(s.state).nbytes == ffi.sizeof("gf_sender")
    assert s.rr == 4                        # the crossing's sends moved the counter cffi reads
    t = mgr.topic("t")
    other = Sender(t.rings, t.n, int(Partitioner.RoundRobin), rr=2)
    prod._bind_fast(mgr, t.binding, other.state, other)
    assert prod.send(mgr, b"y")[0] == 2     # and it starts where cffi set it
    with pytest.raises(TypeError, match="SenderState"):
        prod._bind_fast(mgr, t.binding, int(ffi.cast("uintptr_t", ffi.from_buffer(other.state))), other)
    mgr.close()
