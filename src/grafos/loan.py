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

Lifetime: the view is released at commit or abandon (using it afterwards
raises ``ValueError``). Arrays from :meth:`array` share the bytes and cannot be
revoked: do not write through them after the block, or you write into a
published message (or a later one); readers that verify checksums would then
skip it as corrupt.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate
from ._check import last_error, raise_for
from ._native import ffi, lib
from .errors import InvalidArgument, InvalidType, MessageTooLarge
from .message import encode_headers


_commit = lib.gf_loan_commit
_DONE = lib.GF_E_INVAL     # gf_loan_commit on a loan no longer open (nothing else returns it)


class Loan:
    """Slots taken for one message of ``size`` value bytes; see the module doc."""

    __slots__ = ("_l", "_owner", "view", "offset", "partition", "size")

    def __init__(self, ring: Any, owner: object, size: int, key: bytes | None, headers,
                 partition: int = 0, timestamp: int | None = None) -> None:
        _validate.integer(size, "size", 0, (1 << 32) - 1)
        if key is not None:
            key = _validate.as_bytes(key, "key")
        hdrs = encode_headers(headers) if headers else b""
        ts = 0 if timestamp is None else _validate.integer(timestamp, "timestamp", 1, (1 << 62))
        self._l = ffi.new("gf_loan *")
        self._owner = owner          # keeps the ring (and its mapping) alive while lent
        rc = lib.gf_loan_begin(ring, key if key is not None else ffi.NULL,
                               len(key) if key is not None else 0, key is not None,
                               hdrs, len(hdrs), size, ts, self._l)
        if rc < 0:
            if rc == lib.GF_E_TOOBIG:
                raise MessageTooLarge(last_error(), len(key or b"") + len(hdrs) + size,
                                      lib.gf_ring_max_message(ring))
            raise_for(rc, "loan")
        self.offset: int = self._l.offset     #: the message's offset once committed
        self.partition = partition
        self.size = size
        self.view: memoryview = memoryview(ffi.buffer(self._l.value, size))   #: the value, writable

    def array(self, dtype: Any = np.uint8, shape: int | tuple[int, ...] | None = None) -> np.ndarray:
        """The value as a writable numpy array of ``dtype`` and ``shape`` (default:
        1-D over the whole value). Its bytes must fit the loan."""
        if self._l.state != 0:
            raise InvalidArgument("the loan is no longer open")
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
        return np.frombuffer(ffi.buffer(self._l.value, self.size), dtype=dt, count=count).reshape(shape)

    def write(self, data: Any, at: int = 0) -> int:
        """Copy ``data`` (bytes or any contiguous buffer) into the value at byte
        ``at``; returns the number of bytes written. The copy is the core's
        (``gf_copy``), which avoids the distances between source and destination
        at which glibc's memcpy -- behind ``view[:] = data`` and numpy's copies --
        runs 15-25x slower on AMD Zen CPUs."""
        if self._l.state != 0:
            raise InvalidArgument("the loan is no longer open")
        _validate.integer(at, "at", 0, self.size)
        try:
            src = ffi.from_buffer(data)
        except (TypeError, ValueError, BufferError):
            raise InvalidType(f"data must be bytes or a contiguous buffer, not {type(data).__name__}") from None
        n = len(src)
        if n > self.size - at:
            raise InvalidArgument(f"{n} bytes at {at} do not fit a {self.size}-byte loan")
        lib.gf_copy(self._l.value + at, src, n)
        return n

    @property
    def open(self) -> bool:
        return self._l.state == 0

    def commit(self) -> int:
        """Publish the message; returns its offset."""
        rc = self._publish()
        if rc < 0:
            raise_for(rc, "loan commit")
        return rc

    def _publish(self) -> int:
        """Release the view and commit: the offset, or the core's error code."""
        self._release()
        return _commit(self._l)

    def abandon(self) -> None:
        """Give the slots up: readers skip them at once. Idempotent."""
        self._release()
        lib.gf_loan_abandon(self._l)

    def _release(self) -> None:
        try:
            self.view.release()
        except BufferError:
            pass        # something holds a buffer of the view: it is documented as unusable from here

    def __enter__(self) -> "Loan":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            self.abandon()
            return
        # commit without reading the state through cffi first: the core refuses a
        # loan no longer open (_DONE: committed or abandoned in the block already)
        rc = self._publish()
        if rc < 0 and rc != _DONE:
            raise_for(rc, "loan commit")

    def __del__(self) -> None:
        # a loan dropped without commit must not keep readers waiting
        lv = getattr(self, "_l", None)
        if lv is not None and lv.state == 0 and lv.ring != ffi.NULL:
            lib.gf_loan_abandon(lv)

    def __repr__(self) -> str:
        state = ("open", "committed", "abandoned")[self._l.state]
        return f"<Loan partition={self.partition} offset={self.offset} {self.size} B {state}>"
