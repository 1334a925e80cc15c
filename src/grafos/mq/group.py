"""Consumer groups without a coordinator.

Members share a topic's partitions by claiming them. All decisions are made
by the member that calls, under one lock, from the group's state:

* a **member** is live while its last heartbeat is younger than
  ``stale_threshold_secs``;
* each live member has a **fair share** (quota): with P partitions and M live
  members, sorted by name, the first ``P % M`` members get ``ceil(P / M)`` and
  the others ``floor(P / M)``. The quotas add up to P, so every partition
  finds an owner (a plain ``ceil`` for everyone can leave a member with
  nothing: 4 partitions, 3 members, 2 + 2 + 0);
* :meth:`ConsumerGroup.claim` records a heartbeat, gives back what is above
  the quota, then takes unclaimed partitions and partitions of stale or
  departed members until the quota is met; :meth:`ConsumerGroup.heartbeat`
  does the first two only;
* every change of owner increments the partition's **epoch**. A member whose
  partition was taken over is **fenced**: :meth:`ConsumerGroup.commit` (which
  a :meth:`Consumer.commit <grafos.mq.consumer.Consumer.commit>` bound with
  ``consumer.bind(group, member)`` calls) refuses its offsets for that
  partition with :class:`~grafos.errors.Fenced`. Ownership check and commit
  happen atomically (under the group's lock; on a server, in the
  compare-and-set that writes the group's record), so a takeover cannot
  slip in between.

Where the state lives:

* ``ConsumerGroup(name, topic, n, stale)``: in this object (a thread lock);
  share the object between the members (threads) of one process;
* ``ConsumerGroup(..., mgr=mgr)``: in the fabric's metadata table, under the
  fabric's process-shared lock, so members in different processes attached
  to one named bus coordinate. Keys: ``g/<group>/<topic>/cfg``,
  ``g/<group>/<topic>/m/<member>`` (last heartbeat) and
  ``g/<group>/<topic>/c/<partition>`` (owner, epoch); a digest replaces the
  names when they would not fit the table's 96-byte keys.

On a topic created with ``on_full="block"`` or ``"raise"``, a fabric-backed
group is a *gating reader* (:mod:`grafos.mq.gate`): producers do not overwrite
what it has not committed past. Its gate is its committed offsets in the
bus's offset records, so any commit of them moves it: :meth:`commit`, a
consumer bound to a member, a plain ``Consumer.commit`` or a transaction's
``commit_offsets`` to a :class:`~grafos.mq.offset.FabricOffsetStore` of the
bus. A commit of a gating group to another store (``MemOffsetStore``,
``SqliteOffsetStore``) could not move it and raises
:class:`~grafos.errors.Unsupported`. While the group has a live member it
gates every partition of its topic, owned or not (a dead member's
partitions stay gated until another member claims them); once its last
member leaves or goes stale, it stops gating. A group kept in this object
(no ``mgr``) does not gate.

A rebalance loop for one member::

    owned = group.claim(member)            # also heartbeats
    if owned != consumer.assignment():
        consumer.assign(owned)
        consumer.seek(mgr, store, SeekPolicy.Committed)

Commit before calling ``claim``/``heartbeat`` so that partitions given back
carry your progress to their next owner.
"""
from __future__ import annotations

import struct
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, TypeVar

from .. import _validate
from .._clock import now_ns
from .._log import get as _logger
from ..errors import CorruptFabric, Fenced, InvalidArgument, LockTimeout, Unavailable
from . import _metakeys, gate
from .model import MAX_PARTITIONS, Bus, Claim, GroupConfig
from .offset import MAX_OFFSET, Incarnations, OffsetStore, bus_store, commit_many, committed_entry

if TYPE_CHECKING:
    from ..fabric import Fabric
    from .consumer import Consumer
    from .topic import TopicManager

__all__ = ["ConsumerGroup", "KeepAlive", "Claim", "Share", "GroupDescription", "GroupPartition", "MemberInfo",
           "GroupConfig", "list_groups", "group_lag"]

