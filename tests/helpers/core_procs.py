"""Process bodies for the native-core tests that need other processes.

They run in children started with multiprocessing "spawn", so they live in a
plain module the child can import, and take only picklable arguments.
Values carry their own check (``sealed``): a digest of the payload in front of
it, so a reader can tell a whole message from a torn or foreign one.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import struct

from grafos import Fabric
from grafos.partition import Partition

_DIGEST = 16


def stress_scale() -> float:
    """GRAFOS_STRESS_SCALE (float, default 1.0) scales the length of stress loops."""
    return float(os.environ.get("GRAFOS_STRESS_SCALE", "1.0"))


def sealed(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()[:_DIGEST] + payload


def unseal(value: bytes) -> bytes | None:
    """The payload, or None if the value does not carry a matching digest."""
    if len(value) < _DIGEST or hashlib.sha256(value[_DIGEST:]).digest()[:_DIGEST] != value[:_DIGEST]:
        return None
    return value[_DIGEST:]


def attach(name: str, index: int, lease_id: int) -> tuple[Fabric, Partition]:
    fab = Fabric.open(name, create=False)
    return fab, Partition(fab, fab.lease(index, lease_id))


# ---- producers -----------------------------------------------------------------

SEQ = struct.Struct("<BI")   # producer id, sequence number


def produce_numbered(name: str, index: int, lease_id: int, pid: int, count: int, go, seed: int,
                     bounded_wait: float | None = None) -> None:
    """Append `count` sealed messages (producer id, seq, filler), mixing single
    appends and batches, starting when `go` is set."""
    fab, part = attach(name, index, lease_id)
    if bounded_wait:
        fab.set_bounded_wait(bounded_wait)
    rnd = random.Random(seed)
    room = part.room - _DIGEST - SEQ.size
    go.wait(60)
    seq = 0
    while seq < count:
        n = min(count - seq, rnd.choice([1, 1, 1, 7, 32]))
        vals = [sealed(SEQ.pack(pid, s) + rnd.randbytes(rnd.randrange(0, room)))
                for s in range(seq, seq + n)]
        if n == 1:
            part.append(vals[0])
        else:
            part.append_batch(vals)
        seq += n
    part.close()
    fab.close()


def produce_until_killed(name: str, index: int, lease_id: int, ready, seed: int) -> None:
    fab, part = attach(name, index, lease_id)
    rnd = random.Random(seed)
    # big batches keep the producer inside the C append loop most of the time,
    # so the kill usually lands between a claim and its publication
    batch = [sealed(rnd.randbytes(rnd.randrange(0, 200))) for _ in range(512)]
    part.append(batch[0])
    ready.set()
    while True:   # until SIGKILL
        part.append_batch(batch)
        part.append(batch[1])


def produce_spans_until_killed(name: str, index: int, lease_id: int, ready, seed: int) -> None:
    """Like produce_until_killed, with messages of one to a dozen slots: the kill
    often lands inside a multi-slot message (its head claimed, its continuations
    half written or not yet published)."""
    fab, part = attach(name, index, lease_id)
    rnd = random.Random(seed)
    batch = [sealed(rnd.randbytes(rnd.choice([rnd.randrange(0, part.room - _DIGEST),
                                              rnd.randrange(part.room, 12 * part.stride)])))
             for _ in range(128)]
    part.append(batch[0])
    ready.set()
    while True:   # until SIGKILL
        part.append_batch(batch)
        part.append(batch[rnd.randrange(len(batch))])


# ---- fabric ------------------------------------------------------------------------

def open_in_race(names: list[str], size: int, barrier, me: int, out) -> None:
    """For each name: wait for everyone, then create-or-attach at once; record
    what this process saw and leave a mark (a metadata entry and a lease)."""
    for name in names:
        barrier.wait(60)
        try:
            fab = Fabric.open(name, size=size)
            info = fab.info()
            fab.meta_put(f"proc-{me}", str(os.getpid()).encode())
            lease = fab.acquire(4096, ttl=600, owner_tag=me + 1)
            lease.write(0, f"proc-{me}".encode())
            out.put((name, me, info.created, info.total_size, None))
            fab.close()
        except Exception as e:   # reported, so the parent's assertion says what went wrong
            out.put((name, me, None, None, f"{type(e).__name__}: {e}"))


def die_holding_the_lock(name: str) -> None:
    fab = Fabric.open(name, create=False)
    with fab.locked():
        os.kill(os.getpid(), signal.SIGKILL)


def hold_the_lock(name: str, holding, release) -> None:
    fab = Fabric.open(name, create=False)
    with fab.locked():
        holding.set()
        release.wait(60)
    fab.close()


def loan_until_killed(name: str, index: int, lease_id: int, ready, seed: int) -> None:
    """Fill loans of one to a dozen slots in place, committing most, abandoning
    some, pausing inside some: a SIGKILL usually lands with a loan open."""
    import time
    fab, part = attach(name, index, lease_id)
    rnd = random.Random(seed)
    first = True
    while True:   # until SIGKILL
        payload = rnd.randbytes(rnd.randrange(0, 12 * part.stride))
        value = sealed(payload)
        try:
            with part.loan(len(value), key=b"loan") as ln:
                half = len(value) // 2
                ln.view[:half] = value[:half]
                if rnd.random() < 0.3:
                    time.sleep(0.001)            # a loan held open for a while
                ln.view[half:] = value[half:]
                if rnd.random() < 0.1:
                    raise KeyError("abandon")
        except KeyError:
            pass
        if first:
            ready.set()
            first = False


def replace_topic(name: str, old: str, new: str, capacity: int, stride: int, value: bytes) -> None:
    """Delete topic ``old`` of the named bus, create ``new`` with one partition of
    ``capacity`` x ``stride`` (the allocator hands it the freed region) and send
    ``value`` to it: what another process does to a topic this one still uses."""
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicConfig, TopicManager
    with TopicManager.open(name) as mgr:
        mgr.delete(old)
        mgr.create(new, TopicConfig(num_partitions=1, partition_capacity=capacity, partition_stride=stride))
        Producer(new).send(mgr, value)
