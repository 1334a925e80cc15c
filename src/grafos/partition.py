"""Partition rings: ``capacity`` slots of ``stride`` bytes in one lease.

Offset n lives in slot n % capacity. Producers in any process append at
once; each slot publishes itself (no shared "published" cursor), readers
validate a slot's sequence before and after copying it, and a writer that
died half-way is stepped over after the fabric's bounded wait.

A message larger than a slot's room spans consecutive slots, up to the whole
ring less one 40-byte header (:attr:`Partition.max_message`). It takes one
offset per slot it occupies, and a message that would straddle the ring's end
starts at slot 0 after padding offsets, so offsets stay monotonic but may have
gaps: the next message after one at offset n is at n + its span (or later).
``latest``, ``earliest``, ``lost`` and lag count offsets, not messages.

A ring is created with or without slot checksums (``checksum=``, fixed for its
life and recorded in its header, so every process agrees). With them, a writer
sums CRC32C as it copies and a reader verifies it as it copies out: damaged
memory, a torn write found when a file fabric is reopened, or bytes a stalled
writer left in a slot taken over after the bounded wait are counted as
``corrupt`` and skipped. Without them, writes and reads are plain copies and
only the sequence words guard publication (a live reader still never returns
a torn message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import _validate
from ._check import check, raise_for
from ._clock import now_ns
from ._crossing import Binding, SendPath
from ._core import ffi, layout, lib
from ._core.sender import Sender
from .errors import InvalidArgument, MessageTooLarge
from .fabric import Fabric, MemLease, _expiry, reusing
from .message import Message, encode_headers

if TYPE_CHECKING:
    from .loan import Loan
    from .reader import Reader


#: a partition's offsets run from 0 to MAX_OFFSET, 2**OFFSET_BITS - 1 (the
#: core's bound, grafos._core.layout, where the partitions are)
OFFSET_BITS: int = layout.OFFSET_BITS
MAX_OFFSET: int = layout.MAX_OFFSET


@dataclass(frozen=True)
class GateState:
    """What a ring's header says of its gate (see :mod:`grafos.mq.gate`)."""
    gate: int            #: producers claim offsets below it only (0: nobody gates)
    blocked: int         #: live producers waiting for room now (at most RING_WAITERS: at least that many)
    blocked_ns: int      #: nanoseconds producers spent waiting for room
    full_raised: int     #: BufferFull raised on the ring


@dataclass(frozen=True)
class PartitionState:
    earliest: int        #: oldest offset still in the ring
    latest: int          #: next offset to be written (the end)
    lost: int            #: offsets overwritten so far
    abandoned: int       #: slots skipped after a writer died mid-append
    capacity: int
    stride: int
    alive: bool
    expires_at: float    #: seconds since the epoch (0.0 if dead)


class _Appender(SendPath):
    """The crossing's send path over one ring. What it cannot take itself comes
    back here as None, and Partition.append's slow path checks and raises."""

    def _send_fallback(self, mgr: object, value: object, headers: object = None) -> None:
        return None

    def _send_keyed_fallback(self, mgr: object, key: object, value: object, headers: object = None) -> None:
        return None


_RING = object()        # what an _Appender is bound to: a ring has no manager
_FOREVER = Binding()    # a partition's own view of its ring never goes stale


def region_size(capacity: int, stride: int) -> int:
    return lib.gf_ring_region_size(capacity, stride)


