"""Topics on JetStream: the directory record, partitions and their leases.

* A topic is a record ``GF_TOPICS/t.<tok>`` (its name and
  :class:`~grafos.mq.topic.TopicConfig`).
* Partition *i* lives while its lease ``GF_LEASES/l.<tok>.<i>`` does: the
  lease record names the partition's incarnation and its expiry (seconds
  since the epoch, on the renewing client's clock) and carries a server TTL
  a second past that expiry, so the server forgets it on its own.
* Each incarnation is a stream ``GF_<tok>_<i>_<inc>`` on the subject
  ``gf.<tok>.<i>.<inc>``, holding the newest ``partition_capacity`` messages
  (``max_msgs``, discard old). Offset *n* is stream sequence *n* + 1.
* A partition whose lease is gone or expired is dead: whoever looks next
  (opening or describing the topic, a renewal, :meth:`reap`) deletes its
  stream. :meth:`restart` gives dead partitions a new lease and stream (a
  new incarnation: offsets start again at 0).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._clock import now_s
from ..errors import InvalidArgument, InvalidType, LeaseExpired
from ..mq.model import TopicConfig
from ..partition import PartitionState
from . import kv, names

if TYPE_CHECKING:
    from .manager import JetStreamManager


@dataclass(frozen=True)
class LeaseRecord:
    inc: int
    expires_at: float

    def to_json(self) -> dict:
        return {"inc": self.inc, "exp": self.expires_at}

    @staticmethod
    def parse(rec: dict | None) -> "LeaseRecord | None":
        try:
            return None if rec is None else LeaseRecord(int(rec["inc"]), float(rec["exp"]))
        except (KeyError, TypeError, ValueError):
            return None     # damaged: no lease


def server_ttl(expires_at: float) -> float:
    """Seconds for the server to keep a lease record: a second past its expiry
    (TTLs are whole seconds), so the expiry time, not the rounding, decides."""
    return max(1.0, math.ceil(expires_at - time.time()) + 1.0)


class JsLease:
    """A partition's lease, with the interface :class:`~grafos.leasekit.RenewalManager`
    uses (``expires_at``, ``alive``, ``expired``, ``ttl_remaining``, ``renew``)."""

    def __init__(self, bus: "JetStreamManager", topic: str, tok: str, partition: int, inc: int) -> None:
        self.bus, self.topic, self.tok, self.partition, self.id = bus, topic, tok, partition, inc
        self.key = names.lease_key(tok, partition)

    def __repr__(self) -> str:
        return f"<JsLease {self.topic}[{self.partition}] incarnation {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsLease) and (other.key, other.id) == (self.key, self.id)

    def __hash__(self) -> int:
        return hash((self.key, self.id))

    def _read(self) -> tuple[LeaseRecord | None, int]:
        rec, rev = self.bus.loop.run(kv.get(self.bus.js, names.LEASES, self.key), f"reading the lease of {self.topic}")
        lease = LeaseRecord.parse(rec)
        return (lease if lease is not None and lease.inc == self.id else None), rev

    @property
    def expires_at(self) -> float:
        lease, _ = self._read()
        return lease.expires_at if lease is not None else 0.0

    def alive(self, now: float | None = None) -> bool:
        lease, _ = self._read()
        if lease is None or lease.expires_at <= time.time():
            self.bus.reap_partition(self.tok, self.partition, self.id)   # dead for good: free its storage
        return lease is not None and lease.expires_at > now_s(now)

    def expired(self, now: float | None = None) -> bool:
        return not self.alive(now)

    def ttl_remaining(self, now: float | None = None) -> float:
        return max(0.0, self.expires_at - now_s(now))

    def renew(self, expires_at: float | None = None, *, ttl: float | None = None,
              now: float | None = None) -> float:
        t = now_s(now)
        if (expires_at is None) == (ttl is None):
            raise InvalidArgument("give exactly one of expires_at and ttl")
        exp = float(expires_at) if expires_at is not None else t + float(ttl)  # type: ignore[arg-type]
        for _ in range(3):
            lease, rev = self._read()
            if lease is None or lease.expires_at <= t:
                raise LeaseExpired(f"the lease of topic {self.topic!r} partition {self.partition} has expired")
            try:
                self.bus.loop.run(kv.put(self.bus.js, names.LEASES, self.key,
                                         LeaseRecord(self.id, exp).to_json(), rev, server_ttl(exp)),
                                  f"renewing the lease of {self.topic}")
                return exp
            except kv.Conflict:
                continue        # renewed by someone else meanwhile: read again
        raise LeaseExpired(f"the lease of topic {self.topic!r} partition {self.partition} keeps changing")


class JsPartition:
    """One live partition incarnation as last read from its lease."""

    def __init__(self, bus: "JetStreamManager", topic: str, tok: str, index: int, inc: int,
                 expires_at: float, config: TopicConfig) -> None:
        self.bus, self.topic, self.index, self.inc = bus, topic, index, inc
        self.stream = names.stream(tok, index, inc)
        self.subject = names.subject(tok, index, inc)
        self.expires_at = expires_at          #: as last read (renewals elsewhere move it)
        self.config = config
        self.lease = JsLease(bus, topic, tok, index, inc)

    def state(self, now: float | None = None) -> PartitionState:
        """Offsets from the stream, expiry from the lease (two round trips)."""
        earliest, latest = self.bus.bounds(self.stream)
        exp = self.lease.expires_at
        alive = exp > now_s(now)
        return PartitionState(earliest, latest, earliest, 0, self.config.partition_capacity,
                              self.config.partition_stride, alive, exp if alive else 0.0)


class JsTopic:
    """An opened topic, as :meth:`JetStreamManager.topic` returns it: the same
    attributes as :class:`~grafos.mq.topic.Topic` (``name``, ``config``, ``n``,
    ``partitions`` with None for dead ones, :meth:`partition`)."""

    def __init__(self, name: str, tok: str, config: TopicConfig, incarnation: int,
                 partitions: list[JsPartition | None]) -> None:
        self.name, self.tok, self.config, self.incarnation = name, tok, config, incarnation
        self.partitions = partitions
        self.n = len(partitions)
        self.loaded = time.monotonic()

    def partition(self, i: int) -> JsPartition:
        if isinstance(i, bool) or not isinstance(i, int):
            raise InvalidType(f"partition must be an int, not {type(i).__name__}")
        if not 0 <= i < self.n:
            raise InvalidArgument(f"topic {self.name!r} has partitions 0..{self.n - 1}, not {i}")
        p = self.partitions[i]
        if p is None:
            raise LeaseExpired(f"topic {self.name!r} partition {i} has expired; restart the topic")
        return p


def config_json(name: str, cfg: TopicConfig, incarnation: int) -> dict:
    return {"name": name, "n": cfg.num_partitions, "cap": cfg.partition_capacity,
            "stride": cfg.partition_stride, "ret": cfg.retention_secs, "inc": incarnation}


def parse_config(rec: dict) -> tuple[str, TopicConfig, int]:
    from ..errors import CorruptFabric
    try:
        return (str(rec["name"]), TopicConfig(int(rec["n"]), int(rec["cap"]), int(rec["stride"]),
                                              float(rec["ret"])), int(rec["inc"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFabric(f"topic record on the server is damaged: {e}") from None
