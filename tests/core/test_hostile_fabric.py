"""A fabric damaged on purpose, one field at a time: every offset, length, count
and index the core reads from the mapping is checked before use, so each kind
of damage ends in a clear grafos error (or is stepped over and counted), never
a crash, a hang or a wrong message. The fuzzer (tests/fuzz) throws random
damage; this file pins down each field the checks guard."""
from __future__ import annotations

import os
import struct
import threading
import time

import pytest

from helpers import owner_helpers

from grafos import Fabric
from grafos._native import lib
from grafos.errors import (CorruptFabric, FabricVersionError, GrafosError, LockTimeout)
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.reader import Reader

CAP, STRIDE = 8, 128
LEASES, METAS = 16, 64
MESSAGES = [b"m-%d" % i for i in range(5)]

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def crc(b: bytes) -> int:
    return lib.gf_crc32c(0xFFFFFFFF, b, len(b)) ^ 0xFFFFFFFF


class Bus:
    """A file bus with one topic of 2 partitions (with slot checksums or without);
    partition 0 holds MESSAGES at offsets 0..4. Knows where every structure is in
    the file."""

    def __init__(self, path: str, checksum: bool = True) -> None:
        self.path = path
        self.checksum = checksum
        with Fabric.open(path=path, size=512 << 10, lease_slots=LEASES, meta_slots=METAS) as fab:
            mgr = TopicManager(fab)
            mgr.create("orders", TopicConfig(2, CAP, STRIDE, 3600.0, checksum=checksum))
            part = mgr.topic("orders").partition(0)
            for m in MESSAGES:
                part.append(m, key=b"k")
            self.lease_index = part.lease.index
            self.ring = part.lease.offset
        d = self.read()
        self.lease_off = _U64.unpack_from(d, 24)[0]
        self.meta_off = _U64.unpack_from(d, 40)[0]

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def patch(self, at: int, fmt: str, *values: int) -> None:
        with open(self.path, "r+b") as f:
            f.seek(at)
            f.write(struct.pack("<" + fmt, *values))

    def fix_header_crc(self) -> None:
        self.patch(56, "I", crc(self.read()[:56]))

    def fix_ring_crc(self) -> None:
        """The ring header's checksum: bytes [0, 32), then its flags word when nonzero."""
        d = self.read()
        flags = d[self.ring + 36:self.ring + 40]
        covered = d[self.ring:self.ring + 32] + (flags if flags != bytes(4) else b"")
        self.patch(self.ring + 32, "I", crc(covered))

    def lease(self, field: int) -> int:
        return self.lease_off + 64 * self.lease_index + field

    def slot(self, n: int) -> int:
        return self.ring + 256 + (n % CAP) * STRIDE

    def seq(self, n: int) -> int:
        """Offset n's publication word: the sequence words follow the slots."""
        return self.ring + 256 + CAP * STRIDE + (n % CAP) * 8

    def meta_entry(self, key: str) -> int:
        d = self.read()
        for i in range(METAS):
            e = self.meta_off + 256 * i
            state, _, klen = struct.unpack_from("<IIH", d, e)
            if state == 1 and d[e + 16:e + 16 + klen] == key.encode():
                return e
        raise KeyError(key)

    def open(self, **kw) -> Fabric:
        fab = Fabric.open(path=self.path, create=False, **kw)
        fab.lock_timeout = 0.3
        fab.set_bounded_wait(0.01)
        return fab

    def poll_p0(self, check_crcs: bool = True) -> tuple[list, dict]:
        """Messages of partition 0 from offset 0 (polling past bounded waits until
        three polls in a row bring nothing), and the reader's counters."""
        with self.open() as fab:
            mgr = TopicManager(fab)
            rd = Reader(fab, [mgr.topic("orders").partition(0)], check_crcs=check_crcs)
            got, empty = [], 0
            while empty < 3:
                batch = [m for _, m in rd.poll(100, timeout=0.05)]
                got += batch
                empty = 0 if batch else empty + 1
            return got, {**rd.counters(0), "gaps": rd.gaps(0)}


@pytest.fixture(params=[True, False], ids=["checksum", "no-checksum"])
def bus(tmp_path, request):
    return Bus(str(tmp_path / "bus.grafos"), checksum=request.param)


