"""The core's workloads: ``Partition`` and ``Reader`` calls beside
``queue.Queue``, the core's own calls and memcpy, timed by
``benchmarks/test_bench_core.py`` (pytest-benchmark) and
``benchmarks/core_ratios.py`` (interleaved side-by-side ratios, :func:`interleave`).

Every workload is one timed call that moves a known number of messages:

* ``append-1``   1000 single appends of a 100-byte value with a 16-byte key,
                 through ``Partition.append`` (the crossing, grafos._fast) and,
                 for comparison, ``queue.Queue().put`` and the raw cffi call;
* ``batch-100B`` one ``append_batch`` / one poll of 1024 such messages;
* ``batch-4KiB`` one ``append_batch`` / one poll of 256 messages of a
                 4096-byte value and a 16-byte key, next to ``gf_memcpy_bench``
                 moving the same bytes over a same-sized working set.

The rings live in one in-process ``Fabric`` and are reused for every round
(they overwrite). Both are filled once before anything is timed, so no round
pays first-touch page faults.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._core.bench import CopyRegions, RingCalls
from ..fabric import Fabric
from ..partition import Partition

KEY_SIZE = 16
VALUE_SIZE = 100
SMALL_CAPACITY = 65536           #: 100-byte ring: 65536 x 256 B = 16 MiB
SMALL_STRIDE = 256
SINGLE_N = 1000                  #: single appends per timed call
BATCH = 1024                     #: messages per batch call (Reader's default max_batch)

BIG_VALUE = 4096
BIG_CAPACITY = 4096              #: 4 KiB ring: 4096 x 4160 B = 16.25 MiB (fits the L3 of the test VM)
BIG_STRIDE = 4096 + 64
BIG_BATCH = 256                  #: 256 x 4112 B = 1 MiB of payload per call

FABRIC_SIZE = 64 << 20
TTL = 24 * 3600.0

GROUPS = {
    "append-1": "single append, 100 B value + 16 B key",
    "batch-100B": f"batch of {BATCH}, 100 B value + 16 B key",
    "batch-4KiB": f"batch of {BIG_BATCH}, 4096 B value + 16 B key",
}


@dataclass
class Workload:
    name: str
    group: str
    messages: int                        #: messages moved by one call of ``run``
    payload: int                         #: key + value bytes moved by one call
    run: Callable[[], Any]
    setup: Callable[[], None] | None = None
    check: Callable[[Any], None] | None = None   #: validates a result (not speed)
    doc: str = ""


def _keys(n: int) -> list[bytes]:
    return [b"key-%012d" % i for i in range(n)]


def _values(n: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size for i in range(n)]


def _expect(n: int) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        count = got if isinstance(got, int) else len(got)
        if count != n:
            raise RuntimeError(f"benchmark invalid: a poll returned {count} messages, expected {n}")
    return check


class Rig:
    """One fabric, a 100-byte ring and a 4 KiB ring, their data and readers."""

    def __init__(self) -> None:
        self.fabric = Fabric(size=FABRIC_SIZE)
        self.small = Partition.create(self.fabric, SMALL_CAPACITY, SMALL_STRIDE, ttl=TTL)
        self.big = Partition.create(self.fabric, BIG_CAPACITY, BIG_STRIDE, ttl=TTL)
        self.key = b"k" * KEY_SIZE
        self.value = b"v" * VALUE_SIZE
        self.keys = _keys(BATCH)
        self.values = _values(BATCH, VALUE_SIZE)
        self.big_keys = _keys(BIG_BATCH)
        self.big_values = _values(BIG_BATCH, BIG_VALUE)
        # the core's calls alone, batches packed once: the C floor of each call
        self.small_core, self.big_core = RingCalls(self.small.handle), RingCalls(self.big.handle)
        self.packed = self.small_core.packed(self.values, self.keys)
        self.big_packed = self.big_core.packed(self.big_values, self.big_keys)
        for _ in range(SMALL_CAPACITY // BATCH + 1):       # touch every page of both rings
            self.small.append_batch(self.values, keys=self.keys)
        for _ in range(BIG_CAPACITY // BIG_BATCH + 1):
            self.big.append_batch(self.big_values, keys=self.big_keys)
        self.small_reader = self.small.reader(0, max_batch=BATCH)
        self.big_reader = self.big.reader(0, max_batch=BIG_BATCH)
        self._read_step = {id(self.small): 0, id(self.big): 0}
        # memcpy reference: a batch-sized buffer and a ring-sized one
        self.ref_bytes = BIG_BATCH * (KEY_SIZE + BIG_VALUE)
        self.ref = CopyRegions(self.ref_bytes, BIG_CAPACITY * BIG_STRIDE)
        self.ref_step = 0
        self.queue: queue.Queue = queue.Queue()

    def close(self) -> None:
        self.small.close()
        self.big.close()
        self.fabric.close()

    # ---- untimed setup steps --------------------------------------------------
    def seek_next(self, p: Partition, reader: Any, n: int) -> None:
        """Point the reader at the next n published messages, walking the whole
        ring round after round like a consumer streaming through it."""
        latest = p.latest()
        window = p.capacity - 2 * n
        k = self._read_step[id(p)]
        self._read_step[id(p)] = k + 1
        reader.seek(0, latest - p.capacity + n + (k * n) % window)

    def next_ref_region(self) -> int:
        """The next batch-sized region of the ring-sized buffer."""
        region = self.ref_step % self.ref.regions
        self.ref_step += 1
        return region

    # ---- the workloads --------------------------------------------------------
    def workloads(self) -> list[Workload]:
        w: list[Workload] = []
        p, key, value, n = self.small, self.key, self.value, SINGLE_N
        one = KEY_SIZE + VALUE_SIZE

        def append_api() -> None:
            append = p.append
            for _ in range(n):
                append(value, key=key)

        core = self.small_core

        def append_cffi_raw() -> None:
            core.appends(key, value, n)

        def cffi_call_floor() -> None:
            core.empty_calls(n)

        q = self.queue

        def queue_put() -> None:
            put = q.put
            for _ in range(n):
                put(value)

        w += [
            Workload("append_api", "append-1", n, n * one, append_api,
                     doc="Partition.append(value, key=key): the public API, through the crossing"),
            Workload("queue_put", "append-1", n, n * one, queue_put, setup=q.queue.clear,
                     doc="queue.Queue().put(value): the reference the API must beat by 1.5x"),
            Workload("append_cffi_raw", "append-1", n, n * one, append_cffi_raw,
                     doc="lib.gf_ring_append called directly: the floor of any cffi wrapper"),
            Workload("cffi_call_floor", "append-1", n, 0, cffi_call_floor,
                     doc="lib.gf_ring_room(r): one cffi crossing that does no work (not a message)"),
        ]
        # ---- batches of 100-byte messages ----
        values, keys, rd = self.values, self.keys, self.small_reader
        packed = self.packed
        w += [
            Workload("append_batch_api", "batch-100B", BATCH, BATCH * one,
                     lambda: p.append_batch(values, keys=keys),
                     doc="Partition.append_batch(values, keys=keys) from lists of bytes"),
            Workload("append_batch_cffi_raw", "batch-100B", BATCH, BATCH * one,
                     packed.append,
                     doc="lib.gf_ring_append_batch on pre-packed buffers: the C floor"),
            Workload("poll_raw", "batch-100B", BATCH, BATCH * one, lambda: rd.poll_raw(BATCH),
                     setup=lambda: self.seek_next(p, rd, BATCH), check=_expect(BATCH),
                     doc="Reader.poll_raw(1024): one gf_poller_poll into the reader's buffers"),
            Workload("poll_batch", "batch-100B", BATCH, BATCH * one, lambda: rd.poll_batch(BATCH),
                     setup=lambda: self.seek_next(p, rd, BATCH), check=_expect(BATCH),
                     doc="Reader.poll_batch(1024): poll_raw + numpy views (Batch)"),
            Workload("poll_messages", "batch-100B", BATCH, BATCH * one, lambda: rd.poll(BATCH),
                     setup=lambda: self.seek_next(p, rd, BATCH), check=_expect(BATCH),
                     doc="Reader.poll(1024): one Message object per message (information)"),
        ]
        # ---- batches of 4 KiB messages ----
        big, big_rd = self.big, self.big_reader
        bvalues, bkeys = self.big_values, self.big_keys
        big_packed = self.big_packed
        bvalues_arr = np.frombuffer(b"".join(bvalues), dtype=np.uint8).reshape(len(bvalues), -1)
        bkeys_arr = np.frombuffer(b"".join(bkeys), dtype=np.uint8).reshape(len(bkeys), -1)
        nbytes = self.ref_bytes
        ref = self.ref
        region = [0]

        def ref_setup() -> None:
            region[0] = self.next_ref_region()

        w += [
            Workload("append_batch_4k_api", "batch-4KiB", BIG_BATCH, nbytes,
                     lambda: big.append_batch(bvalues, keys=bkeys),
                     doc="Partition.append_batch of 256 x 4 KiB"),
            Workload("append_batch_4k_array", "batch-4KiB", BIG_BATCH, nbytes,
                     lambda: big.append_batch(bvalues_arr, keys=bkeys_arr),
                     doc="Partition.append_batch of 256 x 4 KiB given as 2-D uint8 arrays (no join)"),
            Workload("append_batch_4k_cffi_raw", "batch-4KiB", BIG_BATCH, nbytes,
                     big_packed.append,
                     doc="lib.gf_ring_append_batch on pre-packed buffers"),
            Workload("poll_raw_4k", "batch-4KiB", BIG_BATCH, nbytes, lambda: big_rd.poll_raw(BIG_BATCH),
                     setup=lambda: self.seek_next(big, big_rd, BIG_BATCH), check=_expect(BIG_BATCH),
                     doc="Reader.poll_raw(256) of 4 KiB messages"),
            Workload("poll_batch_4k", "batch-4KiB", BIG_BATCH, nbytes, lambda: big_rd.poll_batch(BIG_BATCH),
                     setup=lambda: self.seek_next(big, big_rd, BIG_BATCH), check=_expect(BIG_BATCH),
                     doc="Reader.poll_batch(256) of 4 KiB messages"),
            Workload("memcpy_write_4k", "batch-4KiB", BIG_BATCH, nbytes,
                     lambda: ref.write(region[0]),
                     setup=ref_setup,
                     doc="gf_memcpy_bench: 1 MiB batch buffer -> next region of a ring-sized (16 MiB) buffer"),
            Workload("memcpy_read_4k", "batch-4KiB", BIG_BATCH, nbytes,
                     lambda: ref.read(region[0]),
                     setup=ref_setup,
                     doc="gf_memcpy_bench: next region of a ring-sized (16 MiB) buffer -> 1 MiB batch buffer"),
            Workload("memcpy_hot_4k", "batch-4KiB", BIG_BATCH, nbytes,
                     ref.hot,
                     doc="gf_memcpy_bench: 1 MiB -> the same 1 MiB every time (cache-hot peak, information)"),
        ]
        return w


#: (label, numerator workload, denominator workload, target ratio, unit)
#: unit "msg" compares messages/s, "byte" compares payload bytes/s.
RATIOS = [
    ("append API / queue.Queue.put", "append_api", "queue_put", 1.5, "msg"),
    ("raw cffi append / queue.Queue.put", "append_cffi_raw", "queue_put", 1.5, "msg"),
    ("4 KiB append_batch / memcpy (ring-sized dst)", "append_batch_4k_api", "memcpy_write_4k", 0.5, "byte"),
    ("4 KiB append_batch(2-D array) / memcpy (ring-sized dst)", "append_batch_4k_array", "memcpy_write_4k", 0.5, "byte"),
    ("4 KiB raw append_batch / memcpy (ring-sized dst)", "append_batch_4k_cffi_raw", "memcpy_write_4k", 0.5, "byte"),
    ("4 KiB poll_raw / memcpy (ring-sized src)", "poll_raw_4k", "memcpy_read_4k", 0.5, "byte"),
    ("4 KiB poll_batch / memcpy (ring-sized src)", "poll_batch_4k", "memcpy_read_4k", 0.5, "byte"),
    ("4 KiB append_batch / memcpy cache-hot (info)", "append_batch_4k_api", "memcpy_hot_4k", None, "byte"),
    ("4 KiB poll_raw / memcpy cache-hot (info)", "poll_raw_4k", "memcpy_hot_4k", None, "byte"),
]

#: absolute targets in messages/s
TARGETS = {
    "append_api": 2e6,
    "append_batch_api": 30e6,
    "poll_raw": 30e6,
    "poll_batch": 30e6,
}

#: the workloads' names, in :meth:`Rig.workloads` order (known without building a rig)
NAMES = ("append_api", "queue_put", "append_cffi_raw", "cffi_call_floor",
         "append_batch_api", "append_batch_cffi_raw", "poll_raw", "poll_batch", "poll_messages",
         "append_batch_4k_api", "append_batch_4k_array", "append_batch_4k_cffi_raw", "poll_raw_4k",
         "poll_batch_4k", "memcpy_write_4k", "memcpy_read_4k", "memcpy_hot_4k")


def interleave(rounds: int, warmup: int = 5) -> tuple[Rig, list[Workload], dict[str, list[float]]]:
    """Every workload once per round, twice in a row with the second timed (code,
    Python objects and the reader's buffers warm; the ring window the next one,
    cold), in an order rotated each round: a ratio is then taken between
    measurements a few milliseconds apart. Returns the rig (close it), the
    workloads and each one's seconds per round."""
    rig = Rig()
    ws = rig.workloads()
    times: dict[str, list[float]] = {w.name: [] for w in ws}
    clock = time.perf_counter
    for r in range(-warmup, rounds):
        k = r % len(ws)
        for w in ws[k:] + ws[:k]:
            for _ in range(2):
                if w.setup:
                    w.setup()
                t0 = clock()
                out = w.run()
                dt = clock() - t0
            if w.check:
                w.check(out)
            if r >= 0:
                times[w.name].append(dt)
    return rig, ws, times
