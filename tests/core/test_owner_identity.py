"""Who holds the metadata lock, across PID namespaces, PID reuse and fork.

A holder is an owner token the kernel vouches for (an OFD lock on the token's
byte of the fabric file), so a live holder in another PID namespace is waited
for, a dead one is taken over wherever it ran and whatever its PID names now,
and a fork child is an owner of its own. The namespace tests need
``unshare --pid`` (root, as in CI)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from grafos import Fabric
from grafos._native import lib
from grafos.errors import LockTimeout
from grafos.mq.topic import TopicManager

PROCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers", "owner_procs.py")
NEW_PID_NS = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


@pytest.fixture(scope="module")
def pid_namespaces() -> None:
    probe = subprocess.run(NEW_PID_NS + ["true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here (unshare --pid needs root): {probe.stderr.decode().strip()}")


def start(*args: str, new_ns: bool = True) -> subprocess.Popen:
    return subprocess.Popen((NEW_PID_NS if new_ns else []) + [sys.executable, PROCS, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def first_line(p: subprocess.Popen) -> dict:
    line = p.stdout.readline()
    assert line, f"process died: {p.stderr.read().decode()[-2000:]}"
    return json.loads(line)


def result(p: subprocess.Popen, stdin: bytes = b"", timeout: float = 120) -> dict:
    out, err = p.communicate(stdin, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}: {err.decode()[-2000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


def finish(p: subprocess.Popen) -> None:
    """Let a holder go (it holds until its stdin ends) and check it exited cleanly."""
    _, err = p.communicate(b"\n", timeout=60)
    assert p.returncode == 0, f"exit {p.returncode}: {err.decode()[-2000:]}"


def host_pidns() -> str:
    return os.readlink("/proc/self/ns/pid")


def test_a_holder_in_another_pid_namespace_is_waited_for_not_taken_over(pid_namespaces, shm_name):
    with Fabric.open(shm_name, size=8 << 20) as fab:
        with fab.locked():           # the host holds it; PID 1 of a new namespace asks
            out = result(start("try", f"name:{shm_name}", "0.5"))
        assert out["pid"] == 1 and out["pidns"] != host_pidns()
        assert not out["got"] and out["recoveries"] == 0, out
        assert "another PID namespace" in out["error"] and str(os.getpid()) in out["error"]
        # the other way round: a holder in a new namespace, the host asks
        holder = start("hold", f"name:{shm_name}")
        try:
            assert first_line(holder)["held"]
            with pytest.raises(LockTimeout, match="another PID namespace"):
                with fab.locked(timeout=0.3):
                    pass
        finally:
            finish(holder)
        with fab.locked(timeout=5):
            pass
        assert fab.info().lock_recoveries == 0


def test_a_paused_holder_is_waited_for_not_taken_over(shm_name):
    with Fabric.open(shm_name, size=8 << 20) as fab:
        holder = start("hold", f"name:{shm_name}", new_ns=False)
        try:
            assert first_line(holder)["held"]
            os.kill(holder.pid, signal.SIGSTOP)     # a debugger, the cgroup freezer, a long swap-in
            with pytest.raises(LockTimeout):
                with fab.locked(timeout=0.5):
                    pass
            assert fab.info().lock_recoveries == 0
        finally:
            os.kill(holder.pid, signal.SIGCONT)
            finish(holder)


def test_a_pin_held_in_another_pid_namespace_keeps_its_region(pid_namespaces, shm_name):
    with Fabric.open(shm_name, size=8 << 20) as fab:
        lease = fab.acquire(4096, ttl=0.2)
        assert lib.gf_test_pin(fab.handle, lease.index, lease.id) == 1   # as a reader mid-abandon
        time.sleep(0.3)
        out = result(start("leases", f"name:{shm_name}"))   # expired: reclaim it, from another namespace
        assert lease.id in out["left"], out                 # pinned by a live owner: not handed on
        lib.gf_test_unpin(fab.handle, lease.index)
        assert fab.reap() == 1 and lease.id not in [le.id for le in fab.leases()]


def test_two_pid_namespaces_creating_topics_at_once_lose_nothing(pid_namespaces, shm_name):
    n = 150
    with TopicManager.open(shm_name, size=64 << 20) as mgr:
        # one on the host, one as PID 1 of a new namespace (two PID 1s would share a PID)
        makers = [start("topics", f"name:{shm_name}", prefix, str(n), new_ns=prefix == "b") for prefix in ("a", "b")]
        assert all(first_line(p)["ready"] for p in makers)
        for p in makers:             # both at once
            p.stdin.write(b"go\n")
            p.stdin.flush()
        outs = [result(p) for p in makers]
        assert outs[0]["pidns"] != outs[1]["pidns"]
        assert [o["made"] for o in outs] == [n, n], outs
        names = {f"{prefix}-{i}" for prefix in ("a", "b") for i in range(n)}
        assert set(mgr.topics()) == names
        for t in sorted(names):      # every ring is whole (a damaged one raises CorruptFabric)
            part = mgr.topic(t).partition(0)
            assert part.append(t.encode()) == 0
        assert mgr.fabric.info().lock_recoveries == 0


def test_a_killed_pid_1_holder_does_not_lock_a_file_bus_for_good(pid_namespaces, tmp_path):
    path = str(tmp_path / "bus.grafos")
    with Fabric.open(path=path, size=8 << 20) as fab:
        holder = start("hold", f"path:{path}")
        assert first_line(holder)["pid"] == 1
        holder.kill()                # unshare --kill-child: its PID 1 gets SIGKILL as unshare exits
        holder.wait(30)              # (before its stdin closes: the holder lets go at end of input)
        holder.communicate(timeout=30)
        # a restarted container: PID 1 again, in a new namespace
        out = result(start("try", f"path:{path}", "10"))
        assert out["pid"] == 1 and out["got"] and out["recoveries"] == 1, out
        with fab.locked(timeout=5):  # and a host process
            fab.meta_put("host", b"1")
        assert fab.info().lock_recoveries == 1


def test_a_dead_holder_whose_pid_names_another_process_is_dead(pid_namespaces, shm_name):
    Fabric.open(shm_name, size=8 << 20).close()
    out = result(start("reuse", f"name:{shm_name}"))
    assert out["reused"], f"the dead holder's PID did not go to the next process: {out}"
    assert out["got"] and out["recoveries"] == 1, out


def test_a_fork_child_is_an_owner_of_its_own(shm_name):
    with Fabric.open(shm_name, size=8 << 20) as fab:
        with fab.locked():
            pid = os.fork()
            if pid == 0:             # the child inherits the handle, not the hold
                code = 3
                try:
                    with fab.locked(timeout=0.2):
                        code = 1
                except LockTimeout:
                    code = 0
                except BaseException:  # noqa: BLE001 - reported through the exit code
                    code = 2
                os._exit(code)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0      # waited for its parent, as for anyone


def test_a_holder_that_dies_leaves_no_hold_in_the_children_it_forked(shm_name):
    with Fabric.open(shm_name, size=8 << 20) as fab:
        holder = start("forkhold", f"name:{shm_name}", new_ns=False)
        child = first_line(holder)["child"]
        try:
            os.kill(holder.pid, signal.SIGKILL)
            holder.communicate(timeout=30)
            with fab.locked(timeout=5):                 # the child still has the file open
                fab.meta_put("after", b"1")
            assert fab.info().lock_recoveries == 1
        finally:
            os.kill(child, signal.SIGKILL)
