"""The peers grafos is measured beside, in the same harness: ``multiprocessing.Queue``,
faster-fifo (``put``/``get`` and ``put_many``/``get_many``), pyzmq PUSH/PULL over
``ipc://`` (``send``/``recv`` and multipart), and memcpy as the physical limit.

A peer that is not installed is reported as missing; nothing is estimated.

Each peer is used the way its documentation recommends for throughput: no
pickling in faster-fifo (identity ``dumps``/``loads``, so ``get`` returns
memoryviews), pyzmq zero-copy frames from its copy threshold (64 KiB) up.
``multiprocessing.Queue`` pickles; its "batch" mode puts one list per batch.
"""
from __future__ import annotations

import importlib.util
import os
import queue
import tempfile
import time
import uuid

from .harness import MEMCPY, Result, timed_rounds
from .procs import Crew

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


# ---- channels: make (in the consumer), producer end, consumer end ---------------------------
class _QueueProducer:
    """The producer end of a queue with ``put(value, block, timeout)`` (mp.Queue, faster-fifo)."""

    def __init__(self, ch) -> None:
        self.q = ch

    def put(self, value, flags) -> bool:
        while not flags[0]:
            try:
                self.q.put(value, True, _PUT_TIMEOUT)
                return True
            except queue.Full:
                pass
        return False


class _QueueConsumer:
    """The consumer end of a queue with ``get(block, timeout)``; ``drain`` is the queue's own."""

    def __init__(self, ch) -> None:
        self.q = ch

    def get(self, max_messages: int) -> int:
        try:
            self.q.get(True, _GET_TIMEOUT)
            return 1
        except queue.Empty:
            return 0

    def close(self) -> None:
        self.drain()


class MpQueue:
    name = "mp.Queue"

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        return ctx.Queue(4 * batch * producers if mode == "single" else 4 * producers)

    class Producer(_QueueProducer):
        put_batch = _QueueProducer.put     # a batch is one list

        def close(self) -> None:
            # no cancel_join_thread(): a feeder killed mid-write leaves half a
            # message in the pipe and the consumer's next get() hangs on it. The
            # queue is bounded, so flushing at exit is short (the consumer drains).
            self.q.close()

    class Consumer(_QueueConsumer):
        def get_batch(self, max_messages: int) -> int:
            try:
                return len(self.q.get(True, _GET_TIMEOUT))
            except queue.Empty:
                return 0

        def drain(self) -> None:
            try:
                while True:
                    self.q.get_nowait()
            except queue.Empty:
                pass


class FasterFifo:
    name = "faster-fifo"

    @staticmethod
    def queue(nbytes: int):
        """A faster-fifo queue of ``nbytes`` that passes bytes through unpickled."""
        import faster_fifo
        return faster_fifo.Queue(max_size_bytes=nbytes, loads=_identity, dumps=_identity)

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        return FasterFifo.queue(max(1 << 20, 4 * batch * (size + 64) * producers))

    class Producer(_QueueProducer):
        def put_batch(self, values, flags) -> bool:
            while not flags[0]:
                try:
                    self.q.put_many(values, True, _PUT_TIMEOUT)
                    return True
                except queue.Full:
                    pass
            return False

        def close(self) -> None:
            pass

    class Consumer(_QueueConsumer):
        def get_batch(self, max_messages: int) -> int:
            try:
                return len(self.q.get_many(True, _GET_TIMEOUT, max_messages_to_get=max_messages))
            except queue.Empty:
                return 0

        def drain(self) -> None:
            try:
                while True:
                    self.q.get_many_nowait()
            except queue.Empty:
                pass


