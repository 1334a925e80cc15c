"""Topics, producers and consumers together: keyed order and Kafka's key ->
partition mapping, round robin, headers, fan-out to independent groups,
producers in several threads, blocking polls, observability, and bad input
that must raise a clear error and change nothing."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.bus_helpers import make_mgr, read_all, snapshot
from grafos.errors import (AlreadyExists, GrafosError, InvalidArgument, InvalidType, MessageTooLarge,
                           NotFound)
from grafos.mq.consumer import Consumer, Message, SeekPolicy
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager


@pytest.fixture(params=["inproc", "named", "jetstream"])
def mgr(request, shm_name):
    m = make_mgr(request.param, shm_name, request)
    m.create("events", TopicConfig(num_partitions=4, partition_capacity=4096, partition_stride=256))
    yield m
    m.close()


@pytest.fixture(params=["inproc", "named"])
def shm_mgr(request, shm_name):
    """The shared-memory backends only: for behaviour of the rings themselves."""
    m = make_mgr(request.param, shm_name, request)
    m.create("events", TopicConfig(num_partitions=4, partition_capacity=4096, partition_stride=256))
    yield m
    m.close()


@pytest.fixture(scope="module")
def shared_mgr():
    """One in-process bus for the property tests (hypothesis reruns the body)."""
    m = TopicManager(size=64 << 20)
    yield m
    m.close()


# ---- keys and order -----------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.binary(min_size=0, max_size=24), min_size=1, max_size=30),
       partitions=st.integers(1, 16))
def test_should_put_every_key_where_kafka_would(shared_mgr, keys, partitions):
    name = f"keys-{partitions}"
    if not shared_mgr.exists(name):
        shared_mgr.create(name, TopicConfig(num_partitions=partitions, partition_capacity=64,
                                            partition_stride=128))
    prod = Producer(name).with_partitioner(Partitioner.KeyHash)
    again = Producer(name, Partitioner.KEY_HASH)          # another producer, the PEP 8 spelling
    for key in keys:
        p, _ = prod.send_keyed(shared_mgr, key, b"v")
        assert p == kafka_partition(key, partitions)
        assert again.send_keyed(shared_mgr, key, b"v")[0] == p


def test_should_keep_keyed_messages_in_order_within_a_partition(mgr):
    prod = Producer("events").with_partitioner(Partitioner.KeyHash)
    keys = [b"user-%d" % i for i in range(25)]
    for seq in range(40):
        for key in keys:
            prod.send_keyed(mgr, key, key + b":%d" % seq)
    consumer = Consumer("events", "g")
    consumer.seek(mgr, MemOffsetStore(), SeekPolicy.Committed)
    per_key: dict[bytes, list[int]] = {}
    where: dict[bytes, set[int]] = {}
    last_offset: dict[int, int] = {}
    while got := consumer.poll(mgr, 333):
        for p, msg in got:
            assert isinstance(msg, Message)
            assert msg.offset > last_offset.get(p, -1)          # offsets rise within a partition
            last_offset[p] = msg.offset
            per_key.setdefault(msg.key, []).append(int(msg.value.split(b":")[1]))
            where.setdefault(msg.key, set()).add(p)
    assert per_key == {k: list(range(40)) for k in keys}
    assert where == {k: {kafka_partition(k, 4)} for k in keys}


def test_should_spread_round_robin_evenly(mgr):
    prod = Producer("events", Partitioner.RoundRobin)
    for i in range(40):
        prod.send_keyed(mgr, b"same-key", b"%d" % i)    # RoundRobin ignores keys
    assert [p.latest for p in mgr.describe("events").partitions] == [10, 10, 10, 10]


def test_should_carry_headers_key_value_and_timestamp(mgr):
    prod = Producer("events")
    t = time.time_ns()
    p, off = prod.send_keyed(mgr, b"k", b"value", [("trace-id", b"abc"), ("empty", b"")])
    c = Consumer("events", "g")
    c.assign([p])
    c.seek_partition(mgr, p, off)
    [(pp, msg)] = c.poll(mgr, 10)
    assert (pp, msg.offset, msg.key, msg.value) == (p, off, b"k", b"value")
    assert msg.headers == (("trace-id", b"abc"), ("empty", b""))
    assert abs(msg.timestamp - t) < 60 * 10**9


# ---- groups of consumers ------------------------------------------------------------------
def test_should_fan_out_to_groups_with_independent_offsets(mgr):
    prod = Producer("events")
    sent = {prod.send_keyed(mgr, b"k%d" % (i % 7), b"v%d" % i) for i in range(300)}
    store = MemOffsetStore()
    billing, audit = Consumer("events", "billing"), Consumer("events", "audit")
    for c in (billing, audit):
        c.seek(mgr, store, SeekPolicy.Committed)
    seen_b = {(p, m.offset) for p, m in billing.poll(mgr, 1000)}
    billing.commit(store)
    seen_a = {(p, m.offset) for p, m in audit.poll(mgr, 120)}
    audit.commit(store)
    assert seen_b == sent and len(seen_a) == 120
    committed = store.items()
    assert sum(v for (g, _, _), v in committed.items() if g == "billing") == 300
    assert sum(v for (g, _, _), v in committed.items() if g == "audit") == 120
    # a fresh consumer of each group resumes from its own group's offsets
    b2, a2 = Consumer("events", "billing"), Consumer("events", "audit")
    b2.seek(mgr, store, SeekPolicy.Committed)
    a2.seek(mgr, store, SeekPolicy.Committed)
    assert b2.poll(mgr, 1000) == []
    rest = {(p, m.offset) for p, m in a2.poll(mgr, 1000)}
    assert rest | seen_a == sent and not (rest & seen_a)


def test_should_seek_latest_and_report_lag_and_counts(mgr):
    prod = Producer("events", Partitioner.RoundRobin)
    for i in range(20):
        prod.send(mgr, b"old")
    c = Consumer("events", "g")
    c.seek(mgr, None, SeekPolicy.Latest)
    assert c.lag(mgr) == {0: 0, 1: 0, 2: 0, 3: 0}
    for i in range(8):
        prod.send(mgr, b"new")
    assert c.lag(mgr) == {0: 2, 1: 2, 2: 2, 3: 2}
    got = c.poll(mgr, 100)
    assert [m.value for _, m in got] == [b"new"] * 8
    assert c.consumed == 8 and mgr.describe("events").produced == 28
    assert c.positions() == {p: 7 for p in range(4)}


# ---- threads ------------------------------------------------------------------------------
def test_should_land_every_message_once_from_producers_in_many_threads(mgr):
    """One Producer shared by 4 threads: every message lands exactly once, and each
    thread's keyed messages keep their order."""
    prod = Producer("events").with_partitioner(Partitioner.KeyHash)
    per_thread = 1500
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                prod.send_keyed(mgr, b"thread-%d-key-%d" % (t, i % 3), b"%d:%d" % (t, i))
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    got = read_all(mgr, "events")
    values = [m.value for _, m in got]
    assert len(values) == len(set(values)) == 4 * per_thread
    per_key: dict[bytes, list[int]] = {}
    for _, m in got:
        per_key.setdefault(m.key, []).append(int(m.value.split(b":")[1]))
    assert all(v == sorted(v) for v in per_key.values())
    assert mgr.describe("events").produced == 4 * per_thread


