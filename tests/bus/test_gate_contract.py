"""The group's committed offsets are its gate, whoever commits them, and a live
group gates every partition of its topic (shared-memory buses: JetStream does
not gate, see tests/conformance)."""
from __future__ import annotations

import threading
import time

import pytest

from grafos.errors import BufferFull, Unsupported
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore, SqliteOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

MiB = 1 << 20
CAP = 8


def _bus(on_full: str = "raise", partitions: int = 1, capacity: int = CAP) -> TopicManager:
    mgr = TopicManager(size=16 * MiB)
    mgr.create("t", TopicConfig(partitions, capacity, 128, 3600.0, on_full=on_full))
    return mgr


def _send_to(mgr: TopicManager, prod: Producer, partition: int, i: int) -> None:
    from grafos.mq.producer import kafka_partition
    n = mgr.topic("t").n
    key = next(b"k%d" % j for j in range(10_000) if kafka_partition(b"k%d" % j, n) == partition)
    prod.send_keyed(mgr, key, b"%d" % i)


# ---- every commit spelling moves the gate -------------------------------------------------------
def _consumer_store(mgr, g, store_of):
    c = Consumer("t", "g")
    c.assign(g.claim("m"))
    store = store_of(mgr)
    c.seek(mgr, store, SeekPolicy.Committed)
    assert len(c.poll(mgr, 100)) == CAP
    c.commit(store)


def _group_commit(mgr, g, store_of):
    c = Consumer("t", "g")
    c.assign(g.claim("m"))
    c.seek(mgr, store_of(mgr), SeekPolicy.Committed)
    assert len(c.poll(mgr, 100)) == CAP
    g.commit(store_of(mgr), "m", "t", c.positions())


def _bound(mgr, g, store_of):
    g.claim("m")
    c = g.consumer("m")
    store = store_of(mgr)
    c.seek(mgr, store, SeekPolicy.Committed)
    assert len(c.poll(mgr, 100)) == CAP
    c.commit(store)


def _bound_handle(mgr, g, store_of):
    c = mgr.consumer("t", group="g")      # bound to the manager: calls without mgr
    c.assign(g.claim("m"))
    store = store_of(mgr)
    c.seek(store, SeekPolicy.Committed)
    assert len(c.poll(100)) == CAP
    c.commit(store)


def _unpositioned(mgr, g, store_of):
    g.claim("m")
    c = Consumer("t", "g")               # never assigned, never sought: starts at the group's commits
    assert len(c.poll(mgr, 100)) == CAP
    c.commit(store_of(mgr))


def _transaction(mgr, g, store_of):
    mgr.create("out", TopicConfig(1, 64, 128, 3600.0))
    c = Consumer("t", "g")
    c.assign(g.claim("m"))
    store = store_of(mgr)
    c.seek(mgr, store, SeekPolicy.Committed)
    out = Producer("out", transactional_id="txn-gate")
    with out.begin(mgr) as txn:
        for _, msg in c.poll(mgr, 100):
            out.send(mgr, msg.value)
        txn.commit_offsets(c, store)


def _store_direct(mgr, g, store_of):
    g.claim("m")
    store_of(mgr).commit("g", "t", 0, CAP)


SPELLINGS = {"consumer.commit": _consumer_store, "group.commit": _group_commit,
             "group.consumer": _bound, "mgr.consumer": _bound_handle, "unpositioned consumer": _unpositioned,
             "txn.commit_offsets": _transaction, "store.commit": _store_direct}
STORES = {"FabricOffsetStore(mgr)": lambda m: FabricOffsetStore(m),
          "FabricOffsetStore(fabric)": lambda m: FabricOffsetStore(m.fabric)}


@pytest.mark.parametrize("store_of", STORES.values(), ids=list(STORES))
@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=list(SPELLINGS))
def test_every_commit_of_the_group_moves_its_gate(spelling, store_of):
    mgr = _bus("raise")
    g = ConsumerGroup("g", "t", 1, 3600.0, mgr=mgr)
    g.claim("m")
    prod = Producer("t")
    for i in range(CAP):
        prod.send(mgr, b"%d" % i)
    with pytest.raises(BufferFull):
        prod.send(mgr, b"full")              # the group has read nothing
    spelling(mgr, g, store_of)
    assert FabricOffsetStore(mgr).committed("g", "t", 0) == CAP
    for i in range(CAP):                     # the group committed past every message: room for a ring
        prod.send(mgr, b"more %d" % i)
    with pytest.raises(BufferFull):
        prod.send(mgr, b"full again")
    d = mgr.describe("t").partitions[0]
    assert (d.gate, d.gate_held_by) == (2 * CAP, "g:g")


