"""The peers grafos is measured beside, in the same harness: ``multiprocessing.Queue``,
faster-fifo (``put``/``get`` and ``put_many``/``get_many``), pyzmq PUSH/PULL over
``ipc://`` (``send``/``recv`` and multipart), and memcpy as the physical limit.

A peer that is not installed is reported as missing; nothing is estimated.

Each peer is used the way its documentation recommends for throughput: no
pickling in faster-fifo (identity ``dumps``/``loads``, so ``get`` returns
memoryviews), pyzmq zero-copy frames from its copy threshold (64 KiB) up.
``multiprocessing.Queue`` pickles; its "batch" mode puts one list per batch.

Each peer is driven by the loops grafos' own runs use (:class:`Sender`,
:class:`Receiver`): its bound put or get called directly, in bursts, with no
Python layer per message that grafos' rows do not pay.
"""
from __future__ import annotations

import importlib.util
import os
import queue
import tempfile
import time
import uuid
from functools import partial
from typing import Callable

from .harness import MEMCPY, Result, timed_rounds
from .procs import BURST, STOP, Crew

MODULE_OF = {"mp.Queue": "multiprocessing", "faster-fifo": "faster_fifo", "pyzmq": "zmq"}
INSTALL = {"faster-fifo": "pip install faster-fifo", "pyzmq": "pip install pyzmq"}
_PUT_TIMEOUT = 0.05     # a blocked producer looks at the stop flag this often
_GET_TIMEOUT = 0.01


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    if importlib.util.find_spec(MODULE_OF[peer]) is None:
        return f"not installed ({INSTALL[peer]}, or pip install \"grafos[peers]\")"
    return None


