"""The batch paths on big rings, in process: ``send_batch`` of 4096 64-byte
rows (a 2-D array) and of 4096 keyed 100-byte values (lists),
``poll_batch(4096)`` walking the filled ring window by window, and a
``send_batch`` read back by ``poll_batch`` (the in-process round of
``grafos bench``). Every topic is one partition of 65536 slots, filled once so
that no timed round pays first-touch faults. ``benchmarks/test_bench_bus.py``
times them under pytest-benchmark; each is a :class:`~.calls.Call` whose
``run`` returns the messages it moved."""
from __future__ import annotations

from typing import Any

import numpy as np

from .calls import Call
from .grafos_runs import round_trip

CAPACITY = 1 << 16
BATCH = 4096           #: messages per timed call
KEY = b"k" * 16
VALUE = b"v" * 100
#: the calls, by name
NAMES = ("send_batch 64 B", "send_batch 100 B keyed list", "poll_batch 64 B", "send then poll_batch 64 B")


def bus() -> Any:
    """One in-process bus: a 100-byte topic ``b100`` and a 64-byte topic ``b64``,
    each one partition of :data:`CAPACITY` slots, filled once."""
    from ..mq.producer import Partitioner, Producer
    from ..mq.topic import TopicConfig, TopicManager
    mgr = TopicManager(size=256 << 20)
    mgr.create("b100", TopicConfig(1, CAPACITY, 160, 3600.0))
    mgr.create("b64", TopicConfig(1, CAPACITY, 104, 3600.0))
    p100, p64 = Producer("b100"), Producer("b64", Partitioner.RoundRobin)
    rows = _rows()
    for _ in range(CAPACITY // BATCH):
        p100.send_batch(mgr, [VALUE] * BATCH, keys=[KEY] * BATCH)
        p64.send_batch(mgr, rows)
    return mgr


def _rows() -> np.ndarray:
    return np.full((BATCH, 64), 0x5A, dtype=np.uint8)


class _Cursor:
    """Next read position, walking the filled ring window by window."""

    def __init__(self, mgr: Any, topic: str, step: int) -> None:
        self.mgr, self.topic, self.step = mgr, topic, step
        self.pos = 0

    def next(self, cons: Any) -> None:
        latest = self.mgr.describe(self.topic).partitions[0].latest
        earliest = max(0, latest - CAPACITY)
        if self.pos < earliest or self.pos + self.step > latest:
            self.pos = earliest
        cons.seek_partition(self.mgr, 0, self.pos)
        self.pos += self.step


def workload(name: str, mgr: Any) -> Call:
    """The call ``name`` (one of :data:`NAMES`) on the bus ``mgr`` (see :func:`bus`)."""
    from ..mq.consumer import Consumer
    from ..mq.producer import Partitioner, Producer
    if name == "send_batch 64 B":
        prod, rows = Producer("b64", Partitioner.RoundRobin), _rows()

        def send_rows() -> int:
            prod.send_batch(mgr, rows)
            return BATCH
        return Call(name, send_rows)
    if name == "send_batch 100 B keyed list":
        prod, values, keys = Producer("b100"), [VALUE] * BATCH, [KEY] * BATCH

        def send_list() -> int:
            prod.send_batch(mgr, values, keys=keys)
            return BATCH
        return Call(name, send_list)
    if name == "poll_batch 64 B":
        cons = Consumer("b64", max_batch=BATCH)
        cur = _Cursor(mgr, "b64", BATCH)
        return Call(name, lambda: len(cons.poll_batch(mgr, BATCH)), setup=lambda: cur.next(cons))
    if name == "send then poll_batch 64 B":
        prod = Producer("b64", Partitioner.RoundRobin)
        cons = Consumer("b64", max_batch=BATCH)
        _Cursor(mgr, "b64", BATCH).next(cons)

        def at_end() -> None:           # each round reads what it sent
            cons.seek_partition(mgr, 0, mgr.describe("b64").partitions[0].latest)
        return Call(name, round_trip(mgr, [(prod, cons)], "batch", BATCH, 64), setup=at_end)
    raise ValueError(f"unknown batch call {name!r}; one of {', '.join(NAMES)}")
