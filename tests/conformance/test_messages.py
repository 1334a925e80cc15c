"""Messages know where they were read (``msg.topic``, ``msg.partition``) on
every path that hands them out, and producers and consumers take serializers
(``key_serializer``/``value_serializer``, ``key_deserializer``/``value_deserializer``)
applied only when given, on every backend."""
from __future__ import annotations

import json
import pickle
import time

import pytest

from grafos.errors import BufferFull, InvalidArgument, InvalidType, Unsupported
from grafos.mq import Consumer, DlqRouter, Partitioner, Producer, SeekPolicy, TopicConfig

CFG = TopicConfig(num_partitions=3, partition_capacity=64, partition_stride=256)


def to_json(o: object) -> bytes:
    return json.dumps(o).encode()


def _poll_all(poll, n: int, deadline: float = 10.0) -> list:
    got: list = []
    end = time.monotonic() + deadline
    while len(got) < n and time.monotonic() < end:
        got += poll()
    return got


def _sent(bus, topic: str = "mt", n: int = 9) -> dict[tuple[int, int], bytes]:
    bus.mgr.create(topic, CFG)
    prod = Producer(topic)
    return {prod.send_keyed(bus.mgr, b"k%d" % i, b"v%d" % i): b"v%d" % i for i in range(n)}


def _check_where(got: list, topic: str, sent: dict[tuple[int, int], bytes]) -> None:
    assert len(got) == len(sent)
    for p, m in got:
        assert (m.topic, m.partition) == (topic, p)
        assert sent[(m.partition, m.offset)] == bytes(m.value)


# ---- topic and partition --------------------------------------------------------------

