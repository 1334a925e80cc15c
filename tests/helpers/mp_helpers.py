"""Worker functions for the multi-process tests.

They run in processes started with multiprocessing "spawn", so they live in a
module the child can import (not in a test file) and take only picklable
arguments: the bus name, the topic, and a queue or event to talk back on.

Messages carry their own checksum: ``payload(producer, seq)`` packs who sent
it and its sequence number, some filler, and a blake2b digest of all that, so
a consumer can tell a whole message from a torn or foreign one without asking
the producer.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import struct
import time
from typing import Any

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

_HEAD = struct.Struct("<IQ")     # producer id, sequence number
_DIGEST = 16



class StopFlag:
    """``set()`` and ``is_set()`` across processes, without a lock: for children a
    test may SIGKILL. A child killed inside an ``Event``'s ``is_set`` dies holding
    the Event's lock, and one killed while waiting on it never answers the wake;
    either way the parent's ``set()`` then waits forever."""

    def __init__(self, ctx: Any) -> None:
        self._v = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._v.value = 1

    def is_set(self) -> bool:
        return bool(self._v.value)

def stress_scale() -> float:
    """GRAFOS_STRESS_SCALE (float, default 1.0) scales the length of stress loops."""
    return float(os.environ.get("GRAFOS_STRESS_SCALE", "1.0"))


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, int(n * stress_scale()))


def stopped(pid: int) -> bool:
    """Process ``pid`` is stopped (SIGSTOP, or a fault point that stopped it); one
    that is gone is not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


# ---- starting processes (test side) ---------------------------------------------
def start(procs: list, target, *args):
    """Start ``target(*args)`` in a spawned daemon process and add it to ``procs``
    (the conftest fixture that kills any still alive at teardown)."""
    p = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    p.start()
    procs.append(p)
    return p


# ---- self-checking payloads ------------------------------------------------------
def payload(producer: int, seq: int, size: int = 64) -> bytes:
    """``size`` bytes: (producer, seq), filler derived from both, and a digest."""
    head = _HEAD.pack(producer, seq)
    fill_len = max(0, size - len(head) - _DIGEST)
    fill = (head * (fill_len // len(head) + 1))[:fill_len]
    body = head + fill
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def check(value: bytes) -> tuple[int, int]:
    """(producer, seq) of a payload; raises ValueError if it is torn or foreign."""
    if len(value) < _HEAD.size + _DIGEST:
        raise ValueError(f"payload of {len(value)} bytes is too short")
    body, digest = value[:-_DIGEST], value[-_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise ValueError(f"payload digest mismatch: {value[:24]!r}...")
    return _HEAD.unpack_from(body)


def digest_of(value: bytes) -> str:
    """A short fingerprint of a whole message value (for checksum comparisons)."""
    return hashlib.blake2b(value, digest_size=8).hexdigest()


def log_polled(fd: int, msgs, topic: str = "") -> None:
    """One write to ``fd``: ``P [topic] partition offset digest`` per polled message,
    ``X [topic] partition offset`` for a value that fails its checksum."""
    where = f"{topic} " if topic else ""
    lines = []
    for p, m in msgs:
        try:
            check(m.value)
            lines.append(f"P {where}{p} {m.offset} {digest_of(m.value)}\n")
        except ValueError:
            lines.append(f"X {where}{p} {m.offset}\n")
    os.write(fd, "".join(lines).encode())


# ---- simple workers ------------------------------------------------------------------
def create_topic(name: str, topic: str, partitions: int, start: Any, out: Any) -> None:
    """Attach, wait for the start signal, create ``topic``; report what happened."""
    mgr = TopicManager.open(name)
    start.wait(30)
    try:
        mgr.create(topic, TopicConfig(partitions, 64, 256, 60.0))
        out.put((os.getpid(), "created", ""))
    except Exception as e:  # noqa: BLE001 - the test inspects what each process got
        out.put((os.getpid(), type(e).__name__, str(e)))
    mgr.close()


def open_bus(name: str, start: Any, out: Any) -> None:
    """Attach to (or create) the bus as soon as the start signal fires; report its topics."""
    start.wait(30)
    try:
        mgr = TopicManager.open(name, size=64 << 20)
        out.put((os.getpid(), "ok", mgr.fabric.info().created, mgr.topics()))
        mgr.close()
    except Exception as e:  # noqa: BLE001
        out.put((os.getpid(), type(e).__name__, str(e), None))


def topic_ops(name: str, jobs: Any, out: Any) -> None:
    """Carry out directory operations the parent sends, one at a time:
    ("create", topic, partitions) | ("delete", topic) | ("restart", topic) |
    ("topics",) | ("send", topic, value) | ("poll", topic, timeout) | ("stop",).
    Each job's answer is ("ok", result) or (exception class name, message)."""
    mgr = TopicManager.open(name)
    producers: dict[str, Producer] = {}
    consumers: dict[str, Consumer] = {}
    while True:
        job = jobs.get(timeout=60)
        op = job[0]
        try:
            if op == "stop":
                out.put(("ok", None))
                break
            if op == "create":
                mgr.create(job[1], TopicConfig(job[2], 64, 256, job[3] if len(job) > 3 else 60.0))
                res: Any = None
            elif op == "delete":
                mgr.delete(job[1])
                res = None
            elif op == "restart":
                mgr.restart(job[1])
                res = None
            elif op == "topics":
                res = mgr.topics()
            elif op == "send":
                res = producers.setdefault(job[1], Producer(job[1])).send(mgr, job[2])
            elif op == "poll":
                c = consumers.setdefault(job[1], Consumer(job[1]))
                res = [(p, m.offset, m.value) for p, m in c.poll(mgr, 100, timeout=job[2])]
            else:
                raise ValueError(f"unknown job {job!r}")
            out.put(("ok", res))
        except Exception as e:  # noqa: BLE001
            out.put((type(e).__name__, str(e)))
    mgr.close()


