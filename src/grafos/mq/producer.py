"""Producers: pick a partition (Kafka's keyed partitioner or round robin) and
append, with one crossing into C per message: ``send`` and ``send_keyed`` are
methods of the crossing's :class:`~grafos._crossing.SendPath`, which hands
the bytes to the core's ``gf_send`` (it hashes, picks the partition and
writes the slot) and builds the returned pair in C. Anything unusual (an
unbound producer, a type the crossing does not take, an error) comes back to
this module's slow path, which checks and raises. A Producer may be shared
by threads."""
from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import _validate
from .._check import last_error, raise_for
from .._crossing import SendPath, address
from .._native import ffi, lib
from ..errors import BufferFull, InvalidArgument, LeaseExpired, MessageTooLarge, NotFound
from ..message import encode_headers
from ..partition import MAX_OFFSET, OFFSET_BITS, pack
from . import gate
from .topic import RemoteManager, Topic, TopicManager

if TYPE_CHECKING:
    from ..loan import Loan
_send = lib.gf_send
_NULL = ffi.NULL
_RETRIES = 3
_SEQUENCES = (list, tuple)
_SLICE = 0.05          # seconds a blocked send sleeps before it checks signals and stale readers
_DEFAULT = object()    # timeout not given: the producer's


class Partitioner(enum.IntEnum):
    """``KeyHash`` is Kafka's default: ``murmur2(key) & 0x7fffffff % partitions``,
    so a key lands on the same partition number as in Kafka. Messages without a
    key go round robin. ``RoundRobin`` ignores keys."""

    KeyHash = lib.GF_PART_KEYHASH
    RoundRobin = lib.GF_PART_ROUNDROBIN
    # PEP 8 spellings
    KEY_HASH = lib.GF_PART_KEYHASH
    ROUND_ROBIN = lib.GF_PART_ROUNDROBIN


