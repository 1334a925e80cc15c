"""Producer processes for the cross-process scenarios (multiprocessing
"spawn", so each starts from a clean interpreter as a real separate program
would). Only processes started here are ever killed, by their own handles.

``flags`` is a shared array of int64 the producers poll without a lock:
``[0]`` stop, ``[1]`` messages consumed so far (flow control), ``[2]`` go,
``[3 + i]`` producer i is ready.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Callable

STOP, CONSUMED, GO, READY = 0, 1, 2, 3
START_TIMEOUT = 60.0    # seconds for a spawned producer to import and attach
JOIN_TIMEOUT = 10.0
#: single-message calls between looks at a flag or the clock, for every system
BURST = 64
#: seconds between looks at whether the producers still run (a syscall per process)
ALIVE_EVERY = 0.05


class Crew:
    """``n`` spawned producer processes and the shared flags they watch."""

    def __init__(self, n: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.n = n
        self.flags = self.array("q", READY + n)
        self.procs: list = []
        self._next_look = 0.0

    def array(self, typecode: str, n: int):
        return self.ctx.RawArray(typecode, n)

    def start(self, target: Callable, args: Callable[[int], tuple]) -> None:
        for i in range(self.n):
            p = self.ctx.Process(target=target, args=args(i), daemon=True, name=f"grafos-bench-producer-{i}")
            p.start()
            self.procs.append(p)

    @staticmethod
    def ready_and_wait(flags, idx: int) -> None:
        """In a producer: say ready, then wait for go (or stop)."""
        flags[READY + idx] = 1
        while not flags[GO] and not flags[STOP]:
            time.sleep(0.0002)

    def go(self) -> None:
        """Wait until every producer is ready, then start them all."""
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self.flags[READY + i] for i in range(self.n)):
            if not self.alive():
                raise RuntimeError(f"a producer process exited before it was ready: {self.failed()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"producer processes not ready after {START_TIMEOUT:.0f} s")
            time.sleep(0.002)
        self.flags[GO] = 1

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def dead(self, now: float) -> bool:
        """Whether a producer has exited, looked at no more than once per
        :data:`ALIVE_EVERY` seconds of ``now`` (``time.perf_counter()``), so a
        consumer loop may ask after every call."""
        if now < self._next_look:
            return False
        self._next_look = now + ALIVE_EVERY
        return not self.alive()

    def stop(self) -> None:
        self.flags[STOP] = 1

    def join(self, drain: Callable[[], object]) -> None:
        """Stop the producers; ``drain`` empties the channel meanwhile so that a
        producer blocked on a full queue can see the stop flag."""
        self.stop()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            drain()
            for p in self.procs:
                p.join(0.001)

    def failed(self) -> str:
        bad = [f"{p.name} exit code {p.exitcode}" for p in self.procs
               if p.exitcode not in (None, 0)]
        return "; ".join(bad)

    def kill(self) -> None:
        """Kill what is still running (only our own processes, by handle)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
