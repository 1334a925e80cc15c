"""The inspection commands on a live named bus: ``grafos topics``, ``describe``,
``groups``, ``tail`` and ``produce``. Driven with click's CliRunner, and as a
real program (subprocess) where exit codes and streaming matter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from grafos.cli import main
from grafos.fabric import Fabric
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from helpers.bus_helpers import bus_store
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager


@pytest.fixture(params=["named", "jetstream"])
def bus(request, shm_name):
    """A named shared bus, or a JetStream server (the commands take its URL)."""
    if request.param == "jetstream":
        mgr = TopicManager.connect(request.getfixturevalue("nats_url"))
    else:
        mgr = TopicManager.open(shm_name, size=64 << 20)
    yield mgr
    mgr.close()


def where(bus) -> str:
    """What the commands take for ``bus``: the bus name, or the server URL."""
    return bus.fabric.name if isinstance(bus, TopicManager) else bus.servers[0]


#: the ``grafos`` program, run as a separate process
GRAFOS = [sys.executable, "-c", "from grafos.cli import main; main()"]


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def run_json(*args: str, input: str | None = None):
    r = run(*args, "--json", input=input)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def read_all(mgr: TopicManager, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    c = Consumer(topic, "check")
    c.seek(mgr, None, SeekPolicy.Earliest)
    out = []
    while batch := c.poll(mgr, 1000):
        out += [(p, m.key, m.value) for p, m in batch]
    return out


# ---- topics / describe ---------------------------------------------------------------------------
def test_topics_should_list_every_topic_with_its_counts(bus):
    bus.create("events", TopicConfig(4, 64, 256, 600.0))
    bus.create("audit", TopicConfig(1, 16, 128, 30.0))
    prod = Producer("events")
    for i in range(25):
        prod.send_keyed(bus, b"k%d" % i, b"v")
    out = run_json("topics", where(bus))
    rows = {r["topic"]: r for r in out["topics"]}
    assert sorted(rows) == bus.topics()
    assert rows["events"]["produced"] == 25 == bus.describe("events").produced
    assert rows["events"]["partitions"] == 4 and rows["audit"]["partitions"] == 1
    assert rows["audit"]["capacity"] == 16 and rows["audit"]["retention_secs"] == 30.0
    assert 0 < rows["audit"]["min_ttl_secs"] <= 30.0
    assert rows["events"]["partitions_alive"] == 4
    table = run("topics", where(bus))
    assert table.exit_code == 0
    assert "events" in table.stdout and "audit" in table.stdout


def test_describe_should_show_offsets_lost_to_overwrite_and_lease_ttl(bus):
    bus.create("small", TopicConfig(2, 8, 128, 600.0))
    key = next(b"k%d" % i for i in range(100) if kafka_partition(b"k%d" % i, 2) == 1)
    prod = Producer("small")
    for i in range(20):
        prod.send_keyed(bus, key, b"m%d" % i)
    out = run_json("describe", where(bus), "small")
    parts = {p["partition"]: p for p in out["partitions"]}
    assert parts[1]["latest"] == 20 and parts[1]["earliest"] == 12 and parts[1]["lost"] == 12
    assert parts[0]["latest"] == 0 and parts[0]["lost"] == 0
    assert out["lost"] == 12 and out["produced"] == 20
    assert all(0 < p["ttl_remaining"] <= 600 and p["alive"] for p in parts.values())
    assert out["config"]["partition_capacity"] == 8
    # a partition whose lease ran out reads as expired
    bus.partition_leases("small")[0].renew(ttl=0.05)
    time.sleep(0.1)
    parts = {p["partition"]: p for p in run_json("describe", where(bus), "small")["partitions"]}
    assert parts[0]["alive"] is False and parts[0]["ttl_remaining"] == 0.0
    assert parts[1]["alive"] is True
    table = run("describe", where(bus), "small")
    assert table.exit_code == 0 and "expired" in table.stdout and "lost to overwrite 12" in table.stdout


# ---- groups -------------------------------------------------------------------------------------
def test_groups_should_show_assignments_lag_and_stale_members(bus):
    bus.create("jobs", TopicConfig(4, 64, 256))
    prod = Producer("jobs").with_partitioner(Partitioner.RoundRobin)
    for i in range(40):
        prod.send(bus, b"job%d" % i)
    store = bus_store(bus)
    g = ConsumerGroup("crew", "jobs", 4, 10.0, mgr=bus)
    g.claim("fresh")
    g.claim("old")
    mine = g.claim("fresh")                        # gives back half to "old"
    assert g.claim("old") == [2, 3] and mine == [0, 1]
    g.heartbeat("old", now=time.time() - 60)      # ... then never heard from again
    c = g.consumer("fresh")
    c.assign(mine)
    c.seek(bus, store, SeekPolicy.Committed)
    got = c.poll(bus, 7)
    c.commit(store)
    store.commit("plain", "jobs", 0, 3)            # a group with offsets only

    out = run_json("groups", where(bus))
    rows = {(r["group"], r["topic"]): r for r in out["groups"]}
    crew = rows[("crew", "jobs")]
    assert crew["stale_members"] == ["old"]
    assigned = {p["partition"]: p["owner"] for p in crew["partitions"] if p["owner"]}
    assert assigned == g.assignments()
    assert crew["lag"] == 40 - len(got) == sum(g.lag(bus, store).values())
    members = {m["name"]: m for m in crew["members"]}
    assert members["old"]["stale"] is True and members["fresh"]["stale"] is False
    assert members["fresh"]["partitions"] == mine
    plain = rows[("plain", "jobs")]
    assert plain["members"] == [] and plain["partitions"][0]["committed"] == 3
    assert plain["lag"] == 40 - 3
    # --topic filters; the table names the stale member
    assert run_json("groups", where(bus), "--topic", "other")["groups"] == []
    table = run("groups", where(bus))
    assert table.exit_code == 0 and "crew" in table.stdout and "stale: old" in table.stdout


# ---- produce / tail -------------------------------------------------------------------------------
def test_produce_should_send_each_line_of_stdin(bus):
    bus.create("lines", TopicConfig(3, 64, 256))
    out = run_json("produce", where(bus), "lines", input="alpha\nbeta\n\ngamma\r\n")
    assert out["sent"] == 4
    assert sorted(v for _, _, v in read_all(bus, "lines")) == [b"", b"alpha", b"beta", b"gamma"]

    r = run("produce", where(bus), "lines", "--key", "user-7", input="x\ny\n")
    assert r.exit_code == 0 and "sent 2" in r.stderr
    want = kafka_partition(b"user-7", 3)
    assert [(p, k) for p, k, v in read_all(bus, "lines") if v in (b"x", b"y")] == [(want, b"user-7")] * 2

    r = run("produce", where(bus), "lines", "--key-separator", ":", input="k1:v:1\n")
    assert r.exit_code == 0
    assert (kafka_partition(b"k1", 3), b"k1", b"v:1") in read_all(bus, "lines")


def test_produce_should_fail_cleanly(bus):
    bus.create("tiny", TopicConfig(1, 8, 64))
    before = read_all(bus, "tiny")
    r = run("produce", where(bus), "tiny", input="ok\n" + "x" * 1000 + "\n")
    assert r.exit_code == 1
    assert "1000" in r.stderr and "after 1 message" in r.stderr
    assert len(read_all(bus, "tiny")) == len(before) + 1
    r = run("produce", where(bus), "nosuch", input="x\n")
    assert r.exit_code == 1 and "nosuch" in r.stderr
    assert bus.topics() == ["tiny"]
    r = run("produce", where(bus), "tiny", "--key", "a", "--key-separator", ":", input="x\n")
    assert r.exit_code == 2
    r = run("produce", where(bus), "tiny", "--key-separator", ":", input="no separator\n")
    assert r.exit_code == 1 and "separator" in r.output


def test_tail_should_print_from_the_beginning_up_to_max(bus):
    bus.create("log", TopicConfig(2, 64, 256))
    prod = Producer("log")
    sent = [prod.send_keyed(bus, b"k", b"line %d" % i) for i in range(6)]
    part = sent[0][0]
    r = run("tail", where(bus), "log", "--from-beginning", "-n", "4")
    assert r.exit_code == 0
    assert r.stdout.splitlines() == [f"{part}:{i}\tk\tline {i}" for i in range(4)]
    r = run("tail", where(bus), "log", "--from-beginning", "--timeout", "0.3", "--json")
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["partition"], x["offset"], x["key"], x["value"]) for x in rows] == \
        [(part, i, "k", f"line {i}") for i in range(6)]
    # nothing new arrives: without --from-beginning it waits, then times out empty
    r = run("tail", where(bus), "log", "--timeout", "0.3")
    assert r.exit_code == 0 and r.stdout == ""
    # binary values survive --json as base64
    prod.send_keyed(bus, b"k", b"\xff\x00")
    r = run("tail", where(bus), "log", "--from-beginning", "-n", "7", "--json", "-p", str(part))
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["value_encoding"] == "base64" and last["value"] == "/wA="
    r = run("tail", where(bus), "log", "-p", "9", "--timeout", "0.1")
    assert r.exit_code == 1 and "partitions 0..1" in r.stderr


def test_tail_should_stream_new_messages_from_another_process(bus):
    bus.create("live", TopicConfig(2, 256, 256))
    prod = Producer("live")
    for i in range(5):
        prod.send(bus, b"old %d" % i)
    proc = subprocess.Popen([*GRAFOS, "tail", where(bus),
                             "live", "-n", "3", "--json", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        i = 0
        while proc.poll() is None:                  # keep producing until tail has seen 3
            assert time.monotonic() < deadline, "tail never printed 3 messages"
            prod.send(bus, b"new %d" % i)
            i += 1
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    values = [json.loads(line)["value"] for line in out.splitlines()]
    assert len(values) == 3
    assert all(v.startswith("new ") for v in values)  # started at the end: nothing old


# ---- exit codes and attaching ----------------------------------------------------------------------
def test_inspecting_should_never_create_a_bus(shm_name):
    for args in (["topics", shm_name], ["describe", shm_name, "t"], ["groups", shm_name],
                 ["tail", shm_name, "t", "--timeout", "0.1"]):
        r = run(*args)
        assert r.exit_code == 1, args
        assert "no bus named" in r.stderr
    r = run("produce", shm_name, "t", input="x\n")
    assert r.exit_code == 1
    assert not Fabric.exists(shm_name)


def test_exit_codes_of_the_real_program(bus):
    bus.create("t", TopicConfig(1, 16, 128))
    name = where(bus)

    def grafos(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*GRAFOS, *args],
                              capture_output=True, text=True, timeout=60)

    ok = grafos("topics", name, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["topics"][0]["topic"] == "t"
    missing_topic = grafos("describe", name, "nope")
    assert missing_topic.returncode == 1 and "no topic 'nope'" in missing_topic.stderr
    assert grafos("describe", name).returncode == 2                 # missing argument
    assert grafos("describe", name, "bad/name").returncode == 2     # invalid topic name
    assert grafos("tail", name, "t", "-n", "0").returncode == 2


def test_should_inspect_a_file_backed_bus(tmp_path):
    path = str(tmp_path / "bus.grafos")
    with TopicManager.open(path=path, size=32 << 20) as mgr:
        mgr.create("f", TopicConfig(1, 16, 128))
        Producer("f").send(mgr, b"on disk")
        out = run_json("topics", path)
        assert [t["topic"] for t in out["topics"]] == ["f"]
        r = run("tail", path, "f", "--from-beginning", "-n", "1")
        assert r.stdout.strip() == "0:0\ton disk"
    assert run("topics", str(tmp_path / "absent.grafos")).exit_code == 1
    assert not os.path.exists(tmp_path / "absent.grafos")


def test_a_command_module_that_fails_to_import_should_stop_grafos_naming_it():
    # grafos.benchsuite unimportable (None in sys.modules): the bench command cannot load
    code = ("import sys; sys.modules['grafos.benchsuite'] = None\n"
            "from grafos.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "grafos.cli.bench failed to import" in r.stderr and "grafos.benchsuite" in r.stderr
    assert "CommandModuleError" in r.stderr


def test_describe_and_groups_should_show_the_gate_of_a_blocking_topic(shm_name):
    bus = TopicManager.open(shm_name, size=64 << 20)      # the gate belongs to the shared-memory rings
    bus.create("jobs", TopicConfig(1, 8, 128, 600.0, on_full="block"))
    g = ConsumerGroup("workers", "jobs", 1, 0.5, mgr=bus)
    g.claim("w1")
    g.commit(FabricOffsetStore(bus), "w1", "jobs", {0: 0})
    p = Producer("jobs", timeout=0.05)
    for i in range(8):
        p.send(bus, b"%d" % i)
    with pytest.raises(Exception, match="no room"):
        p.send(bus, b"x")
    d = run_json("describe", shm_name, "jobs")
    part = d["partitions"][0]
    assert d["config"]["on_full"] == "block"
    assert (part["gate"], part["gate_held_by"], part["full_raised"]) == (8, "g:workers", 1)
    assert part["blocked_secs"] >= 0.05
    text = run("describe", shm_name, "jobs").output
    assert "when full: block" in text
    time.sleep(0.6)                          # the group goes stale: released
    d = run_json("describe", shm_name, "jobs")
    assert d["partitions"][0]["gate"] == 0
    assert [r["live"] for r in d["partitions"][0]["gating"]] == [False]
    rows = run_json("groups", shm_name)["groups"]
    assert [p["gating"] for p in rows[0]["partitions"]] == ["released"]
    assert "released" in run("groups", shm_name).output
    bus.close()
