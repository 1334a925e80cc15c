"""Dead letters: count failures per message, and after ``max_retries`` move the
message to a DLQ topic with headers saying where it came from.

Retrying is Kafka's way: a consumer that fails on a message **rewinds** its
partition to it (:meth:`Consumer.seek_partition
<grafos.mq.consumer.Consumer.seek_partition>`), so a later poll delivers it
again, followed by the messages after it, in order. The messages of that
partition that came after it in the same poll are not processed now (they
will come again). Once the message has failed ``max_retries`` times it is
appended to the DLQ topic and the consumer moves past it: it is not
delivered again. :meth:`DlqRouter.failed` does both decisions for one
message; :meth:`DlqRouter.process` runs a handler over a whole poll.

The DLQ is an ordinary topic, so it is a ring with a retention like any
other: when it overflows, the oldest dead letters are overwritten and
``mgr.describe(dlq_topic)`` counts them (``lost``).

Nack counts live in this object, or with ``mgr=`` in the fabric's metadata
table (key ``d/<source>/<dlq>/<partition>/<offset>``), shared by every process
attached to the bus: a worker that takes over a partition knows how often a
message already failed. Each counted message holds a metadata slot until it
is acked or routed; :meth:`DlqRouter.prune` drops the counts of messages the
source ring has already overwritten.
"""
from __future__ import annotations

import struct
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from .. import _validate
from ..errors import CorruptFabric, InvalidArgument
from ..message import Message
from . import _metakeys
from .offset import MAX_OFFSET
from .producer import Partitioner, Producer
from .model import Bus

if TYPE_CHECKING:
    from .consumer import Consumer
    from .topic import TopicManager

__all__ = ["DlqRouter", "ProcessResult", "SOURCE_TOPIC", "SOURCE_PARTITION", "SOURCE_OFFSET", "FAILURES"]

#: headers of a dead letter (values are ASCII bytes)
SOURCE_TOPIC = "x-source-topic"
SOURCE_PARTITION = "x-source-partition"
SOURCE_OFFSET = "x-source-offset"
FAILURES = "x-failures"

_COUNT = struct.Struct("<I")


class _MemCounts:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._d: dict[tuple[int, int], int] = {}

    def locked(self) -> AbstractContextManager:
        return self._lock

    def get(self, p: int, off: int) -> int:
        return self._d.get((p, off), 0)

    def put(self, p: int, off: int, n: int) -> None:
        self._d[(p, off)] = n

    def delete(self, p: int, off: int) -> bool:
        return self._d.pop((p, off), None) is not None

    def items(self) -> dict[tuple[int, int], int]:
        return dict(self._d)


class _FabricCounts:
    def __init__(self, mgr: "TopicManager", source: str, dlq: str) -> None:
        self.fabric = mgr.fabric
        self.scope = _metakeys.prefix("d", source, dlq)

    def locked(self) -> AbstractContextManager:
        return self.fabric.locked()

    def _key(self, p: int, off: int) -> str:
        return f"{self.scope}{p}/{off}"

    def get(self, p: int, off: int) -> int:
        raw = self.fabric.meta_get(self._key(p, off))
        if raw is None:
            return 0
        if len(raw) != _COUNT.size:
            raise CorruptFabric(f"nack count {self._key(p, off)!r} is damaged")
        return _COUNT.unpack(raw)[0]

    def put(self, p: int, off: int, n: int) -> None:
        # saturate: a count read back from a damaged fabric may already be at the top
        self.fabric.meta_put(self._key(p, off), _COUNT.pack(min(n, 0xFFFFFFFF)))

    def delete(self, p: int, off: int) -> bool:
        return self.fabric.meta_del(self._key(p, off))

    def items(self) -> dict[tuple[int, int], int]:
        out = {}
        for key, raw in self.fabric.meta_items(self.scope):
            try:
                p, off = key[len(self.scope):].split("/")
                out[(int(p), int(off))] = _COUNT.unpack(raw)[0]
            except (ValueError, struct.error):
                raise CorruptFabric(f"nack count {key!r} is damaged") from None
        return out


@dataclass(frozen=True)
class ProcessResult:
    """What :meth:`DlqRouter.process` did with one poll."""

    processed: int           #: handled without error (and acked)
    retried: int             #: failed, partition rewound: delivered again later
    dead: int                #: failed the last time: sent to the DLQ
    deferred: int            #: after a rewind in their partition: delivered again later

    def __str__(self) -> str:
        return (f"processed {self.processed}, retried {self.retried}, dead {self.dead}, "
                f"deferred {self.deferred}")


