"""Handles as Python users expect them on every backend: a closed consumer
refuses to poll (as a closed file refuses to read), and a seek policy may be
given by its name."""
from __future__ import annotations

import pytest

from grafos.errors import Closed, InvalidArgument
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig


def _topic(bus, name: str, n: int) -> None:
    bus.mgr.create(name, TopicConfig(num_partitions=1, partition_capacity=16, partition_stride=256))
    prod = Producer(name)
    for i in range(n):
        prod.send(bus.mgr, b"%d" % i)


def test_a_closed_consumer_refuses_every_read_and_names_itself(bus):
    _topic(bus, "conf-closed", 3)
    c = Consumer("conf-closed", "readers")
    c.seek(bus.mgr, "earliest")
    assert c.poll(bus.mgr, 1, timeout=2.0)
    c.close()
    for read in (lambda: c.poll(bus.mgr, 10), lambda: c.poll(bus.mgr, 10, timeout=0.1),
                 lambda: c.seek(bus.mgr, "earliest"), lambda: c.seek_partition(bus.mgr, 0, 0)):
        with pytest.raises(Closed, match="'conf-closed' in group 'readers' is closed"):
            read()
    with pytest.raises(ValueError):       # Python's closed-file convention
        c.poll(bus.mgr, 10)


def test_seek_takes_a_policy_by_name_and_names_a_wrong_one(bus):
    _topic(bus, "conf-seek-name", 3)
    c = Consumer("conf-seek-name", "g")
    c.seek(bus.mgr, "Earliest")
    got: list = []
    for _ in range(20):
        got += c.poll(bus.mgr, 10, timeout=0.5)
        if len(got) == 3:
            break
    assert [m.value for _, m in got] == [b"0", b"1", b"2"]
    c.seek(bus.mgr, "latest")
    assert c.poll(bus.mgr, 10, timeout=0.2) == []
    with pytest.raises(InvalidArgument, match="no seek policy 'earlist'.*'earliest'"):
        c.seek(bus.mgr, "earlist")
    c.close()
