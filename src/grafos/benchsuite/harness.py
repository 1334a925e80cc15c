"""What a benchmark run is made of: the plan (which measurements), one
:class:`Result` per measurement, and the derived numbers (ratios against the
best peer and against memcpy) and the goals a run is judged against.

Every measurement is timed the same way whatever the system: a warm-up, then
as many rounds as fit in ``duration`` seconds, counting only messages that
reached the consumer.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

#: scenario groups, in the order they run
SCENARIOS = ("calls", "inproc", "cross", "partitions", "topics", "producers", "queue", "share")
SCENARIO_HELP = {
    "calls": "one process: send_keyed, send, poll(1000), send_batch of a list beside queue.Queue put/get",
    "inproc": "one process, one thread: produce a batch, consume it; every size; grafos and peers",
    "cross": "producer process -> consumer process (multiprocessing spawn); every size; grafos and peers",
    "partitions": "grafos in-process batch, 64 B, one topic of 1..64 partitions: cost per message",
    "topics": "grafos in-process batch, 64 B, 1..1000 topics of one partition: cost per message",
    "producers": "1..4 producer processes -> one consumer process, batch, 64 B; grafos and peers",
    "queue": "grafos.Queue beside mp.Queue and faster-fifo: Python objects (int, str, dict, 1 MiB array), "
             "producer process -> consumer process, put/get",
    "share": "work queue: two worker processes take and acknowledge 100 B records (batches of 200, or one "
             "by one); a grafos share group beside Redis Streams XREADGROUP + XACK and a JetStream work queue",
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
def vs_best_peer(r: Result, peers: list[Result]) -> None:
    """Set ``r``'s ratio over the fastest of ``peers`` (none: left unset)."""
    if peers:
        best = max(peers, key=lambda p: p.msg_per_s)
        r.vs_peer = r.msg_per_s / best.msg_per_s
        r.best_peer = best.label


def derive(results: list[Result]) -> None:
    """Fill the ratio fields in place."""
    ok = [r for r in results if r.status == "ok" and r.messages]
    memcpy = {r.size: r for r in ok if r.system == MEMCPY}
    for r in ok:
        if r.system == GRAFOS and r.group in ("inproc", "cross", "producers"):
            vs_best_peer(r, [p for p in ok if p.system in PEERS and p.group == r.group and p.size == r.size
                             and p.mode == r.mode and p.producers == r.producers])
        m = memcpy.get(r.size)
        if m is not None and r.system != MEMCPY and m.mb_per_s > 0:
            r.vs_memcpy = r.mb_per_s / m.mb_per_s
        if r.system == GRAFOS and r.group == "share":
            vs_best_peer(r, [p for p in ok if p.group == "share" and p.system != GRAFOS and p.mode == r.mode])
    for group, key in (("partitions", "partitions"), ("topics", "topics")):
        sweep = sorted((r for r in ok if r.group == group), key=lambda r: getattr(r, key))
        if sweep:
            first = sweep[0].ns_per_msg
            for r in sweep:
                r.vs_first = r.ns_per_msg / first


#: what a goal can measure, and how its threshold reads in the table
GOAL_METRICS = {
    "msg_per_s": "messages/s of one row, at least the threshold",
    "vs_memcpy": "MB/s of one row over memcpy's for the same bytes, at least the threshold",
    "vs_peer": "messages/s of one row over the best peer's in the same mode, at least the threshold",
    "flat": "ns per message across a sweep (partitions or topics), within the threshold of the first",
}


@dataclass
class Goal:
    """A speed goal judged on a run: ``metric`` of the rows ``select`` picks,
    against ``threshold``. Goals are data (``grafos bench --goals FILE``), not
    part of the measurements."""

    name: str
    metric: str
    threshold: float
    select: dict = field(default_factory=dict)

    def describe(self) -> str:
        x = self.threshold
        if self.metric == "msg_per_s":
            return f">= {x / 1e6:g} M msg/s"
        if self.metric == "vs_memcpy":
            return f">= {x * 100:g} % of memcpy"
        if self.metric == "vs_peer":
            return f">= {x:g}x best peer"
        return f"within {x * 100:g} %"


