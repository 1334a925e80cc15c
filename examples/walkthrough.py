"""The walkthrough of grafos, on an in-process bus.

    python examples/walkthrough.py        # or: grafos demo

Topics with retention by lease, keyed producing, a consumer group with
committed offsets, heartbeats, failover and fencing, poison messages routed
to a dead-letter topic, lease renewal ticks, and a look inside. The code is
in the package (``grafos/demo.py``) so that ``grafos demo`` works from an
installed copy; read it there. The core of it, in short::

    mgr = TopicManager()
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=64,
                                     partition_stride=512, retention_secs=3600))
    mgr.create("events-dlq", TopicConfig(num_partitions=1, partition_capacity=16))

    renewals = RenewalManager(mgr, topic="events")
    for i in range(4):
        renewals.register(i, now + retention_secs, RenewalPolicy())

    prod = Producer("events").with_partitioner(Partitioner.KeyHash)
    prod.send_keyed(mgr, b"user-1", b"order-1")

    group = ConsumerGroup("processors", "events", 4, 30)
    store = MemOffsetStore()
    dlq = DlqRouter("events", "events-dlq", 3)
    consumer = group.consumer("worker-1")          # Consumer("events", "processors"), fenced
    consumer.assign(group.claim("worker-1"))
    consumer.seek(mgr, store, SeekPolicy.Committed)
    # handler(partition, msg) raises on failure: the consumer is rewound to retry,
    # and after 3 failures the message goes to "events-dlq" instead
    dlq.process(mgr, consumer, consumer.poll(mgr, 100), handler)
    consumer.commit(store)
    group.heartbeat("worker-1")
    renewals.tick()
"""
from __future__ import annotations

from grafos.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
