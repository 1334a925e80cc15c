"""Producer process -> consumer process on one machine, 100-byte messages.

What it measures, every system in the same run with the same harness:

* **throughput** of single-message calls: grafos ``Producer.send_keyed`` into
  one partition of a named bus, read by ``Consumer.poll`` in another process
  (with a blocking consumer, and with one that spins before it sleeps);
  pyzmq ``ipc://`` PUSH/PULL ``send``/``recv``; ``multiprocessing.Queue``
  ``put``/``get``; faster-fifo ``put``/``get_many``. Rate = messages that
  reached the consumer / (consumer's last receive - producer's first send),
  both read from CLOCK_MONOTONIC. Median of 3 rounds after a warm-up round
  (the warm-up also faults in the grafos ring's pages).
* **one-way latency** = ping-pong round trip / 2, p50 and p99 over thousands
  of round trips: grafos with a spinning consumer (``poll(spin=...)``, the
  spin is in C; and a Python loop of ``poll(timeout=0)``) and with a blocking
  one (``poll(timeout=...)``, a futex in the shared mapping); pyzmq PAIR
  (blocking ``recv``, and a ``NOBLOCK`` spin); ``multiprocessing.Queue`` and
  faster-fifo (blocking ``get``).

Goals: grafos >= 2 M msg/s and >= 1.25x pyzmq; one-way
p50 < 3 us spinning and < 25 us blocking.

    python benchmarks/bench_crossprocess.py            # about a minute
    python benchmarks/bench_crossprocess.py --quick    # about half that
    python benchmarks/bench_crossprocess.py --json results.json

The measurements are ``grafos.benchsuite.crossprocess``'s. Peers missing from
the environment (``pip install pyzmq faster-fifo``, the
``peers`` extra) are reported as missing. Nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from grafos.benchsuite import crossprocess
from grafos.benchsuite.crossprocess import SIZE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="half the message counts")
    ap.add_argument("--scale", type=float, default=None, help="scale every message count (a smoke run: 0.02)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    print(f"cross-process benchmark, {SIZE}-byte messages, {os.cpu_count()} CPUs", file=sys.stderr)
    rows = crossprocess.run(args.scale if args.scale is not None else 0.5 if args.quick else 1.0)
    print(crossprocess.report(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"rate": r.rate} for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
