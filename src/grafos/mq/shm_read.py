"""A consumer's session on a shared-memory bus: what serves a
:class:`~grafos.mq.consumer.Consumer`'s calls on a
:class:`~grafos.mq.topic.TopicManager` (in-process, named or file).

The session opens a :class:`~grafos.reader.Reader` on the assigned partitions
and binds the consumer's crossing (:class:`~grafos._crossing.PollPath`) to it,
so ``poll`` reads the rings and builds the messages in C with no Python
between; what the crossing hands back (an unbound consumer, a partition found
expired, unusual arguments) lands here. It also holds what only a
shared-memory reader has: positions kept across re-opens, ``read_committed``'s
holding buffers, the gate a gating consumer publishes, and the messages lost
behind a commit the ring no longer holds.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .. import _validate
from ..errors import InvalidArgument, Unsupported
from ..message import Message
from ..partition import MAX_OFFSET
from ..reader import Batch, Reader, Waiter
from . import gate, transaction
from .isolation import Holding
from .model import SeekPolicy
from .offset import FabricOffsetStore, OffsetStore, bus_store, committed_entry

if TYPE_CHECKING:
    from ..peek import Peek
    from .consumer import Consumer
    from .topic import Topic, TopicManager

__all__ = ["ShmReadSession"]

_SLICE = 0.2            # seconds a blocking poll sleeps before it looks at the directory again
_EXPIRED_SLICE = 0.05   # ... when a partition reads as expired (a restart may be on its way)
_REFRESH_GAP = 0.01     # at most one directory re-read per this many seconds while expired
_RESOLVE_EVERY = 0.5    # seconds a transaction may hold a read_committed partition before we look at it


class ShmReadSession:
    """One consumer's reading of one shared-memory bus. A consumer belongs to one
    thread at a time, and so does its session."""

    def __init__(self, mgr: TopicManager, consumer: Consumer) -> None:
        self.mgr = mgr
        self._holding = Holding() if consumer.isolation == "read_committed" else None
        self._resolved_at = 0.0
        self._t: Topic | None = None
        self._reader: Reader | None = None
        self._positions: dict[int, int] = {}    # saved when the reader is dropped
        self._parts: list[int] = []
        self._holes = False     # an assigned partition was already reclaimed when the reader opened
        self._epoch = -1    # fabric metadata epoch when the topic was last re-read after an expiry
        self._next_look = 0.0   # monotonic time before which we do not re-read it again
        # partition -> {committed offset: messages the ring overwrote behind it}, per commit
        # met (seeking to one commit again loses nothing more)
        self._gaps: dict[int, dict[int, int]] = {}
        self._gate_pos: dict[int, int] = {}     # positions last published to the gate
        self._gate_at = 0.0                     # monotonic time of that publication
        self._gate_view = gate.GateView()       # the other readers' records, between publications

    # ---- the reader ------------------------------------------------------------------
    def _save_positions(self) -> None:
        if self._reader is not None:
            for p in self._parts:
                self._positions[p] = self._reader.position(p)

    def _ensure(self, c: Consumer, start: bool = True) -> Reader:
        t = self._t
        if t is None or not t.binding.valid or self._reader is None:
            if c._closed:
                raise c._closed_error()
            t = self.mgr.topic(c.topic)
            self._open(c, t, start)
        return self._reader  # type: ignore[return-value]

    def _open(self, c: Consumer, t: Topic, start: bool = True) -> None:
        """Open a reader on ``t``. ``start``: put partitions never positioned at
        the group's committed offsets on the bus (False: a seek of every
        partition follows at once)."""
        self._save_positions()
        assigned = c.assigned()
        parts = assigned if assigned is not None else list(range(t.n))
        for p in parts:
            if p >= t.n:
                raise InvalidArgument(f"topic {c.topic!r} has partitions 0..{t.n - 1}, not {p}")
        old = self._t
        # reader slot i is partition i (unassigned ones are None), so no id mapping per message
        wanted = set(parts)
        rd = Reader(self.mgr.fabric, [t.partitions[p] if p in wanted else None for p in range(t.n)],
                    max_batch=c.max_batch, check_crcs=c.check_crcs, markers=self._holding is not None,
                    topic=c.topic)
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
                if pos is None and p not in c._positioned and start:
                    # never positioned: where the group is on the bus
                    bus = bus or FabricOffsetStore(self.mgr)
                    pos = self._committed_start(c, bus, t, p, earliest, latest)
                else:
                    pos = earliest      # a fresh lease (restart): everything in it is new
            rd.seek(p, pos)
        self._parts = list(parts)
        self._t, self._reader = t, rd
        self._holes = any(t.partitions[p] is None for p in parts)
        # these publish positions, hold messages or deserialize them: the slow path
        if not c.gating and self._holding is None and not c._deserializing:
            c._bind_fast(self.mgr, t.binding, rd.poller, rd, self._holes, c.topic)
        else:
            self._gate_pos = {}

    def reassign(self, c: Consumer, partitions: list[int]) -> None:
        """``c`` is about to read ``partitions``: refuse ones the topic lacks, and
        drop the reader of the old ones (their positions are kept)."""
        if self._t is not None:
            for p in partitions:
                if p >= self._t.n:
                    raise InvalidArgument(f"topic {c.topic!r} has partitions 0..{self._t.n - 1}, not {p}")
        self._save_positions()
        self._reader = None

    # ---- positions ---------------------------------------------------------------
    def seek(self, c: Consumer, store: OffsetStore | None, policy: SeekPolicy | None) -> None:
        if not isinstance(policy, SeekPolicy):
            raise _validate.InvalidType(f"policy must be a SeekPolicy, not {type(policy).__name__}")
        if policy is SeekPolicy.Committed and not isinstance(store, OffsetStore):
            raise _validate.InvalidType("SeekPolicy.Committed needs an offset store")
        rd = self._ensure(c, start=False)
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
                offs[p] = self._committed_start(c, store, t, p, earliest, latest, gaps)  # type: ignore[arg-type]
        self._gaps = gaps
        for p, off in offs.items():
            rd.seek(p, off)
        if self._holding is not None:
            self._holding.forget(list(self._parts))

    def _committed_start(self, c: Consumer, store: OffsetStore, t: Topic, p: int, earliest: int, latest: int,
                         gaps: dict[int, dict[int, int]] | None = None) -> int:
        """Where ``SeekPolicy.Committed`` puts partition ``p``: the commit, unless it
        belongs to another incarnation of the partition (the topic was restarted
        since): then everything in the fresh ring is new to the group. A commit
        the ring has overwritten since is counted in ``gaps`` (the session's
        own when None) and resolved by ``on_lost``."""
        entry = committed_entry(store, c.group, c.topic, p)
        if entry is None:
            return earliest
        if entry.incarnation is not None and entry.incarnation != t.partition_incarnation(p):
            c.reset_by_incarnation += 1
            return earliest
        # no incarnation recorded: a commit beyond the end can only predate a restart
        pos, lost = c._start_of(p, entry.offset, earliest, latest)
        if lost:
            (self._gaps if gaps is None else gaps).setdefault(p, {})[entry.offset] = lost
        return pos

    def seek_partition(self, c: Consumer, partition: int, offset: int) -> None:
        rd = self._ensure(c)
        i = self._index(partition)
        _validate.integer(offset, "offset", 0, MAX_OFFSET)
        part = self._t.partitions[partition]  # type: ignore[union-attr]
        latest = part.state().latest if part is not None else 0
        if offset > latest:
            raise InvalidArgument(f"offset {offset} is beyond the end ({latest}) of partition {partition}")
        rd.seek(i, offset)
        if self._holding is not None:
            self._holding.forget([partition])

    def _index(self, partition: int) -> int:
        if partition not in self._parts:
            raise InvalidArgument(f"partition {partition} is not assigned to this consumer "
                                  f"(assigned: {self._parts})")
        return partition

    def position(self, c: Consumer, partition: int) -> int:
        if self._reader is None:
            if partition in self._positions:
                return self._positions[partition]
            raise InvalidArgument("consumer has not polled or sought yet")
        pos = self._reader.position(self._index(partition))
        return pos if self._holding is None else self._holding.position(partition, pos)

    def positions(self, c: Consumer) -> dict[int, int]:
        if self._reader is None:
            return dict(self._positions)
        if self._holding is not None:
            return {p: self._holding.position(p, self._reader.position(p)) for p in self._parts}
        return {p: self._reader.position(p) for p in self._parts}

    def aborted(self, c: Consumer) -> int:
        return self._holding.aborted if self._holding is not None else 0

    def lost(self, c: Consumer) -> dict[int, int]:
        rd = self._reader
        out = {p: sum(g.values()) for p, g in self._gaps.items()}
        if rd is not None:
            for p in self._parts:
                n = rd.counters(p)["lost"]
                if n:
                    out[p] = out.get(p, 0) + n
        return {p: n for p, n in sorted(out.items()) if n > 0}

    def lag(self, c: Consumer) -> dict[int, int]:
        rd = self._ensure(c)
        out = {}
        for p in self._parts:
            part = self._t.partitions[p]  # type: ignore[union-attr]
            latest = part.state().latest if part is not None else 0
            out[p] = max(0, latest - rd.position(p))
        return out

    def latest(self, c: Consumer, partition: int) -> int:
        """The end of partition ``partition`` (for checking a commit)."""
        part = self._t.partitions[partition] if self._t is not None else None  # type: ignore[index]
        return part.state().latest if part is not None else 0

    # ---- reading -------------------------------------------------------------------
    def poll(self, c: Consumer, max_messages: int, timeout: float | None,
             spin: float | None = None) -> list[tuple[int, Message]]:
        """Read through Python what the crossing did not take (raw messages: the
        consumer deserializes them)."""
        rd = self._ensure(c)
        if type(max_messages) is not int or max_messages < 1:
            _validate.integer(max_messages, "max_messages", 1)
        if timeout.__class__ is not float or timeout != timeout:
            _validate.timeout(timeout)
        if self._holding is not None:
            return self._poll_committed(c, max_messages, timeout, spin)
        if timeout is not None and timeout <= 0:
            msgs = rd.poll(max_messages, timeout, None, spin)
            if not msgs and len(rd) and self._any_expired(rd) and self._maybe_refresh(c):
                msgs = self._reader.poll(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
            return msgs
        return self._wait(c, lambda r, t: r.poll(max_messages, t, None, spin), timeout)  # type: ignore[return-value]

    def polled(self, c: Consumer, count: int, max_messages: int) -> None:
        """``c`` handed out ``count`` messages of a poll for ``max_messages``: a
        gating consumer's gate follows."""
        if c.gating:
            self._publish(c, count < max_messages)

    def _poll_committed(self, c: Consumer, max_messages: int, timeout: float | None,
                        spin: float | None) -> list[tuple[int, Message]]:
        """read_committed: read raw batches (markers included) into the holding
        buffers until something is released or the time passes. A transaction
        that holds a partition up for long is looked at: if its producer's
        registration expired, it is aborted here (whoever looks next)."""
        h = self._holding
        assert h is not None
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)

        def once(r: Reader, t: float) -> Batch:
            return r.poll_batch(c.max_batch, t, None, spin)
        while True:
            if h.ready:
                return h.take(max_messages)
            left = _SLICE if deadline is None else min(_SLICE, max(0.0, deadline - time.monotonic()))
            b = once(self._reader, 0.0)  # type: ignore[arg-type]
            if not len(b) and left > 0:
                b = self._wait(c, once, left)  # type: ignore[assignment]
            h.feed(b)
            if not h.ready:
                self._unstick()
            if h.ready or (deadline is not None and time.monotonic() >= deadline):
                return h.take(max_messages)

    def _unstick(self) -> None:
        h = self._holding
        now = time.monotonic()
        if now - self._resolved_at < _RESOLVE_EVERY:
            return
        self._resolved_at = now
        waiting = list(h.waiting(_RESOLVE_EVERY))  # type: ignore[union-attr]
        for producer in {ref[0] for _, ref in waiting}:
            transaction.resolve(self.mgr, producer)
        for p, ref in waiting:
            # caught up with the partition, the transaction over, and still no marker: none will come
            if self._reader.position(p) >= self._latest(p) and \
                    transaction.finished(self.mgr, *ref):  # type: ignore[union-attr]
                h.abandon(p, ref)  # type: ignore[union-attr]

    def _latest(self, p: int) -> int:
        part = self._t.partitions[p] if self._t is not None else None
        return part.state().latest if part is not None else 0

    def poll_batch(self, c: Consumer, max_messages: int, timeout: float | None,
                   spin: float | None = None) -> Batch:
        rd = self._ensure(c)
        _validate.integer(max_messages, "max_messages", 1)
        _validate.timeout(timeout)
        if self._holding is not None:
            raise Unsupported("poll_batch hands out raw rows, transactional or not: a read_committed consumer "
                              "reads with poll")
        if timeout is not None and timeout <= 0:
            b = rd.poll_batch(max_messages, timeout, None, spin)
            if not len(b) and len(rd) and self._any_expired(rd) and self._maybe_refresh(c):
                b = self._reader.poll_batch(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
        else:
            # a consumer that keeps up usually finds messages waiting: one look
            # first, the waiting loop only when there are none
            b = rd.poll_batch(max_messages, 0.0, None, 0.0)
            if not len(b):
                b = self._wait(c, lambda r, t: r.poll_batch(max_messages, t, None, spin), timeout)  # type: ignore
        return b

    def _publish(self, c: Consumer, caught_up: bool) -> None:
        """Move the consumer's gate to its positions and renew its lease: when it
        caught up, when a position moved half the ring, or when a third of the
        lease has passed (not on every poll: it takes the fabric lock). Half the
        ring is when a TCP receiver updates its window: a blocked producer gets
        room in runs long enough to fill while this consumer reads the rest."""
        t = self._t
        if t is None or t.config.on_full == "overwrite":
            return
        pos = self.positions(c)
        mono = time.monotonic()
        step = max(1, t.config.partition_capacity // 2)
        moved = any(pos[p] - self._gate_pos.get(p, -step) >= step for p in pos)
        if moved or (caught_up and pos != self._gate_pos) or mono - self._gate_at > c.gating_ttl / 3:
            gate.hold(self.mgr, t, c._gate_name, gate.CONSUMER, pos, int(c.gating_ttl * 1e9),
                      view=self._gate_view)
            self._gate_pos, self._gate_at = pos, mono

    def _wait(self, c: Consumer, once: Callable[[Reader, float], list | Batch],
              timeout: float | None) -> list | Batch:
        """Block in slices: a topic deleted or restarted by another process while we
        sleep writes nothing to the rings we sleep on, so between slices we look at
        the directory (only when a partition reads as expired and the metadata changed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rd = self._reader
            assert rd is not None
            expired = len(rd) > 0 and self._any_expired(rd)
            if expired and self._maybe_refresh(c):
                rd = self._reader
                assert rd is not None
            left = _EXPIRED_SLICE if expired else _SLICE
            if c.gating:
                self._publish(c, True)    # producers may be waiting for this consumer
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            out = once(rd, left)
            if len(out) or (deadline is not None and time.monotonic() >= deadline):
                return out

    def _any_expired(self, rd: Reader) -> bool:
        # C counted the expired rings during the poll; holes (partitions already
        # reclaimed when the topic was opened) only change when the reader does
        return rd.expired_seen > 0 or self._holes

    def _maybe_refresh(self, c: Consumer) -> bool:
        """A partition read as expired: if the directory changed since we last looked
        (the topic was restarted, deleted or recreated, here or by another process),
        re-read it and pick up the fresh leases. Returns True if it re-read.
        Raises NotFound if the topic was deleted."""
        epoch = self.mgr.fabric.meta_epoch()
        if self._t is not None and self._t.binding.valid and (
                epoch == self._epoch or time.monotonic() < self._next_look):
            return False
        t = self.mgr.refresh(c.topic)
        self._epoch = epoch
        self._next_look = time.monotonic() + _REFRESH_GAP
        self._open(c, t)
        return True

    def wait(self, c: Consumer, timeout: float | None) -> bool:
        return self._ensure(c).wait(timeout)

    def wait_request(self, c: Consumer, waiter: Waiter, timeout: float | None) -> int:
        return waiter.request(self._ensure(c), timeout)

    def peek(self, c: Consumer, max_messages: int) -> Peek:
        rd = self._ensure(c)
        if max_messages.__class__ is not int or max_messages < 1:
            _validate.integer(max_messages, "max_messages", 1)
        if self._holding is not None:
            raise Unsupported("peek reads in place, before a transaction's outcome is known: a read_committed "
                              "consumer reads with poll")
        return rd.peek(max_messages)

    # ---- committing -------------------------------------------------------------
    def incarnations(self, c: Consumer, partitions: list[int]) -> dict[int, int] | None:
        """Which life of each partition a commit of ``partitions`` belongs to."""
        t = self._t
        return {p: t.partition_incarnation(p) for p in partitions if t.lease_ids[p]} if t is not None else None

    def commit_store(self, c: Consumer, store: OffsetStore) -> OffsetStore:
        """Where a commit of ``c``'s offsets to ``store`` goes: the bus's own store
        through this manager, refused where the group gates the topic and
        ``store`` is not the bus's (its gate follows the bus's offsets)."""
        store = bus_store(store, self.mgr)
        gate.check_store(self.mgr, self._t if self._t is not None else c.topic, c.group, store)
        return store

    def close_consumer(self, c: Consumer) -> None:
        if c.gating and not self.mgr.fabric.closed:
            gate.release(self.mgr, c.topic, c._gate_name)
        self._save_positions()
        self._reader = None
        self._t = None