def blocking_poll(name: str, topic: str, timeout: float | None, ready: Any, out: Any) -> None:
    """Block in one poll; report the messages and the wall-clock time (ns) of the wake-up."""
    mgr = TopicManager.open(name)
    c = Consumer(topic)
    c.seek(mgr, None, SeekPolicy.Latest)
    ready.set()
    msgs = c.poll(mgr, 100, timeout=timeout)
    out.put((time.time_ns(), [(p, m.value) for p, m in msgs]))
    mgr.close()


def hold_lock(name: str, held: Any) -> None:
    """Take the metadata lock and sleep inside it until killed."""
    mgr = TopicManager.open(name)
    with mgr.fabric.locked():
        held.set()
        time.sleep(600)


def die_in_lock(name: str) -> None:
    """Take the metadata lock and kill ourselves inside it."""
    mgr = TopicManager.open(name)
    with mgr.fabric.locked():
        os.kill(os.getpid(), signal.SIGKILL)


def die_in_create(name: str, topic: str) -> None:
    """Die half-way through ``mgr.create(topic)``: the partition leases are taken
    and their directory entries written, the topic entry is not."""
    mgr = TopicManager.open(name)
    fab = mgr.fabric
    real_put = fab.meta_put

    def put(key: str, value: bytes) -> None:
        if key == f"t/{topic}":
            os.kill(os.getpid(), signal.SIGKILL)
        real_put(key, value)

    fab.meta_put = put  # type: ignore[method-assign]
    mgr.create(topic, TopicConfig(4, 64, 256, 60.0))


def produce_forever(name: str, topic: str, producer: int, ready: Any, bounded_wait: float) -> None:
    """Send self-checking messages in a tight loop until killed."""
    mgr = TopicManager.open(name)
    mgr.fabric.set_bounded_wait(bounded_wait)
    p = Producer(topic)
    seq = 0
    key = b"k%d" % producer
    ready.set()
    while True:
        p.send_keyed(mgr, key + b"-%d" % (seq % 7), payload(producer, seq))
        seq += 1
        if seq % 64 == 0:
            time.sleep(0.0005)      # keep the ring from lapping a slow consumer


