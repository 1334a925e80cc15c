"""The grafos bus on NATS JetStream (``pip install "grafos[nats]"``).

``TopicManager.connect("nats://host:4222")`` returns a :class:`JetStreamManager`;
:class:`KvOffsetStore` keeps committed offsets on the server, fenced for
consumer groups. See ``docs/jetstream.md``.
"""
from __future__ import annotations

from .manager import JetStreamManager
from .state import KvOffsetStore

__all__ = ["JetStreamManager", "KvOffsetStore"]