_log = _logger("group")
T = TypeVar("T")


class Share(NamedTuple):
    """Where a member stands against its fair share (:meth:`ConsumerGroup.beat`)."""

    owned: list[int]      #: the partitions it owns (sorted)
    quota: int            #: its fair share among the live members
    free: list[int]       #: partitions no live member owns: it may take them up to its quota


@dataclass(frozen=True)
class MemberInfo:
    name: str
    last_heartbeat: float     #: seconds since the epoch
    age: float                #: seconds since that heartbeat
    stale: bool
    partitions: list[int]


@dataclass(frozen=True)
class GroupPartition:
    partition: int
    owner: str | None
    epoch: int
    committed: int | None     #: next offset the group will read (None: never committed)
    earliest: int
    latest: int
    lag: int                  #: messages still to be consumed by the group
    #: the commit belongs to an earlier incarnation of the partition (the topic was
    #: restarted since): the group starts again at the earliest offset
    stale_commit: bool = False
    #: on a topic with on_full "block"/"raise": "gating" while the group's lease on
    #: the partition is live, "released" once it went stale; None otherwise
    gating: str | None = None
    #: messages the ring overwrote before the group read them: its commit is
    #: older than the oldest offset still held (a Committed seek counts them too)
    lost: int = 0


@dataclass(frozen=True)
class GroupDescription:
    name: str
    topic: str
    stale_threshold_secs: float
    members: list[MemberInfo] = field(default_factory=list)
    partitions: list[GroupPartition] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.partitions)

    @property
    def consumed(self) -> int:
        """Messages the group has committed past (since the topic's last restart)."""
        return sum(min(p.committed, p.latest) for p in self.partitions
                   if p.committed is not None and not p.stale_commit)

    @property
    def stale_members(self) -> list[str]:
        return [m.name for m in self.members if m.stale]

    def assignments(self) -> dict[int, str]:
        return {p.partition: p.owner for p in self.partitions if p.owner is not None}


