"""Gating readers and the per-partition gate producers check.

A topic created with ``on_full="block"`` or ``"raise"`` never overwrites a
message a *gating reader* still needs. The gating readers of a topic are its
fabric-backed consumer groups and consumers created with ``gating=True``.
Each holds, per partition, a record in the fabric's metadata table::

    w/<topic>/<partition>/<reader>  ->  position, lease expiry (ns), kind, name

A record is a lease: heartbeats and polls renew it. Once it expires (a
group's stale threshold after its last live member's heartbeat, a consumer's
``gating_ttl``) the reader is *released*: it stops gating, and for it the
partition overwrites again, until it renews.

A consumer's position is the one in its record. A group's position is its
committed offset in the bus's offset records (``o/...``, what a
:class:`~grafos.mq.offset.FabricOffsetStore` of the bus writes), read when the
gate is computed: whoever commits the group's offsets, by whichever handle,
moves its gate; no commit (or one of an earlier incarnation of the
partition) gates at the oldest message still in the ring. A group holds every
partition of its topic while one of its members is live, owned or not, so a
partition whose owner died stays gated until another member claims it.

A released reader's records stay (``describe`` shows it as released) for
:data:`COLLECT_AFTER` seconds past their expiry; then whoever next looks
(a hold, a release, a recompute, a describe) deletes them, so readers that
died without closing do not fill the metadata table.

After each change the partition's **gate** is stored in the ring header,
the one word a producer loads per append: the lowest position of the live
gating readers plus the capacity (producers claim offsets below it only), or
0 when nobody gates. A commit to the bus's offset store stores it in the
same hold of the metadata lock; whoever next finds a partition full
recomputes it too (a reader may have gone stale, or committed through a
handle that could not store it): a blocked producer after every slice of
its wait, a ``"raise"`` producer before it raises.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from .._clock import now_ns
from ..errors import CorruptFabric, NotFound, Unsupported
from . import _metakeys
from .offset import FabricOffsetStore, OffsetStore

if TYPE_CHECKING:
    from .topic import Topic, TopicManager

__all__ = ["GateReader", "PartitionGate", "GateView", "hold", "release", "recompute", "describe", "group_reader",
           "consumer_reader", "share_reader", "topic_of", "forget", "wait_room", "note_full", "follow_commit",
           "check_store", "GROUP", "CONSUMER", "SHARE", "COLLECT_AFTER", "RESCAN_AFTER"]

_REC = struct.Struct("<QqB")      # position, lease expiry (ns), kind; then the reader's name
#: seconds a released reader's records stay after their lease expired (then they are deleted)
COLLECT_AFTER = 60.0
_COLLECT_NS = int(COLLECT_AFTER * 1e9)
#: seconds a :class:`GateView` serves holds without a scan of the metadata, at most
RESCAN_AFTER = 1.0
_RESCAN_NS = int(RESCAN_AFTER * 1e9)
_KINDS = {0: "group", 1: "consumer", 2: "share"}
GROUP, CONSUMER, SHARE = 0, 1, 2


def group_reader(group: str) -> str:
    """The gating-reader name of a consumer group."""
    return f"g:{group}"


def share_reader(group: str) -> str:
    """The gating-reader name of a share group (its position: the lowest
    unfinished record)."""
    return f"s:{group}"


def consumer_reader(name: str) -> str:
    """The gating-reader name of a consumer that opted in."""
    return f"c:{name}"


@dataclass(frozen=True)
class GateReader:
    reader: str           #: ``g:<group>``, ``c:<consumer>`` or ``s:<share group>``
    kind: str             #: "group", "consumer" or "share"
    position: int         #: the next offset it needs
    expires_ns: int       #: its lease: it gates while this is in the future
    live: bool            #: False: released (stale), it no longer holds producers back


@dataclass(frozen=True)
class PartitionGate:
    partition: int
    on_full: str
    gate: int                       #: producers may claim offsets below it (0: not gated)
    held_by: str | None             #: the live reader with the lowest position (sets the gate)
    blocked: int                    #: live producers waiting for room now (up to 8: at least 8)
    blocked_secs: float             #: total time producers waited for room
    full_raised: int                #: sends refused with BufferFull
    readers: list[GateReader] = field(default_factory=list)


class GateView:
    """One reader's copy of its topic's gating records, kept between its holds.

    A reader that holds often (a gating consumer, after its polls) would scan
    the metadata table on every hold to learn the other readers' positions.
    With a view, its next hold publishes from the records of its last one, in
    one call into the core per partition, which checks under the fabric lock
    that the metadata epoch is the one that hold left: every put and delete of
    a record or a committed offset, and every lease change (a partition
    restarted, a topic deleted and created again), by any process, bumps that
    epoch under the same lock, so an equal epoch means nobody else changed a
    record since. When it moved, the hold scans. Liveness is judged again at
    every hold (leases expire on the clock, not on a write). At least every
    :data:`RESCAN_AFTER` seconds a hold scans anyway, which is when released
    readers' records are collected and the gates of the topic's other
    partitions recomputed."""

    __slots__ = ("topic", "epoch", "scanned_ns", "records")

    def __init__(self) -> None:
        self.topic = ""
        self.epoch = -1
        self.scanned_ns = 0
        self.records: dict[int, dict[str, tuple[int, int, int]]] = {}

    def _fresh(self, t: "Topic", tn: int) -> bool:
        return self.epoch >= 0 and self.topic == t.name and t.binding.valid and \
            0 <= tn - self.scanned_ns < _RESCAN_NS


def _scope(topic: str) -> str:
    return _metakeys.prefix("w", topic)


def _gated(t: "Topic") -> bool:
    return t.config.on_full != "overwrite"


def _records(mgr: "TopicManager", t: "Topic", tn: int) -> dict[int, dict[str, tuple[int, int, int]]]:
    """partition -> reader -> (position, expires_ns, kind); a group's position is
    its committed offset. Records expired for longer than COLLECT_AFTER at
    time ``tn`` are deleted. Needs the fabric lock."""
    scope = _scope(t.name)
    out: dict[int, dict[str, tuple[int, int, int]]] = {}
    for key, raw in mgr.fabric.meta_items(scope):
        try:
            p = int(key[len(scope):].split("/", 1)[0])
            pos, exp, kind = _REC.unpack_from(raw)
            (name,), _ = _metakeys.unpack_names(raw[_REC.size:], 1)
        except (struct.error, ValueError):
            raise CorruptFabric(f"gating record {key!r} is damaged") from None
        if exp + _COLLECT_NS <= tn:
            mgr.fabric.meta_del(key)      # a reader long gone: nobody needs to see it released
            continue
        if kind == GROUP:
            pos = _committed(mgr, t, p, name)
        out.setdefault(p, {})[name] = (pos, exp, kind)
    return out


def _committed(mgr: "TopicManager", t: "Topic", p: int, reader: str) -> int:
    """The gate position of group reader ``g:<group>`` on partition p: its
    committed offset in this incarnation of the partition, else 0 (the
    oldest message still in the ring)."""
    if not reader.startswith("g:") or not 0 <= p < t.n:
        return 0
    e = FabricOffsetStore.entry(mgr.fabric, reader[2:], t.name, p)
    if e is None or (e.incarnation is not None and t.lease_ids[p] and e.incarnation != t.partition_incarnation(p)):
        return 0
    return e.offset


def _record(topic: str, p: int, reader: str, pos: int, exp: int, kind: int) -> tuple[str, bytes]:
    """The key and value of ``reader``'s gating record on partition p."""
    return _metakeys.child(_scope(topic), str(p), reader), _REC.pack(pos, exp, kind) + _metakeys.pack_names(reader)


