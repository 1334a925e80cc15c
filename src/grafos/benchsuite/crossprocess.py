"""Producer process -> consumer process on one machine, 100-byte messages
(``benchmarks/bench_crossprocess.py`` runs :func:`run` and prints :func:`report`).

What it measures, every system in the same run with the same harness:

* **throughput** of single-message calls: grafos ``Producer.send_keyed`` into
  one partition of a named bus, read by ``Consumer.poll`` in another process
  (with a blocking consumer, and with one that spins before it sleeps);
  pyzmq ``ipc://`` PUSH/PULL ``send``/``recv``; ``multiprocessing.Queue``
  ``put``/``get``; faster-fifo ``put``/``get_many``. Rate = messages that
  reached the consumer / (consumer's last receive - producer's first send),
  both read from CLOCK_MONOTONIC. Median of 3 rounds after a warm-up round
  (the warm-up also faults in the grafos ring's pages).
* **one-way latency** = ping-pong round trip / 2, p50 and p99 over thousands
  of round trips: grafos with a spinning consumer (``poll(spin=...)``, the
  spin is in C; and a Python loop of ``poll(timeout=0)``) and with a blocking
  one (``poll(timeout=...)``, a futex in the shared mapping); pyzmq PAIR
  (blocking ``recv``, and a ``NOBLOCK`` spin); ``multiprocessing.Queue`` and
  faster-fifo (blocking ``get``).

Goals: grafos >= 2 M msg/s and >= 1.25x pyzmq; one-way
p50 < 3 us spinning and < 25 us blocking.

Peers missing from the environment (``pip install pyzmq faster-fifo``, the
``peers`` extra) are reported as missing. Nothing here asserts a speed.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as _queue
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import peers

SIZE = 100                  #: value bytes
KEY = b"bench-key"          #: one key: one partition, as a single stream
CTX = mp.get_context("spawn")
TIMEOUT = 120.0             #: seconds before a stuck run is abandoned


@dataclass
class Row:
    kind: str               #: throughput | latency
    system: str
    mode: str
    status: str = "ok"
    note: str = ""
    rates: list[float] = field(default_factory=list)     #: msg/s per round
    lost: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    mean_us: float = 0.0
    samples: int = 0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def _missing(system: str) -> str | None:
    return peers.missing(system) if system in peers.MODULE_OF else None


# ---- channels ------------------------------------------------------------------------------------
def _make_channels(system: str, count: int, bus: str | None) -> list:
    """``count`` one-way channels for ``system``, as picklable specs or objects."""
    if system == "grafos":
        return [{"bus": bus, "topic": f"ch{i}-{uuid.uuid4().hex[:8]}"} for i in range(count)]
    if system == "pyzmq":
        return [f"ipc://{os.path.join(tempfile.gettempdir(), f'grafos-xp-{uuid.uuid4().hex[:12]}.ipc')}"
                for _ in range(count)]
    if system == "mp.Queue":
        return [CTX.Queue(10_000) for _ in range(count)]
    if system == "faster-fifo":
        return [peers.FasterFifo.queue(8 << 20) for _ in range(count)]
    raise ValueError(system)


def _zmq_recv(sock, mode: str):  # noqa: ANN001, ANN202 - a pyzmq socket
    """recv(n) -> 1 for one pyzmq message: a NOBLOCK retry loop when spinning."""
    import zmq
    if mode == "spin":
        again, noblock = zmq.Again, zmq.NOBLOCK

        def recv(_: int) -> int:
            while True:
                try:
                    sock.recv(noblock)
                    return 1
                except again:
                    pass
        return recv

    def recv_blocking(_: int) -> int:
        sock.recv()
        return 1
    return recv_blocking


class _End:
    """What a sender and a receiver share: closing the system they were made on."""

    system: str
    mgr: Any
    sock: Any
    ctx: Any

    def close(self) -> None:
        if self.system == "grafos":
            self.mgr.close()
        elif self.system == "pyzmq":
            self.sock.close(0)
            self.ctx.term()


class _Sender(_End):
    def __init__(self, system: str, ch, peer_binds: bool) -> None:
        self.system = system
        if system == "grafos":
            from ..mq.producer import Producer
            from ..mq.topic import TopicManager
            self.mgr = TopicManager.open(ch["bus"], create=False)
            self.prod = Producer(ch["topic"])
            mgr, prod = self.mgr, self.prod
            send = prod.send_keyed
            self.send = lambda v: send(mgr, KEY, v)
        elif system == "pyzmq":
            import zmq
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.PAIR if peer_binds is None else zmq.PUSH)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.connect(ch)
            self.send = self.sock.send
        else:
            self.send = ch.put


class _Receiver(_End):
    """``recv(n)`` returns how many messages arrived (blocking, or spinning per ``mode``);
    ``lost()`` how many the ring overwrote before we read them (grafos only)."""

    def __init__(self, system: str, ch, mode: str, pair: bool = False) -> None:
        self.system, self.mode = system, mode
        if system == "grafos":
            from ..mq.consumer import Consumer, SeekPolicy
            from ..mq.topic import TopicManager
            self.mgr = TopicManager.open(ch["bus"], create=False)
            self.c = Consumer(ch["topic"], "bench")
            self.c.seek(self.mgr, None, SeekPolicy.Latest)
            mgr, poll = self.mgr, self.c.poll
            if mode == "spin":          # spin in C, never sleep
                self.recv = lambda n: len(poll(mgr, n, timeout=TIMEOUT, spin=TIMEOUT))
            elif mode == "spin-py":     # a Python loop of non-blocking polls
                def recv(n: int) -> int:
                    while True:
                        got = poll(mgr, n)
                        if got:
                            return len(got)
                self.recv = recv
            elif mode == "spin-block":  # spin briefly, then sleep on the futex
                self.recv = lambda n: len(poll(mgr, n, timeout=TIMEOUT, spin=50e-6))
            elif mode == "batch":       # numpy views of one buffer: no Message per message
                batch = self.c.poll_batch
                self.recv = lambda n: len(batch(mgr, n, timeout=TIMEOUT))
            else:
                self.recv = lambda n: len(poll(mgr, n, timeout=TIMEOUT))
        elif system == "pyzmq":
            import zmq
            self.ctx = zmq.Context()
            self.sock = self.ctx.socket(zmq.PAIR if pair else zmq.PULL)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.bind(ch)
            self.recv = _zmq_recv(self.sock, mode)
        elif system == "mp.Queue":
            self.recv = lambda n: (ch.get(True, TIMEOUT), 1)[1]
        elif system == "faster-fifo":
            if pair:
                self.recv = lambda n: (ch.get(True, TIMEOUT), 1)[1]
            else:
                self.recv = lambda n: len(ch.get_many(True, TIMEOUT, max_messages_to_get=n))
        else:
            raise ValueError(system)

    def lost(self) -> int:
        return sum(self.c.lost().values()) if self.system == "grafos" else 0



# ---- throughput ---------------------------------------------------------------------------------
def _tp_producer(system: str, ch, n: int, rounds: int, warm: int, sync, out) -> None:
    s = _Sender(system, ch, peer_binds=True)
    values = peers.payloads(SIZE, 256)
    send = s.send
    for r in range(rounds + 1):
        count = warm if r == 0 else n
        sync.wait()
        t0 = time.perf_counter_ns()
        for i in range(count):
            send(values[i & 255])
        out.put(("p", r, t0))
    # close only once the consumer has everything: a pyzmq PUSH socket closed right
    # after its last send loses the tail (a few hundred messages) even with LINGER
    sync.wait()
    s.close()


def _tp_consumer(system: str, ch, mode: str, n: int, rounds: int, warm: int, sync, out) -> None:
    rx = _Receiver(system, ch, mode)
    recv = rx.recv
    for r in range(rounds + 1):
        count = warm if r == 0 else n
        lost0 = rx.lost()
        sync.wait()
        got = 0
        while got + rx.lost() - lost0 < count if system == "grafos" else got < count:
            got += recv(4096)
        out.put(("c", r, time.perf_counter_ns(), got, rx.lost() - lost0))
    sync.wait()
    rx.close()


def throughput(system: str, mode: str, n: int, rounds: int, bus: str | None, capacity: int) -> Row:
    row = Row("throughput", system, mode)
    if (why := _missing(system)) is not None:
        row.status, row.note = "missing", why
        return row
    (ch,) = _make_channels(system, 1, bus)
    if system == "grafos":
        from ..mq.topic import TopicConfig, TopicManager
        with TopicManager.open(bus, create=False) as mgr:
            mgr.create(ch["topic"], TopicConfig(1, capacity, 192, 600.0))
    warm = capacity if system == "grafos" else min(n, 50_000)
    sync, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_tp_consumer, args=(system, ch, mode, n, rounds, warm, sync, out), daemon=True),
             CTX.Process(target=_tp_producer, args=(system, ch, n, rounds, warm, sync, out), daemon=True)]
    for p in procs:
        p.start()
    try:
        marks: dict[tuple[str, int], tuple] = {}
        for m in _collect(out, procs, 2 * (rounds + 1)):
            marks[(m[0], m[1])] = m[2:]
        for r in range(1, rounds + 1):
            (t0,), (t1, got, lost) = marks[("p", r)], marks[("c", r)]
            row.rates.append(got / ((t1 - t0) / 1e9))
            row.lost += lost
    except RuntimeError as e:
        row.status, row.note = "error", str(e)
    finally:
        _reap(procs)
    return row


def _collect(out, procs, count: int) -> list:
    """``count`` reports from ``out``; RuntimeError if a process died or time ran out."""
    got: list = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count:
        try:
            got.append(out.get(timeout=0.5))
            continue
        except _queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {TIMEOUT:.0f}s")
    return got


# ---- latency ------------------------------------------------------------------------------------
def _pinger(system: str, ping, pong, mode: str, n: int, warm: int, sync, out) -> None:
    rx = _Receiver(system, pong, mode, pair=True)
    tx = None
    if system == "pyzmq":
        send = rx.sock.send     # PAIR: one socket both ways
    else:
        tx = _Sender(system, ping, peer_binds=None)
        send = tx.send
    recv = rx.recv
    v = peers.payloads(SIZE, 2)[1]
    sync.wait()
    rts = []
    clock = time.perf_counter_ns
    for i in range(warm + n):
        t0 = clock()
        send(v)
        recv(1)
        if i >= warm:
            rts.append(clock() - t0)
    out.put(rts)
    sync.wait()             # the ponger may close now: we have every pong
    rx.close()
    if tx is not None:
        tx.close()


def _ponger(system: str, ping, pong, mode: str, n: int, sync) -> None:
    if system == "pyzmq":
        import zmq
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(pong)
        recv = _zmq_recv(sock, mode)
        send = sock.send
    else:
        rx = _Receiver(system, ping, mode, pair=True)
        tx = _Sender(system, pong, peer_binds=None)
        recv, send = rx.recv, tx.send
    v = peers.payloads(SIZE, 3)[2]
    sync.wait()
    for _ in range(n):
        recv(1)
        send(v)
    sync.wait()


def latency(system: str, mode: str, n: int, bus: str | None) -> Row:
    row = Row("latency", system, mode)
    if (why := _missing(system)) is not None:
        row.status, row.note = "missing", why
        return row
    ping, pong = _make_channels(system, 2, bus)
    if system == "grafos":
        from ..mq.topic import TopicConfig, TopicManager
        with TopicManager.open(bus, create=False) as mgr:
            for ch in (ping, pong):
                mgr.create(ch["topic"], TopicConfig(1, 4096, 192, 600.0))
    warm = max(100, n // 10)
    sync, out = CTX.Barrier(2), CTX.Queue()
    # the pinger binds pyzmq's PAIR socket (it owns "pong"), so start it first
    procs = [CTX.Process(target=_pinger, args=(system, ping, pong, mode, n, warm, sync, out), daemon=True)]
    procs[0].start()
    if system == "pyzmq":
        time.sleep(0.3)
    procs.append(CTX.Process(target=_ponger, args=(system, ping, pong, mode, n + warm, sync), daemon=True))
    procs[1].start()
    try:
        (rts,) = _collect(out, procs, 1)
        rts.sort()
        one_way = [x / 2 / 1000 for x in rts]
        row.samples = len(one_way)
        row.p50_us = one_way[len(one_way) // 2]
        row.p99_us = one_way[min(len(one_way) - 1, int(len(one_way) * 0.99))]
        row.mean_us = statistics.fmean(one_way)
    except RuntimeError as e:
        row.status, row.note = "error", str(e)
    finally:
        _reap(procs)
    return row


def _reap(procs) -> None:
    """Join our own processes; kill (by handle) any that hang."""
    for p in procs:
        p.join(15)
        if p.is_alive():
            p.kill()
            p.join(5)


# ---- the run ------------------------------------------------------------------------------------
def run(scale: float) -> list[Row]:
    from ..mq.topic import TopicManager
    tp_n = {"grafos": int(1_000_000 * scale), "pyzmq": int(500_000 * scale),
            "mp.Queue": int(100_000 * scale), "faster-fifo": int(300_000 * scale)}
    lat_spin, lat_block = int(20_000 * scale), int(5_000 * scale)
    bus = f"bench-xp-{uuid.uuid4().hex[:12]}"
    capacity = 1 << 16
    TopicManager.open(bus, size=256 << 20).close()
    rows: list[Row] = []
    plan = [
        ("throughput", "grafos", "block"), ("throughput", "grafos", "spin-block"),
        ("throughput", "grafos", "batch"),
        ("throughput", "pyzmq", "block"), ("throughput", "mp.Queue", "block"),
        ("throughput", "faster-fifo", "block"),
        ("latency", "grafos", "spin"), ("latency", "grafos", "spin-py"), ("latency", "grafos", "block"),
        ("latency", "pyzmq", "spin"), ("latency", "pyzmq", "block"),
        ("latency", "mp.Queue", "block"), ("latency", "faster-fifo", "block"),
    ]
    try:
        for kind, system, mode in plan:
            t0 = time.monotonic()
            if kind == "throughput":
                row = throughput(system, mode, tp_n[system], 3, bus, capacity)
            else:
                row = latency(system, mode, lat_spin if mode.startswith("spin") else lat_block, bus)
            rows.append(row)
            print(f"  {kind:<10} {system:<12} {mode:<10} {_cell(row):<40} ({time.monotonic() - t0:.1f}s)",
                  file=sys.stderr, flush=True)
    finally:
        TopicManager.unlink(bus)
    return rows


MODES = {
    ("throughput", "block"): "blocking receive (grafos: poll(timeout=) sleeps on a futex when idle)",
    ("throughput", "spin-block"): "poll(spin=50 us) before it sleeps",
    ("throughput", "batch"): "poll_batch(timeout=): numpy views, no Message objects (for reference)",
    ("latency", "spin"): "spinning (grafos: poll(spin=) spins in C; pyzmq: recv(NOBLOCK) loop)",
    ("latency", "spin-py"): "spinning: Python loop of poll(timeout=0)",
    ("latency", "block"): "blocking receive",
}


def _cell(row: Row) -> str:
    if row.status != "ok":
        return f"{row.status}: {row.note}"
    if row.kind == "throughput":
        best = max(row.rates)
        lost = f", lost {row.lost}" if row.lost else ""
        return f"{row.rate / 1e6:.2f} M msg/s (best {best / 1e6:.2f}{lost})"
    return f"p50 {row.p50_us:.1f} us, p99 {row.p99_us:.1f} us"


def report(rows: list[Row]) -> str:
    lines = ["| measurement | system | receiver | result |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.system} | {MODES.get((r.kind, r.mode), r.mode)} | {_cell(r)} |")
    tp = {(r.system, r.mode): r for r in rows if r.kind == "throughput" and r.status == "ok"}
    lat = {(r.system, r.mode): r for r in rows if r.kind == "latency" and r.status == "ok"}
    lines.append("")
    lines.append("Goals:")
    g = max((tp[k].rate for k in tp if k[0] == "grafos" and k[1] != "batch"), default=0.0)
    z = tp.get(("pyzmq", "block"))
    lines.append(f"- throughput >= 2 M msg/s (send_keyed -> poll): {g / 1e6:.2f} M -> "
                 f"{'met' if g >= 2e6 else 'MISSED'}")
    if z is not None and z.rate:
        lines.append(f"- throughput >= 1.25x pyzmq: {g / z.rate:.2f}x -> {'met' if g >= 1.25 * z.rate else 'MISSED'}")
    s = lat.get(("grafos", "spin"))
    b = lat.get(("grafos", "block"))
    if s is not None:
        lines.append(f"- one-way p50 spinning < 3 us: {s.p50_us:.1f} us -> {'met' if s.p50_us < 3 else 'MISSED'}")
    if b is not None:
        lines.append(f"- one-way p50 blocking < 25 us: {b.p50_us:.1f} us -> {'met' if b.p50_us < 25 else 'MISSED'}")
    return "\n".join(lines)
