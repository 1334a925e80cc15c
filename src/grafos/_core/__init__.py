"""The binding layer's typed wrappers of the compiled core (``grafos._native``).

The Python that calls the core lives here, in the error table
(:mod:`grafos._check`), in the crossing (:mod:`grafos._crossing`) and in the
handles of the fabric, its rings and their readers (:mod:`grafos.fabric`,
:mod:`grafos.partition`, :mod:`grafos.reader`). Everything above calls typed
Python functions and classes and never holds the core's ``ffi`` or ``lib``;
``tests/test_binding_layer.py`` keeps it so.

This package's ``__init__`` is the one import of the compiled core: its
modules, and the binding's modules beside it, take ``ffi`` and ``lib`` from
here.

One module per thing the core holds: :mod:`.layout` (its sizes, flags, policy
numbers and the offset bound), :mod:`.codes` (the return codes callers tell
apart), :mod:`.lease` (leases by index and id, under the caller's lock),
:mod:`.registration` (a producer's epoch word), :mod:`.sender` (a topic's ring
table, the sender over it, an idempotent producer's sequences, a send's
result), :mod:`.share`
(a share group's region), :mod:`.queue` (a process-shared queue's state),
:mod:`.loan` (slots lent for a write in place) and :mod:`.bench` (the core's
copy and its ring calls alone, the benchmarks' floors). The ring's own calls are
:class:`grafos.partition.Partition`'s.
"""
from __future__ import annotations

from .._native import ffi, lib

__all__ = ["ffi", "lib"]
