"""Side-by-side ratios for the core's goals, measured in one run.

What it measures (all in one process, 16-byte keys):

* single append of a 100-byte value: ``Partition.append(value, key=key)`` vs
  ``queue.Queue().put(value)`` (target: >= 2 M msg/s and >= 1.5x the queue),
  plus the raw cffi call ``lib.gf_ring_append`` doing the same C work, and an
  empty cffi call, to show what the crossing saves;
* batches of 1024 100-byte messages: ``Partition.append_batch``,
  ``Reader.poll_raw``, ``Reader.poll_batch`` (target: >= 30 M msg/s);
* batches of 256 4 KiB messages, the same calls next to ``gf_memcpy_bench``
  moving the same bytes between a batch-sized buffer and a ring-sized buffer
  (target: >= 50 % of that memcpy bandwidth).

The workloads are ``grafos.benchsuite.core``'s, interleaved
(``core.interleave``): every round runs each of them twice in a row and times
the second run (in a rotated order), so a ratio is taken between measurements
a few milliseconds apart and the VM's noise hits both sides alike. Reported:
the median over rounds of each per-round ratio, and each workload's median
and best round. Nothing is asserted.

    python benchmarks/core_ratios.py [--rounds 200]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess

from grafos.benchsuite.core import GROUPS, RATIOS, TARGETS, interleave


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()

    rig, ws, times = interleave(args.rounds)
    by = {w.name: w for w in ws}
    med = {n: statistics.median(t) for n, t in times.items()}
    best = {n: min(t) for n, t in times.items()}

    dirty = _git("status", "--porcelain", "--", "../csrc", "../src/grafos", "../build_ffi.py")
    print(f"grafos core benchmarks: {args.rounds} interleaved rounds; "
          f"git {_git('rev-parse', '--short', 'HEAD')}{' + uncommitted core changes' if dirty else ''}; "
          f"Python {platform.python_version()}; {_cpu()}, {os.cpu_count()} CPUs")
    group = None
    for w in ws:
        if w.group != group:
            group = w.group
            print(f"\n{group}: {GROUPS[group]}")
            print(f"  {'workload':26s} {'M msg/s':>8s} {'(best)':>8s} {'ns/msg':>8s} {'GB/s':>6s}")
        m = w.messages / med[w.name]
        line = (f"  {w.name:26s} {m / 1e6:8.2f} {w.messages / best[w.name] / 1e6:8.2f} "
                f"{med[w.name] / w.messages * 1e9:8.1f} "
                + (f"{w.payload / med[w.name] / 1e9:6.2f}" if w.payload else f"{'':6s}"))
        if w.name in TARGETS:
            t = TARGETS[w.name]
            line += f"  target {t / 1e6:g} M/s: {'met' if m >= t else 'MISSED'} ({m / t:.2f}x)"
        print(line)

    print("\nratios, median of per-round ratios (rounds a few ms apart):")
    for label, num, den, target, unit in RATIOS:
        if num not in times or den not in times:
            continue
        # same bytes and messages per call on both sides where compared: rate ratio = time ratio
        scale = ((by[num].messages / by[den].messages) if unit == "msg"
                 else (by[num].payload / by[den].payload))
        ratio = statistics.median(scale * d / n for n, d in zip(times[num], times[den]))
        verdict = "" if target is None else f"   target >= {target}: {'met' if ratio >= target else 'MISSED'}"
        print(f"  {label:50s} {ratio:6.2f}{verdict}")

    def ns(name: str) -> float | None:
        return med[name] / by[name].messages * 1e9 if name in med else None

    print("\nwhere a single append's time goes (median ns per message):")
    api, raw, floor = (ns(n) for n in ("append_api", "append_cffi_raw", "cffi_call_floor"))
    print(f"  Partition.append (the crossing)           {api:7.1f}")
    print(f"  raw cffi call lib.gf_ring_append          {raw:7.1f}  (the same C work behind cffi)")
    print(f"    one empty cffi crossing (1 arg)         {floor:7.1f}  (cffi_call_floor: tuple, GIL release, errno)")

    print("\nbatch overheads above the C floor (median ns per message):")
    rows = [("append_batch_api", "append_batch_cffi_raw", "pack(): numpy lengths + b''.join of keys and values"),
            ("poll_batch", "poll_raw", "Batch: numpy views"),
            ("poll_messages", "poll_raw", "Message objects"),
            ("append_batch_4k_api", "append_batch_4k_cffi_raw", "pack(): b''.join copies 1 MiB again")]
    for a, b, what in rows:
        if a in med and b in med:
            print(f"  {a:24s} - {b:24s} {ns(a) - ns(b):7.1f}  {what}")
    rig.close()


if __name__ == "__main__":
    main()
