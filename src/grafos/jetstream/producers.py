"""Idempotent and fenced producers on JetStream.

Every publish carries a ``Nats-Msg-Id``, and a publish retried after a lost
acknowledgement (a timeout, a leader election, a reconnect) reuses it: the
partition stream keeps the first copy and answers the retry with the
original sequence (its PubAck says ``duplicate``), so the retried send
returns the original ``(partition, offset)``. This holds inside the stream's
duplicate window (30 s), which bounds every retry loop of a send.

An idempotent producer's id is ``<instance>.<epoch>.<partition>.<sequence>``:
a random instance id, the epoch of its registration (0 without a
``transactional_id``), and a sequence per partition.

A ``transactional_id`` is registered in the KV record
``GF_PRODUCERS/p.<tok>`` = ``{"id": <transactional_id>, "epoch": n}``: the
first send (or :meth:`~grafos.jetstream.manager.JetStreamManager.register`)
writes epoch n + 1 by compare-and-set, which fences every older instance.
Before each send (each batch) an instance reads the record at the stream
leader; a newer epoch, or no record, raises
:class:`~grafos.errors.ProducerFenced` and nothing is published. The check
and the publish are two steps, since a publish cannot be made conditional
on a record of another stream: a send that read the record before the new
instance registered can still land after it (at most the sends in flight
at that moment: one per thread, or one batch).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ProducerFenced
from . import kv, names

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

#: compare-and-set attempts when instances register the same id at once
_TRIES = 16


def _epoch(rec: dict | None) -> int:
    """The epoch of a registration record; -1 for none (or a damaged one)."""
    if rec is None:
        return -1
    e = rec.get("epoch")
    return e if isinstance(e, int) and not isinstance(e, bool) and e >= 0 else -1


class Registration:
    """One producer instance's hold on its ``transactional_id``."""

    def __init__(self, js: "JetStreamContext", transactional_id: str, topic: str) -> None:
        self.js = js
        self.transactional_id = transactional_id
        self.topic = topic
        self.key = names.producer_key(transactional_id)
        self.epoch = -1
        #: the newer epoch that fenced this instance (-1: the record vanished); None: not fenced
        self.fenced_by: int | None = None

    async def register(self) -> int:
        """Write epoch n + 1 over the record's n (0 when there is none); returns it."""
        for _ in range(_TRIES):
            rec, rev = await kv.get(self.js, names.PRODUCERS, self.key)
            epoch = _epoch(rec) + 1
            try:
                await kv.put(self.js, names.PRODUCERS, self.key, {"id": self.transactional_id, "epoch": epoch}, rev)
            except kv.Conflict:
                continue        # another instance registered meanwhile: read its epoch and go above it
            self.epoch = epoch
            return epoch
        rec, _ = await kv.get(self.js, names.PRODUCERS, self.key)
        raise ProducerFenced(f"producer {self.transactional_id!r} of topic {self.topic!r} could not register: "
                             f"{_TRIES} other instances registered the same transactional_id meanwhile",
                             transactional_id=self.transactional_id, topic=self.topic, epoch=-1,
                             current_epoch=_epoch(rec))

    def _fenced(self) -> ProducerFenced:
        assert self.fenced_by is not None
        if self.fenced_by < 0:
            return ProducerFenced(
                f"producer {self.transactional_id!r} of topic {self.topic!r} (epoch {self.epoch}) was fenced: "
                "its registration is gone from the server; nothing was written",
                transactional_id=self.transactional_id, topic=self.topic, epoch=self.epoch, current_epoch=-1)
        return ProducerFenced(transactional_id=self.transactional_id, topic=self.topic, epoch=self.epoch,
                              current_epoch=self.fenced_by)

    async def check(self) -> None:
        """Raise ProducerFenced unless the record still holds this instance's epoch
        (read at the stream leader). Once fenced, always fenced."""
        if self.fenced_by is None:
            rec, _ = await kv.get(self.js, names.PRODUCERS, self.key)
            current = _epoch(rec)
            if current == self.epoch:
                return
            self.fenced_by = current
        raise self._fenced()
