"""Consumers: read assigned partitions from their positions, commit what was
processed. One crossing into C per poll: ``poll`` is a method of the
crossing's :class:`~grafos._crossing.PollPath`, which runs the core's
``gf_poller_poll`` (it reads every assigned partition and, with a timeout, sleeps on
a futex in the shared mapping) and builds the ``(partition, Message)`` pairs
in C. What it cannot take itself (an unbound consumer, a partition found
expired, unusual arguments) comes back to this module's slow path.

A Consumer belongs to one thread at a time; use one per thread.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Callable, Iterable

from .. import _validate
from .._crossing import PollPath
from ..errors import Closed, Fenced, InvalidArgument, OffsetOutOfRange, Unsupported
from ..message import Message
from ..partition import MAX_OFFSET
from ..reader import Batch, Reader, Waiter
from . import gate, serde, transaction
from .isolation import Holding
from .offset import FabricOffsetStore, OffsetStore, bus_store, commit_many, committed_entry
from .model import SHARED_MEMORY, Bus, SeekPolicy

if TYPE_CHECKING:
    from typing_extensions import Self

    from .topic import Topic, TopicManager
    from ..peek import Peek

__all__ = ["Consumer", "SeekPolicy", "Message"]

_SLICE = 0.2            # seconds a blocking poll sleeps before it looks at the directory again
_EXPIRED_SLICE = 0.05   # ... when a partition reads as expired (a restart may be on its way)
_REFRESH_GAP = 0.01     # at most one directory re-read per this many seconds while expired
_IDS = itertools.count(1)
_RESOLVE_EVERY = 0.5    # seconds a transaction may hold a read_committed partition before we look at it
ISOLATIONS = ("read_uncommitted", "read_committed")
ON_LOST = ("earliest", "latest", "raise")


class Consumer(PollPath):
    """``Consumer("events", "processors")``: reads partitions given to :meth:`assign`
    (all partitions if never assigned).

    A partition this consumer has not been positioned on by a seek starts at
    the group's committed offset in the bus's own offset records (a
    :class:`~grafos.mq.offset.FabricOffsetStore` of the bus), or at the oldest
    message still held if there is none; and a commit never moves a store's
    committed offset of such a partition backwards (it raises
    :class:`~grafos.errors.InvalidArgument`: seek to rewind on purpose).

    ``poll(mgr, max_messages=100, timeout=0.0, *, spin=None)`` returns up to
    ``max_messages`` ``(partition, Message)`` pairs. ``timeout``: 0 (default)
    returns at once; a number of seconds blocks until a message arrives or the
    time passes; None blocks until a message arrives. Blocking sleeps on a
    futex and lets Ctrl-C through. Before it sleeps it polls for a while
    (``spin``), since a futex wake-up across CPUs costs tens of microseconds:
    by default (None) as long as recent waits suggest, twice the recent wait
    and at most 200 us, dropping to none on a consumer whose waits are longer
    than that (an idle one never spins); a number of seconds spins that long
    before each first sleep; 0 never spins. ``consumed`` counts what polls returned.

    ``key_deserializer`` and ``value_deserializer`` (callables ``bytes -> obj``,
    e.g. ``lambda b: json.loads(b)``) turn each polled message's key (when it
    has one) and value into objects; the message's other fields stay. They run
    in Python after the read (a consumer with one polls through Python). A
    deserializer that raises makes ``poll`` raise that error (with a note
    naming the topic, partition and offset) when the message is the first the
    poll would hand out; the messages before it in the same poll are handed
    out first. Either way the consumer's position stays before the message
    that failed, so nothing is skipped: seek past it to go on.
    ``poll_batch`` and ``peek`` hand out raw bytes, so a consumer with a
    deserializer refuses them (:class:`~grafos.errors.Unsupported`).
    """

    def __init__(self, topic: str, group: str = "default", *, max_batch: int = 1024,
                 gating: bool = False, gating_ttl: float = 30.0, check_crcs: bool = True,
                 isolation: str = "read_uncommitted", on_lost: str = "earliest",
                 key_deserializer: serde.Deserializer | None = None,
                 value_deserializer: serde.Deserializer | None = None) -> None:
        """``check_crcs``: verify each message's checksum on read (see
        :class:`~grafos.reader.Reader`); ``False`` skips it. ``isolation``:
        ``"read_uncommitted"`` (default) hands out every message as it is
        written; ``"read_committed"`` hands out transactional messages only
        once their transaction commits, never if it aborts, in partition
        order (see :mod:`grafos.mq.isolation`). ``on_lost``: where a
        ``Committed`` seek (or the first read of a partition no seek
        positioned) puts a partition whose committed offset the ring no
        longer holds (Kafka's ``auto.offset.reset``): ``"earliest"``
        (default: the oldest message still held), ``"latest"`` (the end), both
        counting the overwritten messages in :meth:`lost`, or ``"raise"``
        (:class:`~grafos.errors.OffsetOutOfRange`, naming the partition and
        both offsets; nothing moves)."""
        if isolation not in ISOLATIONS:
            raise InvalidArgument(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        if on_lost not in ON_LOST:
            raise InvalidArgument(f"on_lost must be one of {ON_LOST}, not {on_lost!r}")
        self.on_lost = on_lost
        self.isolation = isolation
        self.key_deserializer = serde.checked(key_deserializer, "key_deserializer")
        self.value_deserializer = serde.checked(value_deserializer, "value_deserializer")
        self._holding = Holding() if isolation == "read_committed" else None
        self._resolved_at = 0.0
        if not isinstance(check_crcs, bool):
            raise _validate.InvalidType(f"check_crcs must be a bool, not {type(check_crcs).__name__}")
        self.check_crcs = check_crcs
        self.topic = _validate.name(topic, "topic", 64)
        self.group = _validate.name(group, "group", 64)
        self.max_batch = _validate.integer(max_batch, "max_batch", 1, 1 << 20)
        if not isinstance(gating, bool):
            raise _validate.InvalidType(f"gating must be a bool, not {type(gating).__name__}")
        #: on a topic with on_full "block"/"raise", producers never overwrite what this
        #: consumer has not polled yet, while it polls at least every ``gating_ttl`` seconds
        self.gating = gating
        self.gating_ttl = _validate.number(gating_ttl, "gating_ttl", 0, lo_open=True)
        self._gate_name = gate.consumer_reader(f"{self.group}.{os.getpid()}.{next(_IDS)}")
        self._gate_pos: dict[int, int] = {}     # positions last published to the gate
        self._gate_at = 0.0                     # monotonic time of that publication
        self._assigned: list[int] | None = None
        self._closed = False
        self._mgr: TopicManager | None = None
        self._t: Topic | None = None
        self._reader: Reader | None = None
        self._positions: dict[int, int] = {}
        self._parts: list[int] = []
        self._holes = False     # an assigned partition was already reclaimed when the reader opened
        self._member: tuple[object, str] | None = None   # (ConsumerGroup, member) for fencing
        self._epoch = -1    # fabric metadata epoch when the topic was last re-read after an expiry
        self._next_look = 0.0   # monotonic time before which we do not re-read it again
        self.consumed = 0
        # partition -> {committed offset: messages the ring overwrote behind it}, per commit
        # met (seeking to one commit again loses nothing more)
        self._gaps: dict[int, dict[int, int]] = {}
        # partitions positioned by a seek, or whose commit was checked against the store
        # (a commit of a partition not in it must not move the store's offset back)
        self._positioned: set[int] = set()
        #: partitions a Committed seek started at the earliest offset because the
        #: commit belonged to an earlier incarnation (the topic was restarted)
        self.reset_by_incarnation = 0

    # ---- crossing processes -------------------------------------------------------
    def __reduce__(self):  # noqa: ANN204 - settings, assignment and group binding; no positions
        """A consumer crosses processes as its topic, group, batch size, assignment
        and group binding. Positions stay behind (they belong to this process's
        reader): seek in the child, from the committed offsets."""
        return (_remake, (self.topic, self.group, self.isolation, self.on_lost),
                {"max_batch": self.max_batch, "assigned": self._assigned, "member": self._member,
                 "key_deserializer": self.key_deserializer, "value_deserializer": self.value_deserializer})

    def __setstate__(self, state: dict) -> None:
        self.key_deserializer = state.get("key_deserializer")
        self.value_deserializer = state.get("value_deserializer")
        self.max_batch = state["max_batch"]
        self._assigned = state["assigned"]
        self._member = state["member"]

    # ---- assignment -----------------------------------------------------------
    def __repr__(self) -> str:
        parts = "all partitions" if self._assigned is None else f"partitions {list(self._assigned)}"
        return f"<{type(self).__name__} {self.topic!r} group {self.group!r}, {parts}>"

    def assign(self, partitions: Iterable[int]) -> None:
        try:
            parts = list(partitions)
        except TypeError:
            raise _validate.InvalidType(f"partitions must be an iterable of ints, "
                                        f"not {type(partitions).__name__}") from None
        for p in parts:
            _validate.integer(p, "partition", 0, 1 << 20)
        if len(set(parts)) != len(parts):
            raise InvalidArgument(f"duplicate partitions in {parts}")
        if self._t is not None:
            for p in parts:
                if p >= self._t.n:
                    raise InvalidArgument(f"topic {self.topic!r} has partitions 0..{self._t.n - 1}, not {p}")
        elif (remote := self._remote()) is not None:
            remote.check_assignment(self, parts)
        self._save_positions()
        self._assigned = sorted(parts)
        self._positioned &= set(parts)
        self._reader = None
        self._unbind_fast()

    def assignment(self) -> list[int]:
        if self._assigned is not None:
            return list(self._assigned)
        return list(self._parts)

    def assigned(self) -> list[int] | None:
        """The partitions given to :meth:`assign`; None if never assigned (all of them)."""
        return None if self._assigned is None else list(self._assigned)

    def _remote(self) -> Bus | None:
        """What serves this consumer's calls on the bus it last read through
        (None: the consumer reads the fabric itself, or has not read yet)."""
        m = self._mgr
        return None if m is None else m.session(self)

    def _session(self, mgr: Bus) -> Bus | None:
        """What serves this consumer's calls on ``mgr`` (None: the consumer reads
        the fabric itself); asked while the consumer is not bound to ``mgr``."""
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        return mgr.session(self)

    def bind(self, group: object, member: str) -> None:
        """Tie this consumer to a group member: commits for partitions the member
        no longer owns raise :class:`~grafos.errors.Fenced`."""
        self._member = (group, member)

    def _save_positions(self) -> None:
        if self._reader is not None:
            for p in self._parts:
                self._positions[p] = self._reader.position(p)

    def _ensure(self, mgr: TopicManager, start: bool = True) -> Reader:
        t = self._t
        if mgr is not self._mgr or t is None or not t.binding.valid or self._reader is None:
            if self._closed:
                raise self._closed_error()
            if not isinstance(mgr, Bus):
                raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
            t = mgr.topic(self.topic)
            self._open(mgr, t, start)
        return self._reader  # type: ignore[return-value]

    def _open(self, mgr: TopicManager, t: Topic, start: bool = True) -> None:
        """Open a reader on ``t``. ``start``: put partitions never positioned at
        the group's committed offsets on the bus (False: a seek of every
        partition follows at once)."""
        self._save_positions()
        parts = self._assigned if self._assigned is not None else list(range(t.n))
        for p in parts:
            if p >= t.n:
                raise InvalidArgument(f"topic {self.topic!r} has partitions 0..{t.n - 1}, not {p}")
        old = self._t
        # reader slot i is partition i (unassigned ones are None), so no id mapping per message
        wanted = set(parts)
        rd = Reader(mgr.fabric, [t.partitions[p] if p in wanted else None for p in range(t.n)],
                    max_batch=self.max_batch, check_crcs=self.check_crcs, markers=self._holding is not None,
                    topic=self.topic)
        if self._holding is not None:
            self._holding.forget(list(range(t.n)))
        bus = None
        for p in parts:
            pos = self._positions.get(p)
            same = old is not None and old.incarnation == t.incarnation and \
                old.partitions[p] is not None and t.partitions[p] is not None and \
                old.partitions[p].lease.id == t.partitions[p].lease.id
            if pos is None or not same:
                part = t.partitions[p]
                st = part.state() if part is not None else None
                earliest, latest = (st.earliest, st.latest) if st is not None else (0, 0)
                if pos is None and p not in self._positioned and start:
                    # never positioned: where the group is on the bus
                    bus = bus or FabricOffsetStore(mgr)
                    pos = self._committed_start(bus, t, p, earliest, latest)
                else:
                    pos = earliest      # a fresh lease (restart): everything in it is new
            rd.seek(p, pos)
        self._parts = list(parts)
        self._mgr, self._t, self._reader = mgr, t, rd
        self._holes = any(t.partitions[p] is None for p in parts)
        # these publish positions, hold messages or deserialize them: the slow path
        if not self.gating and self._holding is None and not self._deserializing:
            self._bind_fast(mgr, t.binding, rd.poller, rd, self._holes, self.topic)
        else:
            self._gate_pos = {}

    # ---- positions ---------------------------------------------------------------
    def seek(self, mgr: Bus, /, store_or_partition=None, policy: SeekPolicy | str | int | None = None) -> None:
        """``seek(mgr, store, SeekPolicy.Committed|Earliest|Latest)`` for every assigned
        partition; ``seek(mgr, SeekPolicy.Earliest|Latest)`` needs no store. A policy
        may be given by name (``seek(mgr, "earliest")``). One
        partition: :meth:`seek_partition` (``seek(mgr, partition, offset)`` also works)."""
        if self._closed:
            raise self._closed_error()
        if isinstance(store_or_partition, (SeekPolicy, str)) and policy is None:
            store_or_partition, policy = None, store_or_partition
        if isinstance(policy, str):
            policy = SeekPolicy.of(policy)
        if not (isinstance(store_or_partition, int) and not isinstance(store_or_partition, bool)) \
                and (s := self._session(mgr)) is not None:
            self._mgr = mgr
            s.seek(self, store_or_partition, policy)
            self._positioned.update(s.positions(self))
            return
        if isinstance(store_or_partition, int) and not isinstance(store_or_partition, bool):
            self.seek_partition(mgr, store_or_partition, policy)   # type: ignore[arg-type]
            return
        if not isinstance(policy, SeekPolicy):
            raise _validate.InvalidType(f"policy must be a SeekPolicy, not {type(policy).__name__}")
        store = store_or_partition
        if policy is SeekPolicy.Committed and not isinstance(store, OffsetStore):
            raise _validate.InvalidType("SeekPolicy.Committed needs an offset store")
        rd = self._ensure(mgr, start=False)
        t = self._t
        assert t is not None
        offs, gaps = {}, {p: dict(g) for p, g in self._gaps.items()}
        for p in self._parts:          # all first: on_lost="raise" moves nothing
            part = t.partitions[p]
            st = part.state() if part is not None else None
            earliest, latest = (st.earliest, st.latest) if st is not None else (0, 0)
            if policy is SeekPolicy.Earliest:
                offs[p] = earliest
            elif policy is SeekPolicy.Latest:
                offs[p] = latest
            else:
                offs[p] = self._committed_start(store, t, p, earliest, latest, gaps)
        self._gaps = gaps
        for p, off in offs.items():
            rd.seek(p, off)
        self._positioned.update(offs)
        if self._holding is not None:
            self._holding.forget(list(self._parts))

    def _committed_start(self, store: OffsetStore, t: Topic, p: int, earliest: int, latest: int,
                         gaps: dict[int, dict[int, int]] | None = None) -> int:
        """Where ``SeekPolicy.Committed`` puts partition ``p``: the commit, unless it
        belongs to another incarnation of the partition (the topic was restarted
        since): then everything in the fresh ring is new to the group. A commit
        the ring has overwritten since is counted in ``gaps`` (the consumer's
        own when None) and resolved by ``on_lost``."""
        entry = committed_entry(store, self.group, self.topic, p)
        if entry is None:
            return earliest
        if entry.incarnation is not None and entry.incarnation != t.partition_incarnation(p):
            self.reset_by_incarnation += 1
            return earliest
        # no incarnation recorded: a commit beyond the end can only predate a restart
        pos, lost = self._start_of(p, entry.offset, earliest, latest)
        if lost:
            (self._gaps if gaps is None else gaps).setdefault(p, {})[entry.offset] = lost
        return pos

    def _start_of(self, p: int, committed: int, earliest: int, latest: int) -> tuple[int, int]:
        """Where committed offset ``committed`` puts partition ``p``, whose ring
        holds ``earliest`` to ``latest``, and how many messages it lost behind
        that commit (on every backend): the commit itself, ``earliest`` for a
        commit beyond the end, else ``on_lost`` decides."""
        if committed > latest:
            return earliest, 0
        if committed >= earliest:
            return committed, 0
        if self.on_lost == "raise":
            raise OffsetOutOfRange(topic=self.topic, group=self.group, partition=p, committed=committed,
                                   earliest=earliest)
        return latest if self.on_lost == "latest" else earliest, earliest - committed

    def seek_partition(self, mgr: Bus, /, partition: int, offset: int) -> None:
        """Put one assigned partition at ``offset`` (at most its end)."""
        if self._closed:
            raise self._closed_error()
        if (s := self._session(mgr)) is not None:
            self._mgr = mgr
            s.seek_partition(self, partition, offset)
            self._positioned.add(partition)
            return
        rd = self._ensure(mgr)
        i = self._index(partition)
        _validate.integer(offset, "offset", 0, MAX_OFFSET)
        part = self._t.partitions[partition]  # type: ignore[union-attr]
        latest = part.state().latest if part is not None else 0
        if offset > latest:
            raise InvalidArgument(f"offset {offset} is beyond the end ({latest}) of partition {partition}")
        rd.seek(i, offset)
        self._positioned.add(partition)
        if self._holding is not None:
            self._holding.forget([partition])

    def _index(self, partition: int) -> int:
        if partition not in self._parts:
            raise InvalidArgument(f"partition {partition} is not assigned to this consumer "
                                  f"(assigned: {self._parts})")
        return partition

    def position(self, partition: int) -> int:
        """The next offset this consumer will read from ``partition``."""
        if (remote := self._remote()) is not None:
            return remote.position(self, partition)
        if self._reader is None:
            if partition in self._positions:
                return self._positions[partition]
            raise InvalidArgument("consumer has not polled or sought yet")
        pos = self._reader.position(self._index(partition))
        return pos if self._holding is None else self._holding.position(partition, pos)

    def positions(self) -> dict[int, int]:
        if (remote := self._remote()) is not None:
            return remote.positions(self)
        if self._reader is None:
            return dict(self._positions)
        if self._holding is not None:
            return {p: self._holding.position(p, self._reader.position(p)) for p in self._parts}
        return {p: self._reader.position(p) for p in self._parts}

    @property
    def aborted(self) -> int:
        """Messages a ``read_committed`` consumer skipped: their transaction aborted."""
        return self._holding.aborted if self._holding is not None else 0

    def lost(self) -> dict[int, int]:
        """Per partition that lost something: messages overwritten before this
        consumer read them, while it polled or behind a committed offset it
        sought. ``{}``: nothing lost."""
        if (remote := self._remote()) is not None:
            return remote.lost(self)
        rd = self._reader
        out = {p: sum(g.values()) for p, g in self._gaps.items()}
        if rd is not None:
            for p in self._parts:
                n = rd.counters(p)["lost"]
                if n:
                    out[p] = out.get(p, 0) + n
        return {p: n for p, n in sorted(out.items()) if n > 0}

    def lag(self, mgr: Bus, /) -> dict[int, int]:
        """Per assigned partition: offsets between the position and the end (a message
        larger than a slot counts as one per slot it spans)."""
        if (s := self._session(mgr)) is not None:
            self._mgr = mgr
            return s.lag(self)
        rd = self._ensure(mgr)
        out = {}
        for p in self._parts:
            part = self._t.partitions[p]  # type: ignore[union-attr]
            latest = part.state().latest if part is not None else 0
            out[p] = max(0, latest - rd.position(p))
        return out

    # ---- reading -------------------------------------------------------------------
    @property
    def _deserializing(self) -> bool:
        return self.key_deserializer is not None or self.value_deserializer is not None

    # poll() is PollPath's (C); it comes here when it cannot take the call itself,
    # with the arguments exactly as given (always, on a consumer with a deserializer).
    def _poll_fallback(self, mgr: TopicManager, max_messages: int = 100, timeout: float | None = 0.0,
                       *, spin: float | None = None) -> list[tuple[int, Message]]:
        rd = self._reader
        if rd is None or mgr is not self._mgr or not self._t.binding.valid:  # type: ignore[union-attr]
            if self._closed:
                raise self._closed_error()
            if (s := self._session(mgr)) is not None:
                self._mgr = mgr
                msgs = self._deserialize(mgr, s.poll(self, max_messages, timeout))
                self.consumed += len(msgs)
                return msgs
            rd = self._ensure(mgr)
        if type(max_messages) is not int or max_messages < 1:
            _validate.integer(max_messages, "max_messages", 1)
        if timeout.__class__ is not float or timeout != timeout:
            _validate.timeout(timeout)
        if self._holding is not None:
            msgs = self._deserialize(mgr, self._poll_committed(mgr, max_messages, timeout, spin))
            self.consumed += len(msgs)
            return msgs
        if timeout is not None and timeout <= 0:
            msgs = rd.poll(max_messages, timeout, None, spin)
            if not msgs and len(rd) and self._any_expired(rd) and self._maybe_refresh(mgr):
                msgs = self._reader.poll(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
        else:
            msgs = self._wait(mgr, lambda r, t: r.poll(max_messages, t, None, spin), timeout)
        msgs = self._deserialize(mgr, msgs)     # before the gate hears of the positions
        self.consumed += len(msgs)
        if self.gating:
            self._publish(mgr, len(msgs) < max_messages)
        return msgs

    def _deserialize(self, mgr: TopicManager, msgs: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """``msgs`` through the deserializers (if any), up to the first that fails:
        from it on, every partition is put back at its first message not handed out."""
        kd, vd = self.key_deserializer, self.value_deserializer
        if (kd is None and vd is None) or not msgs:
            return msgs
        out = []
        for i, (p, m) in enumerate(msgs):
            which = "key_deserializer"
            try:
                k = m[1] if kd is None or m[1] is None else kd(m[1])
                which = "value_deserializer"
                v = m[2] if vd is None else vd(m[2])
            except Exception as e:
                rest = msgs[i:]
                back: dict[int, int] = {}
                for q, r in rest:
                    back[q] = min(back.get(q, r[0]), r[0])
                for q, off in back.items():
                    self.seek_partition(mgr, q, off)
                if out:
                    return out
                serde.add_note(e, f"grafos: {which} failed on topic {self.topic!r} partition {p} offset {m[0]}; "
                               "the consumer stays before it (seek past it to go on)")
                raise
            out.append((p, m._replace_kv(k, v)))
        return out

    def _poll_committed(self, mgr: TopicManager, max_messages: int, timeout: float | None,
                        spin: float | None) -> list[tuple[int, Message]]:
        """read_committed: read raw batches (markers included) into the holding
        buffers until something is released or the time passes. A transaction
        that holds a partition up for long is looked at: if its producer's
        registration expired, it is aborted here (whoever looks next)."""
        h = self._holding
        assert h is not None
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)

        def once(r: Reader, t: float) -> Batch:
            return r.poll_batch(self.max_batch, t, None, spin)
        while True:
            if h.ready:
                return h.take(max_messages)
            left = _SLICE if deadline is None else min(_SLICE, max(0.0, deadline - time.monotonic()))
            b = once(self._reader, 0.0)  # type: ignore[arg-type]
            if not len(b) and left > 0:
                b = self._wait(mgr, once, left)  # type: ignore[assignment]
            h.feed(b)
            if not h.ready:
                self._unstick(mgr)
            if h.ready or (deadline is not None and time.monotonic() >= deadline):
                return h.take(max_messages)

    def _unstick(self, mgr: TopicManager) -> None:
        h = self._holding
        now = time.monotonic()
        if now - self._resolved_at < _RESOLVE_EVERY:
            return
        self._resolved_at = now
        waiting = list(h.waiting(_RESOLVE_EVERY))  # type: ignore[union-attr]
        for producer in {ref[0] for _, ref in waiting}:
            transaction.resolve(mgr, producer)
        for p, ref in waiting:
            # caught up with the partition, the transaction over, and still no marker: none will come
            if self._reader.position(p) >= self._latest(p) and transaction.finished(mgr, *ref):  # type: ignore[union-attr]
                h.abandon(p, ref)  # type: ignore[union-attr]

    def pending_commit(self, offsets: dict[int, int] | None = None
                       ) -> tuple[str, str, dict[int, int], dict[int, int] | None]:
        """(group, topic, offsets, incarnations) that :meth:`commit` would commit,
        checked, not committed (a transaction commits them with its messages)."""
        pos = self.positions()
        if offsets is not None:
            for p, off in offsets.items():
                if p not in pos:
                    raise InvalidArgument(f"partition {p} is not assigned to this consumer")
                _validate.integer(off, "offset", 0)
                latest = self._latest(p)
                if off > latest:
                    raise InvalidArgument(f"cannot commit offset {off} for partition {p}: beyond its end ({latest})")
            pos = dict(offsets)
        t = self._t
        incs = {p: t.partition_incarnation(p) for p in pos if t.lease_ids[p]} if t is not None else None
        return self.group, self.topic, pos, incs

    def poll_batch(self, mgr: Bus, /, max_messages: int = 1024, timeout: float | None = 0.0,
                   *, spin: float | None = None) -> Batch:
        """Like :meth:`poll`, as a :class:`~grafos.reader.Batch` of numpy arrays over
        one buffer (valid until the next poll)."""
        if self._deserializing:
            raise Unsupported(f"consumer of {self.topic!r} has a deserializer: poll_batch hands out raw rows; "
                              "use poll")
        rd = self._reader
        if rd is None or mgr is not self._mgr or not self._t.binding.valid:  # type: ignore[union-attr]
            if self._closed:
                raise self._closed_error()
            if (s := self._session(mgr)) is not None:
                self._mgr = mgr
                b = s.poll_batch(self, max_messages, timeout)
                self.consumed += len(b)
                return b
            rd = self._ensure(mgr)
        _validate.integer(max_messages, "max_messages", 1)
        _validate.timeout(timeout)
        if self._holding is not None:
            raise Unsupported("poll_batch hands out raw rows, transactional or not: a read_committed consumer "
                              "reads with poll")
        if timeout is not None and timeout <= 0:
            b = rd.poll_batch(max_messages, timeout, None, spin)
            if not len(b) and len(rd) and self._any_expired(rd) and self._maybe_refresh(mgr):
                b = self._reader.poll_batch(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
        else:
            # a consumer that keeps up usually finds messages waiting: one look
            # first, the waiting loop only when there are none
            b = rd.poll_batch(max_messages, 0.0, None, 0.0)
            if not len(b):
                b = self._wait(mgr, lambda r, t: r.poll_batch(max_messages, t, None, spin), timeout)
        self.consumed += len(b)
        if self.gating:
            self._publish(mgr, len(b) < max_messages)
        return b

    def _publish(self, mgr: TopicManager, caught_up: bool) -> None:
        """Move this consumer's gate to its positions and renew its lease: when it
        caught up, when a position moved a quarter of the ring, or when a third
        of the lease has passed (not on every poll: it takes the fabric lock)."""
        t = self._t
        if t is None or t.config.on_full == "overwrite":
            return
        pos = self.positions()
        mono = time.monotonic()
        step = max(1, t.config.partition_capacity // 4)
        moved = any(pos[p] - self._gate_pos.get(p, -step) >= step for p in pos)
        if moved or (caught_up and pos != self._gate_pos) or mono - self._gate_at > self.gating_ttl / 3:
            gate.hold(mgr, t, self._gate_name, gate.CONSUMER, pos, int(self.gating_ttl * 1e9))
            self._gate_pos, self._gate_at = pos, mono

    def _wait(self, mgr: TopicManager, once: Callable[[Reader, float], list | Batch],
              timeout: float | None) -> list | Batch:
        """Block in slices: a topic deleted or restarted by another process while we
        sleep writes nothing to the rings we sleep on, so between slices we look at
        the directory (only when a partition reads as expired and the metadata changed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rd = self._reader
            assert rd is not None
            expired = len(rd) > 0 and self._any_expired(rd)
            if expired and self._maybe_refresh(mgr):
                rd = self._reader
                assert rd is not None
            left = _EXPIRED_SLICE if expired else _SLICE
            if self.gating:
                self._publish(mgr, True)    # producers may be waiting for this consumer
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            out = once(rd, left)
            if len(out) or (deadline is not None and time.monotonic() >= deadline):
                return out

    def _any_expired(self, rd: Reader) -> bool:
        # C counted the expired rings during the poll; holes (partitions already
        # reclaimed when the topic was opened) only change when the reader does
        return rd.expired_seen > 0 or self._holes

    def _maybe_refresh(self, mgr: TopicManager) -> bool:
        """A partition read as expired: if the directory changed since we last looked
        (the topic was restarted, deleted or recreated, here or by another process),
        re-read it and pick up the fresh leases. Returns True if it re-read.
        Raises NotFound if the topic was deleted."""
        epoch = mgr.fabric.meta_epoch()
        if self._t is not None and self._t.binding.valid and (
                epoch == self._epoch or time.monotonic() < self._next_look):
            return False
        t = mgr.refresh(self.topic)
        self._epoch = epoch
        self._next_look = time.monotonic() + _REFRESH_GAP
        self._open(mgr, t)
        return True

    def wait(self, mgr: Bus, /, timeout: float | None = None) -> bool:
        """Block until :meth:`poll` would find a message (or ``timeout`` seconds pass;
        None: no limit) without reading one: positions do not move, so a caller
        that gives up leaves the consumer where it was. True if something is
        readable. A thread may wait for the consumer's owner while the owner
        waits for it (this is how :mod:`grafos.aio` awaits messages)."""
        if (s := self._session(mgr)) is not None:
            self._mgr = mgr
            return s.wait(self, timeout)
        return self._ensure(mgr).wait(timeout)

    def wait_request(self, waiter: Waiter, mgr: Bus, timeout: float | None = None) -> int:
        """Ask ``waiter`` (a :class:`~grafos.reader.Waiter`, which an event loop
        watches) to wait as :meth:`wait` does, in its own thread; returns the
        request's number. Reads nothing."""
        return waiter.request(self._ensure(mgr), timeout)

    # ---- committing -------------------------------------------------------------
    def commit(self, store: OffsetStore, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit the current positions (or ``offsets``: partition -> next offset to
        read) of the assigned partitions. Returns what was committed."""
        if not isinstance(store, OffsetStore):
            raise _validate.InvalidType(f"store must be an offset store, not {type(store).__name__}")
        _, _, pos, incs = self.pending_commit(offsets)
        if self._member is not None:        # fenced: a member's partitions are its own
            group, member = self._member
            group.commit(store, member, self.topic, pos, incarnations=incs)  # type: ignore[attr-defined]
            return pos
        if offsets is None:
            self._check_rewind(store, pos)
        mgr = self._mgr
        if mgr is not None and self._remote() is None:     # read from the fabric: its gate follows the commit
            store = bus_store(store, mgr)
            gate.check_store(mgr, self._t if self._t is not None else self.topic, self.group, store)
        commit_many(store, self.group, self.topic, pos, incs)
        self._positioned.update(pos)        # from here on the store follows this consumer
        return pos

    def _check_rewind(self, store: OffsetStore, pos: dict[int, int]) -> None:
        """A partition no seek positioned must not move the store's committed
        offset backwards (it started where the bus's records said, which need
        not be where this store is)."""
        for p, off in pos.items():
            if p in self._positioned:
                continue
            e = committed_entry(store, self.group, self.topic, p)
            if e is None or e.offset <= off:
                continue
            t = self._t
            if e.incarnation is not None and t is not None and t.lease_ids[p] and \
                    e.incarnation != t.partition_incarnation(p):
                continue        # a commit of an earlier life of the partition: nothing to rewind
            raise InvalidArgument(
                f"commit would move group {self.group!r}'s committed offset of {self.topic!r} partition {p} "
                f"back from {e.offset} to {off}: this consumer was not positioned on it by a seek; "
                f"seek(mgr, store, SeekPolicy.Committed) first (or seek to rewind on purpose)")

    # ---- in place ------------------------------------------------------------------
    def peek(self, mgr: Bus, /, max_messages: int = 100) -> "Peek":
        """Up to ``max_messages`` from the assigned partitions, read in place without
        waiting: values are views into the rings, checked for overwrite when the
        block is left (see :mod:`grafos.peek`). Positions move past them as with
        :meth:`poll`."""
        if (mgr is not self._mgr or self._reader is None) and not getattr(mgr, "capabilities", SHARED_MEMORY).peeks:
            raise Unsupported(f"consumer of {self.topic!r}: peeks read messages in place in shared memory, "
                              f"which this bus ({type(mgr).__name__}) does not have; use poll")
        if self._deserializing:
            raise Unsupported(f"consumer of {self.topic!r} has a deserializer: peek hands out raw bytes in "
                              "place; use poll")
        rd = self._ensure(mgr)
        if max_messages.__class__ is not int or max_messages < 1:
            _validate.integer(max_messages, "max_messages", 1)
        if self._holding is not None:
            raise Unsupported("peek reads in place, before a transaction's outcome is known: a read_committed "
                              "consumer reads with poll")
        pk = rd.peek(max_messages)
        self.consumed += len(pk)
        return pk

    def _latest(self, p: int) -> int:
        """The end of partition ``p`` (for checking a commit)."""
        if (remote := self._remote()) is not None:
            return remote.latest(self, p)
        part = self._t.partitions[p] if self._t is not None else None  # type: ignore[index]
        return part.state().latest if part is not None else 0

    def close(self) -> None:
        if (remote := self._remote()) is not None:
            remote.close_consumer(self)
        elif self.gating and self._mgr is not None and not self._mgr.fabric.closed:
            gate.release(self._mgr, self.topic, self._gate_name)
        self._save_positions()
        self._unbind_fast()
        self._reader = None
        self._t = None
        self._mgr = None
        self._closed = True

    def _closed_error(self) -> Closed:
        return Closed(f"consumer of {self.topic!r} in group {self.group!r} is closed: make a new one")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ += ["Fenced"]


def _remake(topic: str, group: str, isolation: str, on_lost: str = "earliest") -> Consumer:
    return Consumer(topic, group, isolation=isolation, on_lost=on_lost)