@pytest.fixture
def checked_bus(tmp_path):
    """A bus whose rings carry checksums (verification has something to find)."""
    return Bus(str(tmp_path / "bus.grafos"), checksum=True)


# ---- the header: refused at attach, with the reason -------------------------------------
ATTACH_REFUSALS = [
    ("bad magic", lambda b: b.patch(0, "Q", 0x4141414141414141), CorruptFabric, "bad magic"),
    ("other layout version", lambda b: b.patch(8, "I", 7), FabricVersionError, "layout version 7"),
    ("header checksum", lambda b: b.patch(32, "I", LEASES + 1), CorruptFabric, "checksum"),
    ("size in header differs from file", lambda b: (b.patch(16, "Q", 1 << 30), b.fix_header_crc()),
     CorruptFabric, "truncated or grown"),
    ("impossible lease table size", lambda b: (b.patch(32, "I", 0xFFFFFFFF), b.fix_header_crc()),
     CorruptFabric, "impossible table sizes"),
    ("inconsistent offsets", lambda b: (b.patch(40, "Q", 8), b.fix_header_crc()),
     CorruptFabric, "offsets are inconsistent"),
    ("damaged ready word", lambda b: b.patch(60, "I", 0xDEAD), CorruptFabric, "ready word"),
    ("file shrunk", lambda b: os.truncate(b.path, 256 << 10), CorruptFabric, "truncated or grown"),
    ("file shorter than a header", lambda b: os.truncate(b.path, 100), CorruptFabric, "smaller than a header"),
]


@pytest.mark.parametrize("what,damage,exc,says", ATTACH_REFUSALS, ids=[r[0] for r in ATTACH_REFUSALS])
def test_attach_refuses_a_damaged_header_with_the_reason(bus, what, damage, exc, says):
    damage(bus)
    t0 = time.monotonic()
    with pytest.raises(exc, match=says):
        Fabric.open(path=bus.path, create=False)
    assert time.monotonic() - t0 < 1.5     # refused at once, not after the creator wait


def test_attach_waits_boundedly_for_a_creator_that_never_finishes(bus):
    bus.patch(60, "I", 0)           # `ready` never stored: looks like a creator still at work
    t0 = time.monotonic()
    with pytest.raises(CorruptFabric, match="never finished"):
        Fabric.open(path=bus.path, create=False)
    assert 1.5 < time.monotonic() - t0 < 10


# ---- lease table, ring header: the partition is refused, the bus stays usable -------------
PARTITION_REFUSALS = [
    ("lease region outside the file", lambda b: b.patch(b.lease(16), "Q", 1 << 40), "outside the fabric"),
    ("lease size past the end", lambda b: b.patch(b.lease(24), "Q", (1 << 64) - 4096), "outside the fabric"),
    ("lease offset not page aligned", lambda b: b.patch(b.lease(16), "Q", b.ring + 8), "outside the fabric"),
    ("lease offset inside the tables", lambda b: b.patch(b.lease(16), "Q", 4096), "outside the fabric"),
    ("ring header checksum", lambda b: b.patch(b.ring + 16, "I", 1 << 20), "valid ring header"),
    ("ring capacity past the lease", lambda b: (b.patch(b.ring + 16, "I", 1 << 20), b.fix_ring_crc()),
     "impossible geometry"),
    ("ring stride not a multiple of 8", lambda b: (b.patch(b.ring + 20, "I", 129), b.fix_ring_crc()),
     "impossible geometry"),
    ("ring of another lease", lambda b: (b.patch(b.ring + 8, "Q", 999), b.fix_ring_crc()), "valid ring header"),
    ("ring checksum flag flipped", lambda b: b.patch(b.ring + 36, "I", 1 if b.checksum else 0), "valid ring header"),
    ("ring flags unknown", lambda b: (b.patch(b.ring + 36, "I", 6), b.fix_ring_crc()), "valid ring header"),
]


