"""Offset stores. A committed offset is the *next* offset to read (Kafka's rule).

* :class:`MemOffsetStore` -- in memory, this process only.
* :class:`SqliteOffsetStore` -- durable across restarts (stdlib sqlite3, WAL,
  one row per group/topic/partition); several processes may share the file.
* :class:`FabricOffsetStore` -- in the fabric's metadata table
  (``o/<group>/<topic>/<partition>``), shared by every attached process and
  gone with the fabric.

Every store has ``committed``/``commit`` (the :class:`OffsetStore` protocol),
``commit_many`` (several partitions of one group and topic at once, all or
nothing) and ``items``. The stores are thread-safe.
"""
from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from typing import TYPE_CHECKING, Mapping, Protocol, runtime_checkable

from .. import _validate
from ..errors import CorruptFabric, InvalidArgument
from ..partition import MAX_OFFSET
from . import _metakeys

if TYPE_CHECKING:
    from ..fabric import Fabric
    from .topic import TopicManager



@runtime_checkable
class OffsetStore(Protocol):
    def committed(self, group: str, topic: str, partition: int) -> int | None: ...
    def commit(self, group: str, topic: str, partition: int, offset: int) -> None: ...


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


def commit_many(store: OffsetStore, group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """``store.commit_many`` when the store has it (atomic), else one commit per
    partition (checked first, so bad input changes nothing)."""
    many = getattr(store, "commit_many", None)
    if many is not None:
        many(group, topic, offsets)
        return
    offsets = _check_many(group, topic, offsets)
    for p, off in offsets.items():
        store.commit(group, topic, p, off)


class MemOffsetStore:
    """Offsets in a dict, for one process."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        return self._d.get((group, topic, partition))

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        _check(group, topic, partition, offset)
        with self._lock:
            self._d[(group, topic, partition)] = offset

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        offsets = _check_many(group, topic, offsets)
        with self._lock:
            for p, off in offsets.items():
                self._d[(group, topic, p)] = off

    def items(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._d)


class SqliteOffsetStore:
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
            PRIMARY KEY (grp, topic, partition)
        ) WITHOUT ROWID
    """
    _UPSERT = ("INSERT INTO offsets (grp, topic, partition, next, updated_ns) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (grp, topic, partition) DO UPDATE SET next = excluded.next, "
               "updated_ns = excluded.updated_ns")

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
        except sqlite3.DatabaseError as e:
            self._db.close()
            self._db = None
            raise InvalidArgument(f"{self.path!r} is not a usable offset database: {e}") from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise InvalidArgument(f"offset store {self.path!r} is closed")
        return self._db

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        with self._lock:
            row = self._conn().execute(
                "SELECT next FROM offsets WHERE grp = ? AND topic = ? AND partition = ?",
                (group, topic, partition)).fetchone()
        return None if row is None else int(row[0])

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        self.commit_many(group, topic, {partition: offset})

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit several partitions in one transaction."""
        offsets = _check_many(group, topic, offsets)
        ts = time.time_ns()
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(self._UPSERT, [(group, topic, p, off, ts) for p, off in offsets.items()])
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


_OFF = struct.Struct("<Q")


class FabricOffsetStore:
    """Offsets in the fabric's metadata table, shared by every process attached to
    the bus: a worker that takes over a partition in another process continues
    from the offset its predecessor committed. Lives as long as the fabric.

    Key ``o/<group>/<topic>/<partition>`` (a digest replaces the names when they
    are long); value: the offset, then the group and topic names.
    """

    def __init__(self, mgr: "TopicManager | Fabric") -> None:
        from ..fabric import Fabric
        from .topic import TopicManager
        if isinstance(mgr, TopicManager):
            self.fabric = mgr.fabric
        elif isinstance(mgr, Fabric):
            self.fabric = mgr
        else:
            raise _validate.InvalidType(f"mgr must be a TopicManager or Fabric, not {type(mgr).__name__}")

    @staticmethod
    def _key(group: str, topic: str, partition: int) -> str:
        return f"{_metakeys.prefix('o', group, topic)}{partition}"

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        raw = self.fabric.meta_get(self._key(group, topic, partition))
        if raw is None:
            return None
        if len(raw) < _OFF.size:
            raise CorruptFabric(f"committed offset of {group}/{topic}/{partition} in the fabric is damaged")
        off = _OFF.unpack_from(raw)[0]
        if off > MAX_OFFSET:
            raise CorruptFabric(f"committed offset of {group}/{topic}/{partition} is out of range: {off}")
        return off

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        self.commit_many(group, topic, {partition: offset})

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit several partitions under one hold of the metadata lock."""
        offsets = _check_many(group, topic, offsets)
        names = _metakeys.pack_names(group, topic)
        with self.fabric.locked():
            for p, off in offsets.items():
                self.fabric.meta_put(self._key(group, topic, p), _OFF.pack(off) + names)

    def items(self) -> dict[tuple[str, str, int], int]:
        out = {}
        for key, raw in self.fabric.meta_items("o/"):
            try:
                part = int(key.rsplit("/", 1)[1])
                (off,) = _OFF.unpack_from(raw)
                (group, topic), _ = _metakeys.unpack_names(raw[_OFF.size:], 2)
            except (ValueError, IndexError, struct.error):
                continue    # not one of ours, or damaged: skip rather than fail a listing
            out[(group, topic, part)] = off
        return out
