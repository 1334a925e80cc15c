"""A reader's GateView spares the scan of the metadata between its holds, and
the gates it stores are the ones a full scan would store, whoever else
changes the records meanwhile, from whichever handle of the bus."""
from __future__ import annotations

import logging
import multiprocessing as mp
import random
import signal
import threading
import time

import pytest

from grafos._native import lib
from grafos.errors import BufferFull, LockTimeout
from grafos.mq import gate
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.core_procs import die_holding_the_lock

MiB = 1 << 20
CAP = 8
TTL = 2.0


def _gate(mgr: TopicManager) -> int:
    """The gate stored in the ring header (describe would recompute it first)."""
    st = mgr.topic("t").partitions[0].gate_state("gate of 't' partition 0")
    assert st is not None
    return st.gate


def _filled(shm_name: str) -> tuple[TopicManager, TopicManager]:
    """Two handles of a bus whose block topic "t" holds CAP messages."""
    a = TopicManager.open(shm_name, size=16 * MiB)
    b = TopicManager.open(shm_name)
    a.create("t", TopicConfig(1, CAP, 128, 3600.0, on_full="block"))
    prod = Producer("t")
    for i in range(CAP):
        prod.send(a, b"%d" % i)
    return a, b


def test_a_view_serves_the_next_hold_without_a_scan_until_someone_else_writes(shm_name, monkeypatch):
    a, b = _filled(shm_name)
    scans = []
    real = gate._records
    monkeypatch.setattr(gate, "_records", lambda *args: scans.append(args) or real(*args))
    view = gate.GateView()
    ttl = int(TTL * 1e9)
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 2}, ttl, view=view)
    assert len(scans) == 1
    assert _gate(a) == 2 + CAP
    n = len(scans)
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 5}, ttl, view=view)
    assert len(scans) == n, "nothing else changed: the view's records serve"
    assert _gate(a) == 5 + CAP
    # another handle of the bus puts a reader behind: the epoch moved, the next hold scans
    gate.hold(b, "t", "c:y", gate.CONSUMER, {0: 3}, ttl)
    n = len(scans)
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 6}, ttl, view=view)
    assert len(scans) == n + 1
    assert _gate(a) == 3 + CAP
    # so does a commit of offsets (a group's gate position)
    gate.hold(a, "t", "g:g", gate.GROUP, {0: None}, ttl)
    FabricOffsetStore(b).commit("g", "t", 0, 1)
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 7}, ttl, view=view)
    assert _gate(a) == 1 + CAP
    # and the view scans again after RESCAN_AFTER seconds even if nothing changed
    n = len(scans)
    later = time.time() + gate.RESCAN_AFTER + 0.01
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 7}, ttl, now=later, view=view)
    assert len(scans) == n + 1
    b.close()
    a.close()


def test_holds_through_views_store_the_gate_a_full_scan_stores(shm_name, monkeypatch):
    """A model run: readers with views of their own on two handles, others
    without, releases, commits, sends and a clock that lets leases lapse and
    records be collected, positions past the end and behind the ring. After every step the gate a view's hold left is
    recomputed from a full scan: they must agree."""
    rnd = random.Random(4321)
    scans = []
    real = gate._records
    monkeypatch.setattr(gate, "_records", lambda *args: scans.append(args) or real(*args))
    a = TopicManager.open(shm_name, size=16 * MiB)
    b = TopicManager.open(shm_name)
    a.create("t", TopicConfig(1, CAP, 128, 3600.0, on_full="raise"))
    prod = Producer("t")
    store = FabricOffsetStore(a)
    readers = {f"c:{i}": (rnd.choice([a, b]), gate.GateView()) for i in range(3)}
    now = time.time()
    tail = 0
    ttl = int(TTL * 1e9)
    seen = {"reused": 0, "gated": 0, "released": 0, "lapsed": 0}
    for step in range(600):
        now += rnd.choice([0.0, 0.0, 0.0, 0.0, 0.05, 0.1, 0.7, 2.5, 30.0])
        name = rnd.choice(list(readers))
        mgr, view = readers[name]
        op = rnd.choice(["hold", "hold", "hold", "other", "release", "commit", "rejoin", "send", "send"])
        earliest = max(0, tail - CAP)
        if op == "hold":
            n = len(scans)
            gate.hold(mgr, "t", name, gate.CONSUMER, {0: rnd.randint(earliest, tail)}, ttl, now=now, view=view)
            seen["reused"] += len(scans) == n
        elif op == "other":     # at times past the end, as an offset from before a restart
            gate.hold(rnd.choice([a, b]), "t", "c:other", gate.CONSUMER, {0: rnd.randint(earliest, tail + 3)},
                      ttl, now=now)
        elif op == "rejoin":    # a group back at its old commit, which the ring may have passed
            gate.hold(b, "t", "g:g", gate.GROUP, {0: None}, ttl, now=now)
        elif op == "release":
            gate.release(rnd.choice([a, b]), "t", name, now=now)
            seen["released"] += 1
        elif op == "commit":
            gate.hold(a, "t", "g:g", gate.GROUP, {0: None}, ttl, now=now)
            store.commit("g", "t", 0, rnd.randint(earliest, tail))
        else:
            try:
                prod.send(a, b"%d" % step)
                tail += 1
            except BufferFull:
                pass          # full: the gate said so
        if op != "hold":
            continue
        held = _gate(a)
        gate.recompute(b, "t", now=now)
        assert held == _gate(a), f"step {step}: a view's hold stored {held}, a full scan {_gate(a)}"
        seen["lapsed"] += any(not r.live for r in gate.describe(a, "t", now=now)[0].readers)
        seen["gated"] += held != 0
    # the run went through every case: holds served by a view, lapsed readers, releases
    assert min(seen.values()) >= 10, seen
    b.close()
    a.close()


