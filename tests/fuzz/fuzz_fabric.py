#!/usr/bin/env python3
"""Fuzz the fabric as another process, a bug or a damaged disk could leave it.

Each input is a recipe of byte mutations applied to a small, valid, file-backed
bus (three topics with messages, committed offsets, a consumer group, DLQ
counts): overwrite a field of the header, a lease entry, a metadata entry, a
ring header or a slot header with an interesting value, flip bytes, copy one
entry or slot over another, zero a range, and optionally recompute the
checksums the mutation broke (so the deeper checks are reached, not only the
CRCs). The mutated file is then attached and driven through attach,
``topics``, ``describe``, polls, sends, ``reap``, offset stores, consumer
groups, the DLQ and the admin calls.

Every input must end in a correct result or a :class:`grafos.errors.GrafosError`
-- never a segfault, a hang or an unbounded allocation -- and, unless the
fuzzer recomputed slot checksums (which forges messages on purpose), every
delivered message must be one this harness wrote.

Run it:

* with atheris (``pip install -e .[fuzz]``)::

      python tests/fuzz/fuzz_fabric.py -max_total_time=3600 -timeout=10 -rss_limit_mb=2048 CORPUS_DIR

* without atheris, a seeded random-mutation loop over the same harness::

      python tests/fuzz/fuzz_fabric.py --random --seed 1 --seconds 60

Both print the number of executions at the end (``stat::number_of_executed_units``
for atheris, ``fuzz_fabric: executions=...`` for the loop).
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback

try:
    import atheris
except ImportError:      # the seeded loop below runs the same harness
    atheris = None

if atheris is not None and "--random" not in sys.argv:
    with atheris.instrument_imports(include=["grafos"]):
        import grafos  # noqa: F401
        from grafos.mq import consumer, dlq, group, offset, producer, topic  # noqa: F401

from grafos import Fabric
from grafos._native import lib
from grafos.errors import GrafosError
from grafos.message import Message
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.dlq import DlqRouter
from grafos.mq.group import ConsumerGroup, group_lag, list_groups
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.reader import Reader

YEARS = 10 * 365 * 86400.0    # retention of the template's topics: the real clock never ends it
SHARE_LOCK = 7 * 86400.0      # the template's share locks outlive a fuzzing run
LEASE_SLOTS, META_SLOTS = 16, 128
EXTRA = 12 * 4096             # free arena room, so drives can create a topic and share state
PER_INPUT_TIMEOUT = 10.0      # seconds: an input that takes longer is a hang
RSS_LIMIT_MB = 1024           # an input that needs more is an unbounded allocation

_U64 = struct.Struct("<Q")
SHARE_MAGIC = 0x4552414853475221
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


# ---- the template bus ----------------------------------------------------------------
class Template:
    """A small valid bus in a file, its bytes, where everything is in them, and
    every (key, value) the harness ever writes."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        path = os.path.join(workdir, "template.grafos")
        fab = Fabric.open(path=path, size=self._size(), lease_slots=LEASE_SLOTS, meta_slots=META_SLOTS,
                          exclusive=True)
        mgr = TopicManager(fab)
        self.known: set[tuple[bytes | None, bytes]] = set()
        mgr.create("orders", TopicConfig(2, 8, 128, YEARS))
        mgr.create("events", TopicConfig(1, 4, 96, YEARS, checksum=False))   # the others carry checksums
        mgr.create("dlq", TopicConfig(1, 4, 256, YEARS))
        prod = Producer("orders").with_partitioner(Partitioner.KeyHash)
        for i in range(10):                       # 10 into 2 x 8: one partition laps
            self._send(prod, mgr, b"k%d" % i, b"orders-%d" % i)
        ev = Producer("events")
        for i in range(6):                        # 6 into 4 slots: the ring overwrote 2
            self._send(ev, mgr, None, b"events-%d" % i)
        mgr.topic("orders").partition(0).append(b"with-headers", key=b"kh", headers=[("h", b"v")])
        self.known.add((b"kh", b"with-headers"))
        # messages larger than a slot: continuation and padding offsets in the rings
        big = bytes(range(256)) + b"big-orders"
        mgr.topic("orders").partition(1).append(big, key=b"kb", headers=[("span", b"3")])
        self.known.add((b"kb", big))
        FabricOffsetStore(mgr).commit_many("grp", "orders", {0: 1, 1: 2})
        g = ConsumerGroup("grp", "orders", 2, 30.0, mgr=mgr)
        g.claim("m1")
        router = DlqRouter("orders", "dlq", 2, mgr=mgr)
        router.nack(0, 1)
        router.nack(1, 0)
        router.nack(1, 0)
        self._route(router, mgr)
        # a share group with records locked, acked and released in its state regions
        sc = mgr.share_consumer("orders", group="sh", lock_secs=SHARE_LOCK, max_deliveries=2, dlq="dlq")
        recs = sc.poll(5)
        sc.ack(recs[:2])
        sc.release(recs[2:3])
        fab.close()
        with open(path, "rb") as f:
            self.data = f.read()
        os.unlink(path)
        self.path = os.path.join(workdir, "fuzz.grafos")
        self.regions = self._regions()

    @staticmethod
    def _size() -> int:
        meta_end = 4096 + LEASE_SLOTS * 64 + META_SLOTS * 256
        data_off = (meta_end + 4095) // 4096 * 4096
        return data_off + 3 * 4096 + EXTRA

    def _send(self, prod: Producer, mgr: TopicManager, key: bytes | None, value: bytes) -> None:
        if key is None:
            prod.send(mgr, value)
        else:
            prod.send_keyed(mgr, key, value)
        self.known.add((key, value))

    def _route(self, router: DlqRouter, mgr: TopicManager) -> None:
        router.route_to_dlq(mgr, 1, 0, b"dead-letter", key=b"kd")
        self.known.add((b"kd", b"dead-letter"))
        big = b"dead-letter-" * 40          # 480 bytes: two slots of the DLQ's 256
        router.route_to_dlq(mgr, 1, 1, big, key=b"kd")
        self.known.add((b"kd", big))

    def _regions(self) -> list[tuple[str, int, int, list[int]]]:
        """(kind, start, length, offsets of fields inside) for every structure."""
        d = self.data
        lease_off, = _U64.unpack_from(d, 24)
        nleases, nmeta = struct.unpack_from("<II", d, 32)
        meta_off, = _U64.unpack_from(d, 40)
        regs = [("hdr", 0, 256, [0, 8, 12, 16, 24, 32, 36, 40, 48, 56, 60, 64, 72, 128, 136, 192, 196, 200])]
        for i in range(nleases):
            start = lease_off + 64 * i
            regs.append(("lease", start, 64, [0, 8, 16, 24, 32, 40, 48, 52, 56]))
            lid, off, size = struct.unpack_from("<QQQ", d, start + 8)
            if lid == 0:
                continue
            if _U64.unpack_from(d, off)[0] == SHARE_MAGIC:     # a share group's state, not a ring
                cap, = _U32.unpack_from(d, off + 24)
                regs.append(("share", off, 512, [0, 8, 16, 24, 28, 32, 40, 48, 64, 128, 192, 240, 256]))
                regs.append(("share-entries", off + lib.GF_SHARE_ENTRIES_OFF, cap * 16,
                             [16 * k for k in range(cap)] + [16 * k + 8 for k in range(cap)]))
                continue
            regs.append(("ring", off, 256, [0, 8, 16, 20, 24, 32, 64, 128]))
            cap, stride = struct.unpack_from("<II", d, off + 16)
            for k in range(cap):
                regs.append(("slot", off + 256 + k * stride, stride, [0, 8, 16, 20, 24, 28, 32, 36, 40]))
            # the sequence words (publication, abandoned and gap flags) follow the slots
            regs.append(("seqs", off + 256 + cap * stride, cap * 8, [8 * k for k in range(cap)] +
                         [8 * k + 7 for k in range(cap)]))
        for i in range(nmeta):
            start = meta_off + 256 * i
            if _U32.unpack_from(d, start)[0] != 0 or i % 16 == 0:
                regs.append(("meta", start, 256, [0, 4, 8, 10, 12, 16, 112]))
        regs.append(("any", 0, len(d), [0]))
        return regs


