"""A seeded fault campaign: a mixed workload across processes, faults injected at
random points, then a check of the whole history.

    python tests/helpers/fault_campaign.py --seed 7 --seconds 300      # a long run
    python tests/helpers/fault_campaign.py --seed 7 --seconds 20 --keep  # keep the logs

Everything random comes from one ``random.Random(seed)``: the faults, their
moments and targets, what each worker does. Process scheduling is not seeded,
so a replay runs the same plan, not the same interleaving; a failure prints its
seed and the plan it followed.

The workload (one named bus):

* ``ow`` (on_full overwrite): plain producers, every fourth message through a
  loan; consumer group ``g-ow``; a peeking reader.
* ``blk`` (on_full block): an idempotent producer; consumer group ``g-blk``.
* ``rz`` (on_full raise): a plain producer that retries on ``BufferFull``;
  consumer group ``g-rz``.
* ``tx``: a transactional producer that commits or aborts each batch; read
  back by a ``read_committed`` consumer.
* ``sh`` (on_full block): a plain producer; share group ``g-sh`` (two members
  that log each record handed to them, then acknowledge it).

Every worker writes what it did to its own log with one ``write`` per step
(``A`` acknowledged, ``P`` polled, ``L`` lost as the consumer was told, ``X`` a
value that fails its own digest, ``S``/``C``/``R`` a transaction's sends, commit,
abort), so a SIGKILL loses nothing already logged.

The faults: SIGKILL (the worker is started again as a new instance), SIGSTOP
then SIGCONT (from a few milliseconds to past the groups' stale threshold),
workers that run as PID 1 of a PID namespace of their own (``unshare --pid``),
``grafos gc --yes`` on the live bus and on a bus that processes attach and
detach in a loop, a topic whose lease expires and is restarted, a file bus on a
full tmpfs, and damaged bytes in a copy of the bus file.

The checks: every acknowledged message is delivered with its own bytes or
counted as lost where a consumer was told; nothing delivered fails its digest;
redeliveries stay within what at-least-once allows after the faults injected;
``read_committed`` never shows an aborted transaction and shows a committed one
whole; every process ends within a bound once asked to; the metadata table
holds a bounded number of records; gc never removes a bus in use nor splits
one; a damaged bus file ends every read in a result or a ``GrafosError``.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, home of the helpers package

from helpers.mp_helpers import StopFlag, check, digest_of, log_polled, payload  # noqa: E402

HERE = os.path.abspath(__file__)
STALE = 1.5             #: the groups' stale threshold, seconds
POLL = 32               #: most messages one poll takes: the most a killed member leaves uncommitted
STOP_BOUND = 30.0       #: seconds a worker has to end once asked to
TOPICS = {              # name: (partitions, capacity, stride, on_full)
    "ow": (2, 256, 256, "overwrite"),
    "blk": (2, 64, 256, "block"),
    "rz": (1, 64, 256, "raise"),
    "tx": (1, 65536, 256, "overwrite"),
    "sh": (2, 128, 256, "block"),
}
SHARE_LOCK = 1.0        #: the share group's lock, seconds
GROUPS = {"ow": "g-ow", "blk": "g-blk", "rz": "g-rz"}


# ---- workers (each is a process: ``python fault_campaign.py worker ROLE ...``) -----------------
def _log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _stopping(workdir: str, what: str) -> bool:
    return os.path.exists(os.path.join(workdir, f"stop-{what}"))


def worker(role: str, bus: str, workdir: str, ident: int, seed: int, *rest: str) -> None:
    from grafos.mq.topic import TopicManager

    rng = random.Random(seed * 1_000_003 + ident)
    mgr = TopicManager.open(bus, create=False)
    fd = _log(os.path.join(workdir, f"{role}-{ident}.log"))
    try:
        {"plain": _plain, "idem": _idem, "raise": _raise, "txn": _txn, "member": _member,
         "peek": _peek, "shprod": _shprod, "share": _share}[role](mgr, fd, workdir, ident, rng, *rest)
    finally:
        os.close(fd)
        mgr.close()


def _ack(fd: int, topic: str, part: int, off: int, value: bytes) -> None:
    os.write(fd, f"A {topic} {part} {off} {digest_of(value)}\n".encode())


def _plain(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.mq.producer import Producer
    prod = Producer("ow")
    seq = 0
    while not _stopping(workdir, "producers"):
        v = payload(ident, seq, rng.choice((48, 64, 200)))
        key = b"k%d" % rng.randrange(16)
        if seq % 4 == 3:
            with prod.loan(mgr, len(v), key=key) as ln:
                ln.write(v)
            part, off = ln.partition, ln.offset
        else:
            part, off = prod.send_keyed(mgr, key, v)
        _ack(fd, "ow", part, off, v)
        seq += 1
        time.sleep(rng.uniform(0, 0.002))


def _idem(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.errors import BufferFull, ProducerFenced
    from grafos.mq.producer import Producer
    prod = Producer("blk", idempotent=True, transaction_ttl=3.0, timeout=2.0)
    seq = 0
    while not _stopping(workdir, "producers"):
        v = payload(ident, seq)
        try:
            part, off = prod.send_keyed(mgr, b"k%d" % (seq % 8), v)
        except BufferFull:
            continue            # nothing written: the same message again
        except ProducerFenced:
            # paused past transaction_ttl: the registration lapsed and nothing was written
            prod = Producer("blk", idempotent=True, transaction_ttl=3.0, timeout=2.0)
            os.write(fd, b"F\n")
            continue
        _ack(fd, "blk", part, off, v)
        seq += 1
        time.sleep(rng.uniform(0, 0.002))


def _raise(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.errors import BufferFull
    from grafos.mq.producer import Producer
    prod = Producer("rz")
    seq = 0
    while not _stopping(workdir, "producers"):
        v = payload(ident, seq)
        try:
            part, off = prod.send(mgr, v)
        except BufferFull:
            time.sleep(0.005)
            continue
        _ack(fd, "rz", part, off, v)
        seq += 1
        time.sleep(rng.uniform(0, 0.002))


def _shprod(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.errors import BufferFull
    from grafos.mq.producer import Producer
    prod = Producer("sh", timeout=2.0)
    seq = 0
    while not _stopping(workdir, "producers"):
        v = payload(ident, seq)
        try:
            part, off = prod.send_keyed(mgr, b"k%d" % (seq % 8), v)
        except BufferFull:
            continue            # the share group holds the ring: nothing written, the same message again
        _ack(fd, "sh", part, off, v)
        seq += 1
        time.sleep(rng.uniform(0, 0.002))


def _share(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    """A share-group member: log what it was handed, then acknowledge it."""
    from grafos.errors import LockLost
    sc = mgr.share_consumer("sh", group="g-sh", lock_secs=SHARE_LOCK, max_deliveries=254)
    while not _stopping(workdir, "members"):
        recs = sc.poll(rng.randint(1, POLL), timeout=0.05)
        if not recs:
            continue
        log_polled(fd, [(r.partition, r) for r in recs], "sh")
        try:
            sc.ack(recs)
        except LockLost:
            pass                # paused past the lock: another member has them now (at least once)
    sc.close()


def _txn(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.errors import ProducerFenced
    from grafos.mq.producer import Producer
    prod = Producer("tx", transactional_id="tx-0", transaction_ttl=2.0)
    prod.register(mgr)          # fences an earlier instance and finishes what it left
    seq = 0
    while not _stopping(workdir, "producers"):
        name = f"{ident}.{seq}"
        try:
            txn = prod.begin(mgr)
            for _ in range(rng.randint(1, 8)):
                v = payload(ident, seq)
                part, off = prod.send(mgr, v)
                os.write(fd, f"S {name} {part} {off} {digest_of(v)}\n".encode())
                seq += 1
                time.sleep(rng.uniform(0, 0.003))
            if rng.random() < 0.7:
                txn.commit()
                os.write(fd, f"C {name}\n".encode())
            else:
                txn.abort()
                os.write(fd, f"R {name}\n".encode())
        except ProducerFenced:
            # paused past transaction_ttl: whoever looks next decides this transaction
            # (the history checks it all or nothing); carry on as a new registration
            os.write(fd, f"F {name}\n".encode())
            seq += 1
            prod = Producer("tx", transactional_id="tx-0", transaction_ttl=2.0)
            prod.register(mgr)


def _lost(fd: int, topic: str, consumer: Any, told: dict) -> None:
    for p, n in consumer.lost().items():
        if n > told.get(p, 0):
            os.write(fd, f"L {topic} {p} {n - told.get(p, 0)}\n".encode())
            told[p] = n


def _member(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random, topic: str) -> None:
    from grafos.errors import Fenced
    from grafos.mq.consumer import SeekPolicy
    from grafos.mq.group import ConsumerGroup
    from grafos.mq.offset import FabricOffsetStore

    store = FabricOffsetStore(mgr)
    g = ConsumerGroup(GROUPS[topic], topic, TOPICS[topic][0], STALE, mgr=mgr)
    name = f"m{ident}"
    owned: list[int] | None = None
    c = g.consumer(name)
    told: dict = {}
    while not _stopping(workdir, "members"):
        now = g.claim(name)
        if now != owned:
            owned = now
            _lost(fd, topic, c, told)
            c = g.consumer(name)
            told = {}
            if owned:
                c.assign(owned)
                c.seek(mgr, store, SeekPolicy.Committed)
                _lost(fd, topic, c, told)
            os.write(fd, f"G {topic} {json.dumps(c.positions() if owned else {})}\n".encode())
        if not owned:
            time.sleep(0.05)
            continue
        msgs = c.poll(mgr, rng.randint(1, POLL), timeout=0.05)
        _lost(fd, topic, c, told)
        if msgs:
            log_polled(fd, msgs, topic)
        try:
            c.commit(store)
        except Fenced:
            pass            # taken over while we read: the new owner reads from the commit
    if owned:
        g.leave(name)


def _peek(mgr: Any, fd: int, workdir: str, ident: int, rng: random.Random) -> None:
    from grafos.mq.consumer import Consumer, SeekPolicy
    c = Consumer("ow", f"peek{ident}")
    c.seek(mgr, None, SeekPolicy.Earliest)
    intact = torn = 0
    while not _stopping(workdir, "members"):
        with c.peek(mgr, rng.randint(1, 64)) as pk:
            got = [(m, bytes(m.value)) for m in pk]
        for m, v in got:
            if not m.intact:
                torn += 1
                continue
            intact += 1
            try:
                check(v)
            except ValueError:
                os.write(fd, f"X ow {m.partition} {m.offset}\n".encode())
        if not got:
            time.sleep(0.01)
    os.write(fd, f"K {intact} {torn}\n".encode())


# ---- the damaged-file reader (``python fault_campaign.py damaged PATH``) ------------------------
def damaged(path: str) -> None:
    """Attach a damaged copy and read every topic from its start; print one JSON line."""
    from grafos.errors import GrafosError
    from grafos.mq.consumer import Consumer, SeekPolicy
    from grafos.mq.topic import TopicManager

    out: dict[str, Any] = {"delivered": [], "bad": [], "errors": []}
    try:
        mgr = TopicManager.open(path=path, create=False)
    except GrafosError as e:
        out["errors"].append(f"open: {type(e).__name__}")
        print(json.dumps(out))
        return
    for topic in TOPICS:
        try:
            c = Consumer(topic, "damage")
            c.seek(mgr, None, SeekPolicy.Earliest)
            for _ in range(1000):
                msgs = c.poll(mgr, 500)
                if not msgs:
                    break
                for p, m in msgs:
                    try:
                        check(m.value)
                        out["delivered"].append([topic, p, m.offset, digest_of(m.value)])
                    except ValueError:
                        out["bad"].append([topic, p, m.offset])
        except GrafosError as e:
            out["errors"].append(f"{topic}: {type(e).__name__}")
    print(json.dumps(out))


# ---- the full-tmpfs scenario (run in a mount namespace of its own) -----------------------------
FULL_TMPFS = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time, random
    from grafos.errors import NoSpace
    from grafos.mq.consumer import Consumer, SeekPolicy
    from grafos.mq.topic import TopicConfig, TopicManager
    d, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    path = d + "/bus.grafos"
    mgr = TopicManager.open(path=path, size=64 << 20)
    made, errors = [], []
    for i in range(80):
        cfg = TopicConfig(num_partitions=rng.randint(1, 3), partition_capacity=rng.choice((256, 1024)),
                          partition_stride=512)
        try:
            mgr.create(f"t{i}", cfg)
            made.append(f"t{i}")
        except NoSpace as e:
            errors.append(e.errno)
            if len(errors) == 3:
                break
    code = ("import sys, time\\n"
            "from grafos.mq.producer import Producer\\n"
            "from grafos.mq.topic import TopicManager\\n"
            "mgr = TopicManager.open(path=sys.argv[1], create=False)\\n"
            "prods = [Producer(t) for t in sys.argv[2:]]\\n"
            "i = 0\\n"
            "while True:\\n"
            "    for p in prods:\\n"
            "        p.send(mgr, b'v' * 400)\\n"
            "    i += 1\\n"
            "    if i % 2000 == 0: print(i, flush=True)\\n")
    child = subprocess.Popen([sys.executable, "-c", code, path, *made], stdout=subprocess.PIPE)
    time.sleep(rng.uniform(0.3, 1.5))
    child.send_signal(signal.SIGSTOP)
    time.sleep(rng.uniform(0.01, 0.3))
    child.send_signal(signal.SIGCONT)
    time.sleep(rng.uniform(0.1, 0.5))
    rc_alive = child.poll()
    child.kill()
    child.wait()
    more = 0
    try:
        mgr.create("after", TopicConfig(num_partitions=1, partition_capacity=4096, partition_stride=512))
    except NoSpace as e:
        more = e.errno
    read = 0
    for t in made:
        c = Consumer(t)
        c.seek(mgr, None, SeekPolicy.Earliest)
        read += len(c.poll(mgr, 100))
    print(json.dumps({"made": len(made), "errors": errors, "alive": rc_alive, "killed_rc": child.returncode,
                      "after": more, "read": read}))
""")


