"""Group state, nack counts and committed offsets of the JetStream bus, in KV records.

* a consumer group on a topic is one record ``GF_GROUPS/g.<group>.<topic>``:
  its config, members (last heartbeat, ns), claims (owner, epoch, since)
  and the offsets committed through a :class:`KvOffsetStore`;
* a DLQ router's nack counts are one record ``GF_DLQ/d.<source>.<dlq>``.

The records are changed in :class:`~grafos.jetstream.records.Record`
transactions, so :class:`~grafos.mq.group.ConsumerGroup` and
:class:`~grafos.mq.dlq.DlqRouter` run their own rules unchanged. Heartbeat
times are the callers' clocks (``now=`` works as on the shared-memory bus):
keep the members' clocks in step (NTP) across machines.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar

from .. import _validate
from ..errors import CorruptFabric
from ..mq.model import MAX_OFFSET, Bus, Claim, GroupConfig, OffsetStore
from . import kv, names
from .records import Record, open_in_thread

if TYPE_CHECKING:
    from .manager import JetStreamManager

__all__ = ["KvGroupState", "KvCounts", "KvOffsetStore"]
T = TypeVar("T")


class KvGroupState:
    """The state interface :class:`~grafos.mq.group.ConsumerGroup` uses, over one record."""

    def __init__(self, bus: "JetStreamManager", group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self.record = Record(bus, names.GROUPS, names.group_key(group, topic))

    def locked(self) -> AbstractContextManager:
        return self.record.locked()

    def update(self, body: Callable[[], T], store: OffsetStore) -> T:
        """``body()`` (which changes this state and commits to ``store``) atomically:
        in one compare-and-set when ``store`` keeps its offsets in this record
        (the bus's :class:`KvOffsetStore`), as the body may then run twice;
        under the record's lock otherwise."""
        if isinstance(store, KvOffsetStore) and store.bus is self.record.bus:
            return self.record.update(body)
        with self.record.locked():
            return body()

    def _part(self, name: str) -> dict:
        d = self.record.data
        d.setdefault("names", [self.group, self.topic])
        v = d.setdefault(name, {})
        if not isinstance(v, dict):
            raise CorruptFabric(f"group record of {self.group!r} on {self.topic!r} is damaged ({name})")
        return v

    def members(self) -> dict[str, int]:
        try:
            return {str(m): int(hb) for m, hb in self._part("members").items()}
        except (TypeError, ValueError):
            raise CorruptFabric(f"group members of {self.group!r} on {self.topic!r} are damaged") from None

    def put_member(self, member: str, heartbeat_ns: int) -> None:
        self._part("members")[member] = heartbeat_ns

    def del_member(self, member: str) -> None:
        self._part("members").pop(member, None)

    def claims(self) -> dict[int, Claim]:
        try:
            return {int(p): Claim(c[0] or None, int(c[1]), int(c[2])) for p, c in self._part("claims").items()}
        except (TypeError, ValueError, IndexError):
            raise CorruptFabric(f"group claims of {self.group!r} on {self.topic!r} are damaged") from None

    def put_claim(self, partition: int, claim: Claim) -> None:
        self._part("claims")[str(partition)] = [claim.owner or "", claim.epoch, claim.since_ns]

    def config(self) -> GroupConfig | None:
        c = self.record.data.get("cfg")
        if c is None:
            return None
        try:
            return GroupConfig(self.group, self.topic, int(c[0]), float(c[1]))
        except (TypeError, ValueError, IndexError):
            raise CorruptFabric(f"group config of {self.group!r} on {self.topic!r} is damaged") from None

    def put_config(self, cfg: GroupConfig) -> None:
        self._part("members")
        self.record.data["cfg"] = [cfg.num_partitions, cfg.stale_threshold_secs]


class KvCounts:
    """The nack-count interface :class:`~grafos.mq.dlq.DlqRouter` uses, over one record."""

    def __init__(self, bus: "JetStreamManager", source: str, dlq: str) -> None:
        self.record = Record(bus, names.DLQ, names.dlq_key(source, dlq))

    def locked(self) -> AbstractContextManager:
        return self.record.locked()

    def _counts(self) -> dict:
        return self.record.data.setdefault("counts", {})

    def get(self, p: int, off: int) -> int:
        return int(self._counts().get(f"{p}/{off}", 0))

    def put(self, p: int, off: int, n: int) -> None:
        self._counts()[f"{p}/{off}"] = min(n, 0xFFFFFFFF)

    def delete(self, p: int, off: int) -> bool:
        return self._counts().pop(f"{p}/{off}", None) is not None

    def items(self) -> dict[tuple[int, int], int]:
        out = {}
        for k, n in self._counts().items():
            try:
                p, off = k.split("/")
                out[(int(p), int(off))] = int(n)
            except (ValueError, TypeError):
                raise CorruptFabric(f"nack count {k!r} is damaged") from None
        return out


def _check(group: str, topic: str, partition: int, offset: int | None = None) -> None:
    _validate.name(group, "group", 64)
    _validate.name(topic, "topic", 64)
    _validate.integer(partition, "partition", 0, 1 << 20)
    if offset is not None:
        _validate.integer(offset, "offset", 0, MAX_OFFSET)


class KvOffsetStore:
    """Committed offsets on the JetStream server, shared by every client of the bus.

    The offsets of a group on a topic live in that group's record, so a
    commit made by :meth:`ConsumerGroup.commit <grafos.mq.group.ConsumerGroup.commit>`
    is written in the same compare-and-set as the ownership check: a member
    that was taken over cannot land a late commit (it gets ``Fenced``).
    Outside a group a commit is a transaction of its own; ``commit_many`` is
    atomic. Offsets are Kafka's: the next offset to read.
    """

    def __init__(self, mgr: "JetStreamManager") -> None:
        if not (isinstance(mgr, Bus) and not mgr.capabilities.shared_memory):
            raise _validate.InvalidType(f"mgr must be a JetStream bus (TopicManager.connect), "
                                        f"not {type(mgr).__name__}")
        self.bus = mgr

    def _record(self, group: str, topic: str) -> Record:
        key = names.group_key(group, topic)
        return open_in_thread(self.bus, names.GROUPS, key) or Record(self.bus, names.GROUPS, key)

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        _check(group, topic, partition)
        rec = open_in_thread(self.bus, names.GROUPS, names.group_key(group, topic))
        data = rec.data if rec is not None else self.bus.loop.run(
            kv.get(self.bus.js, names.GROUPS, names.group_key(group, topic)), "reading offsets")[0] or {}
        off = (data.get("offsets") or {}).get(str(partition))
        if off is None:
            return None
        if not isinstance(off, int) or not 0 <= off <= MAX_OFFSET:
            raise CorruptFabric(f"committed offset of {group}/{topic}/{partition} is damaged: {off!r}")
        return off

    def commit(self, group: str, topic: str, partition: int, offset: int) -> None:
        self.commit_many(group, topic, {partition: offset})

    def commit_many(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        if not isinstance(offsets, Mapping):
            raise _validate.InvalidType(f"offsets must be a mapping partition -> offset, "
                                        f"not {type(offsets).__name__}")
        for p, off in offsets.items():
            _check(group, topic, p, off)
        _check(group, topic, 0)
        rec = self._record(group, topic)
        with rec.locked():
            rec.data.setdefault("names", [group, topic])
            rec.data.setdefault("offsets", {}).update({str(p): off for p, off in offsets.items()})

    def items(self) -> dict[tuple[str, str, int], int]:
        out = {}
        for rec in self.bus.group_records():
            try:
                group, topic = rec["names"]
                for p, off in (rec.get("offsets") or {}).items():
                    out[(group, topic, int(p))] = int(off)
            except (KeyError, ValueError, TypeError):
                continue    # damaged: skip rather than fail a listing
        return out

    def __repr__(self) -> str:
        return f"<KvOffsetStore on {self.bus!r}>"
