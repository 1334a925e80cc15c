"""What the ``grafos`` commands print for people and for scripts: whole
numbers into a pipe, errors as JSON under ``--json``, sizes in binary units."""
from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from grafos.cli import main
from grafos.cli.gc import human_size
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

GRAFOS = [sys.executable, "-c", "from grafos.cli import main; main()"]


def test_describe_into_a_pipe_should_print_every_column_whole(shm_name):
    with TopicManager.open(shm_name, size=16 << 20) as mgr:
        mgr.create("gated", TopicConfig(2, 64, 128, 600.0, on_full="block"))
        prod = Producer("gated")
        for _ in range(40):
            prod.send(mgr, b"x")
        incs = [f"{p.incarnation:012x}" for p in mgr.describe("gated").partitions]
        r = subprocess.run([*GRAFOS, "describe", shm_name, "gated"], capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    for word in ("partition", "earliest", "abandoned", "BufferFull", "time blocked", *incs):
        assert word in r.stdout, word


def test_commands_under_json_should_report_errors_as_a_json_object(shm_name):
    for args in (["describe", "no-such-bus", "t"], ["topics", "no-such-bus"], ["groups", "no-such-bus"],
                 ["top", "no-such-bus", "--once"], ["gc", "no-such-bus"]):
        r = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert r.exit_code == 1, args
        err = json.loads(r.stdout)
        assert err["type"] == "NotFound" and "no-such-bus" in err["error"], args
    with TopicManager.open(shm_name, size=8 << 20):
        r = CliRunner().invoke(main, ["describe", shm_name, "missing", "--json"], catch_exceptions=False)
    assert r.exit_code == 1 and json.loads(r.stdout)["type"] == "NotFound"
    assert "missing" in json.loads(r.stdout)["error"]
    # without --json the error stays a line on standard error
    r = CliRunner().invoke(main, ["topics", "no-such-bus"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stdout == "" and r.stderr.startswith("error: ")


def test_gc_should_show_sizes_in_binary_units_and_bytes_under_json(shm_name):
    with TopicManager.open(shm_name, size=8 << 20):
        table = CliRunner().invoke(main, ["gc", shm_name], catch_exceptions=False)
        raw = CliRunner().invoke(main, ["gc", shm_name, "--json"], catch_exceptions=False)
    assert table.exit_code == 0 and "8.0 MiB" in table.stdout and str(8 << 20) not in table.stdout
    assert json.loads(raw.stdout)["buses"][0]["size"] == 8 << 20
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 << 30, 3 << 40)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 GiB", "3.0 TiB"]
