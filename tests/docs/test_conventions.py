"""Python's conventions on the bus's objects: reprs that say what a handle is,
errors that name what was wrong (a closed bus, a topic too large for it)."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from grafos.errors import Closed, FabricFull
from grafos.leasekit import RenewalManager
from grafos.mq.consumer import Consumer
from grafos.mq.dlq import ProcessResult
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager


def test_reprs_should_say_what_each_handle_is(shm_name):
    mgr = TopicManager.open(shm_name, size=8 << 20)
    mgr.create("events", TopicConfig(2, 64, 256))
    store = MemOffsetStore()
    store.commit("g", "events", 0, 3)
    c = Consumer("events", "workers")
    c.assign([1])
    assert repr(mgr) == f"<TopicManager named {shm_name!r}>"
    assert repr(store) == "<MemOffsetStore: 1 committed partition(s)>"
    assert repr(FabricOffsetStore(mgr)) == f"<FabricOffsetStore on named bus {shm_name!r}>"
    assert repr(c) == "<Consumer 'events' group 'workers', partitions [1]>"
    assert repr(Consumer("events")) == "<Consumer 'events' group 'default', all partitions>"
    assert repr(Producer("events")) == "<Producer 'events' (KeyHash)>"
    assert repr(Producer("events", transactional_id="tx")) == "<Producer 'events' (KeyHash) transactional 'tx'>"
    assert repr(RenewalManager(mgr, topic="events")) == "<RenewalManager on topic 'events': 0 registration(s)>"
    assert repr(TopicManager()) == "<TopicManager in-process>"
    mgr.close()
    assert repr(mgr) == f"<TopicManager named {shm_name!r} closed>"
    assert str(ProcessResult(2, 1, 0, 7)) == "processed 2, retried 1, dead 0, deferred 7"


def test_the_demo_prints_no_raw_object():
    from grafos.demo import run
    out = io.StringIO()
    run(Console(file=out, width=200))
    text = out.getvalue()
    assert "first poll: processed" in text
    assert "ProcessResult(" not in text and " object at 0x" not in text


def test_a_closed_manager_names_the_bus_in_a_grafos_error(shm_name):
    mgr = TopicManager.open(shm_name, size=8 << 20)
    mgr.create("events", TopicConfig(1, 16, 256))
    mgr.close()
    for use in (mgr.topics, lambda: mgr.describe("events"), lambda: Producer("events").send(mgr, b"x")):
        with pytest.raises(Closed, match=f"named bus {shm_name!r} is closed"):
            use()
    with pytest.raises(ValueError):
        mgr.topics()


def test_a_closed_jetstream_bus_raises_closed(nats_url):
    mgr = TopicManager.connect(nats_url)
    mgr.create("events", TopicConfig(1, 16, 256))
    mgr.close()
    for use in (mgr.topics, lambda: Producer("events").send(mgr, b"x")):
        with pytest.raises(Closed, match="the JetStream bus is closed"):
            use()


def test_a_topic_larger_than_the_bus_names_the_topic_its_size_and_the_room():
    mgr = TopicManager(size=16 << 20)
    mgr.create("small", TopicConfig(1, 64, 256))
    room = mgr.fabric.info().data_size - mgr.fabric.info().bytes_leased
    for cfg in (TopicConfig(64, 1 << 16, 1024), TopicConfig(2, 1 << 14, 1024)):
        with pytest.raises(FabricFull) as e:
            mgr.create("huge", cfg)
        msg = str(e.value)
        assert "topic 'huge': it needs" in msg and f"{cfg.num_partitions} partition(s)" in msg
        assert f"{cfg.partition_capacity} slots x {cfg.partition_stride} B" in msg
        assert f"the bus has {room} bytes free" in msg
    assert mgr.topics() == ["small"]          # nothing left behind
    mgr.create("fits", TopicConfig(1, 64, 256))


def test_describe_counts_as_lost_on_a_gated_topic_only_what_no_reader_read():
    import time

    from grafos.mq.consumer import SeekPolicy
    from grafos.mq.group import ConsumerGroup

    mgr = TopicManager(size=8 << 20)
    mgr.create("t", TopicConfig(1, 8, 128, 3600.0, on_full="block"))
    group = ConsumerGroup("g", "t", 1, 30.0, mgr=mgr)
    group.claim("w")
    store = FabricOffsetStore(mgr)
    c = group.consumer("w")
    c.assign([0])
    c.seek(mgr, store, SeekPolicy.Committed)
    prod = Producer("t")
    for _ in range(5):             # 20 messages through a ring of 8, each read and committed
        for _ in range(4):
            prod.send(mgr, b"m", timeout=1.0)
        assert len(c.poll(mgr, 10)) == 4
        c.commit(store)
    p = mgr.describe("t").partitions[0]
    assert (p.earliest, p.latest, p.lost) == (12, 20, 0)
    # the member goes stale: its gate is released and the ring overwrites 8 it never read
    group.heartbeat("w", now=time.time() - 60)
    for _ in range(16):
        prod.send(mgr, b"m", timeout=1.0)
    p = mgr.describe("t").partitions[0]
    assert (p.earliest, p.latest, p.lost) == (28, 36, 8)
    assert mgr.describe("t").lost == 8
