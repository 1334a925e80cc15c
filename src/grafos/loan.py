"""Zero-copy writes: a :class:`Loan` is a message's slots in the ring, lent to the
caller to fill in place, then published with :meth:`Loan.commit`.

    with part.loan(frame.nbytes) as ln:          # or producer.loan(mgr, size)
        ln.write(frame)                          # or fill ln.array(np.uint8, frame.shape) in place
    # committed on leaving the block; an exception abandons it instead

The key and headers are written when the loan is taken; ``view`` (a writable
memoryview) and :meth:`Loan.array` (a numpy array over the same bytes) are the
value, and :meth:`Loan.write` copies a buffer into it. Readers never see a loan half-filled: until it is committed its slots
read as "being written". An abandoned loan (an exception in the block, or
:meth:`Loan.abandon`) is skipped by readers at once. A loan held longer than the
fabric's bounded wait is given up on by readers like a stalled writer:
:meth:`Loan.commit` then raises :class:`~grafos.errors.SlotAbandoned` and
publishes nothing.

Lifetime: the bytes are the caller's only while the loan is open. Commit and
abandon revoke them: ``view`` and :meth:`array` raise, the view handed out is
released, and every array :meth:`array` returned -- with every slice, reshape
or ``.view(dtype)`` of it -- becomes read-only, so a late write raises
``ValueError`` instead of changing a published message (or a later one). A
buffer taken from the view (a slice of ``view`` still held,
``np.frombuffer(ln.view)``) cannot be revoked: one still held at commit makes
the commit abandon the loan and raise :class:`~grafos.errors.ViewsInUse` (a
``BufferError``), so nothing is published while the caller can still write
into it. What numpy makes from an array outside its own views -- a plain
``ndarray`` over it (``np.asarray(arr)``, ``arr.view(np.ndarray)``) or a buffer
of it (``memoryview(arr)``) -- is neither revoked nor counted: do not keep one
past the block.

A loan is bound to its partition's lease: once the lease has expired, or the
partition was deleted or restarted, ``view``, :meth:`array` and :meth:`write`
raise :class:`~grafos.errors.LeaseExpired` and commit publishes nothing, since
the region may already hold another topic's ring. The lease is checked on
every path that hands out the bytes rather than pinned: a pin would have to
live in the shared lease table and outlive a dead process like any record of
the living, while a check is one load of the lease word. What this process
handed out before is revoked when this process deletes or restarts the topic
or reuses the region (an allocation or a reap); an array still held while
*another* process deletes the topic is the one path no check reaches: do not
keep a loan open across the topic's end.
"""
from __future__ import annotations

import weakref
from typing import Any, NoReturn

import numpy as np

from . import _validate
from ._check import last_error, raise_for
from ._core import codes
from ._core import lease as _lease
from ._core import loan as _core
from ._crossing import span
from .errors import InvalidArgument, InvalidType, LeaseExpired, MessageTooLarge, ViewsInUse
from .fabric import before_reuse
from .message import encode_headers


_commit = _core.commit
_check = _core.check
_abandon = _core.abandon
_source = _core.source
_copy = _core.copy
_DONE = _core.DONE         # commit of a loan no longer open
#: id -> weak reference of the loans whose view or arrays were handed out, while
#: open: revoked when this process releases or reuses their lease's region
_LENT: "dict[int, weakref.ref[Loan]]" = {}


