"""Whatever lies at a fabric's path, attaching either works or raises a clear
grafos error (CorruptFabric, FabricVersionError, ...), never crashes; and bad
arguments raise InvalidArgument / InvalidType and change nothing."""
from __future__ import annotations

import os
import random
import struct
import time

import pytest

from grafos import Fabric
from grafos._native import lib
from grafos.errors import (CorruptFabric, FabricFull, FabricIOError, FabricVersionError, GrafosError,
                           InvalidArgument, InvalidType, LeaseExpired, NotFound, PermissionDenied)
from grafos.fabric import shm_path
from grafos.partition import Partition

MiB = 1 << 20
HDR = struct.Struct("<QIIQQIIQQI")   # magic .. hdr_crc, layout.h's line 0
HDR_CRC_AT, READY_AT = 56, 60


def crc32c(data: bytes) -> int:
    return lib.gf_crc32c(0xFFFFFFFF, data, len(data)) ^ 0xFFFFFFFF


def make_fabric_file(path, size=4 * MiB) -> None:
    with Fabric.open(path=path, size=size) as fab:
        fab.acquire(4096, ttl=3600).write(0, b"payload")


def patch(path, at: int, data: bytes, fix_crc: bool = False) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)
        if fix_crc:
            f.seek(0)
            head = f.read(HDR_CRC_AT)
            f.seek(HDR_CRC_AT)
            f.write(struct.pack("<I", crc32c(head)))


def attach(path):
    return Fabric.open(path=path, create=False)


# ---- damaged or foreign files ------------------------------------------------------

