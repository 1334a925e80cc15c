"""Cross-process wake-up latency of an awaiting asyncio task
(``benchmarks/bench_aio_wakeup.py`` runs :func:`measure` and prints it).

A producer process sends one 16-byte message (its CLOCK_MONOTONIC send time)
every ``--gap`` seconds, so the consumer is asleep when each one lands. The
consumer process awaits ``grafos.aio.AsyncConsumer.poll(timeout=None)``: its
helper thread sleeps on the fabric's futex and wakes the event loop. Latency =
time the task holds the message - send time (one clock, system-wide). Printed:
p50, p90, p99 per event loop (asyncio's, and uvloop's when installed), beside
a blocking synchronous ``Consumer.poll(timeout=...)`` in the same setup (the
same futex, no event loop) as the reference. Goal: asyncio p50 below 100 us.
Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import time
from typing import Callable

from ..aio import AsyncConsumer
from ..mq import Producer, SeekPolicy, TopicConfig, TopicManager

CTX = mp.get_context("spawn")


def producer(name: str, n: int, gap: float, go, done) -> None:
    mgr = TopicManager.open(name)
    prod = Producer("pings")
    go.wait(60)
    for _ in range(n):
        time.sleep(gap)
        prod.send(mgr, time.monotonic_ns().to_bytes(8, "little") * 2)
    done.wait(60)
    mgr.close()


def _start(name: str, n: int, gap: float):
    go, done = CTX.Event(), CTX.Event()
    p = CTX.Process(target=producer, args=(name, n, gap, go, done), daemon=True)
    p.start()
    return p, go, done


def run_async(mgr: TopicManager, name: str, n: int, gap: float, loop_run) -> list[int]:
    p, go, done = _start(name, n, gap)

    async def main() -> list[int]:
        lat = []
        async with AsyncConsumer(mgr.consumer("pings")) as c:
            c.seek(SeekPolicy.Latest)
            go.set()
            while len(lat) < n:
                for _, m in await c.poll(16, timeout=None):
                    lat.append(time.monotonic_ns() - int.from_bytes(m.value[:8], "little"))
        return lat

    try:
        return loop_run(main())
    finally:
        done.set()
        p.join(30)


def run_sync(mgr: TopicManager, name: str, n: int, gap: float) -> list[int]:
    p, go, done = _start(name, n, gap)
    lat = []
    c = mgr.consumer("pings")
    c.seek(SeekPolicy.Latest)
    go.set()
    try:
        while len(lat) < n:
            for _, m in c.poll(16, timeout=1.0):
                lat.append(time.monotonic_ns() - int.from_bytes(m.value[:8], "little"))
    finally:
        done.set()
        p.join(30)
    return lat


def summary(lat: list[int]) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100)
    return {"n": len(lat), "p50_us": statistics.median(lat) / 1e3, "p90_us": q[89] / 1e3,
            "p99_us": q[98] / 1e3}

def measure(n: int, gap: float, progress: Callable[[str, dict[str, float]], None] | None = None
            ) -> dict[str, dict[str, float]]:
    """Every mode's :func:`summary` (asyncio, uvloop when installed, the blocking
    poll), on one named bus made for the run and unlinked after it;
    ``progress(mode, summary)`` after each."""
    name = f"bench-aio-{os.getpid()}"
    mgr = TopicManager.open(name, size=16 << 20)
    try:
        mgr.create("pings", TopicConfig(num_partitions=1, partition_capacity=4096, partition_stride=64))
        modes = {"asyncio": lambda: run_async(mgr, name, n, gap, asyncio.run)}
        try:
            import uvloop
            modes["uvloop"] = lambda: run_async(mgr, name, n, gap, uvloop.run)
        except ImportError:
            pass
        modes["sync blocking poll"] = lambda: run_sync(mgr, name, n, gap)
        out = {}
        for mode, fn in modes.items():
            out[mode] = summary(fn())
            if progress is not None:
                progress(mode, out[mode])
        return out
    finally:
        mgr.close()
        TopicManager.unlink(name)