def _put(mgr: "TopicManager", topic: str, p: int, reader: str, pos: int, exp: int, kind: int) -> None:
    mgr.fabric.meta_put(*_record(topic, p, reader, pos, exp, kind))


def topic_of(mgr: "TopicManager", topic: "str | Topic") -> "Topic | None":
    """The manager's current view of ``topic`` (None if there is no such topic).
    Resolve it before taking the fabric lock: loading a topic takes the
    manager's lock, which is taken before the fabric's."""
    return _topic(mgr, topic)


def _topic(mgr: "TopicManager", topic: "str | Topic") -> "Topic | None":
    if not isinstance(topic, str):
        return topic if topic.binding.valid else _topic(mgr, topic.name)
    try:
        t = mgr.topic(topic)
    except NotFound:
        return None
    return t if t.binding.valid else mgr.refresh(topic)


def _bounds(t: "Topic", p: int) -> tuple[int, int] | None:
    part = t.partitions[p] if p < t.n else None
    if part is None:
        return None
    st = part.state()
    return (st.earliest, st.latest) if st.alive else None


def hold(mgr: "TopicManager", topic: "str | Topic", reader: str, kind: int, positions: Mapping[int, int | None],
         ttl_ns: int, now: float | None = None, view: GateView | None = None) -> None:
    """Renew ``reader``'s lease on each partition of ``positions`` until now +
    ``ttl_ns``, at the position given (None: keep the recorded one, or the
    oldest message still in the ring for a reader new to the partition), then
    recompute the gates. A group's position is its committed offset, whatever
    is given (its lease is what its members' heartbeats say: the caller
    passes the newest live one as ``now``). Nothing happens on a topic that
    overwrites. ``view``: the caller's :class:`GateView`, which spares the
    scan of the metadata while nobody else changed it."""
    t = _topic(mgr, topic)
    if t is None or not _gated(t) or not positions:
        return
    topic = t.name
    tn = now_ns(now)
    if view is not None:
        with mgr.fabric.lock_in_core() as lock_ns:
            if lock_ns is not None and _hold_from_view(t, view, reader, kind, positions, ttl_ns, tn, lock_ns):
                return
    with mgr.fabric.locked():
        if view is not None and _hold_from_view(t, view, reader, kind, positions, ttl_ns, tn):
            return
        recs = _records(mgr, t, tn)
        if view is not None:
            view.topic, view.scanned_ns, view.records, view.epoch = topic, tn, recs, -1
        for p, pos in positions.items():
            if not 0 <= p < t.n:
                continue
            old = recs.get(p, {}).get(reader)
            exp = tn + ttl_ns
            if kind == GROUP:
                # its committed offset, which _records read for a group already on record;
                # the record itself keeps no position
                pos = old[0] if old is not None and old[2] == GROUP else _committed(mgr, t, p, reader)
                _put(mgr, topic, p, reader, 0, exp, kind)
            else:
                if pos is None:
                    if old is not None:
                        pos = old[0]
                    else:
                        b = _bounds(t, p)
                        pos = b[0] if b is not None else 0
                _put(mgr, topic, p, reader, pos, exp, kind)
            recs.setdefault(p, {})[reader] = (pos, exp, kind)
        _apply(t, recs, tn)
        if view is not None:
            view.epoch = mgr.fabric.meta_epoch()     # our own puts are in the records kept


