"""A share group's state region over one ring: records locked to members, each
with its delivery count (the policy around it is :mod:`grafos.mq.share`'s)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._check import check, raise_for
from . import ffi, lib

if TYPE_CHECKING:
    from ..fabric import Fabric
    from ..partition import Partition

#: what a settle does to a held record
OPS: dict[str, int] = {"ack": lib.GF_SHARE_ACK, "release": lib.GF_SHARE_RELEASE, "reject": lib.GF_SHARE_REJECT,
                       "archive": lib.GF_SHARE_ARCHIVE, "renew": lib.GF_SHARE_RENEW}
#: a row's flag: the record is at the delivery limit (dead-letter it, do not process)
DEAD: int = lib.GF_SHARE_DEAD
#: where a region's per-record entries start, and the state bits of an entry that is finished
ENTRIES_OFF: int = lib.GF_SHARE_ENTRIES_OFF
ACKED: int = lib.GF_SH_ACKED
#: an acquired row as numpy reads it (``gf_share_row``)
ROW = np.dtype([("offset", "<u8"), ("word", "<u8"), ("deadline", "<i8"), ("count", "<u4"),
                ("flags", "<u4"), ("last", "<u4"), ("reserved", "<u4")])
_ROW_SIZE: int = ffi.sizeof("gf_share_row")
_META_SIZE: int = ffi.sizeof("gf_msg_meta")
assert ROW.itemsize == _ROW_SIZE


@dataclass(frozen=True)
class State:
    """A region's window and counters (``gf_share_state``)."""
    floor: int
    next: int
    tail: int
    in_flight: int
    available: int
    delivered: int
    redelivered: int
    acked: int
    released: int
    rejected: int
    dead: int
    lost: int
    expired_locks: int
    oldest_lock_ns: int
    members: int


def region_size(capacity: int) -> int:
    return lib.gf_share_region_size(capacity)


def init(fabric: "Fabric", index: int, lease_id: int, part: "Partition", lock_ns: int, max_deliveries: int,
         start: int, now_ns: int) -> int:
    """Format a fresh region (under the metadata lock) for ``part`` from offset
    ``start``; the core's return code."""
    return lib.gf_share_init(fabric.handle, index, lease_id, part.handle, lock_ns, max_deliveries, start, now_ns)


class Buffers:
    """Where an acquire copies up to ``max_batch`` rows and their records' bytes."""

    __slots__ = ("rows", "meta", "buf", "size", "views")

    def __init__(self, max_batch: int, size: int) -> None:
        self.rows = ffi.new("gf_share_row[]", max_batch)
        self.meta = ffi.new("gf_msg_meta[]", max_batch)
        self.buf = ffi.new("uint8_t[]", size)
        self.size = size
        #: rows, meta and buf as buffers, as the crossing takes them (it checks their sizes)
        self.views = (ffi.buffer(self.rows), ffi.buffer(self.meta), ffi.buffer(self.buf))

    def row_array(self, got: int) -> np.ndarray:
        """The first ``got`` rows, as a structured array of :data:`ROW` (a view)."""
        return np.frombuffer(ffi.buffer(self.rows, got * _ROW_SIZE), dtype=ROW)

    def meta_bytes(self, got: int) -> Any:
        return ffi.buffer(self.meta, got * _META_SIZE)

    def buf_bytes(self) -> Any:
        return ffi.buffer(self.buf, self.size)


class Region:
    """One open share region (closed with the last reference)."""

    __slots__ = ("_h", "_one_o", "_one_w", "_one_ok", "_oks")

    def __init__(self, h: Any, max_batch: int) -> None:
        self._h = h
        # preallocated settle arrays: one record, and a polled batch's results
        self._one_o, self._one_w = ffi.new("uint64_t[1]"), ffi.new("uint64_t[1]")
        self._one_ok = ffi.new("uint8_t[1]")
        self._oks = ffi.new("uint8_t[]", max_batch)

    @classmethod
    def open(cls, fabric: "Fabric", index: int, lease_id: int, part: "Partition", max_batch: int = 1
             ) -> "tuple[Region | None, int]":
        """(the region, 0), or (None, the core's error code)."""
        err = ffi.new("int *")
        h = lib.gf_share_open(fabric.handle, index, lease_id, part.handle, err)
        if h == ffi.NULL:
            return None, err[0]
        return cls(ffi.gc(h, lib.gf_share_close), max_batch), 0

    def join(self, pid: int, name: bytes) -> int:
        """A member token (> 0) for a new member called ``name``."""
        return check(lib.gf_share_join(self._h, pid, name, len(name)))

    def member_name(self, token: int) -> bytes:
        """Member ``token``'s name, b"" if no longer known."""
        name = ffi.new("uint8_t[64]")
        n = lib.gf_share_member_name(self._h, token, name, 64)
        return ffi.buffer(name, n)[:] if n > 0 else b""

    def acquire(self, member: int, max_records: int, now_ns: int, bufs: Buffers) -> int:
        """Lock up to ``max_records`` records to ``member`` into ``bufs``: how many,
        or the core's error code."""
        return lib.gf_share_acquire(self._h, member, max_records, now_ns, 0, bufs.rows, bufs.meta, bufs.buf,
                                    bufs.size)

    def settle_one(self, op: int, offset: int, word: int, now_ns: int) -> tuple[int, Any]:
        """Apply ``op`` to one held record: (the core's return code, its ok flag in a sequence)."""
        o, w, ok = self._one_o, self._one_w, self._one_ok
        o[0], w[0] = offset, word
        return lib.gf_share_settle(self._h, op, o, w, 1, now_ns, ok), ok

    def settle_packed(self, op: int, packed: bytes, k: int, now_ns: int) -> tuple[int, Any]:
        """Apply ``op`` to k records given as k offsets then k words (native uint64),
        as a poll packed them: (return code, ok flags)."""
        arr = ffi.from_buffer("uint64_t[]", packed)
        return lib.gf_share_settle(self._h, op, arr, arr + k, k, now_ns, self._oks), self._oks

    def settle(self, op: int, offsets: np.ndarray, words: np.ndarray, now_ns: int) -> tuple[int, np.ndarray]:
        """Apply ``op`` to the records (uint64 offsets and words): (return code, ok flags)."""
        k = len(offsets)
        ok = np.zeros(k, dtype=np.uint8)
        rc = lib.gf_share_settle(self._h, op, ffi.from_buffer("uint64_t[]", offsets),
                                 ffi.from_buffer("uint64_t[]", words), k, now_ns, ffi.from_buffer("uint8_t[]", ok))
        return rc, ok

    def floor(self) -> int:
        """The lowest unfinished offset (the group's gate position)."""
        return lib.gf_share_floor(self._h)

    def state(self, now_ns: int, context: str) -> State:
        rc, st = self._state(now_ns)
        if st is None:
            raise_for(rc, context)
        return st

    def try_state(self, now_ns: int) -> State | None:
        """The region's state, None if the core refused."""
        return self._state(now_ns)[1]

    def _state(self, now_ns: int) -> tuple[int, State | None]:
        st = ffi.new("gf_share_state *")
        rc = lib.gf_share_state_get(self._h, now_ns, st)
        if rc < 0:
            return rc, None
        return rc, State(st.floor, st.next, st.tail, st.in_flight, st.available, st.delivered, st.redelivered,
                         st.acked, st.released, st.rejected, st.dead, st.lost, st.expired_locks,
                         st.oldest_lock_ns, st.members)
