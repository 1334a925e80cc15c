"""A loan: slots of a ring taken for one message that the caller writes in
place (the revocable views over it are :mod:`grafos.loan`'s).

A loan is the core's ``gf_loan``, held as an opaque object (its ``state``,
``offset``, ``ring`` and ``value`` are read as attributes); ``check``, ``commit``,
``abandon``, ``source`` and ``copy`` are the core's functions themselves, so
the calls a loan makes per message cost no Python call of their own.
"""
from __future__ import annotations

from typing import Any, Callable

from . import ffi, lib

#: 0 while the slots are the caller's, else the core's error code
check: Callable[[Any], int] = lib.gf_loan_check
#: publish the message: its offset, or the core's error code
commit: Callable[[Any], int] = lib.gf_loan_commit
#: give the slots up (readers skip them at once); idempotent
abandon: Callable[[Any], None] = lib.gf_loan_abandon
#: what commit returns for a loan no longer open (nothing else returns it)
DONE: int = lib.GF_E_INVAL


def begin(ring: Any, key: bytes | None, headers: bytes, size: int, timestamp: int) -> tuple[Any, int]:
    """(the loan, the core's return code) for ``size`` value bytes on ``ring`` (a
    Partition's handle); ``timestamp`` 0 is now."""
    ln = ffi.new("gf_loan *")
    rc = lib.gf_loan_begin(ring, key if key is not None else ffi.NULL, len(key) if key is not None else 0,
                           key is not None, headers, len(headers), size, timestamp, ln)
    return ln, rc


def max_message(ring: Any) -> int:
    return lib.gf_ring_max_message(ring)


def value(ln: Any, size: int) -> Any:
    """The loan's ``size`` value bytes as a writable buffer, as the crossing's span takes them."""
    return ffi.buffer(ln.value, size)


#: ``source(data)``: ``data`` (bytes or a contiguous buffer) as ``copy`` takes it;
#: TypeError, ValueError or BufferError if it is neither
source: Callable[[Any], Any] = ffi.from_buffer
#: ``copy(ln.value + at, source(data), n)``: the core's copy into the loan's value
copy: Callable[[Any, Any, int], None] = lib.gf_copy
