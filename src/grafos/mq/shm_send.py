"""A producer's session on a shared-memory bus: what serves a
:class:`~grafos.mq.producer.Producer`'s calls on a
:class:`~grafos.mq.topic.TopicManager` (in-process, named or file).

The session binds the producer's crossing (:class:`~grafos._crossing.SendPath`)
to the topic's rings, so ``send`` and ``send_keyed`` write the slot in C with
no Python between; what the crossing hands back (an unbound producer, a
serializer, an error, a full partition) lands here: checks, retries, waits for
room, idempotent repeats and where every error is raised. It also holds the
producer's registration (idempotence) and its open transaction.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from .. import _validate
from .._check import last_error, raise_for
from .._clock import now_ns
from .._core import codes
from .._core.sender import Idem, Sender, SendResult
from .._crossing import PRODUCER_TIMEOUT
from .._log import get as _logger
from ..errors import (BufferFull, GrafosError, InvalidArgument, LeaseExpired, MessageTooLarge, NotFound,
                      ProducerFenced, TransactionError, Unsupported)
from ..loan import Loan
from ..message import encode_headers
from ..partition import MAX_OFFSET, OFFSET_BITS, pack
from . import gate, serde, transaction
from .model import Partitioner

if TYPE_CHECKING:
    from .producer import Producer
    from .topic import Topic, TopicManager

__all__ = ["ShmSendSession"]

_RETRIES = 3
_SEQUENCES = (list, tuple)
_SLICE = 0.05          # seconds a blocked send sleeps before it checks signals and stale readers

#: what a producer with a serializer binds its crossing to instead of its manager
_SERIALIZING = object()

#: timeout not given: the producer's
_DEFAULT = PRODUCER_TIMEOUT

_log = _logger("producer")
#: a send that waits this long for room is logged (once per call)
BLOCKED_LOG_SECS = 1.0


class ShmSendSession:
    """One producer's calls on one shared-memory bus. The binding (C sender,
    topic, partitioner) is replaced whole, never mutated, so the producer's
    threads see a consistent one; the registration changes under a lock."""

    def __init__(self, mgr: TopicManager) -> None:
        self.mgr = mgr
        # (Sender, Topic, Partitioner), or None before the first bind
        self._bound: tuple | None = None
        # idempotence: (Registration, Idem) once registered
        self._idem: tuple = (None, None)
        self._idem_lock = threading.Lock()
        self._txn: transaction.Transaction | None = None

    def _live(self, producer: Producer) -> tuple | None:
        """The binding, if it still serves ``producer`` (topic alive, same partitioner)."""
        b = self._bound
        if b is None or not b[1].binding.valid or b[2] is not producer.partitioner:
            return None
        return b

    def _bind(self, producer: Producer, refresh: bool = False) -> Topic:
        mgr = self.mgr
        t = mgr.refresh(producer.topic) if refresh else mgr.topic(producer.topic)
        old = self._bound
        s = Sender(t.rings, t.n, int(producer.partitioner), rr=old[0].rr if old is not None else 0,
                   idem=self._registered(producer, t.n) if producer.idempotent else None)
        self._bound = (s, t, producer.partitioner)
        # a producer with a serializer binds its batch calls but not send and
        # send_keyed: no manager matches the stand-in, so they take the slow path
        serializing = producer.key_serializer is not None or producer.value_serializer is not None
        producer._bind_fast(_SERIALIZING if serializing else mgr, t.binding, s.state, self._bound)
        return t

    def _sender(self, producer: Producer) -> tuple:
        """(Sender, Topic) of a live binding, binding first if there is none."""
        b = self._live(producer)
        if b is None:
            self._bind(producer)
            b = self._bound
        return b

    # ---- idempotence ---------------------------------------------------------------
    def _registered(self, producer: Producer, n: int) -> Idem:
        """The producer's registration with the bus (made on first use: a higher
        epoch, which fences older instances of the same transactional_id)."""
        reg, idem = self._idem
        if reg is None:
            tid = producer.transactional_id or transaction.new_id()
            reg = transaction.register(self.mgr, tid, producer.topic, producer.transaction_ttl)
            idem = Idem(self.mgr.fabric, n, reg.number, reg.epoch, reg.lease_index, reg.lease_id,
                        f"producer {tid!r}")
            idem.renew_at_ns = now_ns() + int(producer.transaction_ttl * 1e9) // 2
            self._idem = (reg, idem)
        else:
            idem.grow(n)        # the topic grew (recreated): sequences of new partitions start at 0
        return idem

    def register(self, producer: Producer) -> int:
        if not producer.idempotent:
            raise InvalidArgument(f"producer of {producer.topic!r} is not idempotent: nothing to register")
        self._bind(producer)
        return self._idem[0].epoch

    def producer_epoch(self, producer: Producer) -> int | None:
        reg = self._idem[0]
        return reg.epoch if reg is not None else None

    def _renew(self, producer: Producer) -> None:
        reg, idem = self._idem
        with self._idem_lock:
            if idem.renew_at_ns <= now_ns():
                exp = transaction.renew(self.mgr, reg, producer.transaction_ttl)
                idem.renew_at_ns = exp - int(producer.transaction_ttl * 1e9) // 2

    def _fenced(self, producer: Producer) -> ProducerFenced:
        reg = self._idem[0]
        return ProducerFenced(transactional_id=reg.transactional_id, topic=producer.topic, epoch=reg.epoch,
                              current_epoch=transaction.current_epoch(self.mgr, reg))

    def _send_idem(self, producer: Producer, key, value: bytes, hdrs: bytes,
                   again: tuple[int, int] | None) -> tuple[int, int]:
        """One idempotent send. An attempt that failed after its write (``again``:
        the fast path's, as (partition, sequence)) is repeated with the same
        partition and sequence: a repeat of a sequence that landed returns where
        it landed, so the message is written once."""
        deadline: list = []
        res = SendResult()
        repeats = 0
        for _ in range(10_000):
            s, t = self._sender(producer)[:2]
            if again is None:
                rc = s.send_idem(key, hdrs, value, res)
            else:
                rc = s.send_idem_again(again[0], again[1], key, hdrs, value, res)
            if rc >= 0:
                return rc >> OFFSET_BITS, rc & MAX_OFFSET
            if (unsure := res.unsure) is not None:
                repeats += 1
                if repeats > _RETRIES:
                    self._raise_send(producer, rc, t)
                again = unsure
            elif rc == codes.RENEW:
                self._renew(producer)
            elif rc == codes.FENCED:
                raise self._fenced(producer)
            elif rc == codes.BUSY:
                time.sleep(0)       # another thread of ours is mid-write on that partition
            elif rc == codes.ABANDONED:
                repeats += 1        # nothing landed (a reader gave up on our slot): the sequence did not move
                if repeats > _RETRIES:
                    self._raise_send(producer, rc, t)
            elif rc == codes.FULL_RING:
                self._no_room(producer, t, res.full_partition, 1, _DEFAULT, deadline)
            elif rc == codes.TOOBIG:
                size = len(value) + len(hdrs) + (len(key) if key else 0)
                raise MessageTooLarge(f"topic {producer.topic!r}: {last_error()}", size,
                                      t.config.max_message_bytes)
            elif rc == codes.EXPIRED and repeats == 0:
                repeats += 1
                self._reread(producer)
            else:
                self._raise_send(producer, rc, t)
        self._raise_send(producer, rc, t)

    # ---- transactions ----------------------------------------------------------------
    def begin(self, producer: Producer) -> transaction.Transaction:
        if producer.transactional_id is None:
            raise TransactionError("transactions need a producer with a transactional_id "
                                   "(Producer(topic, transactional_id=...))")
        if self._txn is not None:
            raise TransactionError(f"producer {producer.transactional_id!r} already has an open transaction")
        if self._live(producer) is None or self._idem[0] is None:
            self._bind(producer)
        reg, idem = self._idem
        reg = transaction.begin(self.mgr, reg, producer.transaction_ttl)
        idem.renew_at_ns = now_ns() + int(producer.transaction_ttl * 1e9) // 2
        self._idem = (reg, idem)
        idem.txn = reg.txn
        self._txn = transaction.Transaction(producer, self.mgr, reg, self._ended)
        return self._txn

    def _ended(self, reg: transaction.Registration) -> None:
        """The open transaction was committed or aborted."""
        idem = self._idem[1]
        if idem is not None:
            idem.txn = 0
            self._idem = (reg, idem)
        self._txn = None

    def open_transaction(self, producer: Producer) -> transaction.Transaction | None:
        return self._txn

    # ---- one message ------------------------------------------------------------------
    def send(self, producer: Producer, key, value, headers, timeout=_DEFAULT) -> tuple[int, int]:
        """Checks, headers, retries, waits for room; also where every error is raised."""
        return self._send(producer, key, value, headers, timeout, None)

    def send_again(self, producer: Producer, key, value, headers, again: tuple[int, int]) -> tuple[int, int]:
        """Repeat an idempotent send of the crossing's that wrote, then failed, with
        its partition and sequence ``again``."""
        return self._send(producer, key, value, headers, _DEFAULT, again)

    def _send(self, producer: Producer, key, value, headers, timeout, again) -> tuple[int, int]:
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        hdrs = encode_headers(headers) if headers else b""
        if producer.idempotent:
            return self._send_idem(producer, key, value, hdrs, again)
        refreshed = False
        rc = 0
        attempts = 0
        deadline: list = []
        spread = 0      # round-robin: other partitions tried since the last wait
        res: SendResult | None = None       # asked for once a partition is found full
        while attempts < _RETRIES:
            s, t = self._sender(producer)[:2]
            rc = s.send(key, hdrs, value, res)
            if rc >= 0:
                return rc >> OFFSET_BITS, rc & MAX_OFFSET
            if rc == codes.FULL_RING:
                if (key is None or s.mode == Partitioner.RoundRobin) and spread < t.n - 1:
                    spread += 1         # another partition may have room
                    continue
                if res is None:         # only a result names the partition: send again with one
                    res = SendResult()
                    continue
                spread = 0
                self._no_room(producer, t, res.full_partition, 1, timeout, deadline)
                continue
            attempts += 1
            if rc == codes.TOOBIG:
                size = len(value) + len(hdrs) + (len(key) if key else 0)
                raise MessageTooLarge(f"topic {producer.topic!r}: {last_error()}", size,
                                      t.config.max_message_bytes)
            if rc == codes.ABANDONED:
                continue        # a reader gave up on our slot (we were descheduled): write again
            if rc in (codes.EXPIRED, codes.INVAL) and not refreshed:
                refreshed = True
                self._reread(producer)
                continue
            self._raise_send(producer, rc, t)
        self._raise_send(producer, rc, t)

    def _no_room(self, producer: Producer, t: Topic, p: int, count: int, timeout, deadline: list) -> None:
        """Partition p of t has no room for ``count`` messages (a gating reader is
        behind): raise BufferFull, or wait one slice for room. ``deadline`` holds
        the monotonic deadline of this call once the first wait set it. Waits
        sleep in C without the GIL, in slices so that Ctrl-C gets through and a
        reader that went stale is released (the gate recomputed) meanwhile. A
        "raise" topic recomputes the gate once, then raises."""
        if timeout is _DEFAULT:
            timeout = producer.timeout
        if t.config.on_full != "block":
            if not deadline:
                # the gate may lag: a reader went stale, or a commit was made by a handle
                # that could not store the gate; look once before refusing
                deadline.append(None)
                gate.recompute(self.mgr, t)
                return
            gate.note_full(t, p)
            raise BufferFull(f"topic {producer.topic!r} partition {p} is full: a gating reader has not read "
                             f"the oldest message (on_full='raise'); nothing was written")
        if not deadline:
            start = time.monotonic()
            deadline += [None if timeout is None else start + max(timeout, 0.0), start, False]
        elif not deadline[2] and time.monotonic() - deadline[1] > BLOCKED_LOG_SECS:
            deadline[2] = True         # once per call
            # only what is at hand: looking up the gating reader would take the lock mid-wait
            _log.warning("producer of %r blocked for more than %g s: partition %d is full and a live gating "
                         "reader has not read its oldest message", producer.topic, BLOCKED_LOG_SECS, p)
        end = deadline[0]
        left = _SLICE if end is None else min(_SLICE, end - time.monotonic())
        if left <= 0:
            gate.note_full(t, p)
            raise BufferFull(f"topic {producer.topic!r} partition {p} had no room for {count} message(s) "
                             f"within the timeout of {timeout} s; nothing was written")
        if not gate.wait_room(t, p, count, int(left * 1e9)):
            gate.recompute(self.mgr, t)      # a gating reader may have gone stale meanwhile

    def _reread(self, producer: Producer) -> None:
        """A send found a dead partition (expired, or reclaimed: no ring, "not open").
        The topic may have been restarted, deleted or recreated by another process:
        re-read the directory."""
        try:
            self._bind(producer, refresh=True)
        except NotFound:
            raise NotFound(f"topic {producer.topic!r} no longer exists (deleted)") from None

    def _raise_send(self, producer: Producer, rc: int, t: Topic) -> NoReturn:
        gone = [i for i, p in enumerate(t.partitions) if p is None]
        if rc == codes.INVAL and gone:
            raise LeaseExpired(f"topic {producer.topic!r}: partitions {gone} have expired and been "
                               "reclaimed; restart the topic")
        raise_for(rc, f"topic {producer.topic!r}")

    # ---- batches ------------------------------------------------------------------
    def send_batch(self, producer: Producer, values: Any, keys: Any = None,
                   timeout=_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
        """Many messages with one crossing into C (see ``Producer.send_batch``);
        ``values`` and ``keys`` are already serialized."""
        if producer.idempotent:         # message by message: each one stamped, each one idempotent
            return self._send_each(producer, values, keys)
        if values.__class__ is np.ndarray and keys is None and values.ndim == 2 and len(values):
            # rows handed to the core in place by the crossing
            rows, parts, offs = values, np.empty(len(values), dtype=np.uint32), np.empty(len(values), dtype=np.uint64)
            first = None
            if self._live(producer) is not None:        # bound: the first try without _batch's set-up
                first = producer._send_rows(rows, parts, offs)
                if first.__class__ is int and first >= 0:
                    return parts, offs
            done = self._batch(producer, lambda t: producer._send_rows(rows, parts, offs), parts, offs, timeout,
                               lambda: rows.shape[1] * rows.itemsize, first)
            if done is not None:
                return done
            # not C-contiguous, or too large: the packing path below
        if values.__class__ in _SEQUENCES and (keys is None or keys.__class__ in _SEQUENCES):
            n = len(values)
            if n and (keys is None or len(keys) == n):
                parts = np.empty(n, dtype=np.uint32)
                offs = np.empty(n, dtype=np.uint64)
                done = self._batch(producer, lambda t: producer._send_lists(values, keys, parts, offs), parts,
                                   offs, timeout, lambda: max(len(v) + (len(keys[i]) if keys is not None else 0)
                                                              for i, v in enumerate(values)))
                if done is not None:
                    return done
                # not all bytes: the packing path below checks and says why
        vals, vlens = pack(values, "values")
        n = len(vlens)
        if n == 0:
            raise InvalidArgument("empty batch")
        kbuf = klens = None
        if keys is not None:
            kbuf, klens = pack(keys, "keys")
            if len(klens) != n:
                raise InvalidArgument(f"{len(klens)} keys for {n} values")
        parts = np.empty(n, dtype=np.uint32)
        offs = np.empty(n, dtype=np.uint64)

        res = SendResult()

        def packed(t: Topic) -> int | tuple[int, int]:
            rc = self._bound[0].send_batch(n, kbuf, klens, vals, vlens, parts, offs, res)  # type: ignore[index]
            return (rc, res.full_partition) if rc == codes.FULL_RING else rc
        return self._batch(producer, packed, parts, offs, timeout,    # type: ignore[return-value]
                           lambda: int((vlens.astype(np.int64) + (klens if klens is not None else 0)).max()))

    def _batch(self, producer: Producer, call, parts: np.ndarray, offs: np.ndarray, timeout,
               largest, first: int | tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Run ``call(topic) -> rc`` until the batch lands: wait for room on a full
        "block" partition (``call`` then returns (rc, that partition)), re-read a
        topic found dead once, raise the rest. None: ``call`` could not take the
        batch (it returned None). ``first``: the result of a call the caller
        already made on the bound topic."""
        deadline: list = []
        attempt = 0
        while True:
            t = self._sender(producer)[1]
            rc, first = (call(t) if first is None else first), None
            if rc is None:
                return None
            if rc.__class__ is tuple:       # no room on partition rc[1]
                p = rc[1]
                self._no_room(producer, t, p, int((parts == p).sum()) or 1, timeout, deadline)
                continue
            if rc >= 0:
                return parts, offs
            self._batch_failed(producer, rc, t, attempt, largest)     # raises once it has re-read
            attempt += 1

    def _batch_failed(self, producer: Producer, rc: int, t: Topic, attempt: int, largest) -> None:
        """A batch came back with error rc: raise, or return to try once more after
        re-reading a topic whose partitions were found dead. ``largest()`` is the
        size of the batch's largest message, for MessageTooLarge."""
        if rc == codes.TOOBIG:
            raise MessageTooLarge(f"topic {producer.topic!r}: {last_error()}", int(largest()),
                                  t.config.max_message_bytes)
        if rc in (codes.EXPIRED, codes.INVAL) and attempt == 0:
            self._reread(producer)
            return
        self._raise_send(producer, rc, t)

    def _send_each(self, producer: Producer, values, keys) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(values, np.ndarray):
            if values.ndim != 2:
                raise InvalidArgument(f"values must be a 2-D array (one row per message), not {values.ndim}-D")
            values = [bytes(row) for row in values]
        if not isinstance(values, _SEQUENCES) or (keys is not None and not isinstance(keys, _SEQUENCES)):
            raise _validate.InvalidType("an idempotent producer's batch takes a list or tuple of values (and keys)")
        if not values:
            raise InvalidArgument("empty batch")
        if keys is not None and len(keys) != len(values):
            raise InvalidArgument(f"{len(keys)} keys for {len(values)} values")
        parts = np.empty(len(values), dtype=np.uint32)
        offs = np.empty(len(values), dtype=np.uint64)
        serialized = producer.key_serializer is not None or producer.value_serializer is not None
        for i, v in enumerate(values):
            k = keys[i] if keys is not None else None
            # values already serialized by send_batch go past the serializers
            parts[i], offs[i] = self.send(producer, k, v, None) if serialized else \
                producer.send_keyed(self.mgr, k, v)
        return parts, offs

    # ---- in place ------------------------------------------------------------------
    def loan(self, producer: Producer, size: int, key: bytes | None = None, headers=None) -> Loan:
        if producer.idempotent:
            raise Unsupported(f"producer of {producer.topic!r} is idempotent: loans are not stamped; use send")
        s, t = self._sender(producer)[:2]
        key = serde.serialize_key(producer.key_serializer, key)
        if key is not None:
            key = _validate.as_bytes(key, "key")
        p = s.pick(key)
        part = t.partition(p)
        return Loan(part.handle, part, size, key, headers, p)

    def close_producer(self, producer: Producer) -> None:
        """Give the registration back (an open transaction is aborted first)."""
        reg = self._idem[0]
        closed = self.mgr.fabric.closed
        if self._txn is not None and not closed:
            try:
                self._txn.abort()
            except GrafosError:
                pass        # fenced or expired: a resolver finishes it
        if reg is not None and not closed:
            transaction.unregister(self.mgr, reg)
        self._idem = (None, None)
        self._txn = None
        self._bound = None
