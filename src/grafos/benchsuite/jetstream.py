"""``grafos bench --nats URL``: the JetStream bus against raw nats-py doing the
same work on the same server in the same run.

Scenarios (``size``-byte values, one partition, file storage, R1 unless the
server is a cluster and ``replicas`` says otherwise):

* ``publish``: one acknowledged publish at a time (``Producer.send`` against
  ``await js.publish``);
* ``pipelined``: ``Producer.send_batch`` against ``js.publish_async`` for the
  whole batch, then every acknowledgement;
* ``fetch``: reading what was published, up to 1000 per call
  (``Consumer.poll`` against a pull consumer's ``fetch(1000)``);
* ``group round trip``: publish one message, poll it, commit its offset
  (a fenced commit through the group's record) against publish, ``fetch(1)``
  and one KV put of the offset;
* ``wait then poll``: publish one message, ``Consumer.wait`` until it is
  readable, poll it, against publish and ``fetch(1)``.

The raw side is written as a nats-py user writes it: coroutines in
``asyncio.run`` in the calling thread. The ratio is grafos's time over raw's
(1.0: the grafos layer costs nothing). Each figure is the best of ``rounds``.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class JsResult:
    scenario: str
    messages: int
    grafos_per_s: float
    raw_per_s: float

    @property
    def ratio(self) -> float:
        """grafos's time over raw nats-py's for the same work."""
        return self.raw_per_s / self.grafos_per_s if self.grafos_per_s else float("inf")


def _best(fn, rounds: int) -> float:   # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        best = min(best, fn())
    return best


def run(url: str, *, n: int = 2000, size: int = 100, rounds: int = 3, replicas: int = 1) -> list[JsResult]:
    from ..jetstream import KvOffsetStore
    from ..mq.consumer import Consumer, SeekPolicy
    from ..mq.group import ConsumerGroup
    from ..mq.producer import Producer
    from ..mq.topic import TopicConfig, TopicManager

    value = b"x" * size
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-{tag}"
    mgr = TopicManager.connect(url, replicas=replicas)
    out: list[JsResult] = []
    try:
        mgr.create(topic, TopicConfig(num_partitions=1, partition_capacity=1 << 22,
                                      partition_stride=max(128, (size + 64 + 7) // 8 * 8)))
        prod = Producer(topic)

        def g_publish() -> float:
            t = time.perf_counter()
            for _ in range(n):
                prod.send(mgr, value)
            return time.perf_counter() - t

        def g_pipelined() -> float:
            t = time.perf_counter()
            prod.send_batch(mgr, [value] * (n * 10))
            return time.perf_counter() - t

        def g_fetch() -> float:
            c = Consumer(topic, f"bench-{uuid.uuid4().hex[:6]}")
            c.seek(mgr, None, SeekPolicy.Earliest)
            t = time.perf_counter()
            got = 0
            while got < n * 10:
                got += len(c.poll(mgr, 1000))
            dt = time.perf_counter() - t
            c.close()
            return dt

        group = ConsumerGroup(f"bench-{tag}", topic, 1, 30.0, mgr=mgr)
        store = KvOffsetStore(mgr)
        member = group.consumer("m")
        member.assign(group.claim("m"))
        member.seek(mgr, store, SeekPolicy.Latest)

        def g_round() -> float:
            t = time.perf_counter()
            for _ in range(n // 10):
                prod.send(mgr, value)
                while not member.poll(mgr, 10, timeout=1.0):
                    pass
                member.commit(store)
            return time.perf_counter() - t

        waiter = Consumer(topic, f"bench-{uuid.uuid4().hex[:6]}")
        waiter.seek(mgr, None, SeekPolicy.Latest)

        def g_wait() -> float:
            t = time.perf_counter()
            for _ in range(n // 10):
                prod.send(mgr, value)
                if not waiter.wait(mgr, 5.0):
                    raise RuntimeError("wait then poll: a sent message was not readable within 5 s")
                while not waiter.poll(mgr, 10):
                    pass
            return time.perf_counter() - t

        grafos = {"publish": _best(g_publish, rounds), "pipelined": _best(g_pipelined, rounds),
                  "fetch": _best(g_fetch, rounds), "round": _best(g_round, rounds),
                  "wait": _best(g_wait, rounds)}
        waiter.close()
        raw = asyncio.run(_raw(url, n, value, rounds, replicas))
        for key, label, count in (("publish", "publish (one acked at a time)", n),
                                  ("pipelined", "pipelined publish", n * 10),
                                  ("fetch", "fetch (1000 per call)", n * 10),
                                  ("round", "group round trip (send, poll, commit)", n // 10),
                                  ("wait", "wait then poll (send, wait, poll)", n // 10)):
            out.append(JsResult(label, count, count / grafos[key], count / raw[key]))
    finally:
        try:
            mgr.delete(topic)
        finally:
            mgr.close()
    return out


async def _raw(url: str, n: int, value: bytes, rounds: int, replicas: int) -> dict[str, float]:
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"RAW_{uuid.uuid4().hex[:8]}"
    subject = f"raw.{name}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.FILE,
                                         num_replicas=replicas))
    kv = await js.create_key_value(bucket=f"{name}_KV", history=1, replicas=replicas)

    async def best(fn) -> float:   # noqa: ANN001
        b = float("inf")
        for _ in range(rounds):
            b = min(b, await fn())
        return b

    async def publish() -> float:
        t = time.perf_counter()
        for _ in range(n):
            await js.publish(subject, value)
        return time.perf_counter() - t

    async def pipelined() -> float:
        t = time.perf_counter()
        futs = [await js.publish_async(subject, value) for _ in range(n * 10)]
        await asyncio.gather(*futs)
        return time.perf_counter() - t

    async def fetch() -> float:
        sub = await js.pull_subscribe(subject, durable=f"f{uuid.uuid4().hex[:6]}", stream=name,
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE,
                                                                deliver_policy=api.DeliverPolicy.ALL))
        t = time.perf_counter()
        got = 0
        while got < n * 10:
            got += len(await sub.fetch(1000, timeout=5))
        dt = time.perf_counter() - t
        await sub.unsubscribe()
        return dt

    async def wait_poll() -> float:
        sub = await js.pull_subscribe(subject, durable=f"w{uuid.uuid4().hex[:6]}", stream=name,
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE,
                                                                deliver_policy=api.DeliverPolicy.NEW))
        t = time.perf_counter()
        for _ in range(n // 10):
            await js.publish(subject, value)
            await sub.fetch(1, timeout=5)
        dt = time.perf_counter() - t
        await sub.unsubscribe()
        return dt

    async def round_trip() -> float:
        sub = await js.pull_subscribe(subject, durable=f"r{uuid.uuid4().hex[:6]}", stream=name,
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE,
                                                                deliver_policy=api.DeliverPolicy.NEW))
        t = time.perf_counter()
        for _ in range(n // 10):
            await js.publish(subject, value)
            [m] = await sub.fetch(1, timeout=5)
            await kv.put("offset", str(m.metadata.sequence.stream).encode())
        dt = time.perf_counter() - t
        await sub.unsubscribe()
        return dt

    try:
        return {"publish": await best(publish), "pipelined": await best(pipelined),
                "fetch": await best(fetch), "round": await best(round_trip),
                "wait": await best(wait_poll)}
    finally:
        await js.delete_stream(name)
        await js.delete_key_value(f"{name}_KV")
        await nc.close()
