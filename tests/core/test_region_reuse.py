"""Region reuse is safe: a reader stalled at the moment it marks a dead
writer's slot abandoned, across a reclaim of its lease and the reuse of the
region by another lease, never changes a byte of the new tenant."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from grafos import Fabric
from grafos._native import lib
from grafos.partition import Partition

from helpers.mp_helpers import stopped

READER = textwrap.dedent("""
    import sys
    from grafos import Fabric
    from grafos._native import lib
    from grafos.partition import Partition
    path, index, lease_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fab = Fabric.open(path=path, create=False)
    fab.set_bounded_wait(0.05)
    part = Partition(fab, fab.lease(index, lease_id))
    rd = part.reader(0)
    lib.gf_test_fault(lib.GF_FAULT_ABANDON, lib.GF_FAULT_STOP)   # stop just before the abandon write
    got = rd.poll(10, timeout=1.0)
    print(len(got))
""")


def test_should_never_change_the_new_tenant_when_a_reader_stalls_across_reclaim_and_reuse(tmp_path):
    path = str(tmp_path / "bus.grafos")
    fab = Fabric.open(path=path, size=8 << 20)
    old = Partition.create(fab, 16, 128, ttl=60)
    lib.gf_test_claim_slot(old.handle)          # offset 0 claimed by a writer that died
    child = subprocess.Popen([sys.executable, "-c", READER, path, str(old.lease.index), str(old.lease.id)],
                             stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not stopped(child.pid):
            assert child.poll() is None, "reader exited before reaching the abandon step"
            assert time.monotonic() < deadline, "reader never reached the abandon step"
            time.sleep(0.01)
        region = old.lease.offset
        assert fab.reap(now=time.time() + 120) == 1                   # reclaimed ...
        new = Partition.create(fab, 16, 128, ttl=60)
        assert new.lease.offset == region and new.lease.index == old.lease.index   # ... and reused
        # the new tenant's writer is mid-write at offset 0, the very slot and sequence
        # the stalled reader was about to mark abandoned
        assert lib.gf_test_claim_slot(new.handle) == 0
        for i in range(1, 5):
            new.append(b"tenant-%d" % i)
        size = new.lease.size
        before = new.lease.read(0, size)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 0
        assert out.strip() == b"0"                                      # it read nothing of the new ring
        after = new.lease.read(0, size)
        assert after == before, "the stalled reader wrote into the new tenant's region"
        assert new.state().abandoned == 0
        fab.set_bounded_wait(0.05)      # the new tenant's own readers step over its unfinished slot
        assert [m.value for _, m in new.reader(0).poll(10, timeout=1.0)] == [b"tenant-%d" % i for i in range(1, 5)]
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        fab.close()


def test_should_wait_for_a_reclaim_when_a_live_process_holds_the_pin():
    """The pin word alone: a held pin keeps the region out of reclaim; once let
    go, the next reap frees it."""
    with Fabric(8 << 20) as fab:
        p = Partition.create(fab, 16, 128, ttl=60)
        assert lib.gf_test_pin(fab.handle, p.lease.index, p.lease.id) == 1
        later = time.time() + 120
        assert fab.reap(now=later) == 0 and p.lease.expired()     # dead to readers, region kept
        assert lib.gf_test_unpin(fab.handle, p.lease.index) == 0
        assert fab.reap(now=later) == 1