def _hold_from_view(t: "Topic", view: GateView, reader: str, kind: int, positions: Mapping[int, int | None],
                    ttl_ns: int, tn: int, lock_ns: int | None = None) -> bool:
    """A hold from ``view``'s records (see :class:`GateView`): True if done, False
    if the view is not current, or the hold is one only a scan does (a group's,
    a position to look up, a partition out of range or reclaimed): then the
    hold scans. Needs the fabric lock, or ``lock_ns``: inside
    ``Fabric.lock_in_core``, each partition's publish takes it."""
    if kind == GROUP or not view._fresh(t, tn) or \
            any(pos is None or not 0 <= p < t.n or t.partitions[p] is None for p, pos in positions.items()):
        return False
    epoch, view.epoch = view.epoch, -1      # until this hold is through
    exp = tn + ttl_ns
    for p, pos in positions.items():
        part = t.partitions[p]
        assert part is not None and pos is not None
        readers = view.records.setdefault(p, {})
        readers[reader] = (pos, exp, kind)
        live = [at for at, until, _k in readers.values() if until > tn]
        e = part.publish_gate(epoch, *_record(t.name, p, reader, pos, exp, kind),
                              min(live) if live else None, f"gate of {t.name!r} partition {p}", lock_ns)
        if e is None:
            return False        # changed meanwhile, or reclaimed: the scan sorts it out
        epoch = e
    view.epoch = epoch
    return True


def release(mgr: "TopicManager", topic: "str | Topic", reader: str, now: float | None = None) -> None:
    """``reader`` stops gating every partition of ``topic`` now (it left)."""
    t = _topic(mgr, topic)
    if t is None:
        return
    topic = t.name
    tn = now_ns(now)
    with mgr.fabric.locked():
        recs = _records(mgr, t, tn)
        for p, readers in recs.items():
            if reader in readers:
                mgr.fabric.meta_del(_metakeys.child(_scope(topic), str(p), reader))
                del readers[reader]
        _apply(t, recs, tn)


def forget(mgr: "TopicManager", topic: str) -> None:
    """Drop every gating record of ``topic`` (it is being deleted). Needs the fabric lock."""
    for key, _ in mgr.fabric.meta_items(_scope(topic)):
        mgr.fabric.meta_del(key)


def recompute(mgr: "TopicManager", topic: "str | Topic", now: float | None = None) -> dict[int, int]:
    """Store every partition's gate from the live records; returns them."""
    t = _topic(mgr, topic)
    if t is None:
        return {}
    tn = now_ns(now)
    with mgr.fabric.locked():
        return _apply(t, _records(mgr, t, tn), tn)


def follow_commit(mgr: "TopicManager", topic: str, now: float | None = None) -> None:
    """Store the gates of ``topic`` after a commit of offsets on the bus, if this
    manager has the topic open (a commit may run under the fabric lock, where
    opening it is not allowed: lock order). Needs the fabric lock. A commit
    whose gates are not stored here is found by the next producer that finds
    the partition full."""
    t = mgr.opened(topic)
    if t is None or not t.binding.valid or not _gated(t):
        return
    tn = now_ns(now)
    _apply(t, _records(mgr, t, tn), tn)


