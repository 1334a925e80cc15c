"""Large messages, side by side in one run: grafos against faster-fifo and memcpy.

The rows and their method are :mod:`grafos.benchsuite.payloads`'s
(``python -m pydoc grafos.benchsuite.payloads``); this script runs them and
prints the summary.

    python benchmarks/bench_payloads.py [--seconds 1] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os

# numpy's BLAS threads spin for a while after start-up; on a 2-core machine they
# take a core from the producer or the consumer (children inherit this)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from grafos.benchsuite import payloads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="about this long per row and round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="run every row this many times; a ratio is taken within each round (each row "
                         "next to its peer), and the median round is reported with the range")
    ap.add_argument("--only", choices=["all", "inproc-poll"], default="all", help="the rows to run")
    a = ap.parse_args(argv)
    rounds: list[list[tuple[str, str, float, float | None, str]]] = []
    for i in range(a.rounds):
        print(f"round {i + 1} of {a.rounds}", flush=True)
        rounds.append(payloads.one_round(a.seconds, a.only))
    print(f"\nmedian of {a.rounds} rounds (ratios taken within each round; the range in brackets)")
    for j, (kind, name, _, ratio, unit) in enumerate(rounds[0]):
        vals = sorted(r[j][2] for r in rounds)
        mid = vals[len(vals) // 2]
        value = f"p50 {mid:7.1f} us" if kind == "latency" else f"{mid / 1e3:9.1f} k/s"
        if ratio is None:
            print(f"{name:<62} {value}")
            continue
        ratios = sorted(r[j][3] for r in rounds)   # type: ignore[type-var]
        peer = "the 64 B p50" if kind == "latency" else unit
        print(f"{name:<62} {value}  {ratios[len(ratios) // 2]:5.2f}x {peer}"
              f"  [{ratios[0]:.2f}-{ratios[-1]:.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
