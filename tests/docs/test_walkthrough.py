"""The seed's walkthrough runs: as a function on an in-process bus (and what it
did holds together), as ``examples/walkthrough.py``, and as ``grafos demo``."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from click.testing import CliRunner
from rich.console import Console

from grafos.cli import main as cli
from grafos.demo import run

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "walkthrough.py")


@pytest.mark.parametrize("backend", ["shm", "jetstream"])
def test_should_run_the_walkthrough_and_account_for_every_message(backend, request):
    buf = io.StringIO()
    url = request.getfixturevalue("nats_url") if backend == "jetstream" else None
    s = run(Console(file=buf, width=100), nats=url)
    produced = s.produced
    # every message was either processed or is a poison message in the DLQ
    assert len(s.processed) + len(s.poison) == produced
    assert not (set(s.processed) & s.poison)
    sources = {(int(dict(m.headers)["x-source-partition"]), int(dict(m.headers)["x-source-offset"]))
               for m in s.dead_letters}
    assert sources == s.poison
    assert all(dict(m.headers)["x-failures"] == b"3" for m in s.dead_letters)
    # only what worker-1 polled without committing was delivered twice
    assert max(s.processed.values()) <= 2
    assert s.fenced                          # worker-1 was fenced when it came back
    assert s.lag == 0 and sum(s.committed.values()) == produced
    # retention: the renewed topic outlived its TTL, the unrenewed one gave memory back
    assert sorted(s.renewed) == [0, 1, 2, 3]
    assert s.events_alive_after
    assert s.expired_reclaimed_blocks > 0
    assert s.restarted_read == [b"fresh click"]
    out = buf.getvalue()
    for section in ("Topics", "Producing", "Consuming", "failover", "Retention", "Looking inside"):
        assert section in out


def test_should_run_the_example_script():
    out = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dead letters" in out.stdout


def test_should_run_grafos_demo():
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Retention" in result.output


def test_should_run_the_example_script_and_grafos_demo_on_jetstream(nats_url):
    out = subprocess.run([sys.executable, EXAMPLE, "--nats", nats_url], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dead letters" in out.stdout and "expired streams" in out.stdout
    result = CliRunner().invoke(cli, ["demo", "--nats", nats_url])
    assert result.exit_code == 0, result.output
    assert "expired streams" in result.output
