"""One named bus, many processes: the topic directory, leases and offsets are
in the shared mapping, so every process attached by name sees the same bus,
and a blocking poll in one process wakes on an append in another.

Processes are started with multiprocessing "spawn" (a fresh interpreter, as a
separate program would be) and killed by PID at teardown if still alive.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import struct
import subprocess
import sys
import time

import pytest

from helpers import mp_helpers as h
from helpers.mp_helpers import start
from grafos.errors import LeaseExpired, NotFound
from grafos.fabric import Fabric, shm_path
from grafos.mq.consumer import Consumer
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

CTX = mp.get_context("spawn")


@pytest.fixture
def bus(shm_name):
    mgr = TopicManager.open(shm_name, size=64 << 20)
    yield mgr
    mgr.close()


def wake_words(name: str) -> tuple[int, int]:
    """(wake counter, waiters) from the fabric header, read from outside.
    Producers bump the wake counter only when they issue a futex wake."""
    with open(shm_path(name), "rb") as f:
        f.seek(192)
        return struct.unpack("<II", f.read(8))


def wait_expired(mgr: TopicManager, topic: str) -> None:
    deadline = time.monotonic() + 30
    while any(p.alive for p in mgr.describe(topic).partitions):
        assert time.monotonic() < deadline, f"{topic} never expired"
        time.sleep(0.05)


class Peer:
    """A spawned process that carries out directory and data operations on request."""

    def __init__(self, procs, name: str) -> None:
        self.jobs, self.out = CTX.Queue(), CTX.Queue()
        self.proc = start(procs, h.topic_ops, name, self.jobs, self.out)

    def __call__(self, *job):
        self.jobs.put(job)
        status, res = self.out.get(timeout=60)
        if status != "ok":
            raise AssertionError(f"the peer's {job[0]} raised {status}: {res}")
        return res

    def stop(self) -> None:
        self("stop")
        self.proc.join(30)


def test_should_see_topics_created_and_deleted_by_another_process(bus, procs):
    peer = Peer(procs, bus.fabric.name)
    bus.create("made-here", TopicConfig(2, 64, 256))
    assert peer("topics") == ["made-here"]

    peer("create", "made-there", 3)
    assert bus.topics() == ["made-here", "made-there"]
    assert bus.describe("made-there").config.num_partitions == 3

    # data flows both ways through the same rings
    part, off = Producer("made-there").send(bus, b"from parent")
    assert peer("poll", "made-there", 5.0) == [(part, off, b"from parent")]
    p2, o2 = peer("send", "made-here", b"from peer")
    c = Consumer("made-here")
    assert [(p, m.offset, m.value) for p, m in c.poll(bus, 10, timeout=5)] == [(p2, o2, b"from peer")]

    peer("delete", "made-here")
    assert bus.topics() == ["made-there"]
    with pytest.raises(NotFound):
        c.poll(bus, 10)
    peer.stop()


def test_should_raise_not_found_when_another_process_deleted_a_cached_topic(bus, procs):
    peer = Peer(procs, bus.fabric.name)
    peer("create", "doomed", 2)
    prod, cons = Producer("doomed"), Consumer("doomed")
    prod.send(bus, b"one")
    assert len(cons.poll(bus, 10)) == 1          # both now hold the topic cached
    peer("delete", "doomed")
    with pytest.raises(NotFound, match="doomed"):
        prod.send(bus, b"two")
    with pytest.raises(NotFound, match="doomed"):
        cons.poll(bus, 10, timeout=0.5)
    # recreated under the same name with another shape: the cached objects follow
    peer("create", "doomed", 5)
    part, off = prod.send(bus, b"three")
    assert 0 <= part < 5 and off == 0
    assert [m.value for _, m in cons.poll(bus, 10, timeout=5)] == [b"three"]
    peer.stop()


def test_should_pick_up_a_restart_by_another_process(bus, procs):
    peer = Peer(procs, bus.fabric.name)
    assert peer("topics") == []                   # the peer is up before the clock starts
    bus.create("brief", TopicConfig(2, 64, 256, retention_secs=1.0))
    peer("send", "brief", b"before")
    assert [v for _, _, v in peer("poll", "brief", 5.0)] == [b"before"]
    wait_expired(bus, "brief")                    # nobody renews: both partitions expire
    bus.restart("brief")
    Producer("brief").send(bus, b"after")
    # the peer's cached Topic points at the dead leases; it must find the fresh ones
    assert [v for _, _, v in peer("poll", "brief", 5.0)] == [b"after"]
    part, off = peer("send", "brief", b"again")
    assert off == 0 or off == 1
    peer.stop()


def test_producer_bound_to_reclaimed_partitions_should_follow_a_restart_elsewhere(bus, procs):
    peer = Peer(procs, bus.fabric.name)
    assert peer("topics") == []
    bus.create("lapsed", TopicConfig(2, 64, 256, retention_secs=60))
    for lease in bus.partition_leases("lapsed"):
        lease.renew(ttl=0.2)
    wait_expired(bus, "lapsed")
    bus.fabric.reap()                             # the rings are gone, not just expired
    prod = Producer("lapsed")
    with pytest.raises(LeaseExpired, match="restart the topic"):
        prod.send(bus, b"too late")
    peer("restart", "lapsed")
    part, off = prod.send(bus, b"on time")
    assert off == 0
    assert [(p, v) for p, _, v in peer("poll", "lapsed", 5.0)] == [(part, b"on time")]
    peer.stop()


def test_blocking_poll_should_follow_a_restart_while_it_sleeps(bus, procs):
    bus.create("phoenix", TopicConfig(2, 64, 256, retention_secs=60))
    ready, out = CTX.Event(), CTX.Queue()
    start(procs, h.blocking_poll, bus.fabric.name, "phoenix", None, ready, out)
    assert ready.wait(30)
    for lease in bus.partition_leases("phoenix"):  # expire while the peer sleeps in poll
        lease.renew(ttl=0.2)
    wait_expired(bus, "phoenix")
    bus.restart("phoenix")
    Producer("phoenix").send(bus, b"reborn")
    _, msgs = out.get(timeout=30)
    assert [v for _, v in msgs] == [b"reborn"]


def test_unlink_should_remove_the_name_but_not_the_attached_mapping(bus, procs):
    name = bus.fabric.name
    peer = Peer(procs, name)
    peer("create", "still-here", 1)
    assert TopicManager.unlink(name) is True
    assert not Fabric.exists(name)
    with pytest.raises(NotFound):
        TopicManager.open(name, create=False)
    # both processes keep their mapping: the bus still works between them
    Producer("still-here").send(bus, b"after unlink")
    assert [v for _, _, v in peer("poll", "still-here", 5.0)] == [b"after unlink"]
    assert TopicManager.unlink(name) is False
    peer.stop()


@pytest.mark.parametrize("timeout", [30.0, None])
def test_blocking_poll_should_wake_on_an_append_in_another_process(bus, procs, timeout):
    bus.create("wake", TopicConfig(4, 64, 256))
    name = bus.fabric.name
    ready, out = CTX.Event(), CTX.Queue()
    start(procs, h.blocking_poll, name, "wake", timeout, ready, out)
    assert ready.wait(30)
    deadline = time.monotonic() + 30
    while wake_words(name)[1] == 0:               # wait until the peer sleeps on the futex
        assert time.monotonic() < deadline, "peer never went to sleep in poll"
        time.sleep(0.01)
    wakes_before = wake_words(name)[0]
    sent_ns = time.time_ns()
    Producer("wake").send_keyed(bus, b"k", b"ding")
    woke_ns, msgs = out.get(timeout=30)
    assert [v for _, v in msgs] == [b"ding"]
    assert wake_words(name)[0] > wakes_before, "the producer did not wake the sleeper"
    assert woke_ns >= sent_ns


def test_producers_should_not_pay_for_wakeups_when_nobody_waits(bus, procs):
    bus.create("quiet", TopicConfig(4, 64, 256))
    name = bus.fabric.name
    prod = Producer("quiet")
    before = wake_words(name)
    for i in range(500):
        prod.send(bus, b"x%d" % i)
    assert wake_words(name) == before

    # a consumer killed in its sleep leaves its mark in the shared header; once its
    # advertised sleep is over, producers must stop issuing wake-ups for it
    ready, out = CTX.Event(), CTX.Queue()
    p = start(procs, h.blocking_poll, name, "quiet", None, ready, out)
    assert ready.wait(30)
    deadline = time.monotonic() + 30
    while wake_words(name)[1] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    time.sleep(0.2)                               # > the longest sleep a poller advertises (50 ms)
    stale = wake_words(name)
    for i in range(500):
        prod.send(bus, b"y%d" % i)
    assert wake_words(name)[0] == stale[0], "producers keep waking a dead consumer"


# ---- consumer groups across processes ----------------------------------------------------
GROUP_TOPIC = "orders"


def committed_total(mgr: TopicManager, group: str, partitions: int) -> int:
    store = FabricOffsetStore(mgr)
    return sum(store.committed(group, GROUP_TOPIC, p) or 0 for p in range(partitions))


def wait_until(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_group(bus: TopicManager, procs, tmp_path, *, group: str, members: list[str], producers: int,
              per_producer: int, partitions: int, stale: float, victim: str | None = None,
              extra_groups: dict[str, list[str]] | None = None, spread: float = 0.0):
    """Producers and group members in their own processes on one named bus.
    ``victim`` (a member of ``group``) is SIGKILLed once it has polled about 40% of
    the messages, right after a poll whose messages it has not committed.
    Returns (produced {(partition, offset): digest}, {group: {member: log}})."""
    name = bus.fabric.name
    if not bus.exists(GROUP_TOPIC):
        bus.create(GROUP_TOPIC, TopicConfig(partitions, 4096, 256, 600.0))
    groups = {group: members, **(extra_groups or {})}
    stop, go, out, holding = CTX.Event(), CTX.Event(), CTX.Queue(), CTX.Event()
    total = producers * per_producer
    member_procs = {}
    for g, ms in groups.items():
        for m in ms:
            hold = int(0.4 * total / len(ms)) if (g, m) == (group, victim) else 0
            member_procs[(g, m)] = start(procs, h.group_member, name, GROUP_TOPIC, g, partitions, m, stale,
                                         str(tmp_path / f"{g}.{m}.log"), stop, 0.05, 50, hold, holding)
    for i in range(producers):
        start(procs, h.produce_n, name, GROUP_TOPIC, i, per_producer, out, go, 64, spread)
    # production starts once every member has joined and holds its share
    for g, ms in groups.items():
        view = ConsumerGroup(g, GROUP_TOPIC, partitions, stale, mgr=bus)
        wait_until(lambda view=view, ms=ms: set(view.assignments().values()) == set(ms),
                   f"every member of {g} to own partitions")
    go.set()
    if victim is not None:
        assert holding.wait(120), f"{victim} never got its share of messages"
        os.kill(member_procs[(group, victim)].pid, signal.SIGKILL)
    produced: dict[tuple[int, int], str] = {}
    for _ in range(producers):
        kind, _pid, sent = out.get(timeout=120)
        for part, off, dig in sent:
            produced[(part, off)] = dig
    assert len(produced) == total
    for g in groups:
        wait_until(lambda g=g: committed_total(bus, g, partitions) == total, f"group {g} to commit everything")
    stop.set()
    for (g, m), p in member_procs.items():
        if m != victim or g != group:
            p.join(30)
            assert p.exitcode == 0, f"member {g}/{m} exited with {p.exitcode}"
    logs = {g: {m: h.read_member_log(str(tmp_path / f"{g}.{m}.log")) for m in ms} for g, ms in groups.items()}
    return produced, logs


def check_consumed(produced, logs, victim=None):
    """Every produced message was polled by the group with the right checksum; the
    only messages polled twice are ones the victim polled but had not committed."""
    seen: dict[tuple[int, int], list[str]] = {}
    for m, log in logs.items():
        assert log["corrupt"] == [], f"{m} got messages that failed their checksum"
        for p, off, dig in log["polled"]:
            assert produced.get((p, off)) == dig, f"{m} polled {p}/{off} with a wrong or unknown checksum"
            seen.setdefault((p, off), []).append(m)
    assert set(seen) == set(produced), f"{len(set(produced) - set(seen))} messages never consumed"
    repeats = {k: ms for k, ms in seen.items() if len(ms) > 1}
    if victim is None:
        assert repeats == {}, f"messages consumed twice: {sorted(repeats)[:10]}"
        for m, log in logs.items():
            assert log["fenced"] == [], f"{m} was fenced though nobody died"
        return 0
    vcommit = logs[victim]["committed"]
    for (p, off), ms in repeats.items():
        others = [m for m in ms if m != victim]
        assert len(others) == 1 and ms.count(victim) == len(ms) - 1, f"{p}/{off} polled by {ms}"
        assert off >= vcommit.get(p, 0), \
            f"{p}/{off} was committed by {victim} (up to {vcommit.get(p)}) and delivered again"
    # ... and every message the victim polled but had not committed was delivered again
    uncommitted = {(p, off) for p, off, _ in logs[victim]["polled"] if off >= vcommit.get(p, 0)}
    assert uncommitted and set(repeats) == uncommitted
    for m, log in logs.items():
        if m != victim:
            assert log["fenced"] == [], f"survivor {m} was fenced"
    return len(repeats)


def test_group_across_processes_should_consume_every_message_exactly_once(bus, procs, tmp_path):
    per = h.scaled(500, 50)
    produced, logs = run_group(bus, procs, tmp_path, group="workers", members=["c0", "c1", "c2"],
                               producers=4, per_producer=per, partitions=8, stale=5.0)
    check_consumed(produced, logs["workers"])
    # the work was shared: every member ended up owning partitions
    assert all(log["assignments"] and log["assignments"][-1] for log in logs["workers"].values())


def test_group_across_processes_should_survive_a_killed_member(bus, procs, tmp_path):
    per = h.scaled(500, 50)
    victim = "c1"
    produced, logs = run_group(bus, procs, tmp_path, group="workers", members=["c0", "c1", "c2"],
                               producers=4, per_producer=per, partitions=8, stale=1.5,
                               victim=victim, spread=3.0)
    repeats = check_consumed(produced, logs["workers"], victim)
    print(f"victim {victim}: {repeats} messages polled but not committed were delivered again")
    # the victim's partitions went to the survivors
    survivors_final = set()
    for m, log in logs["workers"].items():
        if m != victim:
            survivors_final |= set(log["assignments"][-1])
    assert survivors_final == set(range(8))


def test_two_groups_in_different_processes_should_each_see_every_message(bus, procs, tmp_path):
    per = h.scaled(400, 40)
    produced, logs = run_group(bus, procs, tmp_path, group="billing", members=["b0", "b1"],
                               producers=2, per_producer=per, partitions=4, stale=5.0,
                               extra_groups={"audit": ["a0"]})
    check_consumed(produced, logs["billing"])
    check_consumed(produced, logs["audit"])


# ---- the example pair ------------------------------------------------------------------------
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


def test_example_producer_service_and_workers_should_run_side_by_side(shm_name, tmp_path):
    def spawn(script: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, os.path.join(EXAMPLES, script), shm_name, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    count = 30
    workers = [spawn("worker.py", "--member", m, "--stale", "5") for m in ("w1", "w2")]
    try:
        prod = spawn("producer_service.py", "--count", str(count), "--rate", "100", "--partitions", "4")
        out, _ = prod.communicate(timeout=120)
        assert prod.returncode == 0, out
        assert f"stopped after {count} orders" in out
        sent = set(int(n) for n in re.findall(r"sent order\s+(\d+)", out))
        assert sent == set(range(count))
        with TopicManager.open(shm_name, create=False) as mgr:
            store = FabricOffsetStore(mgr)
            wait_until(lambda: sum(store.committed("workers", "orders", p) or 0 for p in range(4)) == count,
                       "the workers to commit every order", 60)
        outs = []
        for w in workers:
            w.send_signal(signal.SIGINT)               # Ctrl-C
            o, _ = w.communicate(timeout=60)
            assert w.returncode == 0, o
            assert "left the group" in o
            outs.append(o)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    got = [int(n) for o in outs for n in re.findall(r"order\s+(\d+) for", o)]
    assert sorted(got) == list(range(count))           # each order processed once, by one of them
