"""Partition rings, one behaviour at a time: offsets, keys, headers and
timestamps round-trip; oversized messages are refused naming both sizes;
batches are all or nothing; the ring overwrites its oldest slot and a reader
that fell behind learns how many it lost; checksums catch damage; blocking
polls wake on appends."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from grafos import Fabric
from grafos._native import ffi, lib
from grafos.errors import MessageTooLarge
from grafos.partition import Partition
from grafos.reader import Reader

MiB = 1 << 20


@pytest.fixture
def fab():
    with Fabric(16 * MiB) as f:
        yield f


def values(msgs):
    return [m.value for _, m in msgs]


def test_append_returns_consecutive_offsets_and_messages_round_trip(fab):
    part = Partition.create(fab, 16, 256, ttl=600)
    ts = 1_600_000_000_123_456_789
    assert part.append(b"plain") == 0
    assert part.append(b"keyed", key=b"k1") == 1
    assert part.append(b"", key=b"") == 2                       # empty key is a key, not None
    assert part.append(b"with headers", headers=[("trace", b"abc"), ("n", b"")]) == 3
    assert part.append(b"stamped", timestamp=ts) == 4
    assert part.append(bytearray(b"bytearray"), key=memoryview(b"mv")) == 5
    before = time.time_ns()
    msgs = [m for _, m in part.reader(0).poll(100)]
    assert [m.offset for m in msgs] == list(range(6))
    assert [m.key for m in msgs] == [None, b"k1", b"", None, None, b"mv"]
    assert [m.value for m in msgs] == [b"plain", b"keyed", b"", b"with headers", b"stamped", b"bytearray"]
    assert msgs[3].headers == (("trace", b"abc"), ("n", b""))
    assert msgs[4].timestamp == ts
    assert 0 < msgs[0].timestamp <= before
    st = part.state()
    assert (st.earliest, st.latest, st.lost) == (0, 6, 0)


def test_a_message_that_fills_the_room_exactly_takes_one_offset_one_byte_more_takes_two(fab):
    part = Partition.create(fab, 4, 128, ttl=600)
    assert part.room == 128 - lib.GF_SLOT_HDR_SIZE
    assert part.append(b"v" * (part.room - 3), key=b"key") == 0
    assert part.append(b"w" * (part.room - 2), key=b"key") == 1     # spans slots 1 and 2
    assert part.append(b"x") == 3
    rd = part.reader(0)
    assert [(m.offset, m.value) for _, m in rd.poll(10)] == [
        (0, b"v" * (part.room - 3)), (1, b"w" * (part.room - 2)), (3, b"x")]
    assert rd.position(0) == 4 and rd.gaps(0) == 1


def test_a_reader_placed_inside_a_multi_slot_message_steps_to_the_next_message(fab):
    part = Partition.create(fab, 16, 64, ttl=600)
    part.append(b"x" * 100)                      # offsets 0..2
    part.append(b"y")                            # offset 3
    rd = part.reader(1)
    assert [(m.offset, m.value) for _, m in rd.poll(10)] == [(3, b"y")]
    assert rd.gaps(0) == 2 and rd.counters(0) == {"lost": 0, "abandoned": 0, "corrupt": 0, "expired": 0}


def test_overwriting_the_first_slots_of_a_multi_slot_message_loses_all_of_it(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    part.append(b"first")                        # offset 0
    part.append(b"z" * 200)                      # offsets 1..4
    rd = part.reader(1)
    for i in range(6):                           # offsets 5..10: slots 5, 6, 7, 0, 1, 2
        part.append(b"%d" % i)
    got = rd.poll(20)
    assert [m.value for _, m in got] == [b"%d" % i for i in range(6)]
    assert rd.counters(0)["lost"] == 2 and rd.gaps(0) == 2   # 1, 2 lost; 3, 4 were its tail


def test_a_message_as_large_as_the_whole_ring_fits_and_one_byte_more_is_refused(fab):
    part = Partition.create(fab, 4, 64, ttl=600)
    assert part.max_message == 4 * 64 - lib.GF_SLOT_HDR_SIZE
    big = bytes(range(256)) * 2
    part.append(b"a")                                       # offset 0: the big one cannot start at slot 1
    off = part.append(big[:part.max_message - 2], key=b"kk")
    assert off == 4                                         # offsets 1..3 pad the ring's end
    got = part.reader(0).poll(10)
    assert [(m.offset, m.key, m.value) for _, m in got] == [(4, b"kk", big[:part.max_message - 2])]
    with pytest.raises(MessageTooLarge) as e:
        part.append(b"x" * (part.max_message - 1), key=b"kk")
    assert e.value.room == part.max_message and e.value.size == part.max_message + 1
    assert "larger than the partition's ring" in str(e.value) and str(part.max_message) in str(e.value)
    assert part.state().latest == 8


def test_a_message_too_large_is_refused_naming_both_sizes_and_nothing_is_written(fab):
    part = Partition.create(fab, 4, 64, ttl=600)
    with pytest.raises(MessageTooLarge) as e:
        part.append(b"x" * 300, key=b"kk")
    assert e.value.room == 216 and e.value.size == 302
    assert "302" in str(e.value) and "216" in str(e.value)
    assert isinstance(e.value, ValueError)
    assert part.state().latest == 0


def test_a_batch_is_all_or_nothing(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    with pytest.raises(MessageTooLarge, match="batch message 2"):
        part.append_batch([b"a", b"b", b"c" * (8 * 64 - 39), b"d"])
    assert part.state().latest == 0
    assert part.append_batch([b"a", b"b"], keys=[b"1", b"2"]).tolist() == [0, 1]
    assert part.append_batch([b"c"]).tolist() == [2]
    msgs = [m for _, m in part.reader(0).poll(10)]
    assert [(m.offset, m.key, m.value) for m in msgs] == [(0, b"1", b"a"), (1, b"2", b"b"), (2, None, b"c")]


def test_the_ring_overwrites_its_oldest_slot_and_a_reader_behind_it_learns_what_it_lost(fab):
    part = Partition.create(fab, 4, 64, ttl=600)
    rd = part.reader(0)
    assert values(rd.poll(2)) == []
    for i in range(10):
        part.append(b"%d" % i)
    st = part.state()
    assert (st.earliest, st.latest, st.lost) == (6, 10, 6)
    assert values(rd.poll(100)) == [b"6", b"7", b"8", b"9"]
    assert rd.counters(0)["lost"] == 6
    # a reader that keeps up loses nothing
    for i in range(10, 14):
        part.append(b"%d" % i)
        assert values(rd.poll(100)) == [b"%d" % i]
    assert rd.counters(0)["lost"] == 6


def test_seek_is_by_offset_anywhere_in_the_ring(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    for i in range(20):
        part.append(b"%d" % i)
    rd = part.reader(0)
    for off in (19, 12, 15):
        rd.seek(0, off)
        assert [m.offset for _, m in rd.poll(2)] == list(range(off, min(off + 2, 20)))
    rd.seek(0, 25)      # past the end: nothing yet, and nothing lost
    assert rd.poll(10) == []
    for i in range(20, 27):
        part.append(b"%d" % i)
    assert values(rd.poll(10)) == [b"25", b"26"]
    assert rd.counters(0)["lost"] == 0


def test_a_partition_attached_by_lease_is_the_same_ring(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    part.append(b"from the first handle")
    other = Partition(fab, fab.lease(part.lease.index, part.lease.id))
    assert (other.capacity, other.stride, other.room) == (8, 64, 24)
    other.append(b"second")
    assert [m.value for m in part.read(0)] == [b"from the first handle", b"second"]


def test_a_reader_polls_many_partitions_in_one_call(fab):
    parts = [Partition.create(fab, 16, 64, ttl=600) for _ in range(3)]
    for i, p in enumerate(parts):
        for j in range(i + 1):
            p.append(b"p%d-%d" % (i, j))
    rd = Reader(fab, [parts[0], None, parts[1], parts[2]], ids=[10, 11, 12, 13])
    got = rd.poll(100)
    assert sorted((pid, m.value) for pid, m in got) == [
        (10, b"p0-0"), (12, b"p1-0"), (12, b"p1-1"), (13, b"p2-0"), (13, b"p2-1"), (13, b"p2-2")]
    assert rd.poll(100) == []
    assert rd.position(0) == 1 and rd.position(2) == 2 and rd.position(3) == 3


def test_poll_batch_exposes_numpy_views(fab):
    part = Partition.create(fab, 64, 64, ttl=600)
    vals = [bytes([i]) * 8 for i in range(10)]
    part.append_batch(vals, keys=[b"k%d" % i for i in range(10)])
    batch = part.reader(0).poll_batch(100)
    assert len(batch) == 10
    assert batch.offsets.tolist() == list(range(10))
    assert (batch.value_lengths == 8).all()
    assert np.array_equal(batch.values(), np.frombuffer(b"".join(vals), np.uint8).reshape(10, 8))
    assert [batch.key(i) for i in range(10)] == [b"k%d" % i for i in range(10)]
    assert [m.value for _, m in batch.copy()] == vals


def test_a_damaged_slot_is_skipped_and_counted_as_corrupt(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    for i in range(4):
        part.append(b"msg-%d" % i)
    # flip one payload byte of offset 2 behind the ring's back
    at = 256 + 2 * 64 + lib.GF_SLOT_HDR_SIZE
    part.lease.write(at, bytes([part.lease.read(at, 1)[0] ^ 0x01]))
    rd = part.reader(0)
    assert values(rd.poll(10)) == [b"msg-0", b"msg-1", b"msg-3"]
    assert rd.counters(0)["corrupt"] == 1


def test_a_checksum_binds_a_slot_to_its_offset(fab):
    # a slot's bytes copied into another slot (a stale lap, a bad copy) do not pass
    part = Partition.create(fab, 8, 64, ttl=600)
    part.append(b"zero")
    part.append(b"one!")
    slot0 = part.lease.read(256, 64)
    part.lease.write(256 + 64 + 8, slot0[8:])    # slot 1 gets slot 0's header and payload, keeps its seq
    rd = part.reader(0)
    assert values(rd.poll(10)) == [b"zero"]
    assert rd.counters(0)["corrupt"] == 1


def test_a_blocking_poll_wakes_when_another_thread_appends(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    rd = part.reader(0)

    def later():
        time.sleep(0.2)
        part.append(b"wake up")

    t = threading.Thread(target=later)
    t.start()
    got = rd.poll(10, timeout=30)
    t.join()
    assert values(got) == [b"wake up"]


def test_a_poll_with_a_timeout_returns_empty_when_nothing_comes(fab):
    part = Partition.create(fab, 8, 64, ttl=600)
    t0 = time.monotonic()
    assert part.reader(0).poll(10, timeout=0.1) == []
    assert time.monotonic() - t0 >= 0.09


def test_keyed_batches_store_the_key_hash(fab):
    part = Partition.create(fab, 16, 128, ttl=600)
    keys = [b"21", b"foobar", b"abc"]
    part.append_batch([b"v"] * 3, keys=keys)
    part.append(b"v", key=b"a-little-bit-long-string")
    batch = part.reader(0).poll_batch(10)
    hashes = [int(h) for h in batch.meta["key_hash"]]
    assert hashes == [lib.gf_murmur2(k, len(k)) for k in keys + [b"a-little-bit-long-string"]]


def test_malformed_headers_cost_that_message_only_not_the_whole_poll(fab):
    # the core checksums headers but does not parse them: a writer using the raw C
    # API (another language, a bug) can publish bytes that are not our encoding
    parts = [Partition.create(fab, 8, 128, ttl=600) for _ in range(2)]
    parts[0].append(b"a0")
    parts[1].append(b"b0")
    assert lib.gf_ring_append(parts[1].handle, ffi.NULL, 0, 0, b"\xff\xff\x01", 3, b"bad", 3, 0) == 1
    parts[1].append(b"b2", headers={"h": b"v"})
    parts[0].append(b"a1")
    rd = Reader(fab, parts)
    got = rd.poll(100)
    assert sorted((p, m.value) for p, m in got) == [(0, b"a0"), (0, b"a1"), (1, b"b0"), (1, b"b2")]
    assert [m.headers for p, m in got if m.value == b"b2"] == [(("h", b"v"),)]
    assert rd.counters(1)["corrupt"] == 1 and rd.counters(0)["corrupt"] == 0
