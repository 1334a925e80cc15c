"""Handles bound to one bus: ``mgr.producer("events")`` and
``mgr.consumer("events", group="processors")``.

A bound handle is a :class:`~grafos.mq.producer.Producer` or
:class:`~grafos.mq.consumer.Consumer` that remembers its
:class:`~grafos.mq.topic.TopicManager`, so the calls that take the manager
first also work without it::

    prod = mgr.producer("events")
    prod.send_keyed(b"user-42", b"...")        # same as Producer.send_keyed(mgr, ...)
    con = mgr.consumer("events", group="processors")
    con.seek(store, SeekPolicy.Committed)
    for partition, msg in con.poll(100, timeout=1.0):
        ...

The spellings with the manager first (``prod.send(mgr, value)``) keep working
on bound handles too, so code written for the plain classes runs unchanged.
"""
from __future__ import annotations

from typing import Any

from .. import _validate
from .consumer import Consumer
from .producer import Partitioner, Producer
from .topic import TopicManager

__all__ = ["BoundProducer", "BoundConsumer"]


def _check_mgr(mgr: object) -> TopicManager:
    if not isinstance(mgr, TopicManager):
        raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
    return mgr


class BoundProducer(Producer):
    """A :class:`Producer` of ``topic`` on ``mgr``: ``send(value, headers=None)``,
    ``send_keyed(key, value, headers=None)``, ``send_batch(values, keys=None)``."""

    def __init__(self, mgr: TopicManager, topic: str,
                 partitioner: Partitioner = Partitioner.KeyHash) -> None:
        super().__init__(topic, partitioner)
        self.mgr = _check_mgr(mgr)

    def _args(self, args: tuple) -> tuple:
        return args if args and isinstance(args[0], TopicManager) else (self.mgr, *args)

    def send(self, *args: Any, **kw: Any) -> tuple[int, int]:  # type: ignore[override]
        """``send(value, headers=None)`` (or ``send(mgr, value, headers=None)``)."""
        return Producer.send(self, *self._args(args), **kw)

    def send_keyed(self, *args: Any, **kw: Any) -> tuple[int, int]:  # type: ignore[override]
        """``send_keyed(key, value, headers=None)`` (or with ``mgr`` first)."""
        return Producer.send_keyed(self, *self._args(args), **kw)

    def send_batch(self, *args: Any, **kw: Any):  # type: ignore[override]  # noqa: ANN201
        """``send_batch(values, keys=None)`` (or with ``mgr`` first)."""
        return Producer.send_batch(self, *self._args(args), **kw)

    def __repr__(self) -> str:
        return f"<BoundProducer {self.topic!r} ({self.partitioner.name})>"


class BoundConsumer(Consumer):
    """A :class:`Consumer` of ``topic`` on ``mgr``: ``poll(max_messages=100,
    timeout=0.0)``, ``poll_batch(...)``, ``seek(store, policy)``, ``seek(policy)``,
    ``seek_partition(partition, offset)``, ``lag()``, ``wait(timeout)``."""

    def __init__(self, mgr: TopicManager, topic: str, group: str = "default", **kw: Any) -> None:
        super().__init__(topic, group, **kw)
        self.mgr = _check_mgr(mgr)

    def _args(self, args: tuple) -> tuple:
        return args if args and isinstance(args[0], TopicManager) else (self.mgr, *args)

    def poll(self, *args: Any, **kw: Any):  # type: ignore[override]  # noqa: ANN201
        return Consumer.poll(self, *self._args(args), **kw)

    def poll_batch(self, *args: Any, **kw: Any):  # type: ignore[override]  # noqa: ANN201
        return Consumer.poll_batch(self, *self._args(args), **kw)

    def seek(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        Consumer.seek(self, *self._args(args), **kw)

    def seek_partition(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        Consumer.seek_partition(self, *self._args(args), **kw)

    def lag(self, *args: Any, **kw: Any) -> dict[int, int]:  # type: ignore[override]
        return Consumer.lag(self, *self._args(args), **kw)

    def wait(self, *args: Any, **kw: Any) -> bool:  # type: ignore[override]
        return Consumer.wait(self, *self._args(args), **kw)

    def __repr__(self) -> str:
        return f"<BoundConsumer {self.topic!r} group {self.group!r}>"
