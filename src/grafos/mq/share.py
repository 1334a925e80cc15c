"""Share groups: the queue model. Many members take records from the same
partitions; each record is locked to one member while it is processed,
acknowledged one by one, delivered again when its lock runs out (the member
died, stalled or forgot it), and sent to the dead-letter topic after too many
deliveries (Kafka's share groups, Redis Streams' consumer groups, JetStream's
work queues)::

    with mgr.share_consumer("jobs", group="resize", lock_secs=30, max_deliveries=5,
                            dlq="jobs-dlq") as jobs:
        for record in jobs.poll(100, timeout=1.0):
            try:
                handle(record.value)
            except Exception:
                jobs.release(record)        # again at once, to any member
            else:
                jobs.ack(record)            # never delivered again

**Where the state lives.** Per (group, partition), a lease of its own beside
the ring holds a state word per ring slot (available, locked by a member until
a deadline, acked, archived) with its delivery count (``csrc/share.c``,
layout in ``csrc/layout.h``). Acquiring a batch and settling a batch are one
call into C each, compare-and-swaps on those words: no coordinator, and no
lock a dead process could leave held. A member killed with SIGKILL leaves
locks that simply run out; what it acknowledged is never delivered again.

**Delivery.** ``poll`` locks up to ``n`` records to this member for
``lock_secs``: first records released or whose lock ran out, then new ones.
Each says its ``delivery_count`` (1 the first time). ``ack`` accepts a record,
``release`` makes it available again at once (the count stays), ``reject``
archives it (to the DLQ if one is set), ``renew`` extends its lock. Each takes
one record or a list; ``ack_range`` and friends take the records this
consumer holds in an offset range. A call on a record whose lock ran out
raises :class:`~grafos.errors.LockLost` and changes nothing for it.

**The delivery limit.** A record whose lock runs out, or that is released,
after ``max_deliveries`` deliveries is not delivered again: it goes to the
``dlq`` topic (when set) with headers saying where it came from
(``x-source-topic``, ``x-source-partition``, ``x-source-offset``,
``x-delivery-count``, ``x-last-member``, ``x-share-group``), then is archived.
The copy is made before the archive, so a member killed in between leaves the
record to another member, which copies it again: dead letters are at least
once.

**The window.** A group tracks records from its lowest unfinished offset on,
at most one ring's worth. On a topic whose ``on_full`` is "block" or "raise"
the group gates producers at that offset (a gating reader named
``s:<group>``, renewed by polls, released ``gating_ttl`` seconds after the
last one), so the ring never overwrites a record the group has not finished.
On an "overwrite" topic a lap past unfinished records counts them ``lost``.

**Retention stays the lease.** A share group never keeps a partition alive.
Its state lease lives as long as the partition's plus the topic's retention
(renewed by polls); when a partition expires, the records the group had handed
out and not finished expire with it and are counted (``expired()``, and
``grafos_share_expired_total``) when the topic is restarted; the group then
starts again at the new partition's first record.
"""
from __future__ import annotations

import asyncio
import gc
import itertools
from collections import deque
from itertools import repeat
import os
import socket
import struct
import time
from dataclasses import dataclass
from operator import is_, itemgetter
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from .. import _crossing, _validate
from .._check import check, raise_for
from .._clock import now_ns
from .._core import codes
from .._core import lease as _lease
from .._core import share as _core
from ..errors import CorruptFabric, InvalidArgument, LeaseExpired, LockLost, NotFound
from ..fabric import MemLease
from ..message import Headers
from ..reader import Reader
from . import _metakeys, gate
from .dlq import SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from .model import MAX_OFFSET, Bus
from .producer import Partitioner, Producer

if TYPE_CHECKING:
    from .topic import Topic, TopicManager

__all__ = ["ShareConsumer", "ShareRecord", "ShareBatch", "ShareState", "DELIVERY_COUNT", "LAST_MEMBER", "SHARE_GROUP"]

#: dead-letter headers added by a share group (beside the source topic, partition and offset)
DELIVERY_COUNT = "x-delivery-count"
LAST_MEMBER = "x-last-member"
SHARE_GROUP = "x-share-group"

MAX_DELIVERIES = 254
_CFG = struct.Struct("<qIIq")       # lock ns, max deliveries, pad, expired (records lost with their partition)
_REF = struct.Struct("<IIQQ")       # region lease index, pad, region lease id, ring lease id
_IDS = itertools.count(1)
_REFRESH_GAP = 0.05     # at most one directory re-read per this many seconds while a partition reads expired
_OPS = _core.OPS