# ---- grafos.Queue under faults (multiprocessing children: picklable arguments only) -------------
def queue_producer(q: Any, ident: int, log: str, stop: Any) -> None:
    """Put ident * 10**6 + i for i = 0, 1, ...; log ``A n`` once each put returned."""
    fd = _log(log)
    i = 0
    while not stop.is_set():
        n = ident * 10**6 + i
        try:
            q.put(n, timeout=0.2)
        except Exception:  # noqa: BLE001 - queue.Full: the consumers are paused or dead; try again
            continue
        os.write(fd, f"A {n}\n".encode())
        i += 1


def queue_consumer(q: Any, log: str, stop: Any) -> None:
    """Get and log ``G n`` per item until asked to stop."""
    fd = _log(log)
    while not stop.is_set():
        try:
            n = q.get(timeout=0.2)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        os.write(fd, f"G {n}\n".encode())


# ---- judging a history (pure functions: tests/bus/test_fault_campaign.py feeds them bad histories) -----
def judge(h: dict, member_faults: int, stats: dict | None = None) -> list[str]:
    """What the history of the consumer groups breaks: ``h`` as :meth:`Campaign._read_logs`
    returns it (``acked``: (topic, partition, offset) -> digest; ``polled``: the same key
    -> digests delivered, in order; ``lost``: (topic, partition) -> messages consumers
    were told they lost; ``corrupt``: deliveries that failed their digest)."""
    problems = [f"a delivered value fails its digest: {c}" for c in h["corrupt"][:10]]
    acked, polled = h["acked"], h["polled"]
    missing: Counter = Counter()
    destroyed = []
    for k, dig in acked.items():
        got = polled.get(k)
        if not got:
            missing[k[:2]] += 1
        elif any(d != dig for d in got):
            destroyed.append(k)
    if destroyed:
        problems.append(f"{len(destroyed)} acknowledged messages delivered with other bytes, e.g. {destroyed[:5]}")
    for tp, n in sorted(missing.items()):
        if n > h["lost"][tp]:
            problems.append(f"{tp[0]}[{tp[1]}]: {n} acknowledged messages never delivered, "
                            f"{h['lost'][tp]} counted lost: {n - h['lost'][tp]} lost silently")
    redelivered = sum(len(v) - 1 for v in polled.values())
    allowed = member_faults * POLL * 2      # what a killed, paused or rebalanced member may leave uncommitted
    if redelivered > allowed:
        problems.append(f"{redelivered} redeliveries: more than the {allowed} that {member_faults} member "
                        "faults and starts allow at least once")
    payloads = Counter((t, d) for (t, _, _), ds in polled.items() for d in set(ds))
    twice = [k for k, n in payloads.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} messages written at two offsets: {twice[:5]}")
    if not acked:
        problems.append("nothing was acknowledged: the workload did not run")
    if stats is not None:
        stats.update(acked=len(acked), delivered=len(polled), missing=sum(missing.values()),
                     lost_counted=sum(h["lost"].values()), redelivered=redelivered,
                     peeked_intact=h["peek"][0], peeked_torn=h["peek"][1],
                     txn_committed=len(h["committed"]), txn_aborted=len(h["aborted"]))
    return problems