def check_store(mgr: "TopicManager", topic: "str | Topic", group: str, store: OffsetStore) -> None:
    """Refuse a commit of ``group``'s offsets to ``store`` when the group gates
    ``topic`` and the store is not the bus's own (FabricOffsetStore): the gate
    follows only the bus's offset records, so such a commit would leave
    producers blocked behind offsets the group has passed."""
    if isinstance(store, FabricOffsetStore) and mgr.fabric.same_bus(store.fabric):
        return
    t = _topic(mgr, topic)
    if t is None or not _gated(t):
        return
    if _on_record(mgr, t, group_reader(group), now_ns(None)):
        raise Unsupported(
            f"group {group!r} gates topic {t.name!r} (on_full={t.config.on_full!r}): its gate is its "
            f"committed offsets on the bus, so they must be committed to a FabricOffsetStore of this bus, "
            f"not a {type(store).__name__}")


def _on_record(mgr: "TopicManager", t: "Topic", reader: str, tn: int) -> bool:
    """Does ``reader`` have a record on a partition of ``t`` (live or released,
    not yet due for collection at ``tn``)? Reads its own records only: a
    commit asks this, and reading every reader's would cost it a scan."""
    scope = _scope(t.name)
    with mgr.fabric.locked():
        for p in range(t.n):
            key = _metakeys.child(scope, str(p), reader)
            raw = mgr.fabric.meta_get(key)
            if raw is None:
                continue
            try:
                _, exp, _ = _REC.unpack_from(raw)
            except struct.error:
                raise CorruptFabric(f"gating record {key!r} is damaged") from None
            if exp + _COLLECT_NS > tn:
                return True
    return False


def _gate_of(t: "Topic", p: int, readers: Mapping[str, tuple[int, int, int]], tn: int
             ) -> tuple[int, str | None]:
    """(gate, the reader setting it) of partition p at time tn."""
    if not _gated(t):
        return 0, None
    b = _bounds(t, p)
    if b is None:
        return 0, None
    earliest, latest = b
    # a reader behind the ring needs its oldest slot; one beyond the end (an offset
    # from before a restart) needs everything from the end on
    live = [(min(max(pos, earliest), latest), name) for name, (pos, exp, _k) in readers.items() if exp > tn]
    if not live:
        return 0, None
    pos, name = min(live)
    return pos + t.config.partition_capacity, name


def _apply(t: "Topic", recs: Mapping[int, Mapping[str, tuple[int, int, int]]], tn: int) -> dict[int, int]:
    out = {}
    for p, part in enumerate(t.partitions):
        if part is None:
            continue
        g, _ = _gate_of(t, p, recs.get(p, {}), tn)
        if not part.set_gate(g, f"gate of {t.name!r} partition {p}"):
            continue        # reclaimed under us: the ring is not ours to write
        out[p] = g
    return out


def describe(mgr: "TopicManager", topic: "str | Topic", now: float | None = None) -> list[PartitionGate]:
    """Per partition: policy, gate and who sets it, producers blocked now, time
    blocked, BufferFull raised, and every gating reader (live or released)."""
    t = _topic(mgr, topic)
    if t is None:
        raise NotFound(f"no topic {topic!r}")
    topic = t.name
    tn = now_ns(now)
    with mgr.fabric.locked():
        recs = _records(mgr, t, tn)
    out = []
    for p, part in enumerate(t.partitions):
        readers = recs.get(p, {})
        _, held_by = _gate_of(t, p, readers, tn)
        blocked = blocked_ns = raised = gate = 0
        if part is not None:
            st = part.gate_state(f"gate of {topic!r} partition {p}")
            if st is not None:
                gate, blocked, blocked_ns, raised = st.gate, st.blocked, st.blocked_ns, st.full_raised
        infos = [GateReader(name, _KINDS.get(kind, "?"), pos, exp, exp > tn)
                 for name, (pos, exp, kind) in sorted(readers.items())]
        out.append(PartitionGate(p, t.config.on_full, gate, held_by, blocked, blocked_ns / 1e9, raised, infos))
    return out


def wait_room(t: "Topic", p: int, count: int, slice_ns: int) -> bool:
    """Sleep (without the GIL) up to ``slice_ns`` until ``count`` messages fit
    partition p. True if they do (or the partition died: the send says why)."""
    part = t.partitions[p] if 0 <= p < t.n else None
    if part is None:
        return True
    return part.wait_room(count, slice_ns, f"partition {p}")


def note_full(t: "Topic", p: int) -> None:
    """Count a BufferFull raised on partition p (describe shows it)."""
    part = t.partitions[p] if 0 <= p < t.n else None
    if part is not None:
        part.note_full()