class DlqRouter:
    """``DlqRouter("events", "events-dlq", 3)``; see the module docs."""

    def __init__(self, source_topic: str, dlq_topic: str, max_retries: int,
                 mgr: "TopicManager | None" = None) -> None:
        self.source_topic = _validate.name(source_topic, "source_topic", 64)
        self.dlq_topic = _validate.name(dlq_topic, "dlq_topic", 64)
        if self.source_topic == self.dlq_topic:
            raise InvalidArgument(f"the DLQ topic must differ from the source topic ({source_topic!r})")
        self.max_retries = _validate.integer(max_retries, "max_retries", 1, 1 << 31)
        self.mgr = mgr
        self._counts: _MemCounts | _FabricCounts
        if mgr is None:
            self._counts = _MemCounts()
        else:
            if not isinstance(mgr, Bus):
                raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
            self._counts = mgr.dlq_counts(self.source_topic, self.dlq_topic)      # in the bus's records
        self._producer = Producer(self.dlq_topic, Partitioner.KeyHash)
        self.routed = 0      #: dead letters this router appended

    def __repr__(self) -> str:
        return f"<DlqRouter {self.source_topic!r} -> {self.dlq_topic!r} after {self.max_retries}>"

    @staticmethod
    def _where(partition: object, offset: object) -> tuple[int, int]:
        return (_validate.integer(partition, "partition", 0, 1 << 20),
                _validate.integer(offset, "offset", 0, MAX_OFFSET))

    # ---- counting -------------------------------------------------------------------
    def nack(self, partition: int, offset: int) -> bool:
        """Count one more failure of the message at (partition, offset); True once
        it has failed ``max_retries`` times (route it to the DLQ then)."""
        p, off = self._where(partition, offset)
        c = self._counts
        with c.locked():
            n = c.get(p, off) + 1
            c.put(p, off, n)
        return n >= self.max_retries

    def ack(self, partition: int, offset: int) -> bool:
        """The message was processed: forget its failures. Returns whether it had any."""
        p, off = self._where(partition, offset)
        with self._counts.locked():
            return self._counts.delete(p, off)

    def failures(self, partition: int, offset: int) -> int:
        """How often the message has failed so far."""
        p, off = self._where(partition, offset)
        with self._counts.locked():
            return self._counts.get(p, off)

    def nack_counts(self) -> dict[tuple[int, int], int]:
        """(partition, offset) -> failures, for every message with failures counted."""
        with self._counts.locked():
            return dict(sorted(self._counts.items().items()))

    def prune(self, mgr: Bus) -> int:
        """Forget the counts of messages the source ring no longer holds
        (overwritten or expired). Returns how many were dropped."""
        t = mgr.topic(self.source_topic)
        earliest = {}
        for i, part in enumerate(t.partitions):
            st = part.state() if part is not None else None
            earliest[i] = st.earliest if st is not None and st.alive else None
        dropped = 0
        with self._counts.locked():
            for (p, off) in self._counts.items():
                e = earliest.get(p)
                if e is None or off < e:
                    self._counts.delete(p, off)
                    dropped += 1
        return dropped

    # ---- routing -----------------------------------------------------------------------
    def route_to_dlq(self, mgr: Bus, partition: int, offset: int, value: bytes,
                     key: bytes | None = None, headers: Iterable[tuple[str, bytes]] | None = None
                     ) -> tuple[int, int]:
        """Append the message to the DLQ topic with headers ``x-source-topic``,
        ``x-source-partition``, ``x-source-offset`` and ``x-failures`` (then
        ``headers``, e.g. the original message's), and forget its count.
        Returns (partition, offset) in the DLQ topic. If the append fails
        (unknown topic, message too large) the count is kept."""
        p, off = self._where(partition, offset)
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        extra = list(headers) if headers is not None else []
        src = mgr.topic(self.source_topic) if mgr.exists(self.source_topic) else None
        if src is not None and p >= src.n:
            raise InvalidArgument(f"topic {self.source_topic!r} has partitions 0..{src.n - 1}, not {p}")
        hdrs = [(SOURCE_TOPIC, self.source_topic.encode()), (SOURCE_PARTITION, str(p).encode()),
                (SOURCE_OFFSET, str(off).encode()), (FAILURES, str(self.failures(p, off)).encode())]
        where = self._producer.send_keyed(mgr, key, value, hdrs + extra)
        with self._counts.locked():
            self._counts.delete(p, off)
        self.routed += 1
        return where

    def failed(self, mgr: Bus, consumer: "Consumer", partition: int, message: Message) -> bool:
        """Record a failure of ``message`` (polled by ``consumer`` from ``partition``).

        Below the limit: rewind the consumer to the message so a later poll
        delivers it again, and return False; skip the rest of this partition's
        messages from the current poll, they come again after it. At the limit:
        route it to the DLQ (with its key and headers) and return True; the
        consumer goes on past it."""
        if self.nack(partition, message.offset):
            self.route_to_dlq(mgr, partition, message.offset, message.value, message.key,
                              message.headers)
            return True
        consumer.seek_partition(mgr, partition, message.offset)
        return False

    def process(self, mgr: Bus, consumer: "Consumer",
                messages: Iterable[tuple[int, Message]],
                handler: Callable[[int, Message], object]) -> ProcessResult:
        """Run ``handler(partition, message)`` over one poll's messages. A handler
        that raises has failed on the message (see :meth:`failed`); one that
        returns has processed it (its count, if any, is forgotten)."""
        rewound: set[int] = set()
        processed = retried = dead = deferred = 0
        for p, msg in messages:
            if p in rewound:
                deferred += 1
                continue
            try:
                handler(p, msg)
            except Exception:   # noqa: BLE001 - any failure of the handler is a nack
                if self.failed(mgr, consumer, p, msg):
                    dead += 1
                else:
                    retried += 1
                    rewound.add(p)
                continue
            self.ack(p, msg.offset)
            processed += 1
        return ProcessResult(processed, retried, dead, deferred)
