"""Crash survival on a named bus shared by processes, each case killed with SIGKILL:

* producers killed in the middle of their appends: the others carry on, no
  consumer is held up longer than the bounded wait, and no torn or partial
  message is ever delivered (every value carries its own digest);
* a process killed while it holds the metadata lock: the next process takes
  the lock over and the directory is consistent;
* a consumer-group member killed: its partitions go to the survivors after
  the stale threshold, they resume from its last commit, and nothing it
  committed is lost or delivered twice.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time

import pytest

from helpers import mp_helpers as h
from helpers.mp_helpers import start
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

CTX = mp.get_context("spawn")
SLACK = 2.0    # seconds on top of a bound: the machine is shared and noisy


@pytest.fixture
def bus(shm_name):
    mgr = TopicManager.open(shm_name, size=128 << 20)
    yield mgr
    mgr.close()


def kill(p) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def key_for(partition: int, partitions: int) -> bytes:
    """A key that Kafka's partitioner sends to ``partition``."""
    for i in range(10_000):
        k = b"key-%d" % i
        if kafka_partition(k, partitions) == partition:
            return k
    raise AssertionError("no key found")


# ---- producers ------------------------------------------------------------------------------
def test_reader_should_step_over_the_slot_of_a_producer_killed_between_claim_and_publish(bus, procs):
    bw = 0.2
    bus.fabric.set_bounded_wait(bw)
    bus.create("t", TopicConfig(2, 64, 256))
    prod = Producer("t")
    k0 = key_for(0, 2)
    prod.send_keyed(bus, k0, b"before")
    out = CTX.Queue()
    p = start(procs, h.claim_and_die, bus.fabric.name, "t", 0, out)
    claimed = out.get(timeout=30)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL and claimed == 1
    _, off = prod.send_keyed(bus, k0, b"after")
    assert off == 2

    c = Consumer("t")
    c.assign([0])
    c.seek(bus, None, SeekPolicy.Earliest)
    got, t0 = [], time.monotonic()
    while len(got) < 2 and time.monotonic() - t0 < bw + SLACK:
        got += [m.value for _, m in c.poll(bus, 10, timeout=0.1)]
    waited = time.monotonic() - t0
    assert got == [b"before", b"after"]           # the dead slot is skipped, nothing torn
    assert waited < bw + SLACK
    assert c.position(0) == 3
    assert bus.describe("t").partitions[0].abandoned == 1


@pytest.mark.stress
def test_producers_killed_mid_append_should_not_stall_or_corrupt_consumers(bus, procs, tmp_path):
    partitions, bw = 4, 0.1
    bus.create("stream", TopicConfig(partitions, 16384, 128, 600.0))
    name = bus.fabric.name
    stop, ready = CTX.Event(), CTX.Event()
    log = str(tmp_path / "watch.log")
    watcher = start(procs, h.watch_consumer, name, "stream", bw, log, stop, ready)
    assert ready.wait(60)
    # a steady producer that must not notice the carnage
    out, go = CTX.Queue(), CTX.Event()
    steady = start(procs, h.produce_n, name, "stream", 0, h.scaled(2000, 200), out, go, 64, 4.0)
    go.set()
    # one death exactly between claim and publish, then producers killed at random moments
    claimed = CTX.Queue()
    dead = start(procs, h.claim_and_die, name, "stream", 1, claimed)
    assert claimed.get(timeout=60) >= 0
    dead.join(30)
    assert dead.exitcode == -signal.SIGKILL
    rounds = h.scaled(8, 2)
    rng = random.Random(4)
    for r in range(rounds):
        rdy = CTX.Event()
        victim = start(procs, h.produce_forever, name, "stream", 100 + r, rdy, bw)
        assert rdy.wait(60)
        time.sleep(rng.uniform(0.005, 0.06))
        kill(victim)
    _, _, sent = out.get(timeout=120)
    steady.join(30)
    assert steady.exitcode == 0

    tails = {p.partition: p.latest for p in bus.describe("stream").partitions}
    store = FabricOffsetStore(bus)
    deadline = time.monotonic() + 60
    while any((store.committed("watch", "stream", p) or 0) < tails[p] for p in range(partitions)):
        assert time.monotonic() < deadline, "the consumer never caught up with the dead producers' slots"
        time.sleep(0.05)
    stop.set()
    watcher.join(30)
    assert watcher.exitcode == 0

    polled: dict[tuple[int, int], str] = {}
    stall = lost = None
    with open(log) as f:
        for line in f:
            kind, *rest = line.split()
            assert kind != "X", f"a torn or partial message was delivered: {line}"
            if kind == "P":
                key = (int(rest[0]), int(rest[1]))
                assert key not in polled, f"offset {key} delivered twice"
                polled[key] = rest[2]
            elif kind == "S":
                stall = float(rest[0])
            elif kind == "L":
                lost = int(rest[0])
    assert lost == 0
    assert stall is not None and stall < bw + SLACK, f"consumer stalled {stall:.2f}s behind a dead producer"
    # everything the steady producer sent arrived, intact
    for part, off, dig in sent:
        assert polled.get((part, off)) == dig
    # every offset is accounted for: delivered, or skipped as abandoned by a dead writer
    desc = {p.partition: p for p in bus.describe("stream").partitions}
    abandoned = sum(d.abandoned for d in desc.values())
    assert abandoned >= 1
    for p in range(partitions):
        delivered = sum(1 for (pp, _) in polled if pp == p)
        assert delivered + desc[p].abandoned == tails[p]


