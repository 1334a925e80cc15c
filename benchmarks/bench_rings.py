"""64 KiB messages across processes on a small ring and a big one, side by side.

A producer process ``send``s 64 KiB values, this process ``poll``s them
(``grafos bench -s cross``'s single rows: the same loops, from
``grafos.benchsuite``), on a ring of about 2 MiB (31 slots) and on a ring of
4,000 slots (262 MB, past every cache). faster-fifo gets a buffer of the same
bytes in each. Each round runs every row once, in turn, so the ratios are
taken between measurements close in time; the summary is the median round's
ratio with the range. Beside them, the machine's floor for the same ring
(``prototypes/copy_floor.c``: two C threads, two memcpys, nothing else) when a
C compiler is here, and ``floor-stream``, the same with streaming stores into
the ring (what grafos' writes into a ring of 64 MiB or more use). Nothing here
asserts a speed.

    python benchmarks/bench_rings.py [--seconds 1] [--rounds 3] [--only big] [--system grafos]
                                     [--huge-dir DIR]

``--huge-dir DIR`` keeps grafos' bus in a file in DIR opened with
``huge_pages="on"``: DIR must be a tmpfs mounted with ``huge=advise`` (or
``always``), e.g. ``mount -t tmpfs -o huge=advise,size=1g tmpfs DIR``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile

# numpy's BLAS threads take a core from the producer or the consumer (children inherit this)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from grafos.benchsuite import grafos_runs, peers  # noqa: E402
from grafos.benchsuite.harness import batch_for  # noqa: E402

SIZE = 64 << 10
BATCH = batch_for(SIZE)      # what grafos bench polls at a time, and sizes its ring by
RINGS = {"small": None, "big": 4000}     # slots: None is the 2 MiB of grafos bench
HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = ["grafos", "faster-fifo", "floor", "floor-stream"]


def ring_bytes(ring: str) -> int:
    capacity, stride = grafos_runs.geometry(SIZE, BATCH)
    return (RINGS[ring] or capacity) * stride


def run(system: str, ring: str, seconds: float, huge_dir: str | None = None) -> float:
    """Messages per second reaching the consumer."""
    if system == "grafos":
        path = os.path.join(huge_dir, f"grafos-bench-{os.getpid()}.grafos") if huge_dir else None
        res = grafos_runs.cross(SIZE, BATCH, "single", seconds, capacity=RINGS[ring], path=path,
                                huge_pages="on" if huge_dir else "off")
        if res.lost:
            raise RuntimeError(f"grafos lost {res.lost} messages on the {ring} ring")
    else:
        res = peers.cross(system, SIZE, BATCH, "single", seconds, ring_bytes=ring_bytes(ring))
    if res.status != "ok":
        raise RuntimeError(f"{system} on the {ring} ring: {res.status} {res.note}")
    return res.messages / res.seconds


def floor(ring: str, stream: bool = False) -> float | None:
    """copy_floor.c's msg/s for 64 KiB through this ring (one repeat; ``stream``:
    streaming stores into the ring), or None without cc."""
    cc = shutil.which("cc")
    if not cc:
        return None
    exe = os.path.join(tempfile.gettempdir(), f"grafos-copy-floor-{os.getuid()}")
    src = os.path.join(HERE, "prototypes", "copy_floor.c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.run([cc, "-O2", "-pthread", "-o", exe, src], check=True)
    out = subprocess.run([exe, str(SIZE), str(ring_bytes(ring)), "1", "2", str(int(stream))], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split(":")[1].split("k/s")[0]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="each row's timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=sorted(RINGS), action="append", help="a ring (repeatable)")
    ap.add_argument("--system", choices=SYSTEMS, action="append",
                    help="a row (repeatable); the ratios need grafos and faster-fifo")
    ap.add_argument("--huge-dir", help="grafos' bus as a file in this folder, with huge_pages='on' (a tmpfs "
                    "mounted with huge=advise or always)")
    a = ap.parse_args()
    rings = a.only or list(RINGS)
    systems = a.system or SYSTEMS
    got: dict[tuple[str, str], list[float]] = {}
    for r in range(a.rounds):
        for ring in rings:
            order = systems if r % 2 == 0 else systems[::-1]
            for system in order:
                rate = floor(ring, system == "floor-stream") if system.startswith("floor") else \
                    run(system, ring, a.seconds, a.huge_dir)
                if rate is not None:
                    got.setdefault((ring, system), []).append(rate)
                    print(f"round {r + 1} {ring:5} {system:11} {rate / 1e3:8.1f} k msg/s", flush=True)
    for ring in rings:
        g, f = got.get((ring, "grafos")), got.get((ring, "faster-fifo"))
        line = f"{ring:5} ring ({ring_bytes(ring) / (1 << 20):.0f} MiB):"
        for system in systems:
            if (ring, system) in got:
                line += f" {system} {statistics.median(got[ring, system]) / 1e3:.1f} k/s;"
        if g and f:
            ratios = sorted(x / y for x, y in zip(g, f))
            line += f" grafos / faster-fifo {statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
        print(line)


if __name__ == "__main__":
    main()
