"""Handles bound to one bus: ``mgr.producer("events")`` and
``mgr.consumer("events", group="processors")``, on every backend.

A bound handle is a :class:`~grafos.mq.producer.Producer` or
:class:`~grafos.mq.consumer.Consumer` that holds its manager (``.mgr``), so
every call that takes the manager first also works without it::

    prod = mgr.producer("events")
    prod.send_keyed(b"user-42", b"...")        # same as Producer.send_keyed(mgr, ...)
    with prod.loan(4096) as ln: ...            # loan, begin, register, send_batch too
    con = mgr.consumer("events", group="processors")
    con.seek(store, SeekPolicy.Committed)
    for partition, msg in con.poll(100, timeout=1.0):
        ...

The spellings with a manager first (``prod.send(mgr, value)``) keep working on
bound handles too, so code written for the plain classes runs unchanged: a
call's first argument is taken as the manager when it is one (any bus's:
:class:`~grafos.mq.topic.BusHandles`), and the handle's own is used otherwise.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import _validate
from .consumer import Consumer
from .producer import Partitioner, Producer
from .topic import BusHandles

__all__ = ["BoundProducer", "BoundConsumer"]

#: the calls that take the manager first
PRODUCER_CALLS = ("send", "send_keyed", "send_batch", "loan", "begin", "register")
CONSUMER_CALLS = ("poll", "poll_batch", "seek", "seek_partition", "lag", "wait", "peek")


def _check_mgr(mgr: object) -> BusHandles:
    if not isinstance(mgr, BusHandles):
        raise _validate.InvalidType(f"mgr must be a TopicManager (or a remote bus's manager), "
                                    f"not {type(mgr).__name__}")
    return mgr


def _with_mgr(base: Callable[..., Any]) -> Callable[..., Any]:
    """``base(self, mgr, ...)`` callable as ``(...)`` with the handle's manager."""
    def call(self: Any, *args: Any, **kw: Any) -> Any:
        if args and isinstance(args[0], BusHandles):
            return base(self, *args, **kw)
        return base(self, self.mgr, *args, **kw)
    call.__name__ = base.__name__
    call.__qualname__ = base.__qualname__
    call.__doc__ = base.__doc__
    return call


class BoundProducer(Producer):
    """A :class:`Producer` of ``topic`` on ``mgr``; ``options`` are the Producer's."""

    def __init__(self, mgr: BusHandles, topic: str, partitioner: Partitioner = Partitioner.KeyHash,
                 **options: Any) -> None:
        super().__init__(topic, partitioner, **options)
        self.mgr = _check_mgr(mgr)

    def __repr__(self) -> str:
        return f"<BoundProducer {self.topic!r} ({self.partitioner.name})>"


class BoundConsumer(Consumer):
    """A :class:`Consumer` of ``topic`` in ``group`` on ``mgr``; ``options`` are the Consumer's."""

    def __init__(self, mgr: BusHandles, topic: str, group: str = "default", **options: Any) -> None:
        super().__init__(topic, group, **options)
        self.mgr = _check_mgr(mgr)

    def wait_request(self, waiter: Any, *args: Any, **kw: Any) -> int:  # type: ignore[override]
        """``wait_request(waiter, timeout=None)`` (or ``(waiter, mgr, timeout)``)."""
        if args and isinstance(args[0], BusHandles):
            return Consumer.wait_request(self, waiter, *args, **kw)
        return Consumer.wait_request(self, waiter, self.mgr, *args, **kw)

    def __repr__(self) -> str:
        return f"<BoundConsumer {self.topic!r} group {self.group!r}>"


for _name in PRODUCER_CALLS:
    setattr(BoundProducer, _name, _with_mgr(getattr(Producer, _name)))
for _name in CONSUMER_CALLS:
    setattr(BoundConsumer, _name, _with_mgr(getattr(Consumer, _name)))
del _name
