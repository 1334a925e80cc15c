"""Large messages, side by side in one run: grafos against faster-fifo and memcpy
(``benchmarks/bench_payloads.py`` runs :func:`one_round` round after round).

* **cross-process, 64 KiB**, producer process -> consumer process, single sends
  (``send_keyed`` / faster-fifo ``put``) and batches of 8 (``send_batch`` /
  ``put_many``), on a ring of about 2 MiB sized in 64 KiB slots, and on a ring
  of 4,096 slots of 512 B (each message spans 129 of them). faster-fifo gets a
  2 MiB buffer in both.
* **cross-process, 1 MiB** single sends, the ring 4 MiB of 512 B slots.
* **loan + peek, 1 MiB**, cross-process: the producer fills a loan in place
  (``Loan.write``: one copy of the payload into the ring), the consumer peeks and touches
  every byte of the view (a sum over 8-byte words), against one memcpy of the
  same bytes in one process.
* **latency, cross-process**: p50 / p99 one-way time of a 64 B ``send_keyed``
  read by ``poll``, and of a 1 MiB loan read by ``peek``, one message in flight,
  both sides polling without sleeping. The producer writes
  ``time.monotonic_ns()`` into the value just before the send or the commit
  (the fill of the loan is not counted: it is the caller's own work), the
  consumer subtracts it from its clock when the message arrives. The loan runs
  on a ring of 512 B slots (2,049 sequence words per message) and on a ring of
  four 1 MiB slots.
* **in-process 4 KiB batches** of 64 (``append_batch`` then a poll), on a ring
  with checksums (verified, or not verified by the reader), on a ring without
  checksums (the in-process default), and read by peek (a message object per
  value, or ``Peek.arrays``: one array per run of equal values), against a
  memcpy of the same working set (write + read is two copies: the ratio is to
  one; a peek reads in place, after one copy).
* **in-process 64 KiB polls**: ``poll(64)`` (a ``Message`` and its ``bytes``
  per value) and ``poll_batch(64)`` out of a ring of 256 x 64 KiB slots that a
  ``send_batch(64)`` filled just before (only the poll is timed), with and
  without checksums, against memcpy of 64 x 64 KiB walking a ring-sized
  buffer into 64 distinct 64 KiB destinations (the same working set).
  ``--only inproc-poll`` runs these rows alone.

Topics on the named fabric carry checksums by default (``TopicConfig(checksum=None)``);
the cross-process rows run with them and, marked "no checksums", without.
Rates are messages (and GB/s) reaching the consumer over the consumer's clock.
This machine's cross-core copies swing several-fold from one minute to the next
(two C threads passing 64 KiB through a 2 MiB buffer ran at 3 to 33 GB/s, same
binary, minutes apart), so every row runs ``--rounds`` times, each round puts
each row next to its peer, and the summary gives the median round's ratio with
the range. Nothing here asserts a speed.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

import numpy as np

from . import peers
from .grafos_runs import slot_stride

CTX = mp.get_context("spawn")
KiB, MiB, GB = 1 << 10, 1 << 20, 1 << 30


# ---- producers (child processes) -------------------------------------------------------
def _grafos_producer(bus: str, size: int, batch: int, mode: str, n: int, window: int, consumed, go) -> None:
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicManager
    mgr = TopicManager.open(bus)
    prod = Producer("t")
    value = b"\x5a" * size
    values = np.full((batch, size), 0x5A, dtype=np.uint8)
    go.wait()
    sent = 0
    while sent < n:
        while sent - consumed.value > window:
            pass
        if mode == "batch":
            prod.send_batch(mgr, values)
            sent += batch
        elif mode == "loan":
            with prod.loan(mgr, size) as ln:
                ln.write(value)
            sent += 1
        else:
            prod.send_keyed(mgr, b"k", value)
            sent += 1


def _ff_producer(q, size: int, batch: int, mode: str, n: int, go) -> None:
    value = b"\x5a" * size
    go.wait()
    sent = 0
    while sent < n:
        if mode == "batch":
            q.put_many([value] * batch, timeout=60)
            sent += batch
        else:
            q.put(value, timeout=60)
            sent += 1


# ---- runs ------------------------------------------------------------------------------
def grafos_cross(size: int, mode: str, capacity: int, stride: int, seconds: float, batch: int = 8,
                 checksum: bool = True) -> float:
    from grafos.mq.consumer import Consumer
    from grafos.mq.topic import TopicConfig, TopicManager
    bus = "bench-pl-" + uuid.uuid4().hex[:8]
    ring = capacity * stride
    mgr = TopicManager.open(bus, size=ring + 64 * MiB)
    try:
        mgr.create("t", TopicConfig(1, capacity, stride, 600.0, checksum=checksum))
        span = -(-(size + 1 + 40) // stride)         # the 1-byte key counts
        step = batch if mode == "batch" else 1
        # a ring never blocks its producer: it stays at most a ring's worth of
        # messages (less the one being read) ahead of the consumer, as a bounded queue would
        window = max(0, capacity // span - 1 - step)
        n = max(64, int(seconds * (3 * GB // size if mode != "batch" else 4 * GB // size)))
        consumed = CTX.Value("q", 0, lock=False)
        go = CTX.Event()
        p = CTX.Process(target=_grafos_producer, args=(bus, size, batch, mode, n, window, consumed, go))
        p.start()
        c = Consumer("t", max_batch=64)
        c.poll(mgr, 1)
        got, t0, first = 0, 0.0, 0
        go.set()
        while got < n:
            if mode == "loan":
                with c.peek(mgr, 64) as pk:
                    for m in pk:
                        np.frombuffer(m.value, np.uint64).sum()
                k = len(pk)
            else:
                k = len(c.poll_batch(mgr, 64, timeout=1.0))
            if k and not got:          # the clock starts at the first receipt
                t0, first = time.monotonic(), k
            got += k
            consumed.value = got
            if not k and not p.is_alive():
                if c.lost().get(0, 0):
                    raise RuntimeError(f"the producer lapped the consumer: {c.lost()} lost")
                if got < n:     # it died (a loan held past the bounded wait): what arrived counts
                    print(f"  (the producer stopped after {got} of {n} messages: exit code {p.exitcode})")
                    break
        dt = time.monotonic() - t0
        p.join(30)
        return (got - first) / dt
    finally:
        mgr.close()
        TopicManager.unlink(bus)


def _latency_producer(bus: str, size: int, n: int, acked, go) -> None:
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicManager
    mgr = TopicManager.open(bus)
    prod = Producer("t")
    value = bytearray(b"\x5a" * size)
    go.wait()
    for i in range(n):
        while acked.value < i:          # one message in flight
            pass
        if size > 64:
            with prod.loan(mgr, size) as ln:
                ln.write(value)
                ln.view[:8] = time.monotonic_ns().to_bytes(8, "little")
        else:
            value[:8] = time.monotonic_ns().to_bytes(8, "little")
            prod.send_keyed(mgr, b"k", value)


def grafos_latency(size: int, capacity: int, stride: int, n: int, checksum: bool = True) -> tuple[float, float]:
    """(p50, p99) one-way microseconds, producer process -> consumer process."""
    from grafos.mq.consumer import Consumer
    from grafos.mq.topic import TopicConfig, TopicManager
    bus = "bench-lat-" + uuid.uuid4().hex[:8]
    mgr = TopicManager.open(bus, size=capacity * stride + 64 * MiB)
    try:
        mgr.create("t", TopicConfig(1, capacity, stride, 600.0, checksum=checksum))
        acked = CTX.Value("q", 0, lock=False)
        go = CTX.Event()
        p = CTX.Process(target=_latency_producer, args=(bus, size, n, acked, go))
        p.start()
        c = Consumer("t", max_batch=4)
        c.poll(mgr, 1)
        lat: list[int] = []
        go.set()
        while len(lat) < n:
            if size > 64:
                with c.peek(mgr, 1) as pk:
                    for m in pk:
                        lat.append(time.monotonic_ns() - int.from_bytes(m.value[:8], "little"))
            else:
                for _, m in c.poll(mgr, 1):
                    lat.append(time.monotonic_ns() - int.from_bytes(m.value[:8], "little"))
            acked.value = len(lat)
        p.join(30)
        lat = sorted(lat[n // 10:])          # the first tenth warms up
        return lat[len(lat) // 2] / 1e3, lat[len(lat) * 99 // 100] / 1e3
    finally:
        mgr.close()
        TopicManager.unlink(bus)


def ff_cross(size: int, mode: str, buf: int, seconds: float, batch: int = 8) -> float:
    q = peers.FasterFifo.queue(buf)
    n = max(64, int(seconds * (1 * GB // size)))
    go = CTX.Event()
    p = CTX.Process(target=_ff_producer, args=(q, size, batch, mode, n, go))
    p.start()
    got, t0, first = 0, 0.0, 0
    go.set()
    while got < n:
        k = len(q.get_many(timeout=10, max_messages_to_get=64))
        if k and not got:
            t0, first = time.monotonic(), k
        got += k
    dt = time.monotonic() - t0
    p.join(30)
    return (n - first) / dt


def memcpy_rate(size: int, seconds: float, working_set: int) -> float:
    """Bytes/s of one memcpy over a working set like the ring's (both buffers page-aligned)."""
    from .._core.bench import AlignedCopy
    ref = AlignedCopy(working_set)
    reps = max(1, int(4 * GB * seconds // working_set))
    t0 = time.perf_counter()
    copied = ref.copy(reps)
    return copied / (time.perf_counter() - t0)


def inproc_4k(how: str, seconds: float, batch: int = 64, size: int = 4 * KiB) -> float:
    """Messages/s of append_batch + read of `batch` 4 KiB messages, one thread.
    how: "crc" (checksums written and verified), "noverify" (written, not
    verified), "nocrc" (a ring without checksums), "peek" (without checksums,
    read in place, a message object and a view per value), "arrays" (read in
    place as arrays, ``Peek.arrays``: no object per message)."""
    from grafos import Fabric
    from grafos.partition import Partition
    from grafos.reader import Reader
    fab = Fabric(64 * MiB)
    part = Partition.create(fab, 4 * batch, slot_stride(size), ttl=600, checksum=how in ("crc", "noverify"))
    rd = Reader(fab, [part], max_batch=batch, check_crcs=(how != "noverify"))
    values = np.full((batch, size), 0x5A, dtype=np.uint8)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        part.append_batch(values)
        if how == "peek":
            with rd.peek(batch) as pk:
                k = sum(1 for m in pk if m.value)
        elif how == "arrays":
            with rd.peek(batch) as pk:
                k = sum(len(a) for a in pk.arrays())
        else:
            k = rd.poll_raw(batch)
        n += k
    dt = time.perf_counter() - t0
    fab.close()
    return n / dt


def inproc_poll(how: str, seconds: float, checksum: bool, size: int = 64 * KiB, batch: int = 64,
                capacity: int = 256) -> float:
    """Messages/s of ``poll(batch)`` (how="poll") or ``poll_batch(batch)``
    (how="batch") of ``size``-byte values; each poll reads what one untimed
    ``send_batch`` just wrote, and the caller drops each poll's messages before
    the next."""
    from grafos.mq import SeekPolicy, TopicConfig, TopicManager
    mgr = TopicManager()
    mgr.create("big", TopicConfig(num_partitions=1, partition_capacity=capacity,
                                  partition_stride=slot_stride(size), checksum=checksum))
    prod, cons = mgr.producer("big"), mgr.consumer("big")
    cons.seek(SeekPolicy.Earliest)
    values = np.full((batch, size), 0x5A, dtype=np.uint8)
    poll = cons.poll if how == "poll" else cons.poll_batch
    for _ in range(2 * capacity // batch):      # every slot written once, the consumer warm
        prod.send_batch(values)
        poll(batch)
    n, spent, t_end = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        prod.send_batch(values)
        t0 = time.perf_counter()
        got = poll(batch)
        spent += time.perf_counter() - t0
        n += len(got)
        del got
    mgr.close()
    return n / spent


def memcpy_walk(size: int, seconds: float, batch: int = 64, capacity: int = 256) -> float:
    """Messages/s of memcpy of ``batch`` messages at a time out of a ring of
    ``capacity`` slots into ``batch`` distinct destinations: a poll's copies."""
    from .._core.bench import SlotCopies
    copies = SlotCopies(capacity, slot_stride(size), size, batch)
    n, spent, t_end = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        n += copies.one_batch()
        spent += time.perf_counter() - t0
    return n / spent


def poll_rows(s: float, rate) -> None:   # noqa: ANN001
    size = 64 * KiB
    mc = memcpy_walk(size, s)
    rate("memcpy 64 x 64 KiB out of a 256-slot ring", mc, size)
    for crc, tag in [(False, "no checksums"), (True, "checksums verified")]:
        rate(f"grafos in-process poll(64) of 64 KiB, {tag}", inproc_poll("poll", s, crc), size, mc, "memcpy")
        rate(f"grafos in-process poll_batch(64) of 64 KiB, {tag}", inproc_poll("batch", s, crc), size, mc,
             "memcpy")


def one_round(s: float, only: str = "all") -> list[tuple[str, str, float, float | None, str]]:
    """Every row once, each next to what it is compared with: (group, name, value,
    ratio or None, unit) per row. value: messages/s, or p50 microseconds for
    latency rows (unit "us"), whose ratio is to the 64 B p50."""
    out: list[tuple[str, str, float, float | None, str]] = []

    def rate(name: str, r: float, size: int, peer: float | None = None, peer_name: str = "") -> None:
        out.append(("rate", name, r, r / peer if peer else None, peer_name))
        gbs = r * size / 1e9
        print(f"  {name:<62} {r / 1e3:9.1f} k/s {gbs:6.2f} GB/s"
              + (f"  {r / peer:5.2f}x {peer_name}" if peer else ""), flush=True)

    poll_rows(s, rate)
    if only == "inproc-poll":
        return out
    size = 64 * KiB
    ff1 = ff_cross(size, "single", 2 * MiB, s)
    rate("faster-fifo 64 KiB put/get_many, 2 MiB buffer", ff1, size)
    ffb = ff_cross(size, "batch", 2 * MiB, s)
    rate("faster-fifo 64 KiB put_many(8)/get_many, 2 MiB buffer", ffb, size)
    for crc, tag in [(True, ""), (False, ", no checksums")]:
        rate(f"grafos 64 KiB send_keyed, 32 x 64 KiB slots{tag}",
             grafos_cross(size, "single", 32, slot_stride(size + 1), s, checksum=crc), size, ff1, "faster-fifo single")
        rate(f"grafos 64 KiB send_batch(8), 32 x 64 KiB slots{tag}",
             grafos_cross(size, "batch", 32, slot_stride(size + 1), s, checksum=crc), size, ffb, "faster-fifo put_many")
        rate(f"grafos 64 KiB send_keyed, 4096 x 512 B slots{tag}",
             grafos_cross(size, "single", 4096, 512, s, checksum=crc), size, ff1, "faster-fifo single")
        rate(f"grafos 64 KiB send_batch(8), 4096 x 512 B slots{tag}",
             grafos_cross(size, "batch", 4096, 512, s, checksum=crc), size, ffb, "faster-fifo put_many")
    big = MiB
    ffm = ff_cross(big, "single", 4 * MiB, s)
    rate("faster-fifo 1 MiB put/get_many, 4 MiB buffer", ffm, big)
    for crc, tag in [(True, ""), (False, ", no checksums")]:
        rate(f"grafos 1 MiB send_keyed, 8192 x 512 B slots (4 MiB){tag}",
             grafos_cross(big, "single", 8192, 512, s, checksum=crc), big, ffm, "faster-fifo")
    mc = memcpy_rate(big, s, 4 * MiB) / big
    rate("memcpy 1 MiB (4 MiB working set)", mc, big)
    for crc, tag in [(True, ""), (False, ", no checksums")]:
        rate(f"grafos 1 MiB loan + peek (touching every byte), 4 MiB ring{tag}",
             grafos_cross(big, "loan", 8192, 512, s, checksum=crc), big, mc, "memcpy")
    n = max(200, int(1000 * s))
    small = grafos_latency(64, 4096, 512, n)
    out.append(("latency", "grafos 64 B send_keyed -> poll, one-way latency", small[0], None, "us"))
    print(f"  {out[-1][1]:<62} p50 {small[0]:7.1f} us  p99 {small[1]:7.1f} us", flush=True)
    for cap, stride, crc, tag in [(8192, 512, True, "8192 x 512 B slots"),
                                  (8192, 512, False, "8192 x 512 B slots, no checksums"),
                                  (4, slot_stride(big), True, "4 x 1 MiB slots"),
                                  (4, slot_stride(big), False, "4 x 1 MiB slots, no checksums")]:
        lat = grafos_latency(big, cap, stride, n // 2, checksum=crc)
        out.append(("latency", "grafos 1 MiB loan -> peek, " + tag, lat[0], lat[0] / small[0], "us"))
        print(f"  {out[-1][1]:<62} p50 {lat[0]:7.1f} us  p99 {lat[1]:7.1f} us  {lat[0] / small[0]:5.2f}x the 64 B p50",
              flush=True)
    mc4 = memcpy_rate(4 * KiB, s, 256 * slot_stride(4 * KiB)) / (4 * KiB)
    rate("memcpy 4 KiB (ring-sized working set, 1 MiB)", mc4, 4 * KiB)
    for how, name in [("crc", "checksums verified"), ("noverify", "checksums not verified"),
                      ("nocrc", "no checksums"), ("peek", "no checksums, peek by message"),
                      ("arrays", "no checksums, peek as arrays")]:
        rate(f"grafos in-process 4 KiB batch(64), {name}", inproc_4k(how, s), 4 * KiB, mc4, "memcpy")
    return out
