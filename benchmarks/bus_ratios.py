"""The bus's single-message and list-batch paths beside queue.Queue, in one process and one run.

* ``Producer.send_keyed(mgr, key, value)`` (16-byte keys, 100-byte values, 4
  partitions) and ``Producer.send(mgr, value)`` against ``queue.Queue().put(value)``
  (goals: >= 4x and >= 5x);
* ``Consumer.poll(mgr, 1000)`` messages delivered against ``queue.Queue().get()``
  (goal: >= 4x per message);
* ``Producer.send_batch(mgr, values)`` of 1024 64-byte ``bytes`` in a list against
  the same batch as a 2-D numpy array (goal: >= 0.7x) and against ``put`` per
  message (goal: >= 15x);
* ``send`` and ``send_keyed`` to a topic with ``on_full="block"`` whose consumer
  group keeps up (it commits the end after every round, untimed) against the
  same calls to an identical ``"overwrite"`` topic: the cost of the gate
  (goal: >= 0.9x);
* ``send_keyed`` and ``send`` of an idempotent producer (stamped, checked
  against its epoch) against a plain producer's (goal: >= 0.83x, i.e. within
  1.2x of the time);
* transactions of 100 ``send_keyed`` whose consumer's offsets commit with them
  (``begin``, sends, ``commit_offsets``, ``commit``) against 100 plain sends
  and one offset commit to the same FabricOffsetStore (goal: >= 0.5x, i.e.
  less than twice the time).

Each round times every workload once, in a rotated order, so a ratio is taken
between measurements milliseconds apart; printed are the medians of the
per-round ratios and each workload's median and best. Nothing is asserted.

    python benchmarks/bus_ratios.py [--rounds 200] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import queue
import statistics
import time

import numpy as np

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

N = 1000
BATCH = 1024
KEY = b"k" * 16
VALUE = b"v" * 100

#: (numerator, denominator, goal) of each ratio printed
GOALS = [("send_keyed", "queue.put", 4.0), ("send", "queue.put", 5.0), ("poll(1000)", "queue.get", 4.0),
         ("send_batch list", "send_batch 2-D", 0.7), ("send_batch list", "queue.put", 15.0),
         ("send block", "send overwrite", 0.9), ("send_keyed block", "send_keyed overwrite", 0.9),
         ("send_keyed idempotent", "send_keyed", 1 / 1.2), ("send idempotent", "send", 1 / 1.2),
         ("transactions of 100", "100 sends + commit", 0.5)]
TXN = 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", help="write the medians and ratios to this file")
    args = ap.parse_args()
    rounds = args.rounds

    mgr = TopicManager(size=256 << 20)
    # rings that fit the caches, as a consumer that keeps up sees them
    mgr.create("t", TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=256))
    mgr.create("b", TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=128))
    prod, bprod = Producer("t"), Producer("b")
    cons = Consumer("t", "g", max_batch=N)
    keys = [b"user-%011d" % i for i in range(64)]      # 16-byte keys spread over the partitions
    q: queue.Queue = queue.Queue()
    blist = [bytes([i & 0xFF]) * 64 for i in range(BATCH)]
    barr = np.frombuffer(b"".join(blist), dtype=np.uint8).reshape(BATCH, 64)

    def send_keyed() -> float:
        s = prod.send_keyed
        t = time.perf_counter()
        for i in range(N):
            s(mgr, keys[i & 63], VALUE)
        return time.perf_counter() - t

    def send() -> float:
        s = prod.send
        t = time.perf_counter()
        for _ in range(N):
            s(mgr, VALUE)
        return time.perf_counter() - t

    def queue_put() -> float:
        put = q.put
        t = time.perf_counter()
        for _ in range(N):
            put(VALUE)
        d = time.perf_counter() - t
        q.queue.clear()
        return d

    def poll() -> float:
        cons.seek(mgr, None, SeekPolicy.Latest)
        for _ in range(N // 250):              # refill untimed: about N messages over 4 partitions
            prod.send_batch(mgr, [VALUE] * 250, keys=[keys[i & 63] for i in range(250)])
        got = 0
        t = time.perf_counter()
        while got < N:
            got += len(cons.poll(mgr, N))
        return (time.perf_counter() - t) * N / got

    def queue_get() -> float:
        q.queue.extend([VALUE] * N)
        get = q.get
        t = time.perf_counter()
        for _ in range(N):
            get()
        return time.perf_counter() - t

    # the gate: identical topics but for on_full, and a group that keeps up with the blocking one
    for name, on_full in (("ow", "overwrite"), ("blk", "block")):
        mgr.create(name, TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=256,
                                     on_full=on_full))
    group = ConsumerGroup("keeps-up", "blk", 4, 3600.0, mgr=mgr)
    group.claim("m")
    store = FabricOffsetStore(mgr)
    gated = {"ow": Producer("ow"), "blk": Producer("blk")}

    def keep_up() -> None:
        t = mgr.topic("blk")
        group.commit(store, "m", "blk", {p: t.partition(p).latest() for p in range(t.n)})

    def timed_sends(p: Producer, keyed: bool) -> float:
        if keyed:
            s = p.send_keyed
            t = time.perf_counter()
            for i in range(N):
                s(mgr, keys[i & 63], VALUE)
        else:
            s = p.send
            t = time.perf_counter()
            for _ in range(N):
                s(mgr, VALUE)
        return time.perf_counter() - t

    def sends(name: str, keyed: bool):  # noqa: ANN202
        def run() -> float:
            d = timed_sends(gated[name], keyed)
            keep_up()
            return d
        return run

    def batch_list() -> float:
        t = time.perf_counter()
        bprod.send_batch(mgr, blist)
        return (time.perf_counter() - t) * N / BATCH

    def batch_array() -> float:
        t = time.perf_counter()
        bprod.send_batch(mgr, barr)
        return (time.perf_counter() - t) * N / BATCH

    iprod = Producer("t", idempotent=True)

    def idem(keyed: bool):  # noqa: ANN202
        return lambda: timed_sends(iprod, keyed)

    tprod = Producer("t", transactional_id="bench")
    tcons = Consumer("t", "ctp")
    tcons.seek(mgr, SeekPolicy.Earliest)

    def transactions() -> float:
        s = tprod.send_keyed
        t = time.perf_counter()
        for _ in range(N // TXN):
            txn = tprod.begin(mgr)
            for i in range(TXN):
                s(mgr, keys[i & 63], VALUE)
            txn.commit_offsets(tcons, store)
            txn.commit()
        return time.perf_counter() - t

    def plain_commits() -> float:
        s = prod.send_keyed
        t = time.perf_counter()
        for _ in range(N // TXN):
            for i in range(TXN):
                s(mgr, keys[i & 63], VALUE)
            tcons.commit(store)
        return time.perf_counter() - t

    work = {"send_keyed": send_keyed, "send": send, "queue.put": queue_put, "poll(1000)": poll,
            "queue.get": queue_get, "send_batch list": batch_list, "send_batch 2-D": batch_array,
            "send overwrite": sends("ow", False), "send block": sends("blk", False),
            "send_keyed overwrite": sends("ow", True), "send_keyed block": sends("blk", True),
            "send_keyed idempotent": idem(True), "send idempotent": idem(False),
            "transactions of 100": transactions, "100 sends + commit": plain_commits}
    for _ in range(3):               # warm up, bind, first-touch the rings
        for f in work.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in work}
    names = list(work)
    for r in range(rounds):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            times[k].append(work[k]())
    rate = {k: [N / t for t in v] for k, v in times.items()}
    print(f"bus hot paths, {rounds} interleaved rounds of {N} messages (M msg/s: median, best)")
    for k, v in rate.items():
        print(f"  {k:22s} {statistics.median(v) / 1e6:7.2f} {max(v) / 1e6:7.2f}")

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    print("ratios (median of per-round ratios):")
    out = {"rates": {k: statistics.median(v) for k, v in rate.items()}, "ratios": {}}
    for a, b, goal in GOALS:
        r = ratio(a, b)
        out["ratios"][f"{a} / {b}"] = r
        print(f"  {a + ' / ' + b:42s} {r:6.2f}  goal >= {goal}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
