"""asyncio for the bus: awaitable polls, async iteration, async commits.

::

    from grafos.aio import AsyncConsumer, AsyncProducer

    async with AsyncConsumer(mgr.consumer("events", group="processors")) as consumer:
        consumer.seek(store, SeekPolicy.Committed)
        async for partition, msg in consumer.messages():
            ...
            await consumer.commit(store)

The calls mirror :class:`~grafos.mq.consumer.Consumer` and
:class:`~grafos.mq.producer.Producer` (``await consumer.poll(mgr, 100,
timeout=1.0)``); with a bound handle (``mgr.consumer(...)``) or ``mgr=`` given
here, ``mgr`` may be left out. Other attributes (``seek``, ``assign``,
``position``, ``lag``...) are the wrapped handle's own, synchronous ones.

**How an await wakes up.** A poll that finds nothing hands the wait to the
consumer's waiter thread (:class:`~grafos.reader.Waiter`, running in C, via
:meth:`Consumer.wait_request <grafos.mq.consumer.Consumer.wait_request>`),
which sleeps on the fabric's futex and, when a producer in any process
publishes to an assigned partition, writes to an eventfd the event loop
watches (``add_reader``). The wait is level-triggered (it looks at the rings,
not at a notification), so no wake-up is lost, and it reads nothing: a task
cancelled while it waits leaves the consumer's positions where they were.
``messages()`` polls a batch at a time; what it polled but did not hand out is
given back (a seek) before the next commit, poll or position query. Idle, the
helper thread sleeps on the futex (no polling loop).
Works with any asyncio event loop, uvloop included.

**Sends** are appends to shared memory: they never wait (a full ring
overwrites its oldest slot), so the async ones complete at once.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, overload

from . import _validate
from .errors import GrafosError, InvalidArgument
from .message import Message
from .mq.bound import signature_without
from .mq.consumer import Consumer
from .mq.offset import OffsetStore
from .mq.producer import Producer
from .mq.topic import SHARED_MEMORY, BusHandles, TopicManager
from .reader import Batch, Waiter

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from .message import SendHeaders
    from .mq.model import Bus, SeekPolicy

    # a send's key and value: bytes (bytearray, memoryview), or what the producer's serializer takes
    _Value = Any

__all__ = ["AsyncConsumer", "AsyncProducer"]

_SLICE = 0.2    # seconds a wait lasts before the consumer looks at the directory again (restarts)


class _Waiter:
    """The consumer's waiter thread (:class:`~grafos.reader.Waiter`, in C) and the
    futures of the requests it has not answered yet. The loop watches the
    waiter's eventfd; each answer resolves its request's future (and any older
    one, which a cancelled await left behind)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.waiter: Waiter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.futures: dict[int, asyncio.Future] = {}
        self.woken = 0          # answers that found something to read

    def wait(self, mgr: TopicManager, timeout: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self.waiter is None:
            self.waiter = Waiter()
        if loop is not self.loop:           # first await, or a new loop (asyncio.run again)
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.waiter.fd)
            loop.add_reader(self.waiter.fd, self._answered)
            self.loop = loop
        fut = loop.create_future()
        n = self.consumer.wait_request(self.waiter, mgr, timeout)
        self.futures[n] = fut
        return fut

    def _answered(self) -> None:
        w = self.waiter
        if w is None:
            return
        done, readable = w.answered()
        if readable:
            self.woken += 1
        for n in [n for n in self.futures if Waiter.is_answered(n, done)]:
            fut = self.futures.pop(n)
            if not fut.done():
                fut.set_result(readable if n == done else True)

    def close(self) -> Waiter | None:
        w, self.waiter = self.waiter, None
        if w is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(w.fd)
        for fut in self.futures.values():
            fut.cancel()
        self.futures.clear()
        return w