def test_garbage_is_refused(tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(random.Random(1).randbytes(2 * MiB))
    with pytest.raises(CorruptFabric, match="not a grafos fabric"):
        attach(path)


def test_garbage_is_refused_not_overwritten_when_opened_with_create(tmp_path):
    path = tmp_path / "garbage"
    junk = random.Random(2).randbytes(MiB)
    path.write_bytes(junk)
    with pytest.raises(CorruptFabric):
        Fabric.open(path=path, size=4 * MiB)
    assert path.read_bytes() == junk


def test_a_file_shorter_than_a_header_is_refused_at_once(tmp_path):
    path = tmp_path / "short"
    make_fabric_file(path)
    with open(path, "r+b") as f:
        f.truncate(100)
    t0 = time.monotonic()
    with pytest.raises(CorruptFabric, match="smaller than a header"):
        attach(path)
    # a short file is never one being created (creators size it in one ftruncate): no 2 s wait
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("new_size", [MiB, 4 * MiB - 4096, 4 * MiB + 4096])
def test_a_truncated_or_grown_file_is_refused(tmp_path, new_size):
    path = tmp_path / "fabric"
    make_fabric_file(path)
    with open(path, "r+b") as f:
        f.truncate(new_size)
    with pytest.raises(CorruptFabric, match="truncated or grown"):
        attach(path)


def test_a_file_of_another_layout_version_is_refused(tmp_path):
    path = tmp_path / "fabric"
    make_fabric_file(path)
    patch(path, 8, struct.pack("<I", lib.GF_LAYOUT_VERSION + 1), fix_crc=True)
    with pytest.raises(FabricVersionError, match="layout version"):
        attach(path)


def test_another_version_is_refused_by_version_even_without_our_ready_flag(tmp_path):
    # a future layout may keep its ready flag elsewhere
    path = tmp_path / "fabric"
    make_fabric_file(path)
    patch(path, 8, struct.pack("<I", lib.GF_LAYOUT_VERSION + 1), fix_crc=True)
    patch(path, READY_AT, bytes(4))
    t0 = time.monotonic()
    with pytest.raises(FabricVersionError):
        attach(path)
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("field_at,value", [
    (12, struct.pack("<I", 8192)),            # hdr_size
    (16, struct.pack("<Q", 8 * MiB)),         # total_size
    (32, struct.pack("<I", 7)),               # lease_slots
    (48, struct.pack("<Q", 12345)),           # data_off
])
def test_a_header_that_fails_its_checksum_is_refused(tmp_path, field_at, value):
    path = tmp_path / "fabric"
    make_fabric_file(path)
    patch(path, field_at, value)
    with pytest.raises(CorruptFabric, match="checksum"):
        attach(path)


@pytest.mark.parametrize("field_at,value", [
    (12, struct.pack("<I", 8192)),                    # hdr_size
    (32, struct.pack("<I", 0)),                       # lease_slots
    (32, struct.pack("<I", 0xFFFFFFFF)),              # lease_slots
    (36, struct.pack("<I", 3)),                       # meta_slots: offsets no longer add up
    (48, struct.pack("<Q", 1 << 40)),                 # data_off past the end
])
def test_a_header_with_a_valid_checksum_but_impossible_fields_is_refused(tmp_path, field_at, value):
    path = tmp_path / "fabric"
    make_fabric_file(path)
    patch(path, field_at, value, fix_crc=True)
    with pytest.raises(CorruptFabric):
        attach(path)


def test_a_fabric_its_creator_never_finished_is_refused_after_the_wait(tmp_path):
    path = tmp_path / "zeros"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    with pytest.raises(CorruptFabric, match="never finished"):
        attach(path)


def test_named_garbage_is_refused(shm_name):
    with open(shm_path(shm_name), "wb") as f:
        f.write(b"\xff" * 8192)
    os.chmod(shm_path(shm_name), 0o600)
    with pytest.raises(CorruptFabric):
        Fabric.open(shm_name, create=False)
    with pytest.raises(CorruptFabric):
        Fabric.open(shm_name, size=4 * MiB)


def test_a_world_writable_fabric_needs_trust_any(tmp_path):
    path = tmp_path / "fabric"
    make_fabric_file(path)
    os.chmod(path, 0o666)
    with pytest.raises(PermissionDenied):
        attach(path)
    with Fabric.open(path=path, create=False, trust_any=True) as fab:
        assert fab.info().total_size == 4 * MiB


def test_a_directory_or_symlink_is_not_a_fabric(tmp_path):
    with pytest.raises((FabricIOError, InvalidArgument)):
        Fabric.open(path=tmp_path, create=False)
    target = tmp_path / "real"
    make_fabric_file(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(FabricIOError):
        attach(link)


# ---- damaged contents behind a valid header ------------------------------------------

def _fabric_with_messages(path):
    with Fabric.open(path=path, size=4 * MiB) as fab:
        part = Partition.create(fab, 16, 128, ttl=3600)
        for i in range(20):
            part.append(b"value-%d" % i, key=b"k%d" % i)
        info = part.lease.info()
        data_off = fab.info().total_size - fab.info().data_size
        return part.lease.index, part.lease.id, info.offset, data_off


def _read_all(path, index, lease_id):
    """Attach and read whatever is readable; only grafos errors may come out."""
    with Fabric.open(path=path, create=False) as fab:
        try:
            part = Partition(fab, fab.lease(index, lease_id))
        except (CorruptFabric, LeaseExpired, NotFound):
            return None, None
        rd = part.reader(0)
        try:
            got = rd.poll(100)
        except CorruptFabric:
            return [], rd.counters(0)
        part.state()
        return got, rd.counters(0)


def test_a_slot_with_a_bad_checksum_is_skipped_and_counted(tmp_path):
    path = tmp_path / "fabric"
    index, lease_id, ring_off, _ = _fabric_with_messages(path)
    slot = ring_off + 256 + (5 % 16) * 128          # offset 5 lives in slot 5 % 16
    patch(path, slot + 40 + 3, b"X")                # one byte of its payload
    got, counters = _read_all(path, index, lease_id)
    assert [m.offset for _, m in got] == [o for o in range(4, 20) if o != 5]
    assert counters["corrupt"] == 1


def test_a_slot_with_impossible_lengths_is_skipped_and_counted(tmp_path):
    path = tmp_path / "fabric"
    index, lease_id, ring_off, _ = _fabric_with_messages(path)
    slot = ring_off + 256 + (7 % 16) * 128
    patch(path, slot + 16, struct.pack("<II", 0xFFFFFFF0, 0xFFFFFFF0))   # key_len, val_len
    got, counters = _read_all(path, index, lease_id)
    assert 7 not in [m.offset for _, m in got] and len(got) == 15
    assert counters["corrupt"] == 1


def test_a_ring_header_with_impossible_geometry_is_refused(tmp_path):
    path = tmp_path / "fabric"
    index, lease_id, ring_off, _ = _fabric_with_messages(path)
    # capacity 2^30 in a one-page lease, with the header checksum made to match
    with open(path, "r+b") as f:
        f.seek(ring_off)
        head = bytearray(f.read(32))
        head[16:20] = struct.pack("<I", 1 << 30)
        f.seek(ring_off)
        f.write(bytes(head) + struct.pack("<I", crc32c(bytes(head))))
    with Fabric.open(path=path, create=False) as fab:
        with pytest.raises(CorruptFabric, match="impossible geometry"):
            Partition(fab, fab.lease(index, lease_id))


def test_an_impossible_ring_tail_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "fabric"
    index, lease_id, ring_off, _ = _fabric_with_messages(path)
    with Fabric.open(path=path, create=False) as fab:
        part = Partition(fab, fab.lease(index, lease_id))
        rd = part.reader(0)
        patch(path, ring_off + 64, struct.pack("<Q", 1 << 60))   # damaged while attached
        with pytest.raises(CorruptFabric):
            rd.poll(10)
        with pytest.raises(CorruptFabric):
            part.append(b"x")
        with pytest.raises(CorruptFabric):
            part.state()
        with pytest.raises(CorruptFabric):     # and refused by a new attach
            Partition(fab, fab.lease(index, lease_id))


def test_a_lease_entry_pointing_outside_the_fabric_is_refused(tmp_path):
    path = tmp_path / "fabric"
    index, lease_id, _, _ = _fabric_with_messages(path)
    entry = 4096 + 64 * index
    patch(path, entry + 16, struct.pack("<Q", 1 << 40))    # offset
    with Fabric.open(path=path, create=False) as fab:
        with pytest.raises(CorruptFabric, match="outside the fabric"):
            fab.lease(index, lease_id)
        assert fab.info().leases_live == 0
        fab.acquire(4096, ttl=60)   # the allocator steps over the damaged entry


@pytest.mark.parametrize("seed", range(16))
def test_random_scribbles_never_crash_the_reader_or_the_allocator(tmp_path, seed):
    path = tmp_path / "fabric"
    index, lease_id, ring_off, data_off = _fabric_with_messages(path)
    with Fabric.open(path=path, create=False) as fab:
        for i in range(30):
            fab.meta_put(f"topic/t{i}", b"config-%d" % i)
        meta_off = 4096 + 64 * fab.info().lease_slots
    rnd = random.Random(seed)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        for _ in range(rnd.randrange(1, 60)):
            # aim at the lease table, the metadata table, the ring header and the slots, or anywhere
            where = rnd.choice([4096 + 64 * index + rnd.randrange(64), 4096 + rnd.randrange(64 * 8),
                                meta_off + rnd.randrange(256 * 4096), ring_off + rnd.randrange(256),
                                ring_off + 256 + rnd.randrange(16 * 128), rnd.randrange(4096, size)])
            f.seek(where)
            f.write(rnd.randbytes(rnd.randrange(1, 16)))
    try:
        got, counters = _read_all(path, index, lease_id)
    except GrafosError:
        got = []
    for _, m in got or []:
        # whatever is returned is a message that was written (checksums hold)
        assert m.value == b"value-%d" % m.offset and m.key == b"k%d" % m.offset
    # the metadata and lease machinery take the damage without crashing either
    with Fabric.open(path=path, create=False) as fab:
        for op in (lambda: fab.meta_items(), lambda: fab.meta_items("topic/"), lambda: fab.info(),
                   lambda: [ls.info() for ls in fab.leases()], lambda: fab.reap(),
                   lambda: fab.acquire(8192, ttl=60), lambda: fab.meta_put("new", b"v"),
                   lambda: fab.meta_get("topic/t3"), lambda: fab.meta_del("topic/t4")):
            try:
                op()
            except GrafosError:
                pass
        for key, value in fab.meta_items("topic/"):
            # entries that survive are intact: damage is dropped, never returned
            assert value == b"config-%d" % int(key[len("topic/t"):])


# ---- bad arguments -------------------------------------------------------------------

@pytest.mark.parametrize("call,exc", [
    (lambda: Fabric(-1), InvalidArgument),
    (lambda: Fabric(0), InvalidArgument),
    (lambda: Fabric(100), InvalidArgument),
    (lambda: Fabric(1 << 70), InvalidArgument),
    (lambda: Fabric("1MiB"), InvalidType),
    (lambda: Fabric(1.5e6), InvalidType),
    (lambda: Fabric(True), InvalidType),
    (lambda: Fabric(4 * MiB, lease_slots=-1), InvalidArgument),
    (lambda: Fabric(4 * MiB, meta_slots=1 << 30), InvalidArgument),
    (lambda: Fabric.open(), InvalidArgument),
    (lambda: Fabric.open("a", path="/tmp/b"), InvalidArgument),
    (lambda: Fabric.open(5), InvalidType),
    (lambda: Fabric.open(path=5), InvalidType),
    (lambda: Fabric.open(path=""), InvalidArgument),
])
def test_bad_fabric_arguments(call, exc):
    with pytest.raises(exc):
        call()


@pytest.mark.parametrize("bad", ["a/b", "..", "../etc", "x/../y", ".hidden", "-x", "", "a" * 200, "sp ace",
                                 "nul\0"])
def test_bad_fabric_names_are_refused_and_create_nothing(bad):
    with pytest.raises(InvalidArgument):
        Fabric.open(bad, size=4 * MiB)
    with pytest.raises(InvalidArgument):
        Fabric.unlink(bad)
    assert not os.path.lexists(os.path.join("/dev/shm", "grafos." + bad.replace("\0", "")))


def test_bad_sizes_for_a_named_fabric_create_nothing(shm_name):
    for size, exc in [(-1, InvalidArgument), (100, InvalidArgument), (1 << 70, InvalidArgument),
                      ("big", InvalidType)]:
        with pytest.raises(exc):
            Fabric.open(shm_name, size=size)
        assert not Fabric.exists(shm_name)
    with pytest.raises(InvalidArgument):    # creating needs a size
        Fabric.open(shm_name)
    assert not Fabric.exists(shm_name)
    with pytest.raises(InvalidArgument):
        Fabric.open(shm_name, size=4 * MiB, mode=0o1777)
    assert not Fabric.exists(shm_name)


@pytest.fixture
def fab():
    with Fabric(8 * MiB, meta_slots=16) as f:
        yield f


def _snapshot(fab):
    i = fab.info()
    return i.leases_live, i.bytes_leased, fab.meta_epoch(), fab.meta_items()


@pytest.mark.parametrize("call,exc", [
    (lambda f: f.acquire(0, ttl=1), InvalidArgument),
    (lambda f: f.acquire(-4096, ttl=1), InvalidArgument),
    (lambda f: f.acquire(1 << 70, ttl=1), InvalidArgument),
    (lambda f: f.acquire(64 * MiB, ttl=1), InvalidArgument),
    (lambda f: f.acquire("4096", ttl=1), InvalidType),
    (lambda f: f.acquire(4096), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=1, expires_at=2e9), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=0), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=-1), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=float("nan")), InvalidArgument),
    (lambda f: f.acquire(4096, ttl="10"), InvalidType),
    (lambda f: f.acquire(4096, expires_at=1.0), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=1, owner_tag=-1), InvalidArgument),
    (lambda f: f.acquire(4096, ttl=1, now="now"), InvalidType),
    (lambda f: f.lease(-1, 1), InvalidArgument),
    (lambda f: f.lease(0, 0), InvalidArgument),
    (lambda f: f.lease("0", 1), InvalidType),
    (lambda f: f.meta_put(5, b"v"), InvalidType),
    (lambda f: f.meta_put("k", "v"), InvalidType),
    (lambda f: f.meta_put("k", None), InvalidType),
    (lambda f: f.meta_put("", b"v"), InvalidArgument),
    (lambda f: f.meta_get(None), InvalidType),
    (lambda f: f.meta_del(b"k"), InvalidType),
    (lambda f: f.meta_items(3), InvalidType),
    (lambda f: f.set_bounded_wait(0), InvalidArgument),
    (lambda f: f.set_bounded_wait(-1), InvalidArgument),
    (lambda f: f.set_bounded_wait("1"), InvalidType),
    (lambda f: f.locked(timeout="x").__enter__(), InvalidType),
])
def test_bad_lease_and_metadata_arguments_change_nothing(fab, call, exc):
    before = _snapshot(fab)
    with pytest.raises(exc):
        call(fab)
    assert _snapshot(fab) == before
    assert not lib.gf_lock_held(fab.handle)


