"""A process that owns a live named bus for the ``grafos top`` tests: topics
``orders`` (2 partitions, produced to steadily), ``audit`` (untouched) and
``orders-dlq`` (one dead letter), and the group ``billing`` whose member ``w1``
owns every partition of ``orders`` and committed 5 offsets of partition 0.
Prints ``ready`` once all of that exists, then produces until killed."""
from __future__ import annotations

import sys
import time

from grafos.mq.dlq import DlqRouter
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Partitioner, Producer
from grafos.mq.topic import TopicConfig, TopicManager


def main(name: str) -> None:
    mgr = TopicManager.open(name, size=64 << 20)
    mgr.create("orders", TopicConfig(2, 1024, 256, 600.0))
    mgr.create("audit", TopicConfig(1, 16, 128, 600.0))
    mgr.create("orders-dlq", TopicConfig(1, 64, 512, 600.0))
    prod = Producer("orders").with_partitioner(Partitioner.RoundRobin)
    for i in range(20):
        prod.send(mgr, b"order %d" % i)
    store = FabricOffsetStore(mgr)
    g = ConsumerGroup("billing", "orders", 2, 3600.0, mgr=mgr)
    g.claim("w1")
    store.commit("billing", "orders", 0, 5)
    DlqRouter("orders", "orders-dlq", 1).route_to_dlq(mgr, 0, 3, b"order 6")
    print("ready", flush=True)
    while True:              # a steady produce rate for top to measure
        prod.send(mgr, b"order")
        g.heartbeat("w1")
        time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1])
