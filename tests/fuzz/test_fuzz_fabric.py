"""The fabric fuzzer as part of the test suite.

``test_fuzz_fabric_short_run`` runs ``fuzz_fabric.py`` in a subprocess (a
segfault or a hang there is a failed test here, not a dead test runner) for
about a minute, scaled by GRAFOS_STRESS_SCALE: under atheris when it is
installed (``pip install -e .[fuzz]``), else as the harness's seeded
random-mutation loop. The long run is documented in docs/hardening.md.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_fabric.py")
SEED = int(os.environ.get("GRAFOS_FUZZ_SEED", "20240601"))


def _scale() -> float:
    return float(os.environ.get("GRAFOS_STRESS_SCALE", "1.0"))


def _run(cmd: list[str], timeout: float, workdir) -> tuple[int, str]:  # noqa: ANN001
    env = dict(os.environ, GRAFOS_FUZZ_WORKDIR=str(workdir))
    proc = subprocess.run([sys.executable, str(HARNESS), *cmd], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _stat(out: str, name: str) -> int:
    m = re.search(rf"\b{name}=(\d+)", out)
    return int(m.group(1)) if m else 0


def test_harness_mutations_reach_every_layer_and_end_cleanly(tmp_path):
    """A fixed-seed batch of the random loop: the harness must attach most inputs,
    refuse some (damage it found at attach), deliver messages, and see errors
    raised deeper down, all without a failure."""
    rc, out = _run(["--random", "--seed", str(SEED), "--runs", "300", "--seconds", "120"], 240, tmp_path)
    assert rc == 0, out[-4000:]
    assert _stat(out, "executions") == 300, out[-2000:]
    assert _stat(out, "attached") > 100
    assert _stat(out, "refused:CorruptFabric") > 0          # header damage is refused at attach
    assert _stat(out, "err:CorruptFabric") > 0              # deeper damage is refused at use
    assert _stat(out, "delivered") > 0
    assert _stat(out, "shared") > 0                         # share groups polled on damaged state
    assert _stat(out, "forged") > 0 and _stat(out, "strict") > 0


@pytest.mark.stress
def test_fuzz_fabric_short_run(tmp_path):
    seconds = max(5, int(60 * _scale()))
    if importlib.util.find_spec("atheris") is not None:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        cmd = [f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=512",
               "-len_control=0", f"-seed={SEED}", "-print_final_stats=1",
               f"-artifact_prefix={tmp_path}/", str(corpus)]
        rc, out = _run(cmd, seconds + 180, tmp_path)
        m = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
        runs = int(m.group(1)) if m else 0
        engine = "atheris"
    else:
        rc, out = _run(["--random", "--seed", str(SEED), "--seconds", str(seconds)], seconds + 180,
                       tmp_path)
        runs = _stat(out, "executions")
        engine = "random"
    print(f"fuzz_fabric ({engine}): {runs} executions in {seconds} s")
    assert rc == 0, out[-6000:]
    assert runs > 0, out[-2000:]
