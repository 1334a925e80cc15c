"""Producers: pick a partition (Kafka's keyed partitioner or round robin) and
append, with one crossing into C per message (``gf_send`` hashes, picks the
partition and writes the slot). A Producer may be shared by threads."""
from __future__ import annotations

import enum
from typing import Sequence

import numpy as np

from .. import _validate
from .._check import last_error, raise_for
from .._native import ffi, lib
from ..errors import InvalidArgument, LeaseExpired, MessageTooLarge, NotFound
from ..message import encode_headers
from ..partition import pack
from .topic import RemoteManager, Topic, TopicManager

_MASK48 = (1 << 48) - 1
_send = lib.gf_send
_send_key = lib.gf_sender_send
_send_nokey = lib.gf_sender_send_nokey
_NULL = ffi.NULL
_RETRIES = 3


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


class Producer:
    """``Producer("events").with_partitioner(Partitioner.KeyHash)``.

    A Producer may be shared by threads: the hot path reads one immutable
    binding (manager, C sender struct, topic) and the round-robin counter is
    atomic in C.
    """

    def __init__(self, topic: str, partitioner: Partitioner = Partitioner.KeyHash) -> None:
        self.topic = _validate.name(topic, "topic", 64)
        if isinstance(partitioner, bool) or not isinstance(partitioner, int):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        if partitioner not in Partitioner._value2member_map_:
            raise InvalidArgument(f"partitioner must be Partitioner.KeyHash or RoundRobin, got {partitioner!r}")
        self.partitioner = Partitioner(partitioner)
        # (mgr, gf_sender*, Topic): replaced whole, never mutated, so threads see a consistent one
        self._bound: tuple = (None, None, None)

    def with_partitioner(self, partitioner: Partitioner) -> "Producer":
        if not isinstance(partitioner, Partitioner):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        self.partitioner = partitioner
        self._bound = (None, None, None)
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
        return t

    # ---- one message ------------------------------------------------------------
    def send(self, mgr: TopicManager, value: bytes, headers=None) -> tuple[int, int]:
        """Append ``value`` without a key (round robin). Returns (partition, offset)."""
        b = self._bound
        if b[0] is mgr and headers is None:
            try:
                rc = _send_nokey(b[1], value, len(value))
            except TypeError:
                rc = -1
            if rc >= 0:
                return rc >> 48, rc & _MASK48
        return self._send_slow(mgr, None, value, headers)

    def send_keyed(self, mgr: TopicManager, key: bytes | None, value: bytes,
                   headers=None) -> tuple[int, int]:
        """Append ``value`` under ``key`` (Kafka's partitioner). Returns (partition, offset)."""
        b = self._bound
        if b[0] is mgr and headers is None:
            try:
                rc = _send_key(b[1], key, len(key), value, len(value))
            except TypeError:   # not bytes (or key None): the slow path checks and says why
                rc = -1
            if rc >= 0:
                return rc >> 48, rc & _MASK48
        return self._send_slow(mgr, key, value, headers)

    def _send_slow(self, mgr: TopicManager, key, value, headers) -> tuple[int, int]:
        """Checks, headers, retries; also where every error is raised."""
        if isinstance(mgr, RemoteManager):      # a bus on a server: it sends
            return mgr.send(self, key, value, headers)
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        hdrs = encode_headers(headers) if headers else b""
        refreshed = False
        rc = 0
        for _ in range(_RETRIES):
            if self._bound[0] is not mgr:
                self._bind(mgr)
            _, s, t = self._bound
            rc = _send(t.rings, t.n, s.mode, ffi.addressof(s, "rr"),
                       key if key is not None else _NULL, len(key) if key is not None else 0,
                       key is not None, hdrs, len(hdrs), value, len(value), 0)
            if rc >= 0:
                return rc >> 48, rc & _MASK48
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
                   keys: Sequence[bytes] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Append many messages with one crossing into C. ``values`` is a list of
        bytes or a 2-D uint8 numpy array (one row per message). Returns
        (partitions, offsets) as numpy arrays."""
        if isinstance(mgr, RemoteManager):      # a bus on a server: pipelined publishes
            return mgr.send_batch(self, values, keys)
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
        for attempt in range(2):
            b = self._bound
            t = b[2] if b[0] is mgr else self._bind(mgr)
            rc = lib.gf_send_batch(
                t.rings, t.n, self.partitioner, ffi.addressof(self._bound[1], "rr"), n,
                ffi.from_buffer("uint8_t[]", kbuf) if kbuf is not None else _NULL,
                ffi.from_buffer("uint32_t[]", klens) if klens is not None else _NULL,
                ffi.from_buffer("uint8_t[]", vals), ffi.from_buffer("uint32_t[]", vlens), 0,
                ffi.from_buffer("uint32_t[]", parts), ffi.from_buffer("uint64_t[]", offs))
            if rc >= 0:
                return parts, offs
            if rc == lib.GF_E_TOOBIG:
                sizes = vlens.astype(np.int64) + (klens if klens is not None else 0)
                raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", int(sizes.max()),
                                      t.config.max_message_bytes)
            if rc in (lib.GF_E_EXPIRED, lib.GF_E_INVAL) and attempt == 0:
                self._reread(mgr)
                continue
            self._raise_send(rc, t)
        self._raise_send(rc, t)

    def flush(self, timeout: float | None = None) -> int:
        """Appends are synchronous; nothing is buffered. Returns 0 (messages pending)."""
        return 0

    def close(self) -> None:
        self._bound = (None, None, None)

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
