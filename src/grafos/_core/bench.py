"""The core alone, for the benchmarks' floors: its copy (``gf_memcpy_bench``),
the physical limit a copying path is compared with, and its ring calls with
nothing around them, the limit of any wrapper. :mod:`grafos.benchsuite` times
these; nothing else calls them."""
from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from . import ffi, lib

_PAGE = 4096


def _aligned(nbytes: int) -> tuple[Any, Any]:
    """(owner, page-aligned pointer) of ``nbytes`` zeroed bytes: glibc's memcpy can be
    20x slower at some distances between source and destination on AMD Zen (see
    gf_copy), so a reference copy takes its best case."""
    mem = mmap.mmap(-1, nbytes)     # anonymous: zeroed, and starts on a page
    return mem, ffi.cast("uint8_t *", ffi.from_buffer(mem))


class CopyWalk:
    """``nbytes`` at a time copied out of a ``span``-byte buffer, chunk after
    chunk, as a reader walks a ring (``gf_memcpy_bench``)."""

    def __init__(self, span: int, nbytes: int) -> None:
        self._src = ffi.new("uint8_t[]", span)
        self._dst = ffi.new("uint8_t[]", nbytes)
        ffi.memmove(self._src, b"\x5a" * span, span)
        self._starts = [self._src + off for off in range(0, span - nbytes + 1, nbytes)]
        self._n = nbytes

    def one_pass(self) -> int:
        """Copy every chunk once; the bytes copied."""
        dst, n, copy = self._dst, self._n, lib.gf_memcpy_bench
        for s in self._starts:
            copy(dst, s, n, 1)
        return len(self._starts) * n


class CopyRegions:
    """A batch-sized buffer and a ring-sized one: a batch written into (or read out
    of) the next batch-sized region of the ring-sized buffer, as a batch call
    walks a ring. Both are touched once, so no copy pays first-touch faults."""

    def __init__(self, batch_bytes: int, ring_bytes: int) -> None:
        self.nbytes = batch_bytes
        self._batch = ffi.new("uint8_t[]", batch_bytes)
        self._ring = ffi.new("uint8_t[]", ring_bytes)
        self.regions = ring_bytes // batch_bytes
        lib.gf_memcpy_bench(self._ring, self._ring + ring_bytes // 2, ring_bytes // 2, 2)

    def write(self, region: int) -> None:
        """The batch buffer -> region ``region`` of the ring-sized buffer."""
        lib.gf_memcpy_bench(self._ring + region * self.nbytes, self._batch, self.nbytes, 1)

    def read(self, region: int) -> None:
        """Region ``region`` of the ring-sized buffer -> the batch buffer."""
        lib.gf_memcpy_bench(self._batch, self._ring + region * self.nbytes, self.nbytes, 1)

    def hot(self) -> None:
        """The same batch-sized region every time: the cache-hot peak."""
        lib.gf_memcpy_bench(self._ring, self._batch, self.nbytes, 1)


class AlignedCopy:
    """One memcpy of a ``working_set``-byte buffer into another, both page-aligned."""

    def __init__(self, working_set: int) -> None:
        self._src_mem, self._src = _aligned(working_set)
        self._dst_mem, self._dst = _aligned(working_set)
        self.nbytes = working_set
        ffi.memmove(self._src, b"\x5a" * working_set, working_set)
        lib.gf_memcpy_bench(self._dst, self._src, working_set, 1)

    def copy(self, reps: int) -> int:
        """Copy the buffer ``reps`` times; the bytes copied."""
        lib.gf_memcpy_bench(self._dst, self._src, self.nbytes, reps)
        return reps * self.nbytes


class SlotCopies:
    """``batch`` values of ``size`` bytes copied out of a ring of ``capacity`` slots
    of ``stride`` bytes (each value ``head`` bytes into its slot) into ``batch``
    distinct destinations: the copies of a poll, and nothing else."""

    def __init__(self, capacity: int, stride: int, size: int, batch: int, head: int = 40) -> None:
        self._ring = ffi.new("uint8_t[]", capacity * stride)
        self._dst = ffi.new("uint8_t[]", batch * size + _PAGE)
        ffi.memmove(self._ring, b"\x5a" * (capacity * stride), capacity * stride)
        ffi.memmove(self._dst, b"\x5a" * (batch * size), batch * size)
        self._slots = [self._ring + i * stride + head for i in range(capacity)]
        self._dsts = [self._dst + i * size for i in range(batch)]
        self._size = size
        self._pos = 0

    def one_batch(self) -> int:
        """Copy the next ``batch`` slots' values; how many."""
        copy, size, slots, pos = lib.gf_memcpy_bench, self._size, self._slots, self._pos
        for d in self._dsts:
            copy(d, slots[pos], size, 1)
            pos = (pos + 1) % len(slots)
        self._pos = pos
        return len(self._dsts)


class RingCalls:
    """The ring's append calls made straight on the core, on ``ring`` (a
    :class:`~grafos.partition.Partition`'s ``handle``): the C work of
    ``Partition.append``/``append_batch`` behind cffi and no wrapper."""

    def __init__(self, ring: Any) -> None:
        self._r = ring

    def appends(self, key: bytes, value: bytes, n: int) -> None:
        """``n`` single appends of ``value`` under ``key``."""
        app, r, null, kl, vl = lib.gf_ring_append, self._r, ffi.NULL, len(key), len(value)
        for _ in range(n):
            app(r, key, kl, 1, null, 0, value, vl, 0)

    def empty_calls(self, n: int) -> None:
        """``n`` crossings into the core that do no work (``gf_ring_room``)."""
        room, r = lib.gf_ring_room, self._r
        for _ in range(n):
            room(r)

    def packed(self, values: list[bytes], keys: list[bytes]) -> "PackedBatch":
        """``values`` under ``keys``, packed once as the core's batch call takes them."""
        return PackedBatch(self._r, values, keys)


class PackedBatch:
    """A batch packed once (contiguous keys and values, their lengths): each
    :meth:`append` is the core's batch call alone."""

    def __init__(self, ring: Any, values: list[bytes], keys: list[bytes]) -> None:
        vb, kb = b"".join(values), b"".join(keys)
        vl = np.fromiter(map(len, values), dtype=np.uint32, count=len(values))
        kl = np.fromiter(map(len, keys), dtype=np.uint32, count=len(keys))
        self._keep = (vb, vl, kb, kl)
        self._args = (ring, len(values), ffi.from_buffer("uint8_t[]", kb), ffi.from_buffer("uint32_t[]", kl),
                      ffi.from_buffer("uint8_t[]", vb), ffi.from_buffer("uint32_t[]", vl), 0,
                      ffi.new("uint64_t[]", len(values)))

    def append(self) -> int:
        """One ``gf_ring_append_batch`` of the whole batch; the core's return code."""
        return lib.gf_ring_append_batch(*self._args)
