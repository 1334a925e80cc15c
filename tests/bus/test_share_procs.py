"""Share groups across processes on a named bus: workers SIGKILLed mid-batch at
random points with replacements started, and a SIGSTOPped worker whose locks
run out and whose late ack is refused."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from collections import Counter

import pytest

from helpers import share_procs as sp
from helpers.mp_helpers import scaled, start
from grafos.mq import share
from grafos.mq.topic import TopicConfig, TopicManager

CTX = mp.get_context("spawn")
LOCK = 1.5


@pytest.fixture
def bus(shm_name):
    mgr = TopicManager.open(shm_name, size=128 << 20)
    yield mgr
    mgr.close()


def read_log(path: str) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
    got, acked = [], set()
    if not os.path.exists(path):
        return got, acked
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue        # a line cut by the kill
            if parts[0] == "G":
                got.append((int(parts[1]), int(parts[2])))
            elif parts[0] == "A":
                acked.add((int(parts[1]), int(parts[2])))
    return got, acked


def finished(mgr: TopicManager, topic: str, group: str) -> bool:
    return all(s.floor == s.latest for s in share.describe(mgr, topic, group))


@pytest.mark.stress
def test_workers_killed_mid_batch_lose_nothing_and_duplicate_only_what_they_held(bus, procs, tmp_path):
    batch = 40
    n = scaled(4000, 400)
    bus.create("jobs", TopicConfig(2, 16384, 128, on_full="block"))
    name = bus.fabric.name
    # the group exists (and gates) before the first record
    bus.share_consumer("jobs", group="w", lock_secs=LOCK, max_deliveries=50).close()
    prod = bus.producer("jobs")
    for i in range(n):
        prod.send_keyed(b"k%d" % i, b"v%d" % i)
    stop = CTX.Event()
    logs = [str(tmp_path / f"steady{i}.log") for i in range(2)]
    for i, log in enumerate(logs):
        rdy = CTX.Event()
        start(procs, sp.worker, name, "jobs", "w", LOCK, log, rdy, stop, batch, f"steady{i}")
        assert rdy.wait(60)
    rng = random.Random(7)
    victims = []
    for r in range(scaled(6, 2)):
        log = str(tmp_path / f"victim{r}.log")
        rdy = CTX.Event()
        v = start(procs, sp.worker, name, "jobs", "w", LOCK, log, rdy, stop, batch, f"victim{r}")
        assert rdy.wait(60)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(v.pid, signal.SIGKILL)
        v.join(10)
        assert v.exitcode == -signal.SIGKILL
        victims.append(log)
    deadline = time.monotonic() + 120
    while not finished(bus, "jobs", "w") and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for p in procs:
        p.join(30)
    assert finished(bus, "jobs", "w")

    counts: Counter = Counter()
    held_by_victims: set = set()
    acked_by_victims: set = set()
    for log in logs + victims:
        got, acked = read_log(log)
        counts.update(got)
        if log in victims:
            held_by_victims |= set(got) - acked
            acked_by_victims |= acked
    tails = {s.partition: s.latest for s in share.describe(bus, "jobs", "w")}
    everything = {(p, o) for p, t in tails.items() for o in range(t)}
    assert sum(tails.values()) == n
    assert set(counts) == everything                          # every record processed at least once
    dups = {k for k, c in counts.items() if c > 1}
    assert dups <= held_by_victims                            # only what a killed worker held comes again
    assert all(counts[k] == 1 for k in acked_by_victims)      # nothing acked is delivered again
    assert len(dups) <= batch * len(victims)


def test_stalled_worker_records_go_to_others_and_its_late_ack_is_refused(bus, procs):
    bus.create("jobs", TopicConfig(1, 64))
    name = bus.fabric.name
    prod = bus.producer("jobs")
    for i in range(5):
        prod.send(b"v%d" % i)
    out, go = CTX.Queue(), CTX.Event()
    p = start(procs, sp.hold_then_ack, name, "jobs", "q", LOCK, 3, out, go)
    held = out.get(timeout=60)
    assert held == [(0, 0), (0, 1), (0, 2)]
    os.kill(p.pid, signal.SIGSTOP)
    try:
        other = bus.share_consumer("jobs", group="q", lock_secs=LOCK, member="other")
        first = other.poll(10)
        assert [r.offset for r in first] == [3, 4]            # the stalled worker's are locked
        other.ack(first)
        time.sleep(LOCK + 0.2)
        again = other.poll(10)
        assert [(r.offset, r.delivery_count) for r in again] == [(0, 2), (1, 2), (2, 2)]
        other.ack(again)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    go.set()
    verdict = out.get(timeout=60)
    p.join(30)
    assert verdict == ("refused", [(0, 0), (0, 1), (0, 2)])
    (s,) = other.describe()
    assert (s.acked, s.floor, s.in_flight, s.expired_locks) == (5, 5, 0, 3)
