"""``read_committed``: what a consumer may see of transactional messages.

A message written inside a transaction is held, with everything after it in
its partition, until the transaction's marker arrives in the same partition:
``C`` releases the held messages in order, ``A`` drops the transaction's
(counted in :attr:`Holding.aborted`). Messages of plain producers, and of
idempotent ones outside a transaction, pass at once when nothing is held
before them. Markers themselves are never handed to the application.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Iterator

from .._core import layout
from ..errors import CorruptFabric
from ..message import Message, decode_headers
from ..reader import Batch
from .transaction import COMMIT, STAMP

_make = tuple.__new__
_CONTROL, _TXN, _STAMP, _KEY = layout.MSG_CONTROL, layout.MSG_TXN, layout.MSG_STAMP, layout.MSG_HAS_KEY
_DECIDED_MAX = 65536      # outcomes remembered (a marker may reach a partition late)

Ref = tuple[int, int, int]    # (producer, epoch, transaction)


class Holding:
    """Per partition: messages held behind an undecided transaction, and those
    released but not yet handed out."""

    def __init__(self) -> None:
        self.held: dict[int, deque[tuple[int, Message, Ref | None]]] = {}
        self.ready: deque[tuple[int, Message]] = deque()
        self.decided: dict[Ref, bool] = {}
        self.since: dict[int, float] = {}       # monotonic time the head of held[p] started waiting
        self.aborted = 0                        # messages dropped: their transaction aborted
        self.corrupt = 0

    def forget(self, partitions: list[int]) -> None:
        """Positions moved (a seek): what was held or ready there is read again."""
        drop = set(partitions)
        for p in drop:
            self.held.pop(p, None)
            self.since.pop(p, None)
        self.ready = deque(x for x in self.ready if x[0] not in drop)

    def position(self, p: int, reader_pos: int) -> int:
        """The next offset the application has not been handed on partition p."""
        for q, m in self.ready:
            if q == p:
                return m.offset
        h = self.held.get(p)
        return h[0][0] if h else reader_pos

    def feed(self, batch: Batch) -> None:
        meta, data = batch.meta, batch.data
        ids = batch.partition_ids
        for i in range(len(meta)):
            m = meta[i]
            p = ids[int(m["partition"])]
            flags = int(m["flags"])
            pos, kl, hl, vl = int(m["pos"]), int(m["key_len"]), int(m["hdr_len"]), int(m["val_len"])
            ref = None
            if flags & _STAMP:
                end = pos + kl + hl + vl
                prod, epoch, _seq, txn = STAMP.unpack(data[end:end + STAMP.size].tobytes())
                if flags & (_TXN | _CONTROL) and txn:
                    ref = (prod, epoch, txn)
            if flags & _CONTROL:
                if ref is not None:
                    self._decide(ref, data[pos + kl + hl:pos + kl + hl + vl].tobytes() == COMMIT)
                continue
            try:
                headers = decode_headers(data[pos + kl:pos + kl + hl].tobytes()) if hl else ()
            except CorruptFabric:
                self.corrupt += 1
                continue
            key = data[pos:pos + kl].tobytes() if flags & _KEY else None
            msg = _make(Message, (int(m["offset"]), key, data[pos + kl + hl:pos + kl + hl + vl].tobytes(),
                                  int(m["timestamp"]), headers, batch.topic, p))
            held = self.held.setdefault(p, deque())
            if not held and (ref is None or ref in self.decided):
                if ref is None or self.decided[ref]:
                    self.ready.append((p, msg))
                else:
                    self.aborted += 1
                continue
            if not held:
                self.since[p] = time.monotonic()
            held.append((msg.offset, msg, ref))
        for p in list(self.held):
            self._release(p)

    def _decide(self, ref: Ref, committed: bool) -> None:
        if len(self.decided) >= _DECIDED_MAX:
            for k in list(self.decided)[:_DECIDED_MAX // 2]:
                del self.decided[k]
        self.decided[ref] = committed

    def _release(self, p: int) -> None:
        held = self.held.get(p)
        moved = False
        while held:
            _, msg, ref = held[0]
            if ref is not None and ref not in self.decided:
                break
            held.popleft()
            moved = True
            if ref is None or self.decided[ref]:
                self.ready.append((p, msg))
            else:
                self.aborted += 1
        if moved:
            self.since[p] = time.monotonic()

    def waiting(self, older_than: float) -> Iterator[tuple[int, Ref]]:
        """(partition, transaction) pairs where the transaction has held the
        partition up for more than ``older_than`` s."""
        now = time.monotonic()
        for p, held in self.held.items():
            if held and now - self.since.get(p, now) > older_than and held[0][2] is not None:
                yield p, held[0][2]

    def abandon(self, p: int, ref: Ref) -> None:
        """No marker will come for ``ref`` (its transaction is over): drop its
        messages, counted as aborted (a reader lapped past a commit marker
        cannot tell that it committed)."""
        self._decide(ref, False)
        self._release(p)

    def take(self, n: int) -> list[tuple[int, Message]]:
        out: list[tuple[int, Message]] = []
        while self.ready and len(out) < n:
            out.append(self.ready.popleft())
        return out
