"""Producers: pick a partition (Kafka's keyed partitioner or round robin) and
append, with one crossing into C per message: ``send`` and ``send_keyed`` are
methods of the crossing's :class:`~grafos._crossing.SendPath`, which hands
the bytes to the core's ``gf_send`` (it hashes, picks the partition and
writes the slot) and builds the returned pair in C. Anything the crossing
does not take itself (an unbound producer, a type it does not take, an
error) goes to the producer's session on its bus (``Bus.producer_session``:
:mod:`grafos.mq.shm_send` on shared memory), which checks, retries and
raises. A Producer may be shared by threads."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import _validate
from .._crossing import PRODUCER_TIMEOUT, SendPath
from ..errors import InvalidArgument
from . import serde
from .model import Bus, ProducerSession
# importable from here too (the `X as X` form tells type checkers they are exported)
from .model import Partitioner as Partitioner, kafka_partition as kafka_partition, murmur2 as murmur2
from .transaction import Transaction as Transaction

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..loan import Loan

_SEQUENCES = (list, tuple)

#: timeout not given: the producer's (help() shows it as ``timeout=self.timeout``)
_DEFAULT = PRODUCER_TIMEOUT


class _Unsent:
    """The session of a producer that has met no bus yet: no registration, no
    transaction, nothing to give back."""

    def producer_epoch(self, producer: Producer) -> None:
        return None

    def open_transaction(self, producer: Producer) -> None:
        return None

    def close_producer(self, producer: Producer) -> None:
        return None


_UNSENT = _Unsent()


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
        # (bus, its session for this producer): replaced whole, so threads see a consistent one
        self._sess: tuple = (None, _UNSENT)
        self._sess_lock = threading.Lock()

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
        self._unbind_fast()         # the session binds again, with this partitioner
        return self

    def _session(self, mgr: Bus) -> ProducerSession:
        """What serves this producer's calls on ``mgr``: asked once per bus, when
        the producer first meets it."""
        m, s = self._sess
        if m is mgr:
            return s
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        with self._sess_lock:
            m, s = self._sess
            if m is not mgr:
                s = mgr.producer_session(self)
                self._sess = (mgr, s)
        return s

    # ---- one message ------------------------------------------------------------
    # send() and send_keyed() are SendPath's (C); they come here when they cannot
    # take the call themselves, with the arguments exactly as given. Every send of
    # a producer with a serializer comes here and is serialized once, before
    # anything touches the bus.
    def _send_fallback(self, mgr: Bus, value: bytes, headers=None, *,
                       timeout=_DEFAULT) -> tuple[int, int]:
        value = serde.serialize_value(self.value_serializer, value)
        return self._send_slow(mgr, None, value, headers, timeout)

    def _send_keyed_fallback(self, mgr: Bus, key: bytes | None, value: bytes,
                             headers=None, *, timeout=_DEFAULT) -> tuple[int, int]:
        key = serde.serialize_key(self.key_serializer, key)
        value = serde.serialize_value(self.value_serializer, value)
        return self._send_slow(mgr, key, value, headers, timeout)

    def _send_slow(self, mgr: Bus, key, value, headers, timeout=_DEFAULT) -> tuple[int, int]:
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        return self._session(mgr).send(self, key, value, headers, timeout)

    def _send_again(self, mgr: Bus, key: bytes | None, value: bytes, headers,
                    part: int, seq: int) -> tuple[int, int]:
        """The crossing's idempotent send wrote, then failed: repeat it with the same
        partition and sequence (the arguments are those the crossing took). Only a
        shared-memory session binds the crossing, so only it is asked."""
        return self._session(mgr).send_again(self, key, value, headers, (part, seq))  # type: ignore[attr-defined]

    # ---- idempotence and transactions -------------------------------------------------
    def register(self, mgr: Bus, /) -> int:
        """Register now rather than on the first send: older instances with the
        same ``transactional_id`` are fenced, and a transaction they left is
        finished (aborted if open, carried through if decided). Returns the epoch."""
        return self._session(mgr).register(self)

    @property
    def epoch(self) -> int | None:
        """The epoch this producer registered with (None: not idempotent, or not yet used)."""
        return self._sess[1].producer_epoch(self)

    def begin(self, mgr: Bus, /) -> Transaction:
        """Open a transaction: the sends that follow (until commit or abort) belong
        to it; ``read_committed`` consumers see them only once it commits, and
        never if it aborts. Needs a ``transactional_id``. One at a time."""
        return self._session(mgr).begin(self)

    @property
    def transaction(self) -> Transaction | None:
        """The open transaction, if any."""
        return self._sess[1].open_transaction(self)

    # ---- batches ------------------------------------------------------------------
    def send_batch(self, mgr: Bus, /, values: Sequence[bytes] | np.ndarray,
                   keys: Sequence[bytes] | None = None, *, timeout=_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
        """Append many messages with one crossing into C (on a shared-memory bus, a
        batch of 16 KiB or more copies without the GIL: other threads run
        meanwhile). ``values`` is a list or tuple of bytes (walked in C, no join)
        or a 2-D uint8 numpy array (one row per message, used in place). Returns
        (partitions, offsets) as numpy arrays: each message's own offset, rising
        with the batch's order within a partition, with gaps (docs/hardening.md,
        "A paused writer"). All or nothing: if any message is too large, or a
        partition of an ``on_full`` "raise" topic has no room (BufferFull), none
        is written; on a "block" topic the whole batch waits for room (up to
        ``timeout``).
        With serializers, ``values`` (and ``keys``) are lists or tuples of
        objects, all serialized before anything is sent."""
        if self.key_serializer is not None or self.value_serializer is not None:
            values, keys = self._serialize_batch(values, keys)
        s = self._session(mgr)
        if timeout is not _DEFAULT:
            _validate.timeout(timeout)
        return s.send_batch(self, values, keys, timeout)

    def _serialize_batch(self, values, keys) -> tuple[list, list | None]:
        if not isinstance(values, _SEQUENCES) or (keys is not None and not isinstance(keys, _SEQUENCES)):
            raise _validate.InvalidType("a batch through serializers takes a list or tuple of values (and keys), "
                                        f"not {type(values).__name__}")
        ks, vs = self.key_serializer, self.value_serializer
        out = [serde.serialize_value(vs, v) for v in values]
        return out, None if keys is None else [serde.serialize_key(ks, k) for k in keys]

    # ---- in place ------------------------------------------------------------------
    def loan(self, mgr: Bus, /, size: int, key: bytes | None = None, headers=None) -> Loan:
        """A zero-copy write of one message of ``size`` value bytes on the partition
        :meth:`send_keyed` (or :meth:`send`, without a key) would pick: a context
        manager over the slots (see :mod:`grafos.loan`). Not for idempotent
        producers (a loan's bytes are the caller's until commit: nothing to stamp
        or repeat)."""
        return self._session(mgr).loan(self, size, key, headers)

    def flush(self, timeout: float | None = None) -> int:
        """Appends are synchronous; nothing is buffered. Returns 0 (messages pending)."""
        return 0

    def close(self) -> None:
        """Forget the bus; an idempotent producer gives its registration back
        (an open transaction is aborted first)."""
        self._sess[1].close_producer(self)
        self._sess = (None, _UNSENT)
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