@pytest.mark.parametrize("store_of", STORES.values(), ids=list(STORES))
def test_a_commit_wakes_a_producer_blocked_behind_the_group(store_of):
    mgr = _bus("block")
    g = ConsumerGroup("g", "t", 1, 3600.0, mgr=mgr)
    g.claim("m")
    prod = Producer("t", timeout=30.0)
    for i in range(CAP):
        prod.send(mgr, b"%d" % i)
    done = threading.Event()
    t = threading.Thread(target=lambda: (prod.send(mgr, b"waits"), done.set()), daemon=True)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()
    c = Consumer("t", "g")
    c.assign(g.claim("m"))
    store = store_of(mgr)
    c.seek(mgr, store, SeekPolicy.Committed)
    c.poll(mgr, 3)
    c.commit(store)
    assert done.wait(10)
    t.join(10)


@pytest.mark.parametrize("kind", ["mem", "sqlite"])
def test_a_gating_group_cannot_commit_where_its_gate_cannot_follow(kind, tmp_path):
    mgr = _bus("block")
    g = ConsumerGroup("g", "t", 1, 3600.0, mgr=mgr)
    store = MemOffsetStore() if kind == "mem" else SqliteOffsetStore(str(tmp_path / "o.db"))
    c = Consumer("t", "g")
    c.assign(g.claim("m"))
    c.seek(mgr, store, SeekPolicy.Committed)
    Producer("t").send(mgr, b"x")
    c.poll(mgr, 10)
    with pytest.raises(Unsupported, match="FabricOffsetStore"):
        c.commit(store)
    with pytest.raises(Unsupported, match="FabricOffsetStore"):
        g.commit(store, "m", "t", {0: 1})
    b = g.consumer("m")
    b.seek(mgr, store, SeekPolicy.Committed)
    b.poll(mgr, 10)
    with pytest.raises(Unsupported, match="FabricOffsetStore"):
        b.commit(store)
    assert store.committed("g", "t", 0) is None      # nothing was committed
    if kind == "mem":
        mgr.create("out", TopicConfig(1, 64, 128, 3600.0))
        out = Producer("out", transactional_id="txn-mem")
        with out.begin(mgr) as txn:
            with pytest.raises(Unsupported, match="FabricOffsetStore"):
                txn.commit_offsets(c, store)
    # a group that does not gate (an overwriting topic, or no live member) may use any store
    g.leave("m")
    c.commit(store)
    assert store.committed("g", "t", 0) == 1


def test_a_gating_group_gone_stale_refuses_another_store_until_its_records_are_collected():
    from grafos.mq import gate
    mgr = _bus("block", partitions=2)
    store = MemOffsetStore()
    Producer("t").send(mgr, b"x")
    for group, ago in (("stale", 5.0), ("gone", gate.COLLECT_AFTER + 5.0)):
        ConsumerGroup(group, "t", 2, 1.0, mgr=mgr).claim("m", now=time.time() - ago)
    c = Consumer("t", "stale")
    c.seek(mgr, store, SeekPolicy.Earliest)
    c.poll(mgr, 10)
    with pytest.raises(Unsupported, match="FabricOffsetStore"):    # released, still on record
        c.commit(store)
    d = Consumer("t", "gone")
    d.seek(mgr, store, SeekPolicy.Earliest)
    d.poll(mgr, 10)
    assert d.commit(store) == {0: d.position(0), 1: d.position(1)}    # its records are due for collection
    assert store.committed("stale", "t", 0) is None


def test_the_walkthrough_consumer_delivers_everything_on_a_block_topic():
    """Consumer + assign(group.claim) + seek Committed + poll + commit(FabricOffsetStore)
    + heartbeat: a producer of 3,000 messages into 64-slot rings neither hangs
    nor overwrites anything unread."""
    mgr = TopicManager(size=64 * MiB)
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=64, partition_stride=512,
                                     retention_secs=3600, on_full="block"))
    n = 3000
    group = ConsumerGroup("processors", "events", 4, 30, mgr=mgr)
    store = FabricOffsetStore(mgr)
    consumer = Consumer("events", "processors")
    consumer.assign(group.claim("worker-1"))
    consumer.seek(mgr, store, SeekPolicy.Committed)
    errors: list[BaseException] = []

    def produce() -> None:
        prod = Producer("events", timeout=60.0)
        try:
            for i in range(n):
                prod.send_keyed(mgr, b"user-%d" % (i % 97), b"%d" % i)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
    t = threading.Thread(target=produce, daemon=True)
    t.start()
    got: list[bytes] = []
    deadline = time.monotonic() + 120
    while len(got) < n and time.monotonic() < deadline and not errors:
        for partition, msg in consumer.poll(mgr, 100, timeout=0.05):
            got.append(msg.value)
        consumer.commit(store)
        group.heartbeat("worker-1")
    t.join(60)
    assert not errors
    assert sorted(got, key=int) == [b"%d" % i for i in range(n)]
    assert consumer.lost() == {}


