"""A creator killed at any point of fabric creation or topic creation leaves a
state the next process repairs or redoes by itself. The creator runs in a
child process that the core (or the topic module) makes _exit at point K."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from grafos import Fabric
from grafos._native import lib
from grafos.errors import CorruptFabric
from grafos.fabric import shm_path
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

FABRIC_POINTS = {
    "file made": lib.GF_FAULT_CREATE_OPENED,
    "file sized": lib.GF_FAULT_CREATE_SIZED,
    "tables mapped": lib.GF_FAULT_CREATE_MAPPED,
    "header half written": lib.GF_FAULT_CREATE_HALF,
}

DIE_CREATING_FABRIC = textwrap.dedent("""
    import sys
    from grafos import Fabric
    from grafos._native import lib
    name, point = sys.argv[1], int(sys.argv[2])
    lib.gf_test_fault(point, lib.GF_FAULT_EXIT)
    Fabric.open(name, size=8 << 20)
    sys.exit(0)      # not reached: the core exits at the point
""")

DIE_CREATING_TOPIC = textwrap.dedent("""
    import sys
    from grafos.mq import topic
    from grafos.mq.topic import TopicConfig, TopicManager
    path, point = sys.argv[1], sys.argv[2]
    mgr = TopicManager.open(path=path, size=16 << 20)
    topic._FAULT_AT = point
    mgr.create("t", TopicConfig(num_partitions=3, partition_capacity=64, partition_stride=128))
    sys.exit(0)      # not reached
""")

CFG = TopicConfig(num_partitions=3, partition_capacity=64, partition_stride=128)


def _roundtrip(mgr: TopicManager) -> None:
    if not mgr.exists("t"):
        mgr.create("t", CFG)
    prod = Producer("t")
    for i in range(6):
        prod.send(mgr, b"m-%d" % i)
    c = Consumer("t", "g")
    c.seek(mgr, None, SeekPolicy.Earliest)
    assert sorted(m.value for _, m in c.poll(mgr, 100)) == [b"m-%d" % i for i in range(6)]


@pytest.mark.parametrize("point", list(FABRIC_POINTS.values()), ids=list(FABRIC_POINTS))
def test_should_make_the_fabric_again_when_its_creator_died_at_point(shm_name, point):
    res = subprocess.run([sys.executable, "-c", DIE_CREATING_FABRIC, shm_name, str(point)], timeout=60)
    assert res.returncode == 77
    assert Fabric.exists(shm_name)                       # the creator left its file behind
    with TopicManager.open(shm_name) as mgr:             # the next open just works
        assert mgr.fabric.info().created                 # ... by making it again
        _roundtrip(mgr)
    with TopicManager.open(shm_name, create=False) as again:
        assert again.topics() == ["t"]


def test_should_say_how_to_recover_when_an_attach_only_open_finds_an_abandoned_fabric(shm_name):
    res = subprocess.run([sys.executable, "-c", DIE_CREATING_FABRIC, shm_name,
                          str(lib.GF_FAULT_CREATE_HALF)], timeout=60)
    assert res.returncode == 77
    with pytest.raises(CorruptFabric, match="create=True"):
        Fabric.open(shm_name, create=False)
    with Fabric.open(shm_name, size=8 << 20) as fab:      # which then works
        assert fab.info().created


def test_should_not_make_it_again_over_data_when_a_fabric_with_contents_is_not_ready(shm_name):
    with TopicManager.open(shm_name, size=8 << 20) as mgr:
        mgr.create("t", CFG)
    with open(shm_path(shm_name), "r+b") as f:            # the ready word lost, tables full
        f.seek(60)
        f.write(b"\0\0\0\0")
    with pytest.raises(CorruptFabric, match="holds data"):
        Fabric.open(shm_name, size=8 << 20)


@pytest.mark.parametrize("point", ["pending", "lease", "refs"])
def test_should_create_the_topic_when_its_creator_died_at_point(tmp_path, point):
    path = str(tmp_path / "bus.grafos")
    res = subprocess.run([sys.executable, "-c", DIE_CREATING_TOPIC, path, point], timeout=60)
    assert res.returncode == 77
    with TopicManager.open(path=path, create=False) as mgr:
        assert mgr.topics() == [] and not mgr.exists("t")    # a half-made topic is no topic
        mgr.create("t", CFG)                                   # and the name is free
        assert len(mgr.fabric.leases()) == 3                   # the dead creator's leases are gone
        _roundtrip(mgr)


DIE_RESTARTING_TOPIC = textwrap.dedent("""
    import sys, time
    from grafos.mq import topic
    from grafos.mq.topic import TopicManager
    path = sys.argv[1]
    mgr = TopicManager.open(path=path, create=False)
    later = time.time() + 7200            # past the topic's hour of retention
    mgr.fabric.reap(now=later)
    topic._FAULT_AT = "restart-lease"     # dies holding a fresh lease it never recorded
    mgr.restart("t", now=later)
    sys.exit(0)      # not reached
""")


def test_should_release_the_unrecorded_lease_when_a_restart_died_half_way(tmp_path):
    path = str(tmp_path / "bus.grafos")
    with TopicManager.open(path=path, size=16 << 20) as mgr:
        mgr.create("t", CFG)
    res = subprocess.run([sys.executable, "-c", DIE_RESTARTING_TOPIC, path], timeout=60)
    assert res.returncode == 77
    with TopicManager.open(path=path, create=False) as mgr:
        assert len(mgr.fabric.leases()) == 1           # the orphan the dead restart took
        mgr.restart("t")
        assert len(mgr.fabric.leases()) == 3           # one per partition, the orphan released
        _roundtrip(mgr)
