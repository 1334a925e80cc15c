"""Batch APIs (issue #5): ``Producer.send_batch`` and ``Consumer.poll_batch`` carry
the same messages as the single-message path, as numpy arrays over one buffer."""
from __future__ import annotations

import numpy as np
import pytest

from grafos.errors import InvalidArgument, MessageTooLarge
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.reader import Batch


@pytest.fixture
def mgr():
    m = TopicManager(size=64 << 20)
    yield m
    m.close()


def _topic(mgr: TopicManager, name: str, partitions: int = 1, capacity: int = 1024, stride: int = 256) -> None:
    mgr.create(name, TopicConfig(partitions, capacity, stride, 3600.0))


def _by_partition(pairs):
    out: dict[int, list] = {}
    for p, m in pairs:
        out.setdefault(p, []).append((m.offset, m.key, m.value))
    return out


def test_send_batch_should_store_the_same_messages_as_send_keyed(mgr):
    _topic(mgr, "single", partitions=4)
    _topic(mgr, "batch", partitions=4)
    keys = [f"key-{i % 13}".encode() for i in range(200)]
    values = [f"value-{i}".encode() * (1 + i % 5) for i in range(200)]
    one = Producer("single")
    sent_single = [one.send_keyed(mgr, k, v) for k, v in zip(keys, values)]
    parts, offs = Producer("batch").send_batch(mgr, values, keys=keys)
    assert [tuple(x) for x in zip(parts.tolist(), offs.tolist())] == sent_single
    a = _by_partition(Consumer("single").poll(mgr, 1000))
    b = _by_partition(Consumer("batch").poll(mgr, 1000))
    assert a == b and sum(map(len, b.values())) == 200


def test_keyed_batch_should_land_on_kafkas_partition(mgr):
    _topic(mgr, "t", partitions=7)
    keys = [f"user-{i}".encode() for i in range(50)]
    parts, _ = Producer("t").send_batch(mgr, [b"x"] * 50, keys=keys)
    assert parts.tolist() == [kafka_partition(k, 7) for k in keys]


def test_round_robin_batch_should_spread_evenly_and_keep_offsets_contiguous(mgr):
    _topic(mgr, "t", partitions=4)
    prod = Producer("t", Partitioner.RoundRobin)
    parts, offs = prod.send_batch(mgr, [b"%d" % i for i in range(40)])
    assert np.bincount(parts, minlength=4).tolist() == [10, 10, 10, 10]
    for p in range(4):
        assert offs[parts == p].tolist() == list(range(10))
    parts2, offs2 = prod.send_batch(mgr, [b"more"] * 8)
    for p in range(4):
        assert offs2[parts2 == p].tolist() == [10, 11]


def test_send_batch_should_take_a_2d_uint8_array(mgr):
    _topic(mgr, "t")
    rows = np.arange(64 * 16, dtype=np.uint32).astype(np.uint8).reshape(64, 16)
    Producer("t").send_batch(mgr, rows)
    b = Consumer("t").poll_batch(mgr, 100)
    assert len(b) == 64
    assert np.array_equal(b.values(), rows)
    assert [b.value(i) for i in range(64)] == [r.tobytes() for r in rows]
    assert b.offsets.tolist() == list(range(64))


def test_send_batch_should_take_a_non_contiguous_array(mgr):
    _topic(mgr, "t")
    big = np.arange(20 * 8, dtype=np.uint8).reshape(20, 8)
    view = big[::2, 1:5]      # strided: must be packed, not read as if contiguous
    Producer("t").send_batch(mgr, view)
    b = Consumer("t").poll_batch(mgr, 100)
    assert np.array_equal(b.values(), view)


def test_poll_batch_should_match_poll_field_by_field(mgr):
    _topic(mgr, "t", partitions=3)
    prod = Producer("t")
    keys = [f"k{i:03d}".encode() for i in range(90)]
    values = [f"v{i:05d}".encode() for i in range(90)]
    prod.send_batch(mgr, values, keys=keys)
    pairs = Consumer("t", "a").poll(mgr, 1000)
    b = Consumer("t", "b").poll_batch(mgr, 1000)
    assert isinstance(b, Batch) and len(b) == len(pairs) == 90
    assert b.partitions.tolist() == [p for p, _ in pairs]
    assert b.offsets.tolist() == [m.offset for _, m in pairs]
    assert b.timestamps.tolist() == [m.timestamp for _, m in pairs]
    assert [b.key(i) for i in range(90)] == [m.key for _, m in pairs]
    assert [b.value(i) for i in range(90)] == [m.value for _, m in pairs]
    assert b.key_lengths.tolist() == [4] * 90 and b.value_lengths.tolist() == [6] * 90
    assert [bytes(r) for r in b.keys()] == [m.key for _, m in pairs]
    assert [bytes(r) for r in b.values()] == [m.value for _, m in pairs]
    assert list(b) == pairs        # iteration yields (partition, Message) like poll


