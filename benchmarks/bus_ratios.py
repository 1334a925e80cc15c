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

The workloads are ``grafos.benchsuite.calls`` (the ones ``grafos bench``
runs in its ``calls`` scenario), all on one bus, interleaved by
``calls.interleave``: each round times every workload once, in a rotated
order, so a ratio is taken between measurements milliseconds apart.
Printed are the medians of the per-round ratios and each workload's median
and best. Nothing is asserted.

    python benchmarks/bus_ratios.py [--rounds 200] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics

from grafos.benchsuite import calls

#: the label printed for each call (the calls' own names but for the queue's and the transaction's)
LABEL = {"put": "queue.put", "get": "queue.get", "transaction of 100": "transactions of 100"}
#: the calls in the order they are printed
ORDER = ("send_keyed", "send", "put", "poll(1000)", "get", "send_batch list", "send_batch 2-D",
         "send overwrite", "send block", "send_keyed overwrite", "send_keyed block",
         "send_keyed idempotent", "send idempotent", "transaction of 100", "100 sends + commit")
#: (numerator, denominator, goal) of each ratio printed
GOALS = [("send_keyed", "queue.put", 4.0), ("send", "queue.put", 5.0), ("poll(1000)", "queue.get", 4.0),
         ("send_batch list", "send_batch 2-D", 0.7), ("send_batch list", "queue.put", 15.0),
         ("send block", "send overwrite", 0.9), ("send_keyed block", "send_keyed overwrite", 0.9),
         ("send_keyed idempotent", "send_keyed", 1 / 1.2), ("send idempotent", "send", 1 / 1.2),
         ("transactions of 100", "100 sends + commit", 0.5)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", help="write the medians and ratios to this file")
    args = ap.parse_args()
    rounds = args.rounds

    mgr = calls.bus()
    work = {LABEL.get(n, n): w for n, w in calls.workloads(mgr, ORDER).items()}
    rate = calls.interleave(work, rounds)
    print(f"bus hot paths, {rounds} interleaved rounds of {calls.N} messages (M msg/s: median, best)")
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
    mgr.close()


if __name__ == "__main__":
    main()
