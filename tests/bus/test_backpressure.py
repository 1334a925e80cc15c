"""When a partition is full: overwrite, block or raise, gated by live readers."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import random
import signal
import threading
import time

import pytest

from grafos._core import layout
from grafos.errors import BufferFull, InvalidArgument
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq import gate
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

from helpers import backpressure_procs as bp
from helpers.mp_helpers import scaled, start

MiB = 1 << 20


def _mgr(on_full: str, partitions: int = 1, capacity: int = 8) -> TopicManager:
    mgr = TopicManager(size=16 * MiB)
    mgr.create("t", TopicConfig(partitions, capacity, 128, 3600.0, on_full=on_full))
    return mgr


def _held(mgr: TopicManager, partitions: int = 1, stale: float = 3600.0) -> ConsumerGroup:
    g = ConsumerGroup("g", "t", partitions, stale, mgr=mgr)
    g.claim("m")
    return g


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process pid."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- policy ------------------------------------------------------------------------------------
def test_overwrite_is_the_default_and_ignores_groups():
    mgr = TopicManager(size=16 * MiB)
    mgr.create("t", TopicConfig(1, 8, 128, 3600.0))
    assert mgr.topic("t").config.on_full == "overwrite"
    _held(mgr)
    p = Producer("t")
    for i in range(20):
        p.send(mgr, b"%d" % i)
    d = mgr.describe("t").partitions[0]
    assert (d.latest, d.lost, d.gate) == (20, 12, 0)


def test_on_full_is_read_back_from_the_directory_by_another_manager(shm_name):
    a = TopicManager.open(shm_name, size=16 * MiB)
    a.create("t", TopicConfig(1, 8, 128, 60.0, on_full="block"))
    b = TopicManager.open(shm_name)
    assert b.topic("t").config.on_full == "block"
    assert b.describe("t").config.on_full == "block"
    b.close()
    a.close()


def test_raise_refuses_the_message_a_group_has_not_read_and_writes_nothing():
    mgr = _mgr("raise")
    g = _held(mgr)
    p = Producer("t")
    for i in range(8):
        p.send(mgr, b"%d" % i)
    with pytest.raises(BufferFull, match="partition 0 is full"):
        p.send(mgr, b"no")
    with pytest.raises(BufferFull):
        p.send_batch(mgr, [b"a", b"b"])
    d = mgr.describe("t").partitions[0]
    assert (d.latest, d.lost, d.full_raised, d.gate_held_by) == (8, 0, 2, "g:g")
    g.commit(FabricOffsetStore(mgr), "m", "t", {0: 3})
    p.send_batch(mgr, [b"a", b"b", b"c"])       # exactly the three slots the commit freed
    with pytest.raises(BufferFull):
        p.send(mgr, b"no")
    c = Consumer("t", "check")
    c.seek(mgr, None, SeekPolicy.Earliest)
    assert [m.value for _, m in c.poll(mgr, 100)] == [b"3", b"4", b"5", b"6", b"7", b"a", b"b", b"c"]
    assert isinstance(BufferFull("x"), queue.Full)


def test_a_batch_spanning_partitions_writes_nothing_when_one_is_full():
    mgr = _mgr("raise", partitions=2, capacity=4)
    _held(mgr, partitions=2)
    p = Producer("t", Partitioner.KeyHash)
    keys = [b"k%d" % i for i in range(40)]
    k0 = keys[0]
    other = next(k for k in keys if kafka_partition(k, 2) != kafka_partition(k0, 2))
    for _ in range(4):
        p.send_keyed(mgr, k0, b"x")             # the partition of k0 is now full
    before = [x.latest for x in mgr.describe("t").partitions]
    with pytest.raises(BufferFull):
        p.send_batch(mgr, [b"a", b"b"], keys=[other, k0])
    assert [x.latest for x in mgr.describe("t").partitions] == before
    assert sum(x.abandoned for x in mgr.describe("t").partitions) == 0


def test_block_waits_for_a_commit_without_spinning():
    mgr = _mgr("block", partitions=2)
    g = _held(mgr, partitions=2)
    store = FabricOffsetStore(mgr)
    p = Producer("t")
    for i in range(16):
        p.send(mgr, b"%d" % i)
    threading.Timer(0.5, lambda: g.commit(store, "m", "t", {0: 4, 1: 4})).start()
    c0 = time.process_time()
    for i in range(8):
        p.send(mgr, b"more")
    assert time.process_time() - c0 < 0.2        # it slept, it did not spin
    d = mgr.describe("t")
    assert d.produced == 24
    assert [x.earliest for x in d.partitions] == [4, 4]   # only what the group committed past is gone
    assert sum(x.blocked_secs for x in d.partitions) > 0.3
    assert all(x.blocked == 0 for x in d.partitions)


def test_more_blocked_producers_than_a_partition_records_show_as_its_count_and_all_are_woken():
    mgr = _mgr("block")
    g = _held(mgr)
    store = FabricOffsetStore(mgr)
    for i in range(8):
        Producer("t").send(mgr, b"%d" % i)
    n = layout.RING_WAITERS + 1
    errors: list[BaseException] = []

    def send() -> None:
        try:
            Producer("t", timeout=60).send(mgr, b"waits")
        except BaseException as e:      # noqa: BLE001 - the test reports it
            errors.append(e)

    senders = [threading.Thread(target=send) for _ in range(n)]
    for t in senders:
        t.start()

    def blocked_becomes(want: int) -> None:
        deadline = time.monotonic() + 30
        while mgr.describe("t").partitions[0].blocked != want:
            assert time.monotonic() < deadline, f"blocked stayed {mgr.describe('t').partitions[0].blocked}"
            time.sleep(0.02)

    blocked_becomes(layout.RING_WAITERS)      # the records' count: at least that many wait
    g.commit(store, "m", "t", {0: n - 1})     # room for all but one
    blocked_becomes(1)                        # the one left records itself in a freed entry
    g.commit(store, "m", "t", {0: n})
    for t in senders:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in senders)
    d = mgr.describe("t").partitions[0]
    assert (d.latest, d.blocked) == (8 + n, 0)
    mgr.close()


def test_timeouts_are_honoured_and_the_call_overrides_the_producer():
    mgr = _mgr("block")
    _held(mgr)
    p = Producer("t", timeout=0.3)
    for i in range(8):
        p.send(mgr, b"%d" % i)
    t0 = time.monotonic()
    with pytest.raises(BufferFull, match="timeout of 0.3"):
        p.send(mgr, b"x")
    assert 0.3 <= time.monotonic() - t0 < 5
    t0 = time.monotonic()
    with pytest.raises(BufferFull, match="timeout of 0.05"):
        p.send_keyed(mgr, b"k", b"x", timeout=0.05)
    assert 0.05 <= time.monotonic() - t0 < 0.3
    with pytest.raises(BufferFull):
        p.send_batch(mgr, [b"x"], timeout=0)
    assert mgr.describe("t").partitions[0].latest == 8
    with pytest.raises(InvalidArgument, match="can never fit"):
        p.send_batch(mgr, [b"x"] * 9, timeout=0)


def test_a_gating_consumer_holds_producers_back_until_it_polls_and_closes():
    mgr = _mgr("block")
    c = Consumer("t", "solo", gating=True)
    p = Producer("t", timeout=0.05)
    for i in range(4):
        p.send(mgr, b"%d" % i)
    assert len(c.poll(mgr, 2)) == 2       # publishes position 2: the gate is 10
    for i in range(6):
        p.send(mgr, b"x")
    with pytest.raises(BufferFull):
        p.send(mgr, b"x")
    assert mgr.describe("t").partitions[0].gate == 10
    assert len(c.poll(mgr, 100)) == 8
    p.send(mgr, b"room")
    c.close()                             # released: overwrite again
    for i in range(20):
        p.send(mgr, b"y")
    assert mgr.describe("t").partitions[0].gate == 0


def test_deleting_a_topic_drops_its_gating_records_and_a_new_one_starts_ungated():
    mgr = _mgr("block")
    g = _held(mgr)
    g.commit(FabricOffsetStore(mgr), "m", "t", {0: 0})
    assert [k for k, _ in mgr.fabric.meta_items("w/")]
    mgr.delete("t")
    assert [k for k, _ in mgr.fabric.meta_items("w/")] == []
    mgr.create("t", TopicConfig(1, 8, 128, 3600.0, on_full="block"))
    p = Producer("t", timeout=0)
    for i in range(20):
        p.send(mgr, b"%d" % i)            # nobody gates the new topic until the group commits
    assert mgr.describe("t").partitions[0].gate == 0


# ---- the gate's model, on an injected clock --------------------------------------------------------
def test_gate_model_groups_join_commit_go_stale_and_leave():
    rnd = random.Random(1234)
    cap = 8
    mgr = _mgr("raise", capacity=cap)
    store = FabricOffsetStore(mgr)
    stale = {"a": 2.3, "b": 5.3, "c": 1.3}
    groups = {n: ConsumerGroup(n, "t", 1, s, mgr=mgr) for n, s in stale.items()}
    model: dict[str, float] = {}          # group -> lease expiry (its member's last heartbeat + stale)
    committed: dict[str, int] = {}        # group -> committed offset: its gate position
    tail = 0
    prod = Producer("t")
    now = time.time() + 1000.0
    seen = {"sent": 0, "refused": 0, "released": 0, "ungated": 0}
    holders = set()

    def position(name: str) -> int:
        earliest = max(0, tail - cap)
        return min(max(committed.get(name, earliest), earliest), tail)

    for step in range(400):
        now += rnd.choice([0.0, 0.1, 0.5, 1.0])
        name = rnd.choice(list(groups))
        g = groups[name]
        op = rnd.choice(["join", "commit", "commit", "send", "send", "send", "leave", "wait"])
        earliest = max(0, tail - cap)
        if op == "join":
            g.claim("m", now=now)
            model[name] = now + stale[name]
        elif op == "commit" and name in model:
            off = rnd.randint(earliest, tail)
            g.commit(store, "m", "t", {0: off}, now=now)   # moves the gate, renews nothing
            committed[name] = off
        elif op == "leave" and name in model:
            g.leave("m")
            del model[name]
        elif op == "send":
            live = [position(n) for n, exp in model.items() if exp > now]
            mgr.describe("t", now=now)            # whoever looks next recomputes the gate
            room = not live or tail + 1 <= min(live) + cap
            try:
                prod.send(mgr, b"%d" % step)
                tail += 1
                seen["sent"] += 1
                assert room, f"step {step}: sent past the gate"
            except BufferFull:
                seen["refused"] += 1
                assert not room, f"step {step}: refused with room"
        d = mgr.describe("t", now=now).partitions[0]
        live = {n: (position(n), n) for n, exp in model.items() if exp > now}
        want = (min(live.values())[0] + cap, "g:" + min(live.values())[1]) if live else (0, None)
        assert (d.gate, d.gate_held_by) == want, f"step {step} {op} {name}"
        assert d.latest == tail
        released = {r.reader for r in d.gating if not r.live}
        # shown released until COLLECT_AFTER past its expiry, then collected
        assert released == {"g:" + n for n, exp in model.items() if exp <= now < exp + gate.COLLECT_AFTER}
        seen["released"] += bool(released)
        seen["ungated"] += d.gate == 0
        holders.add(d.gate_held_by)
    # the run went through every case the model tells apart
    assert min(seen.values()) >= 10, seen
    assert holders >= {None, "g:a", "g:b", "g:c"}, holders


# ---- across processes -------------------------------------------------------------------------------
@pytest.mark.stress
def test_block_with_a_slow_group_in_another_process_loses_nothing(shm_name, procs):
    n = scaled(600, 100)
    mgr = TopicManager.open(shm_name, size=32 * MiB)
    mgr.create("t", TopicConfig(2, 16, 128, 3600.0, on_full="block"))
    out = mp.get_context("spawn").Queue()
    ConsumerGroup("slow", "t", 2, 30.0, mgr=mgr)
    start(procs, bp.slow_member, shm_name, "t", "slow", 2, 30.0, n, 0.002, out)
    assert out.get(timeout=60)[0] == "ready"
    p = Producer("t", timeout=60)
    sent = [b"m%06d" % i for i in range(n)]
    for v in sent:
        p.send(mgr, v)
    tag, got, lost = out.get(timeout=120)
    assert tag == "done"
    assert sorted(got) == sent          # every message exactly once
    assert lost == 0
    d = mgr.describe("t")
    assert sum(x.blocked_secs for x in d.partitions) > 0     # producers did block and resume
    procs[0].join(30)
    mgr.close()


def test_a_sigkilled_gating_member_releases_the_producer_within_the_stale_threshold(shm_name, procs):
    stale = 1.0
    mgr = TopicManager.open(shm_name, size=32 * MiB)
    mgr.create("t", TopicConfig(1, 8, 128, 3600.0, on_full="block"))
    p = Producer("t", timeout=30)
    for i in range(8):
        p.send(mgr, b"%d" % i)
    out = mp.get_context("spawn").Queue()
    start(procs, bp.hold_and_sleep, shm_name, "t", "g", 1, stale, 3, out)
    assert out.get(timeout=60)[0] == "ready"
    for i in range(3):
        p.send(mgr, b"after-commit")        # the three slots the commit freed
    with pytest.raises(BufferFull):
        p.send(mgr, b"x", timeout=0.1)      # still held by the live member
    os.kill(procs[0].pid, signal.SIGKILL)
    procs[0].join(10)
    t0 = time.monotonic()
    p.send(mgr, b"resumed")
    assert time.monotonic() - t0 < stale + 2.0
    d = mgr.describe("t").partitions[0]
    assert d.gate == 0 and [r.live for r in d.gating] == [False]
    gd = ConsumerGroup.attach(mgr, "g", "t").describe(mgr, FabricOffsetStore(mgr))
    assert gd.partitions[0].gating == "released"
    assert FabricOffsetStore(mgr).committed("g", "t", 0) == 3     # nothing committed is lost
    mgr.close()


def _blocked_everywhere(mgr: TopicManager, where: str) -> list[int]:
    """Producers blocked on partition 0 of "t", as each view of the bus reports
    them: describe, ``grafos describe --json``, ``grafos top --once --json`` and
    the metrics' gauge."""
    from click.testing import CliRunner
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from grafos.cli import main
    from grafos.metrics import BusCollector

    def cli(*args: str) -> dict:
        r = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    described = cli("describe", where, "t")["partitions"][0]["blocked"]
    frame = cli("top", where, "--once", "--interval", "0.05")
    shown = {t["topic"]: t for t in frame["topics"]}["t"]["partitions"][0]["blocked"]
    reg = CollectorRegistry()
    reg.register(BusCollector(mgr))
    gauge = [s.value for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples
             if s.name == "grafos_partition_blocked_producers" and s.labels.get("topic") == "t"]
    return [mgr.describe("t").partitions[0].blocked, described, shown, *gauge]


