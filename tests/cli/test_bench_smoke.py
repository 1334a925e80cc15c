"""``grafos bench`` runs end to end (a tiny slice of ``--quick``) so it cannot rot.
Speeds are never asserted here: only that every measurement ran, moved
messages, and is reported the same way in the table and the JSON."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import pathlib

from grafos.benchsuite import Options, derive, judge, load_goals, plan, quick_options
from grafos.benchsuite import peers as peer_runs
from grafos.benchsuite.harness import PEERS, Result
from grafos.cli import main

GOALS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "goals.json"


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out.json"
    res = CliRunner().invoke(main, ["bench", "--quick", "--duration", "0.05", "--sizes", "64",
                                    "--topics", "1,3", "--partitions", "1,4", "--json", str(out),
                                    "--goals", str(GOALS)])
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.read_text())


def test_quick_bench_should_measure_grafos_in_and_across_processes(quick_json):
    _, doc = quick_json
    rows = doc["results"]
    for group, placement in (("inproc", "in-process"), ("cross", "cross-process")):
        ours = [r for r in rows if r["group"] == group and r["system"] == "grafos" and r["mode"] == "batch"]
        assert ours and ours[0]["status"] == "ok", ours
        assert ours[0]["placement"] == placement
        assert ours[0]["messages"] > 0 and ours[0]["msg_per_s"] > 0
        assert ours[0]["lost"] == 0


def test_every_peer_should_be_measured_or_reported_missing(quick_json):
    _, doc = quick_json
    rows = doc["results"]
    for peer in PEERS:
        mine = [r for r in rows if r["system"] == peer]
        assert mine, f"{peer} absent from the run"
        expected = "missing" if peer_runs.missing(peer) else "ok"
        assert {r["status"] for r in mine} == {expected}, mine
        if expected == "missing":
            assert all(r["messages"] == 0 and "not installed" in r["note"] for r in mine)
    assert any(r["system"] == "memcpy" and r["status"] == "ok" and r["messages"] > 0 for r in rows)


def test_table_and_json_should_agree(quick_json):
    output, doc = quick_json
    assert f"Goals ({GOALS})" in output
    assert [g["name"] for g in doc["goals"]] == [g.name for g in load_goals(str(GOALS))]
    for t in doc["goals"]:
        assert t["met"] in (True, False, None)
        assert t["name"] in output
    grafos_inproc = next(r for r in doc["results"] if r["group"] == "inproc" and r["system"] == "grafos"
                         and r["mode"] == "batch")
    # ratios derived from the same rows: MB/s over memcpy's MB/s at that size
    memcpy = next(r for r in doc["results"] if r["system"] == "memcpy" and r["size"] == grafos_inproc["size"])
    assert grafos_inproc["vs_memcpy"] == pytest.approx(grafos_inproc["mb_per_s"] / memcpy["mb_per_s"])
    sweep = [r for r in doc["results"] if r["group"] == "topics"]
    assert [r["topics"] for r in sweep] == [1, 3] and sweep[0]["vs_first"] == pytest.approx(1.0)


def test_plot_without_matplotlib_should_say_so(monkeypatch, tmp_path):
    from grafos.benchsuite import report
    monkeypatch.setattr(report, "have_matplotlib", lambda: False)
    res = CliRunner().invoke(main, ["bench", "--quick", "--plot", str(tmp_path / "p.png")])
    assert res.exit_code != 0
    assert "matplotlib" in res.output and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("args, hint", [
    (["--sizes", "64,banana"], "--sizes"),
    (["--sizes", "0"], "--sizes"),
    (["--partitions", "0"], "--partitions"),
    (["--scenario", "nope"], "--scenario"),
])
def test_bad_options_should_be_usage_errors(args, hint):
    res = CliRunner().invoke(main, ["bench", *args])
    assert res.exit_code == 2 and hint in res.output


def test_plan_should_cover_sizes_modes_and_peers():
    opt = Options(scenarios=("inproc",), sizes=(16, 65536), duration=0.01)
    titles = [j.title for j in plan(opt)]
    for size in (16, 65536):
        for system in ("grafos", *PEERS):
            for mode in ("single", "batch"):
                assert f"in-process {system} {mode} {size} B" in titles
    assert sum(t.startswith("memcpy") for t in titles) == 2
    assert quick_options().quick


def test_targets_should_judge_the_rows_given():
    targets = lambda rows: judge(load_goals(str(GOALS)), rows)  # noqa: E731
    rows = [Result("inproc", "grafos", "batch", "in-process", 64, messages=31_000_000, seconds=1.0),
            Result("cross", "grafos", "batch", "cross-process", 64, messages=5_000_000, seconds=1.0),
            Result("cross", "pyzmq", "batch", "cross-process", 64, messages=1_000_000, seconds=1.0)]
    derive(rows)
    verdicts = {t.name: t.met for t in targets(rows)}
    assert verdicts["in-process batch, 64 B"] is True
    assert verdicts["cross-process batch, 64 B"] is False
    assert verdicts["cross-process batch, 64 B vs best peer batch"] is False      # 5x, not 10x
    assert verdicts["in-process batch, 4 KiB"] is None                            # not run


def test_bench_without_goals_should_print_no_verdicts(tmp_path):
    out = tmp_path / "o.json"
    res = CliRunner().invoke(main, ["bench", "-s", "partitions", "--partitions", "1",
                                    "--duration", "0.02", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "Goals" not in res.output and "issue" not in res.output.lower()
    assert json.loads(out.read_text())["goals"] == []


@pytest.mark.parametrize("doc, says", [
    ("[]", "goals"),
    ('{"goals": [{"name": "x", "metric": "speed", "threshold": 1}]}', "metric must be one of"),
    ('{"goals": [{"name": "x", "metric": "msg_per_s", "threshold": "fast"}]}', "threshold"),
    ('{"goals": [{"name": "x", "metric": "msg_per_s", "threshold": 1, "select": {"colour": 1}}]}', "select"),
    ('{"goals": [{"name": "x", "metric": "flat", "threshold": 0.2}]}', "flat"),
    ("not json", "not JSON"),
])
def test_bad_goals_file_should_be_a_usage_error_naming_it(tmp_path, doc, says):
    f = tmp_path / "goals.json"
    f.write_text(doc)
    res = CliRunner().invoke(main, ["bench", "--goals", str(f)])
    assert res.exit_code == 2, res.output
    assert says in res.output and "goals.json" in res.output


def test_missing_peer_hint_should_name_the_extra(monkeypatch):
    monkeypatch.setattr(peer_runs.importlib.util, "find_spec", lambda name: None)
    res = CliRunner().invoke(main, ["bench", "-s", "inproc", "--sizes", "64", "--duration", "0.01"])
    assert res.exit_code == 0, res.output
    assert 'pip install "grafos[peers]"' in res.output
