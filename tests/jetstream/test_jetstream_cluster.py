"""The JetStream bus on a real 3-node cluster (loopback ports): an R3 topic,
two producers and two group consumers in separate processes, and the stream
leader of partition 0 SIGKILLed mid-run, then restarted on its store.
Every acknowledged message is consumed at least once and none is corrupted,
duplicates stay within the batches that were polled but not committed, and
no acknowledged commit is lost."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from grafos.errors import Unavailable
from grafos.jetstream import KvOffsetStore
from grafos.mq.producer import kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.nats_helpers import start_cluster

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers", "js_cluster_worker.py")
BATCH = 50


def _wait_running(procs: list[subprocess.Popen], logs: list[str], wait: float = 90.0) -> None:
    """Until every worker has connected and logged its first line: the leader
    is killed mid-run, not while a loaded machine is still starting a worker."""
    deadline = time.monotonic() + wait
    while not all(os.path.exists(f) and os.path.getsize(f) > 0 for f in logs):
        assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
        assert time.monotonic() < deadline, "a worker logged nothing before the deadline"
        time.sleep(0.1)


def _read(path: str) -> list[list[str]]:
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


@pytest.mark.cluster
def test_should_lose_no_acknowledged_message_or_commit_when_the_leader_is_killed(tmp_path):
    nodes = start_cluster(str(tmp_path))
    procs: list[subprocess.Popen] = []
    try:
        urls = [n.url for n in nodes]
        mgr = TopicManager.connect(urls, replicas=3, timeout=10.0)
        mgr.create("orders", TopicConfig(num_partitions=2, partition_capacity=100_000, partition_stride=256))
        stop = str(tmp_path / "stop")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__)] + sys.path))
        # every process lists the servers in its own order: each first talks to another node
        for role, name, k in (("produce", "p1", 0), ("produce", "p2", 1),
                              ("consume", "c1", 1), ("consume", "c2", 2)):
            servers = ",".join(urls[k:] + urls[:k])
            procs.append(subprocess.Popen([sys.executable, WORKER, role, servers, name,
                                           str(tmp_path / f"{name}.log"), stop], env=env))
        _wait_running(procs, [str(tmp_path / f"{n}.log") for n in ("p1", "p2", "c1", "c2")])
        time.sleep(1.0)
        leader = mgr.leaders("orders")[0]
        victim = next(n for n in nodes if n.name == leader)
        victim.kill()
        time.sleep(4.0)
        victim.start()
        time.sleep(3.0)
        open(stop, "w").close()                     # producers stop
        for p in procs[:2]:
            assert p.wait(30) == 0
        store = KvOffsetStore(mgr)
        deadline = time.monotonic() + 30
        while True:                                 # the group drains the topic
            try:
                ends = [p.latest for p in mgr.describe("orders").partitions]
            except Unavailable:                     # this client still reconnecting after the failover
                assert time.monotonic() < deadline, "describe went unanswered until the deadline"
                continue
            if [store.committed("workers", "orders", p) for p in range(2)] == ends:
                break
            assert time.monotonic() < deadline, (ends, store.items(), [
                r for name in ("c1", "c2") for r in _read(str(tmp_path / f"{name}.log")) if r[0] == "E"])
            time.sleep(0.2)
        open(stop + ".drained", "w").close()
        for p in procs[2:]:
            assert p.wait(30) == 0
        errors = [r for name in ("p1", "p2", "c1", "c2")
                  for r in _read(str(tmp_path / f"{name}.log")) if r[0] == "E"]
        print(f"errors seen by the workers while the leader was down: {errors}")

        acked = {}
        for name in ("p1", "p2"):
            for rec in _read(str(tmp_path / f"{name}.log")):
                if rec[0] == "A":
                    acked[(int(rec[1]), int(rec[2]))] = rec[3]
        consumed: Counter = Counter()
        commits: dict[int, int] = {}
        rewinds = 0
        for name in ("c1", "c2"):
            for rec in _read(str(tmp_path / f"{name}.log")):
                if rec[0] == "C":
                    consumed[(int(rec[1]), int(rec[2]), rec[3])] += 1
                elif rec[0] == "K":
                    commits[int(rec[1])] = max(commits.get(int(rec[1]), 0), int(rec[2]))
                elif rec[0] == "R":
                    rewinds += 1
        assert len(acked) > 200
        seen = {(p, off): v for p, off, v in consumed}
        # every acknowledged message was consumed, at its offset, unchanged
        assert all(seen.get(k) == v for k, v in acked.items())
        # nothing corrupted: every consumed message is one a producer sent, on its key's partition
        for (p, off, v) in consumed:
            name, n = v.rsplit("-", 1)
            assert name in ("p1", "p2") and kafka_partition(f"key-{int(n) % 17}".encode(), 2) == p
        # offsets are dense and the group read all of them
        ends = [p.latest for p in mgr.describe("orders").partitions]
        assert {k for k in seen} == {(p, off) for p in range(2) for off in range(ends[p])}
        # duplicates only from batches polled but not committed before a rewind
        dups = sum(c - 1 for c in consumed.values())
        assert dups <= BATCH * rewinds, (dups, rewinds)
        # no acknowledged commit lost: the store is at or past every one of them
        final = {p: store.committed("workers", "orders", p) for p in range(2)}
        assert all(final[p] >= off for p, off in commits.items()) and final == dict(enumerate(ends))
        mgr.delete("orders")
        mgr.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for n in nodes:
            n.stop()