# ---- state backends -----------------------------------------------------------------
class _MemState:
    """Group state in this object, under a thread lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._members: dict[str, int] = {}
        self._claims: dict[int, Claim] = {}

    def locked(self) -> AbstractContextManager:
        return self._lock

    def update(self, body: Callable[[], T], store: OffsetStore) -> T:
        """``body()`` (which changes this state and commits to ``store``) atomically."""
        with self._lock:
            return body()

    def members(self) -> dict[str, int]:
        return dict(self._members)

    def put_member(self, member: str, heartbeat_ns: int) -> None:
        self._members[member] = heartbeat_ns

    def del_member(self, member: str) -> None:
        self._members.pop(member, None)

    def claims(self) -> dict[int, Claim]:
        return dict(self._claims)

    def put_claim(self, partition: int, claim: Claim) -> None:
        self._claims[partition] = claim


_MEMBER = struct.Struct("<q")        # last heartbeat (ns), then the member name
_CLAIM = struct.Struct("<Qq")        # epoch, since (ns), then the owner name ("" = none)
_CFG = struct.Struct("<Id")          # partitions, stale threshold (s), then group and topic names


class _FabricState:
    """Group state in the fabric's metadata table, under its process-shared lock.
    Values come from shared memory: damaged ones raise CorruptFabric."""

    def __init__(self, fabric: "Fabric", group: str, topic: str) -> None:
        self.fabric = fabric
        self.scope = _metakeys.prefix("g", group, topic)

    def locked(self) -> AbstractContextManager:
        return self.fabric.locked()

    def update(self, body: Callable[[], T], store: OffsetStore) -> T:
        """``body()`` (which changes this state and commits to ``store``) atomically."""
        with self.fabric.locked():
            return body()

    def members(self) -> dict[str, int]:
        out = {}
        for key, raw in self.fabric.meta_items(self.scope + "m/"):
            try:
                (hb,) = _MEMBER.unpack_from(raw)
                (name,), _ = _metakeys.unpack_names(raw[_MEMBER.size:], 1)
            except (struct.error, ValueError):
                raise CorruptFabric(f"group member record {key!r} is damaged") from None
            out[name] = hb
        return out

    def put_member(self, member: str, heartbeat_ns: int) -> None:
        self.fabric.meta_put(_metakeys.child(self.scope, "m", member),
                             _MEMBER.pack(heartbeat_ns) + _metakeys.pack_names(member))

    def del_member(self, member: str) -> None:
        self.fabric.meta_del(_metakeys.child(self.scope, "m", member))

    def claims(self) -> dict[int, Claim]:
        out = {}
        for key, raw in self.fabric.meta_items(self.scope + "c/"):
            try:
                p = int(key[len(self.scope) + 2:])
                epoch, since = _CLAIM.unpack_from(raw)
                (owner,), _ = _metakeys.unpack_names(raw[_CLAIM.size:], 1)
            except (struct.error, ValueError):
                raise CorruptFabric(f"group claim record {key!r} is damaged") from None
            out[p] = Claim(owner or None, epoch, since)
        return out

    def put_claim(self, partition: int, claim: Claim) -> None:
        self.fabric.meta_put(f"{self.scope}c/{partition}",
                             _CLAIM.pack(claim.epoch, claim.since_ns) + _metakeys.pack_names(claim.owner or ""))

    def config(self) -> GroupConfig | None:
        raw = self.fabric.meta_get(self.scope + "cfg")
        return None if raw is None else _unpack_cfg(self.scope + "cfg", raw)

    def put_config(self, cfg: GroupConfig) -> None:
        self.fabric.meta_put(self.scope + "cfg", _CFG.pack(cfg.num_partitions, cfg.stale_threshold_secs)
                             + _metakeys.pack_names(cfg.name, cfg.topic))


def _unpack_cfg(key: str, raw: bytes) -> GroupConfig:
    try:
        n, stale = _CFG.unpack_from(raw)
        (name, topic), _ = _metakeys.unpack_names(raw[_CFG.size:], 2)
    except (struct.error, ValueError):
        raise CorruptFabric(f"group config {key!r} is damaged") from None
    return GroupConfig(name, topic, n, stale)


def list_groups(mgr: Bus) -> list[GroupConfig]:
    """Every group with records on the bus (for tools that look into a live bus)."""
    return mgr.list_groups()


def fabric_groups(fabric: "Fabric") -> list[GroupConfig]:
    """Every group whose records live in ``fabric``."""
    out = []
    for key, raw in fabric.meta_items("g/"):
        if key.endswith("/cfg"):
            try:
                out.append(_unpack_cfg(key, raw))
            except CorruptFabric:
                continue
    return sorted(out, key=lambda c: (c.name, c.topic))


def group_lag(mgr: Bus, store: OffsetStore, group: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``: messages the group ``group`` has not committed
    past yet (for any group, with or without a :class:`ConsumerGroup`)."""
    _validate.name(group, "group", 64)
    t = mgr.topic(_validate.name(topic, "topic", 64))
    out = {}
    for p in range(t.n):
        earliest, latest = _bounds(t, p)
        committed, _ = current_commit(store, group, t, p)
        out[p] = _lag(committed, earliest, latest)
    return out


def current_commit(store: OffsetStore, group: str, t, p: int) -> tuple[int | None, bool]:  # noqa: ANN001 - Topic
    """(the group's commit for partition ``p`` of topic ``t`` if it belongs to the
    partition's current incarnation else None, whether one was dropped as stale)."""
    e = committed_entry(store, group, t.name, p)
    if e is None:
        return None, False
    if e.incarnation is not None and t.lease_ids[p] and e.incarnation != t.partition_incarnation(p):
        return None, True
    return e.offset, False


def _bounds(t, p: int) -> tuple[int, int]:   # noqa: ANN001 - Topic
    part = t.partitions[p]
    if part is None:
        return 0, 0
    st = part.state()
    return (st.earliest, st.latest) if st.alive else (0, 0)


def _lag(committed: int | None, earliest: int, latest: int) -> int:
    pos = earliest if committed is None else min(max(committed, earliest), latest)
    return max(0, latest - pos)


