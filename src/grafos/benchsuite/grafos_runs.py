"""grafos under the benchmark harness.

In-process: one thread produces a round (a batch, or ``batch`` single sends)
and consumes it, round after round. Cross-process: producer processes
(multiprocessing spawn) append to a named bus while this process consumes.

A ring overwrites and never blocks its producer (Kafka's model). To count
delivered messages rather than overwritten ones, the cross-process producers
stay at most half a ring ahead of the consumer, which publishes its count
in shared memory; the peers get the same effect from their bounded buffers.
Messages lost anyway are reported in ``Result.lost``.
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Callable

import numpy as np

from ..errors import BufferFull
from .harness import GRAFOS, WARMUP_ROUNDS, Result, timed_rounds
from .procs import BURST, CONSUMED, STOP, Crew

RING_BYTES = 2 << 20


def slot_stride(size: int) -> int:
    """A slot that holds ``size`` bytes after its 40-byte header, 8-aligned."""
    return (40 + size + 7) // 8 * 8


def geometry(size: int, batch: int, partitions: int = 1) -> tuple[int, int]:
    """(capacity, stride) of each partition: room for ``size`` bytes, at least
    four batches per ring, about 2 MiB of slots per topic where that allows (the
    order of the peers' buffers: faster-fifo's is 1-2 MiB here)."""
    slot = max(48, slot_stride(size))
    per_part = -(-batch // partitions)
    capacity = max(4 * per_part, 16, min(16384, RING_BYTES // (slot * partitions)))
    return capacity, slot


def _fabric_bytes(total_bytes: int) -> int:
    """A fabric for rings of ``total_bytes``: a quarter over, at least 64 MiB."""
    return max(64 << 20, int(total_bytes * 1.25) + (16 << 20))


def _manager(total_bytes: int, leases: int = 0):
    from ..fabric import Fabric
    from ..mq.topic import TopicManager
    return TopicManager(Fabric(_fabric_bytes(total_bytes), lease_slots=leases))


# ---- in-process ------------------------------------------------------------------------
def round_trip(mgr, pairs: list, mode: str, batch: int, size: int) -> Callable[[], int]:  # noqa: ANN001
    """One in-process round: each (producer, consumer) pair sends ``batch``
    messages of ``size`` bytes (one ``send_batch`` in mode "batch", else
    single sends) and its consumer reads them back; returns how many it read."""
    if mode == "batch":
        values = np.full((batch, size), 0x5A, dtype=np.uint8)

        def batch_round() -> int:
            got = 0
            for p, c in pairs:
                p.send_batch(mgr, values)
                got += len(c.poll_batch(mgr, batch))
            return got
        return batch_round
    value = b"\x5a" * size

    def single_round() -> int:
        got = 0
        for p, c in pairs:
            send = p.send
            for _ in range(batch):
                send(mgr, value)
            want = batch
            while want > 0:
                n = len(c.poll(mgr, want))
                if n == 0:
                    break
                got += n
                want -= n
        return got
    return single_round


def inproc(size: int, batch: int, mode: str, duration: float, *, partitions: int = 1,
           topics: int = 1, group: str = "inproc") -> Result:
    """Produce then consume a round per iteration in one thread, on ``topics``
    topics of ``partitions`` partitions each (round robin)."""
    from ..mq.consumer import Consumer
    from ..mq.producer import Partitioner, Producer
    from ..mq.topic import TopicConfig

    capacity, stride = geometry(size, batch, partitions)
    mgr = _manager(topics * partitions * capacity * stride, leases=topics * partitions + 64)
    res = Result(group, GRAFOS, mode, "in-process", size, batch=batch, partitions=partitions,
                 topics=topics)
    try:
        names = [f"bench{i}" for i in range(topics)]
        cfg = TopicConfig(partitions, capacity, stride, 3600.0)
        for n in names:
            mgr.create(n, cfg)
        prods = [Producer(n, Partitioner.RoundRobin) for n in names]
        cons = [Consumer(n, max_batch=batch) for n in names]
        # warm the rings, then time whole rounds
        res.messages, res.seconds = timed_rounds(round_trip(mgr, list(zip(prods, cons)), mode, batch, size),
                                                 duration)
        res.lost = sum(sum(c.lost().values()) for c in cons)
        expected = 0  # every round consumes what it produced
        if res.lost != expected:
            res.note = f"{res.lost} messages overwritten before they were read"
    finally:
        mgr.close()
    return res


def inproc_threads(size: int, batch: int, duration: float, flow: str = "block") -> Result:
    """In-process with a producer thread and a consumer thread: the batch calls
    drop the GIL, so both sides can run at once on two cores, as across
    processes. ``flow="block"`` is the user's way: an ``on_full="block"`` topic
    gated by the consumer (``gating=True``), whose ``send_batch`` sleeps while
    the ring is full and whose ``poll_batch`` sleeps while it is empty.
    ``flow="window"``: an overwrite topic and a producer that yields while it is
    half a ring ahead of the consumer's count."""
    import threading

    from ..mq.consumer import Consumer
    from ..mq.producer import Partitioner, Producer
    from ..mq.topic import TopicConfig

    if flow not in ("block", "window"):
        raise ValueError(f"flow must be 'block' or 'window', not {flow!r}")
    capacity, stride = geometry(size, batch)
    mgr = _manager(capacity * stride)
    mode = "batch-threads" if flow == "block" else "batch-threads-window"
    res = Result("inproc", GRAFOS, mode, "in-process", size, batch=batch,
                 note="producer thread + consumer thread, " +
                      ("a block topic" if flow == "block" else "the producer half a ring ahead at most"))
    try:
        mgr.create("bench", TopicConfig(1, capacity, stride, 3600.0,
                                        on_full="block" if flow == "block" else "overwrite"))
        prod = Producer("bench", Partitioner.RoundRobin)
        cons = Consumer("bench", max_batch=batch, gating=flow == "block")
        cons.poll_batch(mgr, 1)
        values = np.full((batch, size), 0x5A, dtype=np.uint8)
        limit = capacity // 2
        state = {"sent": 0, "consumed": 0, "stop": False}

        def produce() -> None:
            while not state["stop"]:
                if flow == "window" and state["sent"] - state["consumed"] > limit:
                    time.sleep(0)
                    continue
                try:
                    prod.send_batch(mgr, values, timeout=0.05)
                except BufferFull:
                    continue    # the consumer stopped reading: look at stop again
                state["sent"] += batch

        t = threading.Thread(target=produce, name="grafos-bench-producer", daemon=True)
        t.start()
        try:
            n = 0
            while n < WARMUP_ROUNDS * batch:
                n += len(cons.poll_batch(mgr, batch, 0.01))
                state["consumed"] = n
            n0 = n
            t0 = time.perf_counter()
            deadline = t0 + duration
            while True:
                n += len(cons.poll_batch(mgr, batch, 0.01))
                state["consumed"] = n
                now = time.perf_counter()
                if now >= deadline:
                    break
        finally:
            state["stop"] = True
            cons.close()     # a gating reader no more: a blocked send returns
            t.join(10)
        res.messages, res.seconds = n - n0, now - t0
        res.lost = sum(cons.lost().values())
    finally:
        mgr.close()
    return res


