"""The binding layer's sender (grafos._core.sender): the typed calls a producer's
cold paths make, against a real topic."""
from __future__ import annotations

import threading

import numpy as np

from grafos._core import codes, layout
from grafos._native import lib
from grafos._core.sender import Idem, Sender, SendResult, kafka_partition, murmur2
from grafos.mq import transaction
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import kafka_partition as producer_kafka_partition
from grafos.mq.producer import murmur2 as producer_murmur2
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import pack


def _all(mgr, topic):
    c = Consumer(topic, "check")
    c.seek(mgr, MemOffsetStore(), SeekPolicy.Earliest)
    return sorted((p, m.offset, m.key, m.value) for p, m in c.poll(mgr, 1000))


def _split(rc: int) -> tuple[int, int]:
    return rc >> layout.OFFSET_BITS, rc & layout.MAX_OFFSET


def test_a_sender_picks_and_writes_where_kafka_would():
    mgr = TopicManager()
    mgr.create("events", TopicConfig(4, 64, 256))
    t = mgr.topic("events")
    s = Sender(t.rings, t.n, layout.PART_KEYHASH)
    keys = [b"k%d" % i for i in range(12)]
    for k in keys:
        assert s.pick(k) == kafka_partition(k, 4) == producer_kafka_partition(k, 4)
        p, off = _split(s.send(k, b"", b"v-" + k, SendResult()))
        assert p == kafka_partition(k, 4)
    assert murmur2(b"abc") & 0xFFFFFFFF == producer_murmur2(b"abc") & 0xFFFFFFFF
    rr = Sender(t.rings, t.n, layout.PART_ROUNDROBIN)
    assert [_split(rr.send(None, b"", b"x", None))[0] for _ in range(4)] == [0, 1, 2, 3]
    assert rr.rr == 4 and Sender(t.rings, t.n, layout.PART_ROUNDROBIN, rr=rr.rr).pick(None) == 0
    got = _all(mgr, "events")
    assert {(k, v) for _, _, k, v in got} >= {(k, b"v-" + k) for k in keys}
    mgr.close()


def test_a_batch_lands_with_each_message_s_partition_and_offset():
    mgr = TopicManager()
    mgr.create("events", TopicConfig(2, 64, 256))
    t = mgr.topic("events")
    s = Sender(t.rings, t.n, layout.PART_KEYHASH)
    values, keys = [b"a", b"bb", b"ccc"], [b"x", b"y", b"z"]
    vals, vlens = pack(values, "values")
    kbuf, klens = pack(keys, "keys")
    parts, offs = np.empty(3, np.uint32), np.empty(3, np.uint64)
    assert s.send_batch(3, kbuf, klens, vals, vlens, parts, offs, SendResult()) == 3
    assert parts.tolist() == [kafka_partition(k, 2) for k in keys]
    assert sorted(zip(parts.tolist(), offs.tolist(), keys, values)) == _all(mgr, "events")
    too_big = [b"v" * 100_000]
    vals, vlens = pack(too_big, "values")
    assert s.send_batch(1, None, None, vals, vlens, parts[:1], offs[:1], SendResult()) == codes.TOOBIG
    mgr.close()


def test_a_full_raise_topic_names_the_partition_it_found_full():
    mgr = TopicManager()
    mgr.create("jobs", TopicConfig(2, 4, 128, on_full="raise"))
    c = Consumer("jobs", "slow", gating=True)
    c.poll(mgr, 1)                      # holds the gate at the oldest message
    t = mgr.topic("jobs")
    s = Sender(t.rings, t.n, layout.PART_KEYHASH)
    key = next(k for k in (b"k%d" % i for i in range(100)) if kafka_partition(k, 2) == 1)
    res = SendResult()
    rcs = [s.send(key, b"", b"m", res) for _ in range(6)]
    assert codes.FULL_RING in rcs and res.full_partition == 1
    parts, offs = np.empty(1, np.uint32), np.empty(1, np.uint64)
    vals, vlens = pack([b"m"], "values")
    kbuf, klens = pack([key], "keys")
    batch = SendResult()
    assert s.send_batch(1, kbuf, klens, vals, vlens, parts, offs, batch) == codes.FULL_RING
    assert batch.full_partition == 1
    mgr.close()


def test_an_idempotent_send_repeated_lands_once():
    mgr = TopicManager()
    mgr.create("events", TopicConfig(2, 64, 256))
    t = mgr.topic("events")
    reg = transaction.register(mgr, "tx-1", "events", 30.0)
    idem = Idem(mgr.fabric, 1, reg.number, reg.epoch, reg.lease_index, reg.lease_id, "producer 'tx-1'")
    idem.grow(t.n)
    assert idem.n == 2 and idem.txn == 0
    idem.renew_at_ns = 1 << 62
    s = Sender(t.rings, t.n, layout.PART_KEYHASH, idem=idem)
    res = SendResult()
    p, off = _split(s.send_idem(b"k", b"", b"once", res))
    assert res.unsure is None
    assert _split(s.send_idem_again(p, 0, b"k", b"", b"once", res)) == (p, off)
    assert [(q, o, v) for q, o, _, v in _all(mgr, "events")] == [(p, off, b"once")]
    mgr.close()


def test_a_send_that_wrote_then_failed_says_so_to_its_caller_alone():
    """Its result is the caller's: another thread's send meanwhile neither clears
    nor takes it, and whoever holds it can repeat the send, on any thread."""
    mgr = TopicManager()
    mgr.create("events", TopicConfig(2, 64, 256))
    t = mgr.topic("events")
    reg = transaction.register(mgr, "tx-1", "events", 30.0)
    idem = Idem(mgr.fabric, t.n, reg.number, reg.epoch, reg.lease_index, reg.lease_id, "producer 'tx-1'")
    idem.renew_at_ns = 1 << 62
    s = Sender(t.rings, t.n, layout.PART_KEYHASH, idem=idem)
    mine = SendResult()
    lib.gf_test_fault(lib.GF_FAULT_IDEM_WRITTEN, lib.GF_FAULT_FAIL)     # fails after the write
    try:
        assert s.send_idem(b"k", b"", b"mine", mine) == lib.GF_E_IO
    finally:
        lib.gf_test_fault(0, 0)
    p = kafka_partition(b"k", 2)
    assert mine.unsure == (p, 0)
    other = next(k for k in (b"o%d" % i for i in range(100)) if kafka_partition(k, 2) != p)
    theirs: list = []

    def send_theirs() -> None:
        r = SendResult()
        theirs.append((s.send_idem(other, b"", b"theirs", r), r.unsure))
    th = threading.Thread(target=send_theirs)
    th.start()
    th.join()
    assert theirs[0][0] >= 0 and theirs[0][1] is None
    assert mine.unsure == (p, 0)                # untouched by the other thread's send
    again: list = []
    th = threading.Thread(target=lambda: again.append(s.send_idem_again(*mine.unsure, b"k", b"", b"mine",
                                                                        SendResult())))
    th.start()
    th.join()
    assert _split(again[0]) == (p, 0)           # it had landed: where, and nothing written again
    assert [(q, v) for q, _, _, v in _all(mgr, "events")] == sorted([(p, b"mine"), (1 - p, b"theirs")])
    mgr.close()
