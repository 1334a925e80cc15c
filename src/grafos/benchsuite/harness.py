"""What a benchmark run is made of: the plan (which measurements), one
:class:`Result` per measurement, and the derived numbers (ratios against the
best peer and against memcpy, the issue's targets).

Every measurement is timed the same way whatever the system: a warm-up, then
as many rounds as fit in ``duration`` seconds, counting only messages that
reached the consumer.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

#: scenario groups, in the order they run
SCENARIOS = ("calls", "inproc", "cross", "partitions", "topics", "producers")
SCENARIO_HELP = {
    "calls": "one process: send_keyed, send, poll(1000), send_batch of a list beside queue.Queue put/get",
    "inproc": "one process, one thread: produce a batch, consume it; every size; grafos and peers",
    "cross": "producer process -> consumer process (multiprocessing spawn); every size; grafos and peers",
    "partitions": "grafos in-process batch, 64 B, one topic of 1..64 partitions: cost per message",
    "topics": "grafos in-process batch, 64 B, 1..1000 topics of one partition: cost per message",
    "producers": "1..4 producer processes -> one consumer process, batch, 64 B; grafos and peers",
}
DEFAULT_SIZES = (16, 64, 256, 1024, 4096, 16384, 65536)
QUICK_SIZES = (64, 4096)
DEFAULT_PARTITIONS = (1, 4, 16, 64)
DEFAULT_TOPICS = (1, 10, 100, 1000)
DEFAULT_PRODUCERS = (1, 2, 4)
PEERS = ("mp.Queue", "faster-fifo", "pyzmq")
GRAFOS = "grafos"
MEMCPY = "memcpy"
#: bytes moved per batch: batches of this many bytes keep the working set in L2
BATCH_BYTES = 256 << 10
MAX_BATCH = 4096
#: untimed rounds before the clock starts
WARMUP_ROUNDS = 3


def batch_for(size: int) -> int:
    """Messages per batch for ``size``-byte messages (the same for every system)."""
    return max(4, min(MAX_BATCH, BATCH_BYTES // size))


def timed_rounds(one_round: Callable[[], int], duration: float,
                 warmup: int = WARMUP_ROUNDS) -> tuple[int, float]:
    """``warmup`` untimed rounds, then whole rounds until ``duration`` seconds have
    passed: (the sum of what the timed rounds returned, the seconds they took)."""
    for _ in range(warmup):
        one_round()
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + duration
    while True:
        n += one_round()
        t = time.perf_counter()
        if t >= deadline:
            break
    return n, t - t0


@dataclass
class Result:
    """One measurement. ``status`` is ``ok``, ``missing`` (peer not installed)
    or ``error`` (the run failed; ``note`` says why)."""

    group: str               #: scenario group (see SCENARIOS) or "memcpy"
    system: str              #: grafos, mp.Queue, faster-fifo, pyzmq, memcpy
    mode: str                #: single | batch
    placement: str           #: in-process | cross-process
    size: int                #: message (value) bytes
    batch: int = 1
    partitions: int = 1
    topics: int = 1
    producers: int = 1
    messages: int = 0        #: messages that reached the consumer while timed
    seconds: float = 0.0
    lost: int = 0            #: grafos: messages overwritten before the consumer read them
    status: str = "ok"
    note: str = ""
    # derived (filled by derive())
    vs_peer: float | None = None      #: msg/s over the best peer's in the same group, size and mode
    best_peer: str = ""
    vs_memcpy: float | None = None    #: MB/s over memcpy's MB/s for the same batch bytes
    vs_first: float | None = None     #: ns/msg over the first point of a sweep (partitions, topics)

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Payload megabytes (10^6 B) per second."""
        return self.msg_per_s * self.size / 1e6

    @property
    def ns_per_msg(self) -> float:
        return self.seconds / self.messages * 1e9 if self.messages else math.nan

    @property
    def label(self) -> str:
        return self.system if self.system == MEMCPY else f"{self.system} {self.mode}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(msg_per_s=self.msg_per_s, mb_per_s=self.mb_per_s,
                 ns_per_msg=None if math.isnan(self.ns_per_msg) else self.ns_per_msg)
        return d


@dataclass
class Job:
    """One measurement to run: a description and the function that makes its Result."""

    title: str
    run: Callable[[], Result]


