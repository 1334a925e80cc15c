"""Core benchmarks: single append vs queue.Queue.put, batch append
and batch read of 100-byte messages, and the batch path with 4 KiB messages
next to memcpy. Each benchmark reports messages/s (and payload bytes/s) in
pytest-benchmark's ``extra_info``; the session ends with a ratio table
(conftest.py). Speeds are reported, never asserted.

    python -m pytest benchmarks -q
"""
from __future__ import annotations

import pytest

from conftest import RESULTS
from grafos.benchsuite.core import NAMES, Rig, Workload

ROUNDS = {"append-1": 300, "batch-100B": 600, "batch-4KiB": 300}
WARMUP = 10

def _find(rig: Rig, name: str) -> Workload:
    if not hasattr(rig, "_by_name"):
        rig._by_name = {w.name: w for w in rig.workloads()}  # type: ignore[attr-defined]
    w = rig._by_name.get(name)  # type: ignore[attr-defined]
    if w is None:
        raise LookupError(f"no workload named {name!r}")
    return w


@pytest.mark.parametrize("name", NAMES)
def test_core(benchmark, rig: Rig, name: str) -> None:
    w = _find(rig, name)
    benchmark.group = w.group
    setup = (lambda: (w.setup(), None)[1]) if w.setup else None
    result = benchmark.pedantic(w.run, setup=setup, rounds=ROUNDS[w.group], iterations=1,
                                warmup_rounds=WARMUP)
    if w.check:
        w.check(result)
    benchmark.extra_info["doc"] = w.doc
    benchmark.extra_info["messages_per_call"] = w.messages
    stats = getattr(benchmark.stats, "stats", None) if benchmark.stats else None
    if stats is None:     # --benchmark-disable: ran once, nothing measured
        return
    benchmark.extra_info["messages_per_s"] = w.messages / stats.median
    benchmark.extra_info["messages_per_s_best"] = w.messages / stats.min
    if w.payload:
        benchmark.extra_info["payload_bytes_per_s"] = w.payload / stats.median
    RESULTS[name] = {"group": w.group, "median": stats.median, "min": stats.min,
                     "messages": w.messages, "payload": w.payload}