def test_should_wake_a_blocking_poll_when_a_message_arrives(mgr):
    c = Consumer("events", "g")
    c.seek(mgr, None, SeekPolicy.Latest)
    assert c.poll(mgr, 10, timeout=0.05) == []
    timer = threading.Timer(0.1, lambda: Producer("events").send(mgr, b"wake up"))
    timer.start()
    try:
        got = c.poll(mgr, 10, timeout=10.0)
    finally:
        timer.join()
    assert [m.value for _, m in got] == [b"wake up"]


# ---- bad input ----------------------------------------------------------------------------
def test_should_refuse_bad_input_with_a_clear_error_and_change_nothing(mgr):
    store = MemOffsetStore()
    prod = Producer("events")
    for i in range(10):
        prod.send(mgr, b"m%d" % i)
    c = Consumer("events", "g")
    c.seek(mgr, store, SeekPolicy.Earliest)
    c.poll(mgr, 3)
    c.commit(store)
    room = mgr.topic("events").config.max_message_bytes
    before = snapshot(mgr, store)
    positions = c.positions()
    bad = [
        # unknown topic
        (NotFound, "nope", lambda: Producer("nope").send(mgr, b"x")),
        (NotFound, "nope", lambda: Consumer("nope").poll(mgr, 1)),
        (NotFound, "nope", lambda: mgr.describe("nope")),
        (NotFound, "nope", lambda: mgr.delete("nope")),
        (NotFound, "nope", lambda: mgr.restart("nope")),
        # partition out of range
        (InvalidArgument, "partition", lambda: c.assign([0, 4])),
        (InvalidArgument, "4", lambda: c.seek_partition(mgr, 4, 0)),
        (InvalidArgument, "-1", lambda: c.assign([-1])),
        (InvalidArgument, "beyond", lambda: c.seek_partition(mgr, 0, 10_000)),
        # value too big
        (MessageTooLarge, str(room), lambda: prod.send(mgr, b"x" * (room + 1))),
        (MessageTooLarge, "", lambda: prod.send_keyed(mgr, b"k" * 200, b"v" * (room - 100))),
        # wrong types
        (InvalidType, "value", lambda: prod.send(mgr, "text")),
        (InvalidType, "key", lambda: prod.send_keyed(mgr, 42, b"v")),
        (InvalidType, "mgr", lambda: Producer("events").send("bus", b"v")),
        (InvalidType, "topic", lambda: Producer(7)),
        (InvalidType, "partitioner", lambda: prod.with_partitioner("KeyHash")),
        (InvalidType, "policy", lambda: c.seek(mgr, store, 1.5)),
        (InvalidArgument, "seek policy", lambda: c.seek(mgr, store, "earlist")),
        (InvalidType, "config", lambda: mgr.create("other", {"num_partitions": 2})),
        (InvalidType, "max_messages", lambda: c.poll(mgr, "10")),
        (InvalidType, "header", lambda: prod.send_keyed(mgr, b"k", b"v", [("h", "text")])),
        # negative TTL and other bad configs
        (InvalidArgument, "retention", lambda: TopicConfig(retention_secs=-1)),
        (InvalidArgument, "retention", lambda: TopicConfig(retention_secs=0)),
        (InvalidArgument, "num_partitions", lambda: TopicConfig(num_partitions=0)),
        (InvalidArgument, "topic name", lambda: mgr.create("a/b")),
        (AlreadyExists, "events", lambda: mgr.create("events")),
        # committing beyond the end
        (InvalidArgument, "beyond", lambda: c.commit(store, {0: 999})),
        (InvalidArgument, "not assigned", lambda: c.commit(store, {9: 0})),
    ]
    for exc, words, call in bad:
        with pytest.raises(exc) as ei:
            call()
        assert isinstance(ei.value, GrafosError)
        assert words in str(ei.value), (words, str(ei.value))
    assert snapshot(mgr, store) == before
    assert c.positions() == positions
    assert sorted(m.value for _, m in read_all(mgr, "events")) == sorted(b"m%d" % i for i in range(10))


def test_a_consumer_that_skips_checksums_gets_damaged_bytes_one_that_checks_skips_them(shm_mgr):
    mgr = shm_mgr       # slot checksums belong to the shared-memory rings
    mgr.create("frames", TopicConfig(1, 64, 256, checksum=True))     # not the in-process default
    prod = Producer("frames")
    big = bytes(range(256)) * 8                          # 2 KiB: nine slots
    prod.send(mgr, b"small")
    _, off = prod.send(mgr, big)
    part = mgr.topic("frames").partition(0)
    at = 256 + off * 256 + 40 + 1000                     # a byte inside the multi-slot message
    part.lease.write(at, bytes([part.lease.read(at, 1)[0] ^ 0xFF]))
    checked = Consumer("frames", "a")
    assert [m.value for _, m in checked.poll(mgr, 10)] == [b"small"]
    unchecked = Consumer("frames", "b", check_crcs=False)
    got = [m.value for _, m in unchecked.poll(mgr, 10)]
    assert got[0] == b"small" and len(got[1]) == len(big) and got[1] != big
    assert checked.positions() == unchecked.positions() == {0: off + 9}
