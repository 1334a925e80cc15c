"""The bus: topics, producers, consumers, groups, dead letters and offsets.

Every bus class is importable from here::

    from grafos.mq import TopicManager, TopicConfig, Producer, Partitioner, Consumer, SeekPolicy

(and from :mod:`grafos` itself, with :func:`grafos.connect`).
"""
from .model import Bus, Capabilities   # noqa: I001
from .topic import PartitionInfo, Topic, TopicConfig, TopicDescription, TopicManager
from .offset import FabricOffsetStore, MemOffsetStore, OffsetStore, SqliteOffsetStore
from .producer import Partitioner, Producer, Transaction, kafka_partition, murmur2
from .consumer import Consumer, Message, SeekPolicy
from .group import ConsumerGroup, GroupDescription
from .dlq import DlqRouter
from .bound import BoundConsumer, BoundProducer
from .subscribe import Subscriber
from .share import ShareConsumer, ShareRecord, ShareState

__all__ = ["Bus", "Capabilities", "TopicManager", "TopicConfig", "Topic", "TopicDescription", "PartitionInfo",
           "Producer", "Transaction", "Partitioner", "kafka_partition", "murmur2",
           "Consumer", "SeekPolicy", "Message", "ConsumerGroup", "GroupDescription", "DlqRouter",
           "OffsetStore", "MemOffsetStore", "SqliteOffsetStore", "FabricOffsetStore",
           "BoundProducer", "BoundConsumer", "Subscriber",
           "ShareConsumer", "ShareRecord", "ShareState"]
