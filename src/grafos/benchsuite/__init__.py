"""The benchmark suite behind ``grafos bench``: grafos beside its peers.

Importable from an installed package (``grafos bench`` needs no source tree)::

    from grafos.benchsuite import Options, plan, run_jobs, load_goals, judge
    results = run_jobs(plan(Options(sizes=(64, 4096), duration=0.3)))
    verdicts = judge(load_goals("benchmarks/goals.json"), results)

Scenarios (:data:`SCENARIOS`): ``inproc`` and ``cross`` run grafos and every
peer (single and batch) at each message size, with memcpy as the physical
limit; ``partitions`` and ``topics`` measure how grafos' cost per message
changes with the number of partitions and topics; ``producers`` runs 1..4
producer processes into one consumer; ``queue`` puts and gets Python objects
through ``grafos.Queue`` beside ``multiprocessing.Queue`` and faster-fifo;
``share`` runs a work queue (two workers acknowledging each record) beside
Redis Streams.
"""
from __future__ import annotations

from typing import Callable

from . import calls, grafos_runs, peers, share
from . import queues as queue_runs
from .harness import (DEFAULT_SIZES, GOAL_METRICS, GRAFOS, PEERS, QUICK_SIZES, SCENARIO_HELP, SCENARIOS,
                      Goal, Job, Options, Result, Target, batch_for, derive, judge, load_goals,
                      quick_options)

__all__ = ["Options", "Result", "Job", "Goal", "Target", "GOAL_METRICS", "SCENARIOS", "SCENARIO_HELP",
           "DEFAULT_SIZES", "QUICK_SIZES", "plan", "run_jobs", "derive", "load_goals", "judge",
           "quick_options", "batch_for"]

MODES = ("single", "batch")


def _guarded(job: Callable[[], Result], fallback: Result) -> Callable[[], Result]:
    """A failing measurement becomes an ``error`` row instead of ending the run."""
    def run() -> Result:
        try:
            return job()
        except Exception as e:  # noqa: BLE001 - reported in the table and the JSON
            fallback.status, fallback.note = "error", f"{type(e).__name__}: {e}"
            return fallback
    return run


def _job(title: str, fn: Callable[[], Result], stub: Result) -> Job:
    return Job(title, _guarded(fn, stub))