def judge_txn(h: dict, seen: dict, start: dict | None = None) -> list[str]:
    """What a read_committed reader's view ``seen`` ((partition, offset) -> digest)
    breaks: ``h["sends"]`` (transaction -> its logged sends), ``committed`` and
    ``aborted`` (transactions whose commit or abort returned). A transaction
    whose outcome the log does not say (its producer died or was fenced) shows
    all of its logged sends or none. Sends below ``start`` (partition -> the
    first offset the reader found) were lapped by the ring before it read."""
    problems = []
    for name, sends in h["sends"].items():
        sends = [s for s in sends if s[1] >= (start or {}).get(s[0], 0)]
        shown = [(p, o) in seen for p, o, _ in sends]
        if name in h["aborted"] and any(shown):
            problems.append(f"read_committed showed {sum(shown)} messages of aborted transaction {name}")
        elif name in h["committed"] and not all(shown):
            problems.append(f"read_committed hid {shown.count(False)} of {len(shown)} messages of committed "
                            f"transaction {name}")
        elif any(shown) and not all(shown):
            problems.append(f"read_committed showed part of transaction {name}: {shown}")
        for (p, o, d), s in zip(sends, shown):
            if s and seen[(p, o)] != d:
                problems.append(f"tx[{p}]@{o}: another message than the one sent")
    return problems


