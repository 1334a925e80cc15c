"""A consumer that manages its group: ``mgr.subscribe("events", group="processors")``.

What a Kafka consumer does after ``subscribe``, on any bus (shared memory or
JetStream)::

    with mgr.subscribe("events", group="processors") as consumer:
        for partition, msg in consumer:
            ...                              # process msg.value

:class:`Subscriber` joins the group at its first poll (under ``member``, or a
name made of the host, the pid and a counter), claims its fair share of the
partitions (:class:`~grafos.mq.group.ConsumerGroup`), seeks them to the
group's committed offsets and heartbeats from a background thread. When
members come and go it rebalances inside a poll, in the caller's thread:

* partitions it must give away: it commits them (with ``auto_commit``),
  calls ``on_revoke(partitions)``, then gives them back;
* partitions it takes: it seeks them to the group's committed offsets, then
  calls ``on_assign(partitions)``;
* partitions another member took while this one was stale (its heartbeats
  stopped for longer than ``session_timeout``): ``on_revoke(partitions)``,
  without a commit (the group refuses it: they are no longer its own).

Commits go through the group, so a member that lost a partition cannot
commit over its new owner (:class:`~grafos.errors.Fenced`). With
``auto_commit=True`` (the default) each poll first commits what the previous
poll returned, and :meth:`close` commits what was returned last: every
message is processed at least once, and a member that dies repeats at most
its last poll. A commit through the group takes the bus's lock (a few
hundred microseconds on shared memory, a round trip on JetStream):
``auto_commit_interval`` (seconds, Kafka's ``auto.commit.interval.ms``)
commits at most that often instead, and a member that dies then repeats what
it polled since its last commit. A rebalance and :meth:`close` always commit.

:meth:`close` leaves the group, so its partitions go to the others at their
next heartbeat, without waiting for the session timeout. A rebalance happens
when the heartbeat thread saw the group change (every ``heartbeat_interval``
seconds) and the owner polls. A member that does not poll for
``max_poll_interval`` seconds (300 by default, Kafka's
``max.poll.interval.ms``) leaves the group, so that its partitions go to
members that read them; its next poll revokes them (uncommitted) and joins
again.

Like a :class:`~grafos.mq.consumer.Consumer`, a Subscriber belongs to one
thread (or one asyncio task) at a time; the callbacks run in that thread.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import math
import os
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from .. import _validate
from ..errors import Closed, Fenced, InvalidArgument, NotPortable
from ..message import Message
from ..reader import META_DTYPE, Batch
from .consumer import Consumer, SeekPolicy
from .group import TRANSIENT, ConsumerGroup, Share
from .offset import OffsetStore
from .model import Bus

__all__ = ["Subscriber", "member_name"]

_SLICE = 0.2            # longest a blocking poll waits before it looks at the group again
_ITER_BATCH = 100       # messages an iteration polls at a time (at most what a crash repeats)
_COUNTER = itertools.count(1)

Callback = Callable[[list[int]], object]


def member_name() -> str:
    """A member name unique to this consumer: ``<host>-<pid>-<counter>``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())
    host = re.sub(r"\.{2,}", ".", host).lstrip(".-")[:40] or "host"
    return f"{host}-{os.getpid()}-{next(_COUNTER)}"


