"""``grafos metrics``: a real Prometheus endpoint over a live bus. The test
starts the command as a process on a loopback port, scrapes it over HTTP,
parses the text with prometheus_client's parser and checks every value
against what ``describe`` says about a bus with known traffic."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client")   # the "metrics" extra (.ci/run installs it)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from grafos.cli import main  # noqa: E402
from grafos.mq import (ConsumerGroup, FabricOffsetStore, Partitioner, SeekPolicy, TopicConfig,  # noqa: E402
                       TopicManager)

from helpers.bus_helpers import observed_bus  # noqa: E402

GRAFOS = [sys.executable, "-c", "from grafos.cli import main; main()"]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lb(**kw) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in kw.items()))


@pytest.fixture
def bus(shm_name):
    mgr = TopicManager.open(shm_name, size=32 << 20)
    mgr.create("events", TopicConfig(num_partitions=3, partition_capacity=16, partition_stride=128))
    mgr.create("audit", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128,
                                    retention_secs=120))
    prod = mgr.producer("events", Partitioner.RoundRobin)
    for i in range(50):                       # 17/17/16 per partition: the rings of 16 overwrite
        prod.send(b"m%d" % i)
    mgr.producer("audit").send_keyed(b"k", b"one")
    store = FabricOffsetStore(mgr)
    group = ConsumerGroup("processors", "events", 3, 30, mgr=mgr)
    owned = group.claim("worker-1")
    group.claim("ghost", now=time.time() - 100)      # a member that went silent long ago
    con = group.consumer("worker-1")
    con.assign(owned)
    con.seek(mgr, SeekPolicy.Earliest)
    con.poll(mgr, 5)
    con.commit(store)
    store.commit("auditors", "audit", 0, 1)           # a group without a ConsumerGroup
    yield shm_name, mgr, store, group
    mgr.close()


@pytest.fixture
def server(bus):
    name = bus[0]
    proc = subprocess.Popen([*GRAFOS, "metrics", name, "--port", "0", "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[1]
        yield url, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_metrics_should_match_describe_for_a_bus_with_known_traffic(bus, server):
    name, mgr, store, group = bus
    url, proc = server
    m = scrape(url)
    for topic in ("events", "audit"):
        d = mgr.describe(topic)
        for p in d.partitions:
            k = lb(topic=topic, partition=p.partition)
            assert m[("grafos_partition_produced_total", k)] == p.latest
            assert m[("grafos_partition_lost_total", k)] == p.lost
            assert m[("grafos_partition_abandoned_total", k)] == p.abandoned
            assert m[("grafos_partition_earliest_offset", k)] == p.earliest
            assert m[("grafos_partition_alive", k)] == 1
            assert 0 <= m[("grafos_partition_lease_ttl_seconds", k)] - p.ttl_remaining < 30   # scraped first
            assert m[("grafos_partition_reserved_bytes", k)] == mgr.partition_leases(topic)[p.partition].size
    assert sum(m[("grafos_partition_produced_total", lb(topic="events", partition=p))] for p in range(3)) == 50
    assert sum(m[("grafos_partition_lost_total", lb(topic="events", partition=p))] for p in range(3)) == 2
    # per group: consumed (committed past) and lag against describe
    g = group.describe(mgr, store)
    for p in g.partitions:
        k = lb(topic="events", partition=p.partition, group="processors")
        assert m[("grafos_partition_lag", k)] == p.lag
        assert m[("grafos_partition_consumed_total", k)] == (min(p.committed, p.latest) if p.committed else 0)
    assert sum(m[("grafos_partition_lag", lb(topic="events", partition=p, group="processors"))]
               for p in range(3)) == 48 - 5
    k = lb(topic="audit", partition=0, group="auditors")
    assert m[("grafos_partition_consumed_total", k)] == 1 and m[("grafos_partition_lag", k)] == 0
    gk = lb(group="processors", topic="events")
    assert m[("grafos_group_members", gk)] == len(g.members) == 2
    assert m[("grafos_group_stale_members", gk)] == 1 == len(g.stale_members)
    assert m[("grafos_group_member_heartbeat_age_seconds", lb(group="processors", topic="events",
                                                              member="ghost"))] >= 100
    owners = {dict(k)["partition"]: dict(k)["member"] for (n, k), v in m.items()
              if n == "grafos_group_partition_owner" and v == 1}
    assert owners == {str(p): o for p, o in g.assignments().items()}
    info = mgr.fabric.info()
    assert m[("grafos_fabric_reserved_bytes", ())] == info.bytes_leased
    assert m[("grafos_fabric_size_bytes", ())] == info.total_size
    assert m[("grafos_fabric_leases", ())] == info.leases_live == 4
    # a live bus: new traffic shows at the next scrape
    mgr.producer("audit").send(b"two")
    assert scrape(url)[("grafos_partition_produced_total", lb(topic="audit", partition=0))] == 2
    # stopped by its PID, it exits cleanly
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0


def test_metrics_of_a_missing_bus_should_be_an_error():
    r = subprocess.run([*GRAFOS, "metrics", "no-such-bus-here", "--port", "0"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "no bus named 'no-such-bus-here'" in r.stderr


def test_metrics_without_prometheus_client_should_say_what_to_install(monkeypatch, bus):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "grafos.metrics", raising=False)
    res = CliRunner().invoke(main, ["metrics", bus[0], "--port", "0"])
    assert res.exit_code == 1 and 'pip install "grafos[metrics]"' in res.output


def test_metrics_should_show_the_gate_and_refused_sends_of_a_full_topic():
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.exposition import generate_latest

    from grafos.errors import BufferFull
    from grafos.metrics import BusCollector
    from grafos.mq.group import ConsumerGroup
    from grafos.mq.offset import FabricOffsetStore
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicConfig, TopicManager

    mgr = TopicManager(size=16 << 20)
    mgr.create("jobs", TopicConfig(1, 8, 128, 600.0, on_full="raise"))
    g = ConsumerGroup("workers", "jobs", 1, 30.0, mgr=mgr)
    g.claim("w1")
    g.commit(FabricOffsetStore(mgr), "w1", "jobs", {0: 0})
    prod = Producer("jobs")
    for i in range(8):
        prod.send(mgr, b"%d" % i)
    for _ in range(3):
        with pytest.raises(BufferFull):
            prod.send(mgr, b"x")
    reg = CollectorRegistry()
    reg.register(BusCollector(mgr))
    got = {(s.name, s.labels.get("topic")): s.value
           for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples}
    d = mgr.describe("jobs").partitions[0]
    assert got[("grafos_partition_gate_offset", "jobs")] == d.gate == 8
    assert got[("grafos_partition_buffer_full_total", "jobs")] == d.full_raised == 3
    assert got[("grafos_partition_blocked_producers", "jobs")] == 0
    mgr.close()


def test_metrics_count_what_the_ring_overwrote_behind_a_groups_commit():
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from grafos.metrics import BusCollector
    from grafos.mq.producer import Producer

    mgr = TopicManager(size=16 << 20)
    mgr.create("jobs", TopicConfig(2, 8, 128, 600.0))
    store = FabricOffsetStore(mgr)
    store.commit_many("workers", "jobs", {0: 0, 1: 0})
    prod = Producer("jobs", partitioner=Partitioner.RoundRobin)
    for i in range(20):                       # 10 per partition into rings of 8
        prod.send(mgr, b"%d" % i)
    store.commit("workers", "jobs", 1, 10)    # p1 read it all; p0 lost 2 behind its commit
    reg = CollectorRegistry()
    reg.register(BusCollector(mgr, store))
    got = {(s.name, s.labels.get("partition"), s.labels.get("group")): s.value
           for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples}
    assert got[("grafos_partition_group_lost", "0", "workers")] == 2
    assert got[("grafos_partition_group_lost", "1", "workers")] == 0
    d = ConsumerGroup("workers", "jobs", 2, 30, mgr=mgr).describe(mgr, store)
    assert [p.lost for p in d.partitions] == [2, 0]
    mgr.close()


def test_collector_exports_producers_open_transactions_aborts_and_fencing(shm_name):
    from prometheus_client import CollectorRegistry

    from grafos.metrics import BusCollector
    mgr, prod = observed_bus(shm_name)
    reg = CollectorRegistry()
    reg.register(BusCollector(mgr))
    labels = {"topic": "out", "transactional_id": "obs"}
    assert reg.get_sample_value("grafos_producer_transaction_open", labels) == 1
    assert reg.get_sample_value("grafos_producer_transactions_aborted_total", labels) == 1
    assert reg.get_sample_value("grafos_producer_fenced_total", labels) == 1
    assert reg.get_sample_value("grafos_producer_transaction_age_seconds", labels) >= 0
    prod.close()
    mgr.close()
