"""``grafos gc``: lists named buses and, with --yes, removes those no process
has open, no live process holds the lock of, and whose every lease expired."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from helpers import gc_procs
from helpers import mp_helpers
from helpers import owner_helpers

from grafos import Fabric, fabric
from grafos.cli import main
from grafos.mq.topic import TopicConfig, TopicManager

SHORT = TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128, retention_secs=0.2)
LONG = TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128, retention_secs=600)


def gc(*args: str) -> dict:
    out = CliRunner().invoke(main, ["gc", *args, "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return {r["bus"]: r for r in json.loads(out.output)["buses"]}


def _bus(name: str, cfg: TopicConfig) -> None:
    with TopicManager.open(name, size=8 << 20) as mgr:
        mgr.create("t", cfg)


def test_should_remove_only_with_yes_when_every_lease_expired_and_nobody_holds_it(shm_name):
    _bus(shm_name, SHORT)
    time.sleep(0.3)
    row = gc(shm_name)[shm_name]
    assert row["idle"] and row["leases"] == 2 and row["leases_live"] == 0 and not row["removed"]
    assert Fabric.exists(shm_name)                      # listing removes nothing
    assert gc(shm_name, "--yes")[shm_name]["removed"]
    assert not Fabric.exists(shm_name)


def test_should_keep_a_bus_when_a_live_process_has_it_open(shm_name):
    _bus(shm_name, SHORT)
    time.sleep(0.3)
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys, time; from grafos import Fabric; "
                              f"f = Fabric.open({shm_name!r}, create=False); print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"up"
        row = gc(shm_name, "--yes")[shm_name]
        assert row["in_use"] and not row["removed"] and row["state"] == "in use"
        assert Fabric.exists(shm_name)
    finally:
        child.kill()
        child.wait()
    assert gc(shm_name, "--yes")[shm_name]["removed"]    # once it is gone, so is the bus


def test_should_keep_a_bus_when_a_lease_is_alive(shm_name):
    _bus(shm_name, LONG)
    row = gc(shm_name, "--yes")[shm_name]
    assert not row["removed"] and row["leases_live"] == 2 and "live lease" in row["state"]
    assert Fabric.exists(shm_name)


def test_should_keep_a_bus_when_a_live_process_holds_its_metadata_lock(shm_name):
    _bus(shm_name, SHORT)
    time.sleep(0.3)
    path = fabric.shm_path(shm_name)
    fd = owner_helpers.hold(path, 777)                 # a live holder, not attached (no file lock)
    try:
        owner_helpers.write_holder(path, 777, 4321)
        row = gc(shm_name, "--yes")[shm_name]
        assert not row["removed"] and row["state"] == "locked by live pid 4321"
    finally:
        os.close(fd)
    assert gc(shm_name, "--yes")[shm_name]["removed"]   # its holder gone, the bus is idle


def test_should_remove_a_bus_when_its_creator_died_before_finishing(shm_name):
    with open(fabric.shm_path(shm_name), "wb") as f:       # sized, never made ready
        f.truncate(8 << 20)
    row = gc(shm_name, "--yes")[shm_name]
    assert row["removed"] and not row["ready"]


def test_should_list_every_named_bus_when_all(tmp_path, monkeypatch):
    monkeypatch.setattr(fabric, "SHM_DIR", str(tmp_path))   # a private /dev/shm for this test
    for n in ("a", "b"):
        _bus(n, SHORT if n == "a" else LONG)
    (tmp_path / "unrelated").write_bytes(b"x")
    time.sleep(0.3)
    rows = gc("--all", "--yes")
    assert set(rows) == {"a", "b"}
    assert rows["a"]["removed"] and not rows["b"]["removed"]
    assert sorted(os.listdir(tmp_path)) == ["grafos.b", "unrelated"]


def test_should_be_a_usage_error_without_name_or_all():
    out = CliRunner().invoke(main, ["gc"])
    assert out.exit_code == 2 and "NAME or --all" in out.output


def test_should_fail_cleanly_when_the_bus_does_not_exist():
    out = CliRunner().invoke(main, ["gc", "no-such-bus-here"])
    assert out.exit_code == 1 and "no fabric" in out.output


@pytest.mark.parametrize("flag", [[], ["--yes"]])
def test_should_print_a_table_when_not_json(shm_name, flag):
    _bus(shm_name, LONG)
    out = CliRunner().invoke(main, ["gc", shm_name, *flag])
    assert out.exit_code == 0 and shm_name[:10] in out.output and "live lease" in out.output


@pytest.mark.stress
def test_should_never_remove_a_bus_under_a_process_that_is_attaching_it(shm_name, procs):
    """gc --yes racing processes that make and attach the bus in a loop: every handle
    is on the file at the bus's path, so what it writes a fresh opener sees."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    seconds = max(1.0, 4.0 * mp_helpers.stress_scale())
    workers = 3
    for i in range(workers):
        procs.append(ctx.Process(target=gc_procs.attach_loop, args=(shm_name, i, seconds, ready, go, out), daemon=True))
    procs.append(ctx.Process(target=gc_procs.gc_loop, args=(shm_name, seconds, ready, go, out), daemon=True))
    for p in procs:
        p.start()
    for _ in procs:                  # all loops run at once, however slowly each started
        ready.get(timeout=120)
    go.set()
    reports = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    (_, removed, probes), = [r for r in reports if r[0] == "gc"]
    attaches = [r for r in reports if r[0] == "attach"]
    opens = sum(r[2] for r in attaches)
    assert removed >= 5 and opens >= 50, f"no race to speak of: {removed} removals in {probes} probes, {opens} opens"
    assert [r[3] for r in attaches] == [0] * workers, f"handles on a removed file: {attaches}"
    assert [r[5] for r in attaches] == [0] * workers, attaches
