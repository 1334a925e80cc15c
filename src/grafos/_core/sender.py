"""What a producer hands the core: a topic's table of ring pointers, the
sender over it (partition pick, round-robin counter), and an idempotent
producer's sequences.

The sender's C struct is the crossing's (a :class:`grafos._crossing.SenderState`,
reached here through the buffer protocol), and so is the per-message send
(:class:`grafos._crossing.SendPath`, bound to :attr:`Sender.state`); the
methods here are the cold paths that retry, wait for room or repeat an
idempotent send.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .._check import check
from .._crossing import SenderState
from . import ffi, lib

if TYPE_CHECKING:
    from ..fabric import Fabric
    from ..partition import Partition

_NULL = ffi.NULL


def ring_table(partitions: "Sequence[Partition | None]") -> Any:
    """The rings of a topic's partitions as the core's ``gf_ring *[]`` (NULL where a
    partition expired), the table a send picks a partition from."""
    rings = ffi.new("gf_ring *[]", len(partitions))
    for i, p in enumerate(partitions):
        if p is not None:
            rings[i] = p.handle
    return rings


def kafka_partition(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return lib.gf_kafka_partition(key, len(key), num_partitions)


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key``, unsigned 32-bit."""
    return lib.gf_murmur2(key, len(key))


def _bytes(b: Any) -> Any:
    return ffi.from_buffer("uint8_t[]", b) if b is not None else _NULL


def _u32(a: np.ndarray | None) -> Any:
    return ffi.from_buffer("uint32_t[]", a) if a is not None else _NULL


class SendResult:
    """What a failed send says beyond its return code, for the retry: which
    partition had no room, and whether an idempotent send failed after its
    write. The caller's own (one per call that may retry), so two threads' or
    two producers' failures never mix. A send sets :attr:`full_partition` when
    it returns ``codes.FULL_RING``; an idempotent send sets :attr:`unsure` on
    every call."""

    __slots__ = ("_r",)

    def __init__(self) -> None:
        self._r = ffi.new("gf_send_result *")

    @property
    def full_partition(self) -> int:
        """The partition a send that returned ``codes.FULL_RING`` found without room."""
        return self._r.full_part

    @property
    def unsure(self) -> tuple[int, int] | None:
        """(partition, sequence) of an idempotent send that wrote and then failed
        (repeat it with :meth:`Sender.send_idem_again`), else None."""
        r = self._r
        return (r.unsure_part, r.unsure_seq) if r.unsure else None


class Idem:
    """An idempotent producer's process-local state: per partition the next
    sequence and the last offset written, the open transaction, when to renew."""

    __slots__ = ("_d", "_keep")

    def __init__(self, fabric: "Fabric", n: int, producer: int, epoch: int, lease_index: int, lease_id: int,
                 context: str) -> None:
        """Bound to the registration (lease_index, lease_id) of ``producer`` at ``epoch``."""
        d = ffi.new("gf_idem *")
        seqs, last = ffi.new("uint64_t[]", max(n, 1)), ffi.new("int64_t[]", [-1] * max(n, 1))
        self._keep = [seqs, last]
        d.seqs, d.last, d.n = seqs, last, n
        d.producer, d.epoch = producer, epoch
        check(lib.gf_idem_bind(fabric.handle, d, lease_index, lease_id), context)
        self._d = d

    @property
    def n(self) -> int:
        return self._d.n

    def grow(self, n: int) -> None:
        """The topic grew (recreated): sequences of the new partitions start at 0."""
        d = self._d
        if d.n >= n:
            return
        seqs, last = ffi.new("uint64_t[]", n), ffi.new("int64_t[]", [-1] * n)
        ffi.memmove(seqs, d.seqs, 8 * d.n)
        ffi.memmove(last, d.last, 8 * d.n)
        self._keep[:] = [seqs, last]
        d.seqs, d.last, d.n = seqs, last, n

    @property
    def txn(self) -> int:
        """The open transaction the sends are stamped with (0: none)."""
        return self._d.txn

    @txn.setter
    def txn(self, txn: int) -> None:
        self._d.txn = txn

    @property
    def renew_at_ns(self) -> int:
        """Wall clock from which sends take the slow path to renew the registration."""
        return self._d.renew_at_ns

    @renew_at_ns.setter
    def renew_at_ns(self, t: int) -> None:
        self._d.renew_at_ns = t


