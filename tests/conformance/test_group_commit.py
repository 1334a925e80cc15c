"""A group's fenced commit through the bus's own offset store: the ownership
check and the write are one step, whoever else wrote the group's records
in between."""
from __future__ import annotations

import pytest

from grafos.errors import Fenced
from grafos.mq.group import ConsumerGroup
from grafos.mq.topic import TopicConfig

T0 = 1_000_000.0
STALE = 30.0


def _groups(bus):
    bus.mgr.create("events", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=128))
    other = bus.attach()
    ga = ConsumerGroup("workers", "events", 2, STALE, mgr=bus.mgr)
    gb = ConsumerGroup("workers", "events", 2, STALE, mgr=other)
    return ga, gb, bus.store(), bus.store(other)


def test_a_member_taken_over_after_its_commits_is_fenced_and_keeps_what_it_committed(bus):
    ga, gb, sa, sb = _groups(bus)
    assert ga.claim("a", now=T0) == [0, 1]
    for off in (1, 2):              # a second commit starts from the member's own last write
        assert ga.commit(sa, "a", "events", {0: off, 1: off}, now=T0) == {0: off, 1: off}
    assert gb.claim("b", now=T0 + STALE + 1) == [0, 1]
    with pytest.raises(Fenced) as ei:
        ga.commit(sa, "a", "events", {0: 5, 1: 5}, now=T0 + STALE + 1)
    assert ei.value.partitions == [0, 1]
    assert ei.value.committed == {}
    assert ei.value.owners == {0: "b", 1: "b"}
    assert [sb.committed("workers", "events", p) for p in (0, 1)] == [2, 2]
    assert gb.commit(sb, "b", "events", {0: 3}, now=T0 + STALE + 1) == {0: 3}
    assert [sa.committed("workers", "events", p) for p in (0, 1)] == [3, 2]


def test_a_commit_lands_when_another_member_wrote_the_group_since(bus):
    ga, gb, sa, sb = _groups(bus)
    ga.claim("a", now=T0)
    gb.claim("b", now=T0)
    mine = ga.heartbeat("a", now=T0 + 1)        # a gives one partition back to b
    theirs = gb.claim("b", now=T0 + 1)
    assert len(mine) == 1 and theirs and mine != theirs
    ga.commit(sa, "a", "events", {mine[0]: 4}, now=T0 + 1)
    gb.heartbeat("b", now=T0 + 2)               # b writes the group's records
    gb.commit(sb, "b", "events", {theirs[0]: 7}, now=T0 + 2)
    assert ga.commit(sa, "a", "events", {mine[0]: 5}, now=T0 + 2) == {mine[0]: 5}
    assert sb.committed("workers", "events", mine[0]) == 5
    assert sa.committed("workers", "events", theirs[0]) == 7
    with pytest.raises(Fenced) as ei:           # and the rule still holds for what a does not own
        ga.commit(sa, "a", "events", {mine[0]: 6, theirs[0]: 9}, now=T0 + 2)
    assert ei.value.partitions == theirs and ei.value.committed == {mine[0]: 6}
    assert [sb.committed("workers", "events", p) for p in (mine[0], theirs[0])] == [6, 7]
