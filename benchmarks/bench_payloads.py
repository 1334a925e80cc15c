"""Large messages, side by side in one run: grafos against faster-fifo and memcpy.

* **cross-process, 64 KiB**, producer process -> consumer process, single sends
  (``send_keyed`` / faster-fifo ``put``) and batches of 8 (``send_batch`` /
  ``put_many``), on a ring of about 2 MiB sized in 64 KiB slots, and on a ring
  of 4,096 slots of 512 B (each message spans 129 of them). faster-fifo gets a
  2 MiB buffer in both.
* **cross-process, 1 MiB** single sends, the ring 4 MiB of 512 B slots.
* **loan + peek, 1 MiB**, cross-process: the producer fills a loan in place
  (``Loan.write``: one copy of the payload into the ring), the consumer peeks and touches
  every byte of the view (a sum over 8-byte words), against one memcpy of the
  same bytes in one process.
* **latency, cross-process**: p50 / p99 one-way time of a 64 B ``send_keyed``
  read by ``poll``, and of a 1 MiB loan read by ``peek``, one message in flight,
  both sides polling without sleeping. The producer writes
  ``time.monotonic_ns()`` into the value just before the send or the commit
  (the fill of the loan is not counted: it is the caller's own work), the
  consumer subtracts it from its clock when the message arrives. The loan runs
  on a ring of 512 B slots (2,049 sequence words per message) and on a ring of
  four 1 MiB slots.
* **in-process 4 KiB batches** of 64 (``append_batch`` then a poll), on a ring
  with checksums (verified, or not verified by the reader), on a ring without
  checksums (the in-process default), and read by peek (a message object per
  value, or ``Peek.arrays``: one array per run of equal values), against a
  memcpy of the same working set (write + read is two copies: the ratio is to
  one; a peek reads in place, after one copy).
* **in-process 64 KiB polls**: ``poll(64)`` (a ``Message`` and its ``bytes``
  per value) and ``poll_batch(64)`` out of a ring of 256 x 64 KiB slots that a
  ``send_batch(64)`` filled just before (only the poll is timed), with and
  without checksums, against memcpy of 64 x 64 KiB walking a ring-sized
  buffer into 64 distinct 64 KiB destinations (the same working set).
  ``--only inproc-poll`` runs these rows alone.

Topics on the named fabric carry checksums by default (``TopicConfig(checksum=None)``);
the cross-process rows run with them and, marked "no checksums", without.
Rates are messages (and GB/s) reaching the consumer over the consumer's clock.
This machine's cross-core copies swing several-fold from one minute to the next
(two C threads passing 64 KiB through a 2 MiB buffer ran at 3 to 33 GB/s, same
binary, minutes apart), so every row runs ``--rounds`` times, each round puts
each row next to its peer, and the summary gives the median round's ratio with
the range. The rows are ``grafos.benchsuite.payloads``'s. Nothing here asserts
a speed.

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