@pytest.mark.parametrize("capacity,stride,exc", [
    (0, 64, InvalidArgument),
    (-1, 64, InvalidArgument),
    (1 << 31, 64, InvalidArgument),
    (4, 0, InvalidArgument),
    (4, 40, InvalidArgument),      # the slot header alone
    (4, 44, InvalidArgument),      # too small and not a multiple of 8
    (4, 50, InvalidArgument),      # not a multiple of 8
    (4, 1 << 25, InvalidArgument),
    (2.0, 64, InvalidType),
    (4, "64", InvalidType),
    (None, 64, InvalidType),
])
def test_bad_ring_geometry_is_refused_and_leaks_no_lease(fab, capacity, stride, exc):
    before = _snapshot(fab)
    with pytest.raises(exc):
        Partition.create(fab, capacity, stride, ttl=60)
    assert _snapshot(fab) == before


def test_a_ring_larger_than_the_fabric_is_refused_and_leaks_no_lease(fab):
    before = _snapshot(fab)
    with pytest.raises((InvalidArgument, FabricFull)):
        Partition.create(fab, 1 << 20, 4096, ttl=60)
    assert _snapshot(fab) == before


def test_ring_geometry_is_also_checked_by_the_core(fab):
    lease = fab.acquire(1 << 20, ttl=60)
    for cap, stride in [(0, 64), (4, 40), (4, 52), (1 << 31, 64), (1 << 20, 4096)]:
        assert lib.gf_ring_init(fab.handle, lease.index, lease.id, cap, stride, 1, 1) == lib.GF_E_INVAL
    with pytest.raises(CorruptFabric):
        Partition(fab, lease)    # nothing was formatted