# ---- reading the input -------------------------------------------------------------------
class Provider:
    """Deterministic choices from the fuzzer's bytes (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0

    def byte(self) -> int:
        if self.i < len(self.d):
            self.i += 1
            return self.d[self.i - 1]
        return 0

    def int(self, lo: int, hi: int) -> int:
        """An int in [lo, hi]."""
        span = hi - lo
        if span <= 0:
            return lo
        v = 0
        for _ in range((span.bit_length() + 7) // 8):
            v = (v << 8) | self.byte()
        return lo + v % (span + 1)

    def bytes(self, n: int) -> bytes:
        b = self.d[self.i:self.i + n]
        self.i += len(b)
        return b + bytes(n - len(b))

    def pick(self, seq):  # noqa: ANN001, ANN201
        return seq[self.int(0, len(seq) - 1)]


def _interesting(t: Template) -> list[int]:
    size = len(t.data)
    return [0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
            0xFFFFFFFF, 1 << 32, (1 << 48) - 1, 1 << 48, 1 << 62, (1 << 63) - 1, 1 << 63,
            (1 << 64) - 1, size, size - 1, size + 4096, 4096, 4096 * 3, 256, 40, 41, 96, 97, 144,
            145, os.getpid(), 1, 1 << 62, (1 << 62) | 6, (1 << 62) | (1 << 63) | 6, 0x40, 0xC0,
            88, 89, 216, 984, 985, 1024 - 40]


def mutate(t: Template, p: Provider) -> tuple[bytearray, bool]:
    """Apply the input's mutations; returns (file bytes, strict) where strict means
    slot checksums were not forged, so every delivered message must be a known one."""
    d = bytearray(t.data)
    interesting = _interesting(t)
    for _ in range(p.int(1, 8)):
        kind, start, length, fields = p.pick(t.regions)
        op = p.int(0, 5)
        if op <= 1:                                       # a field := an interesting value
            at = start + p.pick(fields) if op == 0 else start + p.int(0, max(0, length - 1))
            width = p.pick((1, 2, 4, 8))
            v = p.pick(interesting) if p.byte() & 1 else int.from_bytes(p.bytes(width), "little")
            _put(d, at, width, v)
        elif op == 2:                                     # flip bytes
            at = start + p.int(0, max(0, length - 1))
            for j, b in enumerate(p.bytes(p.int(1, 16))):
                if at + j < len(d):
                    d[at + j] ^= b or 0xFF
        elif op == 3:                                     # a field += small delta
            at = start + p.pick(fields)
            width = p.pick((4, 8))
            if at + width <= len(d):
                v = int.from_bytes(d[at:at + width], "little") + p.int(-1000, 1000)
                _put(d, at, width, v)
        elif op == 4:                                     # copy another structure of the same kind over it
            same = [r for r in t.regions if r[0] == kind and r[2] == length]
            _, src, _, _ = p.pick(same)
            d[start:start + length] = d[src:src + length]
        else:                                             # zero a range
            at = start + p.int(0, max(0, length - 1))
            n = p.int(1, 64)
            d[at:at + n] = bytes(len(d[at:at + n]))
    fix = p.byte()
    if fix & 1:
        _fix_header(d)
    if fix & 2:
        _fix_rings(t, d)
    if fix & 4:
        _fix_meta(d)
    strict = not fix & 8
    if not strict:
        _fix_slots(t, d)
    # A zero `ready` word means "a creator is still writing": attach waits 2 s for
    # it (tested in test_hostile_fabric.py). Keep inputs fast: make it damage instead.
    if _U32.unpack_from(d, 60)[0] == 0:
        _U32.pack_into(d, 60, 1)
    return d, strict


def _put(d: bytearray, at: int, width: int, v: int) -> None:
    if at + width <= len(d):
        d[at:at + width] = (v % (1 << (8 * width))).to_bytes(width, "little")


def _crc(b: bytes) -> int:
    return lib.gf_crc32c(0xFFFFFFFF, b, len(b)) ^ 0xFFFFFFFF


def _fix_header(d: bytearray) -> None:
    _U32.pack_into(d, 56, _crc(bytes(d[0:56])))


def _fix_rings(t: Template, d: bytearray) -> None:
    for kind, start, _, _ in t.regions:
        if kind == "ring":      # bytes [0, 32), then the flags word when nonzero
            flags = bytes(d[start + 36:start + 40])
            _U32.pack_into(d, start + 32, _crc(bytes(d[start:start + 32]) + (flags if any(flags) else b"")))


def _fix_meta(d: bytearray) -> None:
    meta_off, = _U64.unpack_from(d, 40)
    nmeta = _U32.unpack_from(d, 36)[0]
    for i in range(min(nmeta, META_SLOTS)):
        e = meta_off + 256 * i
        if e + 256 > len(d):
            break
        klen, vlen = struct.unpack_from("<HH", d, e + 8)
        if klen <= 96 and vlen <= 144:
            c = lib.gf_crc32c(0xFFFFFFFF, bytes(d[e + 16:e + 16 + klen]), klen)
            c = lib.gf_crc32c(c, bytes(d[e + 112:e + 112 + vlen]), vlen) ^ 0xFFFFFFFF
            _U32.pack_into(d, e + 12, c)


def _fix_slots(t: Template, d: bytearray) -> None:
    """Forge valid checksums over whatever the slots hold (a hostile writer can),
    multi-slot messages included."""
    rings = [(start, length) for kind, start, length, _ in t.regions if kind == "ring"]
    for ring, _ in rings:
        if ring + 24 > len(d):
            continue
        cap, stride = struct.unpack_from("<II", d, ring + 16)
        if not (0 < cap <= 64 and 48 <= stride <= 4096) or ring + 256 + cap * (stride + 8) > len(d):
            continue
        for k in range(cap):
            start = ring + 256 + k * stride
            seq, = _U64.unpack_from(d, ring + 256 + cap * stride + 8 * k)
            n = ((seq & ~(3 << 62)) - 2) // 2 if seq >= 2 else 0
            kl, vl, hl = struct.unpack_from("<III", d, start + 16)
            total = kl + vl + hl
            if 40 + total > (cap - k) * stride:
                continue
            c = lib.gf_crc32c(0xFFFFFFFF, _U64.pack(n % (1 << 64)), 8)
            c = lib.gf_crc32c(c, bytes(d[start + 8:start + 36]), 28)
            c = lib.gf_crc32c(c, bytes(d[start + 40:start + 40 + total]), total) ^ 0xFFFFFFFF
            _U32.pack_into(d, start + 36, c)


# ---- driving the bus --------------------------------------------------------------------
STATS: collections.Counter = collections.Counter()


def _check_messages(msgs, t: Template, strict: bool, made: set) -> None:  # noqa: ANN001
    for part, m in msgs:
        assert isinstance(part, int) and part >= 0, part
        assert isinstance(m, Message), type(m)
        assert isinstance(m.value, bytes) and (m.key is None or isinstance(m.key, bytes))
        assert 0 <= m.offset < 1 << 48, m.offset
        if strict:
            assert (m.key, m.value) in t.known or (m.key, m.value) in made, \
                f"delivered a message nobody wrote: {m!r}"
        STATS["delivered"] += 1


def drive(t: Template, d: bytes, strict: bool, p: Provider) -> None:
    tmp = t.path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(d)
    os.replace(tmp, t.path)     # a new inode: no mapping of an earlier input sees this one
    try:
        fab = Fabric.open(path=t.path, create=False)
    except GrafosError as e:
        STATS["refused:" + type(e).__name__] += 1
        return
    STATS["attached"] += 1
    fab.lock_timeout = 0.05          # a lock word naming a live process costs 50 ms, not 5 s
    fab.set_bounded_wait(0.001)
    made: set = set()
    mgr = TopicManager(fab)
    names = ["orders", "events", "dlq"]

    def op_topics() -> None:
        for n in mgr.topics():
            assert isinstance(n, str)
            if n not in names and len(names) < 6:
                names.append(n)

    def op_describe() -> None:
        for n in list(names):
            try:
                desc = mgr.describe(n)
            except GrafosError:
                continue
            for pi in desc.partitions:
                assert 0 <= pi.earliest <= pi.latest < 1 << 48, pi
                assert pi.lost >= 0 and pi.ttl_remaining >= 0

    def checksummed(name: str) -> bool:
        """Every ring of the topic carries slot checksums (its header says so)."""
        return all(q is None or q.checksum for q in mgr.topic(name).partitions)

    def op_consume() -> None:
        # without checksum verification (or checksums) a damaged payload is delivered
        # as it is: then only the shape of what comes out is checked, not its bytes
        check = not p.byte() & 1
        for n in list(names):
            try:
                c = Consumer(n, "fz", max_batch=64, check_crcs=check)
                c.seek(mgr, None, SeekPolicy.Earliest)
                verified = check and checksummed(n)
                for _ in range(3):
                    got = c.poll(mgr, 64)
                    _check_messages(got, t, strict and verified, made)
                    if not got:
                        break
                c.lag(mgr)
                c.lost()
            except GrafosError:
                continue

    def op_batch_read() -> None:
        tp = mgr.topic("orders")
        check = not p.byte() & 1
        rd = Reader(fab, tp.partitions, max_batch=32, check_crcs=check)
        b = rd.poll_batch(32)
        _check_messages(list(b), t, strict and check and checksummed("orders"), made)
        for i in range(len(tp.partitions)):
            rd.counters(i)

    def op_peek() -> None:
        # read in place from a damaged ring: what a peek hands out, as messages or as
        # arrays, must be the same bytes, and whatever release reports is well formed
        c = Consumer(p.pick(names), "fzp", check_crcs=not p.byte() & 1)
        c.seek(mgr, None, SeekPolicy.Earliest)
        with c.peek(mgr, p.int(1, 64)) as pk:
            rows = [bytes(r) for a in (pk.arrays() if p.byte() & 1 else []) for r in a]
            got = [(m.partition, Message((m.offset, m.key, bytes(m.value), m.timestamp, tuple(m.headers))))
                   for m in pk]
            assert not rows or rows == [m.value for _, m in got]
        _check_messages(got, t, False, made)
        assert len(pk.intact) == len(pk) and len(pk.overwritten) <= len(pk)
        STATS["peeked"] += len(pk)

    def op_loan() -> None:
        v = b"fz-loan-%d" % p.byte()
        made.add((b"fl", v))
        with Producer(p.pick(names)).loan(mgr, len(v), key=b"fl") as ln:
            ln.write(v)
            if p.byte() & 1:
                raise GrafosError("abandoned by the fuzzer")     # leaves the loan unpublished

    def op_send() -> None:
        k, v = b"fk%d" % p.byte(), b"fz-%d" % p.byte()
        made.add((k, v))
        made.add((None, v))
        Producer(p.pick(names)).send_keyed(mgr, k, v)
        Producer(p.pick(names)).send(mgr, v)

    def op_send_batch() -> None:
        vals = [b"fb-%d" % i for i in range(p.int(1, 5))]
        made.update((None, v) for v in vals)
        Producer(p.pick(names)).send_batch(mgr, vals)

    def op_send_big() -> None:
        v = b"fz-big-%d-" % p.byte() * 30       # several slots of any of the topics
        made.add((b"fg", v))
        Producer(p.pick(names)).send_keyed(mgr, b"fg", v)

    def op_append_headers() -> None:
        made.add((b"fh", b"fz-h"))
        mgr.topic(p.pick(names)).partition(0).append(b"fz-h", key=b"fh", headers=[("x", b"y")])

    def op_reap() -> None:
        fab.reap()

    def op_offsets() -> None:
        st = FabricOffsetStore(mgr)
        st.items()
        st.committed("grp", "orders", p.int(0, 2))
        st.commit("grp", "orders", p.int(0, 1), p.int(0, 20))

    def op_group() -> None:
        if p.byte() & 1:
            g = ConsumerGroup.attach(mgr, "grp", "orders")
        else:
            g = ConsumerGroup("grp", "orders", 2, 30.0, mgr=mgr)
        g.claim(p.pick(["m1", "m2"]))
        g.describe(mgr, FabricOffsetStore(mgr))
        list_groups(mgr)
        group_lag(mgr, FabricOffsetStore(mgr), "grp", "orders")

    def op_dlq() -> None:
        r = DlqRouter("orders", "dlq", 2, mgr=mgr)
        r.nack_counts()
        r.nack(p.int(0, 1), p.int(0, 9))
        if p.byte() & 1:
            made.add((None, b"fz-dead"))
            r.route_to_dlq(mgr, p.int(0, 1), p.int(0, 9), b"fz-dead")
        r.prune(mgr)

    def op_fabric() -> None:
        fab.info()
        fab.meta_items()
        for lease in fab.leases():
            info = lease.info()
            lease.expired()
            lease.ttl_remaining()
            if info.size:
                lease.read(0, min(64, info.size))

    def op_share() -> None:
        # the share state of a damaged fabric: what a poll hands out was written by us
        sc = mgr.share_consumer("orders", group="sh", lock_secs=SHARE_LOCK, max_deliveries=2, dlq="dlq")
        recs = sc.poll(p.int(1, 8))
        _check_messages([(r.partition, Message.make(r.offset, r.key, r.value, r.timestamp, r.headers))
                         for r in recs], t, strict and checksummed("orders"), made)
        STATS["shared"] += len(recs)
        sc.describe()
        which = p.int(0, 3)
        try:
            (sc.ack, sc.release, sc.reject, sc.renew)[which](recs)
        finally:
            sc.close()

    def op_admin() -> None:
        which = p.int(0, 2)
        if which == 0:
            mgr.create("fznew", TopicConfig(1, 4, 128, 60.0))
            names.append("fznew")
        elif which == 1:
            mgr.restart(p.pick(names))
        else:
            mgr.delete(p.pick(names))

    ops = [op_topics, op_describe, op_consume, op_batch_read, op_send, op_send_batch,
           op_append_headers, op_send_big, op_reap, op_offsets, op_group, op_dlq, op_fabric, op_admin,
           op_peek, op_loan, op_share]
    try:
        # always look first (what a reader does on attach), then a sequence the input picks
        for op in [op_topics, op_describe, op_consume] + [p.pick(ops) for _ in range(p.int(2, 10))]:
            try:
                op()
                STATS["ok:" + op.__name__] += 1
            except GrafosError as e:
                STATS["err:" + type(e).__name__] += 1
        op_consume()      # and what is left must still read correctly
    finally:
        mgr.close()
        fab.close()


_TEMPLATE: Template | None = None


def one_input(data: bytes) -> None:
    """The fuzz target: one mutated fabric, attached and driven."""
    global _TEMPLATE
    if _TEMPLATE is None:
        # GRAFOS_FUZZ_WORKDIR: where the bus files go (the test passes its tmp_path, because
        # libFuzzer ends the process with exit() and our own clean-up never runs under it)
        _TEMPLATE = Template(tempfile.mkdtemp(prefix="grafos-fuzz-", dir=os.environ.get("GRAFOS_FUZZ_WORKDIR")))
    p = Provider(data)
    d, strict = mutate(_TEMPLATE, p)
    STATS["executions"] += 1
    STATS["strict" if strict else "forged"] += 1
    drive(_TEMPLATE, bytes(d), strict, p)


def _report(elapsed: float) -> None:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = " ".join(f"{k}={v}" for k, v in sorted(STATS.items()))
    print(f"fuzz_fabric: executions={STATS['executions']} seconds={elapsed:.1f} max_rss_mb={rss_mb:.0f} "
          f"{parts}", flush=True)
    if rss_mb > RSS_LIMIT_MB:
        print(f"fuzz_fabric: FAIL: peak RSS {rss_mb:.0f} MB over {RSS_LIMIT_MB} MB", flush=True)
        sys.exit(3)


def random_loop(seed: int, seconds: float, runs: int, keep_going: bool = False) -> None:
    """No atheris: random inputs from a seeded generator, same target, same checks
    (a crash kills the process; a hang trips faulthandler's timer). ``keep_going``
    (triage) lists every distinct failure instead of stopping at the first."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    i = 0
    failures: dict[str, int] = {}
    while (runs <= 0 or i < runs) and time.monotonic() - t0 < seconds:
        data = rng.randbytes(rng.randint(0, 512))
        faulthandler.dump_traceback_later(PER_INPUT_TIMEOUT, exit=True)
        try:
            one_input(data)
        except Exception as e:
            if not keep_going:
                print(f"fuzz_fabric: FAIL on input {i} of seed {seed}: {data.hex()}", flush=True)
                raise
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{type(e).__name__} at {tb.filename}:{tb.lineno}: {e}"[:300]
            if where not in failures:
                print(f"fuzz_fabric: failure (input {i}): {where}", flush=True)
            failures[where] = failures.get(where, 0) + 1
        finally:
            faulthandler.cancel_dump_traceback_later()
        i += 1
    _report(time.monotonic() - t0)
    if failures:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    ap.add_argument("--random", action="store_true", help="seeded random loop instead of atheris")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--keep-going", action="store_true", help="list every distinct failure (triage)")
    ap.add_argument("--help", action="store_true")
    args, rest = ap.parse_known_args()
    if args.help:
        print(__doc__)
        return
    faulthandler.enable()
    try:
        if args.random or atheris is None:
            random_loop(args.seed, args.seconds, args.runs, args.keep_going)
        else:
            atheris.Setup([sys.argv[0]] + rest, one_input)
            atheris.Fuzz()
    finally:
        if _TEMPLATE is not None:
            shutil.rmtree(_TEMPLATE.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
