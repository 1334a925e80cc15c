"""Offset stores. A committed offset is the *next* offset to read (Kafka's rule).

* :class:`MemOffsetStore` -- in memory, this process only.
* :class:`SqliteOffsetStore` -- durable across restarts (stdlib sqlite3, WAL).
* :class:`FabricOffsetStore` -- in the fabric, shared by every attached process.
"""
from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from .. import _validate


@runtime_checkable
class OffsetStore(Protocol):
    def committed(self, group: str, topic: str, partition: int) -> int | None: ...
    def commit(self, group: str, topic: str, partition: int, offset: int) -> None: ...


def _check(group: str, topic: str, partition: int, offset: int | None = None) -> None:
    _validate.name(group, "group", 64)
    _validate.name(topic, "topic", 64)
    _validate.integer(partition, "partition", 0, 1 << 20)
    if offset is not None:
        _validate.integer(offset, "offset", 0, (1 << 48) - 1)


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

    def items(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return dict(self._d)