# ---- a live group gates every partition ------------------------------------------------------
def test_a_dead_members_unclaimed_partitions_stay_gated_while_the_group_lives():
    mgr = _bus("raise", partitions=2)
    g = ConsumerGroup("g", "t", 2, 10.0, mgr=mgr)
    now = time.time()
    g.claim("a", now=now)
    g.claim("b", now=now)
    assert g.heartbeat("a", now=now) == [0]       # gives back above its share now that b joined
    assert g.claim("b", now=now) == [1]
    for i in range(CAP):
        _send_to(mgr, Producer("t"), 1, i)        # b's partition fills up; b dies without reading
    for k in range(3, 7):
        g.heartbeat("a", now=now + 5 * k)         # a lives on, b goes stale and nobody claims p1
        assert g.stale_members(now=now + 5 * k) == ["b"]
        d = mgr.describe("t", now=now + 5 * k).partitions[1]
        assert (d.gate, d.gate_held_by) == (CAP, "g:g")
        with pytest.raises(BufferFull):
            _send_to(mgr, Producer("t"), 1, 99)
    assert mgr.describe("t").partitions[1].lost == 0
    assert g.claim("a", now=now + 31) == [0, 1]   # the survivor takes p1 over: all of it is still there
    c = g.consumer("a")
    c.seek(mgr, FabricOffsetStore(mgr), SeekPolicy.Committed)
    assert sorted(int(m.value) for p, m in c.poll(mgr, 100) if p == 1) == list(range(CAP))


def test_the_group_stops_gating_once_its_last_member_is_gone():
    mgr = _bus("raise", partitions=2)
    g = ConsumerGroup("g", "t", 2, 10.0, mgr=mgr)
    now = time.time()
    g.claim("a", now=now)
    g.claim("b", now=now)
    assert g.leave("a") == [0, 1]                 # b owns nothing yet
    for i in range(CAP):
        _send_to(mgr, Producer("t"), 0, i)
    d = mgr.describe("t", now=now + 5).partitions[0]
    assert d.gate_held_by == "g:g"               # b is live: a's partition stays gated
    d = mgr.describe("t", now=now + 11).partitions[0]
    assert (d.gate, d.gate_held_by) == (0, None)  # b went stale: nobody left, the ring overwrites
    g.leave("b")
    _send_to(mgr, Producer("t"), 0, 99)
    assert mgr.describe("t").partitions[0].lost == 1


