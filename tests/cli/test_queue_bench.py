"""``grafos bench -s queue`` runs end to end (a tiny slice) so it cannot rot.
Speeds are never asserted: only that every system was measured (or reported
missing) and that grafos' rows carry their ratios."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from grafos.benchsuite import peers as peer_runs
from grafos.benchsuite.queues import PAYLOADS, SYSTEMS
from grafos.cli import main


@pytest.mark.timeout(300)     # a stuck peer process fails the test instead of the run
def test_queue_scenario_measures_every_system_and_payload(tmp_path):
    out = tmp_path / "out.json"
    res = CliRunner().invoke(main, ["bench", "-s", "queue", "--duration", "0.05", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(out.read_text())["results"] if r["group"] == "queue"]
    assert {(r["system"], r["mode"]) for r in rows} == {(s, k) for s in SYSTEMS for k in PAYLOADS}
    for r in rows:
        expected = "ok" if r["system"] == "grafos" or not peer_runs.missing(r["system"]) else "missing"
        assert r["status"] == expected, r
        if expected == "ok":
            assert r["messages"] > 0 and r["size"] > 0
    for r in rows:
        if r["system"] == "grafos" and any(p["status"] == "ok" for p in rows if p["system"] != "grafos"):
            assert "x mp.Queue" in r["note"] or "x faster-fifo" in r["note"], r
    assert "Queues of Python objects" in res.output