class ShareRecord(tuple):
    """One record locked to a share consumer: ``partition``, ``offset``, ``key``,
    ``value``, ``timestamp`` (ns), ``headers``, ``delivery_count`` (1 the first
    time), ``deadline`` (when the lock runs out, seconds since the epoch) and
    ``topic``. Settle it with the consumer that polled it."""

    __slots__ = ()
    _fields = ("partition", "offset", "key", "value", "timestamp", "headers", "delivery_count", "deadline",
               "topic")

    partition: int = property(itemgetter(0))  # type: ignore[assignment]
    offset: int = property(itemgetter(1))  # type: ignore[assignment]
    key: bytes | None = property(itemgetter(2))  # type: ignore[assignment]
    value: bytes = property(itemgetter(3))  # type: ignore[assignment]
    timestamp: int = property(itemgetter(4))  # type: ignore[assignment]
    headers: Headers = property(itemgetter(5))  # type: ignore[assignment]
    delivery_count: int = property(itemgetter(6))  # type: ignore[assignment]
    deadline: float = property(lambda self: self[7] / 1e9)  # type: ignore[assignment]
    _word: int = property(itemgetter(8))  # type: ignore[assignment]
    _region: int = property(itemgetter(9))  # type: ignore[assignment]
    topic: str = property(itemgetter(10))  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ShareRecord(partition={self[0]}, offset={self[1]}, key={self[2]!r}, value={self[3]!r}, "
                f"delivery_count={self[6]})")


class ShareBatch(list):
    """The records of one poll: a list. Settling the batch as it came (``ack(batch)``)
    takes its offsets and lock words from arrays kept with it, with no work per
    record in Python; a batch changed since is settled record by record."""

    __slots__ = ("_runs", "_snap")

    def _intact(self) -> bool:
        snap = self._snap
        return len(self) == len(snap) and all(map(is_, self, snap))


_make = tuple.__new__
_share_records = _crossing.share_records
_P, _OFF, _WORD, _REGION = itemgetter(0), itemgetter(1), itemgetter(8), itemgetter(9)
_RECORD_TYPES = {ShareRecord}


@dataclass(frozen=True)
class ShareState:
    """A share group's records on one partition (``ShareConsumer.describe``)."""

    partition: int
    floor: int              #: the lowest unfinished offset (the group's gate position)
    next: int               #: the first offset never handed out
    latest: int             #: the ring's end
    in_flight: int          #: locked to a member now
    available: int          #: may be acquired now (released, lock run out, not yet handed out; in offsets)
    delivered: int          #: deliveries to members, redeliveries included
    redelivered: int
    acked: int
    released: int
    rejected: int
    dead_lettered: int      #: archived at the delivery limit
    lost: int               #: unfinished offsets the ring overwrote ("overwrite" topics)
    expired_locks: int      #: locks that ran out and were taken again
    oldest_lock_age: float  #: seconds since the oldest lock held now was taken (0.0: none)
    members: int            #: members that joined (over the state's life)


