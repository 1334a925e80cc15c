"""grafos: a message bus that forgets on a schedule.

Topics and partitions live in leased shared memory: a partition's lease TTL
is its retention. See README.md for the walkthrough. The bus is importable
from here::

    from grafos import TopicManager, TopicConfig, Producer, Partitioner, Consumer, SeekPolicy
"""
from __future__ import annotations

import sys

from .errors import UnsupportedPlatform

if not sys.platform.startswith("linux"):
    raise UnsupportedPlatform(
        f"grafos needs Linux (futex, /dev/shm, hole punching); this is {sys.platform}")

from .errors import GrafosError  # noqa: E402
from .fabric import Fabric, MemLease  # noqa: E402
from .queues import JoinableQueue, Queue, SimpleQueue  # noqa: E402
from .mq import (Bus, Consumer, ConsumerGroup, DlqRouter, FabricOffsetStore, Message, MemOffsetStore,  # noqa: E402
                 OffsetStore, Partitioner, Producer, SeekPolicy, SqliteOffsetStore, TopicConfig, TopicManager)
from .leasekit import RenewalManager, RenewalPolicy  # noqa: E402
from ._connect import connect  # noqa: E402

__all__ = ["Fabric", "MemLease", "GrafosError", "Queue", "JoinableQueue", "SimpleQueue",
           "connect", "Bus", "TopicManager", "TopicConfig", "Producer", "Partitioner", "Consumer", "SeekPolicy",
           "Message", "ConsumerGroup", "DlqRouter", "OffsetStore", "MemOffsetStore", "SqliteOffsetStore",
           "FabricOffsetStore", "RenewalManager", "RenewalPolicy"]
__version__ = "0.1.0"