class Partition:
    """One ring. Create with :meth:`create`, attach with ``Partition(fabric, lease)``."""

    def __init__(self, fabric: Fabric, lease: MemLease) -> None:
        if not isinstance(lease, MemLease):
            raise _validate.InvalidType(f"lease must be a MemLease, not {type(lease).__name__}")
        err = ffi.new("int *")
        r = lib.gf_ring_open(fabric.handle, lease.index, lease.id, err)
        if r == ffi.NULL:
            raise_for(err[0], "partition")
        self.fabric = fabric
        self.lease = lease
        self._r = ffi.gc(r, lib.gf_ring_close)
        st = ffi.new("gf_ring_state *")
        check(lib.gf_ring_state_get(self._r, 0, st))
        self.capacity: int = st.capacity
        self.stride: int = st.stride
        self.room: int = lib.gf_ring_room(self._r)   #: bytes for key + headers + value in one slot
        #: the largest key + headers + value a message may have (it then spans several slots)
        self.max_message: int = lib.gf_ring_max_message(self._r)
        #: slots carry CRC32C checksums (set at creation, see the module doc)
        self.checksum: bool = bool(lib.gf_ring_checksum(self._r))
        # a one-partition sender: the producer hot path, reused for append()
        sender = Sender(ffi.new("gf_ring *[1]", [self._r]), 1, lib.GF_PART_KEYHASH)
        app = _Appender()
        app._bind_fast(_RING, _FOREVER, sender.state, sender)
        self._send_keyed = app.send_keyed

    @classmethod
    def create(cls, fabric: Fabric, capacity: int, stride: int, *, ttl: float | None = None,
               expires_at: float | None = None, owner_tag: int = 0,
               now: float | None = None, checksum: bool = True) -> "Partition":
        if not isinstance(checksum, bool):
            raise _validate.InvalidType(f"checksum must be a bool, not {type(checksum).__name__}")
        _validate.integer(capacity, "capacity", 1, 1 << 30)
        _validate.integer(stride, "stride", lib.GF_SLOT_HDR_SIZE + 8, 16 << 20)
        if stride % 8:
            raise InvalidArgument(f"stride must be a multiple of 8, got {stride}")
        t = now_ns(now)
        exp = _expiry(t, ttl, expires_at)
        out = ffi.new("gf_lease_info *")
        reusing(fabric, None, t)
        with fabric.locked():
            check(lib.gf_lease_acquire(fabric.handle, region_size(capacity, stride), exp, owner_tag, t, out))
            rc = lib.gf_ring_init(fabric.handle, out.index, out.id, capacity, stride, t, checksum)
            if rc < 0:
                lib.gf_lease_release(fabric.handle, out.index, out.id)
                raise_for(rc)
        return cls(fabric, MemLease(fabric, out.index, out.id))

    def close(self) -> None:
        """Drop this handle. The C ring is freed with the last reference (a reader or
        a producer may still hold its pointer), never under them."""
        self._closed = True

    @property
    def handle(self):  # noqa: ANN201
        return self._r

    def alive(self) -> bool:
        """True while the partition's lease is alive: its region is surely this
        ring's (a dead lease's region may already hold another topic's ring)."""
        return bool(lib.gf_ring_alive(self._r))

    # ---- the gate (policy in grafos.mq.gate) ---------------------------------------------
    def set_gate(self, gate: int, context: str = "gate") -> bool:
        """Store the gate producers check; False if the ring's lease was reclaimed
        (the ring is then not ours to write). ``context`` prefixes an error."""
        rc = lib.gf_ring_set_gate(self._r, gate)
        if rc == lib.GF_E_EXPIRED:
            return False
        check(rc, context)
        return True

    def publish_gate(self, epoch: int, key: str, value: bytes, low: int | None,
                     context: str = "gate", lock_ns: int | None = None) -> int | None:
        """Under the fabric lock: if the metadata epoch is still ``epoch``, put the
        gating record ``key`` -> ``value`` and store the gate from ``low``, the
        lowest live position of the caller's copy of the records (None: nobody
        gates). Returns the epoch after it; None if the epoch had moved or the
        ring's lease was reclaimed (then nothing is stored in the ring).
        ``lock_ns``: the call takes the lock itself, waiting up to that long
        (inside :meth:`Fabric.lock_in_core`)."""
        k = key.encode()
        out = ffi.new("uint64_t *")
        low_ = lib.GF_GATE_NOBODY if low is None else low
        if lock_ns is None:
            rc = lib.gf_gate_publish(self._r, epoch, k, len(k), value, len(value), low_, out)
        else:
            recovered = ffi.new("int *")
            rc = lib.gf_gate_publish_locking(self._r, lock_ns, epoch, k, len(k), value, len(value), low_, out,
                                             recovered)
            if recovered[0]:
                self.fabric.lock_recovered()
        if rc == lib.GF_STALE or rc == lib.GF_E_EXPIRED:
            return None
        check(rc, context)
        return int(out[0])

    def gate_state(self, context: str = "gate") -> GateState | None:
        """The gate and its counters, None if the ring's lease was reclaimed."""
        st = ffi.new("gf_gate_state *")
        rc = lib.gf_ring_gate_get(self._r, st)
        if rc == lib.GF_E_EXPIRED:
            return None
        check(rc, context)
        return GateState(st.gate, st.blocked, st.blocked_ns, st.full_raised)

    def wait_room(self, count: int, slice_ns: int, context: str = "wait for room") -> bool:
        """Sleep (without the GIL) up to ``slice_ns`` until ``count`` messages fit.
        True if they do, or the lease was reclaimed (the next send says why)."""
        rc = lib.gf_ring_wait_room(self._r, count, slice_ns)
        if rc == lib.GF_E_EXPIRED:
            return True
        if rc < 0 and rc != lib.GF_E_FULL_RING:
            raise_for(rc, context)
        return rc == 0

    def note_full(self) -> None:
        """Count a BufferFull raised on this ring (:meth:`gate_state` shows it)."""
        lib.gf_ring_note_full(self._r)

    def set_on_full(self, policy: int) -> int:
        """Record the topic's on_full policy (``ON_FULL``) in the ring's header;
        the core's return code (negative on error)."""
        return lib.gf_ring_set_on_full(self._r, policy)

    def __repr__(self) -> str:
        return f"<Partition lease={self.lease.id} {self.capacity}x{self.stride}>"

    # ---- writing -------------------------------------------------------------
    def append(self, value: bytes, key: bytes | None = None, headers=None,
               timestamp: int | None = None) -> int:
        """Append one message; returns its offset. ``timestamp`` in ns (default: now).
        ``value`` and ``key`` are bytes, bytearray or memoryview."""
        if timestamp is None:
            r = self._send_keyed(_RING, key, value, headers)    # the crossing: one call into C
            if r is not None:
                return r[1]
        return self._append_slow(value, key, headers, timestamp)

    def _append_slow(self, value, key, headers, timestamp) -> int:
        """Checks and every error message live here, off the hot path."""
        hdrs = encode_headers(headers) if headers else b""
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        ts = 0 if timestamp is None else _validate.integer(timestamp, "timestamp", 1, (1 << 62))
        rc = lib.gf_ring_append(self._r, key if key is not None else ffi.NULL,
                                len(key) if key is not None else 0, key is not None,
                                hdrs, len(hdrs), value, len(value), ts)
        if rc < 0:
            self._raise(rc, len(key or b"") + len(hdrs) + len(value))
        return rc

    def append_batch(self, values: Sequence[bytes] | np.ndarray,
                     keys: Sequence[bytes] | np.ndarray | None = None,
                     timestamp: int | None = None) -> np.ndarray:
        """Append many messages with one crossing into C, in order; returns each
        message's offset (uint64 array). Offsets rise with the messages but may
        have gaps: a message spanning several slots, padding that keeps one
        contiguous, or a slot that gave way to a stalled writer (the message is
        then claimed again, and the batch's later messages after it).
        ``values``/``keys``: a list of bytes (joined into one buffer) or a 2-D uint8
        array, one row per message (used in place: no copy). All or nothing: if
        any message is too large, none is written."""
        vals, vlens = pack(values, "values")
        if keys is not None:
            if len(keys) != len(values):
                raise InvalidArgument(f"{len(keys)} keys for {len(values)} values")
            ks, klens = pack(keys, "keys")
        ts = 0 if timestamp is None else _validate.integer(timestamp, "timestamp", 1, (1 << 62))
        n = len(vlens)
        if n == 0:
            raise InvalidArgument("empty batch")
        offs = np.empty(n, dtype=np.uint64)
        rc = lib.gf_ring_append_batch(
            self._r, n,
            ffi.from_buffer("uint8_t[]", ks) if keys is not None else ffi.NULL,
            ffi.from_buffer("uint32_t[]", klens) if keys is not None else ffi.NULL,
            ffi.from_buffer("uint8_t[]", vals), ffi.from_buffer("uint32_t[]", vlens), ts,
            ffi.from_buffer("uint64_t[]", offs))
        if rc < 0:
            self._raise(rc, self._batch_size(rc, vlens, klens if keys is not None else None))
        return offs

    def append_marker(self, producer: int, epoch: int, txn: int, kind: bytes, context: str) -> int | None:
        """Append the marker ``kind`` of transaction (producer, epoch, txn): a control
        message, stamped, never handed to the application. Its offset, or None if the
        ring's lease was reclaimed (an expired partition reads as empty)."""
        stamp = ffi.new("gf_stamp *", {"producer": producer, "epoch": epoch, "seq": 0, "txn": txn})
        flags = lib.GF_MSG_CONTROL | lib.GF_MSG_TXN
        for _ in range(3):
            rc = lib.gf_ring_append_stamped(self._r, flags, stamp, ffi.NULL, 0, 0, ffi.NULL, 0, kind, 1, 0)
            if rc != lib.GF_E_ABANDONED:
                break
        if rc == lib.GF_E_EXPIRED:
            return None
        return check(rc, context)

    def _batch_size(self, rc: int, vlens: np.ndarray, klens: np.ndarray | None) -> int:
        """The size of the first message of a refused batch that does not fit (-1 if none)."""
        if rc != lib.GF_E_TOOBIG:
            return -1
        sizes = vlens.astype(np.int64) + (klens if klens is not None else 0)
        over = np.flatnonzero(sizes > self.room)
        return int(sizes[over[0]]) if len(over) else -1

    def _raise(self, rc: int, size: int) -> None:
        if rc == lib.GF_E_TOOBIG:
            from ._check import last_error
            raise MessageTooLarge(last_error(), size, self.max_message)
        raise_for(rc, "append")

    # ---- state ------------------------------------------------------------------
    def state(self, now: float | None = None) -> PartitionState:
        st = ffi.new("gf_ring_state *")
        check(lib.gf_ring_state_get(self._r, now_ns(now), st))
        return PartitionState(st.earliest, st.tail, st.lost, st.abandoned, st.capacity, st.stride,
                              bool(st.alive), st.expires_ns / 1e9)

    def earliest(self) -> int:
        return self.state().earliest

    def latest(self) -> int:
        """The next offset to be written (one past the newest message)."""
        return self.state().latest

    # ---- reading ---------------------------------------------------------------
    def reader(self, offset: int = 0, **kw) -> "Reader":
        from .reader import Reader
        rd = Reader(self.fabric, [self], **kw)
        rd.seek(0, offset)
        return rd

    def read(self, offset: int, max_messages: int = 1024, now: float | None = None) -> list[Message]:
        """Messages from ``offset`` on (at most ``max_messages``), without waiting."""
        rd = self.reader(offset, max_batch=max_messages)
        return [m for _, m in rd.poll(max_messages, now=now)]

    # ---- in place ----------------------------------------------------------------
    def loan(self, size: int, key: bytes | None = None, headers=None,
             timestamp: int | None = None) -> "Loan":
        """A zero-copy write of a message of ``size`` value bytes (see :mod:`grafos.loan`)."""
        from .loan import Loan
        return Loan(self._r, self, size, key, headers, 0, timestamp)