def kafka_partition(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    key = _validate.as_bytes(key, "key")
    _validate.integer(num_partitions, "num_partitions", 1)
    return lib.gf_kafka_partition(key, len(key), num_partitions)


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key`` as a signed 32-bit int (as Java returns it)."""
    key = _validate.as_bytes(key, "key")
    h = lib.gf_murmur2(key, len(key))
    return h - (1 << 32) if h >= 1 << 31 else h


class Producer(SendPath):
    """``Producer("events").with_partitioner(Partitioner.KeyHash)``.

    ``send(mgr, value, headers=None)`` and ``send_keyed(mgr, key, value,
    headers=None)`` append one message and return ``(partition, offset)``;
    values and keys are ``bytes``, ``bytearray`` or ``memoryview`` (taken
    without a copy). A Producer may be shared by threads: the hot path reads
    one binding (manager, C sender struct, topic) that is replaced whole, and
    the round-robin counter is atomic in C.

    On a topic with ``on_full="block"``, a send that finds no room waits for
    it up to ``timeout`` seconds (the producer's, or ``send(..., timeout=)``;
    None waits forever) and then raises BufferFull; with ``"raise"`` it raises
    at once. Either way nothing is written.
    """

    def __init__(self, topic: str, partitioner: Partitioner = Partitioner.KeyHash, *,
                 timeout: float | None = None, idempotent: bool = False,
                 transactional_id: str | None = None, transaction_ttl: float = 60.0) -> None:
        self.topic = _validate.name(topic, "topic", 64)
        if not isinstance(idempotent, bool):
            raise _validate.InvalidType(f"idempotent must be a bool, not {type(idempotent).__name__}")
        #: a name that outlives this object: a new Producer with the same id takes
        #: over (a higher epoch) and fences this one. Implies ``idempotent``.
        self.transactional_id = None if transactional_id is None else \
            _validate.name(transactional_id, "transactional_id", 64)
        #: every message carries (producer, epoch, sequence); a retried send that
        #: landed returns the original (partition, offset) instead of writing again
        self.idempotent = idempotent or self.transactional_id is not None
        #: seconds the producer's registration lives without a send, begin or commit
        #: renewing it; an open transaction whose producer's registration expired
        #: is aborted by whoever looks next
        self.transaction_ttl = _validate.number(transaction_ttl, "transaction_ttl", 0, lo_open=True)
        #: how long a send to a full ``on_full="block"`` topic waits for room before
        #: BufferFull (None: forever); ``send*(..., timeout=)`` overrides it per call
        self.timeout = _validate.timeout(timeout)
        if isinstance(partitioner, bool) or not isinstance(partitioner, int):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        if partitioner not in Partitioner._value2member_map_:
            raise InvalidArgument(f"partitioner must be Partitioner.KeyHash or RoundRobin, got {partitioner!r}")
        self.partitioner = Partitioner(partitioner)
        # (mgr, gf_sender*, Topic): replaced whole, never mutated, so threads see a consistent one
        self._bound: tuple = (None, None, None)

    def __reduce__(self):  # noqa: ANN204 - crosses processes as its settings; binds to the child's manager
        return (Producer, (self.topic, self.partitioner))

    def with_partitioner(self, partitioner: Partitioner) -> "Producer":
        if not isinstance(partitioner, Partitioner):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        self.partitioner = partitioner
        self._bound = (None, None, None)
        self._unbind_fast()
        return self

    def _bind(self, mgr: TopicManager, refresh: bool = False) -> Topic:
        if not isinstance(mgr, TopicManager):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        t = mgr.refresh(self.topic) if refresh else mgr.topic(self.topic)
        s = ffi.new("gf_sender *")
        s.rings = t.rings
        s.n = t.n
        s.mode = int(self.partitioner)
        old = self._bound[1]
        s.rr = old.rr if old is not None else 0
        self._bound = (mgr, s, t)
        self._bind_fast(mgr, t.binding, address(s), self._bound)
        return t

    # ---- one message ------------------------------------------------------------
    # send() and send_keyed() are SendPath's (C); they come here when they cannot
    # take the call themselves, with the arguments exactly as given.
    # A topic with on_full="block" waits for room here: the C path returns the
    # core's "no room" and the call lands in this slow path.
    def _send_fallback(self, mgr: TopicManager, value: bytes, headers=None, *,
                       timeout=_DEFAULT) -> tuple[int, int]:
        return self._send_slow(mgr, None, value, headers, timeout)

    def _send_keyed_fallback(self, mgr: TopicManager, key: bytes | None, value: bytes,
                             headers=None, *, timeout=_DEFAULT) -> tuple[int, int]:
        return self._send_slow(mgr, key, value, headers, timeout)

    def _send_slow(self, mgr: TopicManager, key, value, headers, timeout=_DEFAULT) -> tuple[int, int]:
        """Checks, headers, retries, waits for room; also where every error is raised."""
        if isinstance(mgr, RemoteManager):      # a bus on a server: it sends
            return mgr.send(self, key, value, headers)
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        hdrs = encode_headers(headers) if headers else b""
        refreshed = False
        rc = 0
        attempts = 0
        deadline: list = []
        spread = 0      # round-robin: other partitions tried since the last wait
        while attempts < _RETRIES:
            if self._bound[0] is not mgr or not self._bound[2].binding.valid:
                self._bind(mgr)
            _, s, t = self._bound
            rc = _send(t.rings, t.n, s.mode, ffi.addressof(s, "rr"),
                       key if key is not None else _NULL, len(key) if key is not None else 0,
                       key is not None, hdrs, len(hdrs), value, len(value), 0)
            if rc >= 0:
                return rc >> OFFSET_BITS, rc & MAX_OFFSET
            if rc == lib.GF_E_FULL_RING:
                if (key is None or s.mode == Partitioner.RoundRobin) and spread < t.n - 1:
                    spread += 1         # another partition may have room
                    continue
                spread = 0
                self._no_room(mgr, t, lib.gf_full_partition(), 1, timeout, deadline)
                continue
            attempts += 1
            if rc == lib.GF_E_TOOBIG:
                size = len(value) + len(hdrs) + (len(key) if key else 0)
                raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", size,
                                      t.config.max_message_bytes)
            if rc == lib.GF_E_ABANDONED:
                continue        # a reader gave up on our slot (we were descheduled): write again
            if rc in (lib.GF_E_EXPIRED, lib.GF_E_INVAL) and not refreshed:
                refreshed = True
                self._reread(mgr)
                continue
            self._raise_send(rc, t)
        self._raise_send(rc, t)

    def _no_room(self, mgr: TopicManager, t: Topic, p: int, count: int, timeout, deadline: list) -> None:
        """Partition p of t has no room for ``count`` messages (a gating reader is
        behind): raise BufferFull, or wait one slice for room. ``deadline`` holds
        the monotonic deadline of this call once the first wait set it. Waits
        sleep in C without the GIL, in slices so that Ctrl-C gets through and a
        reader that went stale is released (the gate recomputed) meanwhile."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        if t.config.on_full != "block":
            gate.note_full(t, p)
            raise BufferFull(f"topic {self.topic!r} partition {p} is full: a gating reader has not read "
                             f"the oldest message (on_full='raise'); nothing was written")
        if not deadline:
            deadline.append(None if timeout is None else time.monotonic() + max(timeout, 0.0))
        end = deadline[0]
        left = _SLICE if end is None else min(_SLICE, end - time.monotonic())
        if left <= 0:
            gate.note_full(t, p)
            raise BufferFull(f"topic {self.topic!r} partition {p} had no room for {count} message(s) "
                             f"within the timeout of {timeout} s; nothing was written")
        if not gate.wait_room(t, p, count, int(left * 1e9)):
            gate.recompute(mgr, t)      # a gating reader may have gone stale meanwhile

    def _reread(self, mgr: TopicManager) -> None:
        """A send found a dead partition (expired, or reclaimed: no ring, "not open").
        The topic may have been restarted, deleted or recreated by another process:
        re-read the directory."""
        try:
            self._bind(mgr, refresh=True)
        except NotFound:
            raise NotFound(f"topic {self.topic!r} no longer exists (deleted)") from None

    def _raise_send(self, rc: int, t: Topic) -> None:
        gone = [i for i, p in enumerate(t.partitions) if p is None]
        if rc == lib.GF_E_INVAL and gone:
            raise LeaseExpired(f"topic {self.topic!r}: partitions {gone} have expired and been "
                               "reclaimed; restart the topic")
        raise_for(rc, f"topic {self.topic!r}")

    # ---- batches ------------------------------------------------------------------
    def send_batch(self, mgr: TopicManager, values: Sequence[bytes] | np.ndarray,
                   keys: Sequence[bytes] | None = None, *, timeout=_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
        """Append many messages with one crossing into C. ``values`` is a list or
        tuple of bytes (walked in C, no join) or a 2-D uint8 numpy array (one row
        per message, used in place). Returns (partitions, offsets) as numpy arrays.
        All or nothing: if any message is too large, or a partition of an
        ``on_full`` "raise" topic has no room (BufferFull), none is written; on a
        "block" topic the whole batch waits for room (up to ``timeout``)."""
        if isinstance(mgr, RemoteManager):      # a bus on a server: pipelined publishes
            return mgr.send_batch(self, values, keys)
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        if values.__class__ in _SEQUENCES and (keys is None or keys.__class__ in _SEQUENCES):
            n = len(values)
            if n and (keys is None or len(keys) == n):
                parts = np.empty(n, dtype=np.uint32)
                offs = np.empty(n, dtype=np.uint64)
                done = self._batch(mgr, lambda t: self._send_lists(values, keys, parts, offs), parts, offs,
                                   timeout, lambda: max(len(v) + (len(keys[i]) if keys is not None else 0)
                                                        for i, v in enumerate(values)))
                if done is not None:
                    return done
                # not all bytes: the packing path below checks and says why
        vals, vlens = pack(values, "values")
        n = len(vlens)
        if n == 0:
            raise InvalidArgument("empty batch")
        kbuf = klens = None
        if keys is not None:
            kbuf, klens = pack(keys, "keys")
            if len(klens) != n:
                raise InvalidArgument(f"{len(klens)} keys for {n} values")
        parts = np.empty(n, dtype=np.uint32)
        offs = np.empty(n, dtype=np.uint64)

        def packed(t: Topic) -> int:
            return lib.gf_send_batch(
                t.rings, t.n, self.partitioner, ffi.addressof(self._bound[1], "rr"), n,
                ffi.from_buffer("uint8_t[]", kbuf) if kbuf is not None else _NULL,
                ffi.from_buffer("uint32_t[]", klens) if klens is not None else _NULL,
                ffi.from_buffer("uint8_t[]", vals), ffi.from_buffer("uint32_t[]", vlens), 0,
                ffi.from_buffer("uint32_t[]", parts), ffi.from_buffer("uint64_t[]", offs))
        return self._batch(mgr, packed, parts, offs, timeout,    # type: ignore[return-value]
                           lambda: int((vlens.astype(np.int64) + (klens if klens is not None else 0)).max()))

    def _batch(self, mgr: TopicManager, call, parts: np.ndarray, offs: np.ndarray, timeout,
               largest) -> tuple[np.ndarray, np.ndarray] | None:
        """Run ``call(topic) -> rc`` until the batch lands: wait for room on a full
        "block" partition, re-read a topic found dead once, raise the rest. None:
        ``call`` could not take the batch (it returned None)."""
        deadline: list = []
        attempt = 0
        while True:
            b = self._bound
            t = b[2] if b[0] is mgr and b[2].binding.valid else self._bind(mgr)
            rc = call(t)
            if rc is None:
                return None
            if rc >= 0:
                return parts, offs
            if rc == lib.GF_E_FULL_RING:
                self._batch_no_room(mgr, t, parts, timeout, deadline)
                continue
            self._batch_failed(mgr, rc, t, attempt, largest)     # raises once it has re-read
            attempt += 1

    def _batch_no_room(self, mgr: TopicManager, t: Topic, parts: np.ndarray, timeout, deadline: list) -> None:
        p = lib.gf_full_partition()
        self._no_room(mgr, t, p, int((parts == p).sum()) or 1, timeout, deadline)

    def _batch_failed(self, mgr: TopicManager, rc: int, t: Topic, attempt: int, largest) -> None:
        """A batch came back with error rc: raise, or return to try once more after
        re-reading a topic whose partitions were found dead. ``largest()`` is the
        size of the batch's largest message, for MessageTooLarge."""
        if rc == lib.GF_E_TOOBIG:
            raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", int(largest()),
                                  t.config.max_message_bytes)
        if rc in (lib.GF_E_EXPIRED, lib.GF_E_INVAL) and attempt == 0:
            self._reread(mgr)
            return
        self._raise_send(rc, t)

    # ---- in place ------------------------------------------------------------------
    def loan(self, mgr: TopicManager, size: int, key: bytes | None = None, headers=None) -> "Loan":
        """A zero-copy write of one message of ``size`` value bytes on the partition
        :meth:`send_keyed` (or :meth:`send`, without a key) would pick: a context
        manager over the slots (see :mod:`grafos.loan`)."""
        from ..loan import Loan
        if self._bound[0] is not mgr:
            self._bind(mgr)
        _, s, t = self._bound
        if key is not None:
            key = _validate.as_bytes(key, "key")
        p = lib.gf_sender_pick(s, key if key is not None else _NULL, len(key or b""), key is not None)
        part = t.partition(p)
        return Loan(part.handle, part, size, key, headers, p)

    def flush(self, timeout: float | None = None) -> int:
        """Appends are synchronous; nothing is buffered. Returns 0 (messages pending)."""
        return 0

    def close(self) -> None:
        self._bound = (None, None, None)
        self._unbind_fast()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