@pytest.mark.parametrize("what,damage,says", PARTITION_REFUSALS, ids=[r[0] for r in PARTITION_REFUSALS])
def test_damaged_lease_or_ring_header_refuses_the_partition_not_the_bus(bus, what, damage, says):
    damage(bus)
    with bus.open() as fab:
        mgr = TopicManager(fab)
        assert mgr.topics() == ["orders"]
        with pytest.raises(CorruptFabric, match=says):
            mgr.topic("orders")
        mgr.create("fresh", TopicConfig(1, 4, 128, 60.0))     # the rest of the bus works
        Producer("fresh").send(mgr, b"x")
        assert mgr.describe("fresh").partitions[0].latest == 1


def test_lease_expiry_zeroed_is_an_expired_partition_reaped_at_attach(bus):
    bus.patch(bus.lease(0), "q", 0)
    with bus.open() as fab:
        mgr = TopicManager(fab)
        assert mgr.topic("orders").partitions[0] is None
        assert [p.alive for p in mgr.describe("orders").partitions] == [False, True]


# ---- ring data: bad slots are stepped over and counted, never delivered -------------------
def test_impossible_tail_is_an_error_not_a_read_past_the_ring(bus):
    bus.patch(bus.ring + 64, "Q", 1 << 60)
    with bus.open() as fab, pytest.raises(CorruptFabric, match="tail"):
        Reader(fab, [TopicManager(fab).topic("orders").partition(0)]).poll(10)
    with bus.open() as fab, pytest.raises(CorruptFabric, match="tail"):
        TopicManager(fab).describe("orders")


def test_tail_behind_the_slots_reads_only_up_to_the_tail(bus):
    bus.patch(bus.ring + 64, "Q", 2)
    got, _ = bus.poll_p0()
    assert [m.value for m in got] == MESSAGES[:2]


SLOT_DAMAGE = [
    ("key length past the slot", lambda b: b.patch(b.slot(2) + 16, "I", 0xFFFFFFF0), "corrupt"),
    ("value length past the slot", lambda b: b.patch(b.slot(2) + 20, "I", STRIDE), "corrupt"),
    ("headers length past the slot", lambda b: b.patch(b.slot(2) + 24, "I", 1 << 31), "corrupt"),
    ("payload byte flipped (torn write)", lambda b: b.patch(b.slot(2) + 41, "B", ord("X")), "corrupt"),
    ("checksum", lambda b: b.patch(b.slot(2) + 36, "I", 0), "corrupt"),
    ("abandoned mark", lambda b: b.patch(b.seq(2), "Q", (1 << 63) | 6), "abandoned"),
    ("gap mark (no message here)", lambda b: b.patch(b.seq(2), "Q", (1 << 62) | 6), "gaps"),
    ("span past the ring's end", lambda b: b.patch(b.slot(2) + 20, "I", CAP * STRIDE - 100), "corrupt"),
    ("span larger than the ring", lambda b: b.patch(b.slot(2) + 20, "I", 0xFFFFFF00), "corrupt"),
    ("span within the ring, checksum of one slot", lambda b: b.patch(b.slot(2) + 20, "I", 2 * STRIDE), "corrupt"),
]


@pytest.mark.parametrize("what,damage,counter", SLOT_DAMAGE, ids=[r[0] for r in SLOT_DAMAGE])
def test_damaged_slot_is_skipped_and_counted_and_the_rest_delivered(checked_bus, what, damage, counter):
    bus = checked_bus       # a ring without checksums reads as without verification: the test below
    damage(bus)
    got, counters = bus.poll_p0()
    assert [m.value for m in got] == MESSAGES[:2] + MESSAGES[3:]
    assert [m.offset for m in got] == [0, 1, 3, 4]
    assert counters[counter] == 1


# Without checksums the sequence words are still checked, and lengths against the
# ring; bytes damaged in place get through, and so do lengths damaged into a
# span that still fits the ring (it then reads its neighbours' bytes).
CRC_ONLY = {"payload byte flipped (torn write)", "checksum"}
SPAN_IN_RING = {"value length past the slot", "span within the ring, checksum of one slot"}


