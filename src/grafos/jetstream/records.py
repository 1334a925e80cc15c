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
"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import LockTimeout, Unavailable
from . import kv

if TYPE_CHECKING:
    from .manager import JetStreamManager

LOCK_SECS = 2.0          #: a crashed holder blocks others at most this long
WAIT_SECS = 10.0         #: how long to wait for a held lock before LockTimeout
_POLL = 0.005

_local = threading.local()


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
                self._rev = run(kv.put(js, self.bucket, self.key, mine, rev), f"locking {self.key}")
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
                    self._rev = run(kv.put(js, self.bucket, self.key, mine, rev), f"locking {self.key}")
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
                rev = self.bus.loop.run(kv.put(self.bus.js, self.bucket, self.key, self.data, self._rev),
                                        f"writing {self.key}")
                self._known = (rev, json.loads(json.dumps(self.data)))   # as a fresh read would give it
            else:       # nothing kept: no record (a look at a group that does not exist leaves none)
                self.bus.loop.run(kv.delete(self.bus.js, self.bucket, self.key, self._rev),
                                  f"writing {self.key}")
        except kv.Conflict:
            raise Unavailable(f"{self.bucket}/{self.key} was changed by another client while this "
                              f"one held its lock (held past {LOCK_SECS:.0f} s?); nothing was written") from None
