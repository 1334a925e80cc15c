"""Bus hot paths for regression tracking, in process, through the public API:
the per-message calls of ``grafos.benchsuite.calls`` (``send_keyed``, ``send``,
``poll(1000)``, the list and 2-D batches, and their ``queue.Queue`` references,
the workloads ``bus_ratios.py`` and ``grafos bench -s calls`` time), and
``Producer.send_batch`` / ``Consumer.poll_batch`` of 4096 messages on rings of
65536 slots. Each timed call moves a known number of messages;
``extra_info["messages_per_s"]`` is computed from the median round. Speeds are
reported, never asserted (``grafos bench`` puts them beside peers).

    python -m pytest benchmarks/test_bench_bus.py -q
    python -m pytest benchmarks/test_bench_bus.py --benchmark-compare   # against a saved run
"""
from __future__ import annotations

import numpy as np
import pytest

from grafos.benchsuite import calls, grafos_runs
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager

CAPACITY = 1 << 16
BATCH = 4096           # messages per timed call on the batch paths
KEY = b"k" * 16
VALUE = b"v" * 100
ROWS = np.full((BATCH, 64), 0x5A, dtype=np.uint8)


@pytest.fixture(scope="module")
def bus():
    """One in-process bus: a 100-byte topic and a 64-byte topic, each one partition
    of 65536 slots, filled once so that no timed round pays first-touch faults."""
    mgr = TopicManager(size=256 << 20)
    mgr.create("b100", TopicConfig(1, CAPACITY, 160, 3600.0))
    mgr.create("b64", TopicConfig(1, CAPACITY, 104, 3600.0))
    p100, p64 = Producer("b100"), Producer("b64", Partitioner.RoundRobin)
    for _ in range(CAPACITY // BATCH):
        p100.send_batch(mgr, [VALUE] * BATCH, keys=[KEY] * BATCH)
        p64.send_batch(mgr, ROWS)
    yield mgr
    mgr.close()


def _report(benchmark, messages: int) -> None:
    benchmark.extra_info["messages_per_call"] = messages
    stats = getattr(benchmark.stats, "stats", None) if benchmark.stats else None
    if stats is not None:           # None under --benchmark-disable
        benchmark.extra_info["messages_per_s"] = messages / stats.median


class _Cursor:
    """Next read position, walking the filled ring window by window."""

    def __init__(self, mgr: TopicManager, topic: str, step: int) -> None:
        self.mgr, self.topic, self.step = mgr, topic, step
        self.pos = 0

    def next(self, cons: Consumer) -> None:
        latest = self.mgr.describe(self.topic).partitions[0].latest
        earliest = max(0, latest - CAPACITY)
        if self.pos < earliest or self.pos + self.step > latest:
            self.pos = earliest
        cons.seek_partition(self.mgr, 0, self.pos)
        self.pos += self.step


@pytest.fixture(scope="module")
def calls_bus():
    """The bus of ``grafos.benchsuite.calls``: rings that fit the caches."""
    mgr = calls.bus()
    yield mgr
    mgr.close()


@pytest.mark.parametrize("name", calls.CALLS[:7])
def test_call(benchmark, calls_bus, name: str):
    """One of the calls beside ``queue.Queue``; its untimed ``after`` runs
    before the next round's ``setup``."""
    benchmark.group = "bus calls"
    w = calls.workload(name, calls_bus)

    def setup() -> None:
        if w.after is not None:
            w.after()
        if w.setup is not None:
            w.setup()

    messages = calls.BATCH if name.startswith("send_batch") else calls.N
    got = benchmark.pedantic(w.run, setup=setup, rounds=200, iterations=1, warmup_rounds=5)
    assert got >= messages
    _report(benchmark, messages)


def test_send_batch(benchmark, bus):
    benchmark.group = "bus batch 64 B"
    prod = Producer("b64", Partitioner.RoundRobin)
    benchmark.pedantic(lambda: prod.send_batch(bus, ROWS), rounds=300, iterations=1, warmup_rounds=5)
    _report(benchmark, BATCH)


def test_send_batch_keyed_list(benchmark, bus):
    benchmark.group = "bus batch 100 B keyed"
    prod = Producer("b100")
    values, keys = [VALUE] * BATCH, [KEY] * BATCH
    benchmark.pedantic(lambda: prod.send_batch(bus, values, keys=keys), rounds=200, iterations=1,
                       warmup_rounds=5)
    _report(benchmark, BATCH)


def test_poll_batch(benchmark, bus):
    benchmark.group = "bus batch 64 B"
    cons = Consumer("b64", max_batch=BATCH)
    cur = _Cursor(bus, "b64", BATCH)

    def run() -> int:
        return len(cons.poll_batch(bus, BATCH))

    got = benchmark.pedantic(run, setup=lambda: cur.next(cons), rounds=300, iterations=1, warmup_rounds=5)
    assert got == BATCH
    _report(benchmark, BATCH)


def test_send_then_poll_batch(benchmark, bus):
    """The in-process round of ``grafos bench``: send a batch, read it back."""
    benchmark.group = "bus batch 64 B"
    prod = Producer("b64", Partitioner.RoundRobin)
    cons = Consumer("b64", max_batch=BATCH)
    cur = _Cursor(bus, "b64", BATCH)
    cur.next(cons)
    run = grafos_runs.round_trip(bus, [(prod, cons)], "batch", BATCH, 64)

    def setup() -> None:       # start at the end: each round reads what it sent
        cons.seek_partition(bus, 0, bus.describe("b64").partitions[0].latest)

    got = benchmark.pedantic(run, setup=setup, rounds=300, iterations=1, warmup_rounds=5)
    assert got == BATCH
    _report(benchmark, BATCH)
