"""The bus's single-message goals side by side, in one process and one run.

* ``Producer.send_keyed(mgr, key, value)`` (16-byte key, 100-byte value, 4
  partitions) against ``queue.Queue().put(value)``: target >= 2 M msg/s and
  >= 1.5x the queue;
* ``Consumer.poll(mgr, 1000)`` messages delivered against ``queue.Queue().get()``:
  target >= 3 M msg/s and >= 2x the queue.

Each round times every workload once, in a rotated order, so a ratio is taken
between measurements milliseconds apart; printed are the medians of the
per-round ratios and each workload's median and best. Nothing is asserted.

    python benchmarks/bus_ratios.py [--rounds 200]
"""
from __future__ import annotations

import argparse
import queue
import statistics
import time

from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

N = 1000
KEY = b"k" * 16
VALUE = b"v" * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    rounds = ap.parse_args().rounds

    mgr = TopicManager(size=256 << 20)
    mgr.create("t", TopicConfig(num_partitions=4, partition_capacity=1 << 15, partition_stride=256))
    prod = Producer("t")
    cons = Consumer("t", "g", max_batch=N)
    keys = [b"user-%011d" % i for i in range(64)]      # 16-byte keys spread over the partitions
    q: queue.Queue = queue.Queue()

    def send_keyed() -> float:
        s = prod.send_keyed
        t = time.perf_counter()
        for i in range(N):
            s(mgr, keys[i & 63], VALUE)
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

    work = {"send_keyed": send_keyed, "queue_put": queue_put, "poll(1000)": poll, "queue_get": queue_get}
    for f in work.values():          # warm up, bind, first-touch the rings
        f()
    cons.seek(mgr, None, __import__("grafos.mq.consumer", fromlist=["SeekPolicy"]).SeekPolicy.Latest)
    times: dict[str, list[float]] = {k: [] for k in work}
    names = list(work)
    for r in range(rounds):
        for k in names[r % 4:] + names[:r % 4]:
            times[k].append(work[k]())
    rate = {k: [N / t for t in v] for k, v in times.items()}
    print(f"bus hot paths, {rounds} interleaved rounds of {N} messages (M msg/s: median, best)")
    for k, v in rate.items():
        print(f"  {k:12s} {statistics.median(v) / 1e6:6.2f} {max(v) / 1e6:6.2f}")

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    print("ratios (median of per-round ratios):")
    print(f"  send_keyed / queue.put  {ratio('send_keyed', 'queue_put'):5.2f}  target >= 1.5; "
          f"send_keyed {statistics.median(rate['send_keyed']) / 1e6:.2f} M/s, target >= 2")
    print(f"  poll(1000) / queue.get  {ratio('poll(1000)', 'queue_get'):5.2f}  target >= 2.0; "
          f"poll {statistics.median(rate['poll(1000)']) / 1e6:.2f} M/s, target >= 3")


if __name__ == "__main__":
    main()
