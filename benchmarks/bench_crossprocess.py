"""Producer process -> consumer process on one machine, 100-byte messages.

The rows and their method are :mod:`grafos.benchsuite.crossprocess`'s
(``python -m pydoc grafos.benchsuite.crossprocess``); this script runs them and
prints the summary.

    python benchmarks/bench_crossprocess.py            # about a minute
    python benchmarks/bench_crossprocess.py --quick    # about half that
    python benchmarks/bench_crossprocess.py --json results.json

Peers missing from the environment (``pip install pyzmq faster-fifo``, the
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