class _ShareMember:
    """What a share consumer is on every backend: the group's settings, checked
    the same way; the refusal of a lost lock; the dead-letter copy with its
    provenance headers; the checks of records and ranges; and the forms built on
    poll, settle and close. A backend adds polling, settling and the state."""

    _WAIT_SLICE: float      # seconds between looks while a poll waits (set by each backend)
    mgr: Any                # the backend's manager
    _LOST_WHY = "it ran out after lock_secs={lock:g} and the record may have gone to another member"

    def _settings(self, mgr: object, topic: str, group: str, lock_secs: float, max_deliveries: int,
                  dlq: str | None, member: str | None, max_batch: int, gating_ttl: float,
                  buf_size: int | None) -> None:
        self.mgr = mgr
        self.topic = _validate.name(topic, "topic", 64)
        self.group = _validate.name(group, "group", 64)
        self.lock_secs = _validate.number(lock_secs, "lock_secs", 0, lo_open=True)
        if self.lock_secs > 7 * 86400:
            raise InvalidArgument(f"lock_secs must be at most a week (604800), got {lock_secs}")
        self.max_deliveries = _validate.integer(max_deliveries, "max_deliveries", 1, MAX_DELIVERIES)
        if dlq is not None:
            dlq = _validate.name(dlq, "dlq", 64)
            if dlq == self.topic:
                raise InvalidArgument(f"the DLQ topic must differ from the source topic ({topic!r})")
            if not mgr.exists(dlq):     # type: ignore[attr-defined]
                raise NotFound(f"no DLQ topic {dlq!r}: create it before the share consumer")
        self.dlq = dlq
        self.max_batch = _validate.integer(max_batch, "max_batch", 1, 1 << 20)
        self.gating_ttl = _validate.number(gating_ttl, "gating_ttl", 0, lo_open=True)
        if buf_size is not None:
            _validate.integer(buf_size, "buf_size", 1, 1 << 40)
        if member is None:
            member = f"{socket.gethostname()}:{os.getpid()}:{next(_IDS)}"
        elif not isinstance(member, str) or not member or len(member.encode()) > 56:
            raise InvalidArgument(f"member must be a non-empty str of at most 56 bytes, got {member!r}")
        self.member = member
        self._dlq_producer = Producer(dlq, Partitioner.KeyHash) if dlq is not None else None
        self._closed = False
        self.dead_lettered = 0      #: records this consumer sent to the DLQ

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.topic!r} group {self.group!r} member {self.member!r}>"

    def _other_settings(self, lock_secs: float, max_deliveries: int) -> InvalidArgument:
        """The refusal of a member whose settings are not the group's."""
        return InvalidArgument(
            f"share group {self.group!r} of {self.topic!r} has lock_secs={lock_secs:g} and "
            f"max_deliveries={max_deliveries}; this member asked for lock_secs={self.lock_secs:g} and "
            f"max_deliveries={self.max_deliveries}")

    def _lock_lost(self, refused: list[ShareRecord], op: str) -> LockLost:
        where = ", ".join(f"{r[0]}/{r[1]}" for r in refused[:10])
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        why = self._LOST_WHY.format(lock=self.lock_secs)
        return LockLost(f"share group {self.group!r} of {self.topic!r}: member {self.member!r} no longer "
                        f"holds the lock of {len(refused)} record(s) (partition/offset {where}{more}): {why}; "
                        f"nothing was applied to them ({op})",
                        group=self.group, topic=self.topic, member=self.member, records=refused)

    def _send_dead_letter(self, p: int, off: int, key: bytes | None, value: bytes, headers: Iterable,
                          count: int, last: bytes) -> None:
        """Copy a record to the DLQ with where it came from (the DLQ is set)."""
        hdrs = [(SOURCE_TOPIC, self.topic.encode()), (SOURCE_PARTITION, str(p).encode()),
                (SOURCE_OFFSET, str(off).encode()), (DELIVERY_COUNT, str(count).encode()),
                (LAST_MEMBER, last), (SHARE_GROUP, self.group.encode())]
        self._dlq_producer.send_keyed(self.mgr, key, value, hdrs + list(headers))   # type: ignore[union-attr]
        self.dead_lettered += 1

    # ---- arguments ----------------------------------------------------------------------
    def _poll_deadline(self, max_records: int, timeout: float | None) -> tuple[int, float | None]:
        """A poll's batch size, checked, and the monotonic time it waits until (None: for ever)."""
        n = _validate.integer(max_records, "max_records", 1, self.max_batch)
        timeout = _validate.timeout(timeout)
        if self._closed:
            raise InvalidArgument("this share consumer is closed")
        return n, None if timeout is None else time.monotonic() + timeout

    def _records(self, records: object) -> list[ShareRecord]:
        if type(records) is ShareBatch and records._intact():
            return records
        if type(records) is list and set(map(type, records)) <= _RECORD_TYPES:
            return records      # the common case, checked at C speed
        if isinstance(records, ShareRecord):
            return [records]
        if isinstance(records, (str, bytes)) or not hasattr(records, "__iter__"):
            raise _validate.InvalidType(f"records must be a ShareRecord or an iterable of them, "
                                        f"not {type(records).__name__}")
        out = list(records)     # type: ignore[call-overload]
        for r in out:
            if not isinstance(r, ShareRecord):
                raise _validate.InvalidType(f"records must be ShareRecords, not {type(r).__name__}")
        return out

    # ---- ranges -------------------------------------------------------------------------
    def ack_range(self, partition: int, start: int, stop: int, *, now: float | None = None) -> int:
        """Accept every record this consumer holds of ``partition`` with an offset in [start, stop)."""
        return self._settle_range("ack", partition, start, stop, now)

    def release_range(self, partition: int, start: int, stop: int, *, now: float | None = None) -> int:
        """:meth:`release` for the held records of ``partition`` in [start, stop)."""
        return self._settle_range("release", partition, start, stop, now)

    def reject_range(self, partition: int, start: int, stop: int, *, now: float | None = None) -> int:
        """:meth:`reject` for the held records of ``partition`` in [start, stop)."""
        return self._settle_range("reject", partition, start, stop, now)

    def renew_range(self, partition: int, start: int, stop: int, *, now: float | None = None) -> int:
        """:meth:`renew` for the held records of ``partition`` in [start, stop)."""
        return self._settle_range("renew", partition, start, stop, now)

    def _settle_range(self, op: str, partition: int, start: int, stop: int, now: float | None) -> int:
        p = _validate.integer(partition, "partition", 0, 1 << 20)
        # a range [start, stop) ends one past the largest offset at most
        a = _validate.integer(start, "start", 0, MAX_OFFSET + 1)
        b = _validate.integer(stop, "stop", 0, MAX_OFFSET + 1)
        if b < a:
            raise InvalidArgument(f"range [{a}, {b}) is empty the wrong way round")
        return getattr(self, op)(self._held_between(p, a, b), now=now)

    def _held_between(self, p: int, a: int, b: int) -> list[ShareRecord]:
        """The records held of partition p with an offset in [a, b), in offset order:
        placeholders (no key, value or timestamp) that settle like the polled ones."""
        raise NotImplementedError

    # ---- life ---------------------------------------------------------------------------
    def __enter__(self):  # noqa: ANN204 - the backend's consumer
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()        # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[ShareRecord]:
        """Records as they come, one at a time (blocking); settle each."""
        while not self._closed:
            yield from self.poll(self.max_batch, timeout=None)     # type: ignore[attr-defined]

    def __aiter__(self):  # noqa: ANN204 - the backend's consumer
        self._pending: list[ShareRecord] = []
        return self

    async def __anext__(self) -> ShareRecord:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            self._pending = await self.apoll(self.max_batch, timeout=self._WAIT_SLICE * 10)  # type: ignore[attr-defined]
            self._pending.reverse()
        return self._pending.pop()

    async def __aenter__(self):  # noqa: ANN204 - the backend's consumer
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()        # type: ignore[attr-defined]


