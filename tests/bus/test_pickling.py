"""Handles cross process boundaries by name: a TopicManager, Producer, Consumer
and ConsumerGroup of a named or file bus pickle to its name or path and attach
again in the child, under every multiprocessing start method; an in-process
bus refuses with a message naming the fix, and a fork child that uses its
parent's in-process manager gets a clear error instead of a deadlock."""
from __future__ import annotations

import multiprocessing as mp
import pickle
import threading

import pytest

from grafos.errors import NotPortable
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.pickle_helpers import produce_and_consume, use_parents_manager

CFG = TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=128)
METHODS = ["spawn", "forkserver", "fork"]


def _bus(kind: str, shm_name: str, tmp_path) -> TopicManager:
    if kind == "named":
        return TopicManager.open(shm_name, size=16 << 20)
    return TopicManager.open(path=str(tmp_path / "bus.grafos"), size=16 << 20)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["named", "file"])
def test_should_reattach_in_the_child_when_handles_are_pickled(method, kind, shm_name, tmp_path):
    mgr = _bus(kind, shm_name, tmp_path)
    try:
        mgr.create("t", CFG)
        prod = Producer("t").with_partitioner(Partitioner.RoundRobin)
        group = ConsumerGroup("g", "t", 2, 30, mgr=mgr)
        cons = group.consumer("child")
        ctx = mp.get_context(method)
        out = ctx.Queue()
        p = ctx.Process(target=produce_and_consume, args=(mgr, prod, cons, group, out))
        p.start()
        res = out.get(timeout=120)
        p.join(60)
        assert p.exitcode == 0
        assert res[0] == "ok", res
        _, child_kind, got, owned, assigned = res
        assert child_kind == kind
        assert got == sorted(b"child-%d" % i for i in range(5))
        assert owned == [0, 1] and assigned == [0, 1]
        # what the child did is on the parent's bus: its messages, claims and commits
        assert mgr.describe("t").produced == 5
        assert group.assignments() == {0: "child", 1: "child"}
        d = group.describe(mgr, FabricOffsetStore(mgr))
        assert d.lag == 0
    finally:
        mgr.close()


def test_should_keep_settings_when_producer_and_consumer_are_pickled():
    prod = pickle.loads(pickle.dumps(Producer("t", Partitioner.RoundRobin)))
    assert (prod.topic, prod.partitioner) == ("t", Partitioner.RoundRobin)
    c = Consumer("t", "g", max_batch=7)
    c.assign([1, 3])
    c2 = pickle.loads(pickle.dumps(c))
    assert (c2.topic, c2.group, c2.max_batch, c2.assignment()) == ("t", "g", 7, [1, 3])


def test_should_name_the_fix_when_an_in_process_bus_is_pickled():
    mgr = TopicManager(size=8 << 20)
    with pytest.raises(NotPortable, match=r"TopicManager\.open\(name\).*path="):
        pickle.dumps(mgr)
    with pytest.raises(TypeError):               # NotPortable is also a TypeError
        pickle.dumps(mgr.fabric)
    with pytest.raises(NotPortable, match="mgr=TopicManager.open"):
        pickle.dumps(ConsumerGroup("g", "t", 2, 30))      # state kept in this object


def test_should_raise_not_deadlock_when_a_fork_child_uses_the_parents_in_process_manager():
    mgr = TopicManager(size=8 << 20)
    held, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with mgr.fabric.locked():            # a parent thread holds the lock at the fork
            held.set()
            release.wait(30)

    th = threading.Thread(target=hold_lock)
    th.start()
    held.wait(10)
    try:
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        p = ctx.Process(target=use_parents_manager, args=(mgr, out))
        p.start()
        res = out.get(timeout=30)           # a deadlocked child would never answer
        p.join(30)
    finally:
        release.set()
        th.join()
    assert res[0] == "error" and res[1] == "NotPortable", res
    assert "TopicManager.open(name)" in res[2]
    mgr.create("from-parent", CFG)          # the parent's manager is untouched


@pytest.mark.parametrize("kind", ["named", "file"])
def test_bound_handles_should_cross_with_their_bus_and_stay_bound(kind, shm_name, tmp_path):
    mgr = _bus(kind, shm_name, tmp_path)
    try:
        mgr.create("t", CFG)
        prod = pickle.loads(pickle.dumps(mgr.producer("t", partitioner=Partitioner.RoundRobin, timeout=2.0)))
        con = pickle.loads(pickle.dumps(mgr.consumer("t", group="g", isolation="read_committed")))
        assert (prod.partitioner, prod.timeout, con.isolation) == (Partitioner.RoundRobin, 2.0, "read_committed")
        prod.send(b"sent without a manager")
        con.seek(SeekPolicy.Earliest)
        assert [m.value for _, m in con.poll(10)] == [b"sent without a manager"]
        assert mgr.describe("t").produced == 1          # the same bus, attached again
        prod.mgr.close()
        con.mgr.close()
    finally:
        mgr.close()


def test_bound_handles_of_an_in_process_bus_should_refuse_to_cross():
    with TopicManager() as mgr:
        mgr.create("t", CFG)
        for handle in (mgr.producer("t"), mgr.consumer("t")):
            with pytest.raises(NotPortable):
                pickle.dumps(handle)
