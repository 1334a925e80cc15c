"""Process bodies for the owner-identity tests, run as scripts (often as PID 1 of
a new PID namespace, under ``unshare --pid --fork --mount-proc``):

    python owner_procs.py hold WHERE            take the metadata lock, print who we are, hold it until stdin closes
    python owner_procs.py try WHERE TIMEOUT     try to take the lock; print what happened
    python owner_procs.py topics WHERE PREFIX N after a line on stdin, create N topics; print what happened
    python owner_procs.py reuse WHERE           as PID 1 of a namespace: a holder dies, its PID goes to another
                                                process, then try the lock
    python owner_procs.py forkhold WHERE        fork a child that sleeps (and never uses the bus), then hold the lock
    python owner_procs.py leases WHERE          attach (which reaps what it may), reap, list the leases left

WHERE is ``name:NAME`` (a named bus) or ``path:PATH`` (a file bus). Each
prints one JSON line last.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from grafos import Fabric
from grafos.errors import GrafosError, LockTimeout
from grafos.mq.topic import TopicConfig, TopicManager

SMALL = TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128, retention_secs=600)


def where(arg: str) -> Fabric:
    kind, _, value = arg.partition(":")
    return Fabric.open(value, create=False) if kind == "name" else Fabric.open(path=value, create=False)


def me() -> dict:
    return {"pid": os.getpid(), "pidns": os.readlink("/proc/self/ns/pid")}


def say(**kw: object) -> None:
    print(json.dumps({**me(), **kw}), flush=True)


def hold(arg: str) -> None:
    fab = where(arg)
    with fab.locked():
        say(held=True)
        sys.stdin.readline()         # until the test lets go (or kills us)


def try_lock(arg: str, timeout: str) -> None:
    fab = where(arg)
    t0 = time.monotonic()
    try:
        with fab.locked(timeout=float(timeout)):
            fab.meta_put(f"got-{os.getpid()}", b"1")
        say(got=True, waited=time.monotonic() - t0, recoveries=fab.info().lock_recoveries)
    except LockTimeout as e:
        say(got=False, waited=time.monotonic() - t0, error=str(e), recoveries=fab.info().lock_recoveries)


def topics(arg: str, prefix: str, n: str) -> None:
    fab = where(arg)
    mgr = TopicManager(fab)
    say(ready=True)
    sys.stdin.readline()             # start together
    made, errors = 0, []
    for i in range(int(n)):
        try:
            mgr.create(f"{prefix}-{i}", SMALL)
            made += 1
        except GrafosError as e:
            errors.append(f"{type(e).__name__}: {e}")
    say(made=made, errors=errors[:5])


def reuse(arg: str) -> None:
    """PID reuse inside one namespace: we are its PID 1, so nobody else takes PIDs here."""
    holder = subprocess.Popen([sys.executable, __file__, "hold", arg], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None
    line = json.loads(holder.stdout.readline())
    assert line["held"], line
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:      # the next process gets the dead holder's PID
        f.write(str(holder.pid - 1))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if other.pid != holder.pid:
            say(reused=False, holder=holder.pid, other=other.pid)
            return
        fab = where(arg)
        try:
            with fab.locked(timeout=1.0):
                pass
            say(reused=True, got=True, holder=holder.pid, recoveries=fab.info().lock_recoveries)
        except LockTimeout as e:
            say(reused=True, got=False, holder=holder.pid, error=str(e))
    finally:
        other.kill()
        other.wait()


def fork_hold(arg: str) -> None:
    fab = where(arg)
    child = os.fork()
    if child == 0:                   # inherits the handle's descriptor, and never uses the bus
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):         # nor the pipes the test reads to their end
            os.dup2(null, fd)
        time.sleep(60)
        os._exit(0)
    with fab.locked():
        say(held=True, child=child)
        sys.stdin.readline()


def leases(arg: str) -> None:
    fab = where(arg)
    reaped = fab.reap()
    say(reaped=reaped, left=[lease.id for lease in fab.leases()])


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"hold": hold, "try": try_lock, "topics": topics, "reuse": reuse, "forkhold": fork_hold, "leases": leases}[cmd](*args)