# ---- failover in processes -------------------------------------------------------------------
def _failover(shm_name: str, procs: list, tmp_path, kills: int, total: int, seed: int) -> None:
    """Two workers consume a "block" topic while a producer sends ``total``
    messages; ``kills`` times a random worker is SIGKILLed at a random point
    and a replacement started. Every message is delivered at least once, none
    is overwritten unread, and redeliveries are at most one poll per kill."""
    import multiprocessing as mp
    import os
    import random
    import signal

    from helpers import gate_procs
    from helpers.mp_helpers import StopFlag, start

    rnd = random.Random(seed)
    parts, stale = 2, 0.6
    mgr = TopicManager.open(shm_name, size=32 * MiB)
    mgr.create("t", TopicConfig(parts, 32, 128, 3600.0, on_full="block"))
    ConsumerGroup("g", "t", parts, stale, mgr=mgr)
    ctx = mp.get_context("spawn")
    stop = StopFlag(ctx)      # the workers are killed at random: no Event
    workers: dict[str, object] = {}
    logs: list[str] = []

    def spawn(who: str) -> None:
        ready = ctx.Event()
        log = str(tmp_path / f"{who}.log")
        logs.append(log)
        workers[who] = start(procs, gate_procs.member, shm_name, "t", "g", parts, stale, who, log, ready, stop)
        assert ready.wait(60), f"worker {who} did not start"

    spawn("w0")
    spawn("w1")
    kill_at = sorted(rnd.sample(range(total // 10, total - total // 10), kills))
    prod = Producer("t", timeout=60.0)
    n = 0
    for k, at in enumerate(kill_at + [total]):
        while n < at:
            prod.send_keyed(mgr, b"key-%d" % rnd.randrange(1 << 30), b"%d" % n)
            n += 1
        if n < total:
            victim = rnd.choice(sorted(workers))
            os.kill(workers[victim].pid, signal.SIGKILL)
            workers[victim].join(10)
            del workers[victim]
            spawn(f"r{k}")
    store = FabricOffsetStore(mgr)
    deadline = time.monotonic() + 60
    t = mgr.topic("t")
    ends = {p: t.partitions[p].state().latest for p in range(parts)}
    while any((store.committed("g", "t", p) or 0) < ends[p] for p in range(parts)):
        assert time.monotonic() < deadline, "the group did not catch up"
        time.sleep(0.05)
    stop.set()
    for w in workers.values():
        w.join(30)
    seen: dict[tuple[int, int], int] = {}
    for log in logs:
        with open(log) as f:
            for line in f:
                p, off = map(int, line.split())
                seen[(p, off)] = seen.get((p, off), 0) + 1
    want = {(p, off) for p in range(parts) for off in range(ends[p])}
    assert sum(ends.values()) == total
    assert want - set(seen) == set(), "messages never delivered (overwritten unread)"
    assert set(seen) == want
    assert sum(seen.values()) - len(seen) <= kills * gate_procs.POLL
    mgr.close()


def test_failover_on_a_block_topic_loses_nothing(shm_name, procs, tmp_path):
    _failover(shm_name, procs, tmp_path, kills=1, total=3000, seed=7)


@pytest.mark.stress
def test_failover_at_random_kill_points_loses_nothing(shm_name, procs, tmp_path):
    from helpers.mp_helpers import scaled
    _failover(shm_name, procs, tmp_path, kills=scaled(5, 2), total=scaled(12_000, 4000), seed=int(time.time()))


# ---- records of the dead are collected -------------------------------------------------------
def test_a_thousand_gating_consumers_that_died_do_not_fill_the_metadata_table(monkeypatch):
    """Each consumer holds a record per partition; none closes. Whoever looks
    next deletes records expired for longer than gate.COLLECT_AFTER."""
    import grafos._clock
    from grafos.mq import gate

    class Clock:
        t = time.time()

        def time_ns(self) -> int:
            return int(self.t * 1e9)

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(time, name)
    clock = Clock()
    monkeypatch.setattr(grafos._clock, "time", clock)
    mgr = TopicManager(size=16 * MiB)
    mgr.create("t", TopicConfig(8, CAP, 128, 3600.0, on_full="block"))
    Producer("t").send(mgr, b"x")
    for i in range(1000):                   # 8,000 records over the run: the table holds 4,096
        c = Consumer("t", "g", gating=True, gating_ttl=1.0)
        c.seek(mgr, SeekPolicy.Earliest)
        c.poll(mgr, 10)                       # holds every partition, then dies without close()
        del c
        clock.t += 2.0
    live = mgr.fabric.meta_items("w/")
    assert 0 < len(live) <= 8 * (gate.COLLECT_AFTER / 2.0 + 2)
    d = mgr.describe("t").partitions[0]
    assert d.gate == 0 and all(not r.live for r in d.gating)
    clock.t += gate.COLLECT_AFTER + 2.0
    mgr.describe("t")
    assert mgr.fabric.meta_items("w/") == []


def test_a_dead_groups_records_are_collected_and_it_gates_again_when_a_member_returns():
    from grafos.mq import gate
    mgr = _bus("raise", partitions=2)
    g = ConsumerGroup("g", "t", 2, 5.0, mgr=mgr)
    now = time.time()
    g.claim("a", now=now)
    store = FabricOffsetStore(mgr)
    g.commit(store, "a", "t", {0: 0, 1: 0}, now=now)
    assert len(mgr.fabric.meta_items("w/")) == 2
    assert [r.live for r in gate.describe(mgr, "t", now=now + 6)[0].readers] == [False]   # released, shown
    gate.describe(mgr, "t", now=now + 5 + gate.COLLECT_AFTER)                               # then collected
    assert mgr.fabric.meta_items("w/") == []
    later = now + 10 + gate.COLLECT_AFTER
    g.claim("a", now=later)
    d = gate.describe(mgr, "t", now=later)
    assert [(pg.held_by, pg.gate) for pg in d] == [("g:g", CAP), ("g:g", CAP)]


def test_a_peek_of_a_consumer_nobody_positioned_starts_at_the_groups_commits():
    mgr = _bus("overwrite")
    prod = Producer("t")
    for i in range(5):
        prod.send(mgr, b"%d" % i)
    FabricOffsetStore(mgr).commit("g", "t", 0, 3)
    c = Consumer("t", "g")
    with c.peek(mgr, 10) as pk:
        assert [bytes(m.value) for m in pk] == [b"3", b"4"]
