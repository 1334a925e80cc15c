"""``grafos top NAME|URL``: a live view of a bus, refreshed a few times a second.

Per topic and partition: produce rate, offsets held, lost to overwrite and
abandoned slots, a lease TTL bar, the gate and blocked producers of a gated
topic, and the depth of dead-letter topics (on shared memory: a topic whose
newest message carries the DLQ's source-topic header); per consumer group: lag and the
owner of each partition. It reads the bus the way ``describe`` and ``groups``
do (metadata under the bus's lock, ring headers without one) and holds no
reader lease or gate, so it never holds a producer back.

Keys: ``s`` cycles the sort (name, rate, lag, lost), ``/`` starts a topic
filter (type, Enter to apply, Esc to clear), ``q`` quits. ``--once`` prints
one frame (rates measured over one interval) for scripts and tests.
"""
from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import GrafosError, NotFound
from . import main
from .inspect import JSON, NAME, _bus, _console, _dump, _group_rows, _ttl

SORTS = ("name", "rate", "lag", "lost")
BAR = 10      # characters of a lease TTL bar


@dataclass
class PartRow:
    partition: int
    latest: int
    held: int
    rate: float               #: offsets produced per second over the last interval
    lost: int
    abandoned: int
    ttl: float
    alive: bool
    gate: int
    blocked: int


@dataclass
class TopicRow:
    topic: str
    retention: float
    on_full: str
    dlq: bool                 #: holds dead letters (its newest message names a source topic)
    parts: list[PartRow] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return sum(p.rate for p in self.parts)

    @property
    def produced(self) -> int:
        return sum(p.latest for p in self.parts)

    @property
    def held(self) -> int:
        return sum(p.held for p in self.parts)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.parts)

    @property
    def abandoned(self) -> int:
        return sum(p.abandoned for p in self.parts)

    @property
    def blocked(self) -> int:
        return sum(p.blocked for p in self.parts)


@dataclass
class Frame:
    bus: str
    at: float
    topics: list[TopicRow]
    groups: list[dict[str, Any]]

    def lag(self, topic: str) -> int:
        return sum(g["lag"] or 0 for g in self.groups if g["topic"] == topic)


class Sampler:
    """Takes frames of one bus; rates come from the difference to the previous frame."""

    def __init__(self, mgr: Any, bus: str) -> None:
        self.mgr = mgr
        self.bus = bus
        self._last: dict[tuple[str, int], tuple[float, int]] = {}
        self._dlq: dict[str, bool] = {}

    def frame(self) -> Frame:
        now = time.time()
        mono = time.monotonic()
        rows = []
        for t in self.mgr.topics():
            try:
                d = self.mgr.describe(t)
            except NotFound:
                continue          # deleted while we listed
            row = TopicRow(t, d.config.retention_secs, d.config.on_full, self._is_dlq(t, d))
            for p in d.partitions:
                prev = self._last.get((t, p.partition))
                rate = 0.0
                if prev is not None and mono > prev[0] and p.latest >= prev[1]:
                    rate = (p.latest - prev[1]) / (mono - prev[0])
                self._last[(t, p.partition)] = (mono, p.latest)
                row.parts.append(PartRow(p.partition, p.latest, p.latest - p.earliest, rate, p.lost,
                                         p.abandoned, p.ttl_remaining, p.alive, p.gate, p.blocked))
            rows.append(row)
        return Frame(self.bus, now, rows, _group_rows(self.mgr))

    def _is_dlq(self, topic: str, d: Any) -> bool:
        """A topic is a DLQ once a dead letter (a message with the source-topic
        header) is in it; decided once per topic, from its first non-empty partition."""
        if topic in self._dlq:
            return self._dlq[topic]
        from ..mq.dlq import SOURCE_TOPIC
        if not self.mgr.capabilities.shared_memory:
            return False          # a server bus: its rings are not ours to read
        for p in d.partitions:
            if p.alive and p.latest > p.earliest:
                try:
                    msgs = self.mgr.topic(topic).partition(p.partition).read(p.latest - 1, 1)
                except GrafosError:
                    return False
                if msgs:
                    self._dlq[topic] = any(k == SOURCE_TOPIC for k, _ in msgs[0].headers)
                    return self._dlq[topic]
        return False


def _bar(ttl: float, retention: float, alive: bool) -> Text:
    if not alive:
        return Text("expired", style="red")
    full = BAR if retention <= 0 else max(0, min(BAR, round(BAR * ttl / retention)))
    style = "green" if full > BAR // 3 else "yellow" if full > 0 else "red"
    return Text("█" * full, style=style) + Text("░" * (BAR - full), style="dim") + Text(f" {_ttl(ttl)}")


def _sorted(frame: Frame, sort: str) -> list[TopicRow]:
    keys = {"name": lambda r: r.topic, "rate": lambda r: (-r.rate, r.topic),
            "lag": lambda r: (-frame.lag(r.topic), r.topic), "lost": lambda r: (-r.lost, r.topic)}
    return sorted(frame.topics, key=keys[sort])


