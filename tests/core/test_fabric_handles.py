"""Two handles on one named fabric in one process share the metadata lock."""
from __future__ import annotations

import threading
import uuid

import pytest

from grafos.fabric import Fabric
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.topic import TopicConfig, TopicManager


@pytest.fixture
def bus_name():
    name = "test-handles-" + uuid.uuid4().hex[:10]
    yield name
    Fabric.unlink(name)


def test_should_nest_locks_of_two_handles_on_one_file(bus_name):
    a = Fabric.open(bus_name, size=8 << 20)
    b = Fabric.open(bus_name, create=False)
    with a.locked(timeout=1.0):
        b.meta_put("k", b"from-b")           # takes b's lock inside a's: must not time out
        with b.locked(timeout=1.0):
            assert a.meta_get("k") == b"from-b"
    # and both are free again: another thread can take them
    done = []
    t = threading.Thread(target=lambda: done.append(b.meta_get("k")))
    t.start()
    t.join(5)
    assert done == [b"from-b"]
    a.close()
    b.close()


def test_should_serialise_threads_using_different_handles(bus_name):
    a = Fabric.open(bus_name, size=8 << 20)
    b = Fabric.open(bus_name, create=False)
    a.meta_put("n", b"0")

    def bump(f: Fabric) -> None:
        for _ in range(200):
            with f.locked():
                n = int(f.meta_get("n"))
                f.meta_put("n", b"%d" % (n + 1))

    threads = [threading.Thread(target=bump, args=(f,)) for f in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert int(a.meta_get("n")) == 800     # no lost update: the lock excluded every pair


def test_should_commit_through_store_on_another_handle(bus_name):
    m1 = TopicManager.open(bus_name, size=16 << 20)
    m2 = TopicManager.open(bus_name)
    m1.create("t", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128))
    store = FabricOffsetStore(m2)
    with m1.fabric.locked():
        store.commit("g", "t", 1, 0)
    assert FabricOffsetStore(m1).committed("g", "t", 1) == 0
    m1.close()
    m2.close()


def test_should_tell_handles_of_one_bus_from_handles_of_another(bus_name, tmp_path):
    a = Fabric.open(bus_name, size=8 << 20)
    b = Fabric.open(bus_name, create=False)
    f = Fabric.open(path=str(tmp_path / "bus"), size=8 << 20)
    g = Fabric.open(path=str(tmp_path / "bus"), create=False)
    here, there = Fabric(8 << 20), Fabric(8 << 20)
    try:
        assert a.same_bus(b) and b.same_bus(a) and a.same_bus(a) and f.same_bus(g)
        assert not a.same_bus(f) and not f.same_bus(a)
        assert here.same_bus(here) and not here.same_bus(there) and not here.same_bus(a)
        assert not a.same_bus(here)
    finally:
        for h in (a, b, f, g, here, there):
            h.close()
