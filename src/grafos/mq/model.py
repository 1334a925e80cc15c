"""The bus's vocabulary, shared by every backend (shared memory and JetStream):
topic layout and description, capabilities, partitioners, seek policies, group
configuration, the offset store protocol, the offset limit, and :class:`Bus`,
the base every backend's manager shares. It imports no backend and no facade,
so both backends and the facades above them can import it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, NamedTuple, Protocol, runtime_checkable

from .. import _validate
from .._core import layout, sender
from ..errors import InvalidArgument, Unsupported
from ..partition import MAX_OFFSET, OFFSET_BITS

if TYPE_CHECKING:     # the handles live above this module (grafos.mq.bound supplies them)
    import concurrent.futures

    from .bound import BoundConsumer, BoundProducer
    from .consumer import Consumer
    from .producer import Producer
    from .subscribe import Subscriber

__all__ = ["TopicConfig", "PartitionInfo", "TopicDescription", "Capabilities", "SHARED_MEMORY", "Partitioner",
           "kafka_partition", "murmur2", "SeekPolicy", "GroupConfig", "Claim", "OffsetStore", "MAX_OFFSET",
           "OFFSET_BITS", "MAX_TOPIC_NAME", "MAX_PARTITIONS", "ON_FULL", "ProducerSession", "ConsumerSession", "Bus",
           "RemoteManager"]

#: documented defaults of :class:`TopicConfig`
DEFAULT_PARTITIONS = 4
DEFAULT_CAPACITY = 4096
DEFAULT_STRIDE = 512
DEFAULT_RETENTION_SECS = 3600.0
MAX_PARTITIONS = 4096
MAX_TOPIC_NAME = 64

#: what a send does when the slot it would write still holds a message a gating
#: reader has not read: overwrite it (the oldest message is lost to that reader),
#: block until there is room, or raise BufferFull
ON_FULL = {"overwrite": layout.FULL_OVERWRITE, "block": layout.FULL_BLOCK, "raise": layout.FULL_RAISE}


@dataclass(frozen=True)
class TopicConfig:
    """How a topic is laid out. Every partition is a ring of ``partition_capacity``
    slots of ``partition_stride`` bytes (a slot holds a 40-byte header, then key,
    headers and value), kept for ``retention_secs`` unless renewed."""

    num_partitions: int = DEFAULT_PARTITIONS
    partition_capacity: int = DEFAULT_CAPACITY
    partition_stride: int = DEFAULT_STRIDE
    retention_secs: float = DEFAULT_RETENTION_SECS
    #: ``"overwrite"`` (default), ``"block"`` or ``"raise"``: what a send does when
    #: a gating reader (a consumer group of the topic, or a consumer created with
    #: ``gating=True``) has not yet read the slot it would overwrite
    on_full: str = "overwrite"
    #: slot checksums (CRC32C, summed with the copy on write, verified on read):
    #: ``True``, ``False``, or ``None`` (default) for the fabric's kind: on for named
    #: and file fabrics (other processes may die mid-write, a file may be reopened
    #: after a crash), off for an in-process fabric. A created topic records what
    #: was chosen: its config then says ``True`` or ``False``.
    checksum: bool | None = None

    def __post_init__(self) -> None:
        if self.checksum is not None and not isinstance(self.checksum, bool):
            raise _validate.InvalidType(f"checksum must be True, False or None, not {type(self.checksum).__name__}")
        if not isinstance(self.on_full, str):
            raise _validate.InvalidType(f"on_full must be a str, not {type(self.on_full).__name__}")
        if self.on_full not in ON_FULL:
            raise InvalidArgument(f"on_full must be 'overwrite', 'block' or 'raise', got {self.on_full!r}")
        _validate.integer(self.num_partitions, "num_partitions", 1, MAX_PARTITIONS)
        _validate.integer(self.partition_capacity, "partition_capacity", 1, 1 << 30)
        _validate.integer(self.partition_stride, "partition_stride", layout.SLOT_HDR_SIZE + 8, 16 << 20)
        if self.partition_stride % 8:
            raise InvalidArgument(f"partition_stride must be a multiple of 8, got {self.partition_stride}")
        _validate.number(self.retention_secs, "retention_secs", 0, lo_open=True)

    @property
    def max_message_bytes(self) -> int:
        """The largest key + encoded headers + value one message may have: the whole
        ring less one slot header (a message larger than a slot spans several)."""
        return self.partition_capacity * self.partition_stride - layout.SLOT_HDR_SIZE

    @property
    def slot_room(self) -> int:
        """Room for key + encoded headers + value in one slot: larger messages take
        one offset per slot they span."""
        return self.partition_stride - layout.SLOT_HDR_SIZE


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    earliest: int
    latest: int
    lost: int                 #: offsets lost to overwrite
    abandoned: int            #: slots skipped after a writer died mid-append
    ttl_remaining: float      #: seconds until the lease expires (0 when expired)
    alive: bool
    lease_id: int
    incarnation: int = 0      #: which life of the partition (changes on restart); 0 if never made
    # back-pressure (topics with on_full "block" or "raise"; zeros elsewhere)
    gate: int = 0             #: producers may write offsets below it (0: not gated)
    gate_held_by: str | None = None   #: the live gating reader that sets the gate
    blocked: int = 0          #: live producers waiting for room now (up to 8: 8 means at least 8)
    blocked_secs: float = 0.0  #: total time producers waited for room
    full_raised: int = 0      #: sends refused with BufferFull
    gating: tuple = ()        #: the partition's gating readers (gate.GateReader), live or released


@dataclass(frozen=True)
class TopicDescription:
    name: str
    config: TopicConfig
    partitions: list[PartitionInfo] = field(default_factory=list)

    @property
    def produced(self) -> int:
        """Offsets used over the topic's life (since its last restart): one per
        message, one per slot for a message larger than a slot, plus padding."""
        return sum(p.latest for p in self.partitions)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.partitions)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, in one place: a call that needs a capability the
    bus lacks raises :class:`~grafos.errors.Unsupported` and says why
    (``docs/jetstream.md`` lists each difference). ``mgr.capabilities``."""

    transactions: bool        #: ``producer.begin``: atomic writes across partitions with offsets
    loans: bool               #: ``producer.loan``: writing a message in place
    peeks: bool               #: ``consumer.peek``: reading messages in place
    gating: bool              #: ``TopicConfig(on_full="block" | "raise")``: readers hold producers back
    abandoned_slots: bool     #: a writer can die mid-append and leave a slot readers step over
    shared_memory: bool       #: the bus lives in this machine's memory (``Fabric``)
    share_groups: bool = False    #: ``mgr.share_consumer``: many members per partition, a lock per record
    #: a share consumer's settle after its lock ran out is refused by the shared record state itself;
    #: False: by the member's own clock only, so a settle sent as the lock runs out can reach the
    #: record's next delivery
    share_fenced: bool = False


