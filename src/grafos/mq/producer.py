"""Producers: pick a partition (Kafka's keyed partitioner or round robin) and
append, with one crossing into C per message: ``send`` and ``send_keyed`` are
methods of the crossing's :class:`~grafos._crossing.SendPath`, which hands
the bytes to the core's ``gf_send`` (it hashes, picks the partition and
writes the slot) and builds the returned pair in C. Anything unusual (an
unbound producer, a type the crossing does not take, an error) comes back to
this module's slow path, which checks and raises. A Producer may be shared
by threads."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, NoReturn, Sequence

import numpy as np

from .. import _validate
from .._check import last_error, raise_for
from .._clock import now_ns
from .._core import codes
from .._core.sender import Idem, Sender, SendResult
from .._crossing import PRODUCER_TIMEOUT, SendPath
from ..errors import (BufferFull, GrafosError, InvalidArgument, LeaseExpired, MessageTooLarge, NotFound,
                      ProducerFenced, TransactionError, Unsupported)
from .._log import get as _logger
from ..loan import Loan
from ..message import encode_headers
from ..partition import MAX_OFFSET, OFFSET_BITS, pack
from . import gate, serde, transaction
from .model import SHARED_MEMORY, Bus
# importable from here too (the `X as X` form tells type checkers they are exported)
from .model import Partitioner as Partitioner, kafka_partition as kafka_partition, murmur2 as murmur2

if TYPE_CHECKING:
    from typing_extensions import Self

    from .topic import Topic, TopicManager

_RETRIES = 3
_SEQUENCES = (list, tuple)
_SLICE = 0.05          # seconds a blocked send sleeps before it checks signals and stale readers


#: what a producer with a serializer binds its crossing to instead of its manager
_SERIALIZING = object()

#: timeout not given: the producer's (help() shows it as ``timeout=self.timeout``)
_DEFAULT = PRODUCER_TIMEOUT


_log = _logger("producer")
#: a send that waits this long for room is logged (once per call)
BLOCKED_LOG_SECS = 1.0


class Producer(SendPath):
    """``Producer("events").with_partitioner(Partitioner.KeyHash)``.

    ``send(mgr, value, headers=None)`` and ``send_keyed(mgr, key, value,
    headers=None)`` append one message and return ``(partition, offset)``;
    values and keys are ``bytes``, ``bytearray`` or ``memoryview`` (taken
    without a copy). A Producer may be shared by threads: the hot path reads
    one binding (manager, C sender struct, topic) that is replaced whole, and
    the round-robin counter is atomic in C.

    On a topic with ``on_full="block"``, a send that finds no room waits for
    it up to ``timeout`` seconds (the producer's, or ``send(..., timeout=)``;
    None waits forever) and then raises BufferFull; with ``"raise"`` it raises
    at once. Either way nothing is written.

    ``key_serializer`` and ``value_serializer`` (callables ``obj -> bytes``,
    e.g. ``lambda o: json.dumps(o).encode()``) turn what ``send``,
    ``send_keyed`` and ``send_batch`` are given into bytes first; a None key
    stays None (no key). What a serializer raises reaches the caller with
    nothing sent; a result that is not bytes-like raises InvalidArgument. A
    producer with a serializer sends through Python (the crossing is for
    bytes); one without keeps the C path.
    """

    def __init__(self, topic: str, partitioner: Partitioner = Partitioner.KeyHash, *,
                 timeout: float | None = None, idempotent: bool = False,
                 transactional_id: str | None = None, transaction_ttl: float = 60.0,
                 key_serializer: serde.Serializer | None = None,
                 value_serializer: serde.Serializer | None = None) -> None:
        self.topic = _validate.name(topic, "topic", 64)
        self.key_serializer = serde.checked(key_serializer, "key_serializer")
        self.value_serializer = serde.checked(value_serializer, "value_serializer")
        if not isinstance(idempotent, bool):
            raise _validate.InvalidType(f"idempotent must be a bool, not {type(idempotent).__name__}")
        #: a name that outlives this object: a new Producer with the same id takes
        #: over (a higher epoch) and fences this one. Implies ``idempotent``.
        self.transactional_id = None if transactional_id is None else \
            _validate.name(transactional_id, "transactional_id", 64)
        #: every message carries (producer, epoch, sequence); a retried send that
        #: landed returns the original (partition, offset) instead of writing again
        self.idempotent = idempotent or self.transactional_id is not None
        #: seconds the producer's registration lives without a send or begin
        #: renewing it; an open transaction whose producer's registration expired
        #: is aborted by whoever looks next
        self.transaction_ttl = _validate.number(transaction_ttl, "transaction_ttl", 0, lo_open=True)
        #: how long a send to a full ``on_full="block"`` topic waits for room before
        #: BufferFull (None: forever); ``send*(..., timeout=)`` overrides it per call
        self.timeout = _validate.timeout(timeout)
        if isinstance(partitioner, bool) or not isinstance(partitioner, int):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        if partitioner not in Partitioner._value2member_map_:
            raise InvalidArgument(f"partitioner must be Partitioner.KeyHash or RoundRobin, got {partitioner!r}")
        self.partitioner = Partitioner(partitioner)
        # (mgr, Sender, Topic): replaced whole, never mutated, so threads see a consistent one
        self._bound: tuple = (None, None, None)
        # idempotence: (mgr, Registration, Idem) once registered with mgr
        self._idem: tuple = (None, None, None)
        self._idem_lock = threading.Lock()
        self._txn: "Transaction | None" = None

    def __reduce__(self):  # noqa: ANN204 - crosses processes as its settings; binds to the child's manager
        return (_remake, (self.topic, self.partitioner, self.timeout, self.idempotent and self.transactional_id is None,
                          self.transactional_id, self.transaction_ttl, self.key_serializer, self.value_serializer))

    def __repr__(self) -> str:
        kind = " transactional " + repr(self.transactional_id) if self.transactional_id is not None else \
            " idempotent" if self.idempotent else ""
        return f"<Producer {self.topic!r} ({self.partitioner.name}){kind}>"

    def with_partitioner(self, partitioner: Partitioner) -> "Producer":
        if not isinstance(partitioner, Partitioner):
            raise _validate.InvalidType(f"partitioner must be a Partitioner, not {type(partitioner).__name__}")
        self.partitioner = partitioner
        self._bound = (None, None, None)
        self._unbind_fast()
        return self

    def _session(self, mgr: Bus) -> Bus | None:
        """What serves this producer's calls on ``mgr`` (None: the producer writes
        the fabric itself); asked while the producer is not bound to ``mgr``."""
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        return mgr.session(self)

    def _bind(self, mgr: TopicManager, refresh: bool = False) -> Topic:
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        t = mgr.refresh(self.topic) if refresh else mgr.topic(self.topic)
        old = self._bound[1]
        s = Sender(t.rings, t.n, int(self.partitioner), rr=old.rr if old is not None else 0,
                   idem=self._registered(mgr, t.n) if self.idempotent else None)
        self._bound = (mgr, s, t)
        # a producer with a serializer binds its batch calls but not send and
        # send_keyed: no manager matches the stand-in, so they take the slow path
        serializing = self.key_serializer is not None or self.value_serializer is not None
        self._bind_fast(_SERIALIZING if serializing else mgr, t.binding, s.state, self._bound)
        return t

    # ---- one message ------------------------------------------------------------
    # send() and send_keyed() are SendPath's (C); they come here when they cannot
    # take the call themselves, with the arguments exactly as given.
    # A topic with on_full="block" waits for room here: the C path returns the
    # core's "no room" and the call lands in this slow path.
    # Every send of a producer with a serializer comes here (see _bind) and is
    # serialized once, before anything touches the bus.
    def _send_fallback(self, mgr: TopicManager, value: bytes, headers=None, *,
                       timeout=_DEFAULT) -> tuple[int, int]:
        value = serde.serialize_value(self.value_serializer, value)
        return self._send_slow(mgr, None, value, headers, timeout)

    def _send_again(self, mgr: TopicManager, key: bytes | None, value: bytes, headers,
                    part: int, seq: int) -> tuple[int, int]:
        """The crossing's idempotent send wrote, then failed: repeat it with the same
        partition and sequence (the arguments are those the crossing took)."""
        return self._send_slow(mgr, key, value, headers, again=(part, seq))

    def _send_keyed_fallback(self, mgr: TopicManager, key: bytes | None, value: bytes,
                             headers=None, *, timeout=_DEFAULT) -> tuple[int, int]:
        key = serde.serialize_key(self.key_serializer, key)
        value = serde.serialize_value(self.value_serializer, value)
        return self._send_slow(mgr, key, value, headers, timeout)

    # ---- idempotence ---------------------------------------------------------------
    def _registered(self, mgr: TopicManager, n: int) -> Idem:
        """This producer's registration with mgr (made on first use: a higher
        epoch, which fences older instances of the same transactional_id)."""
        m, reg, idem = self._idem
        if m is not mgr:
            tid = self.transactional_id or transaction.new_id()
            reg = transaction.register(mgr, tid, self.topic, self.transaction_ttl)
            idem = Idem(mgr.fabric, n, reg.number, reg.epoch, reg.lease_index, reg.lease_id, f"producer {tid!r}")
            idem.renew_at_ns = now_ns() + int(self.transaction_ttl * 1e9) // 2
            self._idem = (mgr, reg, idem)
        else:
            idem.grow(n)        # the topic grew (recreated): sequences of new partitions start at 0
        return idem

    def register(self, mgr: Bus, /) -> int:
        """Register now rather than on the first send: older instances with the
        same ``transactional_id`` are fenced, and a transaction they left is
        finished (aborted if open, carried through if decided). Returns the epoch."""
        if self._bound[0] is not mgr and (s := self._session(mgr)) is not None:
            return s.register(self)
        if not self.idempotent:
            raise InvalidArgument(f"producer of {self.topic!r} is not idempotent: nothing to register")
        self._bind(mgr)
        return self._idem[1].epoch

    @property
    def epoch(self) -> int | None:
        """The epoch this producer registered with (None: not idempotent, or not yet used)."""
        reg = self._idem[1]
        return reg.epoch if reg is not None else None

    def _renew(self, mgr: TopicManager) -> None:
        _, reg, idem = self._idem
        with self._idem_lock:
            if idem.renew_at_ns <= now_ns():
                exp = transaction.renew(mgr, reg, self.transaction_ttl)
                idem.renew_at_ns = exp - int(self.transaction_ttl * 1e9) // 2

    def _fenced(self, mgr: TopicManager) -> ProducerFenced:
        _, reg, _ = self._idem
        return ProducerFenced(transactional_id=reg.transactional_id, topic=self.topic, epoch=reg.epoch,
                              current_epoch=transaction.current_epoch(mgr, reg))

    def _send_idem(self, mgr: TopicManager, key, value: bytes, hdrs: bytes,
                   again: tuple[int, int] | None) -> tuple[int, int]:
        """One idempotent send. An attempt that failed after its write (``again``:
        the fast path's, as (partition, sequence)) is repeated with the same
        partition and sequence: a repeat of a sequence that landed returns where
        it landed, so the message is written once."""
        deadline: list = []
        res = SendResult()
        repeats = 0
        for _ in range(10_000):
            if self._bound[0] is not mgr or not self._bound[2].binding.valid:
                self._bind(mgr)
            _, s, t = self._bound
            if again is None:
                rc = s.send_idem(key, hdrs, value, res)
            else:
                rc = s.send_idem_again(again[0], again[1], key, hdrs, value, res)
            if rc >= 0:
                return rc >> OFFSET_BITS, rc & MAX_OFFSET
            if (unsure := res.unsure) is not None:
                repeats += 1
                if repeats > _RETRIES:
                    self._raise_send(rc, t)
                again = unsure
            elif rc == codes.RENEW:
                self._renew(mgr)
            elif rc == codes.FENCED:
                raise self._fenced(mgr)
            elif rc == codes.BUSY:
                time.sleep(0)       # another thread of ours is mid-write on that partition
            elif rc == codes.ABANDONED:
                repeats += 1        # nothing landed (a reader gave up on our slot): the sequence did not move
                if repeats > _RETRIES:
                    self._raise_send(rc, t)
            elif rc == codes.FULL_RING:
                self._no_room(mgr, t, res.full_partition, 1, _DEFAULT, deadline)
            elif rc == codes.TOOBIG:
                size = len(value) + len(hdrs) + (len(key) if key else 0)
                raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", size, t.config.max_message_bytes)
            elif rc == codes.EXPIRED and repeats == 0:
                repeats += 1
                self._reread(mgr)
            else:
                self._raise_send(rc, t)
        self._raise_send(rc, t)

    # ---- transactions ----------------------------------------------------------------
    def begin(self, mgr: Bus, /) -> "Transaction":
        """Open a transaction: the sends that follow (until commit or abort) belong
        to it; ``read_committed`` consumers see them only once it commits, and
        never if it aborts. Needs a ``transactional_id``. One at a time."""
        if self._bound[0] is not mgr and (s := self._session(mgr)) is not None:
            return s.begin(self)
        if self.transactional_id is None:
            raise TransactionError("transactions need a producer with a transactional_id "
                                   "(Producer(topic, transactional_id=...))")
        if self._txn is not None:
            raise TransactionError(f"producer {self.transactional_id!r} already has an open transaction")
        if self._bound[0] is not mgr or self._idem[0] is not mgr:
            self._bind(mgr)
        _, reg, idem = self._idem
        reg = transaction.begin(mgr, reg, self.transaction_ttl)
        idem.renew_at_ns = now_ns() + int(self.transaction_ttl * 1e9) // 2
        self._idem = (mgr, reg, idem)
        idem.txn = reg.txn
        self._txn = Transaction(self, mgr, reg)
        return self._txn

    def _ended(self, reg: "transaction.Registration") -> None:
        """The open transaction was committed or aborted."""
        m, _, idem = self._idem
        if idem is not None:
            idem.txn = 0
            self._idem = (m, reg, idem)
        self._txn = None

    @property
    def transaction(self) -> "Transaction | None":
        """The open transaction, if any."""
        return self._txn

    def _send_slow(self, mgr: TopicManager, key, value, headers, timeout=_DEFAULT, *,
                   again: tuple[int, int] | None = None) -> tuple[int, int]:
        """Checks, headers, retries, waits for room; also where every error is raised.
        ``again``: (partition, sequence) of an idempotent attempt that wrote, then failed."""
        if self._bound[0] is not mgr and (s := self._session(mgr)) is not None:
            return s.send(self, key, value, headers)
        if self.idempotent:
            value = _validate.as_bytes(value, "value")
            if key is not None:
                key = _validate.as_bytes(key, "key")
            if timeout is not _DEFAULT:
                _validate.timeout(timeout)
            return self._send_idem(mgr, key, value, encode_headers(headers) if headers else b"", again)
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        hdrs = encode_headers(headers) if headers else b""
        refreshed = False
        rc = 0
        attempts = 0
        deadline: list = []
        spread = 0      # round-robin: other partitions tried since the last wait
        res: SendResult | None = None       # asked for once a partition is found full
        while attempts < _RETRIES:
            if self._bound[0] is not mgr or not self._bound[2].binding.valid:
                self._bind(mgr)
            _, s, t = self._bound
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
                self._no_room(mgr, t, res.full_partition, 1, timeout, deadline)
                continue
            attempts += 1
            if rc == codes.TOOBIG:
                size = len(value) + len(hdrs) + (len(key) if key else 0)
                raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", size,
                                      t.config.max_message_bytes)
            if rc == codes.ABANDONED:
                continue        # a reader gave up on our slot (we were descheduled): write again
            if rc in (codes.EXPIRED, codes.INVAL) and not refreshed:
                refreshed = True
                self._reread(mgr)
                continue
            self._raise_send(rc, t)
        self._raise_send(rc, t)

    def _no_room(self, mgr: TopicManager, t: Topic, p: int, count: int, timeout, deadline: list) -> None:
        """Partition p of t has no room for ``count`` messages (a gating reader is
        behind): raise BufferFull, or wait one slice for room. ``deadline`` holds
        the monotonic deadline of this call once the first wait set it. Waits
        sleep in C without the GIL, in slices so that Ctrl-C gets through and a
        reader that went stale is released (the gate recomputed) meanwhile. A
        "raise" topic recomputes the gate once, then raises."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        if t.config.on_full != "block":
            if not deadline:
                # the gate may lag: a reader went stale, or a commit was made by a handle
                # that could not store the gate; look once before refusing
                deadline.append(None)
                gate.recompute(mgr, t)
                return
            gate.note_full(t, p)
            raise BufferFull(f"topic {self.topic!r} partition {p} is full: a gating reader has not read "
                             f"the oldest message (on_full='raise'); nothing was written")
        if not deadline:
            start = time.monotonic()
            deadline += [None if timeout is None else start + max(timeout, 0.0), start, False]
        elif not deadline[2] and time.monotonic() - deadline[1] > BLOCKED_LOG_SECS:
            deadline[2] = True         # once per call
            # only what is at hand: looking up the gating reader would take the lock mid-wait
            _log.warning("producer of %r blocked for more than %g s: partition %d is full and a live gating "
                         "reader has not read its oldest message", self.topic, BLOCKED_LOG_SECS, p)
        end = deadline[0]
        left = _SLICE if end is None else min(_SLICE, end - time.monotonic())
        if left <= 0:
            gate.note_full(t, p)
            raise BufferFull(f"topic {self.topic!r} partition {p} had no room for {count} message(s) "
                             f"within the timeout of {timeout} s; nothing was written")
        if not gate.wait_room(t, p, count, int(left * 1e9)):
            gate.recompute(mgr, t)      # a gating reader may have gone stale meanwhile

    def _reread(self, mgr: TopicManager) -> None:
        """A send found a dead partition (expired, or reclaimed: no ring, "not open").
        The topic may have been restarted, deleted or recreated by another process:
        re-read the directory."""
        try:
            self._bind(mgr, refresh=True)
        except NotFound:
            raise NotFound(f"topic {self.topic!r} no longer exists (deleted)") from None

    def _raise_send(self, rc: int, t: Topic) -> NoReturn:
        gone = [i for i, p in enumerate(t.partitions) if p is None]
        if rc == codes.INVAL and gone:
            raise LeaseExpired(f"topic {self.topic!r}: partitions {gone} have expired and been "
                               "reclaimed; restart the topic")
        raise_for(rc, f"topic {self.topic!r}")

    # ---- batches ------------------------------------------------------------------
    def send_batch(self, mgr: Bus, /, values: Sequence[bytes] | np.ndarray,
                   keys: Sequence[bytes] | None = None, *, timeout=_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
        """Append many messages with one crossing into C. ``values`` is a list or
        tuple of bytes (walked in C, no join) or a 2-D uint8 numpy array (one row
        per message, used in place). Returns (partitions, offsets) as numpy arrays:
        each message's own offset, rising with the batch's order within a
        partition, with gaps (docs/hardening.md, "A paused writer"). All or
        nothing: if any message is too large, or a partition of an
        ``on_full`` "raise" topic has no room (BufferFull), none is written; on a
        "block" topic the whole batch waits for room (up to ``timeout``).
        With serializers, ``values`` (and ``keys``) are lists or tuples of
        objects, all serialized before anything is sent."""
        if self.key_serializer is not None or self.value_serializer is not None:
            values, keys = self._serialize_batch(values, keys)
        if self._bound[0] is not mgr and (s := self._session(mgr)) is not None:
            return s.send_batch(self, values, keys)
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        if self.idempotent:         # message by message: each one stamped, each one idempotent
            return self._send_each(mgr, values, keys)
        if values.__class__ is np.ndarray and keys is None and values.ndim == 2 and len(values):
            # rows handed to the core in place by the crossing
            rows, parts, offs = values, np.empty(len(values), dtype=np.uint32), np.empty(len(values), dtype=np.uint64)
            b = self._bound
            first = None
            if b[0] is mgr and b[2].binding.valid:        # bound: the first try without _batch's set-up
                first = self._send_rows(rows, parts, offs)
                if first.__class__ is int and first >= 0:
                    return parts, offs
            done = self._batch(mgr, lambda t: self._send_rows(rows, parts, offs), parts, offs, timeout,
                               lambda: rows.shape[1] * rows.itemsize, first)
            if done is not None:
                return done
            # not C-contiguous, or too large: the packing path below
        if values.__class__ in _SEQUENCES and (keys is None or keys.__class__ in _SEQUENCES):
            n = len(values)
            if n and (keys is None or len(keys) == n):
                parts = np.empty(n, dtype=np.uint32)
                offs = np.empty(n, dtype=np.uint64)
                done = self._batch(mgr, lambda t: self._send_lists(values, keys, parts, offs), parts, offs,
                                   timeout, lambda: max(len(v) + (len(keys[i]) if keys is not None else 0)
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
            rc = self._bound[1].send_batch(n, kbuf, klens, vals, vlens, parts, offs, res)
            return (rc, res.full_partition) if rc == codes.FULL_RING else rc
        return self._batch(mgr, packed, parts, offs, timeout,    # type: ignore[return-value]
                           lambda: int((vlens.astype(np.int64) + (klens if klens is not None else 0)).max()))

    def _serialize_batch(self, values, keys) -> tuple[list, list | None]:
        if not isinstance(values, _SEQUENCES) or (keys is not None and not isinstance(keys, _SEQUENCES)):
            raise _validate.InvalidType("a batch through serializers takes a list or tuple of values (and keys), "
                                        f"not {type(values).__name__}")
        ks, vs = self.key_serializer, self.value_serializer
        out = [serde.serialize_value(vs, v) for v in values]
        return out, None if keys is None else [serde.serialize_key(ks, k) for k in keys]

    def _batch(self, mgr: TopicManager, call, parts: np.ndarray, offs: np.ndarray, timeout,
               largest, first: int | tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Run ``call(topic) -> rc`` until the batch lands: wait for room on a full
        "block" partition (``call`` then returns (rc, that partition)), re-read a
        topic found dead once, raise the rest. None: ``call`` could not take the
        batch (it returned None). ``first``: the result of a call the caller
        already made on the bound topic."""
        deadline: list = []
        attempt = 0
        while True:
            b = self._bound
            t = b[2] if b[0] is mgr and b[2].binding.valid else self._bind(mgr)
            rc, first = (call(t) if first is None else first), None
            if rc is None:
                return None
            if rc.__class__ is tuple:       # no room on partition rc[1]
                self._batch_no_room(mgr, t, parts, rc[1], timeout, deadline)
                continue
            if rc >= 0:
                return parts, offs
            self._batch_failed(mgr, rc, t, attempt, largest)     # raises once it has re-read
            attempt += 1

    def _batch_no_room(self, mgr: TopicManager, t: Topic, parts: np.ndarray, p: int, timeout,
                       deadline: list) -> None:
        self._no_room(mgr, t, p, int((parts == p).sum()) or 1, timeout, deadline)

    def _batch_failed(self, mgr: TopicManager, rc: int, t: Topic, attempt: int, largest) -> None:
        """A batch came back with error rc: raise, or return to try once more after
        re-reading a topic whose partitions were found dead. ``largest()`` is the
        size of the batch's largest message, for MessageTooLarge."""
        if rc == codes.TOOBIG:
            raise MessageTooLarge(f"topic {self.topic!r}: {last_error()}", int(largest()),
                                  t.config.max_message_bytes)
        if rc in (codes.EXPIRED, codes.INVAL) and attempt == 0:
            self._reread(mgr)
            return
        self._raise_send(rc, t)

    def _send_each(self, mgr: TopicManager, values, keys) -> tuple[np.ndarray, np.ndarray]:
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
        serialized = self.key_serializer is not None or self.value_serializer is not None
        for i, v in enumerate(values):
            k = keys[i] if keys is not None else None
            # values already serialized by send_batch go past the serializers
            parts[i], offs[i] = self._send_slow(mgr, k, v, None) if serialized else self.send_keyed(mgr, k, v)
        return parts, offs

    # ---- in place ------------------------------------------------------------------
    def loan(self, mgr: Bus, /, size: int, key: bytes | None = None, headers=None) -> Loan:
        """A zero-copy write of one message of ``size`` value bytes on the partition
        :meth:`send_keyed` (or :meth:`send`, without a key) would pick: a context
        manager over the slots (see :mod:`grafos.loan`). Not for idempotent
        producers (a loan's bytes are the caller's until commit: nothing to stamp
        or repeat)."""
        if self._bound[0] is not mgr and not getattr(mgr, "capabilities", SHARED_MEMORY).loans:
            raise Unsupported(f"producer of {self.topic!r}: loans write a message in place in shared memory, "
                              f"which this bus ({type(mgr).__name__}) does not have; use send")
        if self.idempotent:
            raise Unsupported(f"producer of {self.topic!r} is idempotent: loans are not stamped; use send")
        if self._bound[0] is not mgr:
            self._bind(mgr)
        _, s, t = self._bound
        key = serde.serialize_key(self.key_serializer, key)
        if key is not None:
            key = _validate.as_bytes(key, "key")
        p = s.pick(key)
        part = t.partition(p)
        return Loan(part.handle, part, size, key, headers, p)

    def flush(self, timeout: float | None = None) -> int:
        """Appends are synchronous; nothing is buffered. Returns 0 (messages pending)."""
        return 0

    def close(self) -> None:
        """Forget the binding; an idempotent producer gives its registration back
        (an open transaction is aborted first)."""
        mgr, reg, _ = self._idem
        if self._txn is not None and mgr is not None and not mgr.fabric.closed:
            try:
                self._txn.abort()
            except GrafosError:
                pass        # fenced or expired: a resolver finishes it
        if reg is not None and mgr is not None and not mgr.fabric.closed:
            transaction.unregister(mgr, reg)
        self._idem = (None, None, None)
        self._txn = None
        self._bound = (None, None, None)
        self._unbind_fast()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remake(topic: str, partitioner: Partitioner, timeout: float | None, idempotent: bool,
            transactional_id: str | None, transaction_ttl: float,
            key_serializer: serde.Serializer | None = None,
            value_serializer: serde.Serializer | None = None) -> Producer:
    return Producer(topic, partitioner, timeout=timeout, idempotent=idempotent,
                    transactional_id=transactional_id, transaction_ttl=transaction_ttl,
                    key_serializer=key_serializer, value_serializer=value_serializer)


class Transaction:
    """An open transaction of a :class:`Producer` (``prod.begin(mgr)``): the
    producer's sends until :meth:`commit` or :meth:`abort` belong to it.
    ``send``/``send_keyed`` here are the producer's. As a context manager it
    commits when the block ends normally and aborts when it raises."""

    def __init__(self, producer: Producer, mgr: TopicManager, reg: "transaction.Registration") -> None:
        self.producer = producer
        self.mgr = mgr
        self.number = reg.txn
        self._reg = reg
        self._offsets: list = []
        self.state = "open"

    def send(self, value: bytes, headers=None) -> tuple[int, int]:
        self._check_open()
        return self.producer.send(self.mgr, value, headers)

    def send_keyed(self, key: bytes | None, value: bytes, headers=None) -> tuple[int, int]:
        self._check_open()
        return self.producer.send_keyed(self.mgr, key, value, headers)

    def commit_offsets(self, consumer, store, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit ``consumer``'s positions (or ``offsets``) to ``store`` as part of
        this transaction: they become committed if and only if it commits.
        ``store``: a FabricOffsetStore of the same bus, or a MemOffsetStore
        (not for a group that gates the topic: its gate follows the bus's
        offsets). Returns what will be committed."""
        self._check_open()
        transaction.check_store(self.mgr.fabric, store)
        group, topic, pos, incs = consumer.pending_commit(offsets)
        gate.check_store(self.mgr, topic, group, store)
        self._offsets.append((store, group, topic, pos, incs))
        return dict(pos)

    send_offsets_to_transaction = commit_offsets    #: Kafka's name

    def commit(self) -> None:
        """Make every message of the transaction and its offsets visible at once."""
        self._check_open()
        try:
            reg = transaction.commit(self.mgr, self._reg, self._offsets)
        except GrafosError:
            self.state = "failed"
            self.producer._ended(self._reg)
            raise
        self.state = "committed"
        self.producer._ended(reg)

    def abort(self) -> None:
        """Make none of the transaction visible (its offsets are not committed)."""
        if self.state != "open":
            return
        try:
            reg = transaction.abort(self.mgr, self._reg)
        finally:
            self.state = "aborted"
            self.producer._ended(self._reg)
        self.producer._ended(reg)

    def _check_open(self) -> None:
        if self.state != "open":
            raise TransactionError(f"transaction {self.number} of {self.producer.transactional_id!r} "
                                   f"is {self.state}")

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state != "open":
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<Transaction {self.number} of {self.producer.transactional_id!r}: {self.state}>"