def payloads(size: int, batch: int) -> list[bytes]:
    """``batch`` distinct bytes objects: pickle would send a list of one object
    repeated as one copy and back-references, which no real producer gets."""
    return [i.to_bytes(8, "little") * (size // 8) + b"\x5a" * (size % 8) for i in range(batch)]


def _identity(b):  # noqa: ANN001, ANN202 - faster-fifo (de)serializer: bytes in, bytes out
    return b


# ---- the ends every peer is driven through --------------------------------------------------
class Sender:
    """A peer's producer end as grafos' own producers are driven: ``burst``
    direct calls of the peer's bound put method in a ``for`` loop, non-blocking
    (``put(value, *nowait)``), with the stop flag looked at once per burst. A
    put that finds the channel full switches the rest of the burst to blocking
    puts with a timeout (``put(value, *wait)``), the flag looked at between
    them, so a channel that stays full costs one refused call per burst, not
    one per message. ``value`` is one message, or one batch for a batch put."""

    def __init__(self, put: Callable, nowait: tuple, wait: tuple, full: type[BaseException]) -> None:
        self.put, self.nowait, self.wait, self.full = put, nowait, wait, full

    def put_burst(self, value, count: int, flags) -> bool:
        """Put ``value`` ``count`` times; False if ``flags`` said stop first."""
        put, full = self.put, self.full
        a, b = self.nowait
        i = 0
        try:
            for i in range(count):
                put(value, a, b)
            return True
        except full:
            pass
        a, b = self.wait
        for i in range(i, count):
            while True:
                if flags[STOP]:
                    return False
                try:
                    put(value, a, b)
                    break
                except full:
                    pass
        return True


class Receiver:
    """A peer's consumer end, driven as grafos' consumers are: direct calls of
    the peer's own get (``take``, non-blocking, its arguments bound once), in a
    burst. A get that finds the channel empty switches the rest of the burst to
    blocking gets with a timeout (``take_wait``); one that times out ends it.
    ``batches``: each get returns a list of messages, one get a burst."""

    def __init__(self, take: Callable, take_wait: Callable, empty: type[BaseException], batches: bool) -> None:
        self.take, self.take_wait, self.empty, self.batches = take, take_wait, empty, batches

    def take_burst(self, count: int) -> int:
        """Up to ``count`` messages (batch ends: one get); how many were taken."""
        take, empty = self.take, self.empty
        if self.batches:
            try:
                return len(take())
            except empty:
                pass
            try:
                return len(self.take_wait())
            except empty:
                return 0
        i = 0
        try:
            for i in range(count):
                take()
            return count
        except empty:
            pass
        take = self.take_wait
        try:
            for i in range(i, count):
                take()
            return count
        except empty:
            return i


# ---- channels: make (in the consumer), producer end, consumer end ---------------------------
def _drain(get_nowait: Callable[[], object]) -> None:
    """Take what a queue holds until it says Empty."""
    try:
        while True:
            get_nowait()
    except queue.Empty:
        pass


class MpQueue:
    name = "mp.Queue"

    @staticmethod
    def open_producer(ch):
        return ch

    @staticmethod
    def open_consumer(ch):
        return ch

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        return ctx.Queue(4 * batch * producers if mode == "single" else 4 * producers)

    @staticmethod
    def sender(q, mode: str) -> Sender:
        return Sender(q.put, (False, 0.0), (True, _PUT_TIMEOUT), queue.Full)     # a batch is one list

    @staticmethod
    def receiver(q, mode: str, batch: int) -> Receiver:
        return Receiver(partial(q.get, False, 0.0), partial(q.get, True, _GET_TIMEOUT), queue.Empty,
                        mode == "batch")

    @staticmethod
    def close_producer(q) -> None:
        # no cancel_join_thread(): a feeder killed mid-write leaves half a
        # message in the pipe and the consumer's next get() hangs on it. The
        # queue is bounded, so flushing at exit is short (the consumer drains).
        q.close()

    @staticmethod
    def drain(q) -> None:
        _drain(q.get_nowait)

    close_consumer = drain


class FasterFifo:
    name = "faster-fifo"

    @staticmethod
    def open_producer(ch):
        return ch

    @staticmethod
    def open_consumer(ch):
        return ch

    @staticmethod
    def queue(nbytes: int):
        """A faster-fifo queue of ``nbytes`` that passes bytes through unpickled."""
        import faster_fifo
        return faster_fifo.Queue(max_size_bytes=nbytes, loads=_identity, dumps=_identity)

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        return FasterFifo.queue(max(1 << 20, 4 * batch * (size + 64) * producers))

    @staticmethod
    def sender(q, mode: str) -> Sender:
        return Sender(q.put_many if mode == "batch" else q.put, (False, 0.0), (True, _PUT_TIMEOUT), queue.Full)

    @staticmethod
    def receiver(q, mode: str, batch: int) -> Receiver:
        if mode == "batch":
            return Receiver(partial(q.get_many, False, 0.0, batch), partial(q.get_many, True, _GET_TIMEOUT, batch),
                            queue.Empty, True)
        return Receiver(partial(q.get, False, 0.0), partial(q.get, True, _GET_TIMEOUT), queue.Empty, False)

    @staticmethod
    def close_producer(q) -> None:
        pass

    @staticmethod
    def drain(q) -> None:
        _drain(q.get_many_nowait)

    close_consumer = drain


class _ZmqEnd:
    """One pyzmq socket and its context."""

    def __init__(self, kind: str, ch: dict) -> None:
        import zmq
        self.zmq = zmq
        self.ch = ch
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(getattr(zmq, kind))
        self.s.setsockopt(zmq.LINGER, 0)
        # a blocking call waits this long, then looks at the stop flag
        if kind == "PUSH":
            self.s.setsockopt(zmq.SNDHWM, ch["hwm"])
            self.s.setsockopt(zmq.SNDTIMEO, int(_PUT_TIMEOUT * 1000))
            self.s.connect(ch["endpoint"])
        else:
            self.s.setsockopt(zmq.RCVHWM, ch["hwm"])
            self.s.setsockopt(zmq.RCVTIMEO, int(_GET_TIMEOUT * 1000))
            self.s.bind(ch["endpoint"])

    def close(self) -> None:
        self.s.close(0)
        self.ctx.term()


class PyZmq:
    """PUSH/PULL over ``ipc://``: the consumer binds, producers connect. A
    channel is opened into a socket by :meth:`open_producer` /
    :meth:`open_consumer`; the ends take those sockets."""

    name = "pyzmq"

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        path = os.path.join(tempfile.gettempdir(), f"grafos-bench-{uuid.uuid4().hex[:12]}.ipc")
        hwm = 4 * batch if mode == "single" else 8
        return {"endpoint": f"ipc://{path}", "path": path, "hwm": hwm, "copy": size < 65536}

    @staticmethod
    def open_producer(ch) -> _ZmqEnd:
        return _ZmqEnd("PUSH", ch)

    @staticmethod
    def open_consumer(ch) -> _ZmqEnd:
        return _ZmqEnd("PULL", ch)

    @staticmethod
    def sender(end: _ZmqEnd, mode: str) -> Sender:
        zmq = end.zmq
        send = end.s.send_multipart if mode == "batch" else end.s.send
        copy = end.ch["copy"]
        return Sender(send, (zmq.NOBLOCK, copy), (0, copy), zmq.Again)

    @staticmethod
    def receiver(end: _ZmqEnd, mode: str, batch: int) -> Receiver:
        zmq = end.zmq
        recv = end.s.recv_multipart if mode == "batch" else end.s.recv
        copy = end.ch["copy"]
        return Receiver(partial(recv, zmq.NOBLOCK, copy), partial(recv, 0, copy), zmq.Again, mode == "batch")

    @staticmethod
    def close_producer(end: _ZmqEnd) -> None:
        end.close()

    @staticmethod
    def drain(end: _ZmqEnd) -> None:
        try:
            while True:
                end.s.recv(end.zmq.NOBLOCK)
        except end.zmq.Again:
            pass

    @staticmethod
    def close_consumer(end: _ZmqEnd) -> None:
        end.close()
        try:
            os.unlink(end.ch["path"])
        except FileNotFoundError:
            pass


PEER_CLASSES = {c.name: c for c in (MpQueue, FasterFifo, PyZmq)}


# ---- runners -------------------------------------------------------------------------------
def _missing_result(peer: str, group: str, mode: str, placement: str, size: int, batch: int,
                    producers: int, why: str) -> Result:
    return Result(group, peer, mode, placement, size, batch=batch, producers=producers,
                  status="missing", note=why)


def inproc(peer: str, size: int, batch: int, mode: str, duration: float) -> Result:
    """One thread puts a round (a batch, or ``batch`` single puts) and gets it back."""
    why = missing(peer)
    if why:
        return _missing_result(peer, "inproc", mode, "in-process", size, batch, 1, why)
    import multiprocessing as mp
    cls = PEER_CLASSES[peer]
    ch = cls.make(mp.get_context("spawn"), size, batch, mode, 1)
    cons_end = cls.open_consumer(ch)
    prod_end = cls.open_producer(ch)
    sender = cls.sender(prod_end, mode)
    receiver = cls.receiver(cons_end, mode, batch)
    flags = [0] * (STOP + 1)
    values = payloads(size, batch)
    value, puts = (values, 1) if mode == "batch" else (values[0], batch)
    put_burst, take_burst = sender.put_burst, receiver.take_burst
    res = Result("inproc", peer, mode, "in-process", size, batch=batch)

    def one_round() -> int:
        put_burst(value, puts, flags)
        got = 0
        stall = time.perf_counter() + 5.0
        while got < batch:
            n = take_burst(batch - got)
            got += n
            if not n and time.perf_counter() > stall:
                raise RuntimeError(f"{peer}: a round of {batch} messages did not come back")
        return got

    try:
        res.messages, res.seconds = timed_rounds(one_round, duration)
    finally:
        cls.close_consumer(cons_end)
        cls.close_producer(prod_end)
    return res


def producer_main(peer: str, ch, size: int, batch: int, mode: str, idx: int, flags) -> None:
    """Spawned producer for a peer: put until told to stop, in bursts of
    :data:`~.procs.BURST` single puts (or one batch) between looks at the flag."""
    cls = PEER_CLASSES[peer]
    end = cls.open_producer(ch)
    values = payloads(size, batch)
    value, burst = (values, 1) if mode == "batch" else (values[0], BURST)
    put_burst = cls.sender(end, mode).put_burst
    Crew.ready_and_wait(flags, idx)
    try:
        while not flags[STOP] and put_burst(value, burst, flags):
            pass
    finally:
        cls.close_producer(end)


def cross(peer: str, size: int, batch: int, mode: str, duration: float, *, producers: int = 1,
          group: str = "cross", ring_bytes: int | None = None) -> Result:
    """Producer processes -> this process, counting messages received in ``duration``.
    ``ring_bytes``: faster-fifo's buffer, else its default here (see :meth:`FasterFifo.make`)."""
    why = missing(peer)
    if why:
        return _missing_result(peer, group, mode, "cross-process", size, batch, producers, why)
    cls = PEER_CLASSES[peer]
    if ring_bytes is not None and cls is not FasterFifo:
        raise ValueError(f"ring_bytes sizes faster-fifo's buffer; {peer} is sized in messages")
    crew = Crew(producers)
    ch = FasterFifo.queue(ring_bytes) if ring_bytes else cls.make(crew.ctx, size, batch, mode, producers)
    end = cls.open_consumer(ch)
    res = Result(group, peer, mode, "cross-process", size, batch=batch, producers=producers)
    try:
        crew.start(producer_main, lambda i: (peer, ch, size, batch, mode, i, crew.flags))
        crew.go()
        take_burst = cls.receiver(end, mode, batch).take_burst
        burst = batch if mode == "batch" else BURST
        dead = crew.dead
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        while True:
            n += take_burst(burst)
            t = time.perf_counter()
            if t >= deadline or dead(t):
                break
        res.messages, res.seconds = n, t - t0
        crew.join(drain=lambda: cls.drain(end))
        if crew.failed():
            res.status, res.note = "error", crew.failed()
    finally:
        crew.kill()
        cls.close_consumer(end)
    return res


def memcpy(size: int, batch: int, duration: float) -> Result:
    """The core's ``gf_memcpy_bench`` moving one batch's bytes (``size * batch``) at a
    time out of a ring-sized buffer (``RING_BYTES``, the bus's working set per
    topic), chunk after chunk, as a reader walks a ring: the physical limit for
    a copy at the memory level the bus works in. (Copying one batch between the
    same two buffers over and over measures the L2 cache instead.)"""
    from .._core.bench import CopyWalk
    from .grafos_runs import RING_BYTES
    nbytes = size * batch
    walk = CopyWalk(max(nbytes, RING_BYTES), nbytes)
    copied, seconds = timed_rounds(walk.one_pass, duration, warmup=1)
    return Result("memcpy", MEMCPY, "copy", "in-process", size, batch=batch,
                  messages=copied // size, seconds=seconds)