# ---- the driver -----------------------------------------------------------------------------------
@dataclass
class Worker:
    role: str
    args: tuple
    slot: int
    gen: int = 0
    proc: subprocess.Popen | None = None
    in_pidns: bool = False

    @property
    def ident(self) -> int:
        return self.slot * 1000 + self.gen


@dataclass
class Result:
    seed: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    stats: dict = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"fault campaign seed={self.seed} seconds={self.seconds}: "
                 f"{'OK' if self.ok else 'FAILED'}",
                 f"  faults: {dict(sorted(self.faults.items()))}",
                 f"  stats: {json.dumps(self.stats, sort_keys=True)}"]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  PROBLEM: {p}" for p in self.problems[:25]]
        if len(self.problems) > 25:
            lines.append(f"  ... and {len(self.problems) - 25} more problems")
        if not self.ok:
            lines.append(f"  plan: {', '.join(self.plan[:80])}{' ...' if len(self.plan) > 80 else ''}")
            lines.append(f"  replay: python tests/helpers/fault_campaign.py --seed {self.seed} --seconds {self.seconds}")
        return "\n".join(lines)


def pidns_available() -> str | None:
    """None if workers can run as PID 1 of a new PID namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    if os.geteuid() != 0:
        return "not root: unshare --pid needs CAP_SYS_ADMIN"
    r = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"], capture_output=True)
    return None if r.returncode == 0 else f"unshare --pid failed: {r.stderr.decode().strip()}"


def mountns_available(where: str) -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    base = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    r = subprocess.run(base + ["sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{where}"'], capture_output=True)
    return None if r.returncode == 0 else f"cannot mount a tmpfs: {r.stderr.decode().strip()}"


class Campaign:
    def __init__(self, seed: int, seconds: float, workdir: str, say=print) -> None:
        self.seed, self.seconds, self.workdir, self.say = seed, seconds, workdir, say
        self.rng = random.Random(seed)
        self.bus = f"fc-{seed}-{uuid.uuid4().hex[:8]}"
        self.res = Result(seed, seconds)
        self.workers: list[Worker] = []
        self.meta_baseline = 0
        self.pidns = pidns_available()
        if self.pidns:
            self.res.skipped.append(f"PID namespaces: {self.pidns}")

    # -- processes
    def _spawn(self, w: Worker) -> None:
        cmd = [sys.executable, HERE, "worker", w.role, self.bus, self.workdir, str(w.ident), str(self.seed),
               *w.args]
        w.in_pidns = self.pidns is None and self.rng.random() < 0.3
        if w.in_pidns:
            cmd = ["unshare", "--pid", "--fork", "--kill-child"] + cmd
            self.res.faults["pidns-worker"] += 1
        err = open(os.path.join(self.workdir, f"{w.role}-{w.ident}.err"), "wb")
        w.proc = subprocess.Popen(cmd, stdout=err, stderr=err, start_new_session=True)
        err.close()

    def _signal(self, w: Worker, sig: int) -> None:
        assert w.proc is not None
        try:
            os.killpg(w.proc.pid, sig)      # the worker and, in a PID namespace, unshare above it
        except ProcessLookupError:
            pass

    # -- the run
    def run(self) -> Result:
        from grafos.mq.topic import TopicConfig, TopicManager
        t0 = time.monotonic()
        mgr = TopicManager.open(self.bus)
        try:
            for name, (n, cap, stride, on_full) in TOPICS.items():
                mgr.create(name, TopicConfig(n, cap, stride, self.seconds + 600, on_full=on_full))
            mgr.create("eph", TopicConfig(1, 16, 256, 0.5))
            self._start_workers(mgr)
            time.sleep(1.0)
            self.meta_baseline = len(mgr.fabric.meta_items())
            self._phase("workload and faults", t0)
            self._inject(mgr, t0 + self.seconds * 0.7)
            self._phase("stopping", t0)
            self._stop()
            self._phase("checking the history", t0)
            self._check(mgr)
        except Exception:  # noqa: BLE001 - a crash of the driver is a finding, with its seed
            self.res.problems.append("driver raised:\n" + traceback.format_exc())
        finally:
            for w in self.workers:
                if w.proc and w.proc.poll() is None:
                    self._signal(w, signal.SIGCONT)
                    self._signal(w, signal.SIGKILL)
                    w.proc.wait()
            mgr.close()
        try:
            self._phase("damaged copies", t0)
            self._damage()
        finally:
            TopicManager.unlink(self.bus)
        self._phase("full tmpfs", t0)
        self._full_tmpfs()
        self._phase("grafos.Queue", t0)
        self._queue(min(8.0, max(2.0, self.seconds * 0.15)))
        self._phase("gc racing attaches", t0)
        self._gc_race(min(3.0, max(1.0, self.seconds * 0.05)))
        self.res.stats["elapsed"] = round(time.monotonic() - t0, 1)
        return self.res

    def _start_workers(self, mgr: Any) -> None:
        """The readers first: every group starts from a commit at offset 0 and has
        its members before anything is written, so that whatever the ring
        overwrites before the group reads it is counted lost to the group."""
        from grafos.mq.offset import FabricOffsetStore
        store = FabricOffsetStore(mgr)
        for t, g in GROUPS.items():
            for p in range(TOPICS[t][0]):
                store.commit(g, t, p, 0)
        readers = [("member", (t,)) for t in GROUPS for _ in range(2)] + [("share", ()), ("share", ())]
        readers += [("peek", ())]
        writers = [("plain", ()), ("plain", ()), ("idem", ()), ("raise", ()), ("txn", ()), ("shprod", ())]
        for slot, (role, args) in enumerate(readers + writers, start=1):
            w = Worker(role, args, slot)
            self.workers.append(w)
            self._spawn(w)
            if role == "peek":
                self._wait_ready()

    def _wait_ready(self) -> None:
        """Until every member has claimed (its log's first ``G`` line), at most STOP_BOUND."""
        end = time.monotonic() + STOP_BOUND
        for w in self.workers:
            if w.role != "member":
                continue
            log = os.path.join(self.workdir, f"{w.role}-{w.ident}.log")
            while time.monotonic() < end:
                if os.path.exists(log) and os.path.getsize(log):
                    break
                time.sleep(0.05)
            else:
                self.res.problems.append(f"stuck: member {w.ident} claimed nothing within {STOP_BOUND} s")

    def _inject(self, mgr: Any, until: float) -> None:
        from grafos.fabric import probe, shm_path
        rng = self.rng
        # the rare faults run at least once, however few draws a loaded machine allows:
        # each is forced once its moment has come if no draw has picked it by then
        start = time.monotonic()
        due = {"gc": start + 0.3 * (until - start), "expire": start + 0.6 * (until - start)}
        while time.monotonic() < until or due:
            time.sleep(rng.uniform(0.05, 0.5))
            fault = rng.choices(("kill", "pause", "gc", "expire"), weights=(5, 5, 1, 1))[0]
            late = [f for f, at in due.items() if time.monotonic() >= at]
            if fault not in due and late:
                fault = late[0]
            due.pop(fault, None)
            if fault == "gc":
                if probe(shm_path(self.bus), remove_if_idle=True).removed:
                    self.res.problems.append("gc removed the bus while processes had it open")
                self._note("gc")
                continue
            if fault == "expire":
                self._expire_restart(mgr)
                continue
            w = rng.choice(self.workers)
            assert w.proc is not None
            if w.proc.poll() is not None:
                self.res.problems.append(f"{w.role} {w.ident} ended by itself (rc {w.proc.returncode}): "
                                         + self._err_tail(w))
                w.gen += 1
                self._spawn(w)
                continue
            if fault == "kill":
                self._signal(w, signal.SIGKILL)
                w.proc.wait()
                self._note(f"kill {w.role}")
                w.gen += 1
                self._spawn(w)
            else:
                pause = rng.choice((rng.uniform(0.01, 0.2), rng.uniform(0.2, STALE * 2)))
                self._signal(w, signal.SIGSTOP)
                time.sleep(pause)
                self._signal(w, signal.SIGCONT)
                self._note(f"pause {w.role}")

    def _phase(self, what: str, t0: float) -> None:
        self.say(f"[seed {self.seed} +{time.monotonic() - t0:.1f}s] {what}")

    def _note(self, what: str) -> None:
        self.res.faults[what] += 1
        self.res.plan.append(what)

    def _err_tail(self, w: Worker) -> str:
        with open(os.path.join(self.workdir, f"{w.role}-{w.ident}.err"), "rb") as f:
            return f.read()[-1500:].decode(errors="replace")

    def _expire_restart(self, mgr: Any) -> None:
        """A topic whose lease lapses: it reads as empty, restarts with fresh
        leases, and a commit of the old ring never points into the new one."""
        from grafos.mq.consumer import Consumer, SeekPolicy
        from grafos.mq.offset import FabricOffsetStore
        from grafos.mq.producer import Producer
        store = FabricOffsetStore(mgr)
        mgr.restart("eph")                  # fresh leases where the last round's have lapsed
        prod = Producer("eph")
        old = [prod.send(mgr, b"old-%d" % i) for i in range(5)]
        c = Consumer("eph", "g-eph")
        c.seek(mgr, None, SeekPolicy.Earliest)
        c.poll(mgr, 3)
        c.commit(store)
        time.sleep(0.6)                     # past the 0.5 s retention, nobody renewing
        left = Consumer("eph")
        left.seek(mgr, None, SeekPolicy.Earliest)
        seen = [m.value for _, m in left.poll(mgr, 100)]
        if seen:
            self.res.problems.append(f"an expired partition still reads {len(seen)} messages")
        mgr.restart("eph")
        new = [prod.send(mgr, b"new-%d" % i) for i in range(2)]
        c2 = Consumer("eph", "g-eph")
        c2.seek(mgr, store, SeekPolicy.Committed)
        got = [m.value for _, m in c2.poll(mgr, 100)]
        if got != [b"new-0", b"new-1"]:
            self.res.problems.append(f"after a restart a committed seek read {got} (old {old}, new {new})")
        self._note("expire+restart")

    def _stop(self) -> None:
        """Ask the producers, then (once the groups have read what was written) the members to end."""
        for w in self.workers:
            self._signal(w, signal.SIGCONT)
        open(os.path.join(self.workdir, "stop-producers"), "w").close()
        self._wait_for([w for w in self.workers if w.role in ("plain", "idem", "raise", "txn", "shprod")])
        self._wait_drained()
        open(os.path.join(self.workdir, "stop-members"), "w").close()
        self._wait_for([w for w in self.workers if w.role in ("member", "peek", "share")])

    def _wait_for(self, ws: list[Worker]) -> None:
        end = time.monotonic() + STOP_BOUND
        for w in ws:
            assert w.proc is not None
            try:
                w.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.res.problems.append(f"stuck: {w.role} {w.ident} did not end within {STOP_BOUND} s of "
                                         "being asked to")
                self._signal(w, signal.SIGKILL)
                w.proc.wait()
                continue
            if w.proc.returncode != 0:
                self.res.problems.append(f"{w.role} {w.ident} ended with rc {w.proc.returncode}: "
                                         + self._err_tail(w))

    def _wait_drained(self) -> None:
        """Until every group committed up to the end of its topic (or the bound passed)."""
        from grafos.mq.offset import FabricOffsetStore
        from grafos.mq.topic import TopicManager
        mgr = TopicManager.open(self.bus, create=False)
        store = FabricOffsetStore(mgr)
        end = time.monotonic() + STOP_BOUND
        try:
            while time.monotonic() < end:
                behind = sum(p.latest - (store.committed(g, t, p.partition) or 0)
                             for t, g in GROUPS.items() for p in mgr.describe(t).partitions)
                if behind <= 0:
                    break
                time.sleep(0.2)
        finally:
            mgr.close()

    # -- the history
    def _read_logs(self) -> dict:
        h: dict[str, Any] = {"acked": {}, "polled": defaultdict(list), "lost": Counter(), "corrupt": [],
                             "sends": defaultdict(list), "committed": set(), "aborted": set(), "peek": [0, 0]}
        for fn in sorted(os.listdir(self.workdir)):
            if not fn.endswith(".log"):
                continue
            with open(os.path.join(self.workdir, fn)) as f:
                for line in f:
                    if not line.endswith("\n"):
                        continue
                    kind, *a = line.split()
                    if kind == "A":
                        h["acked"][(a[0], int(a[1]), int(a[2]))] = a[3]
                    elif kind == "P":
                        h["polled"][(a[0], int(a[1]), int(a[2]))].append(a[3])
                    elif kind == "L":
                        h["lost"][(a[0], int(a[1]))] += int(a[2])
                    elif kind == "X":
                        h["corrupt"].append(f"{fn}: {line.strip()}")
                    elif kind == "S":
                        h["sends"][a[0]].append((int(a[1]), int(a[2]), a[3]))
                    elif kind == "C":
                        h["committed"].add(a[0])
                    elif kind == "R":
                        h["aborted"].add(a[0])
                    elif kind == "K":
                        h["peek"][0] += int(a[0])
                        h["peek"][1] += int(a[1])
        return h

    def _drain(self, mgr: Any, h: dict) -> None:
        """What the groups committed but never read: read it from the commits, as a new member would."""
        from grafos.mq.consumer import Consumer, SeekPolicy
        from grafos.mq.offset import FabricOffsetStore
        store = FabricOffsetStore(mgr)
        end = time.monotonic() + STOP_BOUND
        for t, g in GROUPS.items():
            c = Consumer(t, g)
            c.seek(mgr, store, SeekPolicy.Committed)
            while True:
                msgs = c.poll(mgr, 500)
                for p, m in msgs:
                    try:
                        check(m.value)
                        h["polled"][(t, p, m.offset)].append(digest_of(m.value))
                    except ValueError:
                        h["corrupt"].append(f"drain: {t} {p} {m.offset}")
                if not msgs:
                    break
                if time.monotonic() > end:
                    self.res.problems.append(f"stuck: draining {t} took more than {STOP_BOUND} s")
                    break
            for p, n in c.lost().items():
                h["lost"][(t, p)] += n
        sc = mgr.share_consumer("sh", group="g-sh", lock_secs=SHARE_LOCK, max_deliveries=254)
        quiet = time.monotonic()
        while time.monotonic() - quiet < 2.5 * SHARE_LOCK:    # the dead members' locks run out
            recs = sc.poll(500, timeout=0.1)
            if recs:
                quiet = time.monotonic()
                for r in recs:
                    h["polled"][("sh", r.partition, r.offset)].append(digest_of(r.value))
                sc.ack(recs)
            if time.monotonic() > end + STOP_BOUND:
                self.res.problems.append(f"stuck: draining sh took more than {STOP_BOUND} s")
                break
        for st in sc.describe():
            h["lost"][("sh", st.partition)] += st.lost
        sc.close()

    def _check(self, mgr: Any) -> None:
        h = self._read_logs()
        self._drain(mgr, h)
        res = self.res
        member_faults = sum(n for f, n in res.faults.items() if f.endswith(("member", "share"))) + len(GROUPS) * 2 + 2
        res.problems += judge(h, member_faults, res.stats)
        self._check_txn(mgr, h)
        entries = len(mgr.fabric.meta_items())
        starts = sum(w.gen + 1 for w in self.workers)
        bound = self.meta_baseline + 2 * len(self.workers) + 16
        if entries > bound:
            res.problems.append(f"the metadata table holds {entries} records after {starts} worker instances "
                                f"({self.meta_baseline} with the first ones running): the dead's are kept")
        res.stats.update(meta_records=entries, meta_baseline=self.meta_baseline, worker_instances=starts)

    def _check_txn(self, mgr: Any, h: dict) -> None:
        from grafos.mq.consumer import Consumer, SeekPolicy
        c = Consumer("tx", "audit", isolation="read_committed")
        c.seek(mgr, None, SeekPolicy.Earliest)
        start = c.positions()
        seen: dict[tuple[int, int], str] = {}
        end = time.monotonic() + STOP_BOUND
        idle = 0
        while time.monotonic() < end and idle < 5:
            msgs = c.poll(mgr, 1000, timeout=0.2)
            idle = 0 if msgs else idle + 1
            for p, m in msgs:
                seen[(p, m.offset)] = digest_of(m.value)
        self.res.problems += judge_txn(h, seen, start)
        self.res.stats["txn_lapped"] = sum(start.values())
        self.res.stats["txn_seen"] = len(seen)

    # -- grafos.Queue
    def _queue(self, seconds: float) -> None:
        """Two producers and two consumers of one grafos.Queue, killed and paused:
        no item is got twice, and every acknowledged put is got, but for the one
        a consumer killed between its get and its log may take with it."""
        import queue as stdlib_queue

        from grafos import Queue
        ctx = mp.get_context("spawn")
        q = Queue(maxsize=64)
        stop = StopFlag(ctx)      # the children are killed at random: no Event
        qdir = os.path.join(self.workdir, "queue")
        os.makedirs(qdir, exist_ok=True)
        gens = Counter()

        def start(kind: str, slot: int) -> Any:
            gens[(kind, slot)] += 1
            log = os.path.join(qdir, f"{kind}-{slot}-{gens[(kind, slot)]}.log")
            ident = (slot + 1) * 1000 + gens[(kind, slot)]       # a new instance numbers afresh
            args = (q, ident, log, stop) if kind == "p" else (q, log, stop)
            proc = ctx.Process(target=queue_producer if kind == "p" else queue_consumer, args=args, daemon=True)
            proc.start()
            return proc

        procs = {(k, i): start(k, i) for k in ("p", "c") for i in range(2)}
        # the faults start once both producers have put something: a loaded machine
        # can take longer to spawn them than the whole phase lasts
        first = [os.path.join(qdir, f"p-{i}-1.log") for i in range(2)]
        ready_end = time.monotonic() + STOP_BOUND
        while not all(os.path.exists(f) and os.path.getsize(f) for f in first):
            if time.monotonic() > ready_end:
                self.res.problems.append(f"stuck: no queue producer put anything within {STOP_BOUND} s")
                break
            time.sleep(0.05)
        killed_consumers = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(0.05, 0.4))
            key = self.rng.choice(sorted(procs))
            proc = procs[key]
            if self.rng.random() < 0.5:
                proc.kill()
                proc.join()
                killed_consumers += key[0] == "c"
                procs[key] = start(*key)
                self._note(f"kill queue-{'producer' if key[0] == 'p' else 'consumer'}")
            elif not proc.is_alive():
                self.res.problems.append(f"grafos.Queue: {key} ended by itself (exit code {proc.exitcode})")
                procs[key] = start(*key)
            else:
                os.kill(proc.pid, signal.SIGSTOP)
                time.sleep(self.rng.uniform(0.01, 0.5))
                os.kill(proc.pid, signal.SIGCONT)
                self._note(f"pause queue-{'producer' if key[0] == 'p' else 'consumer'}")
        stop.set()
        for key, proc in procs.items():
            proc.join(STOP_BOUND)
            if proc.is_alive():
                self.res.problems.append(f"stuck: queue process {key} did not end within {STOP_BOUND} s")
                proc.kill()
                proc.join()
        got: list[int] = []
        drain_end = time.monotonic() + STOP_BOUND
        while time.monotonic() < drain_end:
            try:
                got.append(q.get(timeout=0.5))
            except stdlib_queue.Empty:
                break
        q.close()
        acked: set[int] = set()
        for fn in os.listdir(qdir):
            with open(os.path.join(qdir, fn)) as f:
                for line in f:
                    if line.endswith("\n"):
                        kind, n = line.split()
                        (acked.add if kind == "A" else got.append)(int(n))
        twice = [n for n, k in Counter(got).items() if k > 1]
        if twice:
            self.res.problems.append(f"grafos.Queue: {len(twice)} items got twice, e.g. {twice[:5]}")
        missing = acked - set(got)
        if len(missing) > killed_consumers:
            self.res.problems.append(f"grafos.Queue: {len(missing)} acknowledged puts never got, with "
                                     f"{killed_consumers} consumers killed: e.g. {sorted(missing)[:5]}")
        if not acked:
            self.res.problems.append("grafos.Queue: no put returned")
        self.res.stats.update(queue_acked=len(acked), queue_got=len(got), queue_missing=len(missing))

    # -- damaged bytes in a bus file
    def _damage(self) -> None:
        from grafos.fabric import shm_path
        src = shm_path(self.bus)
        rounds = max(2, min(12, int(self.seconds / 5)))
        acked = {tuple(k): v for k, v in self._read_logs()["acked"].items()}
        from grafos import Fabric
        with Fabric.open(self.bus, create=False) as fab:
            tables = fab.info().total_size - fab.info().data_size     # header, lease and metadata tables
            regions = [(0, tables)] + [(lease.offset, lease.size) for lease in fab.leases()]
        errors = delivered = 0
        for r in range(rounds):
            dst = os.path.join(self.workdir, f"damaged-{r}.grafos")
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o600)
            with open(dst, "r+b") as f:
                for _ in range(self.rng.randint(1, 16)):
                    start, length = self.rng.choice(regions)
                    f.seek(start + self.rng.randrange(length))
                    f.write(bytes([self.rng.randrange(256)]))
            try:
                r_ = subprocess.run([sys.executable, HERE, "damaged", dst], capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                self.res.problems.append(f"stuck: reading damaged copy {r} took more than 60 s")
                continue
            finally:
                os.unlink(dst)
            if r_.returncode != 0:
                self.res.problems.append(f"reading damaged copy {r} ended with rc {r_.returncode}: "
                                         f"{r_.stderr.decode()[-1500:]}")
                continue
            out = json.loads(r_.stdout.decode().strip().splitlines()[-1])
            errors += len(out["errors"])
            for t, p, o, d in out["delivered"]:
                delivered += 1
                if (t, p, o) in acked and acked[(t, p, o)] != d:
                    self.res.problems.append(f"damaged copy {r}: {t}[{p}]@{o} delivered with other bytes")
            for b in out["bad"][:3]:
                self.res.problems.append(f"damaged copy {r}: {b} delivered failing its digest")
        self.res.faults["damaged-file"] += rounds
        self.res.stats.update(damage_rounds=rounds, damage_errors=errors, damage_delivered=delivered)

    # -- a full tmpfs
    def _full_tmpfs(self) -> None:
        where = os.path.join(self.workdir, "tmpfs")
        os.makedirs(where, exist_ok=True)
        why = mountns_available(where)
        if why:
            self.res.skipped.append(f"full tmpfs: {why}")
            return
        base = ["unshare", "-m", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
        cmd = base + ["sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"', where,
                      sys.executable, "-c", FULL_TMPFS, where, str(self.seed)]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            self.res.problems.append("stuck: the full-tmpfs scenario took more than 120 s")
            return
        if r.returncode != 0:
            self.res.problems.append(f"full tmpfs: the scenario ended with rc {r.returncode}: "
                                     f"{r.stderr.decode()[-1500:]}")
            return
        out = json.loads(r.stdout.decode().strip().splitlines()[-1])
        if not out["errors"] or set(out["errors"]) != {28}:
            self.res.problems.append(f"full tmpfs: topics past the space were not refused with ENOSPC: {out}")
        if out["alive"] is not None:
            self.res.problems.append(f"full tmpfs: the producer died by itself (rc {out['alive']}: SIGBUS is -7)")
        if out["after"] != 28:
            self.res.problems.append(f"full tmpfs: a topic past the space was made after the producer died: {out}")
        if out["read"] == 0:
            self.res.problems.append("full tmpfs: nothing could be read back")
        self.res.faults["full-tmpfs"] += 1
        self.res.stats["tmpfs_topics"] = out["made"]

    # -- gc racing attaches
    def _gc_race(self, seconds: float) -> None:
        from helpers import gc_procs
        from grafos.errors import NotFound
        from grafos.fabric import probe, shm_path
        from grafos import Fabric
        name = f"fc-gc-{self.seed}-{uuid.uuid4().hex[:8]}"
        ctx = mp.get_context("spawn")
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=gc_procs.attach_loop, args=(name, i, seconds, ready, go, out), daemon=True)
                 for i in range(2)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        removed = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                removed += probe(shm_path(name), remove_if_idle=True).removed
            except NotFound:
                pass
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        opens = sum(r[2] for r in results)
        split = sum(r[3] for r in results)
        if split:
            self.res.problems.append(f"gc racing attaches: {split} of {opens} opens worked on a removed file")
        if not opens:
            self.res.problems.append(f"gc racing attaches: no open succeeded: {results}")
        try:
            Fabric.unlink(name)
        except NotFound:
            pass
        self.res.faults["gc-race"] += 1
        self.res.stats.update(gc_removed=removed, gc_race_opens=opens)


def run(seed: int, seconds: float, workdir: str | None = None, keep: bool = False) -> Result:
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix=f"grafos-faults-{seed}-")
    try:
        return Campaign(seed, seconds, workdir).run()
    finally:
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workdir", default=None, help="where the logs go (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory and print its path")
    a = ap.parse_args(argv)
    faulthandler.dump_traceback_later(a.seconds * 3 + 300, exit=True)     # a hang of the driver shows where
    workdir = a.workdir or tempfile.mkdtemp(prefix=f"grafos-faults-{a.seed}-")
    res = run(a.seed, a.seconds, workdir)
    print(res.summary())
    if a.keep or a.workdir or not res.ok:
        print(f"  logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if res.ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), *sys.argv[7:])
    elif len(sys.argv) > 1 and sys.argv[1] == "damaged":
        damaged(sys.argv[2])
    else:
        sys.exit(main())
