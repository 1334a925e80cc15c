"""Topics: a named set of partition rings whose leases are the retention.

The topic directory lives in the fabric's metadata table, so every process
attached to a named bus sees the same topics:

* ``t/<topic>``      -> config (partitions, capacity, stride, retention, incarnation)
* ``p/<topic>/<i>``  -> (lease index, lease id) of partition i

Retention is the lease TTL: a :class:`~grafos.leasekit.RenewalManager`
renews the leases; stop renewing and the partitions expire, read as empty,
and their memory returns to the fabric. :meth:`TopicManager.restart` gives
an expired topic fresh leases (offsets start again at 0).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .. import _validate
from .._check import raise_for
from .._clock import now_ns, now_s
from .._core import sender
from .._crossing import Binding
from ..errors import AlreadyExists, FabricFull, InvalidArgument, LeaseExpired, NotFound, NotPortable
from ..fabric import DEFAULT_SIZE, Fabric, MemLease
from ..partition import Partition, PartitionState, region_size
from . import gate
from .shm_read import ShmReadSession
from .shm_send import ShmSendSession
from .model import (DEFAULT_CAPACITY, DEFAULT_PARTITIONS, DEFAULT_RETENTION_SECS, DEFAULT_STRIDE,  # noqa: F401
                    MAX_PARTITIONS, MAX_TOPIC_NAME, ON_FULL, SHARED_MEMORY, Bus, RemoteManager)
# importable from here too (the `X as X` form tells type checkers they are exported)
from .model import (Capabilities as Capabilities, PartitionInfo as PartitionInfo, TopicConfig as TopicConfig,
                    TopicDescription as TopicDescription)

if TYPE_CHECKING:
    from ..jetstream.manager import JetStreamManager
    from .model import OffsetStore
    from .consumer import Consumer
    from .producer import Producer
    from .share import ShareConsumer

_CONFIG = struct.Struct("<IIIIdqQ")    # partitions, capacity, stride, flags, retention, created_ns, incarnation
_FLAGS_ON_FULL = 0x3                   # flags bits 0-1: the on_full policy (grafos._core.layout.FULL_*)
_FLAGS_NO_CRC = 0x8                    # flags bit 3: slots carry no checksum (clear: they do)

_ON_FULL_NAMES = {v: k for k, v in ON_FULL.items()}
_PREF = struct.Struct("<IIQ")          # lease index, pad, lease id
#: config flag: the topic is being made. Creation runs under the fabric's lock,
#: so anyone who reads a pending record (under the lock) found a creator that died.
_PENDING = 0x4                         # flags bit 2: a create still under way
_TAG_SHIFT = 16                        # a partition lease's owner_tag: topic tag << 16 | partition

#: fault injection for tests: the creation step at which to _exit (None: never)
_FAULT_AT: str | None = None


def _fault(point: str) -> None:
    if _FAULT_AT == point:
        os._exit(77)


def _topic_tag(name: str, incarnation: int) -> int:
    """48 bits naming one incarnation of a topic: the high bits of its partitions'
    owner tags, so leases of a create that died half-way can be found again."""
    d = hashlib.blake2b(name.encode() + struct.pack("<Q", incarnation & ((1 << 64) - 1)), digest_size=6)
    return int.from_bytes(d.digest(), "little")


def partition_incarnation(topic_incarnation: int, lease_id: int) -> int:
    """Which life of a partition an offset belongs to: its lease id (never reused
    within a fabric) together with its topic's incarnation (a creation time, so
    a topic made again in a new fabric differs too). A nonzero 48-bit number."""
    d = hashlib.blake2b(struct.pack("<QQ", topic_incarnation & ((1 << 64) - 1), lease_id & ((1 << 64) - 1)),
                        digest_size=6).digest()
    return int.from_bytes(d, "little") or 1


class Topic:
    """An opened topic: its partitions and the C array the producer hot path uses.

    ``binding`` stays valid while this is the manager's current view of the
    topic; producers and consumers bound to it re-bind once it is invalidated
    (the topic was re-read, restarted, deleted, or the manager closed)."""

    def __init__(self, name: str, config: TopicConfig, incarnation: int,
                 partitions: list[Partition | None], lease_ids: list[int] | None = None) -> None:
        self.name = name
        self.config = config
        self.incarnation = incarnation
        self.partitions = partitions
        self.n = len(partitions)
        #: the lease id each partition's directory entry names (also for reclaimed ones)
        self.lease_ids = list(lease_ids) if lease_ids is not None else \
            [p.lease.id if p is not None else 0 for p in partitions]
        self.rings = sender.ring_table(partitions)
        self.binding = Binding()

    def partition(self, i: int) -> Partition:
        if isinstance(i, bool) or not isinstance(i, int):
            raise _validate.InvalidType(f"partition must be an int, not {type(i).__name__}")
        if not 0 <= i < self.n:
            raise InvalidArgument(f"topic {self.name!r} has partitions 0..{self.n - 1}, not {i}")
        p = self.partitions[i]
        if p is None:
            raise LeaseExpired(f"topic {self.name!r} partition {i} has expired; restart the topic")
        return p

    def partition_incarnation(self, i: int) -> int:
        """The incarnation of partition ``i`` as this handle knows it (see
        :func:`partition_incarnation`); offsets committed in one incarnation
        mean nothing in the next."""
        return partition_incarnation(self.incarnation, self.lease_ids[i])


def _set_on_full(p: Partition, config: TopicConfig) -> None:
    """Write the topic's policy into the ring header too, for tools that read rings."""
    rc = p.set_on_full(ON_FULL[config.on_full])
    if rc < 0:
        raise_for(rc, "on_full")


