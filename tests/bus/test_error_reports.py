"""Errors say what happened: a refused batch names the message and its real
size once, and Fenced carries its fields."""
from __future__ import annotations

import pickle

import pytest

from grafos import Fabric
from grafos.errors import Fenced, GrafosError, LockLost, MessageTooLarge, OffsetOutOfRange, ProducerFenced
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import MemOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition


def test_should_name_the_message_once_and_its_real_size_when_a_batch_message_is_too_large():
    with Fabric(8 << 20) as fab:
        p = Partition.create(fab, 16, 128, ttl=60)
        vals = [b"a", b"b", b"x" * 3000, b"c"]       # the ring holds 16 x 128 B
        with pytest.raises(MessageTooLarge) as ei:
            p.append_batch(vals)
        msg = str(ei.value)
        assert msg.startswith("batch message 2: message of 3000 bytes"), msg
        assert msg.count("batch message") == 1
        assert ei.value.size == 3000 and ei.value.room == p.max_message
        assert p.latest() == 0            # all or nothing


def test_should_name_the_message_once_when_a_producer_batch_is_too_large():
    mgr = TopicManager(size=16 << 20)
    mgr.create("t", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128))
    with pytest.raises(MessageTooLarge) as ei:
        Producer("t").send_batch(mgr, [b"a", b"y" * 2500, b"b"])
    assert "batch message 1: message of 2500 bytes" in str(ei.value)
    assert str(ei.value).count("batch message") == 1
    assert ei.value.size == 2500


def test_should_carry_group_topic_member_and_partitions_when_fenced():
    mgr = TopicManager(size=16 << 20)
    mgr.create("t", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128))
    g = ConsumerGroup("g", "t", 2, 0.5)
    assert g.claim("a", now=100.0) == [0, 1]
    g.claim("b", now=101.0)               # a is stale by then: b takes both
    with pytest.raises(Fenced) as ei:
        g.commit(MemOffsetStore(), "a", "t", {0: 1, 1: 1})
    e = ei.value
    assert (e.group, e.topic, e.member, e.partitions) == ("g", "t", "a", [0, 1])
    assert e.owners == {0: "b", 1: "b"} and e.committed == {}
    assert "'a'" in str(e) and "'g'" in str(e) and "[0, 1]" in str(e)
    back = pickle.loads(pickle.dumps(e))
    assert (back.group, back.member, back.partitions, back.owners, str(back)) == \
        (e.group, e.member, e.partitions, e.owners, str(e))
    assert isinstance(back, GrafosError)


def test_should_build_its_own_message_when_fenced_is_made_from_fields():
    e = Fenced(group="g", topic="t", member="m", partitions=[3, 1], owners={1: None, 3: "x"})
    assert e.partitions == [1, 3] and "no longer owns partition(s) [1, 3]" in str(e)


@pytest.mark.parametrize("err, fields", [
    (ProducerFenced(transactional_id="tx", topic="t", epoch=2, current_epoch=3),
     ("transactional_id", "topic", "epoch", "current_epoch")),
    (OffsetOutOfRange(topic="t", group="g", partition=1, committed=5, earliest=9),
     ("topic", "group", "partition", "committed", "earliest")),
    (LockLost("settled too late", group="g", topic="t", member="m"), ("group", "topic", "member")),
])
def test_should_keep_class_message_and_fields_when_an_error_with_fields_is_pickled(err, fields):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert [getattr(back, f) for f in fields] == [getattr(err, f) for f in fields]
