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

import struct
import threading
import time
from dataclasses import dataclass, field

from .. import _validate
from .._clock import now_ns, now_s
from .._native import ffi, lib
from ..errors import AlreadyExists, InvalidArgument, LeaseExpired, NotFound
from ..fabric import DEFAULT_SIZE, Fabric, MemLease
from ..partition import Partition, PartitionState

#: documented defaults of :class:`TopicConfig`
DEFAULT_PARTITIONS = 4
DEFAULT_CAPACITY = 4096
DEFAULT_STRIDE = 512
DEFAULT_RETENTION_SECS = 3600.0
MAX_PARTITIONS = 4096
MAX_TOPIC_NAME = 64

_CONFIG = struct.Struct("<IIIIdqQ")    # partitions, capacity, stride, flags, retention, created_ns, incarnation
_PREF = struct.Struct("<IIQ")          # lease index, pad, lease id


@dataclass(frozen=True)
class TopicConfig:
    """How a topic is laid out. Every partition is a ring of ``partition_capacity``
    slots of ``partition_stride`` bytes (a slot holds a 40-byte header, then key,
    headers and value), kept for ``retention_secs`` unless renewed."""

    num_partitions: int = DEFAULT_PARTITIONS
    partition_capacity: int = DEFAULT_CAPACITY
    partition_stride: int = DEFAULT_STRIDE
    retention_secs: float = DEFAULT_RETENTION_SECS

    def __post_init__(self) -> None:
        _validate.integer(self.num_partitions, "num_partitions", 1, MAX_PARTITIONS)
        _validate.integer(self.partition_capacity, "partition_capacity", 1, 1 << 30)
        _validate.integer(self.partition_stride, "partition_stride", lib.GF_SLOT_HDR_SIZE + 8, 16 << 20)
        if self.partition_stride % 8:
            raise InvalidArgument(f"partition_stride must be a multiple of 8, got {self.partition_stride}")
        _validate.number(self.retention_secs, "retention_secs", 0, lo_open=True)

    @property
    def max_message_bytes(self) -> int:
        """Room for key + encoded headers + value in one slot."""
        return self.partition_stride - lib.GF_SLOT_HDR_SIZE


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    earliest: int
    latest: int
    lost: int                 #: messages lost to overwrite
    abandoned: int            #: slots skipped after a writer died mid-append
    ttl_remaining: float      #: seconds until the lease expires (0 when expired)
    alive: bool
    lease_id: int


@dataclass(frozen=True)
class TopicDescription:
    name: str
    config: TopicConfig
    partitions: list[PartitionInfo] = field(default_factory=list)

    @property
    def produced(self) -> int:
        """Messages appended over the topic's life (since its last restart)."""
        return sum(p.latest for p in self.partitions)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.partitions)


class Topic:
    """An opened topic: its partitions and the C array the producer hot path uses."""

    def __init__(self, name: str, config: TopicConfig, incarnation: int,
                 partitions: list[Partition | None]) -> None:
        self.name = name
        self.config = config
        self.incarnation = incarnation
        self.partitions = partitions
        self.n = len(partitions)
        self.rings = ffi.new("gf_ring *[]", self.n)
        for i, p in enumerate(partitions):
            if p is not None:
                self.rings[i] = p.handle

    def partition(self, i: int) -> Partition:
        if isinstance(i, bool) or not isinstance(i, int):
            raise _validate.InvalidType(f"partition must be an int, not {type(i).__name__}")
        if not 0 <= i < self.n:
            raise InvalidArgument(f"topic {self.name!r} has partitions 0..{self.n - 1}, not {i}")
        p = self.partitions[i]
        if p is None:
            raise LeaseExpired(f"topic {self.name!r} partition {i} has expired; restart the topic")
        return p


def _key(kind: str, name: str, i: int | None = None) -> str:
    return f"{kind}/{name}" if i is None else f"{kind}/{name}/{i}"