def test_batch_arrays_should_be_numpy_views_over_one_buffer(mgr):
    _topic(mgr, "t")
    Producer("t").send_batch(mgr, np.full((32, 24), 7, dtype=np.uint8))
    b = Consumer("t").poll_batch(mgr, 100)
    assert isinstance(b.meta, np.ndarray) and isinstance(b.data, np.ndarray)
    assert b.data.dtype == np.uint8 and len(b.data) == 32 * 24
    vals = b.values()
    assert vals.shape == (32, 24) and np.shares_memory(vals, b.data)    # no copy
    assert not vals.flags.writeable


def test_copy_should_survive_the_next_poll(mgr):
    _topic(mgr, "t")
    prod, cons = Producer("t"), Consumer("t", max_batch=8)
    prod.send_batch(mgr, [b"first-%d" % i for i in range(8)])
    kept = cons.poll_batch(mgr, 8).copy()
    prod.send_batch(mgr, [b"later-%d" % i for i in range(8)])
    cons.poll_batch(mgr, 8)
    assert [kept.value(i) for i in range(8)] == [b"first-%d" % i for i in range(8)]


def test_messages_without_a_key_should_read_as_none(mgr):
    _topic(mgr, "t")
    Producer("t").send_batch(mgr, [b"a", b"bb", b"ccc"])
    b = Consumer("t").poll_batch(mgr, 10)
    assert [b.key(i) for i in range(3)] == [None, None, None]
    assert not b.has_keys.any()
    with pytest.raises(ValueError, match="no key"):
        b.keys()
    with pytest.raises(ValueError, match="different lengths"):
        b.values()
    assert [b.value(i) for i in range(3)] == [b"a", b"bb", b"ccc"]


def test_empty_poll_should_give_an_empty_batch(mgr):
    _topic(mgr, "t")
    b = Consumer("t").poll_batch(mgr, 10)
    assert len(b) == 0 and list(b) == [] and b.values().shape == (0, 0)


def test_poll_batch_should_resume_where_it_stopped(mgr):
    _topic(mgr, "t", partitions=2)
    Producer("t", Partitioner.RoundRobin).send_batch(mgr, [b"%03d" % i for i in range(50)])
    cons = Consumer("t")
    seen = []
    while True:
        b = cons.poll_batch(mgr, 7)
        if not len(b):
            break
        assert len(b) <= 7
        seen += [b.value(i) for i in range(len(b))]
    assert sorted(seen) == [b"%03d" % i for i in range(50)]
    assert cons.positions() == {0: 25, 1: 25}


def test_too_large_message_should_reject_the_whole_batch(mgr):
    _topic(mgr, "t", capacity=4, stride=128)    # the ring holds at most 4 * 128 - 40 = 472 bytes
    prod = Producer("t")
    with pytest.raises(MessageTooLarge) as e:
        prod.send_batch(mgr, [b"ok", b"x" * 473, b"ok"])
    assert e.value.args and "473" in str(e.value) and "472" in str(e.value)
    assert e.value.room == 472
    assert Consumer("t").poll(mgr, 10) == []      # nothing was written


def test_a_batch_mixing_one_slot_and_multi_slot_messages_arrives_whole_and_in_order(mgr):
    _topic(mgr, "t", partitions=3, capacity=64, stride=128)   # room 88 B; 64 slots: nothing is overwritten
    prod = Producer("t")
    vals = [bytes([i]) * (i * 37 % 500) for i in range(30)]
    keys = [b"k%d" % (i % 5) for i in range(30)]
    parts, offs = prod.send_batch(mgr, vals, keys)
    got = _by_partition(Consumer("t").poll(mgr, 200))
    for p in range(3):
        mine = [(int(o), k, v) for pp, o, k, v in zip(parts, offs, keys, vals) if pp == p]
        assert got.get(p, []) == mine
        o = [x[0] for x in mine]
        assert o == sorted(o) and len(set(o)) == len(o)
    assert any(len(k) + len(v) > 88 for k, v in zip(keys, vals))   # the batch did span slots


@pytest.mark.parametrize("values, keys, match", [
    ([], None, "empty"),
    ([b"a", b"b"], [b"k"], "keys for"),
    (np.zeros(8, dtype=np.uint8), None, "2-D"),
])
def test_bad_batches_should_raise_and_leave_the_bus_unchanged(mgr, values, keys, match):
    _topic(mgr, "t")
    with pytest.raises(InvalidArgument, match=match):
        Producer("t").send_batch(mgr, values, keys=keys)
    assert mgr.describe("t").produced == 0


def test_batch_values_of_the_wrong_type_should_name_the_item(mgr):
    _topic(mgr, "t")
    with pytest.raises(TypeError, match=r"values\[1\]"):
        Producer("t").send_batch(mgr, [b"a", "not bytes"])
    assert mgr.describe("t").produced == 0


def test_partition_append_batch_should_read_back_in_order(mgr):
    _topic(mgr, "t")
    part = mgr.topic("t").partition(0)
    offs = part.append_batch([b"p%d" % i for i in range(20)], keys=[b"k%d" % i for i in range(20)])
    assert offs.tolist() == list(range(20))
    msgs = part.read(0, 100)
    assert [(m.offset, m.key, m.value) for m in msgs] == [(i, b"k%d" % i, b"p%d" % i) for i in range(20)]
