"""Each backend of the conformance suite is the bus it says it is, and says
what it can do in one place."""
from __future__ import annotations

import time

import pytest

from grafos.errors import LeaseExpired
from grafos.mq.topic import Capabilities, TopicConfig


def test_each_backend_should_round_trip_a_message_and_name_its_capabilities(bus):
    assert isinstance(bus.caps, Capabilities)
    assert bus.caps.shared_memory == bus.shared_memory
    bus.mgr.create("conf-rt", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=256))
    other = bus.attach()
    assert "conf-rt" in other.topics()
    from grafos.mq.consumer import Consumer, SeekPolicy
    from grafos.mq.producer import Producer
    p, off = Producer("conf-rt").send_keyed(bus.mgr, b"k", b"v")
    c = Consumer("conf-rt", "g")
    c.assign([p])
    c.seek(other, bus.store(other), SeekPolicy.Earliest)
    got = c.poll(other, 10, timeout=5.0)
    assert [(q, m.offset, m.value) for q, m in got] == [(p, off, b"v")]
    c.close()


def test_partition_leases_should_name_a_reclaimed_partition_rather_than_hand_out_none(bus):
    mgr = bus.mgr
    mgr.create("brief", TopicConfig(num_partitions=2, partition_capacity=8, partition_stride=128,
                                    retention_secs=60))
    leases = mgr.partition_leases("brief")
    assert [lease.expired() for lease in leases] == [False, False]
    leases[1].renew(ttl=0.2)
    time.sleep(0.4)
    if mgr.capabilities.shared_memory:
        mgr.fabric.reap()                           # the region goes back: partition 1 has no lease
    mgr.refresh("brief")
    with pytest.raises(LeaseExpired, match="'brief' partition 1 has expired; restart the topic"):
        mgr.partition_leases("brief")
    mgr.restart("brief")
    assert [lease.expired() for lease in mgr.partition_leases("brief")] == [False, False]
