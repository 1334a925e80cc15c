"""Offset stores. A committed offset is the *next* offset to read (Kafka's rule).

* :class:`MemOffsetStore` -- in memory, this process only.
* :class:`SqliteOffsetStore` -- durable across restarts (stdlib sqlite3, WAL,
  one row per group/topic/partition); several processes may share the file.
* :class:`FabricOffsetStore` -- in the fabric's metadata table
  (``o/<group>/<topic>/<partition>``), shared by every attached process and
  gone with the fabric. These records are the bus's own offsets: on a topic
  with ``on_full`` "block" or "raise" they are the gate of a fabric-backed
  group (:mod:`grafos.mq.gate`).

Every store has ``committed``/``commit`` (the :class:`OffsetStore` protocol),
``commit_many`` (several partitions of one group and topic at once, all or
nothing) and ``items``. The stores are thread-safe.

Offsets know their incarnation: each commit may record which life of the
partition (its lease, see :meth:`Topic.partition_incarnation
<grafos.mq.topic.Topic.partition_incarnation>`) the offset belongs to, and
:meth:`committed_entry` returns it, so a consumer seeking ``Committed`` after
the topic was restarted starts at the new ring's earliest offset instead of
at the old number. A store written for the plain protocol (no
``committed_entry``) keeps working; its commits just carry no incarnation.
"""
from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from typing import TYPE_CHECKING, Mapping, NamedTuple

from .. import _validate
from ..errors import Closed, CorruptFabric, InvalidArgument, Unsupported
from ..partition import MAX_OFFSET
from . import _metakeys
from .model import Bus, OffsetStore

if TYPE_CHECKING:
    from ..fabric import Fabric
    from .topic import TopicManager



class CommittedOffset(NamedTuple):
    offset: int                 #: the next offset to read
    incarnation: int | None     #: the partition incarnation it belongs to (None: not recorded)


Incarnations = Mapping[int, int]   # partition -> incarnation of the offset committed for it
MAX_INCARNATION = (1 << 48) - 1


def committed_entry(store: OffsetStore, group: str, topic: str, partition: int) -> CommittedOffset | None:
    """The committed offset and, when the store records it, its incarnation."""
    entry = getattr(store, "committed_entry", None)
    if entry is not None:
        return entry(group, topic, partition)
    off = store.committed(group, topic, partition)
    return None if off is None else CommittedOffset(off, None)


def _check_incarnations(offsets: Mapping[int, int], incarnations: Incarnations | None) -> dict[int, int | None]:
    if incarnations is None:
        return {p: None for p in offsets}
    if not isinstance(incarnations, Mapping):
        raise _validate.InvalidType(f"incarnations must be a mapping partition -> incarnation, "
                                    f"not {type(incarnations).__name__}")
    out: dict[int, int | None] = {}
    for p in offsets:
        inc = incarnations.get(p)
        out[p] = None if inc is None else _validate.integer(inc, "incarnation", 1, MAX_INCARNATION)
    return out


def _check(group: str, topic: str, partition: int, offset: int | None = None) -> None:
    _validate.name(group, "group", 64)
    _validate.name(topic, "topic", 64)
    _validate.integer(partition, "partition", 0, 1 << 20)
    if offset is not None:
        _validate.integer(offset, "offset", 0, MAX_OFFSET)