#: the shared-memory bus (in-process, named or file): everything
SHARED_MEMORY = Capabilities(transactions=True, loans=True, peeks=True, gating=True,
                             abandoned_slots=True, shared_memory=True, share_groups=True,
                             share_fenced=True)


class Partitioner(enum.IntEnum):
    """``KeyHash`` is Kafka's default: ``murmur2(key) & 0x7fffffff % partitions``,
    so a key lands on the same partition number as in Kafka. Messages without a
    key go round robin. ``RoundRobin`` ignores keys."""

    KeyHash = layout.PART_KEYHASH
    RoundRobin = layout.PART_ROUNDROBIN
    # PEP 8 spellings
    KEY_HASH = layout.PART_KEYHASH
    ROUND_ROBIN = layout.PART_ROUNDROBIN


def kafka_partition(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    key = _validate.as_bytes(key, "key")
    _validate.integer(num_partitions, "num_partitions", 1)
    return sender.kafka_partition(key, num_partitions)


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key`` as a signed 32-bit int (as Java returns it)."""
    key = _validate.as_bytes(key, "key")
    h = sender.murmur2(key)
    return h - (1 << 32) if h >= 1 << 31 else h


class SeekPolicy(enum.Enum):
    """Where :meth:`Consumer.seek` puts each assigned partition."""

    Committed = "committed"   #: the group's committed offset (Earliest if none)
    Earliest = "earliest"     #: the oldest message still in the ring
    Latest = "latest"         #: the end: only messages produced from now on
    # PEP 8 spellings
    COMMITTED = "committed"
    EARLIEST = "earliest"
    LATEST = "latest"

    @classmethod
    def of(cls, policy: "SeekPolicy | str") -> "SeekPolicy":
        """``policy`` itself, or the policy a name spells (``"earliest"``, any case)."""
        if isinstance(policy, SeekPolicy):
            return policy
        if isinstance(policy, str):
            try:
                return cls(policy.lower())
            except ValueError:
                raise InvalidArgument(f"no seek policy {policy!r}: use 'committed', 'earliest' or 'latest' "
                                      "(or SeekPolicy.Committed, .Earliest, .Latest)") from None
        raise _validate.InvalidType(f"policy must be a SeekPolicy or its name, not {type(policy).__name__}")


class Claim(NamedTuple):
    owner: str | None     #: None once given back (or its member left)
    epoch: int            #: incremented on every change of owner
    since_ns: int         #: when the current owner took it


@dataclass(frozen=True)
class GroupConfig:
    name: str
    topic: str
    num_partitions: int
    stale_threshold_secs: float


@runtime_checkable
class OffsetStore(Protocol):
    def committed(self, group: str, topic: str, partition: int) -> int | None: ...
    def commit(self, group: str, topic: str, partition: int, offset: int) -> None: ...


class ProducerSession(Protocol):
    """What serves a :class:`~grafos.mq.producer.Producer`'s calls on one bus
    (:meth:`Bus.producer_session`). Each call names the producer, whose settings
    (topic, partitioner, idempotence, serializers) it follows; keys and values
    arrive serialized, and ``timeout`` checked or the producer's own (the
    crossing's sentinel, ``grafos._crossing.PRODUCER_TIMEOUT``)."""

    def send(self, producer: Producer, key: Any, value: Any, headers: Any, timeout: Any) -> tuple[int, int]: ...
    def send_batch(self, producer: Producer, values: Any, keys: Any, timeout: Any) -> tuple[Any, Any]: ...
    def register(self, producer: Producer) -> int: ...
    def producer_epoch(self, producer: Producer) -> int | None: ...
    def begin(self, producer: Producer) -> Any: ...
    def open_transaction(self, producer: Producer) -> Any: ...
    def loan(self, producer: Producer, size: int, key: Any, headers: Any) -> Any: ...
    def close_producer(self, producer: Producer) -> None: ...


class ConsumerSession(Protocol):
    """What serves a :class:`~grafos.mq.consumer.Consumer`'s calls on one bus
    (:meth:`Bus.consumer_session`). Each call names the consumer, whose settings
    (topic, group, assignment, ``on_lost``, ``gating``) it follows; polls hand
    back raw messages (the consumer deserializes them)."""

    def poll(self, consumer: Consumer, max_messages: int, timeout: float | None,
             spin: float | None) -> list: ...
    def poll_batch(self, consumer: Consumer, max_messages: int, timeout: float | None, spin: float | None) -> Any: ...
    def polled(self, consumer: Consumer, count: int, max_messages: int) -> None: ...
    def wait(self, consumer: Consumer, timeout: float | None) -> bool: ...
    def wait_request(self, consumer: Consumer, waiter: Any, timeout: float | None) -> int: ...
    def peek(self, consumer: Consumer, max_messages: int) -> Any: ...
    def seek(self, consumer: Consumer, store: Any, policy: Any) -> None: ...
    def seek_partition(self, consumer: Consumer, partition: int, offset: int) -> None: ...
    def reassign(self, consumer: Consumer, partitions: list[int]) -> None: ...
    def position(self, consumer: Consumer, partition: int) -> int: ...
    def positions(self, consumer: Consumer) -> dict[int, int]: ...
    def lost(self, consumer: Consumer) -> dict[int, int]: ...
    def lag(self, consumer: Consumer) -> dict[int, int]: ...
    def latest(self, consumer: Consumer, partition: int) -> int: ...
    def aborted(self, consumer: Consumer) -> int: ...
    def incarnations(self, consumer: Consumer, partitions: list[int]) -> dict[int, int] | None: ...
    def commit_store(self, consumer: Consumer, store: OffsetStore) -> OffsetStore: ...
    def close_consumer(self, consumer: Consumer) -> None: ...


class Bus:
    """The base of every bus: the shared-memory
    :class:`~grafos.mq.topic.TopicManager` and the managers of buses on a
    server alike. A bus says once, when a producer or consumer binds, what
    serves that handle's calls (:meth:`session`), and keeps its own group
    records, dead-letter counts and offsets: the facades never ask which
    backend they are on. It also hands out handles bound to it
    (:mod:`grafos.mq.bound`)."""

    capabilities: Capabilities
    #: the makers of bound handles: :mod:`grafos.mq.bound` sets them, from the layer
    #: above (this module imports no facade)
    _handles: ClassVar[Any]

    def producer_session(self, producer: Producer) -> ProducerSession:
        """What serves ``producer``'s calls on this bus, asked once, when the
        producer first meets the bus: a session of its own on shared memory
        (:mod:`grafos.mq.shm_send`), the bus itself on a server."""
        raise NotImplementedError

    def consumer_session(self, consumer: Consumer) -> ConsumerSession:
        """What serves ``consumer``'s calls on this bus, asked once, when the
        consumer first reads through the bus: a session of its own on shared
        memory (:mod:`grafos.mq.shm_read`), the bus itself on a server."""
        raise NotImplementedError

    def offset_store(self) -> OffsetStore:
        """The bus's own offset store, shared by every process of the bus."""
        raise NotImplementedError

    def group_state(self, group: str, topic: str) -> Any:
        """The records of consumer group ``group`` on ``topic`` (see ``grafos.mq.group``)."""
        raise NotImplementedError

    def dlq_counts(self, source: str, dlq: str) -> Any:
        """The nack counts of the dead-letter route ``source`` -> ``dlq`` (see ``grafos.mq.dlq``)."""
        raise NotImplementedError

    def list_groups(self) -> list[GroupConfig]:
        """Every group with records on the bus."""
        raise NotImplementedError

    def producer(self, topic: str, partitioner: Partitioner | None = None, **options: Any) -> BoundProducer:
        """A :class:`~grafos.mq.producer.Producer` of ``topic`` bound to this bus:
        ``mgr.producer("events").send_keyed(key, value)``. ``options`` are the
        Producer's (``timeout``, ``idempotent``, ``transactional_id``,
        ``transaction_ttl``, ``key_serializer``, ``value_serializer``)."""
        return self._handles.producer(self, topic, Partitioner.KeyHash if partitioner is None else partitioner,
                                      **options)

    def consumer(self, topic: str, group: str = "default", *, partitions: Iterable[int] | None = None,
                 **options: Any) -> BoundConsumer:
        """A :class:`~grafos.mq.consumer.Consumer` of ``topic`` in ``group`` bound to
        this bus, reading ``partitions`` (default: all): ``mgr.consumer("events",
        group="processors").poll(100)``. ``options`` are the Consumer's
        (``max_batch``, ``gating``, ``gating_ttl``, ``check_crcs``, ``isolation``,
        ``on_lost``, ``key_deserializer``, ``value_deserializer``)."""
        c = self._handles.consumer(self, topic, group, **options)
        if partitions is not None:
            c.assign(partitions)
        return c

    def subscribe(self, topic: str, group: str, member: str | None = None, *,
                  store: OffsetStore | None = None, **options: Any) -> Subscriber:
        """A consumer of ``topic`` that joins ``group`` and manages its share of the
        partitions (the recommended consumer, see :mod:`grafos.mq.subscribe`):
        ``for partition, msg in mgr.subscribe("events", group="processors")``.
        Options: ``on_assign``, ``on_revoke``, ``auto_commit`` (True),
        ``auto_commit_interval`` (0: at every poll), ``session_timeout`` (30 s),
        ``heartbeat_interval``, ``max_poll_interval`` (300 s), ``max_batch``,
        ``key_deserializer``, ``value_deserializer``.
        The group's offsets live in ``store``, by default the bus's own
        (:meth:`offset_store`: a :class:`~grafos.mq.offset.FabricOffsetStore` on
        shared memory, a :class:`~grafos.jetstream.KvOffsetStore` on JetStream)."""
        return self._handles.subscribe(self, topic, group, member,
                                       store=self.offset_store() if store is None else store, **options)


class RemoteManager(Bus):
    """Base of the managers of buses that live on a server (the JetStream bus,
    :func:`grafos.connect`): the bus serves its handles' calls itself."""

    def wait_future(self, consumer: Any, timeout: float | None) -> "concurrent.futures.Future[bool]":
        """A consumer's wait started on the bus's own event loop, for a task to
        await (``asyncio.wrap_future``): True when a message is readable, False
        when ``timeout`` passed or the next poll must look again; cancelling
        the future ends the wait."""
        raise NotImplementedError

    @property
    def fabric(self) -> Any:
        """Refused: the bus lives on a server, so it has no fabric to inspect or
        reap in this process (``capabilities.shared_memory`` is false)."""
        raise Unsupported(f"{type(self).__name__} has no fabric: the bus lives on a server, not in shared "
                          "memory (capabilities.shared_memory is false); mgr.reap() deletes the partitions of "
                          "expired leases")