@pytest.mark.parametrize("what,damage,counter", SLOT_DAMAGE, ids=[r[0] for r in SLOT_DAMAGE])
def test_damaged_slot_without_checksum_verification(bus, what, damage, counter):
    """A reader with check_crcs=False, or any reader of a ring without checksums."""
    damage(bus)
    got, counters = bus.poll_p0(check_crcs=not bus.checksum)
    if what in CRC_ONLY:
        assert [m.offset for m in got] == [0, 1, 2, 3, 4] and counters["corrupt"] == 0
        assert (got[2].value != MESSAGES[2]) == (what != "checksum")
    elif what in SPAN_IN_RING:
        assert [m.offset for m in got][:3] == [0, 1, 2] and counters["corrupt"] == 0
        assert len(got[2].value) >= STRIDE                    # offset 2 now claims its neighbours
    else:
        assert [m.value for m in got] == MESSAGES[:2] + MESSAGES[3:]
        assert counters[counter] == 1


def test_slot_holding_another_offset_is_never_delivered_as_this_one(bus):
    # copy slot 0 (offset 0) over slot 3 (offset 3), publication word included
    d = bus.read()
    with open(bus.path, "r+b") as f:
        f.seek(bus.slot(3))
        f.write(d[bus.slot(0):bus.slot(0) + STRIDE])
        f.seek(bus.seq(3))
        f.write(d[bus.seq(0):bus.seq(0) + 8])
    got, counters = bus.poll_p0()
    assert [(m.offset, m.value) for m in got] == [(0, MESSAGES[0]), (1, MESSAGES[1]),
                                                  (2, MESSAGES[2]), (4, MESSAGES[4])]
    assert counters["abandoned"] + counters["lost"] + counters["corrupt"] >= 1


def test_unpublished_slot_costs_one_bounded_wait(bus):
    bus.patch(bus.seq(1), "Q", 3)         # offset 1 "being written" by nobody
    with bus.open() as fab:
        rd = Reader(fab, [TopicManager(fab).topic("orders").partition(0)])
        t0 = time.monotonic()
        got = rd.poll(100, timeout=2.0)
        while len(got) < 4 and time.monotonic() - t0 < 5:
            got += rd.poll(100, timeout=0.5)
        assert [m.offset for _, m in got] == [0, 2, 3, 4]
        assert rd.counters(0)["abandoned"] == 1


# ---- metadata table -------------------------------------------------------------------------
def test_metadata_value_length_past_the_entry_hides_the_entry(bus):
    e = bus.meta_entry("t/orders")
    bus.patch(e + 10, "H", 0xFFFF)
    with bus.open() as fab:
        assert fab.meta_get("t/orders") is None
        assert "t/orders" not in dict(fab.meta_items())     # listings skip it


def test_metadata_key_length_past_the_entry_hides_the_entry(bus):
    e = bus.meta_entry("t/orders")
    bus.patch(e + 8, "H", 0xFFFF)
    with bus.open() as fab:
        assert fab.meta_get("t/orders") is None
        assert TopicManager(fab).topics() == []


def test_metadata_checksum_mismatch_is_corrupt(bus):
    e = bus.meta_entry("p/orders/0")
    bus.patch(e + 112, "B", 0x7F)
    with bus.open() as fab, pytest.raises(CorruptFabric, match="checksum"):
        TopicManager(fab).topic("orders")


def test_garbage_entry_state_is_treated_as_free(bus):
    e = bus.meta_entry("p/orders/1")
    bus.patch(e, "I", 0xABCD)
    with bus.open() as fab:
        mgr = TopicManager(fab)
        t = mgr.topic("orders")
        assert t.partitions[0] is not None and t.partitions[1] is None


def test_damaged_topic_config_is_corrupt(bus):
    e = bus.meta_entry("t/orders")
    d = bus.read()
    klen, vlen = struct.unpack_from("<HH", d, e + 8)
    bus.patch(e + 112, "I", 0)       # 0 partitions
    val = bus.read()[e + 112:e + 112 + vlen]
    bus.patch(e + 12, "I", crc(b"t/orders" + val))
    with bus.open() as fab, pytest.raises(CorruptFabric, match="topic config"):
        TopicManager(fab).topic("orders")


# ---- the lock and the wake-up words ------------------------------------------------------------
def test_lock_word_naming_a_live_owner_times_out_boundedly(bus):
    fd = owner_helpers.hold(bus.path, 12345)          # an owner alive for as long as fd is open
    try:
        owner_helpers.write_holder(bus.path, 12345, 4321)
        with bus.open() as fab:
            t0 = time.monotonic()
            with pytest.raises(LockTimeout, match="live pid 4321"):
                TopicManager(fab).topics()
            assert time.monotonic() - t0 < 3
            assert fab.info().lock_recoveries == 0
    finally:
        os.close(fd)