def produce_n(name: str, topic: str, producer: int, count: int, out: Any, start: Any = None,
              size: int = 64, spread: float = 0.0) -> None:
    """Send ``count`` self-checking messages (spread over about ``spread`` seconds,
    in ten bursts); report the digests of what was sent."""
    mgr = TopicManager.open(name)
    if start is not None:
        start.wait(30)
    p = Producer(topic)
    sent = []
    burst = max(1, count // 10)
    for seq in range(count):
        if spread and seq and seq % burst == 0:
            time.sleep(spread / 10)
        v = payload(producer, seq, size)
        part, off = p.send_keyed(mgr, b"key-%d-%d" % (producer, seq % 13), v)
        sent.append((part, off, digest_of(v)))
    out.put(("sent", producer, sent))
    mgr.close()


def claim_and_die(name: str, topic: str, partition: int, out: Any) -> None:
    """Claim the next slot of a partition and die before publishing it, as a
    producer killed between claim and publish would."""
    from grafos._native import lib
    mgr = TopicManager.open(name)
    ring = mgr.topic(topic).partition(partition).handle
    out.put(int(lib.gf_test_claim_slot(ring)))
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


# ---- consumer-group members ------------------------------------------------------------
def group_member(name: str, topic: str, group: str, partitions: int, member: str, stale: float,
                 log_path: str, stop: Any, poll_timeout: float = 0.05, max_batch: int = 50,
                 hold_after: int = 0, holding: Any = None) -> None:
    """A group member in its own process: claim, poll, log, commit, repeat.

    Everything it does goes to ``log_path`` with one ``os.write`` per step, so a
    SIGKILL loses nothing already done: ``A p,p,...`` (assignment changed),
    ``P partition offset digest`` (polled, before the commit), ``C partition
    next`` (committed), ``F p,p,...`` (fenced), ``X partition offset`` (a value
    that failed its checksum).

    With ``hold_after`` > 0 the member stops committing once it has polled that
    many messages: it polls one more batch, logs it, sets ``holding`` and sleeps
    (still heartbeating nothing), waiting to be killed with messages polled but
    not committed.
    """
    from grafos.errors import Fenced
    from grafos.mq.group import ConsumerGroup
    from grafos.mq.offset import FabricOffsetStore

    mgr = TopicManager.open(name)
    store = FabricOffsetStore(mgr)
    g = ConsumerGroup(group, topic, partitions, stale, mgr=mgr)
    c = g.consumer(member)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    owned: list[int] | None = None
    polled = 0
    try:
        while not stop.is_set():
            now = g.claim(member)
            if now != owned:
                owned = now
                os.write(fd, f"A {','.join(map(str, owned))}\n".encode())
                if owned:
                    c.assign(owned)
                    c.seek(mgr, store, SeekPolicy.Committed)
            if not owned:
                time.sleep(poll_timeout)
                continue
            msgs = c.poll(mgr, max_batch, timeout=poll_timeout)
            if not msgs:
                continue
            log_polled(fd, msgs)
            polled += len(msgs)
            if hold_after and polled >= hold_after:
                holding.set()
                time.sleep(600)
            try:
                done = c.commit(store)
            except Fenced as e:
                done = getattr(e, "committed", {})
                os.write(fd, f"F {','.join(map(str, e.partitions))}\n".encode())  # type: ignore[attr-defined]
            os.write(fd, "".join(f"C {p} {off}\n" for p, off in sorted(done.items())).encode())
        if owned:
            g.leave(member)
    finally:
        os.close(fd)
        mgr.close()


def read_member_log(path: str) -> dict[str, Any]:
    """Parse a :func:`group_member` log: polled records in order, last commit per
    partition, fenced and corrupt records."""
    polled: list[tuple[int, int, str]] = []
    committed: dict[int, int] = {}
    fenced: list[str] = []
    corrupt: list[tuple[int, int]] = []
    assignments: list[list[int]] = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break                      # never happens with one write per step, but be strict
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "P":
                p, off, dig = rest.split()
                polled.append((int(p), int(off), dig))
            elif kind == "C":
                p, off = rest.split()
                committed[int(p)] = int(off)
            elif kind == "A":
                assignments.append([int(x) for x in rest.split(",") if x])
            elif kind == "F":
                fenced.append(rest)
            elif kind == "X":
                p, off = rest.split()
                corrupt.append((int(p), int(off)))
    return {"polled": polled, "committed": committed, "fenced": fenced, "corrupt": corrupt,
            "assignments": assignments}


def watch_consumer(name: str, topic: str, bounded_wait: float, log_path: str, stop: Any,
                   ready: Any) -> None:
    """Read every partition of ``topic`` from the start while producers come and
    die. Logs ``P partition offset digest`` per message (``X`` for a value that
    fails its checksum), commits to the fabric offset store under group "watch",
    and at the end writes ``S <longest stall>`` (seconds the consumer spent with
    messages ahead of it and no progress) and ``L <lost>`` (messages lapped)."""
    from grafos.mq.offset import FabricOffsetStore

    mgr = TopicManager.open(name)
    mgr.fabric.set_bounded_wait(bounded_wait)
    store = FabricOffsetStore(mgr)
    c = Consumer(topic, "watch")
    c.seek(mgr, None, SeekPolicy.Earliest)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    last_pos = sum(c.positions().values())
    last_progress = time.monotonic()
    longest = 0.0
    ready.set()
    while not stop.is_set():
        msgs = c.poll(mgr, 200, timeout=0.05)
        now = time.monotonic()
        pos = sum(c.positions().values())
        if pos != last_pos:
            last_pos, last_progress = pos, now
        elif sum(c.lag(mgr).values()):
            longest = max(longest, now - last_progress)
        else:
            last_progress = now
        if msgs:
            log_polled(fd, msgs)
        c.commit(store)
    os.write(fd, f"S {longest}\nL {sum(c.lost().values())}\n".encode())
    os.close(fd)
    mgr.close()


def nack_and_die(name: str, topic: str, dlq_topic: str, nacks: int, done: Any) -> None:
    """A worker that fails on the first message of partition 0 ``nacks`` times
    (counting each failure in the fabric), then hangs until killed."""
    from grafos.mq.dlq import DlqRouter

    mgr = TopicManager.open(name)
    router = DlqRouter(topic, dlq_topic, 3, mgr=mgr)
    c = Consumer(topic, "payers")
    c.assign([0])
    c.seek(mgr, None, SeekPolicy.Earliest)
    for _ in range(nacks):
        (p, m), *_ = c.poll(mgr, 1, timeout=10)
        assert not router.failed(mgr, c, p, m)     # below the limit: rewound, not routed
    done.set()
    time.sleep(600)


def keep_alive_member(name: str, group: str, topic: str, member: str, ready) -> None:
    """Claim every partition of ``group`` and keep the member alive from a
    background thread while the main thread "processes" (sleeps) forever; the
    test kills this process."""
    from grafos.mq.group import ConsumerGroup
    mgr = TopicManager.open(name)
    g = ConsumerGroup.attach(mgr, group, topic)
    owned = g.claim(member)
    g.keep_alive(member).start()
    ready.put(owned)
    while True:
        time.sleep(3600)


def burst_producer(name: str, topic: str, n: int, burst: int, pause: float, go) -> None:
    """Send ``n`` messages (value = sequence number) in bursts of ``burst``,
    sleeping ``pause`` seconds between bursts so the consumer goes to sleep."""
    mgr = TopicManager.open(name)
    prod = Producer(topic)
    go.wait(60)
    for seq in range(n):
        prod.send(mgr, seq.to_bytes(8, "little"))
        if (seq + 1) % burst == 0:
            time.sleep(pause)
    mgr.close()
