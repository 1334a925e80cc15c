"""The consumer's contract on every backend: what lost() says, overwritten
commits, consumers nobody assigned or positioned, and the gate of a "block"
topic (or its clear refusal where the backend does not gate)."""
from __future__ import annotations

import pytest

from grafos.errors import BufferFull, InvalidArgument, OffsetOutOfRange, Unsupported
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig

CAP = 8


def _topic(bus, name: str, partitions: int = 1, on_full: str = "overwrite") -> None:
    bus.mgr.create(name, TopicConfig(num_partitions=partitions, partition_capacity=CAP, partition_stride=256,
                                     on_full=on_full))


def _send(bus, name: str, n: int, partitions: int = 1) -> None:
    prod = Producer(name).with_partitioner(Partitioner.RoundRobin)
    for i in range(n * partitions):
        prod.send(bus.mgr, b"%d" % i)


def _drain(bus, c, n: int) -> list:
    """Poll until ``n`` messages came (a server bus may hand them out over several polls)."""
    import time
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += c.poll(bus.mgr, 100, timeout=0.5)
    return got


def test_lost_lists_only_partitions_that_lost_something(bus):
    _topic(bus, "conf-lost", partitions=2)
    c = Consumer("conf-lost", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    assert c.lost() == {}
    _send(bus, "conf-lost", 3, partitions=2)
    assert len(_drain(bus, c, 6)) == 6
    assert c.lost() == {}                    # an empty dict is "nothing lost"
    c.close()


def _overwritten(bus, name: str) -> object:
    """Group g committed offset 5 of partition 0, then the ring moved on to 17..24."""
    _topic(bus, name)
    store = bus.store()
    _send(bus, name, 5)
    store.commit("g", name, 0, 5)
    _send(bus, name, 20)
    return store


@pytest.mark.parametrize("on_lost", ["earliest", "latest"])
def test_a_committed_offset_the_ring_overwrote_is_counted_in_lost(bus, on_lost):
    store = _overwritten(bus, "conf-over")
    c = Consumer("conf-over", "g", **({} if on_lost == "earliest" else {"on_lost": on_lost}))   # the default
    c.assign([0])
    c.seek(bus.mgr, store, SeekPolicy.Committed)
    assert c.lost() == {0: 12}               # offsets 5..16 were overwritten before the group read them
    c.seek(bus.mgr, store, SeekPolicy.Committed)
    assert c.lost() == {0: 12}               # the same commit again: nothing more was lost
    if on_lost == "earliest":
        assert [m.offset for _, m in _drain(bus, c, 8)] == list(range(17, 25))
    else:
        assert c.poll(bus.mgr, 100, timeout=0.5) == [] and c.position(0) == 25
    assert c.lost() == {0: 12}
    d = ConsumerGroup("g", "conf-over", 1, 30, mgr=bus.mgr).describe(bus.mgr, store)
    assert (d.partitions[0].lost, d.lost) == (12, 12)     # until the group commits again
    c.commit(store)
    assert ConsumerGroup.attach(bus.mgr, "g", "conf-over").describe(bus.mgr, store).lost == 0
    c.close()


def test_on_lost_raise_names_the_partition_and_both_offsets_and_moves_nothing(bus):
    store = _overwritten(bus, "conf-raise")
    c = Consumer("conf-raise", "g", on_lost="raise")
    c.assign([0])
    c.seek(bus.mgr, SeekPolicy.Latest)
    with pytest.raises(OffsetOutOfRange) as err:
        c.seek(bus.mgr, store, SeekPolicy.Committed)
    assert (err.value.partition, err.value.committed, err.value.earliest) == (0, 5, 17)
    assert isinstance(err.value, LookupError)
    assert "partition 0" in str(err.value) and "5" in str(err.value) and "17" in str(err.value)
    assert c.position(0) == 25 and c.lost() == {}
    c.seek(bus.mgr, SeekPolicy.Earliest)     # the caller decides
    assert [m.offset for _, m in _drain(bus, c, 8)] == list(range(17, 25))
    c.close()


def test_on_lost_is_checked():
    with pytest.raises(InvalidArgument, match="on_lost"):
        Consumer("t", "g", on_lost="none")


def test_a_consumer_nobody_positioned_starts_at_the_groups_commits_and_never_rewinds_them(bus):
    _topic(bus, "conf-unassigned", partitions=2)
    _send(bus, "conf-unassigned", 4, partitions=2)
    store = bus.store()
    store.commit_many("g", "conf-unassigned", {0: 4, 1: 3})
    c = Consumer("conf-unassigned", "g")      # never assigned, never sought: every partition
    got = c.poll(bus.mgr, 100, timeout=0.5)
    assert [(p, m.offset) for p, m in got] == [(1, 3)]
    c.commit(store)
    assert (store.committed("g", "conf-unassigned", 0), store.committed("g", "conf-unassigned", 1)) == (4, 4)
    c.close()


def test_a_batch_poll_of_a_consumer_nobody_positioned_starts_at_the_groups_commits(bus):
    _topic(bus, "conf-batch", partitions=2)
    _send(bus, "conf-batch", 4, partitions=2)
    bus.store().commit_many("g", "conf-batch", {0: 4, 1: 2})
    c = Consumer("conf-batch", "g")
    offsets: list[int] = []
    for _ in range(20):
        offsets += [int(o) for o in c.poll_batch(bus.mgr, 100, timeout=0.5).offsets]
        if len(offsets) >= 2:
            break
    assert sorted(offsets) == [2, 3] and c.positions() == {0: 4, 1: 4}
    c.close()


def test_a_commit_never_moves_another_stores_offsets_back_without_a_seek(bus):
    _topic(bus, "conf-rewind", partitions=2)
    _send(bus, "conf-rewind", 4, partitions=2)
    mem = MemOffsetStore()
    mem.commit_many("g", "conf-rewind", {0: 4, 1: 4})
    c = Consumer("conf-rewind", "g")          # the bus has no commits of g: it starts at 0
    got: list = []
    for _ in range(20):
        got += c.poll(bus.mgr, 3 - len(got), timeout=0.5)
        if len(got) == 3:
            break
    assert len(got) == 3
    with pytest.raises(InvalidArgument, match="back from 4"):
        c.commit(mem)
    assert (mem.committed("g", "conf-rewind", 0), mem.committed("g", "conf-rewind", 1)) == (4, 4)
    c.seek(bus.mgr, SeekPolicy.Earliest)      # a rewind on purpose
    c.commit(mem)
    assert (mem.committed("g", "conf-rewind", 0), mem.committed("g", "conf-rewind", 1)) == (0, 0)
    c.close()


@pytest.mark.parametrize("on_full", ["block", "raise"])
def test_a_groups_commit_moves_its_gate_or_the_backend_refuses_gating(bus, on_full):
    if not bus.caps.gating:
        with pytest.raises(Unsupported, match="on_full"):
            _topic(bus, "conf-gate", on_full=on_full)
        assert "conf-gate" not in bus.mgr.topics()
        return
    _topic(bus, "conf-gate", on_full=on_full)
    group = ConsumerGroup("g", "conf-gate", 1, 30, mgr=bus.mgr)
    store = bus.store()
    c = Consumer("conf-gate", "g")
    c.assign(group.claim("w"))
    c.seek(bus.mgr, store, SeekPolicy.Committed)
    prod = Producer("conf-gate", timeout=0.2)
    _send(bus, "conf-gate", CAP)
    with pytest.raises(BufferFull):
        prod.send(bus.mgr, b"no room")
    assert len(c.poll(bus.mgr, 100)) == CAP
    c.commit(store)                           # the walkthrough's commit: the group's gate moves
    group.heartbeat("w")
    for i in range(CAP):
        prod.send(bus.mgr, b"room %d" % i)
    c.close()
