"""Bus hot paths for regression tracking, in process, through the public API:
the per-message calls of ``grafos.benchsuite.calls`` (``send_keyed``, ``send``,
``poll(1000)``, the list and 2-D batches, and their ``queue.Queue`` references,
the workloads ``bus_ratios.py`` and ``grafos bench -s calls`` time), and
the batch calls of ``grafos.benchsuite.batches`` (``send_batch`` /
``poll_batch`` of 4096 messages on rings of 65536 slots). Each timed call moves a known number of messages;
``extra_info["messages_per_s"]`` is computed from the median round. Speeds are
reported, never asserted (``grafos bench`` puts them beside peers).

    python -m pytest benchmarks/test_bench_bus.py -q
    python -m pytest benchmarks/test_bench_bus.py --benchmark-compare   # against a saved run
"""
from __future__ import annotations

import pytest

from grafos.benchsuite import batches, calls


def _report(benchmark, messages: int) -> None:
    benchmark.extra_info["messages_per_call"] = messages
    stats = getattr(benchmark.stats, "stats", None) if benchmark.stats else None
    if stats is not None:           # None under --benchmark-disable
        benchmark.extra_info["messages_per_s"] = messages / stats.median


@pytest.fixture(scope="module")
def calls_bus():
    """The bus of ``grafos.benchsuite.calls``: rings that fit the caches."""
    mgr = calls.bus()
    yield mgr
    mgr.close()


@pytest.fixture(scope="module")
def batch_bus():
    """The bus of ``grafos.benchsuite.batches``: one-partition rings of 65536 slots, filled."""
    mgr = batches.bus()
    yield mgr
    mgr.close()


def _setup(w: calls.Call):  # noqa: ANN202
    """The untimed part of a round: the last round's ``after``, then this one's ``setup``."""
    def setup() -> None:
        if w.after is not None:
            w.after()
        if w.setup is not None:
            w.setup()
    return setup


@pytest.mark.parametrize("name", calls.CALLS[:7])
def test_call(benchmark, calls_bus, name: str):
    """One of the calls beside ``queue.Queue``."""
    benchmark.group = "bus calls"
    w = calls.workload(name, calls_bus)
    messages = calls.BATCH if name.startswith("send_batch") else calls.N
    got = benchmark.pedantic(w.run, setup=_setup(w), rounds=200, iterations=1, warmup_rounds=5)
    assert got >= messages
    _report(benchmark, messages)


@pytest.mark.parametrize("name", batches.NAMES)
def test_batch(benchmark, batch_bus, name: str):
    """One of the batch calls on the big rings."""
    benchmark.group = "bus batch " + ("100 B keyed" if "100 B" in name else "64 B")
    w = batches.workload(name, batch_bus)
    got = benchmark.pedantic(w.run, setup=_setup(w), rounds=300, iterations=1, warmup_rounds=5)
    assert got == batches.BATCH
    _report(benchmark, batches.BATCH)
