"""The fabric: in-process, named and file-backed arenas, the metadata table,
and the process-shared metadata lock (which must survive its holder's death)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest

from grafos import Fabric
from grafos._native import ffi, lib
from grafos.errors import InvalidArgument, LockTimeout, NotFound
from grafos.fabric import shm_path

from helpers.core_procs import die_holding_the_lock, hold_the_lock

MiB = 1 << 20


def test_in_process_fabric_reports_its_geometry():
    with Fabric(8 * MiB, lease_slots=16, meta_slots=32) as fab:
        info = fab.info()
        assert info.kind == "in-process" and info.created
        assert info.total_size == 8 * MiB
        assert info.lease_slots == 16 and info.meta_slots == 32
        assert info.version == lib.GF_LAYOUT_VERSION
        assert 0 < info.data_size < info.total_size
        assert info.leases_live == 0 and info.bytes_leased == 0


def test_size_is_rounded_up_to_whole_pages():
    with Fabric(4 * MiB + 1) as fab:
        assert fab.info().total_size == 4 * MiB + 4096


def test_named_fabric_is_shared_by_name(shm_name):
    with Fabric.open(shm_name, size=8 * MiB) as a:
        assert Fabric.exists(shm_name) and os.path.exists(shm_path(shm_name))
        lease = a.acquire(8192, ttl=600)
        lease.write(100, b"hello from a")
        a.meta_put("topic/orders", b"cfg")
        with Fabric.open(shm_name, create=False) as b:
            assert not b.info().created and b.info().total_size == 8 * MiB
            assert b.lease(lease.index, lease.id).read(100, 12) == b"hello from a"
            assert b.meta_get("topic/orders") == b"cfg"
            b.meta_put("topic/orders", b"cfg2")
        assert a.meta_get("topic/orders") == b"cfg2"
    assert Fabric.unlink(shm_name) is True
    assert Fabric.unlink(shm_name) is False
    assert not Fabric.exists(shm_name)


def test_attach_to_missing_named_fabric_raises_not_found(shm_name):
    with pytest.raises(NotFound):
        Fabric.open(shm_name, create=False)
    assert not Fabric.exists(shm_name)


def test_exclusive_create_refuses_an_existing_fabric(shm_name):
    from grafos.errors import AlreadyExists
    with Fabric.open(shm_name, size=4 * MiB):
        with pytest.raises(AlreadyExists):
            Fabric.open(shm_name, size=4 * MiB, exclusive=True)


def test_file_fabric_survives_close_and_reopen(tmp_path):
    path = tmp_path / "bus.grafos"
    with Fabric.open(path=path, size=8 * MiB) as fab:
        lease = fab.acquire(16384, ttl=3600)
        lease.write(0, b"durable bytes")
        fab.meta_put("k", b"v")
        index, lease_id = lease.index, lease.id
    assert path.stat().st_size == 8 * MiB
    with Fabric.open(path=str(path), create=False) as fab:
        assert fab.info().kind == "file"
        assert fab.lease(index, lease_id).read(0, 13) == b"durable bytes"
        assert fab.meta_get("k") == b"v"


def test_metadata_table_put_get_delete_and_prefix_scan():
    with Fabric(4 * MiB, meta_slots=64) as fab:
        e0 = fab.meta_epoch()
        assert fab.meta_get("missing") is None
        for i in range(20):
            fab.meta_put(f"group/g1/{i}", bytes([i]) * i)
        fab.meta_put("other", b"x")
        assert fab.meta_epoch() > e0
        assert fab.meta_get("group/g1/7") == bytes([7]) * 7
        fab.meta_put("group/g1/7", b"replaced")
        assert fab.meta_get("group/g1/7") == b"replaced"
        assert fab.meta_del("group/g1/3") is True
        assert fab.meta_del("group/g1/3") is False
        items = dict(fab.meta_items("group/g1/"))
        assert set(items) == {f"group/g1/{i}" for i in range(20)} - {"group/g1/3"}
        assert items["group/g1/5"] == b"\x05" * 5
        # a deleted key's tombstone does not hide keys probed past it
        for i in range(20):
            if i != 3:
                assert fab.meta_get(f"group/g1/{i}") is not None


def test_metadata_table_full_and_oversized_entries_are_refused():
    from grafos.errors import FabricFull
    with Fabric(4 * MiB, meta_slots=8) as fab:
        for i in range(8):
            fab.meta_put(f"k{i}", b"v")
        with pytest.raises(FabricFull):
            fab.meta_put("one-too-many", b"v")
        with pytest.raises(InvalidArgument):
            fab.meta_put("k0", b"x" * (lib.GF_META_VAL_MAX + 1))
        with pytest.raises(InvalidArgument):
            fab.meta_put("k" * (lib.GF_META_KEY_MAX + 1), b"v")
        assert fab.meta_get("k0") == b"v"


def test_metadata_calls_without_the_lock_are_refused():
    with Fabric(4 * MiB) as fab:
        out = ffi.new("gf_lease_info *")
        assert lib.gf_lease_acquire(fab.handle, 4096, 2, 0, 1, out) == lib.GF_E_NOLOCK
        assert lib.gf_meta_put(fab.handle, b"k", 1, b"v", 1) == lib.GF_E_NOLOCK
        assert lib.gf_unlock(fab.handle) == lib.GF_E_NOLOCK
        assert fab.info().leases_live == 0


def test_lock_is_reentrant_within_one_handle():
    with Fabric(4 * MiB) as fab:
        with fab.locked():
            with fab.locked():
                fab.meta_put("a", b"1")
            assert lib.gf_lock_held(fab.handle)
        assert not lib.gf_lock_held(fab.handle)


def test_closed_fabric_refuses_use():
    fab = Fabric(4 * MiB)
    fab.close()
    assert fab.closed
    with pytest.raises(InvalidArgument):
        fab.info()
    fab.close()   # idempotent


def test_closing_another_handle_does_not_release_this_handles_lock(shm_name):
    with Fabric.open(shm_name, size=4 * MiB) as a:
        b = Fabric.open(shm_name, create=False)
        with a.locked():
            b.close()   # b never held the lock: closing it must not drop a's
            assert lib.gf_lock_held(a.handle)
            with Fabric.open(shm_name, create=False) as c:
                assert lib.gf_lock(c.handle, 0) == lib.GF_E_TIMEOUT
            a.meta_put("still", b"mine")
        assert a.meta_get("still") == b"mine"


def test_two_handles_in_one_process_wait_for_each_other(shm_name):
    with Fabric.open(shm_name, size=4 * MiB) as a, Fabric.open(shm_name, create=False) as b:
        events = []
        holding = threading.Event()

        def hold():
            with a.locked():
                events.append("a in")
                holding.set()
                time.sleep(0.2)
                events.append("a out")

        t = threading.Thread(target=hold)
        t.start()
        assert holding.wait(10)
        with b.locked(timeout=10):   # waits for a, rather than failing
            events.append("b in")
        t.join()
        assert events == ["a in", "a out", "b in"]


def test_a_thread_waits_for_another_threads_hold_only_up_to_its_timeout(shm_name):
    with Fabric.open(shm_name, size=4 * MiB) as a, Fabric.open(shm_name, create=False) as b:
        holding, done = threading.Event(), threading.Event()

        def hold():
            with a.locked():
                holding.set()
                done.wait(10)

        t = threading.Thread(target=hold)
        t.start()
        try:
            assert holding.wait(10)
            for fab in (a, b):           # through the holder's handle or another one
                t0 = time.monotonic()
                with pytest.raises(LockTimeout, match="another thread of this process"):
                    with fab.locked(timeout=0.1):
                        pass
                assert time.monotonic() - t0 < 5
        finally:
            done.set()
            t.join()
        with b.locked(timeout=0):        # free again
            pass


def test_in_the_core_a_second_handle_of_the_process_waits_for_the_lock(shm_name):
    # the C contract under the Python layer: each handle is an owner of its own,
    # so the core never mistakes another handle's hold for its own
    with Fabric.open(shm_name, size=4 * MiB) as a, Fabric.open(shm_name, create=False) as b:
        assert lib.gf_lock(a.handle, 0) == 0
        assert lib.gf_lock(b.handle, 0) == lib.GF_E_TIMEOUT
        assert not lib.gf_lock_held(b.handle)
        assert lib.gf_unlock(b.handle) == lib.GF_E_NOLOCK    # b cannot release a's hold
        assert lib.gf_lock_held(a.handle)
        timer = threading.Timer(0.2, lib.gf_unlock, args=(a.handle,))
        timer.start()
        assert lib.gf_lock(b.handle, 10 * 10**9) == 0        # waits, then gets it
        timer.join()
        assert lib.gf_lock_held(b.handle) and not lib.gf_lock_held(a.handle)
        assert lib.gf_unlock(b.handle) == 0


def test_lock_held_by_a_live_process_times_out(shm_name):
    ctx = mp.get_context("spawn")
    holding, release = ctx.Event(), ctx.Event()
    with Fabric.open(shm_name, size=4 * MiB) as fab:
        child = ctx.Process(target=hold_the_lock, args=(shm_name, holding, release))
        child.start()
        try:
            assert holding.wait(60)
            with pytest.raises(LockTimeout):
                with fab.locked(timeout=0.05):
                    pass
            assert fab.info().lock_recoveries == 0     # a live holder is waited for, never robbed
        finally:
            release.set()
            child.join(60)
        assert child.exitcode == 0
        with fab.locked(timeout=10):
            fab.meta_put("mine", b"now")


def test_lock_survives_the_death_of_its_holder(shm_name):
    with Fabric.open(shm_name, size=4 * MiB) as fab:
        fab.meta_put("before", b"1")
        child = mp.get_context("spawn").Process(target=die_holding_the_lock, args=(shm_name,))
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL
        holder = fab.info()
        with fab.locked(timeout=10):
            fab.meta_put("after", b"2")
        assert fab.info().lock_recoveries == holder.lock_recoveries + 1
        assert fab.meta_get("before") == b"1" and fab.meta_get("after") == b"2"