def render(frame: Frame, sort: str = "name", filt: str = "", editing: str | None = None) -> RenderableType:
    """One frame as rich renderables: a header line, the partitions table, the groups table."""
    topics = [r for r in _sorted(frame, sort) if filt in r.topic]
    shown = {r.topic for r in topics}
    head = Text.assemble(("grafos top ", "bold"), (frame.bus, "bold cyan"),
                         f"  {time.strftime('%H:%M:%S', time.localtime(frame.at))}"
                         f"  topics {len(topics)}/{len(frame.topics)}  sort: {sort}")
    if editing is not None:
        head.append(f"  filter: {editing}_", style="reverse")
    elif filt:
        head.append(f"  filter: {filt}", style="yellow")
    head.append("   [s]ort [/]filter [q]uit", style="dim")

    pt = Table(title="partitions", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("topic", "part", "msg/s", "produced", "held", "lost", "abandoned", "lease TTL",
                "gate", "blocked", "dlq depth"):
        pt.add_column(col, justify="left" if col in ("topic", "lease TTL") else "right", no_wrap=True)
    for r in topics:
        gated = r.on_full != "overwrite"
        pt.add_row(Text(r.topic, style="bold"), "all", f"{r.rate:.1f}", str(r.produced), str(r.held),
                   _red(r.lost), _red(r.abandoned), "", "", _red(r.blocked) if gated else "-",
                   str(r.held) if r.dlq else "-")
        for p in r.parts:
            pt.add_row("", str(p.partition), f"{p.rate:.1f}", str(p.latest), str(p.held), _red(p.lost),
                       _red(p.abandoned), _bar(p.ttl, r.retention, p.alive),
                       (str(p.gate) if p.gate else "-") if gated else "-",
                       _red(p.blocked) if gated else "-", str(p.held) if r.dlq else "-")

    gt = Table(title="consumer groups", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("group", "topic", "part", "owner", "committed", "lag", "lost"):
        gt.add_column(col, justify="left" if col in ("group", "topic", "owner") else "right", no_wrap=True)
    for g in frame.groups:
        if g["topic"] not in shown:
            continue
        if g["error"]:
            gt.add_row(escape(g["group"]), g["topic"], "", Text(g["error"], style="red"), "", "", "")
            continue
        stale = set(g["stale_members"])
        gt.add_row(Text(g["group"], style="bold"), g["topic"], "all",
                   Text(f"stale: {', '.join(sorted(stale))}", style="red") if stale else "",
                   "", str(g["lag"]), _red(sum(p.get("lost", 0) for p in g["partitions"])))
        for p in g["partitions"]:
            owner = p["owner"] or "-"
            gt.add_row("", "", str(p["partition"]),
                       Text(owner, style="red" if owner in stale else ""),
                       "-" if p["committed"] is None else str(p["committed"]), str(p["lag"]),
                       _red(p.get("lost", 0)))
    return Group(head, pt, gt)


def _red(n: int) -> Text:
    return Text(str(n), style="red" if n else "")


def _frame_json(frame: Frame) -> dict[str, Any]:
    return {"bus": frame.bus, "at": frame.at,
            "topics": [{"topic": r.topic, "rate": r.rate, "produced": r.produced, "held": r.held,
                        "lost": r.lost, "abandoned": r.abandoned, "blocked": r.blocked,
                        "dlq_depth": r.held if r.dlq else None,
                        "partitions": [vars(p) for p in r.parts]} for r in frame.topics],
            "groups": frame.groups}


class _Keys:
    """Single key presses from a terminal (cbreak mode, restored on exit); nothing
    when standard input is not a terminal."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        self._saved: Any = None

    def __enter__(self) -> "_Keys":
        if self.fd is not None:
            import termios
            import tty
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def read(self, timeout: float) -> Iterator[str]:
        """The keys pressed within ``timeout`` seconds (waits the whole time when none)."""
        if self.fd is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            yield from os.read(self.fd, 64).decode("utf-8", "ignore")


@main.command()
@NAME
@click.option("--once", is_flag=True, help="Print one frame and exit (rates over one interval).")
@click.option("--interval", "-i", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between frames.")
@click.option("--sort", type=click.Choice(SORTS), default="name", show_default=True,
              help="Order of the topics (the s key cycles it).")
@click.option("--topic", "-t", "filt", default="", help="Only topics whose name contains this.")
@JSON
def top(name: str, once: bool, interval: float, sort: str, filt: str, as_json: bool) -> None:
    """A live view of bus NAME: produce rates, lag and owners, gates and blocked
    producers, lease TTL, lost and abandoned counts, DLQ depth. Keys: s sort,
    / filter by topic, q quit."""
    if as_json and not once:
        raise click.UsageError("--json prints one frame: give --once too")
    with _bus(name) as mgr:
        sampler = Sampler(mgr, name)
        if once:
            sampler.frame()
            time.sleep(interval)
            frame = sampler.frame()
            if as_json:
                _dump(_frame_json(frame))
            else:
                _console().print(render(frame, sort, filt))
            return
        _live(sampler, interval, sort, filt)


def _live(sampler: Sampler, interval: float, sort: str, filt: str) -> None:
    from rich.live import Live

    editing: str | None = None       # the filter being typed, None when not typing
    console = Console(highlight=False)
    with _Keys() as keys, Live(console=console, screen=True, auto_refresh=False) as live:
        frame = sampler.frame()
        live.update(render(frame, sort, filt, editing), refresh=True)
        next_at = time.monotonic() + interval
        while True:
            changed = False
            try:
                for k in keys.read(max(0.0, next_at - time.monotonic())):
                    changed = True
                    if editing is not None:
                        if k in "\r\n":
                            filt, editing = editing, None
                        elif k == "\x1b":
                            filt, editing = "", None
                        elif k in "\x7f\b":
                            editing = editing[:-1]
                        elif k.isprintable():
                            editing += k
                    elif k in "qQ":
                        return
                    elif k == "s":
                        sort = SORTS[(SORTS.index(sort) + 1) % len(SORTS)]
                    elif k == "/":
                        editing = ""
                    elif k == "\x1b":
                        filt = ""
            except KeyboardInterrupt:
                return
            if time.monotonic() >= next_at:
                frame = sampler.frame()
                next_at = time.monotonic() + interval
                changed = True
            if changed:
                live.update(render(frame, sort, filt, editing), refresh=True)