def test_data_path_needs_no_lock_even_when_the_lock_word_is_held(bus):
    with bus.open() as fab:
        mgr = TopicManager(fab)
        part = mgr.topic("orders").partition(0)
        rd = Reader(fab, [part])
        with fab.locked():                     # held (by us): appends and reads still go
            part.append(b"while-locked")
            assert [m.value for _, m in rd.poll(100)] == MESSAGES + [b"while-locked"]


def test_lock_word_naming_a_dead_owner_is_taken_over(bus):
    os.close(owner_helpers.hold(bus.path, 12345))     # its owner came and went
    owner_helpers.write_holder(bus.path, 12345, os.getpid())   # a pid alive here says nothing
    assert _U64.unpack_from(bus.read(), 72)[0] == 0          # lock_recoveries
    with bus.open() as fab:
        assert TopicManager(fab).topics() == ["orders"]
        assert fab.info().lock_recoveries == 1


@pytest.mark.parametrize("value", [0, 0xFFFFFFFF, 0x80000000, 12345])
def test_lock_word_garbage_never_wedges_the_bus(bus, value):
    bus.patch(64, "I", value)
    with bus.open() as fab:
        assert TopicManager(fab).topics() == ["orders"]     # no owner holds a garbage token


def test_wakeup_words_garbage_costs_no_more_than_a_bounded_wait(bus):
    bus.patch(192, "IIq", 0xFFFFFFFF, 0xFFFFFFFF, (1 << 63) - 1)   # wake, waiters, wait_until
    with bus.open() as fab:
        mgr = TopicManager(fab)
        part = mgr.topic("orders").partition(1)
        part.append(b"after")
        rd = Reader(fab, [part])
        t0 = time.monotonic()
        assert [m.value for _, m in rd.poll(10, timeout=0.3)] == [b"after"]
        assert rd.poll(10, timeout=0.3) == []
        assert time.monotonic() - t0 < 3


def test_waiter_records_count_only_live_owners_and_a_waiter_takes_a_dead_ones_entry(checked_bus):
    bus = checked_bus
    dead = [20001 + i for i in range(5)]
    for t in dead:
        os.close(owner_helpers.hold(bus.path, t))        # owners that came and went
    live = owner_helpers.hold(bus.path, 20000)
    entries = [0x80000000, 0xFFFFFFFF, *dead, 20000]     # every entry taken: out of range, dead, live
    bus.patch(bus.ring + 160, "8I", *entries)
    try:
        with bus.open() as fab:
            part = TopicManager(fab).topic("orders").partition(0)
            assert part.gate_state().blocked == 1
            part.set_gate(len(MESSAGES))                 # no room for one more
            woke: list[bool] = []
            waiter = threading.Thread(target=lambda: woke.append(part.wait_room(1, 30 * 10**9)))
            waiter.start()
            deadline = time.monotonic() + 10
            while part.gate_state().blocked < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            words = struct.unpack_from("<8I", bus.read(), bus.ring + 160)
            assert words[0] not in (0, entries[0]) and list(words[1:]) == entries[1:]
            os.close(live)
            live = -1
            assert part.gate_state().blocked == 1        # the waiter alone
            part.set_gate(0)                             # room: the waiter is woken
            waiter.join(10)
            assert woke == [True]
            assert part.gate_state().blocked == 0
            assert struct.unpack_from("<8I", bus.read(), bus.ring + 160)[0] == 0
    finally:
        if live >= 0:
            os.close(live)


@pytest.mark.parametrize("next_id", [0, (1 << 64) - 1])
def test_lease_id_counter_garbage_still_gives_live_nonzero_ids(bus, next_id):
    bus.patch(128, "Q", next_id)
    with bus.open() as fab:
        lease = fab.acquire(4096, ttl=60)
        assert lease.id != 0 and not lease.expired()
        lease.write(0, b"ok")
        assert lease.read(0, 2) == b"ok"


def test_every_error_here_is_a_grafos_error():
    for _, _, exc, _ in ATTACH_REFUSALS:
        assert issubclass(exc, GrafosError)
