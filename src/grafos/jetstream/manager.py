"""The bus on NATS JetStream: ``TopicManager.connect("nats://host:4222")``.

:class:`JetStreamManager` takes the place of a
:class:`~grafos.mq.topic.TopicManager`: the same ``create``, ``delete``,
``restart``, ``topics``, ``describe`` calls, and the producers, consumers,
groups, DLQ routers and renewal managers of :mod:`grafos.mq` accept it where
they take a manager. How topics map onto streams and KV records is in
:mod:`grafos.jetstream.topics`; reading in :mod:`grafos.jetstream.cursors`;
idempotent and fenced producers in :mod:`grafos.jetstream.producers`;
where semantics differ from the shared-memory bus, ``docs/jetstream.md``.

Every call is synchronous and bounded by ``timeout`` (default 5 s): a server
that does not answer gives :class:`~grafos.errors.Unavailable`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import nats
import nats.errors
import nats.js.errors
import numpy as np
from nats.js import api

from .. import _validate
from .._clock import now_s
from .._log import get as _logger
from ..errors import AlreadyExists, InvalidArgument, LeaseExpired, MessageTooLarge, NotFound, Unavailable, Unsupported
from ..message import encode_headers
from ..mq.model import (MAX_TOPIC_NAME, Capabilities, GroupConfig, PartitionInfo, Partitioner, RemoteManager,
                        TopicConfig, TopicDescription, kafka_partition)
from . import envelope, kv, names
from .cursors import Cursors
from .direct import DirectPublisher
from .loop import UNAVAILABLE, Loop, placement_waits
from .producers import Registration
from .topics import JsLease, JsPartition, JsTopic, LeaseRecord, config_json, parse_config, server_ttl

if TYPE_CHECKING:
    from ..mq.consumer import Consumer
    from ..mq.producer import Producer

#: JetStream topics: each partition is a stream (a Raft group on a cluster)
MAX_JS_PARTITIONS = 256
_HEADER_ROOM = 256           # bytes of NATS headers allowed beside a message (Nats-Msg-Id)
_DUPLICATE_WINDOW = 30.0     # seconds a Nats-Msg-Id dedupes a retried publish
_PLACEMENT_RETRY = 0.25      # seconds between tries to place a stream while a peer is offline
_WINDOW = 1000               # publishes in flight per send_batch
_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def _urls(servers: str | Sequence[str]) -> list[str]:
    urls = [servers] if isinstance(servers, str) else list(servers) if isinstance(servers, (list, tuple)) else None
    if not urls or not all(isinstance(u, str) for u in urls):
        raise _validate.InvalidType(f"servers must be a nats:// URL or a list of them, not {servers!r}")
    for u in urls:
        if not u.startswith(_SCHEMES):
            raise InvalidArgument(f"{u!r} is not a NATS server URL (nats://host:port)")
    return urls


_log = _logger("jetstream")


@dataclass
class _Sender:
    """Per-producer state: the topic as last read, the round-robin counter and
    the producer's id for Nats-Msg-Id (dedupes a publish retried after a failover).
    An idempotent producer numbers its messages per partition under its epoch;
    one with a transactional_id holds a registration, checked before each send."""

    topic: JsTopic | None
    rr: Any
    pid: str
    seq: Any
    idempotent: bool = False
    reg: Registration | None = None
    epoch: int = 0
    seqs: dict[int, Any] | None = None

    def msg_id(self, partition: int) -> str:
        """The Nats-Msg-Id of this producer's next message to ``partition``."""
        if not self.idempotent:
            return f"{self.pid}-{next(self.seq)}"
        assert self.seqs is not None
        c = self.seqs.get(partition)
        if c is None:
            c = self.seqs.setdefault(partition, itertools.count())
        return f"{self.pid}.{self.epoch}.{partition}.{next(c)}"