def test_a_view_clamps_positions_into_the_ring_as_a_scan_does(shm_name):
    a = TopicManager.open(shm_name, size=16 * MiB)
    b = TopicManager.open(shm_name)
    a.create("t", TopicConfig(1, CAP, 128, 3600.0, on_full="raise"))
    prod = Producer("t")
    ttl = int(TTL * 1e9)
    now = time.time()
    view = gate.GateView()
    for i in range(CAP):
        prod.send(a, b"%d" % i)
    # a position past the end (an offset from before a restart) gates from the end
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 100}, ttl, now=now, view=view)
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 101}, ttl, now=now, view=view)
    assert _gate(a) == CAP + CAP
    # a reader back at a position the ring has passed gates from the oldest slot
    gate.hold(b, "t", "c:y", gate.CONSUMER, {0: 0}, ttl, now=now - 10)     # lapsed already
    for i in range(3):
        prod.send(a, b"%d" % i)                 # the ring moves on past y
    gate.hold(b, "t", "c:y", gate.CONSUMER, {0: 0}, ttl, now=now)          # y is back, behind the ring
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 101}, ttl, now=now, view=view)   # scans: the epoch moved
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 102}, ttl, now=now, view=view)   # from the view
    held = _gate(a)
    assert held == 3 + CAP
    gate.recompute(b, "t", now=now)
    assert held == _gate(a)
    b.close()
    a.close()


def _held_view(shm_name: str):
    """A bus, a second handle of it, and a reader's view after its first (scanning) hold."""
    a, b = _filled(shm_name)
    view = gate.GateView()
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 1}, int(TTL * 1e9), view=view)
    return a, b, view


def test_a_hold_through_a_view_takes_the_lock_in_its_core_call_bounded_as_the_lock_is(shm_name, monkeypatch):
    a, b, view = _held_view(shm_name)
    ttl = int(TTL * 1e9)
    scans = []
    real = gate._records
    monkeypatch.setattr(gate, "_records", lambda *args: scans.append(args) or real(*args))
    assert lib.gf_lock(b.fabric.handle, 0) == 0      # as another process holds it
    a.fabric.lock_timeout = 0.05
    t0 = time.monotonic()
    with pytest.raises(LockTimeout):
        gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 4}, ttl, view=view)
    assert time.monotonic() - t0 < 5
    assert _gate(a) == 1 + CAP, "nothing stored"
    a.fabric.lock_timeout = 10.0
    timer = threading.Timer(0.2, lib.gf_unlock, args=(b.fabric.handle,))
    timer.start()
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 4}, ttl, view=view)      # waits, then publishes
    timer.join()
    assert _gate(a) == 4 + CAP
    assert len(scans) == 1, "the failed hold left its view to the next scan"
    gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 5}, ttl, view=view)
    assert _gate(a) == 5 + CAP and len(scans) == 1
    assert not lib.gf_lock_held(a.fabric.handle) and lib.gf_lock(b.fabric.handle, 0) == 0, "given back"
    assert lib.gf_unlock(b.fabric.handle) == 0
    # inside the fabric lock the same hold publishes under it, without a scan either
    with a.fabric.locked():
        gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 6}, ttl, view=view)
        assert lib.gf_lock_held(a.fabric.handle)
    assert _gate(a) == 6 + CAP and len(scans) == 1
    b.close()
    a.close()


def test_a_hold_through_a_view_takes_the_lock_over_from_a_dead_holder(shm_name, caplog):
    a, b, view = _held_view(shm_name)
    child = mp.get_context("spawn").Process(target=die_holding_the_lock, args=(shm_name,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    before = a.fabric.info().lock_recoveries
    with caplog.at_level(logging.WARNING, logger="grafos"):
        gate.hold(a, "t", "c:x", gate.CONSUMER, {0: 3}, int(TTL * 1e9), view=view)
    assert _gate(a) == 3 + CAP
    assert a.fabric.info().lock_recoveries == before + 1
    assert any("over from a holder that died" in r.getMessage() for r in caplog.records)
    assert lib.gf_lock(b.fabric.handle, 0) == 0 and lib.gf_unlock(b.fabric.handle) == 0
    b.close()
    a.close()
