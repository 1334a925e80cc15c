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

import inspect
from typing import TYPE_CHECKING, Any, Callable

from .. import _validate
from ..errors import InvalidArgument
from .consumer import Consumer
from .producer import Partitioner, Producer
from .model import Bus
from .subscribe import Subscriber

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from ..loan import Loan
    from ..message import Message, SendHeaders
    from ..peek import Peek
    from ..reader import Batch
    from .model import SeekPolicy
    from .producer import Transaction

__all__ = ["BoundProducer", "BoundConsumer"]


def _check_mgr(mgr: object) -> Bus:
    if not isinstance(mgr, Bus):
        raise _validate.InvalidType(f"mgr must be a TopicManager (or a remote bus's manager), "
                                    f"not {type(mgr).__name__}")
    return mgr


def _other_bus(handle: Any, mgr: object) -> InvalidArgument:
    return InvalidArgument(f"{handle!r} is bound to {handle.mgr!r}, not {mgr!r}: "
                           "call it without a manager (or with its own)")


def _with_mgr(base: Callable[..., Any]) -> Callable[..., Any]:
    """``base(self, mgr, ...)`` callable as ``(...)`` with the handle's manager;
    shown (``help()``, :func:`inspect.signature`) as that short form."""
    def call(self: Any, /, *args: Any, **kw: Any) -> Any:
        if args and args[0] is self.mgr:
            return base(self, *args, **kw)
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return base(self, self.mgr, *args, **kw)
    call.__name__ = base.__name__
    call.__qualname__ = base.__qualname__
    call.__doc__ = base.__doc__
    call.__signature__ = signature_without(base, "mgr")  # type: ignore[attr-defined]
    return call


def signature_without(base: Callable[..., Any], *names: str) -> inspect.Signature:
    """``base``'s signature without the parameters ``names``: what a call that
    has its manager already (a bound handle's, an async adapter's) shows."""
    sig = inspect.signature(base)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in names])



class BoundProducer(Producer):
    """A :class:`Producer` of ``topic`` on ``mgr``; ``options`` are the Producer's."""

    def __init__(self, mgr: Bus, topic: str, partitioner: Partitioner = Partitioner.KeyHash,
                 **options: Any) -> None:
        super().__init__(topic, partitioner, **options)
        self.mgr = _check_mgr(mgr)
        self._own(mgr)

    # The manager is given once, here: the calls that take it first are typed
    # without it (declared, as type checkers read them; tests/docs/test_typing.py
    # holds them to the plain methods), and made from the plain methods.
    if TYPE_CHECKING:
        # SendPath's (C): the crossing takes the handle's manager as the first argument too;
        # key and value are bytes (bytearray, memoryview), or what the producer's serializer takes
        def send(self, value: Any,  # type: ignore[override]
                 headers: SendHeaders = None, *, timeout: float | None = ...) -> tuple[int, int]: ...

        def send_keyed(self, key: Any, value: Any,  # type: ignore[override]
                       headers: SendHeaders = None, *, timeout: float | None = ...) -> tuple[int, int]: ...

        def send_batch(self, values: Sequence[bytes] | np.ndarray,  # type: ignore[override]
                       keys: Sequence[bytes] | None = None, *,
                       timeout: float | None = ...) -> tuple[np.ndarray, np.ndarray]: ...

        def loan(self, size: int, key: bytes | None = None,  # type: ignore[override]
                 headers: SendHeaders = None) -> Loan: ...

        def begin(self) -> Transaction: ...  # type: ignore[override]

        def register(self) -> int: ...  # type: ignore[override]
    else:
        send_batch = _with_mgr(Producer.send_batch)
        loan = _with_mgr(Producer.loan)
        begin = _with_mgr(Producer.begin)
        register = _with_mgr(Producer.register)

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

    # the manager is given once, here: as for BoundProducer
    if TYPE_CHECKING:
        # PollPath's (C): the crossing takes the handle's manager as the first argument too
        def poll(self, max_messages: int = 100, timeout: float | None = 0.0, *,  # type: ignore[override]
                 spin: float | None = None) -> list[tuple[int, Message]]: ...

        def poll_batch(self, max_messages: int = 1024, timeout: float | None = 0.0, *,  # type: ignore[override]
                       spin: float | None = None) -> Batch: ...

        def seek(self, store_or_partition: Any = None,  # type: ignore[override]
                 policy: SeekPolicy | str | int | None = None) -> None: ...

        def seek_partition(self, partition: int, offset: int) -> None: ...  # type: ignore[override]

        def lag(self) -> dict[int, int]: ...  # type: ignore[override]

        def wait(self, timeout: float | None = None) -> bool: ...  # type: ignore[override]

        def peek(self, max_messages: int = 100) -> Peek: ...  # type: ignore[override]
    else:
        poll_batch = _with_mgr(Consumer.poll_batch)
        seek = _with_mgr(Consumer.seek)
        seek_partition = _with_mgr(Consumer.seek_partition)
        lag = _with_mgr(Consumer.lag)
        wait = _with_mgr(Consumer.wait)
        peek = _with_mgr(Consumer.peek)

    def __reduce__(self):  # noqa: ANN204 - crosses processes with its manager when the bus does
        fn, args, state = Consumer.__reduce__(self)
        if not self.mgr.capabilities.shared_memory:
            return fn, args, state
        return _bound_consumer, (self.mgr, *args), state

    def _poll_fallback(self, mgr: Any, *args: Any, **kw: Any) -> Any:
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return Consumer._poll_fallback(self, mgr, *args, **kw)

    def wait_request(self, waiter: Any, *args: Any, **kw: Any) -> int:
        """``wait_request(waiter, timeout=None)`` (or ``(waiter, mgr, timeout)``)."""
        if args and args[0] is self.mgr:
            return Consumer.wait_request(self, waiter, *args, **kw)
        if args and isinstance(args[0], Bus):
            raise _other_bus(self, args[0])
        return Consumer.wait_request(self, waiter, self.mgr, *args, **kw)

    wait_request.__signature__ = signature_without(Consumer.wait_request, "mgr")  # type: ignore[attr-defined]

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


class _Handles:
    """What :class:`~grafos.mq.model.Bus` makes its bound handles with."""

    producer = BoundProducer
    consumer = BoundConsumer
    subscribe = Subscriber


Bus._handles = _Handles
