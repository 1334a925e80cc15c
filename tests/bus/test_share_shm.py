"""Share groups on the shared-memory bus: the gate a group holds on block/raise
topics, records an overwriting ring laps, retention (the partition's lease),
the group's state seen from outside (describe, metrics, the CLI) and
damaged state in the fabric."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from grafos.errors import BufferFull, CorruptFabric, LockLost
from grafos.mq import Producer, TopicConfig, TopicManager, share

T = 1_000_000.0     # an injected clock, in seconds


@pytest.fixture
def mgr():
    m = TopicManager(size=32 << 20)
    yield m
    m.close()


def test_group_holds_the_gate_of_a_raise_topic_at_its_lowest_unfinished_record(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=8, on_full="raise"))
    c = mgr.share_consumer("jobs", group="g")
    prod = Producer("jobs")
    for i in range(8):
        prod.send(mgr, b"v%d" % i)
    with pytest.raises(BufferFull):
        prod.send(mgr, b"over")                 # record 0 is not finished
    recs = c.poll(8)
    with pytest.raises(BufferFull):
        prod.send(mgr, b"over")                 # handed out is not finished
    c.ack(recs[1:3])
    with pytest.raises(BufferFull):
        prod.send(mgr, b"over")                 # 0 still holds the floor
    c.ack(recs[0])
    for i in range(3):
        prod.send(mgr, b"w%d" % i)              # the floor is 3 now
    with pytest.raises(BufferFull):
        prod.send(mgr, b"over")
    (g,) = [r for r in mgr.describe("jobs").partitions[0].gating if r.kind == "share"]
    assert (g.reader, g.position, g.live) == ("s:g", 3, True)


def test_overwrite_topic_counts_the_records_a_lap_took_and_refuses_their_acks(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=4))
    c = mgr.share_consumer("jobs", group="g")
    prod = Producer("jobs")
    for i in range(2):
        prod.send(mgr, b"v%d" % i)
    held = c.poll(10)
    for i in range(2, 10):
        prod.send(mgr, b"v%d" % i)
    recs = c.poll(10)
    assert [r.offset for r in recs] == [6, 7, 8, 9]
    (s,) = c.describe()
    assert (s.floor, s.lost) == (6, 6)          # 0-1 held and 2-5 never handed out
    with pytest.raises(LockLost):
        c.ack(held)
    c.ack(recs)
    assert c.describe()[0].floor == 10


def test_state_expires_with_the_partition_and_what_was_unfinished_is_counted(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=16, retention_secs=60))
    prod = Producer("jobs")
    for i in range(5):
        prod.send(mgr, b"v%d" % i)
    c = mgr.share_consumer("jobs", group="g")
    recs = c.poll(3)
    c.ack(recs[1])
    lease = mgr.topic("jobs").partitions[0].lease
    later = lease.expires_at + 1
    mgr.fabric.reap(now=later)
    mgr.restart("jobs", now=later)
    prod.send(mgr, b"fresh")
    got = c.poll(10, now=later)
    assert [(r.offset, r.value, r.delivery_count) for r in got] == [(0, b"fresh", 1)]
    assert c.expired() == 2                     # records 0 and 2 were handed out, not finished
    with pytest.raises(LockLost):
        c.ack(recs[0], now=later)


def test_describe_metrics_and_the_cli_show_each_group_and_partition(shm_name):
    mgr = TopicManager.open(shm_name, size=32 << 20)
    try:
        mgr.create("jobs", TopicConfig(num_partitions=2, partition_capacity=16))
        prod = Producer("jobs")
        for i in range(6):
            prod.send_keyed(mgr, b"k%d" % i, b"v%d" % i)
        c = mgr.share_consumer("jobs", group="g")
        recs = c.poll(4)
        c.ack(recs[:1])
        c.release(recs[1:2])
        states = share.describe(mgr, "jobs", "g", now=time.time() + 5)
        assert sum(s.in_flight for s in states) == 2
        assert sum(s.acked for s in states) == 1 and sum(s.released for s in states) == 1
        assert sum(s.available for s in states) == 3
        assert all(4.9 < s.oldest_lock_age < 6 if s.in_flight else s.oldest_lock_age == 0.0 for s in states)

        from prometheus_client import CollectorRegistry, generate_latest
        from grafos.metrics import BusCollector
        reg = CollectorRegistry()
        reg.register(BusCollector(mgr))
        text = generate_latest(reg).decode()
        assert 'grafos_share_in_flight{group="g",partition="0",topic="jobs"}' in text
        assert "grafos_share_acked_total" in text

        from grafos.cli import main
        out = CliRunner().invoke(main, ["describe", shm_name, "jobs", "--json"])
        assert out.exit_code == 0, out.output
        rows = json.loads(out.output)["share_groups"]["g"]
        assert sum(r["in_flight"] for r in rows) == 2
        text = CliRunner().invoke(main, ["describe", shm_name, "jobs"]).output
        assert "share group g on jobs" in text
    finally:
        mgr.close()


def test_damaged_share_state_is_refused_not_trusted(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=8))
    c = mgr.share_consumer("jobs", group="g")
    region = c._parts[0].region
    region.write(64, (1 << 60).to_bytes(8, "little"))      # the floor, far out of range
    with pytest.raises(CorruptFabric, match="window"):
        c.poll(1)
    region.write(0, b"\0" * 8)                              # the magic
    with pytest.raises(CorruptFabric):
        mgr.share_consumer("jobs", group="g")


def test_a_poll_batch_changed_after_the_poll_settles_what_it_holds_now(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=2, partition_capacity=16))
    prod = Producer("jobs")
    for i in range(6):
        prod.send_keyed(mgr, b"k%d" % i, b"v%d" % i)
    c = mgr.share_consumer("jobs", group="g")
    batch = c.poll(6)
    first = batch.pop(0)
    assert c.ack(batch) == 5                    # the five left, not the one taken out
    assert c.held() == [(first.partition, first.offset)]
    again = c.poll(6)
    assert again == []
    c.release([first])
    (r,) = c.poll(6)
    assert (r.partition, r.offset, r.delivery_count) == (first.partition, first.offset, 2)


def test_a_topic_restarted_by_another_process_is_followed(shm_name):
    mgr = TopicManager.open(shm_name, size=32 << 20)
    other = TopicManager.open(shm_name)
    try:
        mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=16, retention_secs=60))
        Producer("jobs").send(mgr, b"old")
        c = mgr.share_consumer("jobs", group="g")
        assert [r.value for r in c.poll(10)] == [b"old"]
        later = mgr.topic("jobs").partitions[0].lease.expires_at + 1
        other.restart("jobs", now=later)
        Producer("jobs").send(other, b"new")
        got = []
        for _ in range(5):
            got += c.poll(10, now=later)
            if got:
                break
            time.sleep(0.06)
        assert [(r.offset, r.value) for r in got] == [(0, b"new")]
        assert c.expired() == 1
    finally:
        other.close()
        mgr.close()


def test_a_producer_blocked_by_the_group_goes_on_once_the_floor_moves(mgr):
    import threading
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=4, on_full="block"))
    c = mgr.share_consumer("jobs", group="g")
    prod = Producer("jobs")
    for i in range(4):
        prod.send(mgr, b"v%d" % i)
    done = threading.Event()
    t = threading.Thread(target=lambda: (prod.send(mgr, b"late", timeout=10), done.set()))
    t.start()
    assert not done.wait(0.3)                   # record 0 holds the floor
    recs = c.poll(4)
    c.ack(recs[0])
    assert done.wait(5)
    t.join(5)
    assert [r.value for r in c.poll(4)] == [b"late"]


def test_a_polled_batch_acked_after_some_locks_ran_out_applies_the_rest_and_names_the_lost(mgr):
    mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=16))
    prod = Producer("jobs")
    for i in range(3):
        prod.send(mgr, b"v%d" % i)
    a = mgr.share_consumer("jobs", group="g", lock_secs=30.0)
    b = mgr.share_consumer("jobs", group="g", lock_secs=30.0)
    batch = a.poll(3, now=T)
    assert a.renew(batch[0], now=T + 20) == 1       # its lock runs to T + 50, the others' to T + 30
    assert [r.offset for r in b.poll(3, now=T + 31)] == [1, 2]
    with pytest.raises(LockLost) as e:
        a.ack(batch, now=T + 32)
    assert [(r.partition, r.offset) for r in e.value.records] == [(0, 1), (0, 2)]
    assert a.held() == []
    assert [r.offset for r in b.poll(3, now=T + 33)] == []      # the first is acked, not available