def _scope(topic: str, group: str) -> str:
    return _metakeys.prefix("S", topic, group)


class _Part:
    """One partition's share state, opened in this process."""

    __slots__ = ("p", "part", "region", "handle", "member", "published", "published_at", "renew_at")

    def __init__(self, p: int, part: object, region: MemLease, handle: _core.Region, member: int) -> None:
        self.p = p
        self.part = part
        self.region = region
        self.handle = handle
        self.member = member
        self.published = -1         # the floor last given to the gate
        self.published_at = 0.0
        self.renew_at = 0.0         # monotonic time the region's lease is looked at again


class ShareConsumer(_ShareMember):
    """``mgr.share_consumer(topic, group=..., lock_secs=30, max_deliveries=5, dlq=None)``:
    a member of a share group on every partition of ``topic`` (see the module
    doc). One thread at a time; use one per thread."""

    _WAIT_SLICE = 0.02      # seconds between looks for released and expired records while waiting

    def __init__(self, mgr: "TopicManager", topic: str, group: str = "default", *, lock_secs: float = 30.0,
                 max_deliveries: int = 5, dlq: str | None = None, member: str | None = None,
                 max_batch: int = 1024, gating_ttl: float = 30.0, buf_size: int | None = None) -> None:
        if not (isinstance(mgr, Bus) and mgr.capabilities.shared_memory):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        self._settings(mgr, topic, group, lock_secs, max_deliveries, dlq, member, max_batch, gating_ttl, buf_size)
        self._lock_ns = int(self.lock_secs * 1e9)
        self._t: Topic | None = None
        self._gate_view = gate.GateView()     # the other readers' records, between gate holds
        self._gated = False
        self._parts: list[_Part | None] = []
        self._held: dict[int, dict[int, int]] = {}      # partition -> offset -> the word this member holds
        self._start = 0
        self._buf_size = buf_size
        self._bufs: _core.Buffers | None = None
        self._reader: Reader | None = None
        self._next_look = 0.0     # monotonic time before which an expired partition is not looked up again
        self._bind()

    # ---- binding ----------------------------------------------------------------------
    def _bind(self, now: float | None = None) -> "Topic":
        t = self._t
        if t is not None and t.binding.valid:
            return t
        mgr = self.mgr
        t = mgr.topic(self.topic)
        if not t.binding.valid:
            t = mgr.refresh(self.topic)
        scope = _scope(self.topic, self.group)
        tn = now_ns(now)
        parts: list[_Part | None] = []
        with mgr.fabric.locked():
            self._config(scope)
            for p, part in enumerate(t.partitions):
                parts.append(None if part is None else self._attach(t, scope, p, part, tn))
        old = {sp.p: sp.region.id for sp in self._parts if sp is not None}
        self._t = t
        self._parts = parts
        self._gated = t.config.on_full != "overwrite"
        if self._gated:     # a member gates from the moment it joins
            mono = time.monotonic()
            for sp in parts:
                if sp is not None:
                    self._gate(t, sp, tn, mono)
        self._reader = None
        # locks held in a partition whose state was made again are gone with the old state
        self._held = {p: h for p, h in self._held.items()
                      if p < len(parts) and parts[p] is not None and old.get(p) == parts[p].region.id}
        self._bufs = None
        return t

    def _config(self, scope: str) -> None:
        """The group's settings, written by its first member; a member with other
        settings is refused (they are the group's, not the member's). Needs the lock."""
        fab = self.mgr.fabric
        key = scope + "cfg"
        raw = fab.meta_get(key)
        if raw is None:
            fab.meta_put(key, _CFG.pack(self._lock_ns, self.max_deliveries, 0, 0) +
                         _metakeys.pack_names(self.topic, self.group))
            return
        try:
            lock_ns, maxd, _, _ = _CFG.unpack_from(raw)
        except struct.error:
            raise CorruptFabric(f"share group record {key!r} is damaged") from None
        if lock_ns != self._lock_ns or maxd != self.max_deliveries:
            raise self._other_settings(lock_ns / 1e9, maxd)

    def _count_expired(self, scope: str, n: int) -> None:
        fab = self.mgr.fabric
        key = scope + "cfg"
        raw = fab.meta_get(key)
        if raw is None or n <= 0:
            return
        lock_ns, maxd, pad, expired = _CFG.unpack_from(raw)
        fab.meta_put(key, _CFG.pack(lock_ns, maxd, pad, expired + n) + raw[_CFG.size:])

    @staticmethod
    def _region_expiry(t: "Topic", part: object, tn: int) -> int:
        """A region outlives its partition by the topic's retention (so what was
        unfinished can be counted when the partition is made again), and lives
        at least that long past now."""
        return max(int(part.lease.info().expires_ns), tn) + int(t.config.retention_secs * 1e9)

    def _attach(self, t: "Topic", scope: str, p: int, part: object, tn: int) -> _Part:
        """Open (or make) partition p's share state. Needs the fabric lock."""
        fab = self.mgr.fabric
        key = f"{scope}p/{p}"
        raw = fab.meta_get(key)
        if raw is not None and len(raw) == _REF.size:
            idx, _, lid, ring_lid = _REF.unpack(raw)
            if ring_lid == part.lease.id:
                prev = self._parts[p] if p < len(self._parts) else None
                if prev is not None and prev.region.id == lid and prev.part.lease.id == ring_lid:
                    return prev         # the same state: this member keeps its token and its locks
                h, err = _core.Region.open(fab, idx, lid, part, self.max_batch)
                if h is not None:
                    return self._joined(p, part, MemLease(fab, idx, lid), h)
                if err not in (codes.EXPIRED, codes.NOTFOUND):
                    raise_for(err, f"share state of {self.topic!r} partition {p}")
            else:
                # the partition was made again: what the group had not finished expired with it
                old = MemLease(fab, idx, lid)
                try:
                    self._count_expired(scope, _unfinished(old))
                    old.release()
                except (LeaseExpired, NotFound, struct.error, ValueError):
                    pass
        index, lid = _lease.acquire(fab, _core.region_size(part.capacity), self._region_expiry(t, part, tn), 0, tn)
        start = part.state().earliest
        rc = _core.init(fab, index, lid, part, self._lock_ns, self.max_deliveries, start, tn)
        if rc < 0:
            _lease.release(fab, index, lid)
            raise_for(rc, f"share state of {self.topic!r} partition {p}")
        fab.meta_put(key, _REF.pack(index, 0, lid, part.lease.id))
        h, err = _core.Region.open(fab, index, lid, part, self.max_batch)
        if h is None:
            raise_for(err, f"share state of {self.topic!r} partition {p}")
        return self._joined(p, part, MemLease(fab, index, lid), h)

    def _joined(self, p: int, part: object, region: MemLease, h: _core.Region) -> _Part:
        token = h.join(os.getpid(), self.member.encode())
        return _Part(p, part, region, h, token)

    def _buffers(self) -> _core.Buffers:
        if self._bufs is None:
            t = self._t
            stride = t.config.partition_stride if t is not None else 512
            size = self._buf_size or max(1 << 16, min(64 << 20, self.max_batch * stride))
            self._bufs = _core.Buffers(self.max_batch, size)
        return self._bufs

    # ---- polling ----------------------------------------------------------------------
    def poll(self, max_records: int = 100, timeout: float | None = 0.0, *,
             now: float | None = None) -> list[ShareRecord]:
        """Lock up to ``max_records`` records to this member and return them.
        ``timeout``: 0 returns at once, a number of seconds waits that long for
        one, None waits until there is one. ``now`` (seconds) is for tests."""
        n, deadline = self._poll_deadline(max_records, timeout)
        while True:
            out = self._poll_once(n, now)
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out
            left = self._WAIT_SLICE if deadline is None else min(self._WAIT_SLICE, deadline - time.monotonic())
            if left > 0:
                self._wait(left)

    def _poll_once(self, n: int, now: float | None) -> list[ShareRecord]:
        t = self._bind(now)
        bufs = self._buffers()
        views, size = bufs.views, bufs.size
        tn = now_ns(now)
        out: list[ShareRecord] = []
        runs: list[tuple] = []      # per partition: (partition, first, end, offsets, words) of `out`
        expired = False
        parts = self._parts
        k = len(parts)
        for i in range(k):
            sp = parts[(self._start + i) % k]
            if sp is None:
                continue
            got = sp.handle.acquire(sp.member, n - len(out), tn, bufs)
            if got < 0:
                if got == codes.EXPIRED:
                    expired = True  # the partition (or its state) expired: another process may restart it
                    continue
                raise_for(got, f"share poll of {self.topic!r} partition {sp.p}")
            self._maintain(t, sp, tn)
            if got == 0:
                continue
            p = sp.p
            region = sp.region.id
            hp = self._held.get(p)
            if hp is None:
                hp = self._held[p] = {}
            start = len(out)
            built = _share_records(views[0], views[1], views[2], size, got, p, region, ShareRecord, out, hp,
                                   self.topic)
            if built is not None:       # no row at the delivery limit: records, held and lists built in C
                offs, words, packed = built
                runs.append((p, start, len(out), offs, words, packed))
                if len(out) >= n:
                    break
                continue
            # a row at the delivery limit: the crossing left the batch to be built here
            pairs = _crossing.decode(bufs.meta_bytes(got), bufs.buf_bytes(), [p], self.topic)
            r = bufs.row_array(got)
            offs, words, dls, counts = (r["offset"].tolist(), r["word"].tolist(), r["deadline"].tolist(),
                                        r["count"].tolist())
            flags = r["flags"].tolist()
            if any(flags):
                dead = {j for j in range(got) if flags[j] & _core.DEAD}
                lasts = r["last"].tolist()
                for j in sorted(dead):
                    self._dead_letter(sp, pairs[j][1], words[j], counts[j], lasts[j], tn, "archive")
                keep = [j for j in range(got) if j not in dead]
                pairs, offs, counts, dls, words = ([seq[j] for j in keep] for seq in (pairs, offs, counts, dls, words))
            # collections would run several times over a batch of records that only hold
            # bytes and ints; the decode in C holds them off the same way
            gc_was = gc.isenabled()
            gc.disable()
            try:
                out += [_make(ShareRecord, (p, o, m[1], m[2], m[3], m[4], c, d, w, region, m[5]))
                        for (_, m), o, c, d, w in zip(pairs, offs, counts, dls, words)]
            finally:
                if gc_was:
                    gc.enable()
            hp.update(zip(offs, words))
            runs.append((p, len(out) - len(offs), len(out), offs, words, None))
            if len(out) >= n:
                break
        self._start = (self._start + 1) % max(1, k)
        if expired and not out and time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + _REFRESH_GAP
            self.mgr.refresh(self.topic)        # the next poll binds to what the directory says now
        batch = ShareBatch(out)
        batch._runs = runs
        batch._snap = tuple(out)
        return batch

    def _gate(self, t: "Topic", sp: _Part, tn: int, mono: float) -> None:
        """Hold the topic's gate at the group's floor: again once it moved a quarter
        of the ring, or a third of gating_ttl passed (a lower gate only holds
        producers back a little more; a lapsed one stops gating)."""
        floor = sp.handle.floor()
        if floor - sp.published >= max(1, t.config.partition_capacity // 4) or \
                mono - sp.published_at >= self.gating_ttl / 3:
            self._publish_gate(sp.p, floor, tn)
            sp.published, sp.published_at = floor, mono

    def _maintain(self, t: "Topic", sp: _Part, tn: int) -> None:
        """Keep the gate and the state's lease up to date (cheap unless due)."""
        mono = time.monotonic()
        if t.config.on_full != "overwrite":
            self._gate(t, sp, tn, mono)
        if mono >= sp.renew_at:
            ttl = t.config.retention_secs
            sp.renew_at = mono + min(ttl / 4, 60.0)
            try:
                want = self._region_expiry(t, sp.part, tn)
                if want > sp.region.info().expires_ns:
                    with self.mgr.fabric.locked():
                        _lease.renew(self.mgr.fabric, sp.region.index, sp.region.id, want, tn)
            except (LeaseExpired, NotFound):
                pass

    def _publish_gate(self, p: int, floor: int, tn: int) -> None:
        gate.hold(self.mgr, self._t, gate.share_reader(self.group), gate.SHARE, {p: floor},
                  int(self.gating_ttl * 1e9), now=tn / 1e9, view=self._gate_view)

    def _wait(self, secs: float) -> None:
        """Sleep until a partition has records past the group's frontier, or ``secs``
        pass (released records and locks that run out are looked for after it)."""
        t = self._t
        if t is None:
            time.sleep(secs)
            return
        if self._reader is None:
            self._reader = Reader(self.mgr.fabric, list(t.partitions), max_batch=1)
        for sp in self._parts:
            st = sp.handle.try_state(0) if sp is not None else None
            if st is not None:
                self._reader.seek(sp.p, st.next)
        self._reader.wait(secs)

    # ---- settling ---------------------------------------------------------------------
    def ack(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Accept records: never delivered again. Returns how many."""
        return self._settle("ack", records, now)

    def release(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Make records available again at once (their delivery count stays); a
        record at the delivery limit goes to the DLQ instead."""
        recs = self._records(records)
        last = [r for r in recs if r[6] >= self.max_deliveries]
        if not last:
            return self._settle("release", recs, now)
        rest = [r for r in recs if r[6] < self.max_deliveries]
        return self._both(lambda: self._dead_letter_records(last, now),
                          lambda: self._settle("release", rest, now), "release")

    def _both(self, first, second, op: str) -> int:  # noqa: ANN001
        """Run two settles; one LockLost for the records either refused."""
        done, refused = 0, []
        for call in (first, second):
            try:
                done += call()
            except LockLost as e:
                refused += e.records
        if refused:
            raise self._lock_lost(refused, op)
        return done

    def reject(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Never deliver these records again; copy them to the DLQ first if one is set."""
        recs = self._records(records)
        if self._dlq_producer is not None:
            return self._dead_letter_records(recs, now, op="reject")
        return self._settle("reject", recs, now)

    def renew(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Extend the locks of records: they run for ``lock_secs`` from now."""
        return self._settle("renew", records, now)

    def held(self) -> list[tuple[int, int]]:
        """(partition, offset) of the records this consumer holds (as far as it knows:
        a lock that ran out shows here until a settle call finds out)."""
        return sorted((p, o) for p, h in self._held.items() for o in h)

    def _held_between(self, p: int, a: int, b: int) -> list[ShareRecord]:
        hp = self._held.get(p, {})
        sp = self._parts[p] if p < len(self._parts) else None
        region = sp.region.id if sp is not None else 0
        return [_make(ShareRecord, (p, off, None, b"", 0, (), 0, 0, hp[off], region, self.topic))
                for off in sorted(o for o in hp if a <= o < b)]

    def _settle(self, op: str, records: object, now: float | None) -> int:
        recs = self._records(records)
        if not recs:
            return 0
        self._bind(now)
        tn = now_ns(now)
        parts = self._parts
        done = 0
        refused: list[ShareRecord] = []
        code = _OPS[op]
        for p, rs, offl, wl, packed in _groups(recs):
            sp = parts[p] if 0 <= p < len(parts) else None
            if sp is None:
                if not 0 <= p < len(parts):
                    raise InvalidArgument(f"topic {self.topic!r} has partitions 0..{len(parts) - 1}, not {p}")
                refused += rs
                continue
            region = sp.region.id
            if set(map(_REGION, rs)) != {region}:   # polled from state that expired with its partition
                refused += [r for r in rs if r[9] != region]
                rs = [r for r in rs if r[9] == region]
                if not rs:
                    continue
                offl, wl = list(map(_OFF, rs)), list(map(_WORD, rs))
                packed = None
            k = len(rs)
            if k == 1:      # one record: preallocated arrays, no numpy
                rc, ok = sp.handle.settle_one(code, offl[0], wl[0], tn)
            elif packed is not None:    # a batch as polled: its arrays came with it
                rc, ok = sp.handle.settle_packed(code, packed, k, tn)
            else:
                rc, ok = sp.handle.settle(code, np.array(offl, dtype=np.uint64), np.array(wl, dtype=np.uint64), tn)
            if rc == codes.EXPIRED:
                refused += rs
                continue
            check(rc, f"share {op} on {self.topic!r} partition {p}")
            done += rc
            if self._gated and op != "renew":
                self._gate(self._t, sp, tn, time.monotonic())
            hp = self._held.get(p, {})
            if rc == k:     # each was the current acquisition: whatever is held for its offset is it
                if op != "renew":
                    deque(map(hp.pop, offl, repeat(None)), maxlen=0)
                continue
            for r, o, w, good in zip(rs, offl, wl, list(ok[0:k])):
                if good and op == "renew":
                    continue
                if hp.get(o) == w:      # a stale record leaves a newer acquisition alone
                    del hp[o]
                if not good:
                    refused.append(r)
        if refused:
            raise self._lock_lost(refused, op)
        return done

    # ---- dead letters -----------------------------------------------------------------
    def _dead_letter_records(self, recs: list[ShareRecord], now: float | None, op: str = "archive") -> int:
        if not recs:
            return 0
        refused: list[ShareRecord] = []
        try:
            self._settle("renew", recs, now)     # the lock must cover the copy: no copy of a lost one
        except LockLost as e:
            refused = list(e.records)
            lost = {(r[0], r[1], r[8]) for r in refused}
            recs = [r for r in recs if (r[0], r[1], r[8]) not in lost]
        t = self._bind(now)
        tn = now_ns(now)
        done = 0
        for r in recs:
            sp = self._parts[r[0]] if 0 <= r[0] < t.n else None
            if sp is None:
                refused.append(r)
                continue
            if self._dead_letter(sp, r, r[8], r[6], sp.member, tn, op):
                done += 1
            else:
                refused.append(r)
        if refused:
            raise self._lock_lost(refused, op)
        return done

    def _dead_letter(self, sp: _Part, rec: object, word: int, count: int, last: int, tn: int,
                     op: str) -> bool:
        """Copy a record to the DLQ (if one is set), then archive it (``op``). False
        if the lock was lost before the archive."""
        p = sp.p
        if isinstance(rec, ShareRecord):
            off, key, value, headers = rec[1], rec[2], rec[3], rec[5]
            if not value and not key and rec[4] == 0:     # a range call's placeholder: read the record
                m = sp.part.read(off, 1)
                key, value, headers = (m[0].key, m[0].value, m[0].headers) if m and m[0].offset == off \
                    else (None, b"", ())
        else:
            off, key, value, headers = rec[0], rec[1], rec[2], rec[4]
        if self._dlq_producer is not None:
            last_name = (sp.handle.member_name(last) or str(last).encode()) if last else b""
            self._send_dead_letter(p, off, key, value, headers, count, last_name)
        rc, _ = sp.handle.settle_one(_OPS[op], off, word, tn)
        if rc < 0 and rc != codes.EXPIRED:
            raise_for(rc, f"share {op} on {self.topic!r} partition {p}")
        hp = self._held.get(p, {})
        if hp.get(off) == word:
            del hp[off]
        return rc == 1

    # ---- observability ------------------------------------------------------------------
    def describe(self, now: float | None = None) -> list[ShareState]:
        """Per partition: the window, records in flight and available, and the counters."""
        self._bind(now)
        return describe_parts(self._parts, now)

    def expired(self) -> int:
        """Records the group had not finished when their partition expired (all partitions)."""
        return expired_count(self.mgr, self.topic, self.group)

    # ---- life ---------------------------------------------------------------------------
    def close(self, *, release: bool = True) -> None:
        """Leave the group: release the records this consumer still holds (with
        ``release=False`` their locks run out instead)."""
        if self._closed:
            return
        if release:
            for p in list(self._held):
                try:
                    self._settle("release", self._held_between(p, 0, 1 << 64), None)
                except (LockLost, LeaseExpired):
                    pass
        self._held.clear()
        self._closed = True
        self._parts = []
        self._t = None

    # ---- asyncio ------------------------------------------------------------------------
    async def apoll(self, max_records: int = 100, timeout: float | None = 0.0) -> list[ShareRecord]:
        """:meth:`poll` for asyncio: a wait runs in a worker thread, the loop stays free."""
        out = self.poll(max_records, 0.0)
        if out or timeout == 0:
            return out
        return await asyncio.to_thread(self.poll, max_records, timeout)

    async def aack(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return self.ack(records)

    async def arelease(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return self.release(records)

    async def areject(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return self.reject(records)

    async def arenew(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return self.renew(records)


def _unfinished(region: MemLease) -> int:
    """Records a region's group had handed out and not finished (acked or
    archived): read from the region as bytes, every field checked."""
    head = region.read(0, 136)
    cap = struct.unpack_from("<I", head, 24)[0]
    fl, nx = struct.unpack_from("<Q", head, 64)[0], struct.unpack_from("<Q", head, 128)[0]
    if not 0 < cap <= (1 << 30) or nx < fl or nx - fl > cap:
        raise ValueError("share state header out of range")
    if nx == fl:
        return 0
    words = np.frombuffer(region.read(_core.ENTRIES_OFF, cap * 16), dtype="<u8")[0::2]
    offs = np.arange(fl, nx, dtype=np.uint64)
    a = words[(offs % np.uint64(cap)).astype(np.int64)]
    laps = (offs // np.uint64(cap) + np.uint64(1)) & np.uint64((1 << 38) - 1)
    done = ((a >> np.uint64(26)) == laps) & ((a & np.uint64(3)) >= np.uint64(_core.ACKED))
    return int((~done).sum())


def _groups(recs: list[ShareRecord]) -> list[tuple[int, list[ShareRecord], list[int], list[int], bytes | None]]:
    """(partition, its records, their offsets, their lock words, the offsets then the
    words as native uint64 when the poll packed them) per partition."""
    if type(recs) is ShareBatch and recs._intact():
        return [(p, recs[a:b], offs, words, packed) for p, a, b, offs, words, packed in recs._runs]
    ps = list(map(_P, recs))
    if ps.count(ps[0]) == len(ps):
        by_part: dict[int, list[ShareRecord]] = {ps[0]: recs}
    else:
        by_part = {}
        for q, r in zip(ps, recs):
            by_part.setdefault(q, []).append(r)
    return [(p, rs, list(map(_OFF, rs)), list(map(_WORD, rs)), None) for p, rs in by_part.items()]


def describe_parts(parts: Sequence[_Part | None], now: float | None = None) -> list[ShareState]:
    tn = now_ns(now)
    out = []
    for sp in parts:
        if sp is None:
            continue
        st = sp.handle.state(tn, f"share state of partition {sp.p}")
        age = (tn - st.oldest_lock_ns) / 1e9 if st.oldest_lock_ns else 0.0
        out.append(ShareState(sp.p, st.floor, st.next, st.tail, st.in_flight, st.available, st.delivered,
                              st.redelivered, st.acked, st.released, st.rejected, st.dead, st.lost,
                              st.expired_locks, max(0.0, age), st.members))
    return out


def groups(mgr: "TopicManager", topic: str) -> list[str]:
    """The share groups of ``topic`` on this bus."""
    out = []
    for key, raw in mgr.fabric.meta_items("S/"):
        if not key.endswith("/cfg"):
            continue
        try:
            (t, g), _ = _metakeys.unpack_names(raw[_CFG.size:], 2)
        except ValueError:
            continue
        if t == topic:
            out.append(g)
    return sorted(out)


def expired_count(mgr: "TopicManager", topic: str, group: str) -> int:
    raw = mgr.fabric.meta_get(_scope(topic, group) + "cfg")
    if raw is None or len(raw) < _CFG.size:
        return 0
    return _CFG.unpack_from(raw)[3]


def describe(mgr: "TopicManager", topic: str, group: str, now: float | None = None) -> list[ShareState]:
    """A share group's state per partition, without joining it."""
    if not (isinstance(mgr, Bus) and mgr.capabilities.shared_memory):
        raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
    t = mgr.topic(topic)
    scope = _scope(topic, group)
    fab = mgr.fabric
    parts: list[_Part | None] = []
    with fab.locked():
        if fab.meta_get(scope + "cfg") is None:
            raise NotFound(f"no share group {group!r} on {topic!r}")
        for p, part in enumerate(t.partitions):
            raw = fab.meta_get(f"{scope}p/{p}")
            if part is None or raw is None or len(raw) != _REF.size:
                continue
            idx, _, lid, ring_lid = _REF.unpack(raw)
            if ring_lid != part.lease.id:
                continue
            h, _ = _core.Region.open(fab, idx, lid, part)
            if h is not None:
                parts.append(_Part(p, part, MemLease(fab, idx, lid), h, 0))
    return describe_parts(parts, now)
