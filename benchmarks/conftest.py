"""Fixtures for the core benchmarks and the ratio table printed at the end of
the session. Nothing here asserts a speed: the numbers are reported only."""
from __future__ import annotations

import pytest

from grafos.benchsuite.core import GROUPS, RATIOS, TARGETS, Rig

#: name -> {"median": s, "min": s, "messages": n, "payload": bytes}, filled by the tests
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="session")
def rig():
    r = Rig()
    yield r
    r.close()


def _rate(name: str, stat: str, unit: str) -> float | None:
    res = RESULTS.get(name)
    if not res or not res[stat]:
        return None
    return (res["messages"] if unit == "msg" else res["payload"]) / res[stat]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("grafos core: throughput and ratios (this run; median round, best round in brackets)")
    group = None
    for name, res in RESULTS.items():
        if res["group"] != group:
            group = res["group"]
            tr.write_line(f"{group}: {GROUPS[group]}")
        msgs = _rate(name, "median", "msg")
        best = _rate(name, "min", "msg")
        line = f"  {name:26s} {msgs / 1e6:8.2f} M msg/s [{best / 1e6:6.2f}]"
        if res["payload"]:
            line += f"  {_rate(name, 'median', 'byte') / 1e9:6.2f} GB/s payload"
        if name in TARGETS:
            t = TARGETS[name]
            line += f"   target {t / 1e6:g} M/s: {'met' if msgs >= t else 'MISSED'} ({msgs / t:.2f}x)"
        tr.write_line(line)
    tr.write_line("ratios (median over median; see core_ratios.py for round-by-round side-by-side ratios):")
    for label, num, den, target, unit in RATIOS:
        a, b = _rate(num, "median", unit), _rate(den, "median", unit)
        if a is None or b is None:
            continue
        verdict = "" if target is None else f"   target >= {target}: {'met' if a / b >= target else 'MISSED'}"
        tr.write_line(f"  {label:50s} {a / b:6.2f}{verdict}")
