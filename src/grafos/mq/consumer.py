"""Consumers: read assigned partitions from their positions, commit what was
processed. One crossing into C per poll (``gf_poll`` reads every assigned
partition and, with a timeout, sleeps on a futex in the shared mapping).

A Consumer belongs to one thread at a time; use one per thread.
"""
from __future__ import annotations

import enum
import time
from typing import Callable, Iterable

from .. import _validate
from ..errors import Fenced, InvalidArgument
from ..message import Message
from ..reader import Batch, Reader
from .offset import OffsetStore
from .topic import RemoteManager, Topic, TopicManager

__all__ = ["Consumer", "SeekPolicy", "Message"]

_SLICE = 0.2            # seconds a blocking poll sleeps before it looks at the directory again
_EXPIRED_SLICE = 0.05   # ... when a partition reads as expired (a restart may be on its way)
_REFRESH_GAP = 0.01     # at most one directory re-read per this many seconds while expired


class SeekPolicy(enum.Enum):
    """Where :meth:`Consumer.seek` puts each assigned partition."""

    Committed = "committed"   #: the group's committed offset (Earliest if none)
    Earliest = "earliest"     #: the oldest message still in the ring
    Latest = "latest"         #: the end: only messages produced from now on
    # PEP 8 spellings
    COMMITTED = "committed"
    EARLIEST = "earliest"
    LATEST = "latest"


