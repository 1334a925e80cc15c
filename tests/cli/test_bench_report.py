"""The tables of ``grafos bench``: a grafos call is never shown as its own peer,
and a peer that is not installed is one line, not one row per measurement."""
from __future__ import annotations

import io

from rich.console import Console

from grafos.benchsuite import calls, report
from grafos.benchsuite.harness import GRAFOS, Result


def _printed(results: list[Result]) -> str:
    out = io.StringIO()
    report.print_report(Console(file=out, width=300), results, [])
    return out.getvalue()


def _ok(group: str, system: str, mode: str, rate: float, size: int = 100) -> Result:
    return Result(group, system, mode, "in-process", size, messages=int(rate), seconds=1.0)


def test_calls_table_should_not_compare_grafos_with_itself():
    results = [_ok("calls", calls.QUEUE, "put", 1e6), _ok("calls", GRAFOS, "send_keyed", 2e6),
               _ok("calls", GRAFOS, "send_keyed idempotent", 1.5e6)]
    calls.derive(results)
    text = _printed(results)
    assert "(queue.Queue.put)" in text
    assert "(grafos send_keyed)" not in text
    idem = results[2]
    assert idem.note in text and "send_keyed" in idem.note       # the ratio stays, as a note


def test_a_missing_peer_should_be_one_line():
    why = 'not installed (pip install faster-fifo, or pip install "grafos[peers]")'
    results = [_ok("inproc", GRAFOS, "batch", 1e6, size) for size in (64, 1024, 4096)]
    results += [Result("inproc", "faster-fifo", mode, "in-process", size, status="missing", note=why)
                for size in (64, 1024, 4096) for mode in ("single", "batch")]
    results += [Result("cross", "faster-fifo", "batch", "cross-process", 64, status="missing", note=why)]
    text = _printed(results)
    assert [line for line in text.splitlines() if "faster-fifo" in line] == [f"faster-fifo: not measured, {why}"]
