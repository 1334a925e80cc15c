"""Leases: expiry and renewal on an injected clock, reclaim that gives memory
back to the OS (measured as st_blocks of the backing file), and regions that
carry nothing of their old tenant."""
from __future__ import annotations

import time

import pytest

from grafos import Fabric
from grafos.errors import FabricFull, InvalidArgument, LeaseExpired
from grafos.partition import Partition

MiB = 1 << 20
T0 = 1_700_000_000.0       # an injected "now", seconds since the epoch
FULL = 4 * MiB
FULL_BLOCKS = FULL // 512   # st_blocks counts 512-byte units


@pytest.fixture(params=["in-process", "named", "file"])
def any_fabric(request, tmp_path):
    kind = request.param
    if kind == "in-process":
        fab = Fabric(32 * MiB)
    elif kind == "named":
        name = request.getfixturevalue("shm_name")
        fab = Fabric.open(name, size=32 * MiB)
    else:
        fab = Fabric.open(path=tmp_path / "fabric.grafos", size=32 * MiB)
    yield fab
    fab.close()


@pytest.fixture
def fab():
    with Fabric(16 * MiB) as f:
        yield f


def test_lease_expires_at_its_time_and_renewal_moves_it(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    assert lease.expires_at == pytest.approx(T0 + 10)
    assert lease.ttl_remaining(now=T0 + 4) == pytest.approx(6)
    assert not lease.expired(now=T0 + 9.999)
    assert lease.expired(now=T0 + 10)
    lease.renew(ttl=10, now=T0 + 9)
    assert lease.expires_at == pytest.approx(T0 + 19)
    assert not lease.expired(now=T0 + 18)
    lease.renew(expires_at=T0 + 100, now=T0 + 18)
    assert lease.ttl_remaining(now=T0 + 50) == pytest.approx(50)
    assert lease.expired(now=T0 + 100)


def test_renewing_an_expired_lease_fails_and_does_not_resurrect_it(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    with pytest.raises(LeaseExpired):
        lease.renew(ttl=60, now=T0 + 10)
    with pytest.raises(LeaseExpired):
        lease.renew(ttl=60, now=T0 + 11)
    assert lease.expired(now=T0 + 10)
    assert lease.expires_at == pytest.approx(T0 + 10)


def test_renewal_must_move_expiry_into_the_future(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    with pytest.raises(InvalidArgument):
        lease.renew(expires_at=T0 + 5, now=T0 + 6)
    with pytest.raises(InvalidArgument):
        lease.renew(ttl=0, now=T0 + 1)
    assert lease.expires_at == pytest.approx(T0 + 10)


def test_expired_lease_refuses_reads_and_writes_before_it_is_reaped(fab):
    lease = fab.acquire(4096, ttl=10, now=T0)
    lease.write(0, b"abc", now=T0 + 1)
    assert lease.read(0, 3, now=T0 + 9) == b"abc"
    with pytest.raises(LeaseExpired):
        lease.read(0, 3, now=T0 + 10)
    with pytest.raises(LeaseExpired):
        lease.write(0, b"x", now=T0 + 10)


def test_reap_takes_only_expired_leases(fab):
    short = fab.acquire(4096, ttl=10, now=T0)
    long = fab.acquire(4096, ttl=100, now=T0)
    assert fab.reap(now=T0 + 9) == 0
    assert fab.reap(now=T0 + 10) == 1
    with pytest.raises(LeaseExpired):
        short.info()
    assert short.expired(now=T0) and short.expires_at == 0.0
    assert long.read(0, 4, now=T0 + 50) == bytes(4)
    assert [ls.id for ls in fab.leases()] == [long.id]


def test_lease_io_outside_the_region_is_refused(fab):
    lease = fab.acquire(5000, ttl=600)
    assert lease.size == 8192   # whole pages
    with pytest.raises(InvalidArgument):
        lease.write(8190, b"abc")
    with pytest.raises(InvalidArgument):
        lease.read(8193, 0)
    lease.write(8189, b"abc")
    assert lease.read(8189, 3) == b"abc"


def test_lease_ids_are_never_reused_and_generations_count_reuse(fab):
    seen = set()
    gens = []
    for i in range(5):
        lease = fab.acquire(4096, ttl=10, now=T0 + 100 * i)
        info = lease.info()
        assert lease.id not in seen
        seen.add(lease.id)
        gens.append((info.index, info.generation))
        lease.release()
    # the same table entry is reused, its generation going up each time
    assert len({i for i, _ in gens}) == 1
    assert [g for _, g in gens] == sorted(g for _, g in gens) and len({g for _, g in gens}) == 5


def test_a_full_arena_frees_up_when_leases_expire():
    with Fabric(8 * MiB) as fab:
        room = fab.info().data_size
        big = fab.acquire(room, ttl=10, now=T0)
        with pytest.raises(FabricFull):
            fab.acquire(4096, ttl=10, now=T0 + 1)
        # acquiring reaps lazily: once `big` has expired its room is free again
        again = fab.acquire(room, ttl=10, now=T0 + 10)
        with pytest.raises(LeaseExpired):
            big.info()
        assert again.size == room


def test_lease_table_full_is_reported():
    with Fabric(8 * MiB, lease_slots=4) as fab:
        for _ in range(4):
            fab.acquire(4096, ttl=600)
        with pytest.raises(FabricFull, match="lease table"):
            fab.acquire(4096, ttl=600)


def test_reaping_gives_memory_back_to_the_os(any_fabric):
    fab = any_fabric
    empty = fab.blocks
    lease = fab.acquire(FULL, ttl=10, now=T0)
    lease.write(0, b"\xa5" * FULL, now=T0)
    full = fab.blocks
    assert full - empty >= FULL_BLOCKS, f"writing 4 MiB raised st_blocks from {empty} to {full} only"
    assert fab.info().bytes_leased == FULL
    assert fab.reap(now=T0 + 5) == 0
    assert fab.blocks >= full
    assert fab.reap(now=T0 + 10) == 1
    after = fab.blocks
    assert full - after >= FULL_BLOCKS, f"reaping left st_blocks at {after} (was {full}, empty {empty})"
    assert fab.info().leases_live == 0 and fab.info().bytes_leased == 0


def test_release_gives_memory_back_at_once(any_fabric):
    fab = any_fabric
    lease = fab.acquire(FULL, ttl=600)
    lease.write(0, b"\x5a" * FULL)
    full = fab.blocks
    lease.release()
    assert full - fab.blocks >= FULL_BLOCKS
    with pytest.raises(LeaseExpired):
        lease.read(0, 1)


def test_a_reused_region_carries_nothing_of_its_old_tenant(any_fabric):
    fab = any_fabric
    old = fab.acquire(FULL, ttl=10, now=T0)
    old.write(0, b"secret" * (FULL // 6), now=T0)
    old_span = (old.offset, old.offset + old.size)
    new = fab.acquire(FULL, ttl=10, now=T0 + 20)   # reaps `old` and takes its place
    assert old_span[0] <= new.offset < old_span[1], "test needs the region to be reused"
    assert new.read(0, FULL, now=T0 + 21) == bytes(FULL)


def test_an_expired_partition_reads_as_empty_and_refuses_appends():
    with Fabric(8 * MiB) as fab:
        start = time.time()
        part = Partition.create(fab, 8, 64, ttl=3600, now=start)
        part.append(b"m0")
        rd = part.reader(0)
        assert rd.poll(10, now=start + 3599) != []
        rd.seek(0, 0)
        assert rd.poll(10, now=start + 3600) == []
        assert rd.counters(0)["expired"] == 1
        assert not part.state(now=start + 3600).alive
        assert fab.reap(now=start + 3600) == 1
        with pytest.raises(LeaseExpired):
            part.append(b"m1")
        rd.seek(0, 0)
        assert rd.poll(10) == [] and rd.counters(0)["expired"] == 1
        st = part.state()
        assert not st.alive and st.latest == 0


def test_appends_see_a_lease_that_expired_in_wall_clock_time():
    with Fabric(8 * MiB) as fab:
        past = time.time() - 100
        part = Partition.create(fab, 8, 64, ttl=10, now=past)     # expired 90 s ago
        with pytest.raises(LeaseExpired):
            part.append(b"late", timestamp=int(past * 1e9) + 1)   # an old event time does not revive it


def test_attaching_reaps_what_has_expired(shm_name):
    with Fabric.open(shm_name, size=16 * MiB) as fab:
        alive = fab.acquire(4096, ttl=600)
        past = time.time() - 100
        dead = fab.acquire(FULL, ttl=10, now=past)       # expired 90 s ago, not yet reaped
        dead.write(0, b"\x11" * FULL, now=past)
        full = fab.blocks
        assert fab.info().leases_live == 2
        with Fabric.open(shm_name, create=False) as other:
            assert other.info().leases_live == 1
        assert full - fab.blocks >= FULL_BLOCKS
        assert [ls.id for ls in fab.leases()] == [alive.id]
