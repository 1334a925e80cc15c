"""Large polled values: a consumer copies a value of 4 KiB or more straight
from the ring into a bytes object it keeps in a pool, and reuses that object
once the caller let it go. Nothing of this is visible: a value still held is
never written, a reused value hashes as its new bytes, and damaged or
overwritten messages are dropped and counted as any other message is."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from grafos.mq import SeekPolicy, TopicConfig, TopicManager

SIZE = 64 << 10
BATCH = 16


def _bus(checksum: bool, capacity: int = 64, size: int = SIZE):
    mgr = TopicManager()
    mgr.create("big", TopicConfig(num_partitions=1, partition_capacity=capacity,
                                  partition_stride=size + 256, checksum=checksum))
    cons = mgr.consumer("big")
    cons.seek(SeekPolicy.Earliest)
    return mgr, mgr.producer("big"), cons


def _values(first: int, n: int, size: int = SIZE) -> np.ndarray:
    """n values whose bytes name their index (first, first + 1, ...)."""
    return np.array([np.full(size, (first + i) % 251, dtype=np.uint8) for i in range(n)])


def _expect(msgs, size: int = SIZE) -> None:
    for _, m in msgs:
        assert m.value == bytes([m.offset % 251]) * size


@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("timeout", [0.0, 5.0])     # 5.0: the read runs without the GIL
def test_polls_of_large_values_reuse_what_the_caller_let_go(checksum, timeout):
    mgr, prod, cons = _bus(checksum)
    with mgr:
        for r in range(3):       # the pool fills, then serves
            prod.send_batch(_values(r * BATCH, BATCH))
            _expect(cons.poll(BATCH, timeout=timeout))
        batches = [_values(r * BATCH, BATCH) for r in range(3, 13)]
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for values in batches:
                prod.send_batch(values)
                msgs = cons.poll(BATCH, timeout=timeout)
                assert len(msgs) == BATCH
                _expect(msgs)
                del msgs
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        # one poll's values are 1 MiB: allocating them afresh would show here
        assert peak < BATCH * SIZE // 4, f"polls allocated {peak} bytes"


def test_a_value_still_held_is_never_written_and_a_reused_one_hashes_as_its_bytes():
    mgr, prod, cons = _bus(False)
    with mgr:
        prod.send_batch(_values(0, BATCH))
        first = cons.poll(BATCH)
        hashes = {hash(m.value) for _, m in first}
        held = first[: BATCH // 2]
        del first
        for r in range(1, 6):
            prod.send_batch(_values(r * BATCH, BATCH))
            msgs = cons.poll(BATCH)
            _expect(msgs)
            # a reused object carries new bytes: its hash is theirs, not the cached one
            table = {m.value: m.offset for _, m in msgs}
            assert all(table[bytes([m.offset % 251]) * SIZE] == m.offset for _, m in msgs)
            assert all(hash(m.value) == hash(bytes(m.value)) for _, m in msgs)
        _expect(held)
        assert {hash(m.value) for _, m in held} <= hashes


def test_values_of_another_size_and_small_values_read_as_sent():
    mgr, prod, cons = _bus(True)
    with mgr:
        for size in (SIZE, 8 << 10, SIZE, 100, 4096, 4095):
            prod.send_batch(_values(0, 8, size))
            msgs = cons.poll(8)
            assert [m.value for _, m in msgs] == [bytes([i % 251]) * size for i in range(8)]


def test_a_damaged_large_value_is_dropped_and_counted():
    mgr, prod, cons = _bus(True, capacity=32)
    with mgr:
        for r in range(2):       # the pool fills, then serves
            prod.send_batch(_values(r * 8, 8))
            assert len(cons.poll(8)) == 8
        part = mgr.topic("big").partitions[0]
        offs = [int(o) for o in prod.send_batch(_values(16, 8))[1]]
        slot = offs[3] % part.capacity
        part.lease.write(256 + slot * part.stride + 40 + 1000, b"\xee")   # a value byte
        msgs = cons.poll(8)
        assert [m.offset for _, m in msgs] == [o for o in offs if o != offs[3]]
        _expect(msgs)
        assert cons._sess[1]._reader.counters(0)["corrupt"] == 1


def test_overwritten_large_values_are_counted_lost():
    mgr, prod, cons = _bus(False, capacity=16)
    with mgr:
        for r in range(2):
            prod.send_batch(_values(r * 8, 8))
            assert len(cons.poll(8)) == 8
        for r in range(2, 7):    # 40 sent into 16 slots: 24 overwritten unread
            prod.send_batch(_values(r * 8, 8))
        msgs = cons.poll(64)
        assert [m.offset for _, m in msgs] == list(range(40, 56))
        _expect(msgs)
        assert cons.lost() == {0: 24}


def test_a_consumer_thread_reads_large_values_while_a_producer_thread_sends():
    import threading
    size, n = 16 << 10, 400
    mgr, prod, cons = _bus(True, capacity=512, size=size)     # room for all: nothing overwritten
    with mgr:
        cons.poll(1, timeout=0.0)
        batches = [_values(r * 8, 8, size) for r in range(n // 8)]
        t = threading.Thread(target=lambda: [prod.send_batch(v) for v in batches])
        t.start()
        got, kept = [], []
        while len(got) < n:
            msgs = cons.poll(8, timeout=5.0)
            assert msgs, "no message within 5 s"
            got += [m.offset for _, m in msgs]
            _expect(msgs, size)
            kept += msgs[:1]        # some held across polls, the rest let go
        t.join(10)
        assert got == list(range(n))
        _expect(kept, size)
        assert cons.lost() == {}


@pytest.mark.parametrize("checksum", [False, True])
def test_a_ring_larger_than_the_caches_reads_back_what_was_sent(checksum):
    """A ring of 64 MiB or more is written with streaming stores: values of
    every size around where they start, behind keys and headers of several
    lengths (so values start at every alignment), sent one by one and in
    batches, read back whole, their checksums verified."""
    stride = 16 << 10
    mgr = TopicManager(size=96 << 20)
    with mgr:
        mgr.create("huge", TopicConfig(num_partitions=1, partition_capacity=(68 << 20) // stride,
                                       partition_stride=stride, checksum=checksum))
        prod, cons = mgr.producer("huge"), mgr.consumer("huge")
        cons.seek(SeekPolicy.Earliest)
        sent = []
        for i, size in enumerate([1, 100, 4095, 4096, 4097, 5000, 16000, 40000, 65536 + 77]):
            for k in range(3):
                key = b"k" * (i * 7 + k)
                value = bytes((j * 31 + i + k) & 0xFF for j in range(size))
                prod.send_keyed(key, value, headers={"h": b"x" * k} if k else None)
                sent.append((key, value))
        rows = np.array([np.full(20000, i % 251, dtype=np.uint8) for i in range(40)])
        prod.send_batch(rows)
        sent += [(None, r.tobytes()) for r in rows]
        got = []
        while len(got) < len(sent):
            batch = cons.poll(100)
            assert batch, f"{len(got)} of {len(sent)} read"
            got += [(m.key, bytes(m.value)) for _, m in batch]
        assert got == sent
        assert cons._sess[1]._reader.counters(0)["corrupt"] == 0