def _check_many(group: str, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
    if not isinstance(offsets, Mapping):
        raise _validate.InvalidType(f"offsets must be a mapping partition -> offset, "
                                    f"not {type(offsets).__name__}")
    for p, off in offsets.items():
        _check(group, topic, p, off)
    if not offsets:
        _check(group, topic, 0)
    return dict(offsets)


def commit_many(store: OffsetStore, group: str, topic: str, offsets: Mapping[int, int],
                incarnations: Incarnations | None = None) -> None:
    """``store.commit_many`` when the store has it (atomic), else one commit per
    partition (checked first, so bad input changes nothing). ``incarnations``
    go to stores that record them (those with ``committed_entry``)."""
    many = getattr(store, "commit_many", None)
    if many is not None:
        if incarnations is not None and getattr(store, "committed_entry", None) is not None:
            many(group, topic, offsets, incarnations=incarnations)
        else:
            many(group, topic, offsets)
        return
    offsets = _check_many(group, topic, offsets)
    for p, off in offsets.items():
        store.commit(group, topic, p, off)


def bus_store(store: OffsetStore, mgr: "TopicManager") -> OffsetStore:
    """``store``, or when it is a FabricOffsetStore of ``mgr``'s bus made over
    another attachment or from a bare Fabric, one made from ``mgr``: the
    group's lock is re-entrant per attachment only (a second attachment would
    take it again while it is held), and only a store with a manager can
    store a gated topic's gates as it commits."""
    if not isinstance(store, FabricOffsetStore):
        return store
    fabric, other = mgr.fabric, store.fabric
    if fabric.same_bus(other) and (other is not fabric or store._mgr is not mgr):
        return FabricOffsetStore(mgr)
    return store


class _CommitsMany:
    """The stores' single commit: one partition through ``commit_many``, so both
    take the same checks and, where the store has one, the same transaction."""

    def commit(self, group: str, topic: str, partition: int, offset: int,
               incarnation: int | None = None) -> None:
        self.commit_many(group, topic, {partition: offset},  # type: ignore[attr-defined]
                         incarnations=None if incarnation is None else {partition: incarnation})


class MemOffsetStore(_CommitsMany):
    """Offsets in a dict, for one process."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, str, int], int] = {}
        self._inc: dict[tuple[str, str, int], int | None] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<MemOffsetStore: {len(self._d)} committed partition(s)>"

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        return self._d.get((group, topic, partition))

    def committed_entry(self, group: str, topic: str, partition: int) -> CommittedOffset | None:
        _check(group, topic, partition)
        k = (group, topic, partition)
        with self._lock:
            return CommittedOffset(self._d[k], self._inc.get(k)) if k in self._d else None

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int],
                    incarnations: Incarnations | None = None) -> None:
        offsets = _check_many(group, topic, offsets)
        incs = _check_incarnations(offsets, incarnations)
        with self._lock:
            for p, off in offsets.items():
                self._d[(group, topic, p)] = off
                self._inc[(group, topic, p)] = incs[p]

    def items(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._d)


class SqliteOffsetStore(_CommitsMany):
    """Offsets in a SQLite file: durable across restarts of the process (and, with
    ``durable=True``, the default, across power loss: every commit is fsynced).

    One row per (group, topic, partition). WAL journal, so readers never block
    the writer, and a busy timeout, so several processes may share the file. One
    connection per store, guarded by a lock: the store may be shared by threads.
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS offsets (
            grp        TEXT    NOT NULL,
            topic      TEXT    NOT NULL,
            partition  INTEGER NOT NULL,
            next       INTEGER NOT NULL,
            updated_ns INTEGER NOT NULL,
            incarnation INTEGER,
            PRIMARY KEY (grp, topic, partition)
        ) WITHOUT ROWID
    """
    _UPSERT = ("INSERT INTO offsets (grp, topic, partition, next, updated_ns, incarnation) "
               "VALUES (?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (grp, topic, partition) DO UPDATE SET next = excluded.next, "
               "updated_ns = excluded.updated_ns, incarnation = excluded.incarnation")

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True,
                 busy_timeout: float = 5.0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise _validate.InvalidType(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self.path = os.fspath(path)
        if not self.path:
            raise InvalidArgument("path must not be empty")
        _validate.number(busy_timeout, "busy_timeout", 0)
        self._lock = threading.Lock()
        # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE)
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(self._SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._db.close()
            self._db = None
            raise InvalidArgument(f"{self.path!r} is not a usable offset database: {e}") from None

    def _migrate(self) -> None:
        """Files made before offsets knew their incarnation get the column (NULL:
        not recorded). Under a write transaction, so two processes opening one
        old file do not both add it."""
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            cols = {row[1] for row in db.execute("PRAGMA table_info(offsets)")}
            if "incarnation" not in cols:
                db.execute("ALTER TABLE offsets ADD COLUMN incarnation INTEGER")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise Closed(f"offset store {self.path!r} is closed")
        return self._db

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        with self._lock:
            row = self._conn().execute(
                "SELECT next FROM offsets WHERE grp = ? AND topic = ? AND partition = ?",
                (group, topic, partition)).fetchone()
        return None if row is None else int(row[0])

    def committed_entry(self, group: str, topic: str, partition: int) -> CommittedOffset | None:
        _check(group, topic, partition)
        with self._lock:
            row = self._conn().execute(
                "SELECT next, incarnation FROM offsets WHERE grp = ? AND topic = ? AND partition = ?",
                (group, topic, partition)).fetchone()
        return None if row is None else CommittedOffset(int(row[0]), None if row[1] is None else int(row[1]))

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int],
                    incarnations: Incarnations | None = None) -> None:
        """Commit several partitions in one transaction."""
        offsets = _check_many(group, topic, offsets)
        incs = _check_incarnations(offsets, incarnations)
        ts = time.time_ns()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(self._UPSERT, [(group, topic, p, off, ts, incs[p]) for p, off in offsets.items()])
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def items(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            rows = self._conn().execute("SELECT grp, topic, partition, next FROM offsets").fetchall()
        return {(g, t, int(p)): int(n) for g, t, p, n in rows}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> "SqliteOffsetStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SqliteOffsetStore {self.path!r}{' closed' if self._db is None else ''}>"


_OFF = struct.Struct("<Q")       # offset | format << 48
_FMT_INC = 1                     # the offset is followed by a 6-byte incarnation (0: not recorded)
_INC = 6


class FabricOffsetStore(_CommitsMany):
    """Offsets in the fabric's metadata table, shared by every process attached to
    the bus: a worker that takes over a partition in another process continues
    from the offset its predecessor committed. Lives as long as the fabric.

    Key ``o/<group>/<topic>/<partition>`` (a digest replaces the names when they
    are long); value: the offset (48 bits) and a format tag in one word, the
    partition incarnation (6 bytes), then the group and topic names.

    A gating group's committed offsets are its gate: a commit stores the
    topic's gates in the same hold of the metadata lock when the store was
    made from a manager that has the topic open (else the next producer that
    finds a partition full does).
    """

    def __init__(self, mgr: "TopicManager | Fabric") -> None:
        from ..fabric import Fabric
        self._mgr: TopicManager | None = None
        if isinstance(mgr, Fabric):
            self.fabric = mgr
        elif isinstance(mgr, Bus) and mgr.capabilities.shared_memory:
            self.fabric = mgr.fabric
            self._mgr = mgr
        elif isinstance(mgr, Bus):
            raise Unsupported(f"a {type(mgr).__name__} keeps no fabric: the offsets of a bus on a server go in "
                              "its own store (grafos.jetstream.KvOffsetStore(mgr) on JetStream)")
        else:
            raise _validate.InvalidType(f"mgr must be a TopicManager or Fabric, not {type(mgr).__name__}")

    @staticmethod
    def _key(group: str, topic: str, partition: int) -> str:
        return f"{_metakeys.prefix('o', group, topic)}{partition}"

    @staticmethod
    def _decode(raw: bytes) -> tuple[int, int | None, int]:
        """(offset, incarnation, where the names start); ValueError if damaged."""
        if len(raw) < _OFF.size:
            raise ValueError("short value")
        (word,) = _OFF.unpack_from(raw)
        fmt, off = word >> 48, word & MAX_OFFSET
        if fmt == 0:                          # written without an incarnation
            return off, None, _OFF.size
        if fmt != _FMT_INC or len(raw) < _OFF.size + _INC:
            raise ValueError("unknown format")
        inc = int.from_bytes(raw[_OFF.size:_OFF.size + _INC], "little")
        return off, inc or None, _OFF.size + _INC

    def __repr__(self) -> str:
        f = self.fabric
        where = f" {f.name or f.path!r}" if f.name or f.path else ""
        return f"<FabricOffsetStore on {f.kind} bus{where}>"

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        e = self.committed_entry(group, topic, partition)
        return None if e is None else e.offset

    def committed_entry(self, group: str, topic: str, partition: int) -> CommittedOffset | None:
        _check(group, topic, partition)
        return self.entry(self.fabric, group, topic, partition)

    @classmethod
    def entry(cls, fabric: "Fabric", group: str, topic: str, partition: int) -> CommittedOffset | None:
        """The committed offset of ``group`` in ``fabric``'s offset records, with
        the names unchecked (the gate reads a group's name from the fabric)."""
        raw = fabric.meta_get(cls._key(group, topic, partition))
        if raw is None:
            return None
        try:
            off, inc, _ = cls._decode(raw)
        except ValueError:
            raise CorruptFabric(f"committed offset of {group}/{topic}/{partition} in the fabric is damaged") from None
        return CommittedOffset(off, inc)

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int],
                    incarnations: Incarnations | None = None) -> None:
        """Commit several partitions under one hold of the metadata lock (which
        also stores the gates of a gated topic: see the class docs)."""
        with self.fabric.locked():
            for key, value in self.writes(group, topic, offsets, incarnations):
                self.fabric.meta_put(key, value)
            if self._mgr is not None:
                self._mgr.follow_commit(topic)

    def writes(self, group: str, topic: str, offsets: Mapping[int, int],
               incarnations: Incarnations | None = None) -> list[tuple[str, bytes]]:
        """The metadata writes (key, value) that commit ``offsets``, checked, not
        made (a transaction stages them with its decision)."""
        offsets = _check_many(group, topic, offsets)
        incs = _check_incarnations(offsets, incarnations)
        names = _metakeys.pack_names(group, topic)
        return [(self._key(group, topic, p),
                 _OFF.pack(off | _FMT_INC << 48) + (incs[p] or 0).to_bytes(_INC, "little") + names)
                for p, off in offsets.items()]

    def items(self) -> dict[tuple[str, str, int], int]:
        out = {}
        for key, raw in self.fabric.meta_items("o/"):
            try:
                part = int(key.rsplit("/", 1)[1])
                off, _, at = self._decode(raw)
                (group, topic), _ = _metakeys.unpack_names(raw[at:], 2)
            except (ValueError, IndexError, struct.error):
                continue    # not one of ours, or damaged: skip rather than fail a listing
            out[(group, topic, part)] = off
        return out
