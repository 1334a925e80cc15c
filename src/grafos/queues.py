"""``grafos.Queue``, ``JoinableQueue`` and ``SimpleQueue``: multiprocessing's
queues over a ring in named shared memory.

The names and behaviours are those of :mod:`multiprocessing`'s queues, so an
import change is all a program needs::

    from grafos import Queue          # was: from multiprocessing import Queue

What differs, and why (``docs/queue.md``):

* ``put`` pickles in the caller (protocol 5), so a value that cannot be
  pickled raises at ``put`` with its traceback, and what ``put`` returned from
  is in the queue: there is no feeder thread. Buffers (numpy arrays,
  bytearrays, anything pickled out of band) are copied once, straight into
  the ring, and a ``get`` of a large item copies it once, out of it.
* An item must fit the ring (``ring_bytes``, 8 MiB by default, less one slot
  header); a larger one is a ``MessageTooLarge`` (a ``ValueError``) at ``put``.
  ``maxsize=0`` means "as many as the ring holds": a put into a full ring
  waits as for a full queue.
* ``maxsize``, ``qsize``, ``empty`` and ``full`` are exact across processes
  (one counter in shared memory). ``qsize`` works on every platform.
* The queue's memory is a named fabric (``/dev/shm/grafos.queue-...``). It is
  removed when the last process using it closes it or exits; a bus left by
  processes that were all killed is found and removed by ``grafos gc``.

How several processes share it: producers write through the ring's loans;
getters copy the item at the shared read position and then advance it with a
compare-and-swap, so an item belongs to the getter whose swap succeeded.
Nothing is locked, so a process killed at any point wedges nobody: a getter
killed before its swap leaves the item for the others, a producer killed
mid-write leaves a slot the getters step over after the fabric's bounded wait.
"""
from __future__ import annotations

import os
import pickle
from multiprocessing import util as mp_util
import secrets
import struct
import threading
import time
import weakref
from typing import Any

import numpy as np

from . import _validate
from ._check import last_error, raise_for
from ._core import codes
from ._core import queue as _core
from .errors import GrafosError, InvalidArgument, MessageTooLarge, QueueClosed, QueueEmpty, QueueFull
from .fabric import Fabric, MemLease, probe, shm_path
from .partition import Partition, region_size

__all__ = ["Queue", "JoinableQueue", "SimpleQueue", "QUEUE_PREFIX", "DEFAULT_RING_BYTES"]

#: named fabrics of queues are called QUEUE_PREFIX + a unique suffix (``grafos gc`` knows them)
QUEUE_PREFIX = "queue-"
#: bytes of ring per queue unless ``ring_bytes=`` says otherwise; the largest item is this less 40
DEFAULT_RING_BYTES = 8 << 20
_SLOT_BYTES = 256
_TTL = 10 * 365 * 86400.0       # a queue lives as long as its users, not a retention period
_CHECKSUM = True                # slot checksums: a stalled producer's late bytes are found, never delivered
_SLICE = 0.1                    # blocking calls wait in slices, so Ctrl-C gets through
_LOCAL_BUF = 64 << 10           # a thread's buffer for small items; larger ones get their own
_ALIGN = 64
_OOB = b"G"                     # an item with out-of-band buffers; a plain one starts with pickle's 0x80
_OOB_HEAD = struct.Struct("<cBHIQ")   # marker, version, 0, buffer count, pickle length
_LEN = struct.Struct("<Q")
_PAD = bytes(_ALIGN)
_OOB_BYTE = _OOB[0]
_FULL: int = codes.FULL
_dumps = pickle.dumps
_loads = pickle.loads


def _deadline(block: bool, timeout: float | None) -> float | None:
    """When a blocking call gives up (None: never); a non-blocking one at once."""
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    _validate.timeout(timeout)
    return time.monotonic() + max(timeout, 0.0)


def _pad(n: int) -> int:
    return -n % _ALIGN


class _Local(threading.local):
    def __init__(self) -> None:
        self.b = _core.ItemBuffer(_LOCAL_BUF)


