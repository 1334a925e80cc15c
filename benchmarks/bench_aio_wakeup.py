"""Cross-process wake-up latency of an awaiting asyncio task.

The rows and their method are :mod:`grafos.benchsuite.aio_wakeup`'s
(``python -m pydoc grafos.benchsuite.aio_wakeup``); this script runs them and
prints the summary.

    python benchmarks/bench_aio_wakeup.py                 # 2000 wake-ups per mode
    python benchmarks/bench_aio_wakeup.py -n 500 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from grafos.benchsuite import aio_wakeup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="wake-ups per mode")
    ap.add_argument("--gap", type=float, default=0.002, help="seconds between messages")
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args()
    try:
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop not installed: skipped (pip install uvloop)", file=sys.stderr)
    print(f"cross-process wake-up latency, {a.n} messages {a.gap * 1e3:g} ms apart "
          f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")

    def show(mode: str, s: dict[str, float]) -> None:
        print(f"  {mode:<20} p50 {s['p50_us']:7.1f} us   p90 {s['p90_us']:7.1f} us   "
              f"p99 {s['p99_us']:8.1f} us", flush=True)
    out = aio_wakeup.measure(a.n, a.gap, show)
    s = out["asyncio"]
    print(f"goal: asyncio p50 < 100 us: {'met' if s['p50_us'] < 100 else 'missed'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
