"""Workers for the exactly-once tests (spawned processes import them from here).

A consume-transform-produce worker owns one input partition ``p`` through the
transactional id ``worker-<p>``: registering fences any older worker of that
partition and finishes (aborts or rolls forward) what it left. It reads from
the committed offset and, per batch, in one transaction: sends one output
per input (same key, value ``out:`` + input value) and commits the consumed
offsets to a FabricOffsetStore.

``die`` makes it kill itself (SIGKILL) at a chosen point of a chosen batch:
``before_produce``, ``mid_batch``, ``after_produce`` (before the commit),
``mid_commit`` (the commit decided, its markers not yet written).
"""
from __future__ import annotations

import os
import signal
import time

from grafos.mq import transaction
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

POINTS = ("before_produce", "mid_batch", "after_produce", "mid_commit")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def worker(bus: str, part: int, batch: int, die_batch: int, die_point: str, idle_exit: float,
           pause: float = 0.0) -> None:
    """``pause``: seconds of "processing" after the poll, after each send and
    after the sends (so that a kill from outside lands anywhere in a batch)."""
    mgr = TopicManager.open(bus, create=False)
    store = FabricOffsetStore(mgr)
    prod = Producer("out", transactional_id=f"worker-{part}", transaction_ttl=2.0)
    cons = Consumer("in", "eos")
    cons.assign([part])
    prod.register(mgr)      # fences an older worker of this partition, finishes what it left
    cons.seek(mgr, store, SeekPolicy.Committed)
    n = 0
    while True:
        msgs = cons.poll(mgr, batch, timeout=idle_exit)
        if not msgs:
            return          # the input is drained
        if n == die_batch and die_point == "before_produce":
            _die()
        txn = prod.begin(mgr)
        time.sleep(pause)
        for i, (_, m) in enumerate(msgs):
            if n == die_batch and die_point == "mid_batch" and i == len(msgs) // 2:
                _die()
            prod.send_keyed(mgr, m.key, b"out:" + m.value)
            time.sleep(pause)
        if n == die_batch and die_point == "after_produce":
            _die()
        txn.commit_offsets(cons, store)
        if n == die_batch and die_point == "mid_commit":
            transaction.write_markers = lambda *a, **k: _die()      # decided, no marker yet
        txn.commit()
        n += 1