def _key(kind: str, name: str, i: int | None = None) -> str:
    return f"{kind}/{name}" if i is None else f"{kind}/{name}/{i}"


def _pending(raw: bytes) -> bool:
    """A directory record of a create that never finished (damaged ones are not:
    reading them reports the damage)."""
    return len(raw) == _CONFIG.size and _CONFIG.unpack(raw)[3] & _PENDING != 0


def _lease_of_ref(fab: Fabric, ref: bytes) -> MemLease:
    """The lease a partition's directory ref names. A damaged ref (not our size)
    names no lease: (0, 0), which the fabric refuses as NotFound."""
    idx, _, lid = _PREF.unpack(ref) if len(ref) == _PREF.size else (0, 0, 0)
    return MemLease(fab, idx, lid)


#: the base of every bus (the name the handles of :mod:`grafos.mq.bound` use)
BusHandles = Bus


def _check_room(fab: Fabric, name: str, config: TopicConfig) -> None:
    """Refuse a topic the bus has no room for, naming the topic, its size and the room."""
    each = region_size(config.partition_capacity, config.partition_stride)
    need = each * config.num_partitions
    info = fab.info()
    room = max(0, info.data_size - info.bytes_leased)
    if need > room:
        raise FabricFull(
            f"the bus is too full for topic {name!r}: it needs {need} bytes ({config.num_partitions} "
            f"partition(s) of {each}: {config.partition_capacity} slots x {config.partition_stride} B), the bus "
            f"has {room} bytes free of {info.data_size}; open the bus with a larger size= or give the topic "
            "fewer or smaller slots")