def pack(items, what: str) -> tuple[object, np.ndarray]:
    """Batch input -> (one contiguous buffer, uint32 lengths).

    A 2-D numpy array (one row per message) is used in place, with no copy: the
    zero-copy way in. A list or tuple of bytes is joined into one buffer.
    """
    if isinstance(items, np.ndarray):
        if items.ndim != 2:
            raise InvalidArgument(f"{what} array must be 2-D (one row per message), got {items.ndim}-D")
        arr = np.ascontiguousarray(items)
        lens = np.empty(arr.shape[0], dtype=np.uint32)
        lens.fill(arr.shape[1] * arr.itemsize)      # a third of np.full's time
        return arr, lens
    if isinstance(items, (bytes, str)):
        raise _validate.InvalidType(f"{what} must be a sequence of bytes, not a single {type(items).__name__}")
    try:
        lens = np.fromiter(map(len, items), dtype=np.uint32, count=len(items))
        buf = b"".join(items)
    except (TypeError, ValueError, BufferError):
        for i, it in enumerate(items):
            if not isinstance(it, (bytes, bytearray, memoryview)):
                raise _validate.InvalidType(f"{what}[{i}] must be bytes, not {type(it).__name__}") from None
            _validate.as_bytes(it, f"{what}[{i}]")      # a released view: says so
        raise _validate.InvalidType(f"{what} must be a list or tuple of bytes, not {type(items).__name__}") from None
    return buf, lens