def test_polled_messages_should_carry_their_topic_and_partition(bus):
    sent = _sent(bus)
    assert len({p for p, _ in sent}) > 1            # spread over partitions
    c = Consumer("mt", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    got = _poll_all(lambda: c.poll(bus.mgr, 100, timeout=1.0), len(sent))
    _check_where(got, "mt", sent)
    m = got[0][1]
    assert pickle.loads(pickle.dumps(m)) == m and pickle.loads(pickle.dumps(m)).topic == "mt"
    assert m._asdict()["topic"] == "mt" and "topic='mt'" in repr(m)


def test_a_bound_consumer_and_a_blocking_poll_should_give_messages_their_topic_and_partition(bus):
    sent = _sent(bus)
    c = bus.mgr.consumer("mt", group="g", partitions=[2, 0])
    c.seek(SeekPolicy.Earliest)
    want = {k: v for k, v in sent.items() if k[0] in (0, 2)}
    got = _poll_all(lambda: c.poll(100, timeout=0.5), len(want))
    _check_where(got, "mt", want)


def test_a_batch_should_hand_out_messages_with_their_topic_and_partition(bus):
    sent = _sent(bus)
    c = Consumer("mt", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    got = _poll_all(lambda: list(c.poll_batch(bus.mgr, 100, timeout=1.0)), len(sent))
    _check_where(got, "mt", sent)


def test_a_subscriber_should_hand_out_messages_with_their_topic_and_partition(bus):
    sent = _sent(bus)
    sub = bus.mgr.subscribe("mt", group="g-sub", session_timeout=5.0)
    try:
        got = _poll_all(lambda: sub.poll(100, timeout=0.5), len(sent), 20.0)
    finally:
        sub.close()
    _check_where(got, "mt", sent)


def test_read_committed_messages_should_carry_their_topic_and_partition(bus):
    bus.mgr.create("mt", CFG)
    prod = Producer("mt", transactional_id="mt-tx")
    if not bus.caps.transactions:
        with pytest.raises(Unsupported):
            prod.begin(bus.mgr)
        return
    with prod.begin(bus.mgr) as tx:
        where = {tx.send_keyed(b"k%d" % i, b"v%d" % i): b"v%d" % i for i in range(6)}
    c = Consumer("mt", "g", isolation="read_committed")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    got = _poll_all(lambda: c.poll(bus.mgr, 100, timeout=0.5), len(where))
    _check_where(got, "mt", where)


def test_peeked_messages_should_carry_their_topic_and_partition(bus):
    sent = _sent(bus)
    c = Consumer("mt", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    if not bus.caps.peeks:
        with pytest.raises(Unsupported, match="peek"):
            c.peek(bus.mgr, 100)
        return
    for n in (2, 100):              # a small peek builds its messages at once, a larger one when asked
        c.seek(bus.mgr, SeekPolicy.Earliest)
        with c.peek(bus.mgr, n) as pk:
            got = [(m.partition, m.topic, m.offset, bytes(m.value)) for m in pk]
        assert len(got) == min(n, len(sent))
        assert all(t == "mt" and sent[(p, off)] == v for p, t, off, v in got)


def test_dead_letters_should_carry_the_dead_letter_topic_and_partition(bus):
    bus.mgr.create("src", CFG)
    bus.mgr.create("src-dlq", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=256))
    p, off = Producer("src").send_keyed(bus.mgr, b"k", b"poison")
    dlq = DlqRouter("src", "src-dlq", 1)
    assert dlq.nack(p, off) is True
    where = dlq.route_to_dlq(bus.mgr, p, off, b"poison")
    c = Consumer("src-dlq", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    got = _poll_all(lambda: c.poll(bus.mgr, 10, timeout=0.5), 1)
    [(q, m)] = got
    assert (m.topic, m.partition, m.offset) == ("src-dlq", q, where[1]) and q == where[0]
    assert m.value == b"poison"


def test_share_records_should_carry_their_topic_and_partition(bus):
    sent = _sent(bus, "jobs")
    if not bus.caps.share_groups:
        with pytest.raises(Unsupported):
            bus.mgr.share_consumer("jobs", group="g")
        return
    sc = bus.mgr.share_consumer("jobs", group="g", lock_secs=5.0)
    try:
        got = _poll_all(lambda: sc.poll(100, timeout=0.5), len(sent))
        assert sorted((r.partition, r.offset) for r in got) == sorted(sent)
        assert {r.topic for r in got} == {"jobs"}
        assert sc.ack(got) == len(got)
    finally:
        sc.close()


# ---- serializers -----------------------------------------------------------------------

def test_serializers_should_round_trip_keys_and_values(bus):
    bus.mgr.create("ser", CFG)
    prod = bus.mgr.producer("ser", key_serializer=str.encode, value_serializer=to_json)
    where = [prod.send_keyed("user-1", {"n": 1}, headers={"h": b"x"}), prod.send({"n": 2})]
    parts, offs = prod.send_batch([{"n": 3}, {"n": 4}], ["user-3", "user-4"])
    where += list(zip(parts.tolist(), offs.tolist()))
    # the key went through the serializer: it lands where its bytes hash
    assert where[0][0] == Producer("ser").send_keyed(bus.mgr, b"user-1", b"{}")[0]

    c = bus.mgr.consumer("ser", group="g", key_deserializer=bytes.decode, value_deserializer=json.loads)
    c.seek(SeekPolicy.Earliest)
    got = _poll_all(lambda: c.poll(100, timeout=0.5), 5)
    by_where = {(p, m.offset): m for p, m in got}
    assert [(by_where[w].key, by_where[w].value) for w in where] == \
        [("user-1", {"n": 1}), (None, {"n": 2}), ("user-3", {"n": 3}), ("user-4", {"n": 4})]
    assert by_where[where[0]].headers == (("h", b"x"),) and by_where[where[0]].topic == "ser"

    plain = Consumer("ser", "g2")           # no deserializer: the bytes as sent
    plain.seek(bus.mgr, SeekPolicy.Earliest)
    raw = {(p, m.offset): m for p, m in _poll_all(lambda: plain.poll(bus.mgr, 100, timeout=0.5), 5)}
    assert (raw[where[0]].key, raw[where[0]].value) == (b"user-1", b'{"n": 1}')


def test_a_subscriber_should_take_deserializers(bus):
    bus.mgr.create("ser", CFG)
    Producer("ser", value_serializer=to_json).send(bus.mgr, [1, 2])
    sub = bus.mgr.subscribe("ser", group="g-sub", session_timeout=5.0, value_deserializer=json.loads)
    try:
        got = _poll_all(lambda: sub.poll(10, timeout=0.5), 1, 20.0)
    finally:
        sub.close()
    assert [m.value for _, m in got] == [[1, 2]]


def test_serializers_should_not_be_applied_when_not_given(bus):
    bus.mgr.create("ser", CFG)
    prod = Producer("ser", Partitioner.RoundRobin, key_serializer=None, value_serializer=None)
    with pytest.raises(InvalidType):
        prod.send(bus.mgr, {"n": 1})            # an object is not bytes without a serializer
    prod.send(bus.mgr, b'{"n": 1}')
    c = Consumer("ser", "g", key_deserializer=None, value_deserializer=None)
    c.seek(bus.mgr, SeekPolicy.Earliest)
    [(_, m)] = _poll_all(lambda: c.poll(bus.mgr, 10, timeout=0.5), 1)
    assert m.value == b'{"n": 1}' and type(m.value) is bytes
    assert len(c.poll_batch(bus.mgr, 10)) == 0      # raw reads stay open to it


def _nothing_sent(bus, topic: str) -> None:
    c = Consumer(topic, "check")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    assert c.poll(bus.mgr, 10, timeout=0.3) == []


def test_a_serializer_that_raises_should_send_nothing(bus):
    bus.mgr.create("ser", CFG)
    prod = bus.mgr.producer("ser", value_serializer=to_json)
    with pytest.raises(TypeError, match="not JSON serializable"):
        prod.send(object())
    with pytest.raises(TypeError, match="not JSON serializable"):
        prod.send_batch([{"n": 1}, object()])       # all serialized before any is sent
    keyed = Producer("ser", key_serializer=lambda k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        keyed.send_keyed(bus.mgr, "k", b"v")
    _nothing_sent(bus, "ser")


def test_a_serializer_that_returns_no_bytes_should_be_named(bus):
    bus.mgr.create("ser", CFG)
    with pytest.raises(InvalidArgument, match="value_serializer .* returned str"):
        Producer("ser", value_serializer=json.dumps).send(bus.mgr, {"n": 1})
    with pytest.raises(InvalidArgument, match="key_serializer .* returned int"):
        bus.mgr.producer("ser", key_serializer=len).send_keyed("abc", b"v")
    with pytest.raises(InvalidType, match="value_serializer must be callable"):
        Producer("ser", value_serializer="json")
    with pytest.raises(InvalidType, match="key_deserializer must be callable"):
        bus.mgr.consumer("ser", key_deserializer=b"x")
    _nothing_sent(bus, "ser")


def test_a_deserializer_that_raises_should_raise_from_poll_and_skip_nothing(bus):
    bus.mgr.create("des", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=256))
    prod = Producer("des")
    for v in (b"1", b"2", b"oops", b"4"):
        prod.send(bus.mgr, v)
    c = bus.mgr.consumer("des", group="g", value_deserializer=json.loads)
    c.seek(SeekPolicy.Earliest)
    first = _poll_all(lambda: c.poll(10, timeout=0.5), 2)
    assert [m.value for _, m in first] == [1, 2]        # those before the bad one come first
    assert c.position(0) == 2
    for _ in range(2):                                  # the bad one is not skipped: it fails again
        with pytest.raises(json.JSONDecodeError) as err:
            c.poll(10, timeout=0.5)
        assert "value_deserializer failed on topic 'des' partition 0 offset 2" in " ".join(err.value.__notes__)
        assert c.position(0) == 2
    c.seek_partition(0, 3)                              # past it, on purpose
    assert [m.value for _, m in _poll_all(lambda: c.poll(10, timeout=0.5), 1)] == [4]


def test_raw_reads_should_be_refused_to_a_consumer_with_a_deserializer(bus):
    bus.mgr.create("des", CFG)
    c = bus.mgr.consumer("des", group="g", value_deserializer=json.loads)
    with pytest.raises(Unsupported, match="deserializer"):
        c.poll_batch(10)
    with pytest.raises(Unsupported):
        c.peek(10)


def test_a_gating_consumer_whose_deserializer_fails_should_hold_producers_before_that_message(bus):
    cfg = TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=256, on_full="raise")
    if not bus.caps.gating:
        with pytest.raises(Unsupported, match="on_full"):
            bus.mgr.create("gdes", cfg)
        return
    bus.mgr.create("gdes", cfg)
    c = Consumer("gdes", "g", gating=True, value_deserializer=json.loads)
    c.seek(bus.mgr, SeekPolicy.Earliest)
    prod = Producer("gdes")
    for v in (b"1", b"2", b"oops", b"4"):
        prod.send(bus.mgr, v)
    assert [m.value for _, m in c.poll(bus.mgr, 10)] == [1, 2]
    with pytest.raises(json.JSONDecodeError):
        c.poll(bus.mgr, 10)
    sent = 0
    with pytest.raises(BufferFull):
        while sent < 20:
            prod.send(bus.mgr, b"5")
            sent += 1
    assert sent == 6        # the gate sits at offset 2, the message that failed: 2 + 8 slots - 4 written
    c.seek_partition(bus.mgr, 0, 3)
    assert [m.value for _, m in c.poll(bus.mgr, 10)][:2] == [4, 5] and c.lost() == {}