class PyZmq:
    """PUSH/PULL over ``ipc://``: the consumer binds, producers connect."""

    name = "pyzmq"

    @staticmethod
    def make(ctx, size: int, batch: int, mode: str, producers: int):
        path = os.path.join(tempfile.gettempdir(), f"grafos-bench-{uuid.uuid4().hex[:12]}.ipc")
        hwm = 4 * batch if mode == "single" else 8
        return {"endpoint": f"ipc://{path}", "path": path, "hwm": hwm, "copy": size < 65536}

    class Producer:
        def __init__(self, ch) -> None:
            import zmq
            self.zmq = zmq
            self.ctx = zmq.Context()
            self.s = self.ctx.socket(zmq.PUSH)
            self.s.setsockopt(zmq.SNDHWM, ch["hwm"])
            self.s.setsockopt(zmq.SNDTIMEO, int(_PUT_TIMEOUT * 1000))
            self.s.setsockopt(zmq.LINGER, 0)
            self.s.connect(ch["endpoint"])
            self.copy = ch["copy"]

        def put(self, value, flags) -> bool:
            while not flags[0]:
                try:
                    self.s.send(value, copy=self.copy)
                    return True
                except self.zmq.Again:
                    pass
            return False

        def put_batch(self, values, flags) -> bool:
            while not flags[0]:
                try:
                    self.s.send_multipart(values, copy=self.copy)
                    return True
                except self.zmq.Again:
                    pass
            return False

        def close(self) -> None:
            self.s.close(0)
            self.ctx.term()

    class Consumer:
        def __init__(self, ch) -> None:
            import zmq
            self.zmq = zmq
            self.ch = ch
            self.ctx = zmq.Context()
            self.s = self.ctx.socket(zmq.PULL)
            self.s.setsockopt(zmq.RCVHWM, ch["hwm"])
            self.s.setsockopt(zmq.RCVTIMEO, int(_GET_TIMEOUT * 1000))
            self.s.setsockopt(zmq.LINGER, 0)
            self.s.bind(ch["endpoint"])
            self.copy = ch["copy"]

        def get(self, max_messages: int) -> int:
            try:
                self.s.recv(copy=self.copy)
                return 1
            except self.zmq.Again:
                return 0

        def get_batch(self, max_messages: int) -> int:
            try:
                return len(self.s.recv_multipart(copy=self.copy))
            except self.zmq.Again:
                return 0

        def drain(self) -> None:
            try:
                while True:
                    self.s.recv(self.zmq.NOBLOCK)
            except self.zmq.Again:
                pass

        def close(self) -> None:
            self.s.close(0)
            self.ctx.term()
            try:
                os.unlink(self.ch["path"])
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
    cons = cls.Consumer(ch)
    prod = cls.Producer(ch)
    flags = [0]
    values = payloads(size, batch)
    value = values[0]
    res = Result("inproc", peer, mode, "in-process", size, batch=batch)

    def one_round() -> int:
        if mode == "batch":
            prod.put_batch(values, flags)
        else:
            for _ in range(batch):
                prod.put(value, flags)
        got = 0
        get = cons.get_batch if mode == "batch" else cons.get
        stall = time.perf_counter() + 5.0
        while got < batch:
            n = get(batch - got)
            got += n
            if not n and time.perf_counter() > stall:
                raise RuntimeError(f"{peer}: a round of {batch} messages did not come back")
        return got

    try:
        res.messages, res.seconds = timed_rounds(one_round, duration)
    finally:
        cons.close()
        prod.close()
    return res


def producer_main(peer: str, ch, size: int, batch: int, mode: str, idx: int, flags) -> None:
    """Spawned producer for a peer: put until told to stop."""
    prod = PEER_CLASSES[peer].Producer(ch)
    values = payloads(size, batch)
    value = values[0]
    Crew.ready_and_wait(flags, idx)
    try:
        if mode == "batch":
            while prod.put_batch(values, flags):
                pass
        else:
            put = prod.put
            while put(value, flags):
                pass
    finally:
        prod.close()


def cross(peer: str, size: int, batch: int, mode: str, duration: float, *, producers: int = 1,
          group: str = "cross") -> Result:
    """Producer processes -> this process, counting messages received in ``duration``."""
    why = missing(peer)
    if why:
        return _missing_result(peer, group, mode, "cross-process", size, batch, producers, why)
    cls = PEER_CLASSES[peer]
    crew = Crew(producers)
    ch = cls.make(crew.ctx, size, batch, mode, producers)
    cons = cls.Consumer(ch)
    res = Result(group, peer, mode, "cross-process", size, batch=batch, producers=producers)
    try:
        crew.start(producer_main, lambda i: (peer, ch, size, batch, mode, i, crew.flags))
        crew.go()
        get = cons.get_batch if mode == "batch" else cons.get
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        while True:
            n += get(batch)
            t = time.perf_counter()
            if t >= deadline or not crew.alive():
                break
        res.messages, res.seconds = n, t - t0
        crew.join(drain=cons.drain)
        if crew.failed():
            res.status, res.note = "error", crew.failed()
    finally:
        crew.kill()
        cons.close()
    return res


def memcpy(size: int, batch: int, duration: float) -> Result:
    """``lib.gf_memcpy_bench`` moving one batch's bytes (``size * batch``) at a
    time out of a ring-sized buffer (``RING_BYTES``, the bus's working set per
    topic), chunk after chunk, as a reader walks a ring: the physical limit for
    a copy at the memory level the bus works in. (Copying one batch between the
    same two buffers over and over measures the L2 cache instead.)"""
    from .._native import ffi, lib
    from .grafos_runs import RING_BYTES
    nbytes = size * batch
    span = max(nbytes, RING_BYTES)
    src = ffi.new("uint8_t[]", span)
    dst = ffi.new("uint8_t[]", nbytes)
    ffi.memmove(src, b"\x5a" * span, span)
    starts = [src + off for off in range(0, span - nbytes + 1, nbytes)]

    def one_pass() -> int:
        for s in starts:
            lib.gf_memcpy_bench(dst, s, nbytes, 1)
        return len(starts) * nbytes

    copied, seconds = timed_rounds(one_pass, duration, warmup=1)
    return Result("memcpy", MEMCPY, "copy", "in-process", size, batch=batch,
                  messages=copied // size, seconds=seconds)