class JetStreamManager(RemoteManager):
    """A connection to a JetStream server or cluster, used as a grafos bus.

    ``servers``: one URL or a list (a cluster). ``replicas``: copies of every
    stream and record (3 on a 3-node cluster). ``age_limit``: also give each
    partition stream ``max_age = retention_secs`` (storage bounded even when no
    client is left to reap, but a message then lives at most that long, as in
    Kafka); off by default: the lease alone decides, as on the shared-memory
    bus. ``timeout`` bounds every call. Other keywords (``user``, ``password``,
    ``token``, ``user_credentials``, ``nkeys_seed``, ``tls``, ``tls_hostname``,
    ...) go to :func:`nats.connect`.
    """

    #: what this backend can do: no transactions, loans, peeks or gating (docs/jetstream.md)
    capabilities = Capabilities(transactions=False, loans=False, peeks=False, gating=False,
                                abandoned_slots=False, shared_memory=False, share_groups=True,
                                share_fenced=False)

    def share_consumer(self, topic: str, group: str = "default", *, lock_secs: float = 30.0,
                       max_deliveries: int = 5, dlq: str | None = None, **kw: Any) -> Any:
        """A member of share group ``group`` on every partition of ``topic``: a durable
        explicit-ack pull consumer per partition stream (:mod:`grafos.jetstream.share`)."""
        from .share import JsShareConsumer
        return JsShareConsumer(self, topic, group, lock_secs=lock_secs, max_deliveries=max_deliveries,
                               dlq=dlq, **kw)

    def __init__(self, servers: str | Sequence[str], *, replicas: int = 1, timeout: float = 5.0,
                 age_limit: bool = False, **options: Any) -> None:
        self.servers = _urls(servers)
        self.replicas = _validate.integer(replicas, "replicas", 1, 5)
        self.timeout = _validate.number(timeout, "timeout", 0, lo_open=True)
        self.age_limit = bool(age_limit)
        self.ident = ",".join(sorted(self.servers))
        self.loop = Loop(self.timeout)
        self._lock = threading.RLock()
        self._topics: dict[str, JsTopic] = {}
        self._senders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.cursors = Cursors(self)
        self._closed = False
        # pending_size=0: a publish while disconnected fails at once instead of being
        # buffered and delivered after the call already reported Unavailable
        opts = dict(connect_timeout=self.timeout, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                    pending_size=0,
                    allow_reconnect=True, error_cb=self._quiet, disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected, closed_cb=self._quiet_event)
        opts.update(options)
        try:
            self.nc = self.loop.run(self._connect(opts), f"connecting to {self.servers}",
                                    timeout=self.timeout * 2)
        except BaseException:
            self.loop.stop()
            raise
        self.js = self.nc.jetstream(timeout=self.timeout)
        # acknowledged single publishes on a socket of the caller's (plain nats:// only)
        self._direct = DirectPublisher(self._direct_server, min(self.timeout / 2, 1.0)) if not options else None
        try:
            self.loop.run(self._buckets(), "creating the bus's KV buckets", timeout=self.timeout * 3)
            self.reap()
        except BaseException:
            self.close()
            raise

    async def _connect(self, opts: dict) -> Any:
        # nats.connect retries the servers itself; give up after the bound
        try:
            return await asyncio.wait_for(nats.connect(servers=self.servers, **opts), self.timeout * 2)
        except (asyncio.TimeoutError, nats.errors.NoServersError, OSError) as e:
            raise Unavailable(f"cannot connect to the JetStream server(s) {self.servers}: "
                              f"{type(e).__name__} {e}") from None

    @property
    def direct(self) -> DirectPublisher | None:
        """The blocking connection of the caller's thread for acknowledged
        publishes and record writes (None: everything goes through the loop)."""
        return self._direct

    def _direct_server(self) -> tuple[str, int] | None:
        """Where the loop's connection is, when a plain connection may follow it."""
        u = getattr(self.nc, "connected_url", None)
        if u is None or u.scheme != "nats" or u.username or u.password or not u.hostname:
            return None
        return u.hostname, u.port or 4222

    @staticmethod
    async def _quiet(e: Exception) -> None:
        """nats-py reports connection errors here; calls report them as Unavailable."""

    @staticmethod
    async def _quiet_event() -> None:
        pass

    async def _disconnected(self) -> None:
        if not self._closed:
            _log.warning("bus %s: disconnected from the JetStream server; reconnecting", self.ident)

    async def _reconnected(self) -> None:
        _log.warning("bus %s: reconnected to the JetStream server %s", self.ident,
                     getattr(getattr(self, "nc", None), "connected_url", None))

    async def _buckets(self) -> None:
        info = await self.js.account_info()
        if info is None:
            raise Unavailable("the server has no JetStream (start it with -js)")
        async def bucket(b: str) -> None:
            try:
                await self.js.key_value(b)
            except nats.js.errors.BucketNotFoundError:
                try:
                    await self.js.create_key_value(bucket=b, history=1, replicas=self.replicas,
                                                   storage=api.StorageType.FILE)
                except nats.js.errors.BadRequestError:
                    await self.js.key_value(b)      # created by another client meanwhile
        await asyncio.gather(*(bucket(b) for b in names.BUCKETS))

    def __repr__(self) -> str:
        return f"<JetStreamManager {self.ident}{' closed' if self._closed else ''}>"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_direct", None) is not None:
            self._direct.close()
        try:
            self.cursors.close_all()
            self.loop.run(self.loop.settle(), "closing feeds", timeout=3.0)
            self.loop.run(self.nc.close(), "closing the connection", timeout=2.0)
        except Exception:   # noqa: BLE001 - closing a dead connection is not an error
            pass
        self.loop.stop()

    def __enter__(self) -> "JetStreamManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Any, what: str, timeout: float | None = -1.0) -> Any:
        return self.loop.run(coro, what, timeout)

    # ---- directory --------------------------------------------------------------------
    def create(self, name: str, config: TopicConfig | None = None, *, now: float | None = None) -> JsTopic:
        """Create a topic; a duplicate name raises AlreadyExists."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        config = TopicConfig() if config is None else config
        if not isinstance(config, TopicConfig):
            raise _validate.InvalidType(f"config must be a TopicConfig, not {type(config).__name__}")
        if config.num_partitions > MAX_JS_PARTITIONS:
            raise InvalidArgument(f"num_partitions must be <= {MAX_JS_PARTITIONS} on JetStream "
                                  f"(a stream per partition), got {config.num_partitions}")
        if config.on_full != "overwrite":
            raise Unsupported(f"on_full={config.on_full!r} needs readers that hold producers back (gating), "
                              "which the JetStream bus does not have: a full partition drops its oldest "
                              "message (on_full='overwrite'); see docs/jetstream.md")
        tok = names.token(name)
        inc = time.time_ns() // 1000
        exp = now_s(now) + config.retention_secs

        async def make() -> None:
            rec, rev = await kv.get(self.js, names.TOPICS, names.topic_key(tok))
            if rec is not None:
                raise AlreadyExists(f"topic {name!r} already exists")
            try:
                await kv.put(self.js, names.TOPICS, names.topic_key(tok), config_json(name, config, inc), rev)
            except kv.Conflict:
                raise AlreadyExists(f"topic {name!r} already exists") from None
            try:
                await asyncio.gather(*(self._make_partition(name, tok, i, inc, exp, config)
                                       for i in range(config.num_partitions)))
            except BaseException:
                await self._drop_topic(tok, config.num_partitions)
                raise

        with self._lock:
            self.run(make(), f"creating topic {name!r}", timeout=self.timeout * 4)
            self._topics.pop(name, None)
        return self.topic(name)

    async def _make_partition(self, name: str, tok: str, i: int, inc: int, exp: float,
                              config: TopicConfig) -> None:
        """Lease first, then stream: a reaper never sees a stream without its lease."""
        old, rev = await kv.get(self.js, names.LEASES, names.lease_key(tok, i))
        await kv.put(self.js, names.LEASES, names.lease_key(tok, i), LeaseRecord(inc, exp).to_json(),
                     rev, server_ttl(exp))
        ret = config.retention_secs
        await self._add_stream(api.StreamConfig(
            name=names.stream(tok, i, inc), subjects=[names.subject(tok, i, inc)],
            retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
            max_msgs=config.partition_capacity,
            max_msg_size=config.max_message_bytes + envelope.SIZE + _HEADER_ROOM,
            storage=api.StorageType.FILE, num_replicas=self.replicas,
            max_age=ret if self.age_limit else 0.0,
            duplicate_window=min(_DUPLICATE_WINDOW, ret) if self.age_limit else _DUPLICATE_WINDOW,
            metadata={"grafos-topic": name, "grafos-partition": str(i)}))

    async def _add_stream(self, config: api.StreamConfig) -> None:
        """Add a stream, trying again while the cluster cannot place its replicas
        because a peer is offline (a peer that misses heartbeats under load is
        marked offline for a moment), for up to twice the bus's timeout, so that
        a topic that cannot be placed is refused (Unavailable) and cleaned up
        within create's own bound; a cluster too small for the replicas is
        refused at once."""
        deadline = time.monotonic() + self.timeout * 2     # within create's bound: it cleans up after
        for tries in itertools.count():
            try:
                await self.js.add_stream(config)
                return
            except nats.js.errors.APIError as e:
                if not placement_waits(e) or time.monotonic() + _PLACEMENT_RETRY > deadline:
                    raise
                if tries == 0:
                    _log.info("bus %s: stream %s cannot be placed yet (%s); trying again", self.ident,
                              config.name, e.description)
                await asyncio.sleep(_PLACEMENT_RETRY)

    async def _drop_topic(self, tok: str, n: int) -> None:
        """Delete every stream and lease of a topic, then its record."""
        for s in await self._stream_names(f"gf.{tok}.>"):
            await self._delete_stream(s)
        for i in range(n):
            await kv.delete(self.js, names.LEASES, names.lease_key(tok, i))
        # the topic's groups (members, claims, offsets) and nack counts go with it
        for key in await kv.keys(self.js, names.GROUPS, "g.", f"*.{tok}"):
            await kv.delete(self.js, names.GROUPS, key)
        for key in (await kv.keys(self.js, names.DLQ, "d.", f"{tok}.*") +
                    await kv.keys(self.js, names.DLQ, "d.", f"*.{tok}")):
            await kv.delete(self.js, names.DLQ, key)
        await kv.delete(self.js, names.TOPICS, names.topic_key(tok))

    async def _delete_stream(self, stream: str) -> bool:
        try:
            return await self.js.delete_stream(stream)
        except nats.js.errors.NotFoundError:
            return False

    async def _stream_names(self, subject: str) -> list[str]:
        """Names of the streams listening on ``subject`` (a wildcard), every page."""
        out: list[str] = []
        while True:
            resp = await self.nc.request("$JS.API.STREAM.NAMES",
                                         json.dumps({"subject": subject, "offset": len(out)}).encode(),
                                         timeout=self.timeout)
            body = json.loads(resp.data)
            if "error" in body:
                raise nats.js.errors.APIError.from_error(body["error"])
            page = body.get("streams") or []
            out += page
            if not page or len(out) >= int(body.get("total", 0)):
                return out

    def delete(self, name: str) -> None:
        """Delete a topic and its streams now."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        tok = names.token(name)

        async def drop() -> None:
            rec, _ = await kv.get(self.js, names.TOPICS, names.topic_key(tok))
            if rec is None:
                raise NotFound(f"no topic {name!r}")
            await self._drop_topic(tok, parse_config(rec)[1].num_partitions)

        with self._lock:
            self.run(drop(), f"deleting topic {name!r}", timeout=self.timeout * 4)
            self._topics.pop(name, None)

    def restart(self, name: str, *, now: float | None = None) -> JsTopic:
        """Give an expired topic fresh leases and streams (offsets start again at 0).
        Partitions whose lease is still alive keep it."""
        name = _validate.name(name, "topic name", MAX_TOPIC_NAME)
        tok = names.token(name)
        t = now_s(now)

        async def again() -> None:
            rec, _ = await kv.get(self.js, names.TOPICS, names.topic_key(tok))
            if rec is None:
                raise NotFound(f"no topic {name!r}")
            _, cfg, _ = parse_config(rec)
            leases = await asyncio.gather(*(kv.get(self.js, names.LEASES, names.lease_key(tok, i))
                                            for i in range(cfg.num_partitions)))
            todo = []
            for i, (raw, _) in enumerate(leases):
                lease = LeaseRecord.parse(raw)
                if lease is None or lease.expires_at <= t:
                    inc = max(time.time_ns() // 1000, (lease.inc + 1) if lease else 0)
                    if lease is not None:
                        await self._delete_stream(names.stream(tok, i, lease.inc))
                    todo.append(self._make_partition(name, tok, i, inc, t + cfg.retention_secs, cfg))
            await asyncio.gather(*todo)

        with self._lock:
            self.run(again(), f"restarting topic {name!r}", timeout=self.timeout * 4)
            self.reap(now)
            self._topics.pop(name, None)
        return self.topic(name)

    def topics(self) -> list[str]:
        async def listing() -> list[str]:
            keys = await kv.keys(self.js, names.TOPICS, "t.")
            recs = await asyncio.gather(*(kv.get(self.js, names.TOPICS, k) for k in keys))
            return sorted(str(r["name"]) for r, _ in recs if r is not None and "name" in r)
        return self.run(listing(), "listing topics")

    def exists(self, name: str) -> bool:
        tok = names.token(_validate.name(name, "topic name", MAX_TOPIC_NAME))
        return self.run(kv.get(self.js, names.TOPICS, names.topic_key(tok)), "reading the topic")[0] is not None

    def _load(self, name: str) -> JsTopic:
        tok = names.token(name)

        async def load() -> JsTopic:
            rec, _ = await kv.get(self.js, names.TOPICS, names.topic_key(tok))
            if rec is None:
                raise NotFound(f"no topic {name!r}")
            real, cfg, inc = parse_config(rec)
            leases = await asyncio.gather(*(kv.get(self.js, names.LEASES, names.lease_key(tok, i))
                                            for i in range(cfg.num_partitions)))
            parts: list[JsPartition | None] = []
            wall = time.time()
            for i, (raw, _) in enumerate(leases):
                lease = LeaseRecord.parse(raw)
                if lease is not None and lease.expires_at > wall:
                    parts.append(JsPartition(self, real, tok, i, lease.inc, lease.expires_at, cfg))
                else:
                    parts.append(None)
                    if lease is not None:       # expired, record not yet dropped by the server
                        await self._delete_stream(names.stream(tok, i, lease.inc))
            if any(p is None for p in parts):
                await self._reap(now_s(None), tok)
            return JsTopic(real, tok, cfg, inc, parts)

        t = self.run(load(), f"opening topic {name!r}")
        with self._lock:
            self._topics[name] = t
        return t

    def topic(self, name: str) -> JsTopic:
        """The opened topic (cached; re-read by :meth:`refresh`)."""
        t = self._topics.get(name)
        if t is not None:
            return t
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        return self._load(name)

    def refresh(self, name: str) -> JsTopic:
        if not isinstance(name, str):
            raise _validate.InvalidType(f"topic must be a str, not {type(name).__name__}")
        return self._load(name)

    # ---- retention --------------------------------------------------------------------
    def reap(self, now: float | None = None) -> int:
        """Delete the streams of dead partitions (lease gone, expired at ``now``,
        or of an older incarnation) and of deleted topics. Returns how many."""
        return self.run(self._reap(now_s(now)), "reaping expired partitions", timeout=self.timeout * 4)

    async def _reap(self, t: float, tok: str | None = None) -> int:
        streams = await self._stream_names("gf.>" if tok is None else f"gf.{tok}.>")
        parsed = [(s, names.parse_stream(s)) for s in streams]
        parsed = [(s, p) for s, p in parsed if p is not None]
        keys = sorted({(tk, i) for _, (tk, i, _) in parsed})
        got = await asyncio.gather(*(kv.get(self.js, names.LEASES, names.lease_key(tk, i)) for tk, i in keys))
        leases = {k: LeaseRecord.parse(raw) for k, (raw, _) in zip(keys, got)}
        dead = [s for s, (tk, i, inc) in parsed
                if (lease := leases.get((tk, i))) is None or lease.inc != inc or lease.expires_at <= t]
        done = await asyncio.gather(*(self._delete_stream(s) for s in dead))
        return sum(bool(d) for d in done)

    def reap_partition(self, tok: str, partition: int, inc: int) -> None:
        """Delete one dead partition's stream (found dead by whoever looked)."""
        self.run(self._delete_stream(names.stream(tok, partition, inc)), "deleting an expired partition")

    # ---- observability ----------------------------------------------------------------
    def bounds(self, stream: str) -> tuple[int, int]:
        """(earliest, latest) offsets of a partition stream; (0, 0) if it is gone."""
        return self.run(self.stream_bounds(stream), "reading a partition")

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        try:
            st = (await self.js.stream_info(stream)).state
        except nats.js.errors.NotFoundError:
            return 0, 0
        latest = st.last_seq
        return (max(st.first_seq - 1, 0) if st.messages else latest), latest

    def streams(self, name: str) -> list[str]:
        """The partition streams of topic ``name`` on the server now (live or not yet reaped)."""
        tok = names.token(_validate.name(name, "topic name", MAX_TOPIC_NAME))
        return sorted(self.run(self._stream_names(f"gf.{tok}.>"), f"listing the streams of {name!r}"))

    def leaders(self, name: str) -> dict[int, str | None]:
        """partition -> name of the server leading its stream (None if dead or unknown)."""
        t = self.refresh(name)

        async def lead() -> list[str | None]:
            async def one(p: JsPartition | None) -> str | None:
                if p is None:
                    return None
                info = await self.js.stream_info(p.stream)
                return info.cluster.leader if info.cluster is not None else None
            return list(await asyncio.gather(*(one(p) for p in t.partitions)))
        return dict(enumerate(self.run(lead(), f"reading the leaders of {name!r}")))

    def partition_leases(self, name: str) -> list[JsLease]:
        """Each partition's lease, in partition order; a dead partition has none:
        :class:`LeaseExpired`, naming it (restart the topic)."""
        t = self.topic(name)
        return [t.partition(i).lease for i in range(t.n)]

    def describe(self, name: str, now: float | None = None) -> TopicDescription:
        """Per partition: earliest and latest offset, lease TTL remaining, messages
        dropped (capacity or age) before the earliest."""
        t = self.refresh(name)
        at = now_s(now)

        async def infos() -> list[PartitionInfo]:
            async def one(i: int, p: JsPartition | None) -> PartitionInfo:
                if p is None:
                    return PartitionInfo(i, 0, 0, 0, 0, 0.0, False, 0)
                earliest, latest = await self.stream_bounds(p.stream)
                alive = p.expires_at > at
                return PartitionInfo(i, earliest, latest, earliest, 0,
                                     max(0.0, p.expires_at - at) if alive else 0.0, alive, p.inc)
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(t.partitions))))

        return TopicDescription(t.name, t.config, self.run(infos(), f"describing topic {name!r}"))

    def stats(self, name: str, now: float | None = None) -> dict[str, int]:
        d = self.describe(name, now)
        return {"produced": d.produced, "lost": d.lost,
                "partitions_alive": sum(p.alive for p in d.partitions)}

    # ---- producing --------------------------------------------------------------------
    def _sender(self, producer: "Producer") -> _Sender:
        s = self._senders.get(producer)
        if s is None:
            with self._lock:
                s = self._senders.get(producer)
                if s is None:
                    s = _Sender(None, itertools.count(), uuid.uuid4().hex[:16], itertools.count())
                    if producer.idempotent:
                        s.idempotent, s.seqs = True, {}
                    tid = producer.transactional_id
                    if tid is not None:
                        s.reg = Registration(self.js, tid, producer.topic)
                        s.epoch = self.run(s.reg.register(), f"registering producer {tid!r}")
                    self._senders[producer] = s
        return s

    def producer_session(self, producer: "Producer") -> "JetStreamManager":
        """The bus serves its producers' calls itself (per producer state in ``_senders``)."""
        return self

    def register(self, producer: "Producer") -> int:
        """Register ``producer`` now rather than at its first send; returns its epoch.
        With a ``transactional_id`` this bumps the epoch on the server and fences
        every older instance with that id; otherwise the epoch is 0."""
        return self._sender(producer).epoch

    def begin(self, producer: "Producer") -> Any:
        """Transactions do not map onto JetStream: raises Unsupported (see docs/jetstream.md)."""
        raise Unsupported(
            f"producer of topic {producer.topic!r}: transactions are not available on the JetStream bus. "
            "A JetStream atomic batch commits messages to one stream only, and here every partition and "
            "the committed offsets live in streams of their own, so output on several partitions and the "
            "consumed offsets cannot become visible together. Use an idempotent producer (retried "
            "publishes are de-duplicated) and commit the consumer's offsets after its sends: at least "
            "once, with a repeat only when a worker dies between its sends and its commit")

    def _route(self, producer: "Producer", s: _Sender, key: bytes | None, size: int,
               refresh: bool = False) -> tuple[JsTopic, int, JsPartition]:
        t = s.topic
        if t is None or t.name != producer.topic or refresh:
            try:
                t = s.topic = self.refresh(producer.topic) if refresh else self.topic(producer.topic)
            except NotFound:
                raise NotFound(f"no topic {producer.topic!r}" if not refresh else
                               f"topic {producer.topic!r} no longer exists (deleted)") from None
        room = t.config.max_message_bytes
        if size > room:
            raise MessageTooLarge(f"topic {t.name!r}: a message of {size} bytes does not fit a slot "
                                  f"(room {room} bytes)", size, room)
        if key is not None and producer.partitioner == Partitioner.KeyHash:
            i = kafka_partition(key, t.n)
        else:
            i = next(s.rr) % t.n
        p = t.partitions[i]
        if p is None or p.expires_at <= time.time():
            if not refresh:
                return self._route(producer, s, key, size, refresh=True)
            gone = [j for j, q in enumerate(t.partitions) if q is None or q.expires_at <= time.time()]
            raise LeaseExpired(f"topic {t.name!r}: partitions {gone} have expired; restart the topic")
        return t, i, p

    def producer_epoch(self, producer: "Producer") -> int | None:
        """The epoch ``producer`` registered with (None: not registered yet)."""
        s = self._senders.get(producer)
        return s.epoch if s is not None and s.reg is not None else None

    def open_transaction(self, producer: "Producer") -> None:
        return None         # no transactions on this bus (begin says why)

    def loan(self, producer: "Producer", size: int, key: Any = None, headers: Any = None) -> Any:
        raise Unsupported(f"producer of {producer.topic!r}: loans write a message in place in shared memory, "
                          f"which this bus ({type(self).__name__}) does not have; use send")

    def close_producer(self, producer: "Producer") -> None:
        self._senders.pop(producer, None)

    def send(self, producer: "Producer", key: bytes | None, value: bytes, headers: Any = None,
             timeout: Any = None) -> tuple[int, int]:
        """One message, acknowledged by the server. Returns (partition, offset).
        ``timeout`` (waiting for room on a full topic) has nothing to wait for:
        no reader holds a producer back here (``capabilities.gating``); a
        publish waits for its acknowledgement up to the bus's ``timeout``."""
        value = _validate.as_bytes(value, "value")
        if key is not None:
            key = _validate.as_bytes(key, "key")
        hdrs = encode_headers(headers) if headers else b""
        s = self._sender(producer)
        size = len(value) + len(hdrs) + (len(key) if key is not None else 0)
        _, i, p = self._route(producer, s, key, size)
        payload = envelope.encode(time.time_ns(), key, hdrs, value)
        msg_id = f"{s.pid}-{next(s.seq)}" if not s.idempotent else s.msg_id(i)
        reg = s.reg
        if reg is None and self._direct is not None:
            seq = self._direct.publish(p.subject, payload, msg_id)
            if seq is not None:
                return i, seq - 1
        for attempt in range(2):
            try:
                coro = (self._publish(p.subject, payload, msg_id) if reg is None else
                        self._checked_publish(reg, p.subject, payload, msg_id))
                seq = self.run(coro, f"sending to topic {producer.topic!r}")
                return i, seq - 1
            except NotFound:
                if attempt:
                    raise
                # no stream on the subject: reaped or deleted since we looked
                t, i2, p = self._route(producer, s, key, size, refresh=True)
                if i2 != i:         # round robin moved on; the keyed choice is stable
                    i = i2
                    if s.idempotent:
                        msg_id = s.msg_id(i)
        raise AssertionError("unreachable")

    async def _checked_publish(self, reg: Registration, subject: str, payload: bytes, msg_id: str) -> int:
        """Publish only if ``reg`` still holds the newest epoch of its transactional_id."""
        await reg.check()
        return await self._publish(subject, payload, msg_id)

    async def _publish(self, subject: str, payload: bytes, msg_id: str) -> int:
        """Publish with retries (same Nats-Msg-Id) through a leader election, up
        to the bound; NotFound when no stream listens on the subject at all."""
        deadline = time.monotonic() + self.timeout
        hdrs = {"Nats-Msg-Id": msg_id}
        while True:
            try:
                ack = await self.js.publish(subject, payload, timeout=max(0.05, deadline - time.monotonic()),
                                            headers=hdrs)
                return ack.seq
            except nats.js.errors.NoStreamResponseError:
                if not await self._has_stream(subject):
                    raise NotFound(f"no stream for {subject}") from None
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError,
                    nats.errors.OutboundBufferLimitError, nats.errors.ConnectionReconnectingError):
                pass        # a leader election or a reconnect: the same Nats-Msg-Id dedupes
            if time.monotonic() >= deadline:
                raise Unavailable(f"no acknowledgement for a publish to {subject} within {self.timeout:.1f} s")
            await asyncio.sleep(0.1)

    async def _has_stream(self, subject: str) -> bool:
        try:
            return bool(await self._stream_names(subject))
        except UNAVAILABLE:
            return True     # cannot tell: keep retrying until the bound

    def send_batch(self, producer: "Producer", values: Any, keys: Any = None,
                   timeout: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Many messages, pipelined (up to 1000 publishes in flight), all
        acknowledged before it returns. Returns (partitions, offsets) arrays."""
        vals = _rows(values, "values")
        if not vals:
            raise InvalidArgument("empty batch")
        ks = _rows(keys, "keys") if keys is not None else None
        if ks is not None and len(ks) != len(vals):
            raise InvalidArgument(f"{len(ks)} keys for {len(vals)} values")
        s = self._sender(producer)
        ts = time.time_ns()
        work = []
        for n, v in enumerate(vals):
            k = ks[n] if ks is not None else None
            _, i, p = self._route(producer, s, k, len(v) + (len(k) if k is not None else 0))
            work.append((i, p.subject, envelope.encode(ts, k, b"", v),
                         f"{s.pid}-{next(s.seq)}" if not s.idempotent else s.msg_id(i)))
        seqs: list[int | None] = [None] * len(work)
        if s.reg is None and self._direct is not None:
            seqs = self._direct.publish_many([w[1:] for w in work])
        left = [n for n, q in enumerate(seqs) if q is None]
        if left:        # what the direct connection did not settle, with the same Nats-Msg-Ids
            again = self.run(self._publish_many([work[n] for n in left], s.reg),
                             f"sending a batch to topic {producer.topic!r}",
                             timeout=self.timeout * (2 + len(left) // 10_000))
            for n, q in zip(left, again):
                seqs[n] = q
        parts = np.fromiter((w[0] for w in work), dtype=np.uint32, count=len(work))
        offs = np.asarray(seqs, dtype=np.uint64) - 1
        return parts, offs

    async def _publish_many(self, work: list, reg: Registration | None = None) -> list[int]:
        if reg is not None:
            await reg.check()       # once per batch: fenced, nothing of it is published
        out: list[int] = [0] * len(work)
        pending = list(range(len(work)))
        deadline = time.monotonic() + self.timeout
        while pending:
            futs: list = []
            for n in pending:
                _, subject, payload, msg_id = work[n]
                try:
                    futs.append(await self.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}))
                except (nats.errors.OutboundBufferLimitError, nats.errors.ConnectionReconnectingError) as e:
                    futs.append(_failed(e))     # disconnected: retried below until the bound
            left = max(0.05, deadline - time.monotonic())
            done = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), left)
            again = []
            for n, r in zip(pending, done):
                if isinstance(r, BaseException):
                    again.append(n)
                else:
                    out[n] = r.seq
            if again and time.monotonic() >= deadline:
                raise Unavailable(f"{len(again)} of {len(work)} messages were not acknowledged within "
                                  f"{self.timeout:.1f} s (first error: {done[pending.index(again[0])]!r})")
            if again:
                await asyncio.sleep(0.1)
                if not await self._has_stream(work[again[0]][1]):
                    raise NotFound(f"topic of {work[again[0]][1]} no longer has that partition; "
                                   "re-send after a restart")
            pending = again
        return out

    # ---- consuming (the Consumer's calls for this bus) --------------------------------------
    def consumer_session(self, consumer: "Consumer") -> "JetStreamManager":
        """The bus serves its consumers' calls itself (their cursors are in ``cursors``)."""
        return self

    # spin: how long a shared-memory poll spins before it sleeps on a futex; nothing spins here
    def poll(self, consumer: "Consumer", max_messages: int, timeout: float | None,
             spin: float | None = None) -> list:
        return self.cursors.poll(consumer, max_messages, timeout)

    def poll_batch(self, consumer: "Consumer", max_messages: int, timeout: float | None,
                   spin: float | None = None) -> Any:
        return self.cursors.poll_batch(consumer, max_messages, timeout)

    def polled(self, consumer: "Consumer", count: int, max_messages: int) -> None:
        return None         # no reader holds a producer back here (capabilities.gating)

    def wait_request(self, consumer: "Consumer", waiter: Any, timeout: float | None) -> int:
        raise Unsupported(f"consumer of {consumer.topic!r}: a waiter thread sleeps on a futex in shared memory, "
                          f"which this bus ({type(self).__name__}) does not have; use wait")

    def peek(self, consumer: "Consumer", max_messages: int) -> Any:
        raise Unsupported(f"consumer of {consumer.topic!r}: peeks read messages in place in shared memory, "
                          f"which this bus ({type(self).__name__}) does not have; use poll")

    def aborted(self, consumer: "Consumer") -> int:
        return 0            # no transactions on this bus

    def incarnations(self, consumer: "Consumer", partitions: list[int]) -> None:
        return None         # the bus's offset records hold no incarnation

    def commit_store(self, consumer: "Consumer", store: Any) -> Any:
        return store

    def wait(self, consumer: "Consumer", timeout: float | None) -> bool:
        return self.cursors.wait(consumer, timeout)

    def wait_future(self, consumer: "Consumer", timeout: float | None) -> "concurrent.futures.Future[bool]":
        return self.cursors.wait_future(consumer, timeout)

    def seek(self, consumer: "Consumer", store: Any, policy: Any) -> None:
        self.cursors.seek(consumer, store, policy)

    def seek_partition(self, consumer: "Consumer", partition: int, offset: int) -> None:
        self.cursors.seek_partition(consumer, partition, offset)

    def position(self, consumer: "Consumer", partition: int) -> int:
        return self.cursors.position(consumer, partition)

    def positions(self, consumer: "Consumer") -> dict[int, int]:
        return self.cursors.positions(consumer)

    def lost(self, consumer: "Consumer") -> dict[int, int]:
        return self.cursors.lost(consumer)

    def lag(self, consumer: "Consumer") -> dict[int, int]:
        return self.cursors.lag(consumer)

    def latest(self, consumer: "Consumer", partition: int) -> int:
        return self.cursors.latest(consumer, partition)

    def reassign(self, consumer: "Consumer", partitions: list[int]) -> None:
        n = self.topic(consumer.topic).n
        for p in partitions:
            if p >= n:
                raise InvalidArgument(f"topic {consumer.topic!r} has partitions 0..{n - 1}, not {p}")

    def close_consumer(self, consumer: "Consumer") -> None:
        self.cursors.close(consumer)

    # ---- groups and dead letters ----------------------------------------------------------
    def group_state(self, group: str, topic: str) -> Any:
        from .state import KvGroupState
        return KvGroupState(self, group, topic)

    def offset_store(self) -> Any:
        """The bus's :class:`~grafos.jetstream.state.KvOffsetStore` (on the server, fenced for groups)."""
        from .state import KvOffsetStore
        return KvOffsetStore(self)

    def dlq_counts(self, source: str, dlq: str) -> Any:
        from .state import KvCounts
        return KvCounts(self, source, dlq)

    def group_records(self) -> list[dict]:
        async def listing() -> list[dict]:
            keys = await kv.keys(self.js, names.GROUPS, "g.")
            recs = await asyncio.gather(*(kv.get(self.js, names.GROUPS, k) for k in keys))
            return [r for r, _ in recs if r is not None]
        return self.run(listing(), "listing groups")

    def list_groups(self) -> list["GroupConfig"]:
        out = []
        for r in self.group_records():
            try:
                (g, t), (n, stale) = r["names"], r["cfg"]
                out.append(GroupConfig(g, t, int(n), float(stale)))
            except (KeyError, TypeError, ValueError):
                continue
        return sorted(out, key=lambda c: (c.name, c.topic))


async def _failed(e: BaseException) -> Any:
    raise e


def _rows(values: Any, what: str) -> list[bytes]:
    """A batch as a list of bytes (a list of bytes, or a 2-D uint8 array)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 2 or values.dtype != np.uint8:
            raise InvalidArgument(f"{what} as an array must be 2-D uint8, not {values.ndim}-D {values.dtype}")
        return [bytes(r) for r in values]
    if isinstance(values, (bytes, str)) or not hasattr(values, "__iter__"):
        raise _validate.InvalidType(f"{what} must be a sequence of bytes or a 2-D uint8 array")
    return [_validate.as_bytes(v, what[:-1]) for v in values]