def _release(parts: list, name: str) -> None:
    """Drop this process's attachment; remove the queue's memory if no process
    has it open any more."""
    fabric = parts[0]
    parts.clear()               # the ring handle goes first: it holds the mapping
    fabric.close()
    try:
        probe(shm_path(name), remove_if_idle=True, leases_matter=False)
    except (OSError, GrafosError):
        pass


def _exit_hook(q: "Queue") -> None:
    """multiprocessing's children leave through os._exit, past atexit: its own
    exit hook lets go there too, so the last process out removes the memory."""
    mp_util.Finalize(q, q._finalizer, exitpriority=0)


class Queue:
    """``multiprocessing.Queue`` over shared memory; see the module doc."""

    _joinable = False

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, ring_bytes: int = DEFAULT_RING_BYTES,
                 slot_bytes: int = _SLOT_BYTES) -> None:
        """``maxsize`` <= 0: bounded by the ring alone. ``ctx`` is accepted for
        multiprocessing's signature and not needed. ``ring_bytes``: the ring's
        size, which bounds the largest item; ``slot_bytes``: the size of one
        slot (a small item takes one)."""
        _validate.integer(maxsize, "maxsize", -(1 << 62), 1 << 62)
        _validate.integer(slot_bytes, "slot_bytes", 64, 1 << 20)
        if slot_bytes % 8:
            raise InvalidArgument(f"slot_bytes must be a multiple of 8, got {slot_bytes}")
        _validate.integer(ring_bytes, "ring_bytes", 2 * slot_bytes, 1 << 40)
        capacity = ring_bytes // slot_bytes
        name = f"{QUEUE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        size = region_size(capacity, slot_bytes) + (1 << 20)
        fabric = Fabric.open(name, size=size, exclusive=True, lease_slots=8, meta_slots=8)
        try:
            ring = Partition.create(fabric, capacity, slot_bytes, ttl=_TTL, checksum=_CHECKSUM)
            state = fabric.acquire(_core.state_size(), ttl=_TTL)
            _core.init(fabric, state, ring, max(maxsize, 0), self._joinable)
            self._attach(fabric, ring, state)
        except BaseException:
            fabric.close()
            Fabric.unlink(name)
            raise

    def _attach(self, fabric: Fabric, ring: Partition, state: MemLease) -> None:
        self._name: str = fabric.name  # type: ignore[assignment]
        self._where = (ring.lease.index, ring.lease.id, state.index, state.id)
        self._q = _core.Handle(fabric, state, ring)
        self._put1 = self._q.put1
        self._get = self._q.get
        self._maxsize: int = self._q.maxsize
        self._max_item: int = ring.max_message
        self._local = _Local()
        self._closed = False
        self._parts = [fabric, ring, state]
        self._finalizer = weakref.finalize(self, _release, self._parts, self._name)
        _exit_hook(self)
        mp_util.register_after_fork(self, _exit_hook)    # a child starts with no exit hooks

    def __reduce__(self):  # noqa: ANN204 - pickles to the bus name; the child attaches
        self._check_closed()
        return (_reattach, (type(self), self._name, self._where))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name}{' closed' if self._closed else ''}>"

    @property
    def name(self) -> str:
        """The named fabric holding the queue (``/dev/shm/grafos.<name>``)."""
        return self._name

    @property
    def maxsize(self) -> int:
        """The bound given at creation (0: the ring alone bounds the queue)."""
        return self._maxsize

    def _check_closed(self) -> None:
        if self._closed:
            raise QueueClosed(f"Queue {self!r} is closed")

    # ---- put ------------------------------------------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``, waiting for room up to ``timeout`` seconds if ``block``
        (None: for ever); raises ``queue.Full`` (a ``QueueFull``) if there is none."""
        if self._closed:
            self._check_closed()
        bufs: list = []
        data = _dumps(obj, 5, buffer_callback=bufs.append)
        if bufs:
            return self._put_buffers(data, bufs, block, timeout)
        rc = self._put1(data, len(data), 0)       # the common case: there is room
        if rc < 0:
            if rc == _FULL and block and timeout != 0:
                self._wait(block, timeout, lambda t: self._put1(data, len(data), t), len(data))
            else:
                self._put_failed(rc, len(data))

    def _put_buffers(self, data: bytes, bufs: list, block: bool, timeout: float | None) -> None:
        """An item with out-of-band buffers: its pieces are copied into the ring
        by one call, each buffer straight from its owner's memory."""
        segs, lens = _segments(data, bufs)
        self._wait(block, timeout, self._q.put_segments(segs, lens), sum(lens))

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def _wait(self, block: bool, timeout: float | None, call: Any, size: int) -> None:
        """Call ``call(timeout_ns)`` in slices until it succeeds or time is up."""
        deadline = _deadline(block, timeout)
        while True:
            left = _SLICE if deadline is None else min(_SLICE, max(deadline - time.monotonic(), 0.0))
            rc = call(int(left * 1e9))
            if rc >= 0:
                return
            if rc != _FULL or (deadline is not None and time.monotonic() >= deadline):
                self._put_failed(rc, size)
            self._check_closed()

    def _put_failed(self, rc: int, size: int) -> None:
        if rc == _FULL:
            raise QueueFull(last_error())
        if rc == codes.TOOBIG:
            raise MessageTooLarge(
                f"an item of {size} bytes (pickled) does not fit the queue's ring, which takes at most "
                f"{self._max_item}: make the queue with a larger ring_bytes=", size, self._max_item)
        raise_for(rc, "queue put")

    # ---- get ------------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item, waiting up to ``timeout`` seconds if
        ``block`` (None: for ever); raises ``queue.Empty`` (a ``QueueEmpty``)."""
        if self._closed:
            self._check_closed()
        loc = self._local.b
        n = self._get(loc.buf, _LOCAL_BUF, 0, loc.item)    # the common case: an item is there
        if n > 0:
            # copied out of the thread's buffer first: unpickling may run code that gets again
            data = loc.view[:n].tobytes()
            if data[0] != _OOB_BYTE:
                return _loads(data)
            return _load_out_of_band(memoryview(data), False)
        return self._get_slow(block, timeout, n)

    def _get_slow(self, block: bool, timeout: float | None, rc: int) -> Any:
        loc = self._local.b
        deadline = _deadline(block, timeout)
        buf, view, size = loc.buf, loc.view, _LOCAL_BUF
        own = None
        while True:
            if rc > 0:
                break
            if rc == codes.BUFFER:
                # an item larger than the thread's buffer gets a buffer of its own,
                # which its out-of-band buffers then share without another copy
                if loc.item_len() > size:
                    size = loc.item_len()
                    own = np.empty(size, np.uint8)     # not zeroed: the item overwrites it all
                    buf, view = _core.into(own), memoryview(own)
            elif rc < 0:
                raise_for(rc, "queue get")
            elif deadline is not None and time.monotonic() >= deadline:
                raise QueueEmpty()
            else:
                self._check_closed()
            left = _SLICE if deadline is None else min(_SLICE, max(deadline - time.monotonic(), 0.0))
            rc = self._get(buf, size, int(left * 1e9), loc.item)
        data = view[:rc] if own is not None else memoryview(view[:rc].tobytes())
        if data[0] != _OOB_BYTE:
            return _loads(data)
        return _load_out_of_band(data, own is not None)

    def get_nowait(self) -> Any:
        return self.get(False)

    # ---- size -----------------------------------------------------------------
    def qsize(self) -> int:
        """Items in the queue now, counted by every process's puts and gets."""
        self._check_closed()
        return self._q.size()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    # ---- lifecycle --------------------------------------------------------------
    def close(self) -> None:
        """This process is done with the queue: further puts and gets raise
        ``ValueError``. Its memory goes when no process has it open any more."""
        if not self._closed:
            self._closed = True
            # another thread may be inside a call that uses the ring: then the
            # handles go with this object (garbage collection or exit), not now
            if threading.active_count() == 1:
                self._finalizer()

    def join_thread(self) -> None:
        """multiprocessing's: wait for the feeder thread. ``put`` has written
        the item when it returns, so there is nothing to wait for."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """multiprocessing's: do not wait for the feeder thread at exit. There is none."""


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: ``task_done`` and ``join`` across processes."""

    _joinable = True

    def task_done(self) -> None:
        """One item taken by a get is processed; raises ``ValueError`` when called
        more times than items were put."""
        self._check_closed()
        rc = self._q.task_done()
        if rc < 0:
            raise_for(rc)

    def join(self) -> None:
        """Wait until every item put has been matched by a ``task_done``."""
        self._check_closed()
        while self._q.join(int(_SLICE * 1e9)) != 1:
            self._check_closed()


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``: unbounded (as the ring holds), ``put`` and
    ``get`` without timeouts, ``empty`` and ``close``."""

    def __init__(self, *, ctx: Any = None, ring_bytes: int = DEFAULT_RING_BYTES,
                 slot_bytes: int = _SLOT_BYTES) -> None:
        super().__init__(0, ring_bytes=ring_bytes, slot_bytes=slot_bytes)

    def put(self, obj: Any) -> None:  # type: ignore[override]
        super().put(obj)

    def get(self) -> Any:  # type: ignore[override]
        return super().get()