class LoanArray(np.ndarray):
    """A numpy array over a loan's bytes (:meth:`Loan.array`). Views taken from
    it (slices, reshapes, ``.view(dtype)``) are recorded so that the loan can
    make each of them read-only when the bytes stop being the caller's; what a
    computation makes from it (``a * 2``, ``a.sum()``) is a plain array."""

    _views: "list[weakref.ref] | None" = None

    def __array_finalize__(self, obj: Any) -> None:
        views = getattr(obj, "_views", None)
        if views is not None and self.base is not None:     # a view of the loan's bytes, not a copy
            self._views = views
            views.append(weakref.ref(self))
            if len(views) % 256 == 0:       # slice assignments leave short-lived views behind
                views[:] = [r for r in views if r() is not None]

    def __array_wrap__(self, arr: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        return arr[()] if return_scalar else arr


class Loan:
    """Slots taken for one message of ``size`` value bytes; see the module doc."""

    __slots__ = ("_l", "_owner", "_view", "_span", "_views", "_gone", "offset", "partition", "size",
                 "__weakref__")

    def __init__(self, ring: Any, owner: object, size: int, key: bytes | None, headers,
                 partition: int = 0, timestamp: int | None = None) -> None:
        _validate.integer(size, "size", 0, (1 << 32) - 1)
        if key is not None:
            key = _validate.as_bytes(key, "key")
        hdrs = encode_headers(headers) if headers else b""
        ts = 0 if timestamp is None else _validate.integer(timestamp, "timestamp", 1, (1 << 62))
        self._owner = owner          # keeps the ring (and its mapping) alive while lent
        self._view: memoryview | None = None
        self._span: Any = None       # the bytes as a revocable exporter, once handed out
        self._views: list[weakref.ref] = []
        self._gone: str | None = None     # why the bytes were taken back, when it was not commit or abandon
        self._l, rc = _core.begin(ring, key, hdrs, size, ts)
        if rc < 0:
            if rc == codes.TOOBIG:
                raise MessageTooLarge(last_error(), len(key or b"") + len(hdrs) + size, _core.max_message(ring))
            raise_for(rc, "loan")
        self.offset: int = self._l.offset     #: the message's offset once committed
        self.partition = partition
        self.size = size

    def _lend(self) -> Any:
        """The loan's bytes as a revocable exporter, after checking they are still
        the caller's (open, lease alive)."""
        rc = _check(self._l)
        if rc < 0:
            self._refuse(rc)
        s = self._span
        if s is None:
            s = self._span = span(_core.value(self._l, self.size))
            _LENT[id(self)] = weakref.ref(self)
        return s

    @property
    def view(self) -> memoryview:
        """The value as a writable memoryview, while the loan is open."""
        s = self._lend()
        v = self._view
        if v is None:
            v = self._view = memoryview(s)
        return v

    def array(self, dtype: Any = np.uint8, shape: int | tuple[int, ...] | None = None) -> np.ndarray:
        """The value as a writable numpy array of ``dtype`` and ``shape`` (default:
        1-D over the whole value). Its bytes must fit the loan. Read-only once the
        loan is committed or abandoned, with every view taken from it."""
        s = self._lend()
        dt = np.dtype(dtype)
        if shape is None:
            if self.size % dt.itemsize:
                raise InvalidArgument(f"a {self.size}-byte loan is not a whole number of {dt} items")
            shape = (self.size // dt.itemsize,)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize > self.size:
            raise InvalidArgument(f"an array of {shape} x {dt} needs {count * dt.itemsize} bytes, "
                                  f"the loan has {self.size}")
        # over the span without holding its buffer: a held export then means something
        # this loan cannot revoke
        a = LoanArray(shape, dt, s)
        a._views = self._views
        self._views.append(weakref.ref(a))
        return a

    def write(self, data: Any, at: int = 0) -> int:
        """Copy ``data`` (bytes or any contiguous buffer) into the value at byte
        ``at``; returns the number of bytes written. The copy is the core's
        (``gf_copy``), which avoids the distances between source and destination
        at which glibc's memcpy -- behind ``view[:] = data`` and numpy's copies --
        runs 15-25x slower on AMD Zen CPUs."""
        rc = _check(self._l)
        if rc < 0:
            self._refuse(rc)
        _validate.integer(at, "at", 0, self.size)
        try:
            src = _source(data)
        except (TypeError, ValueError, BufferError):
            raise InvalidType(f"data must be bytes or a contiguous buffer, not {type(data).__name__}") from None
        n = len(src)
        if n > self.size - at:
            raise InvalidArgument(f"{n} bytes at {at} do not fit a {self.size}-byte loan")
        _copy(self._l.value + at, src, n)
        return n

    def _refuse(self, rc: int, what: str = "loan") -> NoReturn:
        if self._gone is not None:
            raise LeaseExpired(f"the loan of offset {self.offset} was taken back: {self._gone}")
        raise_for(rc, what)

    @property
    def open(self) -> bool:
        return self._l.state == 0

    def commit(self) -> int:
        """Publish the message; returns its offset."""
        rc = self._publish()
        if rc < 0:
            self._refuse(rc, "loan commit")
        return rc

    def _publish(self) -> int:
        """Revoke the caller's access and commit: the offset, or the core's error code."""
        if self._span is not None and self._revoke():
            held = self._span.exports
            _abandon(self._l)
            raise ViewsInUse(f"{held} buffer(s) of the loan of offset {self.offset} are still held by objects "
                             "that cannot be made read-only (a slice of its view, or a buffer taken from it or "
                             "from an array of it): the loan was abandoned, nothing was published")
        return _commit(self._l)

    def abandon(self) -> None:
        """Give the slots up: readers skip them at once. Idempotent."""
        if self._span is not None:
            self._revoke()
        _abandon(self._l)

    def _revoke(self) -> int:
        """End the caller's access to the bytes: the view is released, every array
        (and view of one) made read-only, and the span refuses new buffers.
        Returns how many buffers of it are still held (by what cannot be revoked)."""
        _LENT.pop(id(self), None)
        views = self._views
        if views:
            for ref in views:
                a = ref()
                if a is not None:
                    a.flags.writeable = False
            views.clear()
        v = self._view
        if v is not None:
            try:
                v.release()
            except BufferError:
                pass        # something took a buffer of the view: counted below
        return self._span.revoke()

    def __enter__(self) -> "Loan":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            self.abandon()
            return
        # commit without reading the state through cffi first: the core refuses a
        # loan no longer open (_DONE: committed or abandoned in the block already)
        rc = self._publish()
        if rc < 0 and (rc != _DONE or self._gone is not None):
            self._refuse(rc, "loan commit")

    def __del__(self) -> None:
        # a loan dropped without commit must not keep readers waiting
        lv = getattr(self, "_l", None)
        if lv is not None and lv.state == 0 and lv.ring:     # open, on a ring
            if self._span is not None:
                self._revoke()
            _abandon(lv)

    def __repr__(self) -> str:
        state = ("open", "committed", "abandoned")[self._l.state]
        return f"<Loan partition={self.partition} offset={self.offset} {self.size} B {state}>"


def revoke(fabric: object, lease_id: int | None, now_ns: int) -> None:
    """Revoke and abandon this process's open loans on ``fabric``'s lease
    ``lease_id`` (about to be released), or, with None, on every lease of it
    dead at ``now_ns`` (about to be reaped or reused): what they handed out
    stops being writable before the region can become another ring."""
    for ref in list(_LENT.values()):
        ln = ref()
        if ln is None:
            continue
        lease = getattr(ln._owner, "lease", None)
        if lease is None or not lease.fabric.same_bus(fabric):
            continue
        if lease_id is not None and lease.id != lease_id:
            continue
        if lease_id is None and _lease.alive(lease.fabric, lease.index, lease.id, now_ns):
            continue
        ln._gone = "its partition was deleted, restarted or expired, and its region may be another topic's"
        ln.abandon()


before_reuse.append(revoke)
