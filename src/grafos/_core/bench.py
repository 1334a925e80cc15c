"""The core's copy, alone, for the benchmarks' physical limit."""
from __future__ import annotations

from . import ffi, lib


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