def plan(opt: Options) -> list[Job]:
    """The measurements ``opt`` asks for, in run order."""
    jobs: list[Job] = []
    d = opt.duration
    memcpy_sizes: set[int] = set()
    if "calls" in opt.scenarios:
        for call in calls.CALLS:
            system = calls.QUEUE if call in ("put", "get") else GRAFOS
            jobs.append(_job(f"{system} {call}", lambda c=call: calls.measure(c, d),
                             Result("calls", system, call, "in-process", 100)))
    if "inproc" in opt.scenarios:
        for size in opt.sizes:
            b = batch_for(size)
            memcpy_sizes.add(size)
            for mode in MODES:
                jobs.append(_job(f"in-process {GRAFOS} {mode} {size} B",
                                 lambda s=size, b=b, m=mode: grafos_runs.inproc(s, b, m, d),
                                 Result("inproc", GRAFOS, mode, "in-process", size, batch=b)))
                if mode == "batch":
                    jobs.append(_job(f"in-process {GRAFOS} batch, 2 threads, block topic, {size} B",
                                     lambda s=size, b=b: grafos_runs.inproc_threads(s, b, d, "block"),
                                     Result("inproc", GRAFOS, "batch-threads", "in-process", size, batch=b)))
                    jobs.append(_job(f"in-process {GRAFOS} batch, 2 threads, producer window, {size} B",
                                     lambda s=size, b=b: grafos_runs.inproc_threads(s, b, d, "window"),
                                     Result("inproc", GRAFOS, "batch-threads-window", "in-process", size,
                                            batch=b)))
                for p in PEERS:
                    jobs.append(_job(f"in-process {p} {mode} {size} B",
                                     lambda p=p, s=size, b=b, m=mode: peers.inproc(p, s, b, m, d),
                                     Result("inproc", p, mode, "in-process", size, batch=b)))
    if "cross" in opt.scenarios:
        sizes = opt.cross_sizes if opt.cross_sizes is not None else opt.sizes
        modes = ("batch",) if opt.quick else MODES
        for size in sizes:
            b = batch_for(size)
            memcpy_sizes.add(size)
            for mode in modes:
                jobs.append(_job(f"cross-process {GRAFOS} {mode} {size} B",
                                 lambda s=size, b=b, m=mode: grafos_runs.cross(s, b, m, d),
                                 Result("cross", GRAFOS, mode, "cross-process", size, batch=b)))
                for p in PEERS:
                    jobs.append(_job(f"cross-process {p} {mode} {size} B",
                                     lambda p=p, s=size, b=b, m=mode: peers.cross(p, s, b, m, d),
                                     Result("cross", p, mode, "cross-process", size, batch=b)))
    if "partitions" in opt.scenarios:
        b = batch_for(64)
        for n in opt.partitions:
            jobs.append(_job(f"{n} partitions, in-process batch 64 B",
                             lambda n=n, b=b: grafos_runs.inproc(64, b, "batch", d, partitions=n, group="partitions"),
                             Result("partitions", GRAFOS, "batch", "in-process", 64, batch=b, partitions=n)))
    if "topics" in opt.scenarios:
        # the same batch per topic at every count, so per-call costs weigh the same
        b = 256
        for n in opt.topics:
            jobs.append(_job(f"{n} topics, in-process batch 64 B",
                             lambda n=n, b=b: grafos_runs.inproc(64, b, "batch", d, topics=n, group="topics"),
                             Result("topics", GRAFOS, "batch", "in-process", 64, batch=b, topics=n)))
    if "producers" in opt.scenarios:
        b = batch_for(64)
        for n in opt.producers:
            jobs.append(_job(f"{n} producer processes, {GRAFOS} batch 64 B",
                             lambda n=n, b=b: grafos_runs.cross(64, b, "batch", d, producers=n, partitions=4,
                                                           group="producers"),
                             Result("producers", GRAFOS, "batch", "cross-process", 64, batch=b,
                                    producers=n, partitions=4)))
            for p in PEERS:
                jobs.append(_job(f"{n} producer processes, {p} batch 64 B",
                                 lambda n=n, p=p, b=b: peers.cross(p, 64, b, "batch", d, producers=n,
                                                                   group="producers"),
                                 Result("producers", p, "batch", "cross-process", 64, batch=b, producers=n)))
    if "queue" in opt.scenarios:
        for kind in queue_runs.PAYLOADS:
            for system in queue_runs.SYSTEMS:
                jobs.append(_job(f"queue {system} {kind}", lambda s=system, k=kind: queue_runs.measure(s, k, d),
                                 Result("queue", system, kind, "cross-process", 0)))
    if "share" in opt.scenarios:
        # records to drain, sized so each system takes about the same time
        for mode, g_rate, r_rate, j_rate in (("batch", 800_000, 200_000, 20_000),
                                             ("single", 100_000, 20_000, 3_000)):
            b = share.BATCH if mode == "batch" else 1
            n_g = max(2_000, min(1_000_000, int(g_rate * d)))
            n_r = max(1_000, min(400_000, int(r_rate * d)))
            n_j = max(500, min(100_000, int(j_rate * d)))
            jobs.append(_job(f"share group, 2 workers, {mode} 100 B", lambda m=mode, n=n_g: share.grafos(m, n),
                             Result("share", GRAFOS, mode, "cross-process", share.SIZE, batch=b)))
            jobs.append(_job(f"Redis Streams, 2 workers, {mode} 100 B",
                             lambda m=mode, n=n_r: share.redis_streams(m, n),
                             Result("share", share.REDIS, mode, "cross-process", share.SIZE, batch=b)))
            jobs.append(_job(f"JetStream work queue, 2 workers, {mode} 100 B",
                             lambda m=mode, n=n_j: share.jetstream(m, n),
                             Result("share", share.JETSTREAM, mode, "cross-process", share.SIZE, batch=b)))
    for size in sorted(memcpy_sizes):
        b = batch_for(size)
        jobs.append(_job(f"memcpy {size} B x {b}", lambda s=size, b=b: peers.memcpy(s, b, d / 2),
                         Result("memcpy", "memcpy", "copy", "in-process", size, batch=b)))
    return jobs


def run_jobs(jobs: list[Job], progress: Callable[[Job, Result | None], None] | None = None) -> list[Result]:
    """Run ``jobs`` in order; ``progress(job, None)`` before each, ``(job, result)`` after."""
    out = []
    for job in jobs:
        if progress:
            progress(job, None)
        r = job.run()
        out.append(r)
        if progress:
            progress(job, r)
    derive(out)
    calls.derive(out)
    queue_runs.derive(out)
    return out
