"""A process-shared queue's state over one ring (the item format and the
``multiprocessing`` surface are :mod:`grafos.queues`'s).

The per-item calls are the core's functions with the queue already bound
(``functools.partial`` calls them from C): a put or a get costs no Python call
of its own.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .._check import check
from . import ffi, lib

if TYPE_CHECKING:
    from ..fabric import Fabric, MemLease
    from ..partition import Partition


def state_size() -> int:
    """Bytes of the lease that holds a queue's state."""
    return lib.gf_queue_state_size()


def init(fabric: "Fabric", state: "MemLease", ring: "Partition", maxsize: int, joinable: bool) -> None:
    check(lib.gf_queue_init(fabric.handle, state.index, state.id, ring.handle, maxsize, 1 if joinable else 0),
          "queue")


class ItemBuffer:
    """A thread's buffer that a get copies a small item to, and the item's header."""

    __slots__ = ("buf", "size", "view", "item")

    def __init__(self, size: int) -> None:
        self.buf = ffi.new("uint8_t[]", size)
        self.size = size
        self.view = memoryview(ffi.buffer(self.buf))
        self.item = ffi.new("gf_queue_item *")

    def item_len(self) -> int:
        """The length of the item a get found too large for the buffer it was given."""
        return self.item.len


def into(array: Any) -> Any:
    """A writable buffer (a numpy array) as a get's destination."""
    return ffi.from_buffer("uint8_t[]", array)


class Handle:
    """One process's handle on a queue's state."""

    def __init__(self, fabric: "Fabric", state: "MemLease", ring: "Partition") -> None:
        q = ffi.new("gf_queue *")
        check(lib.gf_queue_open(fabric.handle, state.index, state.id, ring.handle, q), "queue")
        self._q = q
        self.maxsize: int = q.maxsize
        #: put1(data, len, timeout_ns) -> rc: put one contiguous item
        self.put1: Callable[[bytes, int, int], int] = partial(lib.gf_queue_put1, q)
        #: get(buf, buf_size, timeout_ns, item) -> length or rc; buf is an ItemBuffer's
        #: ``buf`` or :func:`into`'s, item an ItemBuffer's ``item``
        self.get: Callable[[Any, int, int, Any], int] = partial(lib.gf_queue_get, q)

    def put_segments(self, segs: Sequence[Any], lens: Sequence[int]) -> Callable[[int], int]:
        """put(timeout_ns) -> rc: a put of one item made of ``segs`` (bytes-like, of
        ``lens`` bytes), each copied from its owner's memory by the one call."""
        ptrs = ffi.new("uint8_t *[]", [ffi.from_buffer(sg) for sg in segs])
        return partial(lib.gf_queue_put, self._q, len(segs), ptrs, ffi.new("uint64_t[]", lens))

    def size(self) -> int:
        return lib.gf_queue_size(self._q)

    def task_done(self) -> int:
        return lib.gf_queue_task_done(self._q)

    def join(self, timeout_ns: int) -> int:
        """1 once every item put has had its task_done."""
        return lib.gf_queue_join(self._q, timeout_ns)
