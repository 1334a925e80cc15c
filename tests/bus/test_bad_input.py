"""Bad input everywhere, as one table.

Every public constructor and function is called with wrong types, negative and
huge numbers, empty and oversized names and values. Each row must raise the
grafos exception it names (a :class:`~grafos.errors.GrafosError` subclass),
with a message naming the argument, and must leave the bus exactly as it was:
the same topics, partitions, offsets, message contents, leases, metadata
(groups, committed offsets, DLQ counts), offset stores and renewals
(:func:`snapshot`).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest

from grafos import Fabric
from grafos.errors import (AlreadyExists, BufferFull, BufferTooSmall, FabricFull, Fenced, GrafosError,
                           InvalidArgument, InvalidType, MessageTooLarge, NotFound)
from grafos.leasekit import RenewalManager, RenewalPolicy
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.dlq import DlqRouter
from grafos.mq.group import ConsumerGroup, group_lag
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore, SqliteOffsetStore, commit_many
from grafos.mq.producer import Partitioner, Producer, kafka_partition, murmur2
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition
from grafos.reader import Reader

MiB = 1 << 20
HUGE = 1 << 70
NAN = math.nan
FROZEN = time.time() + 1.0          # describe() at a fixed clock: TTLs comparable between snapshots


class Env:
    """A small in-process bus with something of everything in it."""

    def __init__(self, tmp_path) -> None:  # noqa: ANN001
        self.mgr = TopicManager(size=16 * MiB)
        self.fab = self.mgr.fabric
        self.mgr.create("orders", TopicConfig(2, 16, 128, 3600.0))
        self.mgr.create("dlq", TopicConfig(1, 8, 256, 3600.0))
        self.prod = Producer("orders")
        for i in range(6):
            self.prod.send_keyed(self.mgr, b"k%d" % i, b"v%d" % i)
        self.part = self.mgr.topic("orders").partition(0)
        self.mgr.create("frames", TopicConfig(1, 16, 128, 3600.0))
        self.big = self.mgr.topic("frames").partition(0)
        self.big.append(b"m" * 1000)       # spans 9 slots
        self.lease = self.fab.acquire(8192, ttl=3600)
        self.lease.write(0, b"lease-bytes")
        self.mem = MemOffsetStore()
        self.mem.commit("g", "orders", 0, 1)
        self.sql = SqliteOffsetStore(tmp_path / "offsets.db")
        self.sql.commit("g", "orders", 0, 2)
        self.fstore = FabricOffsetStore(self.mgr)
        self.fstore.commit("g", "orders", 1, 1)
        self.group = ConsumerGroup("grp", "orders", 2, 30.0, mgr=self.mgr)
        self.group.claim("m1")
        self.router = DlqRouter("orders", "dlq", 3, mgr=self.mgr)
        self.router.nack(0, 0)
        self.consumer = Consumer("orders", "g")
        self.consumer.seek(self.mgr, None, SeekPolicy.Earliest)
        self.consumer.poll(self.mgr, 2)
        self.reader = Reader(self.fab, self.mgr.topic("orders").partitions)
        self.renewals = RenewalManager(self.mgr)
        self.renewals.register(self.lease, time.time() + 3000, RenewalPolicy())
        # full topics whose group has read nothing: the next send finds no room
        self.mgr.create("held", TopicConfig(2, 4, 128, 3600.0, on_full="raise"))
        self.mgr.create("waits", TopicConfig(1, 4, 128, 3600.0, on_full="block"))
        for t, n in (("held", 2), ("waits", 1)):
            ConsumerGroup("gate", t, n, 3600.0, mgr=self.mgr).claim("m")
            Producer(t, Partitioner.RoundRobin).send_batch(self.mgr, [b"full%d" % i for i in range(4 * n)])
        self.share = self.mgr.share_consumer("orders", group="sq", lock_secs=3600.0, dlq="dlq")
        self.held = self.share.poll(2)
        self.tmp_path = tmp_path

    def close(self) -> None:
        self.sql.close()
        self.mgr.close()


def _uncounted(d):  # noqa: ANN001, ANN202 - TopicDescription
    return dataclasses.replace(d, partitions=[dataclasses.replace(p, full_raised=0, blocked_secs=0.0)
                                              for p in d.partitions])


def snapshot(env: Env) -> dict:
    """Everything a user of the bus could observe."""
    mgr, fab = env.mgr, env.fab
    topics = mgr.topics()
    contents = {}
    for name in topics:
        t = mgr.refresh(name)
        rd = Reader(fab, t.partitions, max_batch=1024)
        contents[name] = sorted((p, m.offset, m.key, m.value, m.headers) for p, m in rd.poll(1024))
    return {
        "topics": topics,
        # BufferFull counts refused sends and blocked_secs the time they waited:
        # the calls under test move them, and only them
        "describe": {n: _uncounted(mgr.describe(n, now=FROZEN)) for n in topics},
        "contents": contents,
        "leases": sorted((ls.id, ls.offset, ls.size, ls.expires_at) for ls in fab.leases()),
        "lease_bytes": env.lease.read(0, 16),
        "meta": fab.meta_items(),
        "stores": [env.mem.items(), env.sql.items(), env.fstore.items()],
        "consumer": (env.consumer.assignment(), env.consumer.positions()),
        "reader": [env.reader.position(i) for i in range(2)],
        "renewals": [(r.id, r.expires_at, r.period) for r in env.renewals.registrations()],
        "dlq": env.router.nack_counts(),
        "group": (env.group.assignments(), env.group.members()),
        "share": (env.share.held(), env.share.describe(now=FROZEN)),
    }


# (id, call, exception, text the message must contain)
E = Env  # for the lambdas' annotations' sake
ROWS: list[tuple[str, object, type[GrafosError], str]] = [
    # ---- Fabric ---------------------------------------------------------------------------
    ("Fabric size str", lambda e: Fabric("1"), InvalidType, "size"),
    ("Fabric size negative", lambda e: Fabric(-1), InvalidArgument, "size"),
    ("Fabric size huge", lambda e: Fabric(HUGE), InvalidArgument, "size"),
    ("Fabric size tiny", lambda e: Fabric(100), InvalidArgument, "size"),
    ("Fabric size float", lambda e: Fabric(1.5e6), InvalidType, "size"),
    ("Fabric lease_slots negative", lambda e: Fabric(4 * MiB, lease_slots=-1), InvalidArgument, "lease_slots"),
    ("Fabric lease_slots huge", lambda e: Fabric(4 * MiB, lease_slots=1 << 30), InvalidArgument, "lease_slots"),
    ("Fabric meta_slots str", lambda e: Fabric(4 * MiB, meta_slots="8"), InvalidType, "meta_slots"),
    ("Fabric.open nothing", lambda e: Fabric.open(), InvalidArgument, "name= or path="),
    ("Fabric.open both", lambda e: Fabric.open("a", path="b"), InvalidArgument, "name= or path="),
    ("Fabric.open path int", lambda e: Fabric.open(path=5), InvalidType, "path"),
    ("Fabric.open path empty", lambda e: Fabric.open(path=""), InvalidArgument, "path"),
    ("Fabric.open name slash", lambda e: Fabric.open("a/b", size=4 * MiB), InvalidArgument, "fabric name"),
    ("Fabric.open name dotdot", lambda e: Fabric.open("..", size=4 * MiB), InvalidArgument, "fabric name"),
    ("Fabric.open name long", lambda e: Fabric.open("n" * 101, size=4 * MiB), InvalidArgument, "fabric name"),
    ("Fabric.open mode huge", lambda e: Fabric.open(path=str(e.tmp_path / "m"), size=4 * MiB, mode=0o7777),
     InvalidArgument, "mode"),
    ("Fabric.open durability", lambda e: Fabric.open(path=str(e.tmp_path / "d"), size=4 * MiB, durability="yes"),
     InvalidArgument, "durability"),
    ("Fabric.open missing", lambda e: Fabric.open(path=str(e.tmp_path / "none"), create=False), NotFound,
     "no fabric"),
    ("Fabric.open create without size", lambda e: Fabric.open(path=str(e.tmp_path / "ns")), InvalidArgument,
     "size"),
    ("acquire size str", lambda e: e.fab.acquire("4096", ttl=1), InvalidType, "lease size"),
    ("acquire size zero", lambda e: e.fab.acquire(0, ttl=1), InvalidArgument, "lease size"),
    ("acquire size negative", lambda e: e.fab.acquire(-4096, ttl=1), InvalidArgument, "lease size"),
    ("acquire size huge", lambda e: e.fab.acquire(HUGE, ttl=1), InvalidArgument, "lease size"),
    ("acquire size over arena", lambda e: e.fab.acquire(1 << 40, ttl=1), InvalidArgument, "lease size"),
    ("acquire no expiry", lambda e: e.fab.acquire(4096), InvalidArgument, "ttl= or expires_at="),
    ("acquire both expiries", lambda e: e.fab.acquire(4096, ttl=1, expires_at=time.time() + 9),
     InvalidArgument, "ttl= or expires_at="),
    ("acquire ttl negative", lambda e: e.fab.acquire(4096, ttl=-1), InvalidArgument, "ttl"),
    ("acquire ttl nan", lambda e: e.fab.acquire(4096, ttl=NAN), InvalidArgument, "ttl"),
    ("acquire ttl str", lambda e: e.fab.acquire(4096, ttl="5"), InvalidType, "ttl"),
    ("acquire ttl huge", lambda e: e.fab.acquire(4096, ttl=1e300), InvalidArgument, "ttl"),
    ("acquire expires_at past", lambda e: e.fab.acquire(4096, expires_at=1.0), InvalidArgument, "expires_at"),
    ("acquire owner_tag negative", lambda e: e.fab.acquire(4096, ttl=1, owner_tag=-1), InvalidArgument,
     "owner_tag"),
    ("acquire owner_tag huge", lambda e: e.fab.acquire(4096, ttl=1, owner_tag=1 << 64), InvalidArgument,
     "owner_tag"),
    ("acquire now str", lambda e: e.fab.acquire(4096, ttl=1, now="now"), InvalidType, "now"),
    ("lease index negative", lambda e: e.fab.lease(-1, 1), InvalidArgument, "index"),
    ("lease id str", lambda e: e.fab.lease(0, "1"), InvalidType, "lease id"),
    ("lease id huge", lambda e: e.fab.lease(0, HUGE), InvalidArgument, "lease id"),
    ("lease unknown", lambda e: e.fab.lease(0, 999_999), GrafosError, "lease"),
    ("locked timeout str", lambda e: e.fab.locked("x").__enter__(), InvalidType, "timeout"),
    ("locked timeout nan", lambda e: e.fab.locked(NAN).__enter__(), InvalidArgument, "timeout"),
    ("reap now str", lambda e: e.fab.reap(now="x"), InvalidType, "now"),
    ("reap now inf", lambda e: e.fab.reap(now=math.inf), InvalidArgument, "now"),
    ("bounded wait negative", lambda e: e.fab.set_bounded_wait(-1), InvalidArgument, "bounded wait"),
    ("bounded wait str", lambda e: e.fab.set_bounded_wait("1"), InvalidType, "bounded wait"),
    ("meta_put key empty", lambda e: e.fab.meta_put("", b"x"), InvalidArgument, "key"),
    ("meta_put key long", lambda e: e.fab.meta_put("k" * 97, b"x"), InvalidArgument, "key"),
    ("meta_put key int", lambda e: e.fab.meta_put(5, b"x"), InvalidType, "key"),
    ("meta_put value long", lambda e: e.fab.meta_put("k", b"x" * 145), InvalidArgument, "value"),
    ("meta_put value str", lambda e: e.fab.meta_put("k", "x"), InvalidType, "value"),
    ("meta_get key int", lambda e: e.fab.meta_get(5), InvalidType, "key"),
    ("meta_get key long", lambda e: e.fab.meta_get("k" * 97), InvalidArgument, "key"),
    ("meta_del key bytes", lambda e: e.fab.meta_del(b"k"), InvalidType, "key"),
    ("meta_items prefix int", lambda e: e.fab.meta_items(5), InvalidType, "prefix"),
    ("meta_items prefix long", lambda e: e.fab.meta_items("p" * 97), InvalidArgument, "prefix"),
    # ---- MemLease ----------------------------------------------------------------------------
    ("lease write offset negative", lambda e: e.lease.write(-1, b"x"), InvalidArgument, "offset"),
    ("lease write offset huge", lambda e: e.lease.write(HUGE, b"x"), InvalidArgument, "offset"),
    ("lease write past end", lambda e: e.lease.write(8190, b"abcd"), InvalidArgument, "outside the lease"),
    ("lease write str", lambda e: e.lease.write(0, "x"), InvalidType, "data"),
    ("lease read length negative", lambda e: e.lease.read(0, -1), InvalidArgument, "length"),
    ("lease read length huge", lambda e: e.lease.read(0, 1 << 41), InvalidArgument, "length"),
    ("lease read past end", lambda e: e.lease.read(8000, 1000), InvalidArgument, "outside the lease"),
    ("lease renew no expiry", lambda e: e.lease.renew(), InvalidArgument, "ttl= or expires_at="),
    ("lease renew ttl zero", lambda e: e.lease.renew(ttl=0), InvalidArgument, "ttl"),
    ("lease renew expires str", lambda e: e.lease.renew("x"), InvalidType, "expires_at"),
    ("lease renew expires past", lambda e: e.lease.renew(1.0), InvalidArgument, "expires_at"),
    ("lease alive now str", lambda e: e.lease.alive(now="x"), InvalidType, "now"),
    # ---- Partition ---------------------------------------------------------------------------------
    ("partition capacity zero", lambda e: Partition.create(e.fab, 0, 128, ttl=9), InvalidArgument, "capacity"),
    ("partition capacity str", lambda e: Partition.create(e.fab, "8", 128, ttl=9), InvalidType, "capacity"),
    ("partition capacity huge", lambda e: Partition.create(e.fab, 1 << 31, 128, ttl=9), InvalidArgument,
     "capacity"),
    ("partition stride odd", lambda e: Partition.create(e.fab, 8, 100, ttl=9), InvalidArgument, "stride"),
    ("partition stride small", lambda e: Partition.create(e.fab, 8, 8, ttl=9), InvalidArgument, "stride"),
    ("partition stride huge", lambda e: Partition.create(e.fab, 8, 1 << 30, ttl=9), InvalidArgument, "stride"),
    ("partition too big for arena", lambda e: Partition.create(e.fab, 1 << 20, 1 << 12, ttl=9),
     InvalidArgument, "lease size"),
    ("partition ttl negative", lambda e: Partition.create(e.fab, 8, 128, ttl=-9), InvalidArgument, "ttl"),
    ("partition checksum None", lambda e: Partition.create(e.fab, 8, 128, ttl=9, checksum=None), InvalidType,
     "checksum"),
    ("append value str", lambda e: e.part.append("x"), InvalidType, "value"),
    ("append value None", lambda e: e.part.append(None), InvalidType, "value"),
    ("append key str", lambda e: e.part.append(b"x", key="k"), InvalidType, "key"),
    ("append too large", lambda e: e.part.append(b"x" * 10_000), MessageTooLarge, "10000"),
    ("append header value str", lambda e: e.part.append(b"x", headers=[("h", "v")]), InvalidType, "header"),
    ("append header not pairs", lambda e: e.part.append(b"x", headers=["hv"]), InvalidType, "header"),
    ("append header key int", lambda e: e.part.append(b"x", headers=[(5, b"v")]), InvalidType, "header key"),
    ("append headers too many", lambda e: e.part.append(b"x", headers=[("h", b"")] * 2000), InvalidArgument,
     "headers"),
    ("append timestamp negative", lambda e: e.part.append(b"x", timestamp=-1), InvalidArgument, "timestamp"),
    ("append timestamp str", lambda e: e.part.append(b"x", timestamp="1"), InvalidType, "timestamp"),
    ("append_batch empty", lambda e: e.part.append_batch([]), InvalidArgument, "empty batch"),
    ("append_batch bytes", lambda e: e.part.append_batch(b"abc"), InvalidType, "values"),
    ("append_batch item int", lambda e: e.part.append_batch([b"a", 5]), InvalidType, "values[1]"),
    ("append_batch keys count", lambda e: e.part.append_batch([b"a"], keys=[b"a", b"b"]), InvalidArgument,
     "keys"),
    ("append_batch one too large", lambda e: e.part.append_batch([b"a", b"x" * 10_000]), MessageTooLarge,
     "batch message 1"),
    ("partition read offset negative", lambda e: e.part.read(-1), InvalidArgument, "offset"),
    ("partition read max zero", lambda e: e.part.read(0, 0), InvalidArgument, "max_batch"),
    ("partition reader offset huge", lambda e: e.part.reader(1 << 49), InvalidArgument, "offset"),
    # ---- Reader ----------------------------------------------------------------------------------------
    ("reader max_batch zero", lambda e: Reader(e.fab, [e.part], max_batch=0), InvalidArgument, "max_batch"),
    ("reader max_batch str", lambda e: Reader(e.fab, [e.part], max_batch="9"), InvalidType, "max_batch"),
    ("reader seek offset negative", lambda e: e.reader.seek(0, -1), InvalidArgument, "offset"),
    ("reader seek partition out", lambda e: e.reader.seek(5, 0), InvalidArgument, "partition"),
    ("reader position partition out", lambda e: e.reader.position(-1), InvalidArgument, "partition"),
    ("reader counters partition str", lambda e: e.reader.counters("0"), InvalidType, "partition"),
    ("reader poll max str", lambda e: e.reader.poll("10"), InvalidType, "max_messages"),
    ("reader poll max negative", lambda e: e.reader.poll(-1), InvalidArgument, "max_messages"),
    ("reader poll spin str", lambda e: e.reader.poll(10, spin="1"), InvalidType, "spin"),
    ("reader poll timeout str", lambda e: e.reader.poll(10, timeout="1"), InvalidType, "timeout"),
    ("reader poll timeout nan", lambda e: e.reader.poll(10, timeout=NAN), InvalidArgument, "timeout"),
    # ---- TopicConfig, TopicManager -----------------------------------------------------------------
    ("config partitions zero", lambda e: TopicConfig(0), InvalidArgument, "num_partitions"),
    ("config partitions huge", lambda e: TopicConfig(1 << 20), InvalidArgument, "num_partitions"),
    ("config partitions str", lambda e: TopicConfig("2"), InvalidType, "num_partitions"),
    ("config capacity negative", lambda e: TopicConfig(1, -1), InvalidArgument, "partition_capacity"),
    ("config stride odd", lambda e: TopicConfig(1, 8, 100), InvalidArgument, "partition_stride"),
    ("config stride tiny", lambda e: TopicConfig(1, 8, 16), InvalidArgument, "partition_stride"),
    ("config retention zero", lambda e: TopicConfig(1, 8, 128, 0), InvalidArgument, "retention_secs"),
    ("config retention nan", lambda e: TopicConfig(1, 8, 128, NAN), InvalidArgument, "retention_secs"),
    ("config retention str", lambda e: TopicConfig(1, 8, 128, "1"), InvalidType, "retention_secs"),
    ("config checksum str", lambda e: TopicConfig(1, checksum="off"), InvalidType, "checksum"),
    ("config checksum int", lambda e: TopicConfig(1, checksum=0), InvalidType, "checksum"),
    ("manager fabric str", lambda e: TopicManager("bus"), InvalidType, "fabric"),
    ("manager size negative", lambda e: TopicManager(size=-1), InvalidArgument, "size"),
    ("manager open nothing", lambda e: TopicManager.open(), InvalidArgument, "name= or path="),
    ("manager open bad name", lambda e: TopicManager.open("a/b"), InvalidArgument, "fabric name"),
    ("create name empty", lambda e: e.mgr.create("", TopicConfig(1)), InvalidArgument, "topic name"),
    ("create name slash", lambda e: e.mgr.create("a/b", TopicConfig(1)), InvalidArgument, "topic name"),
    ("create name long", lambda e: e.mgr.create("t" * 65, TopicConfig(1)), InvalidArgument, "topic name"),
    ("create name int", lambda e: e.mgr.create(5, TopicConfig(1)), InvalidType, "topic name"),
    ("create config dict", lambda e: e.mgr.create("new", {"num_partitions": 1}), InvalidType, "config"),
    ("create duplicate", lambda e: e.mgr.create("orders", TopicConfig(1)), AlreadyExists, "orders"),
    ("create too big (rolled back)", lambda e: e.mgr.create("big", TopicConfig(64, 4096, 512)), FabricFull,
     "full"),
    ("create partition over arena", lambda e: e.mgr.create("big", TopicConfig(1, 1 << 16, 512)),
     FabricFull, "topic 'big'"),
    ("create now str", lambda e: e.mgr.create("new", TopicConfig(1), now="x"), InvalidType, "now"),
    ("delete unknown", lambda e: e.mgr.delete("nope"), NotFound, "nope"),
    ("delete int", lambda e: e.mgr.delete(5), InvalidType, "topic name"),
    ("delete slash", lambda e: e.mgr.delete("a/b"), InvalidArgument, "topic name"),
    ("restart unknown", lambda e: e.mgr.restart("nope"), NotFound, "nope"),
    ("restart None", lambda e: e.mgr.restart(None), InvalidType, "topic name"),
    ("topic unknown", lambda e: e.mgr.topic("nope"), NotFound, "nope"),
    ("topic int", lambda e: e.mgr.topic(5), InvalidType, "topic"),
    ("refresh int", lambda e: e.mgr.refresh(5), InvalidType, "topic"),
    ("describe unknown", lambda e: e.mgr.describe("nope"), NotFound, "nope"),
    ("describe None", lambda e: e.mgr.describe(None), InvalidType, "topic"),
    ("describe now str", lambda e: e.mgr.describe("orders", now="x"), InvalidType, "now"),
    ("stats unknown", lambda e: e.mgr.stats("nope"), NotFound, "nope"),
    ("exists int", lambda e: e.mgr.exists(5), InvalidType, "topic name"),
    ("partition_leases unknown", lambda e: e.mgr.partition_leases("nope"), NotFound, "nope"),
    ("topic.partition out", lambda e: e.mgr.topic("orders").partition(2), InvalidArgument, "partitions 0..1"),
    ("topic.partition str", lambda e: e.mgr.topic("orders").partition("0"), InvalidType, "partition"),
    # ---- Producer -------------------------------------------------------------------------------------
    ("producer topic empty", lambda e: Producer(""), InvalidArgument, "topic"),
    ("producer topic int", lambda e: Producer(5), InvalidType, "topic"),
    ("producer topic slash", lambda e: Producer("a/b"), InvalidArgument, "topic"),
    ("producer partitioner int", lambda e: Producer("orders", 7), InvalidArgument, "partitioner"),
    ("producer partitioner str", lambda e: Producer("orders", "KeyHash"), InvalidType, "partitioner"),
    ("with_partitioner str", lambda e: Producer("orders").with_partitioner("x"), InvalidType, "partitioner"),
    ("send value str", lambda e: e.prod.send(e.mgr, "x"), InvalidType, "value"),
    ("send value None", lambda e: e.prod.send(e.mgr, None), InvalidType, "value"),
    ("send mgr str", lambda e: Producer("orders").send("mgr", b"x"), InvalidType, "mgr"),
    ("send too large", lambda e: e.prod.send(e.mgr, b"x" * 10_000), MessageTooLarge, "10000"),
    ("send unknown topic", lambda e: Producer("nope").send(e.mgr, b"x"), NotFound, "nope"),
    ("send headers bad", lambda e: e.prod.send(e.mgr, b"x", headers=[("h", 5)]), InvalidType, "header"),
    ("send_keyed key str", lambda e: e.prod.send_keyed(e.mgr, "k", b"v"), InvalidType, "key"),
    ("send_keyed key int", lambda e: e.prod.send_keyed(e.mgr, 5, b"v"), InvalidType, "key"),
    ("send_keyed value int", lambda e: e.prod.send_keyed(e.mgr, b"k", 5), InvalidType, "value"),
    ("send_keyed too large", lambda e: e.prod.send_keyed(e.mgr, b"k" * 3000, b"v"), MessageTooLarge,
     "larger than the partition's ring"),
    ("send_batch one larger than the ring", lambda e: e.prod.send_batch(e.mgr, [b"a", b"x" * (16 * 128)]),
     MessageTooLarge, "batch message 1"),
    ("consumer check_crcs not a bool", lambda e: Consumer("orders", check_crcs=1), InvalidType, "check_crcs"),
    ("reader check_crcs not a bool", lambda e: Reader(e.fab, [e.part], check_crcs="no"), InvalidType,
     "check_crcs"),
    ("reader buffer smaller than a multi-slot message",
     lambda e: Reader(e.fab, [e.big], buf_size=512).poll(10), BufferTooSmall, "buf_size"),
    ("send value released view", lambda e: e.prod.send(e.mgr, _released()), InvalidArgument, "value"),
    ("send value numpy", lambda e: e.prod.send(e.mgr, np.zeros(4, np.uint8)), InvalidType, "value"),
    ("send value object", lambda e: e.prod.send(e.mgr, object()), InvalidType, "value"),
    ("send value int", lambda e: e.prod.send(e.mgr, 5), InvalidType, "value"),
    ("send bytearray too large", lambda e: e.prod.send(e.mgr, bytearray(10_000)), MessageTooLarge, "10000"),
    ("send view too large", lambda e: e.prod.send(e.mgr, memoryview(b"x" * 10_000)), MessageTooLarge, "10000"),
    ("send headers too many", lambda e: e.prod.send(e.mgr, b"x", headers=[("h", b"")] * 2000),
     InvalidArgument, "headers"),
    ("send headers dict value int", lambda e: e.prod.send(e.mgr, b"x", headers={"h": 5}), InvalidType, "header"),
    ("send headers too large", lambda e: e.prod.send(e.mgr, b"x", headers={"h": b"y" * 3000}), MessageTooLarge,
     "headers"),
    ("send_keyed key released view", lambda e: e.prod.send_keyed(e.mgr, _released(), b"v"), InvalidArgument,
     "key"),
    ("send_keyed key object", lambda e: e.prod.send_keyed(e.mgr, object(), b"v"), InvalidType, "key"),
    ("send_keyed value None", lambda e: e.prod.send_keyed(e.mgr, b"k", None), InvalidType, "value"),
    ("send_keyed mgr None", lambda e: e.prod.send_keyed(None, b"k", b"v"), InvalidType, "mgr"),
    ("send_keyed headers key int", lambda e: e.prod.send_keyed(e.mgr, b"k", b"v", headers={5: b"v"}),
     InvalidType, "header key"),
    ("send_batch empty", lambda e: e.prod.send_batch(e.mgr, []), InvalidArgument, "empty batch"),
    ("send_batch item released view", lambda e: e.prod.send_batch(e.mgr, [b"a", _released()]), InvalidArgument,
     "buffer"),
    ("send_batch key int", lambda e: e.prod.send_batch(e.mgr, [b"a"], keys=[5]), InvalidType, "keys[0]"),
    ("send_batch tuple one too large", lambda e: e.prod.send_batch(e.mgr, (b"a", b"x" * 10_000)),
     MessageTooLarge, "10000"),
    ("send_batch keyed one too large", lambda e: e.prod.send_batch(e.mgr, [b"a", b"b"], keys=[b"k", b"k" * 3000]),
     MessageTooLarge, "batch message 1"),
    ("send_batch item str", lambda e: e.prod.send_batch(e.mgr, [b"a", "b"]), InvalidType, "values[1]"),
    ("send_batch 1-D array", lambda e: e.prod.send_batch(e.mgr, np.zeros(5, np.uint8)), InvalidArgument, "2-D"),
    ("send_batch keys count", lambda e: e.prod.send_batch(e.mgr, [b"a"], keys=[b"a", b"b"]), InvalidArgument,
     "keys"),
    ("send_batch one too large", lambda e: e.prod.send_batch(e.mgr, [b"a", b"x" * 10_000]), MessageTooLarge,
     "batch message 1"),
    ("kafka_partition zero", lambda e: kafka_partition(b"k", 0), InvalidArgument, "num_partitions"),
    ("kafka_partition key str", lambda e: kafka_partition("k", 2), InvalidType, "key"),
    ("murmur2 int", lambda e: murmur2(5), InvalidType, "key"),
    # ---- Consumer ------------------------------------------------------------------------------------
    ("consumer topic empty", lambda e: Consumer(""), InvalidArgument, "topic"),
    ("consumer group slash", lambda e: Consumer("orders", "a/b"), InvalidArgument, "group"),
    ("consumer max_batch zero", lambda e: Consumer("orders", max_batch=0), InvalidArgument, "max_batch"),
    ("assign negative", lambda e: e.consumer.assign([-1]), InvalidArgument, "partition"),
    ("assign str", lambda e: e.consumer.assign(["0"]), InvalidType, "partition"),
    ("assign duplicate", lambda e: e.consumer.assign([0, 0]), InvalidArgument, "duplicate"),
    ("assign beyond topic", lambda e: e.consumer.assign([0, 5]), InvalidArgument, "partitions 0..1"),
    ("assign not iterable", lambda e: e.consumer.assign(5), InvalidType, "partitions"),
    ("seek policy misspelt", lambda e: e.consumer.seek(e.mgr, e.mem, "Earlist"), InvalidArgument, "seek policy"),
    ("seek policy float", lambda e: e.consumer.seek(e.mgr, e.mem, 1.5), InvalidType, "policy"),
    ("seek committed without store", lambda e: e.consumer.seek(e.mgr, None, SeekPolicy.Committed), InvalidType,
     "offset store"),
    ("seek_partition offset negative", lambda e: e.consumer.seek_partition(e.mgr, 0, -1), InvalidArgument,
     "offset"),
    ("seek_partition offset huge", lambda e: e.consumer.seek_partition(e.mgr, 0, HUGE), InvalidArgument,
     "offset"),
    ("seek_partition beyond end", lambda e: e.consumer.seek_partition(e.mgr, 0, 10**6), InvalidArgument,
     "beyond the end"),
    ("seek_partition unassigned", lambda e: e.consumer.seek_partition(e.mgr, 9, 0), InvalidArgument,
     "partition 9"),
    ("consumer poll max zero", lambda e: e.consumer.poll(e.mgr, 0), InvalidArgument, "max_messages"),
    ("consumer poll max str", lambda e: e.consumer.poll(e.mgr, "5"), InvalidType, "max_messages"),
    ("consumer poll mgr str", lambda e: Consumer("orders").poll("mgr"), InvalidType, "mgr"),
    ("consumer poll timeout str", lambda e: e.consumer.poll(e.mgr, 5, timeout="1"), InvalidType, "timeout"),
    ("consumer poll timeout nan", lambda e: e.consumer.poll(e.mgr, 5, timeout=NAN), InvalidArgument, "timeout"),
    ("consumer poll max float", lambda e: e.consumer.poll(e.mgr, 5.0), InvalidType, "max_messages"),
    ("consumer poll max negative", lambda e: e.consumer.poll(e.mgr, -3), InvalidArgument, "max_messages"),
    ("consumer poll max None", lambda e: e.consumer.poll(e.mgr, None), InvalidType, "max_messages"),
    ("consumer poll spin str", lambda e: e.consumer.poll(e.mgr, 5, timeout=0.01, spin="1"), InvalidType, "spin"),
    ("consumer poll mgr None", lambda e: e.consumer.poll(None, 5), InvalidType, "mgr"),
    ("consumer poll_batch max zero", lambda e: e.consumer.poll_batch(e.mgr, 0), InvalidArgument, "max_messages"),
    ("consumer commit store str", lambda e: e.consumer.commit("store"), InvalidType, "store"),
    ("consumer commit offset negative", lambda e: e.consumer.commit(e.mem, {0: -1}), InvalidArgument, "offset"),
    ("consumer commit unassigned", lambda e: e.consumer.commit(e.mem, {7: 1}), InvalidArgument, "partition 7"),
    ("consumer commit beyond end", lambda e: e.consumer.commit(e.mem, {0: 10**6}), InvalidArgument,
     "beyond its end"),
    ("consumer position unassigned", lambda e: e.consumer.position(9), InvalidArgument, "partition 9"),
    ("consumer lag mgr str", lambda e: Consumer("orders").lag("mgr"), InvalidType, "mgr"),
    # ---- offset stores -----------------------------------------------------------------------------------
    ("mem commit group empty", lambda e: e.mem.commit("", "orders", 0, 0), InvalidArgument, "group"),
    ("mem commit topic slash", lambda e: e.mem.commit("g", "a/b", 0, 0), InvalidArgument, "topic"),
    ("mem commit partition negative", lambda e: e.mem.commit("g", "orders", -1, 0), InvalidArgument, "partition"),
    ("mem commit offset negative", lambda e: e.mem.commit("g", "orders", 0, -1), InvalidArgument, "offset"),
    ("mem commit offset huge", lambda e: e.mem.commit("g", "orders", 0, HUGE), InvalidArgument, "offset"),
    ("mem commit offset str", lambda e: e.mem.commit("g", "orders", 0, "5"), InvalidType, "offset"),
    ("mem committed partition str", lambda e: e.mem.committed("g", "orders", "0"), InvalidType, "partition"),
    ("mem commit_many not mapping", lambda e: e.mem.commit_many("g", "orders", [1]), InvalidType, "offsets"),
    ("mem commit_many one bad", lambda e: e.mem.commit_many("g", "orders", {0: 9, 1: -1}), InvalidArgument,
     "offset"),
    ("commit_many helper bad", lambda e: commit_many(e.mem, "g", "orders", {0: 9, 1: -1}), InvalidArgument,
     "offset"),
    ("sqlite path int", lambda e: SqliteOffsetStore(5), InvalidType, "path"),
    ("sqlite path empty", lambda e: SqliteOffsetStore(""), InvalidArgument, "path"),
    ("sqlite busy_timeout negative", lambda e: SqliteOffsetStore(e.tmp_path / "x.db", busy_timeout=-1),
     InvalidArgument, "busy_timeout"),
    ("sqlite not a database", lambda e: SqliteOffsetStore(_junk(e)), InvalidArgument, "offset database"),
    ("sqlite commit offset negative", lambda e: e.sql.commit("g", "orders", 0, -1), InvalidArgument, "offset"),
    ("sqlite commit_many one bad", lambda e: e.sql.commit_many("g", "orders", {0: 9, 1: -1}), InvalidArgument,
     "offset"),
    ("fabric store mgr str", lambda e: FabricOffsetStore("mgr"), InvalidType, "mgr"),
    ("fabric store group long", lambda e: e.fstore.commit("g" * 65, "orders", 0, 0), InvalidArgument, "group"),
    ("fabric store commit_many one bad", lambda e: e.fstore.commit_many("g", "orders", {0: 9, 1: -1}),
     InvalidArgument, "offset"),
    # ---- ConsumerGroup --------------------------------------------------------------------------------------
    ("group name empty", lambda e: ConsumerGroup("", "orders", 2, 30), InvalidArgument, "group name"),
    ("group topic slash", lambda e: ConsumerGroup("g", "a/b", 2, 30), InvalidArgument, "topic"),
    ("group partitions zero", lambda e: ConsumerGroup("g", "orders", 0, 30), InvalidArgument, "num_partitions"),
    ("group partitions str", lambda e: ConsumerGroup("g", "orders", "2", 30), InvalidType, "num_partitions"),
    ("group stale zero", lambda e: ConsumerGroup("g", "orders", 2, 0), InvalidArgument, "stale_threshold_secs"),
    ("group stale nan", lambda e: ConsumerGroup("g", "orders", 2, NAN), InvalidArgument, "stale_threshold_secs"),
    ("group mgr str", lambda e: ConsumerGroup("g", "orders", 2, 30, mgr="m"), InvalidType, "mgr"),
    ("group partitions differ from topic", lambda e: ConsumerGroup("g2", "orders", 3, 30, mgr=e.mgr),
     InvalidArgument, "has 2 partitions"),
    ("group attach unknown", lambda e: ConsumerGroup.attach(e.mgr, "nope", "orders"), NotFound, "nope"),
    ("claim member empty", lambda e: e.group.claim(""), InvalidArgument, "member"),
    ("claim member slash", lambda e: e.group.claim("a/b"), InvalidArgument, "member"),
    ("claim member int", lambda e: e.group.claim(5), InvalidType, "member"),
    ("claim now str", lambda e: e.group.claim("m2", now="x"), InvalidType, "now"),
    ("heartbeat member long", lambda e: e.group.heartbeat("m" * 65), InvalidArgument, "member"),
    ("leave member empty", lambda e: e.group.leave(""), InvalidArgument, "member"),
    ("group epoch partition out", lambda e: e.group.epoch(2), InvalidArgument, "partition"),
    ("group commit offset negative", lambda e: e.group.commit(e.fstore, "m1", "orders", {0: -1}),
     InvalidArgument, "offset"),
    ("group commit wrong topic", lambda e: e.group.commit(e.fstore, "m1", "dlq", {0: 1}), InvalidArgument,
     "not 'dlq'"),
    ("group commit not owner", lambda e: e.group.commit(e.fstore, "m9", "orders", {0: 1}), Fenced, "m9"),
    ("group_lag group empty", lambda e: group_lag(e.mgr, e.mem, "", "orders"), InvalidArgument, "group"),
    # ---- DlqRouter --------------------------------------------------------------------------------------------
    ("dlq source empty", lambda e: DlqRouter("", "dlq", 3), InvalidArgument, "source_topic"),
    ("dlq same topics", lambda e: DlqRouter("orders", "orders", 3), InvalidArgument, "must differ"),
    ("dlq retries zero", lambda e: DlqRouter("orders", "dlq", 0), InvalidArgument, "max_retries"),
    ("dlq retries str", lambda e: DlqRouter("orders", "dlq", "3"), InvalidType, "max_retries"),
    ("dlq mgr str", lambda e: DlqRouter("orders", "dlq", 3, mgr="m"), InvalidType, "mgr"),
    ("nack partition negative", lambda e: e.router.nack(-1, 0), InvalidArgument, "partition"),
    ("nack offset huge", lambda e: e.router.nack(0, HUGE), InvalidArgument, "offset"),
    ("ack partition str", lambda e: e.router.ack("0", 0), InvalidType, "partition"),
    ("failures offset negative", lambda e: e.router.failures(0, -1), InvalidArgument, "offset"),
    ("route value str", lambda e: e.router.route_to_dlq(e.mgr, 0, 0, "v"), InvalidType, "value"),
    ("route key str", lambda e: e.router.route_to_dlq(e.mgr, 0, 0, b"v", key="k"), InvalidType, "key"),
    ("route partition beyond", lambda e: e.router.route_to_dlq(e.mgr, 9, 0, b"v"), InvalidArgument,
     "partitions 0..1"),
    ("route too large", lambda e: e.router.route_to_dlq(e.mgr, 0, 0, b"v" * 10_000), MessageTooLarge, "dlq"),
    # ---- RenewalPolicy, RenewalManager ---------------------------------------------------------------------
    ("policy ttl zero", lambda e: RenewalPolicy(ttl=0), InvalidArgument, "ttl"),
    ("policy fraction zero", lambda e: RenewalPolicy(renew_fraction=0), InvalidArgument, "renew_fraction"),
    ("policy fraction two", lambda e: RenewalPolicy(renew_fraction=2), InvalidArgument, "renew_fraction"),
    ("policy before negative", lambda e: RenewalPolicy(renew_before=-1), InvalidArgument, "renew_before"),
    ("policy ttl str", lambda e: RenewalPolicy(ttl="9"), InvalidType, "ttl"),
    ("renewals mgr str", lambda e: RenewalManager("m"), InvalidType, "mgr"),
    ("renewals topic without mgr", lambda e: RenewalManager(topic="orders"), InvalidArgument, "topic="),
    ("renewals topic slash", lambda e: RenewalManager(e.mgr, topic="a/b"), InvalidArgument, "topic"),
    ("register expires str", lambda e: e.renewals.register(e.lease, "x"), InvalidType, "expires_at"),
    ("register expires past", lambda e: e.renewals.register(e.lease, 1.0), InvalidArgument, "expires_at"),
    ("register expires nan", lambda e: e.renewals.register(e.lease, NAN), InvalidArgument, "expires_at"),
    ("register policy str", lambda e: e.renewals.register(e.lease, time.time() + 9, "p"), InvalidType, "policy"),
    ("register unhashable", lambda e: e.renewals.register([1], time.time() + 9), InvalidType,
     "cannot register a list"),
    ("register_topic unknown", lambda e: e.renewals.register_topic("nope"), NotFound, "nope"),
    ("deregister unhashable", lambda e: e.renewals.deregister([1]), InvalidType, "hashable"),
    ("renew_now unknown", lambda e: e.renewals.renew_now("nope"), NotFound, "nope"),
    ("ttl_remaining unknown", lambda e: e.renewals.ttl_remaining("nope"), NotFound, "nope"),
    ("tick now str", lambda e: e.renewals.tick(now="x"), InvalidType, "now"),
    ("tick now nan", lambda e: e.renewals.tick(now=NAN), InvalidArgument, "now"),
    ("start interval zero", lambda e: e.renewals.start(0), InvalidArgument, "interval"),
    # ---- back-pressure: a full gated topic refuses and writes nothing ----------------------------------
    ("config on_full unknown", lambda e: TopicConfig(on_full="drop"), InvalidArgument, "on_full"),
    ("config on_full int", lambda e: TopicConfig(on_full=1), InvalidType, "on_full"),
    ("producer timeout str", lambda e: Producer("held", timeout="1"), InvalidType, "timeout"),
    ("producer timeout nan", lambda e: Producer("held", timeout=NAN), InvalidArgument, "timeout"),
    ("send timeout str", lambda e: Producer("waits").send(e.mgr, b"x", timeout="1"), InvalidType, "timeout"),
    ("send_batch timeout nan", lambda e: Producer("waits").send_batch(e.mgr, [b"x"], timeout=NAN),
     InvalidArgument, "timeout"),
    ("consumer gating int", lambda e: Consumer("held", gating=1), InvalidType, "gating"),
    ("consumer gating_ttl zero", lambda e: Consumer("held", gating=True, gating_ttl=0), InvalidArgument,
     "gating_ttl"),
    ("send raise full", lambda e: Producer("held").send(e.mgr, b"x"), BufferFull, "full"),
    ("send raise full headers", lambda e: Producer("held").send(e.mgr, b"x", headers=[("h", b"v")]),
     BufferFull, "nothing was written"),
    ("send_keyed raise full", lambda e: Producer("held").send_keyed(e.mgr, b"k", b"x"), BufferFull, "full"),
    ("send_keyed raise full round robin", lambda e: Producer("held", Partitioner.RoundRobin).send_keyed(
        e.mgr, b"k", b"x"), BufferFull, "full"),
    ("send_batch raise full list", lambda e: Producer("held").send_batch(e.mgr, [b"a", b"b"]), BufferFull,
     "full"),
    ("send_batch raise full keyed", lambda e: Producer("held").send_batch(e.mgr, [b"a"], keys=[b"k"]),
     BufferFull, "full"),
    ("send_batch raise full numpy", lambda e: Producer("held").send_batch(
        e.mgr, np.zeros((3, 8), dtype=np.uint8)), BufferFull, "full"),
    ("send block timeout zero", lambda e: Producer("waits", timeout=0).send(e.mgr, b"x"), BufferFull,
     "timeout"),
    ("send block timeout passes", lambda e: Producer("waits").send(e.mgr, b"x", timeout=0.02), BufferFull,
     "within the timeout"),
    ("send_batch block timeout", lambda e: Producer("waits").send_batch(e.mgr, [b"a", b"b"], timeout=0.02),
     BufferFull, "2 message(s)"),
    ("send_batch block never fits", lambda e: Producer("waits").send_batch(e.mgr, [b"a"] * 5, timeout=1),
     InvalidArgument, "can never fit"),
    ("append gated full", lambda e: e.mgr.topic("held").partition(0).append(b"x"), BufferFull, "no room"),
    ("append_batch gated full", lambda e: e.mgr.topic("held").partition(1).append_batch([b"x"]), BufferFull,
     "no room"),
    # ---- share consumers ----------------------------------------------------------------------------
    ("share lock_secs zero", lambda e: e.mgr.share_consumer("orders", group="sx", lock_secs=0), InvalidArgument,
     "lock_secs"),
    ("share lock_secs str", lambda e: e.mgr.share_consumer("orders", group="sx", lock_secs="1"), InvalidType,
     "lock_secs"),
    ("share lock_secs nan", lambda e: e.mgr.share_consumer("orders", group="sx", lock_secs=NAN), InvalidArgument,
     "lock_secs"),
    ("share lock_secs huge", lambda e: e.mgr.share_consumer("orders", group="sx", lock_secs=1e9), InvalidArgument,
     "lock_secs"),
    ("share max_deliveries zero", lambda e: e.mgr.share_consumer("orders", group="sx", max_deliveries=0),
     InvalidArgument, "max_deliveries"),
    ("share max_deliveries huge", lambda e: e.mgr.share_consumer("orders", group="sx", max_deliveries=255),
     InvalidArgument, "max_deliveries"),
    ("share max_deliveries float", lambda e: e.mgr.share_consumer("orders", group="sx", max_deliveries=2.0),
     InvalidType, "max_deliveries"),
    ("share dlq is the topic", lambda e: e.mgr.share_consumer("orders", group="sx", dlq="orders"),
     InvalidArgument, "DLQ topic"),
    ("share dlq missing", lambda e: e.mgr.share_consumer("orders", group="sx", dlq="nowhere"), NotFound, "DLQ"),
    ("share group slash", lambda e: e.mgr.share_consumer("orders", group="a/b"), InvalidArgument, "group"),
    ("share member long", lambda e: e.mgr.share_consumer("orders", group="sx", member="m" * 57), InvalidArgument,
     "member"),
    ("share topic missing", lambda e: e.mgr.share_consumer("nope", group="sx"), NotFound, "nope"),
    ("share settings differ", lambda e: e.mgr.share_consumer("orders", group="sq", lock_secs=5.0, dlq="dlq"),
     InvalidArgument, "lock_secs"),
    ("share poll zero", lambda e: e.share.poll(0), InvalidArgument, "max_records"),
    ("share poll str", lambda e: e.share.poll("5"), InvalidType, "max_records"),
    ("share poll over max_batch", lambda e: e.share.poll(1 << 21), InvalidArgument, "max_records"),
    ("share poll timeout str", lambda e: e.share.poll(1, timeout="1"), InvalidType, "timeout"),
    ("share poll now str", lambda e: e.share.poll(1, now="x"), InvalidType, "now"),
    ("share ack str", lambda e: e.share.ack("record"), InvalidType, "records"),
    ("share ack int in list", lambda e: e.share.ack([e.held[0], 1]), InvalidType, "ShareRecord"),
    ("share release bytes", lambda e: e.share.release(b"x"), InvalidType, "records"),
    ("share reject none", lambda e: e.share.reject(None), InvalidType, "records"),
    ("share renew tuple", lambda e: e.share.renew((1, 2)), InvalidType, "ShareRecord"),
    ("share ack_range backwards", lambda e: e.share.ack_range(0, 5, 1), InvalidArgument, "range"),
    ("share ack_range partition negative", lambda e: e.share.ack_range(-1, 0, 1), InvalidArgument, "partition"),
    ("share renew_range start str", lambda e: e.share.renew_range(0, "0", 1), InvalidType, "start"),

]


def _released() -> memoryview:
    """A memoryview whose buffer is gone: reading it fails."""
    m = memoryview(b"payload")
    m.release()
    return m


def _junk(env: Env) -> str:
    p = env.tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    return str(p)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.renewals.stop()
    e.close()


def test_the_table_is_big_and_covers_every_public_class():
    assert len(ROWS) >= 250, len(ROWS)
    assert len({r[0] for r in ROWS}) == len(ROWS), "row ids must be unique"
    text = " ".join(r[0] for r in ROWS)
    for api in ["Fabric", "acquire", "lease", "partition", "append", "reader", "config", "manager", "create",
                "producer", "send", "consumer", "mem", "sqlite", "fabric store", "group", "claim", "dlq",
                "nack", "route", "policy", "renewals", "register", "tick"]:
        assert api in text, api


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_raises_a_clear_grafos_error_and_changes_nothing(env, row):
    _, call, exc, says = row
    assert issubclass(exc, GrafosError)
    before = snapshot(env)
    with pytest.raises(exc) as info:
        call(env)
    assert says.lower() in str(info.value).lower(), f"message does not name {says!r}: {info.value}"
    assert snapshot(env) == before
