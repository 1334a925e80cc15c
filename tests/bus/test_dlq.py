"""Dead-letter routing: nack counting, retry by rewinding, routing with source
headers, the DLQ as an overflowing ring, and counts shared through the fabric."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.bus_helpers import make_mgr, read_all, snapshot
from grafos.errors import InvalidArgument, InvalidType, MessageTooLarge, NotFound
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.dlq import DlqRouter
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager


@pytest.fixture(params=["object", "inproc-fabric", "named-fabric", "jetstream"])
def bus(request, shm_name):
    """(mgr, make_router): routers keep counts in the object, in the fabric or on the
    JetStream server; for the named bus and JetStream each router gets its own
    attachment or connection, as another process would."""
    kind = request.param
    mgr = make_mgr({"named-fabric": "named", "jetstream": "jetstream"}.get(kind, "inproc"), shm_name, request)
    mgr.create("events", TopicConfig(num_partitions=2, partition_capacity=256, partition_stride=256))
    mgr.create("events-dlq", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=256))
    mgrs = [mgr]
    shared = DlqRouter("events", "events-dlq", 3)

    def make_router(max_retries: int = 3) -> DlqRouter:
        if kind == "object":
            return shared if max_retries == 3 else DlqRouter("events", "events-dlq", max_retries)
        m = mgr
        if kind == "named-fabric":
            m = TopicManager.open(shm_name)
            mgrs.append(m)
        if kind == "jetstream":
            m = TopicManager.connect(request.getfixturevalue("nats_url"))
            mgrs.append(m)
        return DlqRouter("events", "events-dlq", max_retries, mgr=m)

    yield mgr, make_router
    for m in reversed(mgrs):
        m.close()


@settings(max_examples=20, deadline=None)
@given(max_retries=st.integers(1, 12))
def test_should_say_route_exactly_at_max_retries(max_retries):
    dlq = DlqRouter("events", "events-dlq", max_retries)
    answers = [dlq.nack(1, 7) for _ in range(max_retries)]
    assert answers == [False] * (max_retries - 1) + [True]
    assert dlq.nack_counts() == {(1, 7): max_retries}
    assert dlq.nack(0, 7) is (max_retries == 1)         # counted per message


def test_should_count_ack_and_forget(bus):
    _, make = bus
    dlq = make()
    dlq.nack(0, 5)
    dlq.nack(0, 5)
    dlq.nack(1, 5)
    assert dlq.nack_counts() == {(0, 5): 2, (1, 5): 1}
    assert dlq.failures(0, 5) == 2
    assert dlq.ack(0, 5) is True
    assert dlq.ack(0, 5) is False
    assert dlq.nack_counts() == {(1, 5): 1}


def test_should_share_counts_between_routers_in_the_fabric(bus):
    """A worker that takes over a partition knows how often a message failed."""
    _, make = bus
    first, second = make(), make()
    if first.mgr is None:
        assert first is second      # the in-object backend is shared by sharing the object
    assert first.nack(1, 3) is False
    assert second.nack(1, 3) is False
    assert first.nack(1, 3) is True
    assert second.nack_counts() == {(1, 3): 3}


def test_should_route_with_source_headers_and_forget_the_count(bus):
    mgr, make = bus
    dlq = make()
    for _ in range(3):
        dlq.nack(1, 42)
    where = dlq.route_to_dlq(mgr, 1, 42, b"poison", key=b"user-9", headers=[("trace", b"abc")])
    assert dlq.nack_counts() == {}
    [(p, msg)] = read_all(mgr, "events-dlq")
    assert (p, msg.offset) == where
    assert (msg.key, msg.value) == (b"user-9", b"poison")
    assert dict(msg.headers) == {"x-source-topic": b"events", "x-source-partition": b"1",
                                 "x-source-offset": b"42", "x-failures": b"3", "trace": b"abc"}


def test_should_redeliver_until_the_limit_then_never_again(bus):
    """Poison fails max_retries times (redelivered after each failure by rewinding),
    then goes to the DLQ and is not delivered again; everything else is processed
    exactly once and in order within its partition."""
    mgr, make = bus
    dlq = make()
    prod = Producer("events")
    poison = set()
    for i in range(60):
        value = b"poison-%d" % i if i % 17 == 5 else b"ok-%d" % i
        p, off = prod.send_keyed(mgr, b"k%d" % (i % 5), value)
        if value.startswith(b"poison"):
            poison.add((p, off))
    store = MemOffsetStore()
    consumer = Consumer("events", "workers")
    consumer.seek(mgr, store, SeekPolicy.Committed)
    attempts: dict[tuple[int, int], int] = {}
    done: list[tuple[int, int]] = []

    def handler(p, msg):
        attempts[(p, msg.offset)] = attempts.get((p, msg.offset), 0) + 1
        if msg.value.startswith(b"poison"):
            raise ValueError("bad message")
        done.append((p, msg.offset))

    for _ in range(100):
        got = consumer.poll(mgr, 7)
        if not got:
            break
        dlq.process(mgr, consumer, got, handler)
        consumer.commit(store)
    assert all(attempts[k] == 3 for k in poison)
    assert len(done) == len(set(done)) == 60 - len(poison)
    for part in (0, 1):
        offs = [o for p, o in done if p == part]
        assert offs == sorted(offs)
    dead = read_all(mgr, "events-dlq")
    assert {(int(dict(m.headers)["x-source-partition"]), int(dict(m.headers)["x-source-offset"]))
            for _, m in dead} == poison
    assert dlq.nack_counts() == {}
    assert consumer.poll(mgr, 100) == []                                 # nothing comes again
    assert {p: store.committed("workers", "events", p) for p in (0, 1)} == \
        {p: i.latest for p, i in enumerate(mgr.describe("events").partitions)}


def test_should_rewind_the_consumer_below_the_limit(bus):
    mgr, make = bus
    dlq = make()
    prod = Producer("events")
    for i in range(5):
        prod.send_keyed(mgr, b"same-key", b"m%d" % i)
    consumer = Consumer("events", "w")
    consumer.seek(mgr, None, SeekPolicy.Earliest)
    got = consumer.poll(mgr, 10)
    p, first = got[0]
    assert dlq.failed(mgr, consumer, p, first) is False
    assert consumer.position(p) == first.offset
    again = consumer.poll(mgr, 10)
    assert [m.offset for _, m in again] == [m.offset for _, m in got]


def test_should_drop_the_oldest_dead_letters_when_the_dlq_overflows(bus):
    mgr, make = bus
    dlq = make(max_retries=1)
    cap = mgr.describe("events-dlq").partitions[0]
    capacity = mgr.topic("events-dlq").config.partition_capacity
    n = capacity + 10
    for off in range(n):
        assert dlq.nack(0, off)
        dlq.route_to_dlq(mgr, 0, off, b"dead-%d" % off)
    d = mgr.describe("events-dlq")
    assert cap.lost == 0
    assert d.lost == n - capacity == 10
    assert d.partitions[0].earliest == 10 and d.partitions[0].latest == n
    dead = read_all(mgr, "events-dlq")
    assert [m.value for _, m in dead] == [b"dead-%d" % i for i in range(10, n)]   # the newest stay


def test_should_prune_counts_of_overwritten_messages(bus):
    mgr, make = bus
    dlq = make()
    prod = Producer("events")
    capacity = mgr.topic("events").config.partition_capacity
    for i in range(capacity + 5):
        prod.send_keyed(mgr, b"k", b"v")
    p = prod.send_keyed(mgr, b"k", b"v")[0]
    dlq.nack(p, 0)                     # overwritten by now
    dlq.nack(p, capacity + 2)          # still in the ring
    assert dlq.prune(mgr) == 1
    assert dlq.nack_counts() == {(p, capacity + 2): 1}


def test_should_refuse_bad_input_and_change_nothing(bus):
    mgr, make = bus
    dlq = make()
    store = MemOffsetStore()
    dlq.nack(0, 1)
    big = b"x" * (64 * 256)     # larger than the whole DLQ ring
    before = (snapshot(mgr, store), dlq.nack_counts())
    bad = [
        (InvalidType, lambda: dlq.nack("0", 1)),
        (InvalidType, lambda: dlq.nack(0, 1.5)),
        (InvalidArgument, lambda: dlq.nack(-1, 1)),
        (InvalidArgument, lambda: dlq.ack(0, -3)),
        (InvalidType, lambda: dlq.route_to_dlq(mgr, 0, 1, "text")),
        (InvalidType, lambda: dlq.route_to_dlq(mgr, 0, 1, b"v", key=5)),
        (InvalidArgument, lambda: dlq.route_to_dlq(mgr, 9, 1, b"v")),          # no partition 9
        (MessageTooLarge, lambda: dlq.route_to_dlq(mgr, 0, 1, big)),
        (NotFound, lambda: DlqRouter("events", "no-such-dlq", 3).route_to_dlq(mgr, 0, 1, b"v")),
        (InvalidArgument, lambda: DlqRouter("events", "events", 3)),
        (InvalidArgument, lambda: DlqRouter("events", "events-dlq", 0)),
        (InvalidType, lambda: DlqRouter("events", "events-dlq", "3")),
        (InvalidArgument, lambda: DlqRouter("events", "bad/name", 3)),
        (InvalidType, lambda: DlqRouter("events", "events-dlq", 3, mgr="bus")),
    ]
    for exc, call in bad:
        with pytest.raises(exc):
            call()
    assert (snapshot(mgr, store), dlq.nack_counts()) == before
