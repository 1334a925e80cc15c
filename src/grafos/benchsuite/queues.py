"""The ``queue`` scenario: ``grafos.Queue`` beside ``multiprocessing.Queue`` and
faster-fifo used as what they are for, a queue of Python objects between two
processes: one producer process (multiprocessing "spawn") puts, this process
gets, one object per call. Every system pickles (faster-fifo with its default
serializer); each queue is made with its defaults but for room (faster-fifo's
``max_size_bytes`` and grafos' ``ring_bytes``, both 64 MiB for 1 MiB arrays).

Payloads: an int, a short str, a small dict, and a 1 MiB numpy array.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import threading
import time
from typing import Any, Callable

from .harness import GRAFOS, Result, vs_best_peer
from .peers import missing
from .procs import STOP, Crew

SYSTEMS = (GRAFOS, "mp.Queue", "faster-fifo")
PAYLOADS = ("int", "str", "dict", "1 MiB array")
_BIG = 64 << 20
_PUT_TIMEOUT = 0.05
_STUCK_SECS = 30.0       # past the measured time: the watchdog ends a get that waits on a stuck peer


def payload(kind: str) -> Any:
    if kind == "int":
        return 123456
    if kind == "str":
        return "a short string"
    if kind == "dict":
        return {"id": 42, "name": "sensor-7", "value": 3.25, "ok": True}
    import numpy as np
    return np.ones(1 << 17)                  # 1 MiB of float64


def make(system: str, kind: str) -> Any:
    big = kind == "1 MiB array"
    if system == GRAFOS:
        from ..queues import DEFAULT_RING_BYTES, Queue
        return Queue(ring_bytes=_BIG if big else DEFAULT_RING_BYTES)
    if system == "mp.Queue":
        return mp.get_context("spawn").Queue()
    import faster_fifo
    return faster_fifo.Queue(max_size_bytes=_BIG if big else 8 << 20)


def producer_main(q: Any, kind: str, flags: Any) -> None:
    """In the producer process: put the payload until told to stop."""
    if hasattr(q, "cancel_join_thread"):
        q.cancel_join_thread()               # mp.Queue: exit without flushing its feeder
    obj = payload(kind)
    Crew.ready_and_wait(flags, 0)
    while not flags[STOP]:
        try:
            q.put(obj, True, _PUT_TIMEOUT)
        except queue.Full:
            pass


def measure(system: str, kind: str, duration: float) -> Result:
    """One producer process -> this process, ``duration`` seconds of gets."""
    size = len(pickle.dumps(payload(kind), 5))
    res = Result("queue", system, kind, "cross-process", size)
    why = missing(system) if system != GRAFOS else None
    if why:
        res.status, res.note = "missing", why
        return res
    q = make(system, kind)
    crew = Crew(1)
    try:
        crew.start(producer_main, lambda i: (q, kind, crew.flags))
        crew.go()
        get: Callable = q.get
        warm = 3 if kind == "1 MiB array" else 1000
        for _ in range(warm):
            get(True, 60)
        # get() as programs call it, without a timeout (multiprocessing's timeout
        # path costs more); a watchdog puts None should the producer die or the
        # gets stall well past the measured time
        done = threading.Event()

        give_up = time.monotonic() + duration + _STUCK_SECS

        def watchdog() -> None:
            while not done.wait(0.05):
                if not crew.alive() or time.monotonic() > give_up:
                    q.put(None)
                    return
        threading.Thread(target=watchdog, daemon=True).start()
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        try:
            while True:
                if get() is None:
                    break
                n += 1
                if n % 64 == 0 and time.perf_counter() >= deadline:
                    break
        finally:
            done.set()
        res.messages, res.seconds = n, time.perf_counter() - t0

        def drain() -> None:
            try:
                while True:
                    q.get(False)
            except queue.Empty:
                pass
        crew.join(drain)
        if crew.failed():
            res.status, res.note = "error", crew.failed()
    finally:
        crew.kill()
        if hasattr(q, "close"):
            q.close()
    return res


def derive(results: list[Result]) -> None:
    """grafos' rows: the ratio over each peer's row of the same payload, in the note."""
    rows = [r for r in results if r.group == "queue" and r.status == "ok" and r.messages]
    for r in rows:
        if r.system != GRAFOS:
            continue
        ratios = [f"{r.msg_per_s / p.msg_per_s:.1f}x {p.system}" for p in rows
                  if p.system != GRAFOS and p.mode == r.mode and p.msg_per_s > 0]
        vs_best_peer(r, [p for p in rows if p.system != GRAFOS and p.mode == r.mode])
        r.note = ", ".join(ratios)
