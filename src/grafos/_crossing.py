"""The per-message crossing: ``grafos._fast`` bound to the core's entry points.

``grafos._fast`` (csrc/fast.c) is a small CPython extension that holds no ring
or lease logic: it calls the cffi-built core through the table of entry
points the core hands over here, once, so both bindings share one core and
one copy of its state. Producers and consumers derive from its
:class:`SendPath` and :class:`PollPath`; a topic's :class:`Binding` tells
them when their cached view of it is stale.
"""
from __future__ import annotations

from . import _fast
from ._check import raise_for
from ._core import ffi, lib
from .errors import CorruptFabric
from .message import Message

_fast.bind(int(ffi.cast("uintptr_t", lib.gf_crossing_table())), raise_for, CorruptFabric, Message)

Binding = _fast.Binding
SendPath = _fast.SendPath
PollPath = _fast.PollPath
Span = _fast.Span
span = _fast.span
messages = _fast.messages
decode = _fast.decode
peek_take = _fast.peek_take
peek_build = _fast.peek_build
peek_runs = _fast.peek_runs
peek_check = _fast.peek_check
peek_release = _fast.peek_release
share_records = _fast.share_records
#: bytes per row of a peek (``gf_msg_meta``)
ROW = ffi.sizeof("gf_msg_meta")


def ffi_buffer(address: int, size: int) -> object:
    """The ``size`` bytes at ``address`` as a buffer (copy them with ``bytes``)."""
    return ffi.buffer(ffi.cast("uint8_t *", address), size)


def address(cdata: object) -> int:
    """The address of a cffi pointer, as the crossing takes it."""
    return int(ffi.cast("uintptr_t", cdata))
