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

The manager is given once, when the handle is made: a call whose first
argument is that manager is the long spelling (``prod.send(mgr, value)``), so
code written for the plain classes runs unchanged; any other call goes without
it. ``send``, ``send_keyed`` and ``poll`` take that rule in the crossing (C),
at the cost of one pointer comparison; a handle of one bus called with another
bus's manager raises :class:`~grafos.errors.InvalidArgument`.
"""
from __future__ import annotations

from typing import Any, Callable

from .. import _validate
from ..errors import InvalidArgument
from .consumer import Consumer
from .producer import Partitioner, Producer
from .model import Bus
from .subscribe import Subscriber

__all__ = ["BoundProducer", "BoundConsumer"]

#: the calls that take the manager first, besides send, send_keyed and poll (the crossing's)
PRODUCER_CALLS = ("send_batch", "loan", "begin", "register")
CONSUMER_CALLS = ("poll_batch", "seek", "seek_partition", "lag", "wait", "peek")


def _check_mgr(mgr: object) -> Bus:
    if not isinstance(mgr, Bus):
        raise _validate.InvalidType(f"mgr must be a TopicManager (or a remote bus's manager), "
                                    f"not {type(mgr).__name__}")
    return mgr


def _other_bus(handle: Any, mgr: object) -> InvalidArgument:
    return InvalidArgument(f"{handle!r} is bound to {handle.mgr!r}, not {mgr!r}: "
                           "call it without a manager (or with its own)")


def _with_mgr(base: Callable[..., Any]) -> Callable[..., Any]:
    """``base(self, mgr, ...)`` callable as ``(...)`` with the handle's manager."""
    def call(self: Any, *args: Any, **kw: Any) -> Any:
        if args and args[0] is self.mgr:
            return base(self, *args, **kw)
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return base(self, self.mgr, *args, **kw)
    call.__name__ = base.__name__
    call.__qualname__ = base.__qualname__
    call.__doc__ = base.__doc__
    return call


class BoundProducer(Producer):
    """A :class:`Producer` of ``topic`` on ``mgr``; ``options`` are the Producer's."""

    def __init__(self, mgr: Bus, topic: str, partitioner: Partitioner = Partitioner.KeyHash,
                 **options: Any) -> None:
        super().__init__(topic, partitioner, **options)
        self.mgr = _check_mgr(mgr)
        self._own(mgr)

    def __reduce__(self):  # noqa: ANN204 - crosses processes with its manager when the bus does
        fn, args = Producer.__reduce__(self)
        if not self.mgr.capabilities.shared_memory:
            return fn, args     # a server bus's connection stays here: the child gets a plain Producer
        return _bound_producer, (self.mgr, *args)

    # the crossing put this handle's manager first; another bus's lands here
    def _send_fallback(self, mgr: Any, value: Any, *args: Any, **kw: Any) -> tuple[int, int]:
        if isinstance(value, Bus):
            raise _other_bus(self, value)
        return Producer._send_fallback(self, mgr, value, *args, **kw)

    def _send_keyed_fallback(self, mgr: Any, key: Any, *args: Any, **kw: Any) -> tuple[int, int]:
        if isinstance(key, Bus):
            raise _other_bus(self, key)
        return Producer._send_keyed_fallback(self, mgr, key, *args, **kw)

    def __repr__(self) -> str:
        return f"<BoundProducer {self.topic!r} ({self.partitioner.name})>"


class BoundConsumer(Consumer):
    """A :class:`Consumer` of ``topic`` in ``group`` on ``mgr``; ``options`` are the Consumer's."""

    def __init__(self, mgr: Bus, topic: str, group: str = "default", **options: Any) -> None:
        super().__init__(topic, group, **options)
        self.mgr = _check_mgr(mgr)
        self._own(mgr)

    def __reduce__(self):  # noqa: ANN204 - crosses processes with its manager when the bus does
        fn, args, state = Consumer.__reduce__(self)
        if not self.mgr.capabilities.shared_memory:
            return fn, args, state
        return _bound_consumer, (self.mgr, *args), state

    def _poll_fallback(self, mgr: Any, *args: Any, **kw: Any) -> Any:
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return Consumer._poll_fallback(self, mgr, *args, **kw)

    def wait_request(self, waiter: Any, *args: Any, **kw: Any) -> int:  # type: ignore[override]
        """``wait_request(waiter, timeout=None)`` (or ``(waiter, mgr, timeout)``)."""
        if args and args[0] is self.mgr:
            return Consumer.wait_request(self, waiter, *args, **kw)
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return Consumer.wait_request(self, waiter, self.mgr, *args, **kw)

    def __repr__(self) -> str:
        return f"<BoundConsumer {self.topic!r} group {self.group!r}>"


def _bound_producer(mgr: Bus, topic: str, partitioner: Partitioner, timeout: float | None,
                    idempotent: bool, transactional_id: str | None, transaction_ttl: float,
                    key_serializer: Any = None, value_serializer: Any = None) -> BoundProducer:
    return BoundProducer(mgr, topic, partitioner, timeout=timeout, idempotent=idempotent,
                         transactional_id=transactional_id, transaction_ttl=transaction_ttl,
                         key_serializer=key_serializer, value_serializer=value_serializer)


def _bound_consumer(mgr: Bus, topic: str, group: str, isolation: str, on_lost: str) -> BoundConsumer:
    return BoundConsumer(mgr, topic, group, isolation=isolation, on_lost=on_lost)


for _name in PRODUCER_CALLS:
    setattr(BoundProducer, _name, _with_mgr(getattr(Producer, _name)))
for _name in CONSUMER_CALLS:
    setattr(BoundConsumer, _name, _with_mgr(getattr(Consumer, _name)))
del _name


class _Handles:
    """What :class:`~grafos.mq.model.Bus` makes its bound handles with."""

    producer = BoundProducer
    consumer = BoundConsumer
    subscribe = Subscriber


Bus._handles = _Handles
