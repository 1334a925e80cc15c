"""Shared state kept in one KV record, changed under a lock in that record.

The group and DLQ code of grafos reads and writes its state inside ``with
state.locked():`` blocks. On JetStream such a block is a transaction on one
record: entering takes the record's lock (a compare-and-set that writes a
``lock`` field with the holder and a deadline), the body works on a copy,
and leaving writes the copy back and drops the lock with one more
compare-and-set. The lock keeps concurrent callers from wasting their work;
safety comes from the compare-and-set: a holder that stalled past the lock's
deadline (and so was overtaken) finds the revision changed, writes nothing
and gets :class:`~grafos.errors.Unavailable`.

A block is re-entrant in its thread, and :func:`open_in_thread` lets a store
that keeps its data in the same record (the fenced offset store) write into
the open transaction, so a commit lands atomically with the ownership check
made in the same block.

:meth:`Record.update` is the one-round-trip form for a body that may run
twice: when this object wrote the record last, the body works on that copy
and one compare-and-set writes it back without taking the lock; if anyone
wrote since, the compare fails, nothing is written, and the body runs again
inside :meth:`Record.locked`. Writes go out on the bus's blocking connection
of the caller's thread when it can settle them (see ``direct.py``), else
through the loop, as the same message: an answer lost after the server took
a write is settled by reading the record back.
"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from ..errors import LockTimeout, Unavailable
from . import kv

if TYPE_CHECKING:
    from .manager import JetStreamManager

LOCK_SECS = 2.0          #: a crashed holder blocks others at most this long
WAIT_SECS = 10.0         #: how long to wait for a held lock before LockTimeout
_POLL = 0.005

_local = threading.local()
T = TypeVar("T")


def open_in_thread(bus: "JetStreamManager", bucket: str, key: str) -> "Record | None":
    """The record transaction this thread has open on ``bucket/key``, if any."""
    txns = getattr(_local, "txns", None)
    return txns.get((bus.ident, bucket, key)) if txns else None


class Record:
    """One record ``bucket/key`` of ``bus``; :attr:`data` is valid inside :meth:`locked`."""

    def __init__(self, bus: "JetStreamManager", bucket: str, key: str) -> None:
        self.bus = bus
        self.bucket = bucket
        self.key = key
        self.data: dict[str, Any] = {}
        self._me = uuid.uuid4().hex
        self._depth = 0
        self._rev = 0
        self._known: tuple[int, dict[str, Any]] | None = None   # (revision, data) as this object last wrote it
        # one thread at a time in this object's transactions (the state above is the object's)
        self._threads = threading.RLock()

    @contextmanager
    def locked(self) -> Iterator["Record"]:
        txns = getattr(_local, "txns", None)
        if txns is None:
            txns = _local.txns = {}
        slot = (self.bus.ident, self.bucket, self.key)
        outer = txns.get(slot)
        if outer is not None and outer is not self:
            # another object over the same record, already open in this thread: share it
            self.data = outer.data
            yield self
            return
        with self._threads:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._acquire()
            self._depth = 1
            txns[slot] = self
            try:
                yield self
            finally:
                self._depth = 0
                txns.pop(slot, None)
                self._release()

    def update(self, body: Callable[[], T]) -> T:
        """``body()`` as one transaction on the record, which may run it twice:
        first on this object's copy of the record, written back with one
        compare-and-set and no lock, if this object wrote the record last;
        then, if that copy was stale (or the body raised), again inside
        :meth:`locked`. ``body`` must change nothing but :attr:`data`."""
        with self._threads:
            return self._update(body)

    def _update(self, body: Callable[[], T]) -> T:
        txns = getattr(_local, "txns", None)
        if txns is None:
            txns = _local.txns = {}
        slot = (self.bus.ident, self.bucket, self.key)
        if self._known is not None and not self._depth and slot not in txns:
            rev, data = self._known
            self._known = None
            self.data = copy.deepcopy(data)
            self._depth = 1
            txns[slot] = self
            try:
                out = body()
            except Exception:  # noqa: BLE001 - judged on a copy that may be stale: the locked run says
                out = None
                ok = False
            else:
                ok = True
            finally:
                self._depth = 0
                txns.pop(slot, None)
            if ok and self.data:
                try:
                    self._known = (self._write(self.data, rev, f"writing {self.key}"),
                                   json.loads(kv.encode(self.data)))
                    return out  # type: ignore[return-value]
                except kv.Conflict:
                    pass        # written by someone else since: run it again under the lock
        with self.locked():
            return body()

    def _write(self, data: dict[str, Any], last: int, what: str) -> int:
        """Compare-and-set ``data`` over revision ``last``: the new revision, or
        kv.Conflict. Tried on the caller's blocking connection first; anything it
        cannot settle goes through the loop as the same message."""
        msg_id = uuid.uuid4().hex
        direct = self.bus.direct
        if direct is not None:
            rev = direct.publish(kv.subject(self.bucket, self.key), kv.encode(data), msg_id,
                                 {kv.EXPECTED: str(last)})
            if rev is not None:
                return rev
        return self.bus.loop.run(kv.put(self.bus.js, self.bucket, self.key, data, last,
                                        msg_id=msg_id if direct is not None else None), what)

    def _acquire(self) -> None:
        deadline = time.monotonic() + WAIT_SECS
        run = self.bus.loop.run
        js = self.bus.js
        if self._known is not None:
            # the record as this object last left it, if nobody wrote since: one round trip
            rev, data = self._known
            self._known = None
            mine = dict(data, lock={"by": self._me, "until": time.time() + LOCK_SECS})
            try:
                self._rev = self._write(mine, rev, f"locking {self.key}")
                self.data = copy.deepcopy(data)
                return
            except kv.Conflict:
                pass
        while True:
            rec, rev = run(kv.get(js, self.bucket, self.key), f"reading {self.key}")
            rec = rec or {}
            lock = rec.get("lock")
            if not lock or lock.get("by") == self._me or float(lock.get("until", 0)) <= time.time():
                data = {k: v for k, v in rec.items() if k != "lock"}
                mine = dict(data, lock={"by": self._me, "until": time.time() + LOCK_SECS})
                try:
                    self._rev = self._write(mine, rev, f"locking {self.key}")
                except kv.Conflict:
                    continue
                self.data = data
                return
            if time.monotonic() > deadline:
                raise LockTimeout(f"the lock on {self.bucket}/{self.key} stayed held by another "
                                  f"client for {WAIT_SECS:.0f} s")
            time.sleep(_POLL)

    def _release(self) -> None:
        try:
            if self.data:
                rev = self._write(self.data, self._rev, f"writing {self.key}")
                self._known = (rev, json.loads(kv.encode(self.data)))   # as a fresh read would give it
            else:       # nothing kept: no record (a look at a group that does not exist leaves none)
                self.bus.loop.run(kv.delete(self.bus.js, self.bucket, self.key, self._rev),
                                  f"writing {self.key}")
        except kv.Conflict:
            raise Unavailable(f"{self.bucket}/{self.key} was changed by another client while this "
                              f"one held its lock (held past {LOCK_SECS:.0f} s?); nothing was written") from None