@dataclass
class Options:
    scenarios: tuple[str, ...] = SCENARIOS
    sizes: tuple[int, ...] = DEFAULT_SIZES
    duration: float = 0.5
    partitions: tuple[int, ...] = DEFAULT_PARTITIONS
    topics: tuple[int, ...] = DEFAULT_TOPICS
    producers: tuple[int, ...] = DEFAULT_PRODUCERS
    cross_sizes: tuple[int, ...] | None = None   #: sizes for "cross" (default: sizes)
    quick: bool = False
    extra: dict = field(default_factory=dict)


def quick_options() -> Options:
    """A few seconds: in-process at 64 B and 4 KiB, cross-process batch at 64 B,
    every peer and memcpy, a short partitions and topics sweep."""
    return Options(scenarios=("calls", "inproc", "cross", "partitions", "topics"), sizes=QUICK_SIZES,
                   duration=0.15, partitions=(1, 16), topics=(1, 100), producers=(1,),
                   cross_sizes=(64,), quick=True)


# ---- derived numbers ----------------------------------------------------------------
def derive(results: list[Result]) -> None:
    """Fill the ratio fields in place."""
    ok = [r for r in results if r.status == "ok" and r.messages]
    memcpy = {r.size: r for r in ok if r.system == MEMCPY}
    for r in ok:
        if r.system == GRAFOS and r.group in ("inproc", "cross", "producers"):
            peers = [p for p in ok if p.system in PEERS and p.group == r.group and p.size == r.size
                     and p.mode == r.mode and p.producers == r.producers]
            if peers:
                best = max(peers, key=lambda p: p.msg_per_s)
                r.vs_peer = r.msg_per_s / best.msg_per_s
                r.best_peer = best.label
        m = memcpy.get(r.size)
        if m is not None and r.system != MEMCPY and m.mb_per_s > 0:
            r.vs_memcpy = r.mb_per_s / m.mb_per_s
    for group, key in (("partitions", "partitions"), ("topics", "topics")):
        sweep = sorted((r for r in ok if r.group == group), key=lambda r: getattr(r, key))
        if sweep:
            first = sweep[0].ns_per_msg
            for r in sweep:
                r.vs_first = r.ns_per_msg / first


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None          #: None: not measured in this run


def _find(results: Iterable[Result], **kw) -> Result | None:
    for r in results:
        if r.status == "ok" and all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def targets(results: list[Result]) -> list[Target]:
    """The issue's targets, judged on this run's numbers."""
    out = []
    r = _find(results, group="inproc", system=GRAFOS, mode="batch", size=64)
    out.append(Target("in-process batch, 64 B", ">= 30 M msg/s",
                      f"{r.msg_per_s / 1e6:.1f} M msg/s" if r else "not run",
                      r.msg_per_s >= 30e6 if r else None))
    r = _find(results, group="inproc", system=GRAFOS, mode="batch", size=4096)
    out.append(Target("in-process batch, 4 KiB", ">= 60 % of memcpy",
                      f"{r.vs_memcpy * 100:.0f} % ({r.mb_per_s:,.0f} MB/s)" if r and r.vs_memcpy else "not run",
                      r.vs_memcpy >= 0.6 if r and r.vs_memcpy else None))
    r = _find(results, group="cross", system=GRAFOS, mode="batch", size=64)
    out.append(Target("cross-process batch, 64 B", ">= 20 M msg/s",
                      f"{r.msg_per_s / 1e6:.1f} M msg/s" if r else "not run",
                      r.msg_per_s >= 20e6 if r else None))
    out.append(Target("cross-process batch, 64 B vs best peer batch", ">= 10x",
                      f"{r.vs_peer:.1f}x ({r.best_peer})" if r and r.vs_peer else "not run",
                      r.vs_peer >= 10 if r and r.vs_peer else None))
    for group, what in (("partitions", "1 to 64 partitions"), ("topics", "1 to 1,000 topics")):
        sweep = [x for x in results if x.group == group and x.status == "ok" and x.vs_first]
        if len(sweep) > 1:
            worst = max(sweep, key=lambda x: abs(x.vs_first - 1))   # type: ignore[operator]
            n = getattr(worst, group)
            out.append(Target(f"cost per message flat, {what}", "within 20 %",
                              f"worst {worst.vs_first:.2f}x at {n} {group} "
                              f"({worst.ns_per_msg:.0f} ns vs {sweep[0].ns_per_msg:.0f} ns)",
                              abs(worst.vs_first - 1) <= 0.2))   # type: ignore[operator]
        else:
            out.append(Target(f"cost per message flat, {what}", "within 20 %", "not run", None))
    return out