# ---- cross-process ---------------------------------------------------------------------
def producer_main(mgr, size: int, batch: int, mode: str, idx: int, flags, sent, limit: int) -> None:  # noqa: ANN001
    """Spawned producer: append to ``mgr`` (a TopicManager, which crosses processes
    as its bus's name or path) until told to stop, staying at most
    ``limit`` messages ahead of the consumer. ``flags``: see :class:`~.procs.Crew`."""
    from ..mq.producer import Partitioner, Producer
    from ..mq.topic import TopicManager

    prod = Producer("bench", Partitioner.RoundRobin)
    values = np.full((batch, size), 0x5A, dtype=np.uint8)
    value = b"\x5a" * size
    burst = max(1, min(BURST, limit // (2 * len(sent))))   # single sends between flow-control looks
    Crew.ready_and_wait(flags, idx)
    total = 0
    yield_ = os.sched_yield
    while not flags[STOP]:
        if sum(sent) - flags[CONSUMED] > limit:    # half a ring ahead: let the consumer catch up
            yield_()
            continue
        if mode == "batch":
            prod.send_batch(mgr, values)
            total += batch
        else:
            send = prod.send
            for _ in range(burst):
                send(mgr, value)
            total += burst
        sent[idx] = total
    mgr.close()


def cross(size: int, batch: int, mode: str, duration: float, *, producers: int = 1,
          partitions: int = 1, group: str = "cross", capacity: int | None = None,
          path: str | None = None, huge_pages: str = "off") -> Result:
    """Producer processes -> this process. Counts messages consumed in ``duration``.
    ``capacity``: slots per partition, else :func:`geometry`'s (about 2 MiB);
    ``path``: a file for the bus (removed after), else a named bus; ``huge_pages``: the fabric's."""
    from ..mq.consumer import Consumer
    from ..mq.topic import TopicConfig, TopicManager

    res = Result(group, GRAFOS, mode, "cross-process", size, batch=batch, partitions=partitions,
                 producers=producers)
    fit, stride = geometry(size, batch * producers, partitions)
    capacity = capacity or fit
    name = f"grafos-bench-{uuid.uuid4().hex[:12]}"
    total = partitions * capacity * stride
    mgr = TopicManager.open(None if path else name, path=path, size=_fabric_bytes(total), huge_pages=huge_pages)
    crew = None
    try:
        mgr.create("bench", TopicConfig(partitions, capacity, stride, 3600.0))
        cons = Consumer("bench", max_batch=batch)
        cons.poll_batch(mgr, 1)             # open the reader at offset 0
        limit = partitions * capacity // 2
        crew = Crew(producers)
        flags = crew.flags
        sent = crew.array("q", producers)
        crew.start(producer_main, lambda i: (mgr, size, batch, mode, i, flags, sent, limit))
        crew.go()
        n = 0
        poll = cons.poll_batch if mode == "batch" else cons.poll
        dead = crew.dead
        lost = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        while True:
            got = len(poll(mgr, batch, 0.01))
            n += got
            if not got:
                # overwritten messages free their slots too: counted when a poll
                # comes back empty, where producers held back by them would wait
                # (a look at them costs more than a poll of a few messages)
                lost = sum(cons.lost().values())
            flags[CONSUMED] = n + lost     # the producers' flow control
            t = time.perf_counter()
            if t >= deadline or dead(t):
                break
        res.messages, res.seconds = n, t - t0
        res.lost = sum(cons.lost().values())
        crew.join(drain=lambda: None)          # stops the producers first
        if crew.failed():
            res.status, res.note = "error", crew.failed()
    finally:
        if crew is not None:
            crew.kill()
        mgr.close()
        if path:
            os.unlink(path)
        else:
            TopicManager.unlink(name)
    return res
