"""Handles bound to a bus (``mgr.producer``, ``mgr.consumer``), the ``grafos.mq``
re-exports and the seek spellings: the short forms do what the long ones do,
and the long ones keep working on bound handles."""
from __future__ import annotations

import subprocess
import sys

import pytest

from grafos.errors import InvalidArgument, InvalidType, NotFound
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager


@pytest.fixture
def mgr():
    m = TopicManager(size=32 << 20)
    m.create("events", TopicConfig(num_partitions=4, partition_capacity=256, partition_stride=256))
    yield m
    m.close()


def test_bound_producer_should_send_without_the_manager(mgr):
    prod = mgr.producer("events")
    assert isinstance(prod, Producer) and prod.partitioner is Partitioner.KeyHash
    p, off = prod.send_keyed(b"user-42", b"v1")
    assert p == kafka_partition(b"user-42", 4) and off == 0
    assert prod.send_keyed(b"user-42", b"v2", headers={"h": b"1"}) == (p, 1)
    rr = mgr.producer("events", partitioner=Partitioner.RoundRobin)
    assert [rr.send(b"x")[0] for _ in range(4)] == [0, 1, 2, 3]
    parts, offs = rr.send_batch([b"a", b"b"])
    assert list(parts) == [0, 1]
    # the manager-first spelling still works on a bound handle
    p3, off3 = prod.send_keyed(mgr, b"user-42", b"v3")
    assert p3 == p and off3 > 1
    assert prod.send(mgr, b"y", headers=None)[1] >= 0
    got = [(part, m.value, m.headers) for part, m in mgr.consumer("events").poll(100)]
    assert (p, b"v2", (("h", b"1"),)) in got and (p, b"v3", ()) in got


def test_bound_consumer_should_poll_seek_and_commit_without_the_manager(mgr):
    prod = mgr.producer("events", Partitioner.RoundRobin)
    for i in range(8):
        prod.send(b"m%d" % i)
    store = MemOffsetStore()
    with mgr.consumer("events", group="processors") as con:
        assert isinstance(con, Consumer) and con.group == "processors"
        con.seek(store, SeekPolicy.Committed)
        assert sorted(m.value for _, m in con.poll(100)) == [b"m%d" % i for i in range(8)]
        assert con.lag() == {0: 0, 1: 0, 2: 0, 3: 0}
        assert con.commit(store) == {0: 2, 1: 2, 2: 2, 3: 2}
        con.seek_partition(1, 0)
        assert [(p, m.offset) for p, m in con.poll(100)] == [(1, 0), (1, 1)]
        con.seek(SeekPolicy.Earliest)                     # no store placeholder
        assert len(con.poll_batch(100)) == 8
        con.seek(mgr, 2, 1)                               # the manager-first forms still work
        assert [(p, m.offset) for p, m in con.poll(mgr, 100, timeout=0.0)] == [(2, 1)]
    assert store.committed("processors", "events", 3) == 2


def test_bound_consumer_should_read_only_the_partitions_given(mgr):
    prod = mgr.producer("events", Partitioner.RoundRobin)
    for i in range(8):
        prod.send(b"m%d" % i)
    con = mgr.consumer("events", partitions=[3])
    con.seek(SeekPolicy.Earliest)
    assert {p for p, _ in con.poll(100)} == {3}
    with pytest.raises(InvalidArgument, match="partition 0 is not assigned"):
        con.seek_partition(0, 0)


def test_plain_consumer_seek_should_take_a_policy_without_a_store(mgr):
    mgr.producer("events").send_keyed(b"k", b"v")
    c = Consumer("events")
    c.seek(mgr, SeekPolicy.Latest)
    assert c.poll(mgr, 10) == []
    c.seek(mgr, None, SeekPolicy.Earliest)            # the placeholder form keeps working
    assert [m.value for _, m in c.poll(mgr, 10)] == [b"v"]
    with pytest.raises(InvalidType, match="offset store"):
        c.seek(mgr, SeekPolicy.Committed)


def test_bound_handles_should_refuse_bad_input(mgr):
    with pytest.raises(InvalidType, match="partitioner"):
        mgr.producer("events", partitioner="fast")
    with pytest.raises(InvalidArgument):
        mgr.consumer("events", partitions=[1, 1])
    with pytest.raises(NotFound):
        mgr.producer("nope").send(b"x")
    with pytest.raises(InvalidType):
        mgr.producer("events").send("not bytes")


def test_grafos_mq_should_export_the_bus_classes_without_cycles():
    # a fresh interpreter: the package import alone must succeed and expose every class
    code = ("from grafos.mq import (TopicManager, TopicConfig, Producer, Consumer, ConsumerGroup, "
            "DlqRouter, SeekPolicy, Partitioner, Message, MemOffsetStore, SqliteOffsetStore, "
            "FabricOffsetStore, BoundProducer, BoundConsumer)\n"
            "import grafos.mq.topic as t, grafos.mq.dlq as d\n"
            "assert TopicManager is t.TopicManager and DlqRouter is d.DlqRouter\n"
            "import grafos.mq as mq\n"
            "assert all(hasattr(mq, n) for n in mq.__all__)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_enum_aliases_should_be_the_same_members():
    assert Partitioner.KEY_HASH is Partitioner.KeyHash and Partitioner.ROUND_ROBIN is Partitioner.RoundRobin
    assert SeekPolicy.COMMITTED is SeekPolicy.Committed and SeekPolicy.LATEST is SeekPolicy.Latest
    # one name per member when listed
    assert [m.name for m in Partitioner] == ["KeyHash", "RoundRobin"]
    assert [m.name for m in SeekPolicy] == ["Committed", "Earliest", "Latest"]