class Sender:
    """A producer's view of one topic: its ring table, the pick mode, the
    round-robin counter, and its :class:`Idem` if idempotent."""

    __slots__ = ("_s", "_rings", "idem", "state")

    def __init__(self, rings: Any, n: int, mode: int, rr: int = 0, idem: Idem | None = None) -> None:
        """``rings``: a topic's :func:`ring_table` of ``n`` partitions; ``rr``: the
        round-robin counter to carry on from."""
        #: the crossing's object that holds the C struct (what a SendPath binds to)
        self.state = SenderState()
        s = ffi.from_buffer("gf_sender *", self.state, require_writable=True)
        s.rings, s.n, s.mode, s.rr = rings, n, mode, rr
        if idem is not None:
            s.idem = idem._d
        self._s = s
        self._rings = rings         # the table outlives the sender that points into it
        self.idem = idem

    @property
    def mode(self) -> int:
        return self._s.mode

    @property
    def rr(self) -> int:
        """The round-robin counter."""
        return self._s.rr

    def pick(self, key: bytes | None) -> int:
        """The partition a send of ``key`` would pick (advances the round robin)."""
        return lib.gf_sender_pick(self._s, key if key is not None else _NULL, len(key or b""), key is not None)

    def send(self, key: bytes | None, headers: bytes, value: bytes, out: SendResult | None) -> int:
        """One plain send: (partition << OFFSET_BITS | offset), or the core's error
        code, with what the failure says in ``out`` (None: not asked)."""
        s = self._s
        return lib.gf_send(s.rings, s.n, s.mode, ffi.addressof(s, "rr"), key if key is not None else _NULL,
                           len(key) if key is not None else 0, key is not None, headers, len(headers),
                           value, len(value), 0, out._r if out is not None else _NULL)

    def send_idem(self, key: bytes | None, headers: bytes, value: bytes, out: SendResult) -> int:
        """One idempotent send (stamped, checked against the epoch): as :meth:`send`."""
        return lib.gf_send_idem(self._s, key if key is not None else _NULL, len(key) if key is not None else 0,
                                key is not None, headers, len(headers), value, len(value), out._r)

    def send_idem_again(self, part: int, seq: int, key: bytes | None, headers: bytes, value: bytes,
                        out: SendResult) -> int:
        """Repeat the idempotent send that :attr:`SendResult.unsure` named."""
        return lib.gf_send_idem_again(self._s, part, seq, key if key is not None else _NULL,
                                      len(key) if key is not None else 0, key is not None, headers, len(headers),
                                      value, len(value), out._r)

    def send_batch(self, count: int, keys: Any, key_lens: np.ndarray | None, values: Any, value_lens: np.ndarray,
                   parts: np.ndarray, offsets: np.ndarray, out: SendResult) -> int:
        """``count`` messages packed as :func:`grafos.partition.pack` packs them (keys
        None: no keys); each one's partition and offset into ``parts`` (uint32) and
        ``offsets`` (uint64). How many were written (all), or the core's error code
        (then none was, and ``out`` says which partition had no room)."""
        s = self._s
        return lib.gf_send_batch(s.rings, s.n, s.mode, ffi.addressof(s, "rr"), count, _bytes(keys),
                                 _u32(key_lens), ffi.from_buffer("uint8_t[]", values), _u32(value_lens), 0,
                                 _u32(parts), ffi.from_buffer("uint64_t[]", offsets), out._r)