class AsyncConsumer:
    """An awaitable view of a :class:`Consumer` (one task at a time, like the
    consumer itself)."""

    def __init__(self, consumer: Consumer, mgr: TopicManager | None = None) -> None:
        if not isinstance(consumer, Consumer):
            raise _validate.InvalidType(f"consumer must be a Consumer, not {type(consumer).__name__}")
        if mgr is None:
            mgr = getattr(consumer, "mgr", None)
        if mgr is not None and not isinstance(mgr, BusHandles):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        self.consumer = consumer
        self.mgr = mgr
        self._waiter = _Waiter(consumer)
        self._pending: collections.deque[tuple[int, Message]] = collections.deque()
        self._pending_mgr: TopicManager | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)     # seek, assign, position, lag, ...: synchronous

    def __repr__(self) -> str:
        return f"<AsyncConsumer of {self.consumer!r}>"

    @property
    def woken(self) -> int:
        """How many waits ended because something became readable (not by timing out)."""
        return self._waiter.woken

    def _split(self, args: tuple) -> tuple[TopicManager, tuple]:
        if args and isinstance(args[0], BusHandles):
            return args[0], args[1:]
        if self.mgr is None:
            raise _validate.InvalidType("pass mgr first, or give AsyncConsumer a bound consumer or mgr=")
        return self.mgr, args

    async def _poll(self, once, mgr: TopicManager, timeout: float | None):  # noqa: ANN001, ANN202
        self._give_back()
        out = once(0.0)
        if len(out) or (timeout is not None and timeout <= 0):
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        # a bus on a server serves the wait on its own loop: one wait, cancelled with this task
        server: Any = None if getattr(mgr, "capabilities", SHARED_MEMORY).shared_memory else mgr
        while True:
            if server is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is None or left > 0:
                    await asyncio.wrap_future(server.wait_future(self.consumer, left))
            else:
                left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
                if left > 0:
                    await self._waiter.wait(mgr, left)      # cancellable: nothing has been read
            out = once(0.0)
            if len(out) or (deadline is not None and time.monotonic() >= deadline):
                return out

    @overload
    async def poll(self, max_messages: int = 100, timeout: float | None = 0.0) -> list[tuple[int, Message]]: ...
    @overload
    async def poll(self, mgr: Bus, /, max_messages: int = 100,
                   timeout: float | None = 0.0) -> list[tuple[int, Message]]: ...

    async def poll(self, *args: Any, max_messages: int | None = None,
                   timeout: float | None = 0.0) -> list[tuple[int, Message]]:
        """``await poll(mgr, max_messages=100, timeout=0.0)``: like
        :meth:`Consumer.poll`; with a timeout (None: until a message arrives) the
        task awaits instead of blocking the loop."""
        mgr, rest = self._split(args)
        n = rest[0] if rest else (100 if max_messages is None else max_messages)
        if len(rest) > 1:
            timeout = rest[1]
        _validate.integer(n, "max_messages", 1)
        _validate.timeout(timeout)
        c = self.consumer
        return await self._poll(lambda t: c.poll(mgr, n, t), mgr, timeout)

    poll.__signature__ = signature_without(Consumer.poll, "mgr", "spin")  # type: ignore[attr-defined]

    @overload
    async def poll_batch(self, max_messages: int = 1024, timeout: float | None = 0.0) -> Batch: ...
    @overload
    async def poll_batch(self, mgr: Bus, /, max_messages: int = 1024, timeout: float | None = 0.0) -> Batch: ...

    async def poll_batch(self, *args: Any, max_messages: int | None = None,
                         timeout: float | None = 0.0) -> Batch:
        """``await poll_batch(mgr, max_messages=1024, timeout=0.0)``, as :meth:`Consumer.poll_batch`."""
        mgr, rest = self._split(args)
        n = rest[0] if rest else (1024 if max_messages is None else max_messages)
        if len(rest) > 1:
            timeout = rest[1]
        _validate.integer(n, "max_messages", 1)
        _validate.timeout(timeout)
        c = self.consumer
        return await self._poll(lambda t: c.poll_batch(mgr, n, t), mgr, timeout)

    poll_batch.__signature__ = signature_without(Consumer.poll_batch, "mgr", "spin")  # type: ignore[attr-defined]

    def messages(self, mgr: TopicManager | None = None, *,
                 batch: int = 100) -> AsyncIterator[tuple[int, Message]]:
        """``async for partition, msg in consumer.messages(mgr)``: every message, as
        it arrives (polled ``batch`` at a time). Messages polled but not yet
        handed out are given back (the consumer seeks to the first of them)
        before the next commit, poll, seek, assign or position query, so leaving
        the loop between two messages of a batch commits only what it saw."""
        mgr = self._split((mgr,) if mgr is not None else ())[0]
        _validate.integer(batch, "batch", 1)
        return _Messages(self, mgr, batch)

    def _give_back(self) -> None:
        """Seek back over messages polled for :meth:`messages` but not handed out."""
        pending = self._pending
        if not pending:
            return
        first: dict[int, int] = {}
        for p, m in pending:
            first.setdefault(p, m.offset)
        pending.clear()
        mgr = self._pending_mgr
        assert mgr is not None      # set with the messages
        for p, off in first.items():
            try:
                self.consumer.seek_partition(mgr, p, off)
            except GrafosError:     # no longer assigned, or the topic went away: nothing to give back
                pass

    def positions(self) -> dict[int, int]:
        self._give_back()
        return self.consumer.positions()

    def position(self, partition: int) -> int:
        self._give_back()
        return self.consumer.position(partition)

    def _with_mgr(self, args: tuple) -> tuple:
        mgr, rest = self._split(args)
        return (mgr, *rest)

    @overload
    def seek(self, store_or_partition: Any = None, policy: SeekPolicy | str | int | None = None) -> None: ...
    @overload
    def seek(self, mgr: Bus, /, store_or_partition: Any = None,
             policy: SeekPolicy | str | int | None = None) -> None: ...

    def seek(self, *args: Any, **kw: Any) -> None:
        """``seek(mgr, store, policy)``, ``seek(mgr, policy)`` (``mgr`` may be left out)."""
        self._pending.clear()
        self.consumer.seek(*self._with_mgr(args), **kw)

    seek.__signature__ = signature_without(Consumer.seek, "mgr")  # type: ignore[attr-defined]

    @overload
    def seek_partition(self, partition: int, offset: int) -> None: ...
    @overload
    def seek_partition(self, mgr: Bus, /, partition: int, offset: int) -> None: ...

    def seek_partition(self, *args: Any, **kw: Any) -> None:
        """``seek_partition(mgr, partition, offset)`` (``mgr`` may be left out)."""
        self._give_back()
        self.consumer.seek_partition(*self._with_mgr(args), **kw)

    seek_partition.__signature__ = signature_without(Consumer.seek_partition, "mgr")  # type: ignore[attr-defined]

    @overload
    def lag(self) -> dict[int, int]: ...
    @overload
    def lag(self, mgr: Bus, /) -> dict[int, int]: ...

    def lag(self, *args: Any) -> dict[int, int]:
        """``lag(mgr)`` (``mgr`` may be left out): as :meth:`Consumer.lag`."""
        self._give_back()
        return self.consumer.lag(*self._with_mgr(args))

    lag.__signature__ = signature_without(Consumer.lag, "mgr")  # type: ignore[attr-defined]

    def assign(self, partitions: Any) -> None:
        self._give_back()
        self.consumer.assign(partitions)

    async def commit(self, store: OffsetStore, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """As :meth:`Consumer.commit`: the positions of what was handed out (a short
        metadata write; it waits on other processes only for the fabric's lock)."""
        self._give_back()
        return self.consumer.commit(store, offsets)

    async def aclose(self) -> None:
        """Stop the helper thread (it finishes a wait of at most a fraction of a second) and
        close the consumer."""
        self._give_back()
        w = self._waiter.close()
        if w is not None:
            await asyncio.to_thread(w.close)      # the thread finishes its wait (at most a slice)
        self.consumer.close()

    async def __aenter__(self) -> "AsyncConsumer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Messages:
    """The async iterator of :meth:`AsyncConsumer.messages`."""

    def __init__(self, ac: AsyncConsumer, mgr: TopicManager, batch: int) -> None:
        self.ac, self.mgr, self.batch = ac, mgr, batch

    def __aiter__(self) -> "_Messages":
        return self

    async def __anext__(self) -> tuple[int, Message]:
        ac = self.ac
        while not ac._pending:
            got = await ac.poll(self.mgr, self.batch, timeout=None)
            ac._pending.extend(got)
            ac._pending_mgr = self.mgr
        return ac._pending.popleft()


class AsyncProducer:
    """An awaitable view of a :class:`Producer`: ``await send(mgr, value)``,
    ``await send_keyed(mgr, key, value)``, ``await send_batch(mgr, values)``
    (``mgr`` may be left out for a bound producer or with ``mgr=``)."""

    def __init__(self, producer: Producer, mgr: TopicManager | None = None) -> None:
        if not isinstance(producer, Producer):
            raise _validate.InvalidType(f"producer must be a Producer, not {type(producer).__name__}")
        if mgr is None:
            mgr = getattr(producer, "mgr", None)
        if mgr is not None and not isinstance(mgr, BusHandles):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        self.producer = producer
        self.mgr = mgr

    def __getattr__(self, name: str) -> Any:
        return getattr(self.producer, name)

    def __repr__(self) -> str:
        return f"<AsyncProducer of {self.producer!r}>"

    def _args(self, args: tuple) -> tuple:
        if args and isinstance(args[0], BusHandles):
            return args
        if self.mgr is None:
            raise _validate.InvalidType("pass mgr first, or give AsyncProducer a bound producer or mgr=")
        return (self.mgr, *args)

    @overload
    async def send(self, value: _Value, headers: SendHeaders = None, *,
                   timeout: float | None = ...) -> tuple[int, int]: ...
    @overload
    async def send(self, mgr: Bus, /, value: _Value, headers: SendHeaders = None, *,
                   timeout: float | None = ...) -> tuple[int, int]: ...

    async def send(self, *args: Any, **kw: Any) -> tuple[int, int]:
        """``await send(mgr, value, headers=None)`` -> (partition, offset)."""
        return self.producer.send(*self._args(args), **kw)

    send.__signature__ = signature_without(Producer.send, "mgr")  # type: ignore[attr-defined]

    @overload
    async def send_keyed(self, key: _Value | None, value: _Value, headers: SendHeaders = None, *,
                         timeout: float | None = ...) -> tuple[int, int]: ...
    @overload
    async def send_keyed(self, mgr: Bus, /, key: _Value | None, value: _Value, headers: SendHeaders = None, *,
                         timeout: float | None = ...) -> tuple[int, int]: ...

    async def send_keyed(self, *args: Any, **kw: Any) -> tuple[int, int]:
        """``await send_keyed(mgr, key, value, headers=None)`` -> (partition, offset)."""
        return self.producer.send_keyed(*self._args(args), **kw)

    send_keyed.__signature__ = signature_without(Producer.send_keyed, "mgr")  # type: ignore[attr-defined]

    @overload
    async def send_batch(self, values: Sequence[bytes] | np.ndarray, keys: Sequence[bytes] | None = None, *,
                         timeout: float | None = ...) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    async def send_batch(self, mgr: Bus, /, values: Sequence[bytes] | np.ndarray, keys: Sequence[bytes] | None = None,
                         *, timeout: float | None = ...) -> tuple[np.ndarray, np.ndarray]: ...

    async def send_batch(self, *args: Any, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
        """``await send_batch(mgr, values, keys=None)`` -> (partitions, offsets)."""
        return self.producer.send_batch(*self._args(args), **kw)

    send_batch.__signature__ = signature_without(Producer.send_batch, "mgr")  # type: ignore[attr-defined]

    async def flush(self, timeout: float | None = None) -> int:
        return self.producer.flush(timeout)

    async def aclose(self) -> None:
        self.producer.close()

    async def __aenter__(self) -> "AsyncProducer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
