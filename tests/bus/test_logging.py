"""grafos logs what an operator needs under the ``grafos`` logger (a
NullHandler by default): rebalances, fences, expired and reaped leases, lock
takeovers, producers blocked for more than a second, transactions aborted by
expiry, JetStream reconnects; and nothing per message."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time

import pytest

from helpers import mp_helpers as h
from helpers.mp_helpers import start
from grafos.errors import BufferFull, Fenced
from grafos.leasekit import RenewalManager
from grafos.mq import transaction
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager


def records(caplog, logger: str, level: int = logging.DEBUG) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= level]


def test_the_grafos_logger_has_a_null_handler_and_areas_below_it():
    import grafos  # noqa: F401
    root = logging.getLogger("grafos")
    assert any(isinstance(hd, logging.NullHandler) for hd in root.handlers)
    from grafos.mq import group
    assert group._log.name == "grafos.group" and group._log.parent is root


def test_a_rebalance_is_logged_with_who_took_and_gave_back_what(caplog):
    caplog.set_level(logging.INFO, logger="grafos")
    g = ConsumerGroup("crew", "jobs", 4, 30.0)
    g.claim("a")
    g.claim("b")
    assert g.heartbeat("a") == [0, 1]          # gives 2 and 3 back to b
    got = [r.getMessage() for r in records(caplog, "grafos.group", logging.INFO)]
    assert got[0] == "group 'crew' on 'jobs' rebalanced: member 'a' took [0, 1, 2, 3], gave back [], " \
                     "owns [0, 1, 2, 3] (1 live member(s))"
    assert "member 'a' took [], gave back [2, 3], owns [0, 1]" in got[-1]
    caplog.clear()
    g.heartbeat("a")                            # nothing changes: nothing logged
    assert not records(caplog, "grafos.group")
    assert g.claim("b") == [2, 3]
    caplog.clear()
    g.leave("b")
    assert [r.getMessage() for r in records(caplog, "grafos.group")] == [
        "group 'crew' on 'jobs' rebalanced: member 'b' left, gave back [2, 3]"]


def test_a_fenced_commit_is_logged_as_a_warning(caplog):
    caplog.set_level(logging.INFO, logger="grafos")
    mgr = TopicManager(size=8 << 20)
    mgr.create("jobs", TopicConfig(1, 16, 256))
    store = FabricOffsetStore(mgr)
    g = ConsumerGroup("crew", "jobs", 1, 10.0, mgr=mgr)
    g.claim("old", now=time.time() - 60)
    g.claim("new")                               # old is stale: new takes partition 0
    with pytest.raises(Fenced):
        g.commit(store, "old", "jobs", {0: 1})
    warn = records(caplog, "grafos.group", logging.WARNING)
    assert len(warn) == 1 and "member 'old' fenced on partition(s) [0]" in warn[0].getMessage()
    assert "'new'" in warn[0].getMessage()


def test_reaped_leases_and_a_lease_that_expired_before_its_renewal_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="grafos")
    mgr = TopicManager(size=8 << 20)
    mgr.create("t", TopicConfig(2, 16, 256, retention_secs=600.0))
    renewals = RenewalManager(mgr, topic="t")
    renewals.register_topic("t")
    later = time.time() + 3600
    renewals.tick(now=later)
    warn = records(caplog, "grafos.leasekit", logging.WARNING)
    assert len(warn) == 2 and all("expired before it was renewed" in r.getMessage() for r in warn)
    assert mgr.fabric.reap(now=later) == 2
    info = records(caplog, "grafos.fabric", logging.INFO)
    assert [r.getMessage() for r in info] == [f"reaped 2 expired lease(s) of {mgr.fabric!r}"]
    caplog.clear()
    assert mgr.fabric.reap(now=later) == 0 and not records(caplog, "grafos.fabric")


def test_taking_the_lock_over_from_a_dead_holder_is_logged(caplog, shm_name, procs):
    caplog.set_level(logging.INFO, logger="grafos")
    mgr = TopicManager.open(shm_name, size=8 << 20)
    held = mp.get_context("spawn").Event()
    holder = start(procs, h.hold_lock, shm_name, held)
    assert held.wait(60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(30)
    mgr.create("after", TopicConfig(1, 16, 256))
    warn = records(caplog, "grafos.fabric", logging.WARNING)
    assert [r.getMessage() for r in warn] == [
        f"took the metadata lock of {mgr.fabric!r} over from a holder that died"]
    mgr.close()


def test_a_producer_blocked_for_more_than_a_second_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="grafos")
    mgr = TopicManager(size=8 << 20)
    mgr.create("t", TopicConfig(1, 4, 128, 3600.0, on_full="block"))
    g = ConsumerGroup("slow", "t", 1, 3600.0, mgr=mgr)
    g.claim("w")                                  # a live group that reads nothing gates the ring
    prod = Producer("t")
    for _ in range(4):
        prod.send(mgr, b"m")
    with pytest.raises(BufferFull):
        prod.send(mgr, b"m", timeout=0.5)         # under a second: not logged
    assert not records(caplog, "grafos.producer")
    with pytest.raises(BufferFull):
        prod.send(mgr, b"m", timeout=1.6)
    warn = records(caplog, "grafos.producer", logging.WARNING)
    assert len(warn) == 1
    assert "producer of 't' blocked for more than 1 s: partition 0 is full" in warn[0].getMessage()


def test_a_transaction_aborted_by_expiry_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="grafos")
    mgr = TopicManager(size=8 << 20)
    mgr.create("t", TopicConfig(1, 16, 256))
    prod = Producer("t", transactional_id="payments", transaction_ttl=5.0)
    prod.begin(mgr)
    prod.send(mgr, b"unfinished")
    assert transaction.resolve(mgr, now=time.time() + 60) == 1
    warn = records(caplog, "grafos.transaction", logging.WARNING)
    assert len(warn) == 1
    assert "of producer 'payments' aborted: its registration expired" in warn[0].getMessage()


def test_a_jetstream_reconnect_is_logged(caplog, tmp_path):
    from helpers.nats_helpers import NatsServer
    caplog.set_level(logging.INFO, logger="grafos")
    srv = NatsServer(str(tmp_path)).start()
    try:
        mgr = TopicManager.connect(srv.url)
        srv.kill()
        srv.start()
        deadline = time.monotonic() + 20
        while not any("reconnected" in r.getMessage() for r in records(caplog, "grafos.jetstream")):
            assert time.monotonic() < deadline, "no reconnect was logged"
            time.sleep(0.1)
        msgs = [r.getMessage() for r in records(caplog, "grafos.jetstream", logging.WARNING)]
        assert any("disconnected from the JetStream server" in m for m in msgs)
        assert any("reconnected to the JetStream server" in m for m in msgs)
        mgr.close()
    finally:
        srv.stop()


def test_nothing_is_logged_per_message(caplog):
    caplog.set_level(logging.DEBUG, logger="grafos")
    mgr = TopicManager(size=16 << 20)
    mgr.create("t", TopicConfig(4, 256, 256))
    store = FabricOffsetStore(mgr)
    g = ConsumerGroup("g", "t", 4, 30.0, mgr=mgr)
    g.claim("w")
    caplog.clear()
    prod = Producer("t")
    c = g.consumer("w")
    c.seek(mgr, store, SeekPolicy.Committed)
    got = 0
    for i in range(1000):
        prod.send_keyed(mgr, b"k%d" % i, b"v")
        if i % 100 == 99:
            got += len(c.poll(mgr, 200))
            c.commit(store)
            g.heartbeat("w")
    assert got == 1000
    assert [r.getMessage() for r in caplog.records if r.name.startswith("grafos")] == []
