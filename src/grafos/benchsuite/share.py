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
from .procs import STOP, Crew

REDIS = "Redis Streams"
SIZE = 100
BATCH = 200
WORKERS = 2
_DONE_TIMEOUT = 120.0


def _batch(mode: str) -> int:
    return BATCH if mode == "batch" else 1


def _missing(system: str, mode: str, why: str) -> Result:
    return Result("share", system, mode, "cross-process", SIZE, batch=_batch(mode), status="missing", note=why,
                  producers=WORKERS)


def _measure(crew: Crew, system: str, mode: str, n: int, worker, args) -> Result:  # noqa: ANN001
    """Start the workers (``worker(*args, mode, n, flags, counts, i)``), let them go
    together, and time them from then until the last acknowledgement."""
    counts = crew.array("q", 2 * WORKERS)     # acked per worker, then each one's end (monotonic ns)
    crew.start(worker, lambda i: (*args, mode, n, crew.flags, counts, i))
    crew.go()
    t0 = time.monotonic_ns()
    deadline = time.monotonic() + _DONE_TIMEOUT
    while sum(counts[:WORKERS]) < n:
        if not crew.alive():
            raise RuntimeError(f"a worker exited early: {crew.failed()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers acknowledged {sum(counts[:WORKERS])} of {n} in {_DONE_TIMEOUT:.0f} s")
        time.sleep(0.001)
    _stop(crew)
    end = max(counts[WORKERS:])
    return Result("share", system, mode, "cross-process", SIZE, batch=_batch(mode), messages=sum(counts[:WORKERS]),
                  seconds=(end - t0) / 1e9, producers=WORKERS)


# ---- grafos ---------------------------------------------------------------------------
def _grafos_worker(name: str, mode: str, n: int, flags, counts, idx: int) -> None:
    from ..mq.topic import TopicManager
    mgr = TopicManager.open(name)
    c = mgr.share_consumer("jobs", group="bench", lock_secs=60.0, member=f"w{idx}")
    Crew.ready_and_wait(flags, idx)
    done = 0
    while not flags[STOP]:
        recs = c.poll(_batch(mode))
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
        return _measure(crew, GRAFOS, mode, n, _grafos_worker, (name,))
    finally:
        _stop(crew)
        mgr.close()
        Fabric.unlink(name)


def _stop(crew: Crew) -> None:
    crew.join(lambda: None)
    crew.kill()


def _end(proc: subprocess.Popen) -> None:
    """Stop a server this benchmark started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(10)


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
        _end(self.proc)


def _redis_worker(port: int, mode: str, n: int, flags, counts, idx: int) -> None:
    import redis
    r = redis.Redis(port=port)
    Crew.ready_and_wait(flags, idx)
    done = 0
    while not flags[STOP]:
        resp = r.xreadgroup("g", f"w{idx}", {"jobs": ">"}, count=_batch(mode))
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
        return _missing(REDIS, mode, why)
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
        return _measure(crew, REDIS, mode, n, _redis_worker, (srv.port,))
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
        _end(self.proc)
        self.dir.cleanup()


def _nats_worker(url: str, mode: str, n: int, flags, counts, idx: int) -> None:
    import asyncio

    async def main() -> None:
        import nats
        import nats.errors
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("jobs", durable="work", stream="JOBS")
        want = _batch(mode)
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
    if why:
        return _missing(JETSTREAM, mode, why)
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
        return _measure(crew, JETSTREAM, mode, n, _nats_worker, (srv.url,))
    finally:
        _stop(crew)
        srv.stop()