# ---- the group ------------------------------------------------------------------------
class ConsumerGroup:
    """``ConsumerGroup("processors", "events", 4, 30)``; see the module docs."""

    def __init__(self, name: str, topic: str, num_partitions: int, stale_threshold_secs: float,
                 mgr: "Bus | None" = None) -> None:
        self.name = _validate.name(name, "group name", 64)
        self.topic = _validate.name(topic, "topic", 64)
        self.num_partitions = _validate.integer(num_partitions, "num_partitions", 1, MAX_PARTITIONS)
        self.stale_threshold_secs = _validate.number(stale_threshold_secs, "stale_threshold_secs", 0,
                                                     lo_open=True)
        self._stale_ns = max(1, int(self.stale_threshold_secs * 1e9))   # > 0: a member is live at its own heartbeat
        self.mgr = mgr
        # epochs this object handed to each member: member -> {partition: epoch}
        self._epochs: dict[str, dict[int, int]] = {}
        self._elock = threading.Lock()
        self._state: _MemState | _FabricState
        if mgr is None:
            self._state = _MemState()
            return
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        if mgr.exists(self.topic):
            n = mgr.topic(self.topic).n
            if n != self.num_partitions:
                raise InvalidArgument(f"topic {self.topic!r} has {n} partitions, not {self.num_partitions}")
        st = mgr.group_state(self.name, self.topic)
        with st.locked():
            cfg = st.config()
            if cfg is not None and cfg.num_partitions != self.num_partitions:
                raise InvalidArgument(f"group {self.name!r} on {self.topic!r} exists with "
                                      f"{cfg.num_partitions} partitions, not {self.num_partitions}")
            if cfg is None or cfg.stale_threshold_secs != self.stale_threshold_secs:
                st.put_config(GroupConfig(self.name, self.topic, self.num_partitions,
                                          self.stale_threshold_secs))
        self._state = st

    @classmethod
    def attach(cls, mgr: Bus, name: str, topic: str) -> "ConsumerGroup":
        """The fabric-backed group ``name`` on ``topic`` as its creator configured it."""
        name, topic = _validate.name(name, "group name", 64), _validate.name(topic, "topic", 64)
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        st = mgr.group_state(name, topic)
        with st.locked():
            cfg = st.config()
        if cfg is None:
            from ..errors import NotFound
            raise NotFound(f"no group {name!r} on topic {topic!r}")
        return cls(name, topic, cfg.num_partitions, cfg.stale_threshold_secs, mgr=mgr)

    def __reduce__(self):  # noqa: ANN204 - crosses processes as its name and its bus
        if self.mgr is None:
            from ..errors import NotPortable
            raise NotPortable(
                f"group {self.name!r} keeps its state in this object (no mgr): a copy in another process "
                "would not see the others' claims. Create it with ConsumerGroup(..., mgr=TopicManager.open(name)) "
                "so members in every process share it")
        return (ConsumerGroup, (self.name, self.topic, self.num_partitions, self.stale_threshold_secs, self.mgr))

    def __repr__(self) -> str:
        where = "fabric" if self.mgr is not None else "in-process"
        return f"<ConsumerGroup {self.name!r} on {self.topic!r} ({self.num_partitions} partitions, {where})>"

    # ---- rules ------------------------------------------------------------------------
    def _is_live(self, heartbeat_ns: int, t: int) -> bool:
        return t - heartbeat_ns < self._stale_ns

    def _quota(self, member: str, live: list[str]) -> int:
        """``member``'s fair share among the ``live`` members (sorted)."""
        base, extra = divmod(self.num_partitions, len(live))
        return base + (1 if live.index(member) < extra else 0)

    def _member(self, member: str) -> str:
        return _validate.name(member, "member", 64)

    def _gate_topic(self):  # noqa: ANN202 - Topic | None
        """The topic whose gate this group holds (fabric-backed groups only),
        resolved before the fabric lock is taken."""
        return gate.topic_of(self.mgr, self.topic) if isinstance(self._state, _FabricState) else None

    def _hold_gate(self, gt, newest_ns: int) -> None:  # noqa: ANN001 - gt: Topic
        """A live member keeps the group gating every partition, owned or not,
        until ``newest_ns``, the newest live heartbeat, goes stale."""
        gate.hold(self.mgr, gt, gate.group_reader(self.name), gate.GROUP,
                  {p: None for p in range(self.num_partitions)}, self._stale_ns, now=newest_ns / 1e9)

    def _sync(self, member: str, now: float | None, acquire: bool, give_back: bool = True) -> Share:
        """Heartbeat, optionally give back above the quota and take up to it."""
        member = self._member(member)
        t = now_ns(now)
        st = self._state
        gt = self._gate_topic()
        with st.locked():
            members = st.members()
            members[member] = t
            st.put_member(member, t)
            live = sorted(m for m, hb in members.items() if self._is_live(hb, t))
            quota = self._quota(member, live)
            claims = st.claims()
            mine = sorted(p for p, c in claims.items() if c.owner == member and p < self.num_partitions)
            gave, took = [], []
            while give_back and len(mine) > quota:
                p = mine.pop()                 # give back the highest-numbered ones
                gave.append(p)
                c = claims[p]
                claims[p] = Claim(None, c.epoch, c.since_ns)
                st.put_claim(p, claims[p])
            if acquire:
                for p in range(self.num_partitions):
                    if len(mine) >= quota:
                        break
                    c = claims.get(p)
                    if c is None or c.owner is None or c.owner not in live:
                        claims[p] = Claim(member, (c.epoch if c else 0) + 1, t)
                        st.put_claim(p, claims[p])
                        mine.append(p)
                        took.append(p)
            # forget stale members that no longer hold anything
            holders = {c.owner for c in claims.values()}
            for m in members:
                if m not in live and m not in holders:
                    st.del_member(m)
            mine.sort()
            free = [p for p in range(self.num_partitions) if p not in mine and
                    (claims.get(p) is None or claims[p].owner not in live)]
            with self._elock:
                self._epochs[member] = {p: claims[p].epoch for p in mine}
            if gt is not None:
                self._hold_gate(gt, max(hb for m, hb in members.items() if m in live))
        if gave or took:
            _log.info("group %r on %r rebalanced: member %r took %s, gave back %s, owns %s (%d live member(s))",
                      self.name, self.topic, member, took, sorted(gave), mine, len(live))
        return Share(mine, quota, free)

    # ---- membership -------------------------------------------------------------------
    def claim(self, member: str, now: float | None = None) -> list[int]:
        """Heartbeat and take unclaimed or stale partitions up to the fair share;
        returns the partitions ``member`` now owns (sorted)."""
        return self._sync(member, now, acquire=True).owned

    def heartbeat(self, member: str, now: float | None = None) -> list[int]:
        """Keep ``member`` live; give back what is above its fair share now that
        others have joined. Returns the partitions it still owns (a member fenced
        meanwhile finds the taken ones gone). A member not seen before joins."""
        return self._sync(member, now, acquire=False).owned

    def beat(self, member: str, now: float | None = None) -> Share:
        """Keep ``member`` live without changing any claim, and say where it stands.
        A member that hands partitions over itself (it commits them and tells its
        application first, as :mod:`grafos.mq.subscribe` does) beats with this and
        calls :meth:`claim` once it is ready to give back above ``quota`` and take
        ``free`` partitions. A member not seen before joins (owning nothing)."""
        return self._sync(member, now, acquire=False, give_back=False)

    def leave(self, member: str) -> list[int]:
        """Leave the group: give every partition back at once (others need not
        wait for the stale threshold). Returns the partitions given back."""
        member = self._member(member)
        st = self._state
        gt = self._gate_topic()
        with st.locked():
            released = []
            for p, c in sorted(st.claims().items()):
                if c.owner == member:
                    st.put_claim(p, Claim(None, c.epoch, c.since_ns))
                    released.append(p)
            st.del_member(member)
            t = now_ns(None)
            if gt is not None:
                live = [hb for hb in st.members().values() if self._is_live(hb, t)]
                if not live:
                    gate.release(self.mgr, gt, gate.group_reader(self.name))   # the last one out
                else:
                    self._hold_gate(gt, max(live))
        with self._elock:
            self._epochs.pop(member, None)
        if released:
            _log.info("group %r on %r rebalanced: member %r left, gave back %s", self.name, self.topic, member,
                      released)
        return released

    def members(self) -> list[str]:
        """Every member on record, live or stale."""
        with self._state.locked():
            return sorted(self._state.members())

    def live_members(self, now: float | None = None) -> list[str]:
        t = now_ns(now)
        with self._state.locked():
            return sorted(m for m, hb in self._state.members().items() if self._is_live(hb, t))

    def stale_members(self, now: float | None = None) -> list[str]:
        """Members whose last heartbeat is older than the stale threshold (their
        partitions are up for grabs)."""
        t = now_ns(now)
        with self._state.locked():
            return sorted(m for m, hb in self._state.members().items() if not self._is_live(hb, t))

    def assignments(self) -> dict[int, str]:
        """partition -> owning member (partitions nobody owns are absent)."""
        with self._state.locked():
            return {p: c.owner for p, c in sorted(self._state.claims().items()) if c.owner is not None}

    def claims(self) -> dict[int, Claim]:
        """partition -> :class:`Claim` (owner, epoch, since) for every partition ever claimed."""
        with self._state.locked():
            return dict(sorted(self._state.claims().items()))

    def owned(self, member: str) -> dict[int, int]:
        """partition -> epoch of what ``member`` owns now."""
        member = self._member(member)
        return {p: c.epoch for p, c in self.claims().items() if c.owner == member}

    def epoch(self, partition: int) -> int:
        self._partition(partition)
        c = self.claims().get(partition)
        return 0 if c is None else c.epoch

    def _partition(self, p: object) -> int:
        return _validate.integer(p, "partition", 0, self.num_partitions - 1)

    # ---- committing ---------------------------------------------------------------------
    def commit(self, store: OffsetStore, member: str, topic: str, offsets: Mapping[int, int],
               *, incarnations: Incarnations | None = None, now: float | None = None) -> dict[int, int]:
        """Commit ``offsets`` (partition -> next offset to read) for ``member``,
        only for partitions it still owns, atomically with the ownership check.

        Offsets of owned partitions are committed; if any partition is not owned
        (taken over, given back, or claimed again since this object handed it out
        under an older epoch), :class:`~grafos.errors.Fenced` is raised after,
        naming them (``err.partitions``), and nothing is committed for them.
        Returns what was committed. On a topic with ``on_full`` "block" or
        "raise" the commit moves the group's gate (its committed offsets are
        the gate): ``store`` must then be a FabricOffsetStore of the bus."""
        if not isinstance(store, OffsetStore):
            raise _validate.InvalidType(f"store must be an offset store, not {type(store).__name__}")
        member = self._member(member)
        topic = _validate.name(topic, "topic", 64)
        if topic != self.topic:
            raise InvalidArgument(f"group {self.name!r} consumes {self.topic!r}, not {topic!r}")
        if not isinstance(offsets, Mapping):
            raise _validate.InvalidType(f"offsets must be a mapping partition -> offset, "
                                        f"not {type(offsets).__name__}")
        for p, off in offsets.items():
            self._partition(p)
            _validate.integer(off, "offset", 0, MAX_OFFSET)
        with self._elock:
            known = dict(self._epochs.get(member, {}))
        st = self._state
        if isinstance(st, _FabricState):
            assert self.mgr is not None
            store = bus_store(store, self.mgr)
            gate.check_store(self.mgr, self.topic, self.name, store)

        def apply() -> tuple[dict[int, Claim], dict[int, int], list[int]]:
            claims = st.claims()
            ok, fenced = {}, []
            for p, off in offsets.items():
                c = claims.get(p)
                if c is None or c.owner != member or (p in known and known[p] != c.epoch):
                    fenced.append(p)
                else:
                    ok[p] = off
            if ok:
                commit_many(store, self.name, topic, ok,
                            None if incarnations is None else {p: incarnations[p] for p in ok if p in incarnations})
            return claims, ok, fenced
        claims, ok, fenced = st.update(apply, store)
        if fenced:
            owners = {p: (claims[p].owner if p in claims else None) for p in fenced}
            _log.warning("group %r on %r: member %r fenced on partition(s) %s (owners now %s)",
                         self.name, topic, member, fenced, owners)
            raise Fenced(group=self.name, topic=topic, member=member, partitions=fenced,
                         owners=owners, committed=ok)
        return ok

    def consumer(self, member: str, **kw) -> "Consumer":
        """A :class:`~grafos.mq.consumer.Consumer` of this group's topic, bound to
        ``member`` so its commits are fenced."""
        from .consumer import Consumer
        c = Consumer(self.topic, self.name, **kw)
        c.bind(self, self._member(member))
        return c

    # ---- observability --------------------------------------------------------------------
    def lag(self, mgr: Bus, store: OffsetStore) -> dict[int, int]:
        """partition -> messages the group has not committed past."""
        return group_lag(mgr, store, self.name, self.topic)

    def describe(self, mgr: "Bus | None" = None, store: OffsetStore | None = None,
                 now: float | None = None) -> GroupDescription:
        """Members (heartbeat age, stale, partitions) and partitions (owner, epoch,
        and with ``mgr`` and ``store`` committed offset, end and lag)."""
        t = now_ns(now)
        with self._state.locked():
            members = self._state.members()
            claims = self._state.claims()
        topic = mgr.topic(self.topic) if mgr is not None else None
        leases: dict[int, bool] = {}
        if isinstance(self._state, _FabricState) and topic is not None and topic.config.on_full != "overwrite":
            me = gate.group_reader(self.name)
            for pg in gate.describe(mgr, self.topic, now=now):
                for r in pg.readers:
                    if r.reader == me:
                        leases[pg.partition] = r.live
        parts = []
        for p in range(self.num_partitions):
            c = claims.get(p)
            committed, stale = None, False
            if store is not None and topic is not None and p < topic.n:
                committed, stale = current_commit(store, self.name, topic, p)
                if stale:
                    entry = committed_entry(store, self.name, self.topic, p)
                    committed = entry.offset if entry is not None else None
            elif store is not None:
                committed = store.committed(self.name, self.topic, p)
            earliest, latest = _bounds(topic, p) if topic is not None and p < topic.n else (0, 0)
            gating = None if p not in leases else ("gating" if leases[p] else "released")
            lost = earliest - committed if committed is not None and not stale and committed < earliest else 0
            parts.append(GroupPartition(p, c.owner if c else None, c.epoch if c else 0, committed,
                                        earliest, latest, _lag(None if stale else committed, earliest, latest),
                                        stale, gating, lost))
        infos = [MemberInfo(m, hb / 1e9, (t - hb) / 1e9, not self._is_live(hb, t),
                            sorted(p for p, c in claims.items() if c.owner == m))
                 for m, hb in sorted(members.items())]
        return GroupDescription(self.name, self.topic, self.stale_threshold_secs, infos, parts)

    # ---- background heartbeats ---------------------------------------------------------
    def keep_alive(self, member: str, interval: float | None = None) -> "KeepAlive":
        """Heartbeat ``member`` from a background thread while the block runs, so
        long processing does not make it stale (Kafka's background heartbeat)::

            with group.keep_alive("worker-1") as ka:
                slow_work(batch)            # longer than the stale threshold
            ka.owned                        # partitions it still owns

        ``interval`` defaults to a third of the stale threshold. Works as
        ``async with`` too (the same thread: a task would stop beating while the
        event loop is busy with the work it is meant to cover)."""
        return KeepAlive(self, member, interval)