def _reattach(cls: type, name: str, where: tuple[int, int, int, int]) -> Queue:
    ring_index, ring_id, state_index, state_id = where
    fabric = Fabric.open(name, create=False)
    try:
        ring = Partition(fabric, fabric.lease(ring_index, ring_id))
        state = fabric.lease(state_index, state_id)
        q = cls.__new__(cls)
        q._attach(fabric, ring, state)
    except BaseException:
        fabric.close()
        raise
    return q


# ---- the item format: a plain pickle, or a pickle with its buffers after it -------------
def _raw(pb: pickle.PickleBuffer) -> memoryview:
    """A buffer's bytes as one contiguous view (a copy only if it is not contiguous)."""
    try:
        return pb.raw()
    except BufferError:
        return memoryview(bytes(pb)).cast("B")


def _segments(data: bytes, pbs: list) -> tuple[list, list[int]]:
    """The pieces of an item with out-of-band buffers, each buffer at a
    64-byte aligned position: head, lengths, pickle, then the buffers."""
    bufs = [_raw(pb) for pb in pbs]
    head = _OOB_HEAD.pack(_OOB, 1, 0, len(bufs), len(data)) + b"".join(_LEN.pack(m.nbytes) for m in bufs)
    segs: list = [head + _PAD[:_pad(len(head))], data]
    at = len(segs[0]) + len(data)
    for m in bufs:
        if _pad(at):
            segs.append(_PAD[:_pad(at)])
            at += _pad(at)
        segs.append(m)
        at += m.nbytes
    return segs, [len(s) if not isinstance(s, memoryview) else s.nbytes for s in segs]


