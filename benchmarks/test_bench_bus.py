"""Bus hot paths for regression tracking: ``Producer.send_keyed``,
``Consumer.poll``, ``Producer.send_batch`` and ``Consumer.poll_batch``, in
process, through the public API. Each timed call moves a known number of
messages; ``extra_info["messages_per_s"]`` is computed from the median round.
Speeds are reported, never asserted (``grafos bench`` puts them beside peers).

    python -m pytest benchmarks/test_bench_bus.py -q
    python -m pytest benchmarks/test_bench_bus.py --benchmark-compare   # against a saved run
"""
from __future__ import annotations

import numpy as np
import pytest

from grafos.mq.consumer import Consumer
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager

CAPACITY = 1 << 16
SINGLE = 1000          # messages per timed call on the single-message paths
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


def test_send_keyed(benchmark, bus):
    benchmark.group = "bus single"
    prod = Producer("b100")
    send = prod.send_keyed

    def run() -> None:
        for _ in range(SINGLE):
            send(bus, KEY, VALUE)

    benchmark.pedantic(run, rounds=200, iterations=1, warmup_rounds=5)
    _report(benchmark, SINGLE)


def test_poll(benchmark, bus):
    benchmark.group = "bus single"
    cons = Consumer("b100", max_batch=SINGLE)
    cur = _Cursor(bus, "b100", SINGLE)

    def run() -> int:
        return len(cons.poll(bus, SINGLE))

    got = benchmark.pedantic(run, setup=lambda: cur.next(cons), rounds=200, iterations=1, warmup_rounds=5)
    assert got == SINGLE
    _report(benchmark, SINGLE)


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

    def run() -> int:
        prod.send_batch(bus, ROWS)
        return len(cons.poll_batch(bus, BATCH))

    def setup() -> None:       # start at the end: each round reads what it sent
        cons.seek_partition(bus, 0, bus.describe("b64").partitions[0].latest)

    got = benchmark.pedantic(run, setup=setup, rounds=300, iterations=1, warmup_rounds=5)
    assert got == BATCH
    _report(benchmark, BATCH)


# ---- the references of the single-message goals, in the same session -------------------
def test_queue_put_reference(benchmark):
    """``queue.Queue().put`` of the same 100-byte value, SINGLE per call (send_keyed's bar)."""
    import queue

    q: queue.Queue = queue.Queue()

    def run() -> None:
        put = q.put
        for _ in range(SINGLE):
            put(VALUE)
        q.queue.clear()

    benchmark(run)
    _report(benchmark, SINGLE)


def test_queue_get_reference(benchmark):
    """``queue.Queue().get`` of SINGLE items per call (poll's bar); the refill is untimed."""
    import queue

    q: queue.Queue = queue.Queue()

    def setup() -> None:
        q.queue.extend([VALUE] * SINGLE)

    def run() -> None:
        get = q.get
        for _ in range(SINGLE):
            get()

    benchmark.pedantic(run, setup=setup, rounds=200, iterations=1)
    _report(benchmark, SINGLE)