@dataclass
class Target:
    """A goal's verdict on one run."""

    name: str
    goal: str
    measured: str
    met: bool | None          #: None: not measured in this run


def load_goals(path: str) -> list[Goal]:
    """Goals from a JSON file: ``{"goals": [{"name", "metric", "threshold",
    "select": {result field: value}}, ...]}``. A malformed file is a ValueError
    naming the file and the entry."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
    entries = doc.get("goals") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected an object with a \"goals\" list")
    fields = {f.name for f in dataclasses.fields(Result)}
    out = []
    for i, g in enumerate(entries):
        where = f"{path}: goal {i}"
        if not isinstance(g, dict) or not isinstance(g.get("name"), str):
            raise ValueError(f"{where}: needs a \"name\" string")
        if g.get("metric") not in GOAL_METRICS:
            raise ValueError(f"{where} ({g['name']}): metric must be one of {', '.join(GOAL_METRICS)}, "
                             f"not {g.get('metric')!r}")
        th = g.get("threshold")
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th):
            raise ValueError(f"{where} ({g['name']}): threshold must be a number, not {th!r}")
        sel = g.get("select", {})
        if not isinstance(sel, dict) or not set(sel) <= fields:
            raise ValueError(f"{where} ({g['name']}): select must map result fields "
                             f"({', '.join(sorted(fields))}) to values")
        if g["metric"] == "flat" and sel.get("group") not in ("partitions", "topics"):
            raise ValueError(f"{where} ({g['name']}): a flat goal selects group partitions or topics")
        out.append(Goal(g["name"], g["metric"], float(th), dict(sel)))
    return out


def _find(results: Iterable[Result], **kw) -> Result | None:
    for r in results:
        if r.status == "ok" and all(getattr(r, k) == v for k, v in kw.items()):
            return r
    return None


def judge(goals: Iterable[Goal], results: list[Result]) -> list[Target]:
    """Each goal judged on this run's numbers (None where the run did not measure it)."""
    out = []
    for g in goals:
        x = g.threshold
        if g.metric == "flat":
            sweep = [r for r in results if r.status == "ok" and r.vs_first
                     and all(getattr(r, k) == v for k, v in g.select.items())]
            if len(sweep) < 2:
                out.append(Target(g.name, g.describe(), "not run", None))
                continue
            key = g.select["group"]
            sweep.sort(key=lambda r: getattr(r, key))
            worst = max(sweep, key=lambda r: abs(r.vs_first - 1))   # type: ignore[operator]
            out.append(Target(g.name, g.describe(),
                              f"worst {worst.vs_first:.2f}x at {getattr(worst, key)} {key} "
                              f"({worst.ns_per_msg:.0f} ns vs {sweep[0].ns_per_msg:.0f} ns)",
                              abs(worst.vs_first - 1) <= x))   # type: ignore[operator]
            continue
        r = _find(results, **g.select)
        if g.metric == "msg_per_s":
            out.append(Target(g.name, g.describe(), f"{r.msg_per_s / 1e6:.1f} M msg/s" if r else "not run",
                              r.msg_per_s >= x if r else None))
        elif g.metric == "vs_memcpy":
            ok = r is not None and r.vs_memcpy is not None
            out.append(Target(g.name, g.describe(),
                              f"{r.vs_memcpy * 100:.0f} % ({r.mb_per_s:,.0f} MB/s)" if ok else "not run",  # type: ignore[union-attr,operator]
                              r.vs_memcpy >= x if ok else None))  # type: ignore[union-attr,operator]
        else:
            ok = r is not None and r.vs_peer is not None
            out.append(Target(g.name, g.describe(),
                              f"{r.vs_peer:.1f}x ({r.best_peer})" if ok else "not run",  # type: ignore[union-attr]
                              r.vs_peer >= x if ok else None))  # type: ignore[union-attr,operator]
    return out