def test_a_lease_that_is_not_a_ring_is_refused(fab):
    with pytest.raises(CorruptFabric):
        Partition(fab, fab.acquire(4096, ttl=60))
    with pytest.raises(InvalidType):
        Partition(fab, None)


@pytest.mark.parametrize("call,exc", [
    (lambda p: p.append(None), InvalidType),
    (lambda p: p.append("text"), InvalidType),
    (lambda p: p.append(b"v", key="k"), InvalidType),
    (lambda p: p.append(b"v", headers=[("h", "not bytes")]), InvalidType),
    (lambda p: p.append(b"v", headers="abc"), InvalidType),
    (lambda p: p.append(b"v", timestamp=-1), InvalidArgument),
    (lambda p: p.append(b"v", timestamp=1.5), InvalidType),
    (lambda p: p.append_batch(b"abc"), InvalidType),
    (lambda p: p.append_batch([b"a", "b"]), InvalidType),
    (lambda p: p.append_batch([b"a", None]), InvalidType),
    (lambda p: p.append_batch(x for x in [b"a"]), InvalidType),
    (lambda p: p.append_batch([]), InvalidArgument),
    (lambda p: p.append_batch([b"a"], keys=[b"a", b"b"]), InvalidArgument),
    (lambda p: p.append_batch([b"a"], keys=["a"]), InvalidType),
    (lambda p: p.reader(-1), InvalidArgument),
    (lambda p: p.reader(0, max_batch=0), InvalidArgument),
    (lambda p: p.reader(0).seek(1, 0), InvalidArgument),
    (lambda p: p.reader(0).poll(-1), InvalidArgument),
    (lambda p: p.reader(0).poll("10"), InvalidType),
    (lambda p: p.lease.write(-1, b"x"), InvalidArgument),
    (lambda p: p.lease.write(0, "x"), InvalidType),
    (lambda p: p.lease.read(0, -1), InvalidArgument),
    (lambda p: p.lease.read(1 << 70, 1), InvalidArgument),
])
def test_bad_partition_arguments_change_nothing(fab, call, exc):
    part = Partition.create(fab, 4, 64, ttl=60)
    part.append(b"first")
    with pytest.raises(exc):
        call(part)
    assert part.state().latest == 1
    assert [m.value for m in part.read(0)] == [b"first"]