# ---- the metadata lock -----------------------------------------------------------------------
def test_should_take_over_the_lock_from_a_process_killed_while_holding_it(bus, procs):
    bus.create("before", TopicConfig(2, 64, 256))
    Producer("before").send(bus, b"kept")
    recoveries = bus.fabric.info().lock_recoveries
    held = CTX.Event()
    holder = start(procs, h.hold_lock, bus.fabric.name, held)
    assert held.wait(60)
    # another thread of ours queues up behind the holder
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(bus.create("after", TopicConfig(2, 64, 256))))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive(), "create did not wait for the lock"
    kill(holder)
    waiter.join(30)
    assert result and result[0].name == "after"
    assert bus.fabric.info().lock_recoveries == recoveries + 1
    assert bus.topics() == ["after", "before"]
    c = Consumer("before")
    assert [m.value for _, m in c.poll(bus, 10)] == [b"kept"]


def test_should_recover_the_lock_from_a_process_that_died_inside_it(bus, procs):
    recoveries = bus.fabric.info().lock_recoveries
    p = start(procs, h.die_in_lock, bus.fabric.name)
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    bus.create("next", TopicConfig(1, 64, 256))   # would time out if the lock stayed held
    assert bus.fabric.info().lock_recoveries == recoveries + 1
    assert bus.topics() == ["next"]


def test_directory_should_stay_consistent_when_a_creator_dies_half_way(bus, procs):
    bus.create("old", TopicConfig(2, 64, 256))
    Producer("old").send(bus, b"still here")
    recoveries = bus.fabric.info().lock_recoveries
    p = start(procs, h.die_in_create, bus.fabric.name, "half")
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    # the half-made topic is not listed, and its name is free
    assert bus.topics() == ["old"]
    assert bus.fabric.info().lock_recoveries == recoveries + 1
    assert not bus.exists("half")
    t = bus.create("half", TopicConfig(4, 64, 256))
    assert t.n == 4 and all(p is not None for p in t.partitions)
    part, off = Producer("half").send(bus, b"fresh")
    assert off == 0
    assert all(pi.alive for pi in bus.describe("half").partitions)
    c = Consumer("old")
    assert [m.value for _, m in c.poll(bus, 10)] == [b"still here"]