def _full_with_a_sender_waiting(mgr, procs, sender, where):
    """A "block" topic of 8 slots filled behind a held gate, and a child process
    whose send of a ninth is waiting for room (it says "sending" first)."""
    mgr.create("t", TopicConfig(1, 8, 128, 3600.0, on_full="block"))
    _held(mgr)
    p = Producer("t")
    for i in range(8):
        p.send(mgr, b"%d" % i)
    out = mp.get_context("spawn").Queue()
    child = start(procs, sender, where, "t", out)
    assert out.get(timeout=60)[0] == "sending"
    return child, out


@pytest.mark.parametrize("kind", ["named", "file"])
def test_a_blocked_producer_killed_in_its_wait_is_no_longer_counted_blocked(kind, shm_name, tmp_path, procs):
    # shared-memory buses only: the count is of waiters in other processes, which an
    # in-process bus has none of, and a JetStream bus has no gate (capabilities.gating)
    where = {"name": shm_name} if kind == "named" else {"path": str(tmp_path / "bus.grafos")}
    mgr = TopicManager.open(**where, size=32 * MiB)
    child, _ = _full_with_a_sender_waiting(mgr, procs, bp.blocked_sender_on, where)
    address = where.get("name") or where["path"]
    deadline = time.monotonic() + 30
    # the send waits in slices and looks at the gating readers between them (under the
    # bus's lock, which describe takes too): a view taken between two slices sees none
    while (seen := _blocked_everywhere(mgr, address)) != [1, 1, 1, 1]:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert _blocked_everywhere(mgr, address) == [0, 0, 0, 0]
    mgr.close()


def test_a_send_blocked_in_another_process_sleeps_and_takes_ctrl_c(shm_name, procs):
    mgr = TopicManager.open(shm_name, size=32 * MiB)
    child, out = _full_with_a_sender_waiting(mgr, procs, bp.blocked_sender, shm_name)
    deadline = time.monotonic() + 30
    while mgr.describe("t").partitions[0].blocked == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    c0 = _cpu(child.pid)
    time.sleep(1.0)
    assert _cpu(child.pid) - c0 < 0.1        # blocked on a futex, not spinning
    os.kill(child.pid, signal.SIGINT)
    assert out.get(timeout=10)[0] == "interrupted"
    child.join(10)
    assert child.exitcode == 0
    d = mgr.describe("t").partitions[0]
    assert d.latest == 8 and d.blocked == 0 and d.blocked_secs >= 1.0
    mgr.close()
