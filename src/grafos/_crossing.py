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

_table = lib.gf_crossing_table()
# the table's first field is its size (crossing.h): the crossing gets exactly its bytes
_fast.bind(ffi.buffer(_table, ffi.cast("const uint32_t *", _table)[0]), raise_for, CorruptFabric, Message)

Binding = _fast.Binding
SenderState = _fast.SenderState
SendPath = _fast.SendPath
PollPath = _fast.PollPath
Span = _fast.Span
Poller = _fast.Poller
Segment = _fast.Segment
# cffi takes a Poller's bytes as a gf_poller, and a SenderState's as a gf_sender, without
# checking their size: both builds must agree on them
for _made, _struct in ((Poller(None), "gf_poller"), (SenderState(), "gf_sender")):
    if memoryview(_made).nbytes != ffi.sizeof(_struct):
        raise ImportError(f"the crossing (grafos._fast) and the core's binding were built with different "
                          f"{_struct} layouts: reinstall grafos")
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


class ProducerTimeout(float):
    """The default of a send's ``timeout=``: the producer's own ``timeout``.

    A float only so that the crossing's text signatures (csrc/fast.c) can name
    it: :func:`inspect.signature` resolves a name there only to a str, int,
    float, bytes, bool or None. Never used as a number: it is NaN, which every
    timeout check refuses, and the send paths test for it by identity."""

    __slots__ = ()

    def __new__(cls) -> ProducerTimeout:
        return super().__new__(cls, "nan")

    def __repr__(self) -> str:
        return "self.timeout"      # what help() and inspect.signature show for the default


#: timeout not given: the producer's
PRODUCER_TIMEOUT = ProducerTimeout()