def _load_out_of_band(data: memoryview, owned: bool) -> Any:
    """The inverse of :func:`_segments`. ``owned``: ``data`` is this item's own
    memory, which the buffers may share; else each buffer is copied out. The
    bytes come from shared memory: every length is checked."""
    n = len(data)
    if n < _OOB_HEAD.size:
        raise_for(codes.CORRUPT, "queue get: truncated item")
    _, version, _, nbuf, plen = _OOB_HEAD.unpack_from(data)
    at = _OOB_HEAD.size + nbuf * _LEN.size
    if version != 1 or at > n:
        raise_for(codes.CORRUPT, f"queue get: item of format {version} with {nbuf} buffers")
    lens = [_LEN.unpack_from(data, _OOB_HEAD.size + i * _LEN.size)[0] for i in range(nbuf)]
    at += _pad(at)
    if plen > n - min(at, n):
        raise_for(codes.CORRUPT, "queue get: pickle past the item's end")
    payload = data[at:at + plen]
    at += plen
    buffers = []
    for ln in lens:
        at += _pad(at)
        if ln > n - min(at, n):
            raise_for(codes.CORRUPT, "queue get: buffer past the item's end")
        b = data[at:at + ln]
        buffers.append(b if owned else bytearray(b))
        at += ln
    return pickle.loads(payload, buffers=buffers)