class TopicManager(Bus):
    """The bus. ``TopicManager()`` is in-process on its own fabric (no server,
    nothing to clean up); :meth:`open` creates or attaches to a named or
    file-backed bus shared with other processes."""

    def __init__(self, fabric: Fabric | None = None, *, size: int = DEFAULT_SIZE) -> None:
        if fabric is not None and not isinstance(fabric, Fabric):
            raise _validate.InvalidType(f"fabric must be a Fabric, not {type(fabric).__name__}")
        self.fabric = fabric if fabric is not None else Fabric(size)
        self._topics: dict[str, Topic] = {}
        self._lock = threading.RLock()

    #: what this backend can do (see :class:`Capabilities`)
    capabilities = SHARED_MEMORY

    def producer_session(self, producer: Producer) -> ShmSendSession:
        return ShmSendSession(self)

    def consumer_session(self, consumer: Consumer) -> ShmReadSession:
        return ShmReadSession(self, consumer)

    def group_state(self, group: str, topic: str) -> Any:
        """The records of consumer group ``group`` on ``topic``, in the fabric."""
        from .group import _FabricState
        return _FabricState(self.fabric, group, topic)

    def dlq_counts(self, source: str, dlq: str) -> Any:
        """The nack counts of the dead-letter route ``source`` -> ``dlq``, in the fabric."""
        from .dlq import _FabricCounts
        return _FabricCounts(self, source, dlq)

    def list_groups(self) -> list:
        """Every fabric-backed group on the bus (:func:`grafos.mq.group.list_groups`)."""
        from .group import fabric_groups
        return fabric_groups(self.fabric)

    @classmethod
    def open(cls, name: str | None = None, *, path: str | None = None, size: int | None = None,
             **kw) -> "TopicManager":
        """Create or attach to a named bus (``/dev/shm``) or one in a file.
        ``size`` in bytes is needed only to create it (default 256 MiB, sparse)."""
        if size is None and name is not None and kw.get("create", True):
            size = DEFAULT_SIZE    # used only if it has to be made (also again, after a dead creator)
        fab = Fabric.open(name, path=path, size=size, **kw)
        mgr = cls(fab)
        mgr.fabric.reap()       # lazy reclaim: attaching is one of the moments we reap
        return mgr

    #: ``TopicManager.connect("nats://127.0.0.1:4222")``: the same bus on a server,
    #: :func:`grafos.connect` for server URLs (set by :mod:`grafos._connect`, the layer
    #: above both backends)
    connect: ClassVar[Callable[..., JetStreamManager]]

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove a named bus from the system (attached processes keep their mapping)."""
        return Fabric.unlink(name)

    def __reduce__(self):  # noqa: ANN204 - a manager crosses processes as its bus's name or path
        fab = self.fabric
        if fab.kind == "in-process":
            raise NotPortable(
                "an in-process TopicManager (TopicManager()) lives in this process's memory and cannot be "
                "pickled into another process: create the bus with TopicManager.open(name) (shared memory) "
                "or TopicManager.open(path=...) (a file) and pass that")
        return (TopicManager, (fab,))     # the fabric pickles to its name or path

    def close(self) -> None:
        # Partition handles are freed with their last reference (producers and
        # readers may still hold them); the mapping lives until then.
        with self._lock:
            for t in self._topics.values():
                t.binding.invalidate()
            self._topics.clear()
        self.fabric.close()

    def __repr__(self) -> str:
        f = self.fabric
        where = f" {f.name or f.path!r}" if f.name or f.path else ""
        return f"<TopicManager {f.kind}{where}{' closed' if f.closed else ''}>"

    def __enter__(self) -> "TopicManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- directory ------------------------------------------------------------
    def create(self, name: str, config: TopicConfig | None = None, *, now: float | None = None) -> Topic:
        """Create a topic; a duplicate name raises AlreadyExists."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        config = TopicConfig() if config is None else config
        if not isinstance(config, TopicConfig):
            raise _validate.InvalidType(f"config must be a TopicConfig, not {type(config).__name__}")
        fab = self.fabric
        if config.checksum is None:
            config = dataclasses.replace(config, checksum=fab.kind != "in-process")
        with self._lock, fab.locked():
            raw = fab.meta_get(_key("t", name))
            if raw is not None:
                if not _pending(raw):
                    raise AlreadyExists(f"topic {name!r} already exists")
                self._undo_create(name, raw)      # its creator died half-way
            fab.reap(now)
            incarnation = time.time_ns()

            def record(flags: int) -> bytes:
                return _CONFIG.pack(config.num_partitions, config.partition_capacity, config.partition_stride,
                                    flags | ON_FULL[config.on_full] | (0 if config.checksum else _FLAGS_NO_CRC),
                                    config.retention_secs, now_ns(now),
                                    incarnation)
            fab.meta_put(_key("t", name), record(_PENDING))
            _fault("pending")
            try:
                refs = self._alloc_partitions(name, config, now, _topic_tag(name, incarnation))
            except BaseException:
                fab.meta_del(_key("t", name))
                raise
            _fault("refs")
            fab.meta_put(_key("t", name), record(0))
            topic = Topic(name, config, incarnation, refs)
            self._cache(name, topic)
            return topic

    def _alloc_partitions(self, name: str, config: TopicConfig, now: float | None,
                          tag: int) -> list[Partition | None]:
        """Acquire and format one lease per partition; all or nothing."""
        fab = self.fabric
        made: list[Partition] = []
        _check_room(fab, name, config)
        try:
            for i in range(config.num_partitions):
                p = Partition.create(fab, config.partition_capacity, config.partition_stride,
                                     ttl=config.retention_secs, owner_tag=tag << _TAG_SHIFT | i, now=now,
                                     checksum=bool(config.checksum))
                made.append(p)
                _set_on_full(p, config)
                _fault("lease")
            for i, p in enumerate(made):
                fab.meta_put(_key("p", name, i), _PREF.pack(p.lease.index, 0, p.lease.id))
        except BaseException:
            for i, p in enumerate(made):
                fab.meta_del(_key("p", name, i))
                try:
                    p.lease.release()
                except Exception:  # noqa: BLE001 - best effort rollback
                    pass
            raise
        return list(made)

    def _undo_create(self, name: str, raw: bytes) -> None:
        """Remove what a creator that died half-way through :meth:`create` left:
        the leases it took (found by their owner tag, referenced or not), their
        directory entries and the pending record. Under the fabric lock."""
        fab = self.fabric
        try:
            n, *_rest, incarnation = _CONFIG.unpack(raw)
        except struct.error:
            n, incarnation = MAX_PARTITIONS, None
        tag = _topic_tag(name, incarnation) if incarnation is not None else None
        for lease in fab.leases():
            try:
                if tag is not None and lease.info().owner_tag >> _TAG_SHIFT == tag:
                    lease.release()
            except (LeaseExpired, NotFound):
                pass
        for i in range(min(n, MAX_PARTITIONS)):
            fab.meta_del(_key("p", name, i))
        fab.meta_del(_key("t", name))
        self._uncache(name)

    def delete(self, name: str) -> None:
        """Delete a topic and give its memory back now."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        fab = self.fabric
        with self._lock, fab.locked():
            cfg = self._config(self._record(name))
            for i in range(cfg.num_partitions):
                ref = fab.meta_get(_key("p", name, i))
                if ref is not None:
                    lease = _lease_of_ref(fab, ref)
                    try:
                        lease.release()
                    except (LeaseExpired, NotFound):
                        pass
                    fab.meta_del(_key("p", name, i))
            fab.meta_del(_key("t", name))
            gate.forget(self, name)
            self._uncache(name)

    def restart(self, name: str, *, now: float | None = None) -> Topic:
        """Give an expired topic fresh leases (its partitions start again at offset 0).
        Partitions whose lease is still alive keep it."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        fab = self.fabric
        with self._lock, fab.locked():
            raw = self._record(name)
            cfg = self._config(raw)
            tag = _topic_tag(name, _CONFIG.unpack(raw)[6])
            fab.reap(now)
            refs = {}
            for i in range(cfg.num_partitions):
                ref = fab.meta_get(_key("p", name, i))
                if ref is not None:
                    refs[i] = _lease_of_ref(fab, ref)
            self._release_orphans(tag, {lease.id for lease in refs.values()})
            for i in range(cfg.num_partitions):
                alive = i in refs and not refs[i].expired(now)
                if not alive:
                    p = Partition.create(fab, cfg.partition_capacity, cfg.partition_stride,
                                         ttl=cfg.retention_secs, owner_tag=tag << _TAG_SHIFT | i, now=now,
                                         checksum=bool(cfg.checksum))
                    _set_on_full(p, cfg)
                    _fault("restart-lease")
                    fab.meta_put(_key("p", name, i), _PREF.pack(p.lease.index, 0, p.lease.id))
            self._uncache(name)
            return self._load(name, now)

    def _release_orphans(self, tag: int, referenced: set[int]) -> None:
        """Release leases of this topic incarnation that no partition entry names:
        what a restart that died between taking a lease and recording it left."""
        for lease in self.fabric.leases():
            try:
                if lease.id not in referenced and lease.info().owner_tag >> _TAG_SHIFT == tag:
                    lease.release()
            except (LeaseExpired, NotFound):
                pass

    def topics(self) -> list[str]:
        return sorted(k[2:] for k, raw in self.fabric.meta_items("t/") if not _pending(raw))

    def exists(self, name: str) -> bool:
        raw = self.fabric.meta_get(_key("t", _validate.name(name, "topic name", MAX_TOPIC_NAME)))
        return raw is not None and not _pending(raw)

    def _record(self, name: str) -> bytes:
        """The topic's directory record (read under the fabric lock); NotFound if
        there is none (a create that never finished made none)."""
        raw = self.fabric.meta_get(_key("t", name))
        if raw is None or _pending(raw):
            raise NotFound(f"no topic {name!r}")
        return raw

    @staticmethod
    def _config(raw: bytes) -> TopicConfig:
        try:
            n, cap, stride, flags, retention, _created, _inc = _CONFIG.unpack(raw)
            on_full = _ON_FULL_NAMES.get(flags & _FLAGS_ON_FULL)
            if on_full is None or flags & ~(_FLAGS_ON_FULL | _PENDING | _FLAGS_NO_CRC):
                raise ValueError(f"flags {flags:#x}")
            return TopicConfig(n, cap, stride, retention, on_full, not flags & _FLAGS_NO_CRC)
        except (struct.error, ValueError, TypeError) as e:
            from ..errors import CorruptFabric
            raise CorruptFabric(f"topic config in the fabric is damaged: {e}") from None

    def _load(self, name: str, now: float | None = None) -> Topic:
        fab = self.fabric
        with fab.locked():
            raw = self._record(name)
            cfg = self._config(raw)
            incarnation = _CONFIG.unpack(raw)[6]
            parts: list[Partition | None] = []
            lease_ids: list[int] = []
            for i in range(cfg.num_partitions):
                ref = fab.meta_get(_key("p", name, i))
                p = None
                lease_ids.append(0)
                if ref is not None and len(ref) == _PREF.size:
                    idx, _, lid = _PREF.unpack(ref)
                    lease_ids[-1] = lid
                    try:
                        p = Partition(fab, MemLease(fab, idx, lid))
                    except (LeaseExpired, NotFound):
                        p = None   # expired and reclaimed: reads as empty until restart
                parts.append(p)
        t = Topic(name, cfg, incarnation, parts, lease_ids)
        self._cache(name, t)
        return t

    def _cache(self, name: str, t: Topic) -> None:
        """Make ``t`` the current view of the topic; the one it replaces goes stale."""
        old = self._topics.get(name)
        self._topics[name] = t
        if old is not None and old is not t:
            old.binding.invalidate()

    def _uncache(self, name: str) -> None:
        old = self._topics.pop(name, None)
        if old is not None:
            old.binding.invalidate()

    def topic(self, name: str) -> Topic:
        """The opened topic (cached; re-read from the directory by :meth:`refresh`)."""
        self.fabric.check_process()
        t = self._topics.get(name)
        if t is not None:
            return t
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        with self._lock:
            t = self._topics.get(name)
            return t if t is not None else self._load(name)

    def opened(self, name: str) -> Topic | None:
        """The topic if this manager has it open, else None; never reads the
        directory (so it may be called under the fabric lock)."""
        return self._topics.get(name)

    def refresh(self, name: str) -> Topic:
        """Re-read a topic from the directory (after another process restarted or
        deleted it)."""
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        with self._lock:
            self._uncache(name)
            return self._load(name)

    # ---- a consumer that manages its group -----------------------------------------
    def follow_commit(self, topic: str) -> None:
        """Store the gates of ``topic`` after a commit of offsets to the bus's store
        (:func:`grafos.mq.gate.follow_commit`). Needs the fabric lock."""
        gate.follow_commit(self, topic)

    def offset_store(self) -> "OffsetStore":
        """The bus's :class:`~grafos.mq.offset.FabricOffsetStore` (shared by its processes)."""
        from .offset import FabricOffsetStore
        return FabricOffsetStore(self)

    # ---- observability -----------------------------------------------------
    def partition_leases(self, name: str) -> list[MemLease]:
        """The :class:`MemLease` of each partition, in partition order. A partition
        whose lease was reclaimed has none to renew: :class:`LeaseExpired`, naming
        it (restart the topic)."""
        t = self.topic(name)
        return [t.partition(i).lease for i in range(t.n)]

    def describe(self, name: str, now: float | None = None) -> TopicDescription:
        """Per partition: earliest and latest offset, lease TTL remaining, messages
        lost to overwrite (on a gated topic: overwritten before a gating reader on
        record read them); on a gated topic also the gate, the reader that sets
        it, producers blocked now, time blocked and BufferFull raised. Records of
        dead producers are collected on the way (whoever looks)."""
        from . import transaction
        t = self.refresh(name)
        transaction.collect(self, now)
        infos = []
        for i, p in enumerate(t.partitions):
            inc = t.partition_incarnation(i) if t.lease_ids[i] else 0
            if p is None:
                infos.append(PartitionInfo(i, 0, 0, 0, 0, 0.0, False, 0, inc))
                continue
            st: PartitionState = p.state(now)
            ttl = max(0.0, st.expires_at - now_s(now)) if st.alive else 0.0
            infos.append(PartitionInfo(i, st.earliest, st.latest, st.lost, st.abandoned, ttl,
                                       st.alive, p.lease.id, inc))
        if t.config.on_full != "overwrite":
            gate.recompute(self, t, now)    # release readers that went stale before reporting
            for pg in gate.describe(self, t, now):
                info = infos[pg.partition]
                # a gated ring overwrites what its readers have read: lost is what one
                # of them had not read yet (everything overwritten when none is on record)
                lost = max(0, info.earliest - min(r.position for r in pg.readers)) if pg.readers else info.lost
                infos[pg.partition] = dataclasses.replace(
                    info, lost=lost, gate=pg.gate, gate_held_by=pg.held_by, blocked=pg.blocked,
                    blocked_secs=pg.blocked_secs, full_raised=pg.full_raised, gating=tuple(pg.readers))
        return TopicDescription(name, t.config, infos)

    def stats(self, name: str, now: float | None = None) -> dict[str, int]:
        d = self.describe(name, now)
        return {"produced": d.produced, "lost": d.lost,
                "partitions_alive": sum(p.alive for p in d.partitions)}

    def share_consumer(self, topic: str, group: str = "default", *, lock_secs: float = 30.0,
                       max_deliveries: int = 5, dlq: str | None = None, **kw) -> "ShareConsumer":
        """A member of share group ``group`` on every partition of ``topic``: the queue
        model (records locked one by one, acknowledged, redelivered, dead-lettered
        after ``max_deliveries``); see :mod:`grafos.mq.share`."""
        from .share import ShareConsumer
        return ShareConsumer(self, topic, group, lock_secs=lock_secs, max_deliveries=max_deliveries,
                             dlq=dlq, **kw)