class Consumer:
    """``Consumer("events", "processors")``: reads partitions given to :meth:`assign`
    (all partitions if never assigned)."""

    def __init__(self, topic: str, group: str = "default", *, max_batch: int = 1024) -> None:
        self.topic = _validate.name(topic, "topic", 64)
        self.group = _validate.name(group, "group", 64)
        self.max_batch = _validate.integer(max_batch, "max_batch", 1, 1 << 20)
        self._assigned: list[int] | None = None
        self._mgr: TopicManager | None = None
        self._t: Topic | None = None
        self._reader: Reader | None = None
        self._positions: dict[int, int] = {}
        self._parts: list[int] = []
        self._holes: tuple | None = None      # (reader, any assigned partition reclaimed)
        self._member: tuple[object, str] | None = None   # (ConsumerGroup, member) for fencing
        self._epoch = -1    # fabric metadata epoch when the topic was last re-read after an expiry
        self._next_look = 0.0   # monotonic time before which we do not re-read it again
        self.consumed = 0

    # ---- assignment -----------------------------------------------------------
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
        self._reader = None

    def assignment(self) -> list[int]:
        if self._assigned is not None:
            return list(self._assigned)
        return list(self._parts)

    def assigned(self) -> list[int] | None:
        """The partitions given to :meth:`assign`; None if never assigned (all of them)."""
        return None if self._assigned is None else list(self._assigned)

    def _remote(self) -> RemoteManager | None:
        """The server bus this consumer last read through (None: shared memory)."""
        m = self._mgr
        return m if isinstance(m, RemoteManager) else None

    def bind(self, group: object, member: str) -> None:
        """Tie this consumer to a group member: commits for partitions the member
        no longer owns raise :class:`~grafos.errors.Fenced`."""
        self._member = (group, member)

    def _save_positions(self) -> None:
        if self._reader is not None:
            for p in self._parts:
                self._positions[p] = self._reader.position(p)

    def _ensure(self, mgr: TopicManager) -> Reader:
        t = mgr._topics.get(self.topic) if mgr is self._mgr else None
        if t is None or t is not self._t or self._reader is None:
            if not isinstance(mgr, TopicManager):
                raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
            t = mgr.topic(self.topic)
            self._open(mgr, t)
        return self._reader  # type: ignore[return-value]

    def _open(self, mgr: TopicManager, t: Topic) -> None:
        self._save_positions()
        parts = self._assigned if self._assigned is not None else list(range(t.n))
        for p in parts:
            if p >= t.n:
                raise InvalidArgument(f"topic {self.topic!r} has partitions 0..{t.n - 1}, not {p}")
        old = self._t
        # reader slot i is partition i (unassigned ones are None), so no id mapping per message
        wanted = set(parts)
        rd = Reader(mgr.fabric, [t.partitions[p] if p in wanted else None for p in range(t.n)],
                    max_batch=self.max_batch)
        for p in parts:
            pos = self._positions.get(p)
            same = old is not None and old.incarnation == t.incarnation and \
                old.partitions[p] is not None and t.partitions[p] is not None and \
                old.partitions[p].lease.id == t.partitions[p].lease.id
            if pos is None or not same:
                # never read, or a fresh lease (restart): start at its earliest offset
                part = t.partitions[p]
                pos = part.state().earliest if part is not None else 0
            rd.seek(p, pos)
        self._parts = list(parts)
        self._mgr, self._t, self._reader = mgr, t, rd

    # ---- positions ---------------------------------------------------------------
    def seek(self, mgr: TopicManager, store_or_partition=None, policy: SeekPolicy | int | None = None) -> None:
        """``seek(mgr, store, SeekPolicy.Committed|Earliest|Latest)`` for every assigned
        partition, or ``seek(mgr, partition, offset)`` for one."""
        if isinstance(mgr, RemoteManager) and not (isinstance(store_or_partition, int)
                                                   and not isinstance(store_or_partition, bool)):
            self._mgr = mgr
            mgr.seek(self, store_or_partition, policy)
            return
        if isinstance(store_or_partition, int) and not isinstance(store_or_partition, bool):
            self.seek_partition(mgr, store_or_partition, policy)   # type: ignore[arg-type]
            return
        if not isinstance(policy, SeekPolicy):
            raise _validate.InvalidType(f"policy must be a SeekPolicy, not {type(policy).__name__}")
        store = store_or_partition
        if policy is SeekPolicy.Committed and not isinstance(store, OffsetStore):
            raise _validate.InvalidType("SeekPolicy.Committed needs an offset store")
        rd = self._ensure(mgr)
        t = self._t
        assert t is not None
        for p in self._parts:
            part = t.partitions[p]
            st = part.state() if part is not None else None
            earliest, latest = (st.earliest, st.latest) if st is not None else (0, 0)
            if policy is SeekPolicy.Earliest:
                off = earliest
            elif policy is SeekPolicy.Latest:
                off = latest
            else:
                c = store.committed(self.group, self.topic, p)  # type: ignore[union-attr]
                # A commit beyond the end predates a restart (offsets began again
                # at 0): everything in the fresh ring is new to the group.
                off = earliest if c is None or c > latest else max(c, earliest)
            rd.seek(p, off)

    def seek_partition(self, mgr: TopicManager, partition: int, offset: int) -> None:
        """Put one assigned partition at ``offset`` (at most its end)."""
        if isinstance(mgr, RemoteManager):
            self._mgr = mgr
            mgr.seek_partition(self, partition, offset)
            return
        rd = self._ensure(mgr)
        i = self._index(partition)
        _validate.integer(offset, "offset", 0, (1 << 48) - 1)
        part = self._t.partitions[partition]  # type: ignore[union-attr]
        latest = part.state().latest if part is not None else 0
        if offset > latest:
            raise InvalidArgument(f"offset {offset} is beyond the end ({latest}) of partition {partition}")
        rd.seek(i, offset)

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
        return self._reader.position(self._index(partition))

    def positions(self) -> dict[int, int]:
        if (remote := self._remote()) is not None:
            return remote.positions(self)
        if self._reader is None:
            return dict(self._positions)
        return {p: self._reader.position(p) for p in self._parts}

    def lost(self) -> dict[int, int]:
        """Per partition: messages overwritten before this consumer read them."""
        if (remote := self._remote()) is not None:
            return remote.lost(self)
        rd = self._reader
        return {p: rd.counters(p)["lost"] for p in self._parts} if rd else {}

    def lag(self, mgr: TopicManager) -> dict[int, int]:
        """Per assigned partition: messages between the position and the end."""
        if isinstance(mgr, RemoteManager):
            self._mgr = mgr
            return mgr.lag(self)
        rd = self._ensure(mgr)
        out = {}
        for p in self._parts:
            part = self._t.partitions[p]  # type: ignore[union-attr]
            latest = part.state().latest if part is not None else 0
            out[p] = max(0, latest - rd.position(p))
        return out

    # ---- reading -------------------------------------------------------------------
    def poll(self, mgr: TopicManager, max_messages: int = 100, timeout: float | None = 0.0,
             *, spin: float = 0.0) -> list[tuple[int, Message]]:
        """Up to ``max_messages`` as ``(partition, Message)`` pairs.

        ``timeout``: 0 (default) returns at once; a number of seconds blocks until a
        message arrives or the time passes; None blocks until a message arrives.
        Blocking sleeps on a futex (no busy spin); ``spin`` seconds of polling first
        trade a core for lower latency.
        """
        rd = self._reader
        if rd is None or mgr is not self._mgr or mgr._topics.get(self.topic) is not self._t:
            if isinstance(mgr, RemoteManager):      # a bus on a server: it polls
                self._mgr = mgr
                msgs = mgr.poll(self, max_messages, timeout)
                self.consumed += len(msgs)
                return msgs
            rd = self._ensure(mgr)
        if type(max_messages) is not int or max_messages < 1:
            _validate.integer(max_messages, "max_messages", 1)
        if timeout.__class__ is not float or timeout != timeout:
            _validate.timeout(timeout)
        if timeout is not None and timeout <= 0:
            msgs = rd.poll(max_messages, timeout, None, spin)
            if not msgs and rd._n and self._any_expired(rd) and self._maybe_refresh(mgr):
                msgs = self._reader.poll(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
        else:
            msgs = self._wait(mgr, lambda r, t: r.poll(max_messages, t, None, spin), timeout)
        self.consumed += len(msgs)
        return msgs

    def poll_batch(self, mgr: TopicManager, max_messages: int = 1024, timeout: float | None = 0.0,
                   *, spin: float = 0.0) -> Batch:
        """Like :meth:`poll`, as a :class:`~grafos.reader.Batch` of numpy arrays over
        one buffer (valid until the next poll)."""
        rd = self._reader
        if rd is None or mgr is not self._mgr or mgr._topics.get(self.topic) is not self._t:
            if isinstance(mgr, RemoteManager):      # a bus on a server: it polls
                self._mgr = mgr
                b = mgr.poll_batch(self, max_messages, timeout)
                self.consumed += len(b)
                return b
            rd = self._ensure(mgr)
        _validate.integer(max_messages, "max_messages", 1)
        _validate.timeout(timeout)
        if timeout is not None and timeout <= 0:
            b = rd.poll_batch(max_messages, timeout, None, spin)
            if not len(b) and rd._n and self._any_expired(rd) and self._maybe_refresh(mgr):
                b = self._reader.poll_batch(max_messages, 0.0, None, 0.0)  # type: ignore[union-attr]
        else:
            b = self._wait(mgr, lambda r, t: r.poll_batch(max_messages, t, None, spin), timeout)
        self.consumed += len(b)
        return b

    def _wait(self, mgr: TopicManager, once: Callable[[Reader, float], list | Batch],
              timeout: float | None) -> list | Batch:
        """Block in slices: a topic deleted or restarted by another process while we
        sleep writes nothing to the rings we sleep on, so between slices we look at
        the directory (only when a partition reads as expired and the metadata changed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rd = self._reader
            assert rd is not None
            expired = rd._n > 0 and self._any_expired(rd)
            if expired and self._maybe_refresh(mgr):
                rd = self._reader
                assert rd is not None
            left = _EXPIRED_SLICE if expired else _SLICE
            if deadline is not None:
                left = min(left, max(0.0, deadline - time.monotonic()))
            out = once(rd, left)
            if len(out) or (deadline is not None and time.monotonic() >= deadline):
                return out

    def _any_expired(self, rd: Reader) -> bool:
        # C counted the expired rings during the poll; holes (partitions already
        # reclaimed when the topic was opened) only change when the reader does
        if rd._p.expired:
            return True
        holes = self._holes
        if holes is None or holes[0] is not rd:
            holes = self._holes = (rd, any(rd._parts[p] is None for p in self._parts))
        return holes[1]

    def _maybe_refresh(self, mgr: TopicManager) -> bool:
        """A partition read as expired: if the directory changed since we last looked
        (the topic was restarted, deleted or recreated, here or by another process),
        re-read it and pick up the fresh leases. Returns True if it re-read.
        Raises NotFound if the topic was deleted."""
        epoch = mgr.fabric.meta_epoch()
        if mgr._topics.get(self.topic) is self._t and (
                epoch == self._epoch or time.monotonic() < self._next_look):
            return False
        t = mgr.refresh(self.topic)
        self._epoch = epoch
        self._next_look = time.monotonic() + _REFRESH_GAP
        self._open(mgr, t)
        return True

    # ---- committing -------------------------------------------------------------
    def commit(self, store: OffsetStore, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit the current positions (or ``offsets``: partition -> next offset to
        read) of the assigned partitions. Returns what was committed."""
        if not isinstance(store, OffsetStore):
            raise _validate.InvalidType(f"store must be an offset store, not {type(store).__name__}")
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
        if self._member is not None:
            group, member = self._member
            group.commit(store, member, self.topic, pos)  # type: ignore[attr-defined]
        else:
            for p, off in pos.items():
                store.commit(self.group, self.topic, p, off)
        return pos

    def _latest(self, p: int) -> int:
        """The end of partition ``p`` (for checking a commit)."""
        if (remote := self._remote()) is not None:
            return remote.latest(self, p)
        part = self._t.partitions[p] if self._t is not None else None  # type: ignore[index]
        return part.state().latest if part is not None else 0

    def close(self) -> None:
        if (remote := self._remote()) is not None:
            remote.close_consumer(self)
        self._save_positions()
        self._reader = None
        self._t = None
        self._mgr = None

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ += ["Fenced"]