class Subscriber:
    """A consumer of ``topic`` that joins ``group`` and keeps its share of the
    partitions (see the module docs); ``mgr.subscribe(...)`` makes one.

    ``poll(max_messages=100, timeout=0.0)`` and ``poll_batch(...)`` read the
    assigned partitions (a timeout blocks, None until a message arrives);
    ``commit()`` / ``commit(offsets)`` commit through the group; ``for
    partition, msg in consumer`` and ``async for`` iterate until the loop is
    left (``wakeup()``, from another thread, ends a loop that waits);
    ``close()`` (or the ``with`` block) commits and leaves the group.
    ``auto_commit``: commit what each poll returned at the next poll (at most
    every ``auto_commit_interval`` seconds, default 0: every poll).
    ``session_timeout``: seconds without a heartbeat after which the member is
    stale and others take its partitions; ``heartbeat_interval`` (default a
    third of it, at most one second) how often the background thread beats
    and looks for a rebalance; ``max_poll_interval``: seconds without a poll
    after which the member leaves. ``store``: where the group's offsets live
    (default: the bus's own shared store). ``key_deserializer`` and
    ``value_deserializer`` are the :class:`~grafos.mq.consumer.Consumer`'s.
    """

    def __init__(self, mgr: Bus, topic: str, group: str, member: str | None = None,
                 *, on_assign: Callback | None = None, on_revoke: Callback | None = None,
                 auto_commit: bool = True, auto_commit_interval: float = 0.0, session_timeout: float = 30.0,
                 heartbeat_interval: float | None = None, max_poll_interval: float = 300.0,
                 store: OffsetStore, max_batch: int = 1024,
                 key_deserializer: Callable[[bytes], Any] | None = None,
                 value_deserializer: Callable[[bytes], Any] | None = None) -> None:
        if not isinstance(mgr, Bus):      # a bus: shared memory or a server
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        for what, cb in (("on_assign", on_assign), ("on_revoke", on_revoke)):
            if cb is not None and not callable(cb):
                raise _validate.InvalidType(f"{what} must be callable, not {type(cb).__name__}")
        if not isinstance(auto_commit, bool):
            raise _validate.InvalidType(f"auto_commit must be a bool, not {type(auto_commit).__name__}")
        if not isinstance(store, OffsetStore):
            raise _validate.InvalidType(f"store must be an offset store, not {type(store).__name__}")
        self.session_timeout = _validate.number(session_timeout, "session_timeout", 0, lo_open=True)
        if heartbeat_interval is None:
            heartbeat_interval = min(self.session_timeout / 3, 1.0)
        self.heartbeat_interval = _validate.number(heartbeat_interval, "heartbeat_interval", 0, lo_open=True)
        if self.heartbeat_interval >= self.session_timeout:
            raise InvalidArgument(f"heartbeat_interval {self.heartbeat_interval} s must be shorter than "
                                  f"session_timeout ({self.session_timeout} s)")
        self.max_poll_interval = _validate.number(max_poll_interval, "max_poll_interval", 0, lo_open=True)
        self.auto_commit_interval = _validate.number(auto_commit_interval, "auto_commit_interval", 0)
        self.member = _validate.name(member_name() if member is None else member, "member", 64)
        self.topic = _validate.name(topic, "topic", 64)
        self.group = _validate.name(group, "group", 64)
        self.mgr = mgr
        self.store = store
        self.auto_commit = auto_commit
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        n = mgr.topic(self.topic).n                 # NotFound for a topic that does not exist
        #: the group this consumer is a member of (``describe()`` shows the others)
        self.consumer_group = ConsumerGroup(self.group, self.topic, n, self.session_timeout, mgr=mgr)
        self._consumer = Consumer(self.topic, self.group, max_batch=max_batch, key_deserializer=key_deserializer,
                                  value_deserializer=value_deserializer)
        self._consumer.bind(self.consumer_group, self.member)
        self._consumer.assign([])
        self._assigned: list[int] = []
        self._committed: dict[int, int] = {}      # positions as last committed (auto_commit skips those)
        self._moved = False                       # a read or a seek moved the positions since then
        self._committed_at = -math.inf            # monotonic time of the last auto-commit
        self._pending: collections.deque[tuple[int, Message]] = collections.deque()  # polled, not handed out
        self._slice = min(_SLICE, self.heartbeat_interval)
        # one call into the group at a time: the heartbeat thread's and the owner's
        # (a group record on JetStream is one transaction per object)
        self._glock = threading.Lock()
        self._due = threading.Event()             # the heartbeat thread saw the group change
        self._wake = threading.Event()            # wakeup(): stop waiting
        self._woken = False                       # the last read returned because of it
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._error: BaseException | None = None
        self._joined = False
        self._left = False                        # the heartbeat thread left: no poll for max_poll_interval
        self._closed = False
        self._in_callback = False
        self._polled_at = time.monotonic()
        self._fetcher: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: concurrent.futures.Future | None = None
        #: heartbeats made, and heartbeats retried after a lock or server that did not answer
        self.beats = 0
        self.beat_retries = 0
        #: rebalances this member went through (joining is the first)
        self.rebalances = 0

    def __reduce__(self):  # noqa: ANN204 - a member is one process's: it does not cross processes
        raise NotPortable(f"subscriber {self.member!r} is a member of group {self.group!r} in this process "
                          "(a heartbeat thread, positions): subscribe again in the other process")

    def __repr__(self) -> str:
        return (f"<Subscriber {self.topic!r} group {self.group!r} member {self.member!r} "
                f"partitions {self._assigned}{' closed' if self._closed else ''}>")

    # ---- the group ------------------------------------------------------------------
    def _join(self) -> None:
        with self._glock:
            owned = self.consumer_group.claim(self.member)
        self._joined = True
        self.rebalances += 1
        self._start_beating()
        self._take(owned)

    def _start_beating(self) -> None:
        self._stop.clear()
        self._beater = threading.Thread(target=self._beat_loop, name=f"grafos-subscribe-{self.member}",
                                        daemon=True)
        self._beater.start()

    def _beat_loop(self) -> None:
        last_ok = time.monotonic()
        wait = self.heartbeat_interval
        while not self._stop.wait(wait):
            if time.monotonic() - self._polled_at > self.max_poll_interval:
                # the owner stopped polling: its partitions go to members that read them
                try:
                    with self._glock:
                        self.consumer_group.leave(self.member)
                    self._left = True
                except BaseException as e:  # noqa: BLE001 - raised by the owner's next poll
                    self._error = e
                self._due.set()
                return
            try:
                with self._glock:
                    share = self.consumer_group.beat(self.member)
            except TRANSIENT:
                # the group's lock held elsewhere, or a server failing over: beat again
                # soon, so that a beat lands before the session times out
                self.beat_retries += 1
                left = self.session_timeout - (time.monotonic() - last_ok)
                wait = min(self.heartbeat_interval, max(0.01, left / 4))
                continue
            except BaseException as e:  # noqa: BLE001 - raised by the owner's next poll
                self._error = e
                self._due.set()
                return
            last_ok = time.monotonic()
            wait = self.heartbeat_interval
            self.beats += 1
            if self._unbalanced(share):
                self._due.set()

    def _unbalanced(self, share: Share) -> bool:
        n = len(share.owned)
        return share.owned != self._assigned or n > share.quota or (n < share.quota and bool(share.free))

    def _maintain(self) -> None:
        """Before reading: join, commit what the previous poll returned, rebalance
        if the heartbeat thread asked for it."""
        if self._closed:
            raise Closed(f"subscriber {self.member!r} of {self.topic!r} is closed")
        if self._in_callback:
            raise InvalidArgument("poll from inside on_assign/on_revoke: the rebalance is not finished")
        self._polled_at = time.monotonic()
        if self._error is not None:
            err, self._error = self._error, None
            self._start_beating()        # the next poll tries again
            raise err
        if self._left:                   # it left for not polling: what it held went to others
            self._left, self._joined = False, False
            lost = list(self._assigned)
            self._drop(lost)
            self._call(self.on_revoke, lost)
        if not self._joined:
            self._join()
            return
        if self.auto_commit:
            self._auto_commit()
        if self._due.is_set():
            self._due.clear()
            self._rebalance()

    def _rebalance(self) -> None:
        with self._glock:
            share = self.consumer_group.beat(self.member)
        lost = [p for p in self._assigned if p not in share.owned]
        if lost:                                      # taken while this member was stale
            self._drop(lost)
            self._call(self.on_revoke, lost)
        over = share.owned[share.quota:]              # claim gives back the highest-numbered
        short = len(share.owned) < share.quota and share.free
        if not (over or short or share.owned != self._assigned):
            return
        self.rebalances += 1
        if self.auto_commit:
            self._auto_commit(due=True)
        if over:
            self._call(self.on_revoke, over)         # still assigned: the callback may commit them
            self._drop(over)
        with self._glock:
            owned = self.consumer_group.claim(self.member)
        gone = [p for p in self._assigned if p not in owned]
        if gone:                                      # taken between the look and the claim
            self._drop(gone)
            self._call(self.on_revoke, gone)
        new = [p for p in owned if p not in self._assigned]
        if new:
            self._take(new)

    def _take(self, new: list[int]) -> None:
        """Assign ``new`` beside what is kept, at the group's committed offsets."""
        self._reassign(sorted(set(self._assigned) | set(new)))
        c = self._consumer
        for p in new:
            self._committed[p] = c.position(p)
        self._call(self.on_assign, sorted(new))

    def _drop(self, parts: list[int]) -> None:
        self._reassign([p for p in self._assigned if p not in parts])
        for p in parts:
            self._committed.pop(p, None)

    def _reassign(self, parts: list[int]) -> None:
        """Read ``parts``: the kept ones from where they were, the others from the
        group's committed offsets. The seek also opens the reader on the new
        assignment, so positions (and commits) name only these partitions."""
        c, mgr = self._consumer, self.mgr
        kept = {p: off for p, off in c.positions().items() if p in self._assigned and p in parts}
        c.assign(parts)
        c.seek(mgr, self.store, SeekPolicy.Committed)
        for p, off in kept.items():
            if c.position(p) != off:
                c.seek_partition(mgr, p, off)
        self._assigned = list(parts)

    def _call(self, cb: Callback | None, parts: list[int]) -> None:
        if cb is not None and parts:
            self._in_callback = True
            try:
                cb(list(parts))
            finally:
                self._in_callback = False

    # ---- committing ---------------------------------------------------------------------
    def _auto_commit(self, due: bool = False) -> None:
        """Commit the positions if a poll moved them (at most once per
        ``auto_commit_interval`` unless ``due``); partitions the group refuses
        (taken over) are revoked."""
        if not self._moved or not self._assigned:
            return
        now = time.monotonic()
        if not due and now - self._committed_at < self.auto_commit_interval:
            return
        if self._consumer.positions() != self._committed:
            self._committed_at = now
            try:
                self._commit(None)
            except Fenced as e:
                lost = [p for p in e.partitions if p in self._assigned]
                self._drop(lost)
                self._call(self.on_revoke, lost)
        self._moved = False

    def _commit(self, offsets: dict[int, int] | None) -> dict[int, int]:
        try:
            with self._glock:
                done = self._consumer.commit(self.store, offsets)
        except Fenced as e:
            self._committed.update(e.committed)
            self._due.set()                 # the next poll revokes what was taken
            raise
        self._committed.update(done)
        return done

    def commit(self, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit the positions (what the polls returned), or ``offsets``
        (partition -> next offset to read), through the group: partitions this
        member no longer owns raise :class:`~grafos.errors.Fenced` (the others
        are committed). Returns what was committed."""
        self._give_back()
        if self._closed:
            raise Closed(f"subscriber {self.member!r} of {self.topic!r} is closed")
        return self._commit(offsets)

    # ---- reading ---------------------------------------------------------------------------
    def _read(self, once: Callable[[float], Any], empty: Callable[[], Any], timeout: float | None) -> Any:
        _validate.timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self._woken = False
        while True:
            self._maintain()
            left = self._slice if deadline is None else min(self._slice, max(0.0, deadline - time.monotonic()))
            if self._assigned:
                out = once(left)
                if len(out):
                    self._moved = True
            else:
                out = empty()               # nothing to read: wait for the group to change
                if left > 0:
                    self._due.wait(left)
            if self._wake.is_set():
                self._wake.clear()
                self._woken = True
                return out
            if len(out) or (deadline is not None and time.monotonic() >= deadline):
                return out

    def poll(self, max_messages: int = 100, timeout: float | None = 0.0) -> list[tuple[int, Message]]:
        """Up to ``max_messages`` ``(partition, Message)`` pairs from the assigned
        partitions; ``timeout`` as :meth:`Consumer.poll <grafos.mq.consumer.Consumer.poll>`.
        Joins, commits the previous poll (``auto_commit``) and rebalances first."""
        _validate.integer(max_messages, "max_messages", 1)
        self._give_back()
        c, mgr = self._consumer, self.mgr
        return self._read(lambda t: c.poll(mgr, max_messages, t), list, timeout)

    def poll_batch(self, max_messages: int = 1024, timeout: float | None = 0.0) -> Batch:
        """Like :meth:`poll`, as a :class:`~grafos.reader.Batch` (valid until the next poll)."""
        _validate.integer(max_messages, "max_messages", 1)
        self._give_back()
        c, mgr = self._consumer, self.mgr
        return self._read(lambda t: c.poll_batch(mgr, max_messages, t), _empty_batch, timeout)

    def __iter__(self) -> Iterator[tuple[int, Message]]:
        """``for partition, msg in consumer``: every message as it arrives, until the
        loop is left or the consumer closed. Messages polled but not yet handed out
        are given back before the next commit or poll."""
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._closed:
                return
            self._pending.extend(self.poll(_ITER_BATCH, timeout=self._slice))
            if self._woken:
                return                  # what it polled is given back before the next commit or poll

    def __aiter__(self) -> "Subscriber":
        return self

    async def __anext__(self) -> tuple[int, Message]:
        """``async for partition, msg in consumer``: the wait for messages runs in a
        helper thread, so the event loop keeps running; what that thread read is
        kept for the next step even if the awaiting task was cancelled."""
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._wake.is_set():
                self._wake.clear()
                raise StopAsyncIteration
            self._maintain()
            if not self._assigned:
                await asyncio.sleep(self._slice)
                continue
            fut = self._inflight
            if fut is None:
                if self._fetcher is None:
                    self._fetcher = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix=f"grafos-subscribe-{self.member}")
                fut = self._inflight = self._fetcher.submit(self._fetch, self._slice)
            try:
                await asyncio.shield(asyncio.wrap_future(fut))
            finally:
                if fut.done():
                    self._inflight = None
        return self._pending.popleft()

    def wakeup(self) -> None:
        """Make a blocking poll return (with what it has, maybe nothing) and end a
        ``for`` or ``async for`` loop over this consumer, within a fraction of a
        second. The one call another thread (or a signal handler) may make; the
        consumer keeps working afterwards (close it from its own thread)."""
        self._wake.set()
        self._due.set()                 # a poll with nothing assigned waits on this

    def _fetch(self, timeout: float) -> None:
        got = self._consumer.poll(self.mgr, _ITER_BATCH, timeout)
        if got:
            self._moved = True
            self._pending.extend(got)

    def _settle(self) -> None:
        """Wait for a helper thread's read that a cancelled ``async for`` left running."""
        fut, self._inflight = self._inflight, None
        if fut is not None:
            fut.exception()             # its messages are in _pending; an error is for nobody

    def _give_back(self) -> None:
        """Seek back over messages an iteration polled but did not hand out."""
        self._settle()
        if not self._pending:
            return
        first: dict[int, int] = {}
        for p, m in self._pending:
            first.setdefault(p, m.offset)
        self._pending.clear()
        for p, off in first.items():
            if p in self._assigned:
                self._consumer.seek_partition(self.mgr, p, off)
                self._moved = True

    # ---- where it stands ----------------------------------------------------------------
    def assignment(self) -> list[int]:
        """The partitions this member reads now."""
        return list(self._assigned)

    def position(self, partition: int) -> int:
        """The next offset this consumer hands out from ``partition``."""
        self._give_back()
        return self._consumer.position(partition)

    def positions(self) -> dict[int, int]:
        self._give_back()
        return self._consumer.positions()

    def lag(self) -> dict[int, int]:
        """Per assigned partition: messages between the position and the end."""
        self._give_back()
        return self._consumer.lag(self.mgr)

    def lost(self) -> dict[int, int]:
        """Per assigned partition: messages overwritten before this consumer read them."""
        return self._consumer.lost()

    @property
    def consumed(self) -> int:
        """Messages the polls returned."""
        return self._consumer.consumed

    # ---- leaving --------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what the polls returned (``auto_commit``), call ``on_revoke`` with
        the assignment and leave the group: the others take the partitions at
        their next heartbeat, without waiting for the session timeout."""
        if self._closed:
            return
        try:
            self._give_back()
            self._stop.set()
            if self._beater is not None:
                self._beater.join()
                self._beater = None
            if self._joined:
                try:
                    if self.auto_commit:
                        self._auto_commit(due=True)
                    self._call(self.on_revoke, self._assigned)
                finally:
                    with self._glock:
                        self.consumer_group.leave(self.member)
        finally:
            self._closed = True
            self._assigned = []
            if self._fetcher is not None:
                self._fetcher.shutdown(wait=True)
                self._fetcher = None
            self._consumer.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> "Subscriber":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _empty_batch() -> Batch:
    return Batch(np.zeros(0, dtype=META_DTYPE), np.zeros(0, dtype=np.uint8), [])
