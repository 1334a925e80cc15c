"""The subscribe consumer across processes: rebalance callbacks in order
(revoke before the next owner's assign, after the last commit), and
auto-commit that consumes every message at least once across a SIGKILL,
repeating at most the killed member's last poll. The behaviours on one
process are in tests/conformance/test_subscribe.py, on every backend."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest

from helpers import mp_helpers
from helpers import subscribe_procs
from grafos.mq.group import ConsumerGroup, Share
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(check, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_beat_should_keep_a_member_live_without_giving_anything_back():
    g = ConsumerGroup("g", "t", 4, 30)
    assert g.claim("a") == [0, 1, 2, 3]
    assert g.claim("b") == []
    assert g.beat("a") == Share([0, 1, 2, 3], 2, [])          # over its share, and it keeps it all
    assert g.assignments() == {p: "a" for p in range(4)}
    assert g.heartbeat("a") == [0, 1]                         # heartbeat gives back above the share
    assert g.beat("b") == Share([], 2, [2, 3])
    assert g.claim("b") == [2, 3]


@pytest.fixture(params=["named", "jetstream"])
def proc_bus(request, shm_name):
    if request.param == "named":
        mgr = TopicManager.open(shm_name, size=64 << 20)
        address = shm_name
    else:
        address = request.getfixturevalue("nats_url")
        mgr = TopicManager.connect(address)
    yield request.param, address, mgr
    mgr.close()


def test_rebalance_callbacks_should_come_in_order_across_processes(proc_bus, procs, tmp_path):
    kind, address, mgr = proc_bus
    mgr.create("jobs", TopicConfig(num_partitions=4, partition_capacity=256, partition_stride=256))
    prod = Producer("jobs")
    for i in range(40):
        prod.send(mgr, b"job-%d" % i)
    events, seen = tmp_path / "events", tmp_path / "seen"
    ctx = mp.get_context("spawn")
    stop_a, stop_b = ctx.Event(), ctx.Event()
    mp_helpers.start(procs, subscribe_procs.member, kind, address, "jobs", "A", str(events), str(seen), stop_a)
    wait_for(lambda: "A assign 0,1,2,3" in lines(events))
    wait_for(lambda: len(lines(seen)) >= 40)
    b = mp_helpers.start(procs, subscribe_procs.member, kind, address, "jobs", "B", str(events), str(seen), stop_b)
    wait_for(lambda: "B assign 2,3" in lines(events))
    stop_b.set()
    b.join(20)
    assert b.exitcode == 0
    wait_for(lambda: "A assign 2,3" in lines(events))
    stop_a.set()
    procs[0].join(20)
    assert procs[0].exitcode == 0
    assert lines(events) == ["A assign 0,1,2,3",
                             "A revoke 2,3 committed",       # A commits and revokes before B can take them
                             "B assign 2,3",
                             "B revoke 2,3 committed",       # B's close: commit, revoke, leave
                             "A assign 2,3",
                             "A revoke 0,1,2,3 committed"]
    got = [tuple(map(int, line.split())) for line in lines(seen)]
    assert sorted(got) == sorted(set(got))                   # nothing read twice: every handover committed first
    assert len(got) == 40


def _one_kill_round(kind: str, address: str, topic: str, tmp_path, procs, rnd: random.Random,
                    n: int, session_timeout: float) -> int:
    """Two members consume ``n`` messages; one is SIGKILLed at a random point and
    a replacement joins. Checks every message was consumed; returns how many
    were consumed twice."""
    batch = 50
    mgr = subscribe_procs.open_bus(kind, address)
    try:
        mgr.create(topic, TopicConfig(num_partitions=4, partition_capacity=4096, partition_stride=128))
        keys = [next(b"k%d" % i for i in range(100) if kafka_partition(b"k%d" % i, 4) == p) for p in range(4)]
        Producer(topic).send_batch(mgr, [b"%d" % i for i in range(n)], [keys[i % 4] for i in range(n)])
    finally:
        mgr.close()
    events, seen = tmp_path / f"{topic}.events", tmp_path / f"{topic}.seen"
    stop = mp.get_context("spawn").Event()
    args = (kind, address, topic)
    opts = (str(events), str(seen), stop, batch, 0.01, session_timeout)
    w1 = mp_helpers.start(procs, subscribe_procs.member, *args, "w1", *opts)
    w2 = mp_helpers.start(procs, subscribe_procs.member, *args, "w2", *opts)
    kill_at = int(n * rnd.uniform(0.1, 0.7))
    wait_for(lambda: len(lines(seen)) >= kill_at, 60)
    victim = rnd.choice([w1, w2])
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    w3 = mp_helpers.start(procs, subscribe_procs.member, *args, "w3", *opts)
    wait_for(lambda: len(set(lines(seen))) >= n, 60 + 2 * session_timeout)
    stop.set()
    for w in (w1, w2, w3):
        if w is not victim:
            w.join(30)
            assert w.exitcode == 0
    got = [tuple(map(int, line.split())) for line in lines(seen)]
    assert set(got) == {(p, o) for p in range(4) for o in range(n // 4)}   # every message, at least once
    return len(got) - len(set(got))


@pytest.mark.stress
def test_auto_commit_should_consume_every_message_at_least_once_across_a_sigkill(shm_name, procs, tmp_path):
    TopicManager.open(shm_name, size=64 << 20).close()
    rnd = random.Random(int(time.time()))
    for r in range(mp_helpers.scaled(3)):
        dups = _one_kill_round("named", shm_name, f"work{r}", tmp_path, procs, rnd,
                               mp_helpers.scaled(6000, 1200), session_timeout=1.0)
        assert dups <= 50, f"round {r}: {dups} messages repeated, more than the killed member's last poll"


@pytest.mark.stress
def test_auto_commit_on_jetstream_should_consume_every_message_at_least_once_across_a_sigkill(nats_url, procs,
                                                                                              tmp_path):
    # a session longer than a dead holder's lock on the group record (2 s): the
    # survivors' beats wait for that lock and must not be taken for stale meanwhile
    dups = _one_kill_round("jetstream", nats_url, "work", tmp_path, procs, random.Random(int(time.time())),
                           mp_helpers.scaled(2000, 400), session_timeout=5.0)
    assert dups <= 50, f"{dups} messages repeated, more than the killed member's last poll"
