"""Worker functions for the grafos.Queue tests: they run in processes started
by fork, spawn or forkserver, so they live in a module a child can import."""
from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np


def produce(q: Any, first: int, n: int) -> None:
    """Put first .. first + n - 1."""
    for i in range(first, first + n):
        q.put(i)


def consume(q: Any, out: Any, n: int) -> None:
    """Get n items and report them as one list."""
    out.put([q.get(timeout=60) for _ in range(n)])


def echo_arrays(q: Any, back: Any, n: int) -> None:
    """Get n arrays, check each is writable, and send back its sum."""
    for _ in range(n):
        a = q.get(timeout=60)
        a[0] += 0                   # raises if the array came back read-only
        back.put(float(a.sum()))


def produce_acked(q: Any, acked: Any, stop_at: int) -> None:
    """Put 0, 1, 2, ... and record in acked[0] how many puts returned; stop
    (and wait to be killed) after stop_at."""
    for i in range(stop_at):
        q.put(i)
        acked[0] = i + 1
    while True:
        time.sleep(1)


def consume_acked(q: Any, got: Any, count: Any) -> None:
    """Get items for ever; after each get returns, record the item in got[]."""
    while True:
        item = q.get()
        got[count.value] = item
        count.value += 1


def put_maybe(q: Any, go: Any, results: Any, i: int) -> None:
    """Wait for go, then try one put_nowait; record 1 if it went in."""
    import queue
    go.wait(30)
    try:
        q.put_nowait(i)
        results[i] = 1
    except queue.Full:
        results[i] = 0


def attach_and_exit(q: Any, out: Any) -> None:
    """Use the queue, then exit normally (closing this process's attachment)."""
    out.put(q.get(timeout=30))


def put_then_die(q: Any) -> None:
    """Put one item, then die without cleaning up."""
    q.put("last words")
    os.kill(os.getpid(), signal.SIGKILL)


def put_array(q: Any, nbytes: int, n: int) -> None:
    a = np.arange(nbytes // 8, dtype=np.float64)
    for _ in range(n):
        q.put(a)


def die_mid_put(q: Any) -> None:
    """Die (_exit) inside a put: the item's slots taken, its bytes half copied."""
    from grafos._native import lib
    lib.gf_test_fault(lib.GF_FAULT_QUEUE_LOANED, lib.GF_FAULT_EXIT)
    q.put("never published")


def stall_mid_put(q: Any) -> None:
    """Stop (SIGSTOP) inside a put, the item half copied; once continued, the
    put goes on and returns."""
    from grafos._native import lib
    lib.gf_test_fault(lib.GF_FAULT_QUEUE_LOANED, lib.GF_FAULT_STOP)
    q.put("slow")
    lib.gf_test_fault(0, 0)


def attached_then_get(q: Any, out: Any, go: Any) -> None:
    """Say it has the queue (unpickling attached it); when told to, get one
    item and send it back."""
    out.put("attached")
    go.wait(60)
    out.put(q.get(timeout=30))


def die_after_reserving(q: Any) -> None:
    """Die (_exit) inside a put: its place in the queue counted, no slots taken yet."""
    from grafos._native import lib
    lib.gf_test_fault(lib.GF_FAULT_QUEUE_RESERVED, lib.GF_FAULT_EXIT)
    q.put("never written")