#: errors a heartbeat can meet while the member has lost nothing: the metadata
#: lock held past its timeout by a slow or paused process, a remote bus that did
#: not answer in time. Retried until the member is stale.
TRANSIENT = (LockTimeout, Unavailable)
#: seconds between retries of a heartbeat that met a transient error (shorter
#: when the interval is)
RETRY_PAUSE = 0.05


class KeepAlive:
    """Heartbeats for one member from a daemon thread; see :meth:`ConsumerGroup.keep_alive`.

    ``owned`` is the partitions the member owned at the last heartbeat (it may
    shrink when others join and the member gives back above its share); ``beats``
    counts heartbeats. A heartbeat that meets a transient error (:data:`TRANSIENT`:
    another process slow or paused inside the metadata lock, a server not
    answering) is retried; ``retries`` counts those. The thread stops with an
    error, raised when the block ends, only when the member lost its partitions:
    a heartbeat after a silence of the stale threshold or more finds some taken
    by another member (:class:`~grafos.errors.Fenced`), the block ends while the
    member has been unable to beat for the stale threshold (the transient error),
    or any other error.
    """

    def __init__(self, group: ConsumerGroup, member: str, interval: float | None = None) -> None:
        self.group = group
        self.member = group._member(member)
        if interval is None:
            interval = group.stale_threshold_secs / 3
        self.interval = _validate.number(interval, "interval", 0, lo_open=True)
        if self.interval >= group.stale_threshold_secs:
            raise InvalidArgument(f"keep-alive interval {self.interval} s must be shorter than the "
                                  f"stale threshold ({group.stale_threshold_secs} s)")
        self.owned: list[int] = []
        self.beats = 0
        self.retries = 0
        self.error: BaseException | None = None
        self._failing: BaseException | None = None   # the transient error of the last attempt, if it failed
        self._last_ok = 0.0                          # monotonic time the last good heartbeat started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "KeepAlive":
        if self._thread is not None:
            raise InvalidArgument(f"keep-alive of member {self.member!r} is already running")
        self._stop.clear()
        self._last_ok = time.monotonic()
        self.owned = self.group.heartbeat(self.member)     # at once: the block may start with slow work
        self.beats = 1
        self._failing = None
        self._thread = threading.Thread(target=self._run, name=f"grafos-keepalive-{self.member}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pause = self.interval
        while not self._stop.wait(pause):
            started = time.monotonic()     # the heartbeat's time is taken before it waits for the lock
            try:
                owned = self.group.heartbeat(self.member)
            except TRANSIENT as e:
                self._failing = e
                self.retries += 1
                pause = min(self.interval, RETRY_PAUSE)
                continue
            except BaseException as e:  # noqa: BLE001 - handed to the block's owner at stop()
                self.error = e
                return
            silent = started - self._last_ok >= self.group.stale_threshold_secs
            before, self.owned = self.owned, owned
            self._last_ok, self._failing = started, None
            self.beats += 1
            pause = self.interval
            lost = sorted(set(before) - set(owned))
            if silent and lost and self._taken(lost):
                return

    def _taken(self, lost: list[int]) -> bool:
        """After a silence past the threshold: were some of ``lost`` taken by another member?"""
        try:
            claims = self.group.claims()
        except TRANSIENT:
            claims = {}
        owners = {p: claims[p].owner if p in claims else None for p in lost}
        taken = [p for p in lost if owners[p] not in (None, self.member)] if claims else lost
        if taken:
            self.error = Fenced(group=self.group.name, topic=self.group.topic, member=self.member,
                                partitions=taken, owners={p: owners[p] for p in taken})
        return bool(taken)

    def stop(self) -> None:
        """Stop the thread (waits for a heartbeat in progress); raises its error if it had one,
        or the transient error that has kept the member from beating for the stale threshold."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is None and self._failing is not None and \
                time.monotonic() - self._last_ok >= self.group.stale_threshold_secs:
            self.error = self._failing
        self._failing = None
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "KeepAlive":
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - the block's own exception wins
            pass

    async def __aenter__(self) -> "KeepAlive":
        return self.start()

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        self.__exit__(exc_type)