def _lease_of_ref(fab: Fabric, ref: bytes) -> MemLease:
    """The lease a partition's directory ref names. A damaged ref (not our size)
    names no lease: (0, 0), which the fabric refuses as NotFound."""
    idx, _, lid = _PREF.unpack(ref) if len(ref) == _PREF.size else (0, 0, 0)
    return MemLease(fab, idx, lid)


class RemoteManager:
    """Base of the managers of buses that live on a server (the JetStream bus,
    :meth:`TopicManager.connect`). Producers, consumers, groups, DLQ routers
    and renewal managers accept one where they take a TopicManager and hand
    their work to its public methods; the shared-memory paths never see it."""


class TopicManager:
    """The bus. ``TopicManager()`` is in-process on its own fabric (no server,
    nothing to clean up); :meth:`open` creates or attaches to a named or
    file-backed bus shared with other processes."""

    def __init__(self, fabric: Fabric | None = None, *, size: int = DEFAULT_SIZE) -> None:
        if fabric is not None and not isinstance(fabric, Fabric):
            raise _validate.InvalidType(f"fabric must be a Fabric, not {type(fabric).__name__}")
        self.fabric = fabric if fabric is not None else Fabric(size)
        self._topics: dict[str, Topic] = {}
        self._lock = threading.RLock()

    @classmethod
    def open(cls, name: str | None = None, *, path: str | None = None, size: int | None = None,
             **kw) -> "TopicManager":
        """Create or attach to a named bus (``/dev/shm``) or one in a file.
        ``size`` in bytes is needed only to create it (default 256 MiB, sparse)."""
        if size is None and name is not None and not Fabric.exists(name):
            size = DEFAULT_SIZE
        fab = Fabric.open(name, path=path, size=size, **kw)
        mgr = cls(fab)
        mgr.fabric.reap()       # lazy reclaim: attaching is one of the moments we reap
        return mgr

    @classmethod
    def connect(cls, servers: "str | list[str]", **options) -> RemoteManager:
        """The same bus on NATS JetStream: ``TopicManager.connect("nats://127.0.0.1:4222")``
        (a list of URLs for a cluster). Options: ``replicas=`` (3 on a 3-node
        cluster), ``timeout=`` (seconds every call may wait, default 5),
        ``age_limit=`` and the connection options of :func:`nats.connect`
        (``user``, ``password``, ``token``, ``user_credentials``, ``tls``, ...).
        Needs the ``nats`` extra: ``pip install "grafos[nats]"``."""
        try:
            from ..jetstream.manager import JetStreamManager
        except ModuleNotFoundError as e:
            if e.name is not None and e.name.split(".")[0] == "nats":
                raise ModuleNotFoundError('the JetStream bus needs nats-py: pip install "grafos[nats]"',
                                          name=e.name) from None
            raise
        return JetStreamManager(servers, **options)

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove a named bus from the system (attached processes keep their mapping)."""
        return Fabric.unlink(name)

    def close(self) -> None:
        # Partition handles are freed with their last reference (producers and
        # readers may still hold them); the mapping lives until then.
        with self._lock:
            self._topics.clear()
        self.fabric.close()

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
        with self._lock, fab.locked():
            if fab.meta_get(_key("t", name)) is not None:
                raise AlreadyExists(f"topic {name!r} already exists")
            fab.reap(now)
            incarnation = time.time_ns()
            refs = self._alloc_partitions(name, config, now)
            fab.meta_put(_key("t", name), _CONFIG.pack(
                config.num_partitions, config.partition_capacity, config.partition_stride, 0,
                config.retention_secs, now_ns(now), incarnation))
            topic = Topic(name, config, incarnation, refs)
            self._topics[name] = topic
            return topic

    def _alloc_partitions(self, name: str, config: TopicConfig, now: float | None) -> list[Partition | None]:
        """Acquire and format one lease per partition; all or nothing."""
        fab = self.fabric
        made: list[Partition] = []
        try:
            for i in range(config.num_partitions):
                p = Partition.create(fab, config.partition_capacity, config.partition_stride,
                                     ttl=config.retention_secs, owner_tag=i, now=now)
                made.append(p)
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
            self._topics.pop(name, None)

    def restart(self, name: str, *, now: float | None = None) -> Topic:
        """Give an expired topic fresh leases (its partitions start again at offset 0).
        Partitions whose lease is still alive keep it."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        fab = self.fabric
        with self._lock, fab.locked():
            cfg = self._config(self._record(name))
            fab.reap(now)
            for i in range(cfg.num_partitions):
                ref = fab.meta_get(_key("p", name, i))
                alive = False
                if ref is not None:
                    alive = not _lease_of_ref(fab, ref).expired(now)
                if not alive:
                    p = Partition.create(fab, cfg.partition_capacity, cfg.partition_stride,
                                         ttl=cfg.retention_secs, owner_tag=i, now=now)
                    fab.meta_put(_key("p", name, i), _PREF.pack(p.lease.index, 0, p.lease.id))
            self._topics.pop(name, None)
            return self._load(name, now)

    def topics(self) -> list[str]:
        return sorted(k[2:] for k, _ in self.fabric.meta_items("t/"))

    def exists(self, name: str) -> bool:
        return self.fabric.meta_get(_key("t", _validate.name(name, "topic name", MAX_TOPIC_NAME))) is not None

    def _record(self, name: str) -> bytes:
        """The topic's directory record (read under the fabric lock); NotFound if there is none."""
        raw = self.fabric.meta_get(_key("t", name))
        if raw is None:
            raise NotFound(f"no topic {name!r}")
        return raw

    @staticmethod
    def _config(raw: bytes) -> TopicConfig:
        try:
            n, cap, stride, _flags, retention, _created, _inc = _CONFIG.unpack(raw)
            return TopicConfig(n, cap, stride, retention)
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
            for i in range(cfg.num_partitions):
                ref = fab.meta_get(_key("p", name, i))
                p = None
                if ref is not None and len(ref) == _PREF.size:
                    idx, _, lid = _PREF.unpack(ref)
                    try:
                        p = Partition(fab, MemLease(fab, idx, lid))
                    except (LeaseExpired, NotFound):
                        p = None   # expired and reclaimed: reads as empty until restart
                parts.append(p)
        t = Topic(name, cfg, incarnation, parts)
        self._topics[name] = t
        return t

    def topic(self, name: str) -> Topic:
        """The opened topic (cached; re-read from the directory by :meth:`refresh`)."""
        t = self._topics.get(name)
        if t is not None:
            return t
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        with self._lock:
            t = self._topics.get(name)
            return t if t is not None else self._load(name)

    def refresh(self, name: str) -> Topic:
        """Re-read a topic from the directory (after another process restarted or
        deleted it)."""
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        with self._lock:
            self._topics.pop(name, None)
            return self._load(name)

    # ---- observability -----------------------------------------------------
    def partition_leases(self, name: str) -> list[MemLease | None]:
        """The :class:`MemLease` of each partition (None where reclaimed)."""
        t = self.topic(name)
        return [p.lease if p is not None else None for p in t.partitions]

    def describe(self, name: str, now: float | None = None) -> TopicDescription:
        """Per partition: earliest and latest offset, lease TTL remaining, messages
        lost to overwrite."""
        t = self.refresh(name)
        infos = []
        for i, p in enumerate(t.partitions):
            if p is None:
                infos.append(PartitionInfo(i, 0, 0, 0, 0, 0.0, False, 0))
                continue
            st: PartitionState = p.state(now)
            ttl = max(0.0, st.expires_at - now_s(now)) if st.alive else 0.0
            infos.append(PartitionInfo(i, st.earliest, st.latest, st.lost, st.abandoned, ttl,
                                       st.alive, p.lease.id))
        return TopicDescription(name, t.config, infos)

    def stats(self, name: str, now: float | None = None) -> dict[str, int]:
        d = self.describe(name, now)
        return {"produced": d.produced, "lost": d.lost,
                "partitions_alive": sum(p.alive for p in d.partitions)}