# ---- consumer-group members --------------------------------------------------------------------
def test_killed_member_partitions_should_go_to_survivors_from_its_last_commit(bus, procs, tmp_path):
    partitions, stale, per_partition = 4, 1.0, 40
    bus.create("jobs", TopicConfig(partitions, 256, 256))
    prod = Producer("jobs")
    produced = {}
    for p in range(partitions):
        k = key_for(p, partitions)
        for i in range(per_partition):
            v = h.payload(p, i)
            part, off = prod.send_keyed(bus, k, v)
            produced[(part, off)] = h.digest_of(v)
    stop, holding = CTX.Event(), CTX.Event()
    log = str(tmp_path / "victim.log")
    # the victim polls in batches of 10 and commits each, until it has polled 50;
    # then it polls once more, does not commit, and is killed
    victim = start(procs, h.group_member, bus.fabric.name, "jobs", "crew", partitions, "victim", stale,
                   log, stop, 0.05, 10, 50, holding)
    assert holding.wait(60)
    kill(victim)
    vlog = h.read_member_log(log)
    assert vlog["assignments"][-1] == list(range(partitions))

    store = FabricOffsetStore(bus)
    group = ConsumerGroup("crew", "jobs", partitions, stale, mgr=bus)
    assert group.claim("survivor") == []           # the victim's claims hold until it is stale
    killed_at = time.monotonic()
    while not (owned := group.claim("survivor")):
        assert time.monotonic() - killed_at < stale + SLACK, "partitions never handed over"
        time.sleep(0.05)
    assert owned == list(range(partitions))
    assert group.stale_members() == ["victim"] or "victim" not in group.members()

    c = group.consumer("survivor")
    c.assign(owned)
    c.seek(bus, store, SeekPolicy.Committed)
    for p in range(partitions):                     # resumes exactly where the victim committed
        assert c.position(p) == vlog["committed"].get(p, 0)
    got: list = []
    remaining = len(produced) - sum(c.position(p) for p in range(partitions))
    while len(got) < remaining:
        batch = c.poll(bus, 100, timeout=1.0)
        assert batch, "survivor found no more messages"
        got += [(p, m.offset, h.digest_of(m.value)) for p, m in batch]
    c.commit(store)

    victim_seen = {(p, off) for p, off, _ in vlog["polled"]}
    committed_by_victim = {(p, off) for p, off in victim_seen if off < vlog["committed"].get(p, 0)}
    survivor_seen = {(p, off) for p, off, _ in got}
    assert len(survivor_seen) == len(got)                       # no repeats within the survivor
    assert not committed_by_victim & survivor_seen              # nothing committed is delivered twice
    assert committed_by_victim | survivor_seen == set(produced)  # nothing is lost
    assert victim_seen - committed_by_victim                    # the victim died holding some ...
    assert victim_seen - committed_by_victim <= survivor_seen   # ... and they were delivered again
    for p, off, dig in got + vlog["polled"]:
        assert produced[(p, off)] == dig
    assert all(store.committed("crew", "jobs", p) == per_partition for p in range(partitions))


def test_successor_should_know_how_often_a_message_failed_in_a_killed_worker(bus, procs):
    from grafos.mq.dlq import FAILURES, SOURCE_OFFSET, DlqRouter

    bus.create("payments", TopicConfig(1, 64, 256))
    bus.create("payments-dlq", TopicConfig(1, 64, 512))
    prod = Producer("payments")
    prod.send(bus, b"poison")
    prod.send(bus, b"fine")
    done = CTX.Event()
    worker = start(procs, h.nack_and_die, bus.fabric.name, "payments", "payments-dlq", 2, done)
    assert done.wait(60)
    kill(worker)

    router = DlqRouter("payments", "payments-dlq", 3, mgr=bus)
    assert router.failures(0, 0) == 2                 # counted in the dead worker, kept in the bus
    c = Consumer("payments", "payers")
    c.seek(bus, None, SeekPolicy.Earliest)
    (p, m), *rest = c.poll(bus, 10)
    assert m.value == b"poison"
    assert router.failed(bus, c, p, m) is True        # third strike: routed, not retried
    assert router.failures(0, 0) == 0
    (_, dead), = Consumer("payments-dlq").poll(bus, 10, timeout=5)
    hdrs = dict(dead.headers)
    assert dead.value == b"poison" and hdrs[FAILURES] == b"3" and hdrs[SOURCE_OFFSET] == b"0"
    assert [x.value for _, x in rest] == [b"fine"]
