"""Reading rings: a :class:`Reader` keeps one cursor per partition and polls
them all with one crossing into C per call (the C side also does the
blocking wait, on a futex in the shared mapping)."""
from __future__ import annotations

import operator
import os
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from . import _crossing, _validate
from ._check import raise_for
from ._clock import now_ns
from ._core.layout import MAX_OFFSET
from ._core import ffi, lib
from .errors import InvalidArgument, InvalidType
from .fabric import Fabric
from .message import Message
from .peek import Peek

#: numpy view of ``gf_msg_meta`` (one row per message of a batch)
META_DTYPE = np.dtype([
    ("offset", "<u8"), ("timestamp", "<i8"), ("pos", "<u4"), ("key_len", "<u4"),
    ("hdr_len", "<u4"), ("val_len", "<u4"), ("key_hash", "<u4"), ("flags", "<u4"),
    ("partition", "<u4"), ("reserved", "<u4"),
])

_poller_poll = lib.gf_poller_poll
_alloc = ffi.new_allocator(should_clear_after_alloc=False)   # read buffers: written before read
_SLICE = 0.2    # seconds: a blocking poll wakes this often so Ctrl-C gets through
MAX_BUF = 64 << 20


class Batch:
    """Messages of one poll as numpy arrays over one buffer.

    The arrays are views of the reader's buffers, valid until its next poll;
    call :meth:`copy` to keep them longer. Iterating yields ``(partition, Message)``;
    each Message carries ``topic`` (None for a reader of bare partitions).
    """

    __slots__ = ("meta", "data", "partition_ids", "topic")

    def __init__(self, meta: np.ndarray, data: np.ndarray, partition_ids: Sequence[int],
                 topic: str | None = None) -> None:
        self.meta = meta
        self.data = data
        self.partition_ids = partition_ids
        self.topic = topic

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def offsets(self) -> np.ndarray:
        return self.meta["offset"]

    @property
    def timestamps(self) -> np.ndarray:
        return self.meta["timestamp"]

    @property
    def partitions(self) -> np.ndarray:
        ids = np.asarray(self.partition_ids, dtype=np.int64)
        return ids[self.meta["partition"]] if len(ids) else self.meta["partition"].astype(np.int64)

    @property
    def key_lengths(self) -> np.ndarray:
        return self.meta["key_len"]

    @property
    def value_lengths(self) -> np.ndarray:
        return self.meta["val_len"]

    @property
    def value_starts(self) -> np.ndarray:
        m = self.meta
        return m["pos"].astype(np.int64) + m["key_len"] + m["hdr_len"]

    def value(self, i: int) -> bytes:
        m = self.meta[i]
        start = int(m["pos"]) + int(m["key_len"]) + int(m["hdr_len"])
        return self.data[start:start + int(m["val_len"])].tobytes()

    def key(self, i: int) -> bytes | None:
        m = self.meta[i]
        if not int(m["flags"]) & 1:
            return None
        return self.data[int(m["pos"]):int(m["pos"]) + int(m["key_len"])].tobytes()

    @property
    def has_keys(self) -> np.ndarray:
        """Boolean mask: the message was sent with a key (an empty key counts)."""
        return (self.meta["flags"] & 1).astype(bool)

    def values(self) -> np.ndarray:
        """Values as a 2-D uint8 array (one row per message) when they all have one
        length: a zero-copy strided view where the layout allows it (no headers,
        keys of one length), else a copy. Different lengths raise ValueError."""
        return self._rows(self.value_starts, self.meta["val_len"], "values", "value(i)")

    def keys(self) -> np.ndarray:
        """Keys as a 2-D uint8 array, like :meth:`values`; every message must have
        a key, all of one length."""
        if len(self.meta) and not self.has_keys.all():
            raise ValueError("some messages have no key; use key(i) or has_keys")
        return self._rows(self.meta["pos"].astype(np.int64), self.meta["key_len"], "keys", "key(i)")

    def _rows(self, starts: np.ndarray, lens: np.ndarray, what: str, one: str) -> np.ndarray:
        n = len(self.meta)
        if n == 0:
            return np.empty((0, 0), dtype=np.uint8)
        width = int(lens[0])
        if not (lens == width).all():
            raise ValueError(f"{what} have different lengths; use {one} or the *_lengths arrays")
        if n > 1:
            step = int(starts[1] - starts[0])
            if step > 0 and (np.diff(starts) == step).all():
                return np.lib.stride_tricks.as_strided(
                    self.data[int(starts[0]):], shape=(n, width), strides=(step, 1), writeable=False)
        return np.stack([self.data[s:s + width] for s in starts.tolist()])

    def __repr__(self) -> str:
        return f"<Batch of {len(self.meta)} messages, {len(self.data)} bytes>"

    def copy(self) -> "Batch":
        return Batch(self.meta.copy(), self.data.copy(), list(self.partition_ids), self.topic)

    def __iter__(self) -> Iterator[tuple[int, Message]]:
        """Decoded in C, like :meth:`Reader.poll`; malformed headers raise CorruptFabric."""
        return iter(_crossing.decode(self.meta.tobytes(), self.data.tobytes(), list(self.partition_ids),
                                    self.topic))


