"""A synchronous face on the asyncio client: one event loop in a daemon thread.

Every call of the JetStream bus is a coroutine run on that loop with
:meth:`Loop.run`, which waits for it in the caller's thread. The wait is
bounded, an interrupt (Ctrl-C) in the caller cancels the coroutine and
propagates, and nats-py's errors come out as grafos errors, so a server that
goes away surfaces as :class:`~grafos.errors.Unavailable` within the bound.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, TypeVar

import nats.errors
import nats.js.errors

from ..errors import Closed, GrafosError, InvalidArgument, NotFound, Unavailable

T = TypeVar("T")

#: errors that mean "the server did not answer" (down, partitioned, electing a leader)
UNAVAILABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
               nats.errors.NoServersError, nats.errors.StaleConnectionError,
               nats.errors.OutboundBufferLimitError, nats.errors.ConnectionDrainingError,
               nats.errors.ConnectionReconnectingError, nats.js.errors.NoStreamResponseError,
               nats.js.errors.ServiceUnavailableError, asyncio.TimeoutError, OSError)


#: JetStream's "no suitable peers for placement" (the reason follows in the description)
NO_PLACEMENT = 10005


def placement_waits(e: BaseException) -> bool:
    """``e`` refuses a stream only until an offline peer is back: the replicas
    fit the cluster, one of its peers does not answer yet."""
    return (isinstance(e, nats.js.errors.APIError) and e.err_code == NO_PLACEMENT
            and "offline" in (e.description or ""))


def translate(e: BaseException, what: str) -> BaseException:
    """The grafos error for a nats-py error raised while doing ``what``."""
    if isinstance(e, GrafosError):
        return e
    if isinstance(e, UNAVAILABLE):
        return Unavailable(f"{what}: the JetStream server did not answer ({type(e).__name__}: {e})")
    if isinstance(e, nats.js.errors.NotFoundError):
        return NotFound(f"{what}: {e.description}")
    if isinstance(e, nats.js.errors.APIError):
        if e.code == 503 or placement_waits(e):
            return Unavailable(f"{what}: {e.description}")
        return InvalidArgument(f"{what}: the server refused it ({e.description}, error {e.err_code})")
    return e


class Loop:
    """The event loop thread. ``timeout`` bounds every wait of :meth:`run`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grafos-jetstream",
                                        daemon=True)
        self._thread.start()
        self._spawned: set[concurrent.futures.Future] = set()

    def run(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = -1.0) -> T:
        """Run ``coro`` on the loop and wait for it (``timeout`` seconds, the
        default bound when -1, forever when None)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a synchronous grafos call was made from the JetStream loop thread")
        if self.loop.is_closed():
            coro.close()
            raise Closed(f"{what}: the JetStream bus is closed (TopicManager.close was called): connect again "
                         "to use it")
        wait = self.timeout if timeout == -1.0 else timeout
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(wait)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Unavailable(f"{what}: no answer from the JetStream server within {wait:.1f} s") from None
        except concurrent.futures.CancelledError:
            raise Unavailable(f"{what}: cancelled (the connection is closing)") from None
        except BaseException as e:
            if not fut.done():
                fut.cancel()        # an interrupt in this thread: stop the coroutine too
            err = translate(e, what)
            if err is e:
                raise
            raise err from None

    def submit(self, coro: Coroutine[Any, Any, T], what: str) -> "concurrent.futures.Future[T]":
        """Start ``coro`` on the loop and return its future, to be awaited from
        another event loop (``asyncio.wrap_future``): cancelling it cancels the
        coroutine; nats-py's errors come out as grafos errors, as from :meth:`run`."""
        if self.loop.is_closed():
            coro.close()
            raise Closed(f"{what}: the JetStream bus is closed (TopicManager.close was called): connect again "
                         "to use it")

        async def translated() -> T:
            try:
                return await coro
            except asyncio.CancelledError:
                raise
            except Exception as e:
                err = translate(e, what)
                if err is e:
                    raise
                raise err from None
        return asyncio.run_coroutine_threadsafe(translated(), self.loop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop without waiting (best-effort cleanup; see :meth:`settle`)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self._spawned.add(fut)
        fut.add_done_callback(self._spawned.discard)

    async def settle(self) -> None:
        """Let the cleanups started by :meth:`spawn` finish (bounded)."""
        futs = [asyncio.wrap_future(f) for f in list(self._spawned)]
        if futs:
            await asyncio.wait(futs, timeout=1.0)

    def stop(self) -> None:
        if self.loop.is_running() and threading.current_thread() is not self._thread:
            try:
                asyncio.run_coroutine_threadsafe(self.settle(), self.loop).result(3.0)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
