"""Races between processes attaching to one named bus and changing its
directory at the same moment: one winner, clear errors for the others, and
no half-made or leaked state."""
from __future__ import annotations

import multiprocessing as mp

from helpers import mp_helpers as h
from grafos.fabric import Fabric
from grafos.mq.topic import TopicManager

CTX = mp.get_context("spawn")
RACERS = 6


def race(procs, target, *args) -> list:
    """Start RACERS processes running ``target(*args, start, out)``, release them
    together, and collect one report from each."""
    go, out = CTX.Event(), CTX.Queue()
    for _ in range(RACERS):
        p = CTX.Process(target=target, args=(*args, go, out), daemon=True)
        p.start()
        procs.append(p)
    go.set()
    reports = [out.get(timeout=120) for _ in range(RACERS)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return reports


def test_processes_creating_one_topic_at_once_should_end_with_one_topic(shm_name, procs):
    with TopicManager.open(shm_name, size=64 << 20) as mgr:
        leases_before = mgr.fabric.info().leases_live
        reports = race(procs, h.create_topic, shm_name, "contested", 3)
        outcomes = sorted(kind for _, kind, _ in reports)
        assert outcomes == ["AlreadyExists"] * (RACERS - 1) + ["created"]
        for _, kind, msg in reports:
            if kind == "AlreadyExists":
                assert "contested" in msg and "exists" in msg
        assert mgr.topics() == ["contested"]
        d = mgr.describe("contested")
        assert len(d.partitions) == 3 and all(p.alive for p in d.partitions)
        # the losers took no partition leases (nothing leaked until retention)
        assert mgr.fabric.info().leases_live == leases_before + 3


def test_processes_attaching_to_a_new_bus_at_once_should_share_one_fabric(shm_name, procs):
    assert not Fabric.exists(shm_name)
    reports = race(procs, h.open_bus, shm_name)
    assert all(kind == "ok" for _, kind, _, _ in reports), reports
    created = [pid for pid, _, made, _ in reports if made]
    assert len(created) == 1, f"{len(created)} processes formatted the fabric"
    with TopicManager.open(shm_name, create=False) as mgr:
        assert mgr.topics() == []
        assert mgr.fabric.info().created is False


def test_processes_creating_different_topics_at_once_should_all_succeed(shm_name, procs):
    with TopicManager.open(shm_name, size=64 << 20) as mgr:
        go, out = CTX.Event(), CTX.Queue()
        for i in range(RACERS):
            p = CTX.Process(target=h.create_topic, args=(shm_name, f"t{i}", 2, go, out), daemon=True)
            p.start()
            procs.append(p)
        go.set()
        reports = [out.get(timeout=120) for _ in range(RACERS)]
        assert sorted(kind for _, kind, _ in reports) == ["created"] * RACERS
        assert mgr.topics() == sorted(f"t{i}" for i in range(RACERS))
        assert all(all(p.alive for p in mgr.describe(f"t{i}").partitions) for i in range(RACERS))