assert META_DTYPE.itemsize == ffi.sizeof("gf_msg_meta")


def _count(value, what: str) -> int:
    """An int >= 0 (numpy integers too); anything else is a clear error."""
    if isinstance(value, bool):
        raise InvalidType(f"{what} must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidType(f"{what} must be an int, not {type(value).__name__}") from None
    if v < 0:
        raise InvalidArgument(f"{what} must be >= 0, got {v}")
    return v


class Reader:
    """Cursors over a list of partitions (``None`` entries are skipped).

    ``check_crcs`` (Kafka's ``check.crcs``): verify each message's CRC32C as it is
    copied out (summed in the same pass as the copy). On by default for every
    fabric kind, on rings whose slots carry checksums (a topic's ``checksum``
    setting; rings without them are never verified): in a file fabric it finds
    writes torn by a crash at reopen, in any fabric it finds a stalled writer's
    late bytes after a takeover and damaged memory. ``False`` trusts the
    sequence words alone: messages are then never half-visible nor another
    offset's, but bytes scribbled by a writer that lost its slot, or damaged in
    place, are delivered as they are.

    A reader belongs to one thread at a time.
    """

    def __init__(self, fabric: Fabric, partitions: Sequence[object | None], *,
                 ids: Sequence[int] | None = None, max_batch: int = 1024,
                 buf_size: int | None = None, check_crcs: bool = True, markers: bool = False,
                 topic: str | None = None) -> None:
        """``markers``: hand transaction markers to this reader too (for
        ``read_committed`` consumers); others never see them. ``topic``: the
        name the messages carry (None: bare partitions)."""
        _validate.integer(max_batch, "max_batch", 1, 1 << 20)
        if not isinstance(check_crcs, bool):
            raise InvalidType(f"check_crcs must be a bool, not {type(check_crcs).__name__}")
        n = len(partitions)
        self.fabric = fabric
        self.topic = topic
        self._parts = list(partitions)
        self._peek_sources: list | None = None    # what Peek.take reads, per peekable ring
        self.ids = list(ids) if ids is not None else list(range(n))
        self._map = None if self.ids == list(range(n)) else self.ids   # None: index == id
        self._n = n
        self._rings = ffi.new("gf_ring *[]", max(n, 1))
        room = biggest = 64
        for i, p in enumerate(partitions):
            if p is not None:
                self._rings[i] = p.handle  # type: ignore[attr-defined]
                room = max(room, p.room)   # type: ignore[attr-defined]
                biggest = max(biggest, p.max_message)   # type: ignore[attr-defined]
        self._cursors = ffi.new("gf_cursor[]", max(n, 1))
        self.check_crcs = check_crcs
        for i in range(max(n, 1)):
            self._cursors[i].no_verify = not check_crcs
            self._cursors[i].controls = markers
        self.max_batch = max_batch
        self._meta = ffi.new("gf_msg_meta[]", max_batch)
        # by default the buffer holds the largest message its partitions allow (a
        # multi-slot one); pages are only touched when a message fills them
        size = buf_size or max(min(MAX_BUF, max_batch * room), biggest)
        self._buf_size = max(size, room)
        self._buf = _alloc("uint8_t[]", self._buf_size)
        self._metabuf = ffi.buffer(self._meta)
        self._bytes = ffi.buffer(self._buf)
        # whole-buffer arrays, sliced per poll (a slice costs a third of a frombuffer)
        self._meta_rows = np.frombuffer(self._metabuf, dtype=META_DTYPE)
        self._data = np.frombuffer(self._bytes, dtype=np.uint8)
        # the hot path's one argument (gf_poller_poll): a struct inside the crossing's
        # Poller, filled in here through its bytes; the Poller keeps what it points to alive
        self._poller = _crossing.Poller((fabric, self._rings, self._cursors, self._meta, self._buf))
        self._p = ffi.from_buffer("gf_poller *", self._poller, require_writable=True)
        p = self._p
        p.f = fabric.handle
        p.rings = self._rings
        p.cursors = self._cursors
        p.meta = self._meta
        p.buf = self._buf
        p.buf_size = self._buf_size
        p.n = n
        p.max_batch = max_batch

    def __len__(self) -> int:
        """Partition slots of the reader (including ``None`` ones)."""
        return self._n

    @property
    def partitions(self) -> tuple[object | None, ...]:
        """The partition in each slot (``None`` where there is none)."""
        return tuple(self._parts)

    @property
    def poller(self) -> _crossing.Poller:
        """The crossing's :class:`~grafos._fast.Poller` that holds this reader's ``gf_poller``."""
        return self._poller

    # ---- cursors ------------------------------------------------------------
    def seek(self, i: int, offset: int) -> None:
        if not 0 <= _count(i, "partition index") < self._n:
            raise InvalidArgument(f"partition index {i} out of range (reader has {self._n})")
        _validate.integer(offset, "offset", 0, MAX_OFFSET)
        c = self._cursors[i]
        c.pos = offset
        c.stall_since = 0

    def _index(self, i: int) -> int:
        if not 0 <= _count(i, "partition index") < self._n:
            raise InvalidArgument(f"partition index {i} out of range (reader has {self._n})")
        return i

    def position(self, i: int) -> int:
        return self._cursors[self._index(i)].pos

    def gaps(self, i: int) -> int:
        """Offsets of partition ``i`` this reader passed that hold no message: the
        further slots of multi-slot messages and the padding before the ring's end.
        Every offset below the position was delivered, lost, abandoned, corrupt
        or a gap."""
        return self._cursors[self._index(i)].gaps

    def counters(self, i: int) -> dict[str, int]:
        c = self._cursors[self._index(i)]
        return {"lost": c.lost, "abandoned": c.abandoned, "corrupt": c.corrupt, "expired": c.expired}

    def set_partition(self, i: int, partition: object | None) -> None:
        self._parts[i] = partition
        self._peek_sources = None
        self._rings[i] = partition.handle if partition is not None else ffi.NULL  # type: ignore[attr-defined]

    # ---- polling -------------------------------------------------------------
    def poll_raw(self, max_messages: int, timeout: float | None = 0.0, now: float | None = None,
                 spin: float | None = None) -> int:
        """Fill the reader's buffers; returns how many messages. ``spin``: seconds
        of polling before a wait sleeps; None (the default) adapts it to recent
        waits, up to 200 us and none at all on a reader that waits long; 0 never
        spins."""
        if (timeout.__class__ is float or timeout.__class__ is int) and timeout == 0 and now is None \
                and (spin is None or spin.__class__ is float and spin == 0.0) and max_messages.__class__ is int \
                and max_messages >= 0 and not self.fabric.closed:
            rc = _poller_poll(self._p, max_messages, 0, 0, 0)   # the common look: no waiting
            if rc < 0:
                raise_for(rc, "poll")
            return rc
        if max_messages.__class__ is not int or max_messages < 0:
            max_messages = _count(max_messages, "max_messages")
        if max_messages > self.max_batch:
            max_messages = self.max_batch
        t = 0 if now is None else now_ns(now)
        if timeout.__class__ is not float and timeout.__class__ is not int or timeout != timeout:
            _validate.timeout(timeout)
        spin_ns = lib.GF_SPIN_ADAPTIVE if spin is None else int(spin * 1e9) \
            if spin.__class__ is float or spin.__class__ is int else int(_validate.number(spin, "spin", 0) * 1e9)
        if timeout is not None and timeout <= 0:
            self.fabric.handle      # noqa: B018 - raises if the fabric was closed
            rc = _poller_poll(self._p, max_messages, t, 0, 0)
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                self.fabric.handle  # noqa: B018 - raises if the fabric was closed
                rc = _poller_poll(self._p, max_messages, t, max(int(left * 1e9), 0), spin_ns)
                if rc != 0 or (deadline is not None and time.monotonic() >= deadline):
                    break
                if spin_ns > 0:
                    spin_ns = 0         # a fixed spin: before the first sleep only
        if rc < 0:
            raise_for(rc, "poll")
        return rc

    @property
    def spin_learnt(self) -> float:
        """Seconds the next wait of an adaptive poll (``spin=None``) spins before it sleeps."""
        return self._p.spin_learnt / 1e9

    @property
    def expired_seen(self) -> int:
        """How many partitions read as expired in the last poll that found nothing."""
        return self._p.expired

    def poll(self, max_messages: int, timeout: float | None = 0.0, now: float | None = None,
             spin: float | None = None) -> list[tuple[int, Message]]:
        """Up to ``max_messages`` as ``(partition id, Message)`` pairs, built in C.
        A message whose headers do not parse is dropped and counted as corrupt
        (its checksum only proves it is what was written)."""
        n = self.poll_raw(max_messages, timeout, now, spin)
        if n == 0:
            return []
        return _crossing.messages(self._poller, n, self._map, self.topic)

    def poll_batch(self, max_messages: int, timeout: float | None = 0.0, now: float | None = None,
                   spin: float | None = None) -> Batch:
        n = self.poll_raw(max_messages, timeout, now, spin)
        return Batch(self._meta_rows[:n], self._data[:self._p.used], self.ids, self.topic)

    # ---- in place ----------------------------------------------------------------
    def peek(self, max_messages: int) -> Peek:
        """Up to ``max_messages`` read in place, without waiting: a context manager
        whose values are views into the rings (see :mod:`grafos.peek`)."""
        n = max_messages if max_messages.__class__ is int and max_messages >= 0 else \
            _count(max_messages, "max_messages")
        self.fabric.handle      # noqa: B018 - raises if the fabric was closed
        src = self._peek_sources
        if src is None:
            # per ring: its slot bytes as a buffer (a message may span up to max_message
            # bytes from the first), which the crossing checks every row against
            src = self._peek_sources = [
                (self.ids[i], i, self._parts[i],
                 ffi.buffer(lib.gf_ring_slot_data(self._rings[i], 0), lib.gf_ring_max_message(self._rings[i])),
                 self._parts[i].stride)   # type: ignore[attr-defined]
                for i in range(self._n) if self._parts[i] is not None]
        return Peek.take(src, n, self._poller, self.topic)

    # ---- waiting without reading ------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a poll would find something (a message, or a loss to
        report), or ``timeout`` seconds pass (None: no limit). Reads nothing: the
        cursors do not move. True if something is readable. Another thread may
        wait on this reader while its owner waits for the answer."""
        _validate.timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            self.fabric.handle  # noqa: B018 - raises if the fabric was closed
            if lib.gf_poller_wait(self._p, max(int(left * 1e9), 0)) > 0:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False


class Waiter:
    """A thread that waits for readers on behalf of an event loop.

    :meth:`request` asks it to wait until ``reader`` has something to read (or
    ``timeout`` seconds pass); when it has an answer it writes to :attr:`fd`, an
    eventfd the loop watches, and :meth:`answered` tells which request was
    answered and how. The thread runs in C between requests (it holds no
    interpreter lock while it waits or answers), and, like
    :meth:`Reader.wait`, it reads nothing: no cursor moves.
    Requests come from one thread (the loop's).
    """

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._w = ffi.new("gf_waiter *", {"fd": self.fd})
        self._keep: dict[int, Reader] = {}      # request -> its reader, alive until answered
        self._closed = False
        self._thread = threading.Thread(target=lib.gf_waiter_run, args=(self._w,),
                                        name="grafos-waiter", daemon=True)
        self._thread.start()

    def request(self, reader: Reader, timeout: float | None) -> int:
        """Wait for ``reader`` (replacing a request not yet answered); returns the
        request's number."""
        if self._closed:
            raise InvalidArgument("the waiter is closed")
        _validate.timeout(timeout)
        reader.fabric.handle     # noqa: B018 - raises if the fabric was closed
        t = -1 if timeout is None else max(int(timeout * 1e9), 0)
        n = lib.gf_waiter_request(self._w, reader._p, t)
        self._keep[n] = reader
        return n

    def answered(self) -> tuple[int, bool]:
        """(the last request answered, whether its reader was readable). Also
        drains the eventfd and lets go of readers no request waits on."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        done = self._w.done
        readable = self._w.result > 0
        for n in [n for n in self._keep if self.is_answered(n, done)]:
            del self._keep[n]
        return done, readable

    @staticmethod
    def is_answered(n: int, done: int) -> bool:
        return (done - n) & 0xFFFFFFFF < 1 << 31        # done >= n, modulo 2**32

    def close(self, timeout: float | None = None) -> bool:
        """Stop the thread (it finishes the slice of a wait in progress, at most
        50 ms) and close the fd. False if the thread did not end within
        ``timeout`` seconds (the fd then stays open: the thread may still write it)."""
        if not self._closed:
            self._closed = True
            lib.gf_waiter_stop(self._w)
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._keep.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        return True

    def __del__(self) -> None:
        try:
            self.close(0.2)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

