"""Showing results: rich tables, the JSON file, the throughput-vs-size plot."""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .harness import GRAFOS, MEMCPY, Options, Result, Target

GROUP_TITLES = {
    "calls": "Per-message calls beside queue.Queue (one process, 100 B values, 16 B keys)",
    "inproc": "In-process (one thread produces a round, then consumes it)",
    "cross": "Cross-process (producer process -> consumer process)",
    "partitions": "grafos cost per message vs partitions (in-process batch, 64 B)",
    "topics": "grafos cost per message vs topics (in-process batch of 256 per topic, 64 B)",
    "producers": "Producer processes -> one consumer process (batch, 64 B)",
    "queue": "Queues of Python objects, producer process -> consumer process, put/get (size: pickled)",
    "share": "Work queue: two worker processes, each record acknowledged (100 B; acknowledged msg/s)",
    "memcpy": "memcpy of one batch's bytes out of a ring-sized buffer (the physical limit)",
}


def fmt_size(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:,.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:,.1f} k"
    return f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def tables(results: list[Result]) -> list[Table]:
    """One table per group; a peer that is not installed has no rows (see
    :func:`missing_peers`), and a grafos call measured against another grafos
    call shows that ratio in its note, never as a peer."""
    out = []
    for group in GROUP_TITLES:
        rows = [r for r in results if r.group == group and r.status != "missing"]
        if not rows:
            continue
        t = Table(title=GROUP_TITLES[group], title_justify="left", show_lines=False)
        sweep = group in ("partitions", "topics")
        t.add_column("system", style="bold")
        t.add_column("size", justify="right")
        if sweep:
            t.add_column(group, justify="right")
        if group == "producers":
            t.add_column("producers", justify="right")
        t.add_column("batch", justify="right")
        t.add_column("msg/s", justify="right")
        t.add_column("MB/s", justify="right")
        t.add_column("ns/msg", justify="right")
        if sweep:
            t.add_column(f"vs {getattr(rows[0], group)} {group}", justify="right")
        elif group != "memcpy":
            t.add_column("vs queue.Queue" if group == "calls" else "vs best peer", justify="right")
            t.add_column("vs memcpy", justify="right")
        t.add_column("note")
        for r in rows:
            style = "green" if r.system == GRAFOS else ("dim" if r.status != "ok" else None)
            cells = [r.label, fmt_size(r.size)]
            if sweep:
                cells.append(str(getattr(r, group)))
            if group == "producers":
                cells.append(str(r.producers))
            cells.append(str(r.batch) if r.system != MEMCPY else f"{r.batch} msgs")
            if r.status == "ok":
                ns = r.ns_per_msg
                cells += [_rate(r.msg_per_s), f"{r.mb_per_s:,.0f}", "" if math.isnan(ns) else f"{ns:,.1f}"]
            else:
                cells += ["-", "-", "-"]
            if sweep:
                cells.append(_ratio(r.vs_first))
            elif group != "memcpy":
                peer = f"{_ratio(r.vs_peer)} ({r.best_peer})" \
                    if r.vs_peer is not None and not r.best_peer.startswith(GRAFOS) else ""
                cells += [peer, f"{r.vs_memcpy * 100:.1f} %" if r.vs_memcpy is not None else ""]
            note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
            if r.lost and r.status == "ok" and not r.note:
                note = f"{r.lost} lost"
            cells.append(escape(note))   # notes hold brackets (pip install "grafos[peers]")
            t.add_row(*cells, style=style)
        out.append(t)
    return out


def missing_peers(results: list[Result]) -> dict[str, str]:
    """Each peer that could not be measured, once, with why (e.g. the extra to install)."""
    out: dict[str, str] = {}
    for r in results:
        if r.status == "missing":
            out.setdefault(r.system, r.note)
    return out


def goals_table(ts: Iterable[Target], source: str) -> Table:
    t = Table(title=f"Goals ({source}), judged on this run", title_justify="left")
    t.add_column("goal")
    t.add_column("threshold")
    t.add_column("measured")
    t.add_column("verdict")
    for x in ts:
        verdict = {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]not run[/]"}[x.met]
        t.add_row(escape(x.name), escape(x.goal), escape(x.measured), verdict)
    return t


def print_report(console: Console, results: list[Result], ts: list[Target],
                 goals_source: str | None = None) -> None:
    for t in tables(results):
        console.print(t)
    for peer, why in missing_peers(results).items():
        console.print(f"[yellow]{escape(peer)}: not measured, {escape(why)}[/]")
    if goals_source is not None:
        console.print(goals_table(ts, goals_source))


def machine() -> dict:
    """Where the numbers come from."""
    info: dict[str, object] = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        from importlib.metadata import version
        info["grafos"] = version("grafos")
    except Exception:  # noqa: BLE001
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        info["git"] = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                                     capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        pass
    return info


def write_json(path: str, opt: Options, results: list[Result], ts: list[Target]) -> None:
    doc = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": {"scenarios": list(opt.scenarios), "sizes": list(opt.sizes), "duration": opt.duration,
                    "partitions": list(opt.partitions), "topics": list(opt.topics),
                    "producers": list(opt.producers), "quick": opt.quick},
        "results": [r.to_dict() for r in results],
        "goals": [{"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met} for t in ts],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def have_matplotlib() -> bool:
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def plot(path: str, results: list[Result]) -> None:
    """Throughput (MB/s, log-log) against message size: one panel per placement,
    one line per system and mode, memcpy as the ceiling."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("inproc", "in-process"), ("cross", "cross-process")]
    panels = [(g, t) for g, t in panels if any(r.group == g and r.status == "ok" for r in results)]
    if not panels:
        panels = [("inproc", "in-process")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    mem = sorted((r for r in results if r.system == MEMCPY and r.status == "ok"), key=lambda r: r.size)
    for ax, (group, title) in zip(axes[0], panels):
        rows = [r for r in results if r.group == group and r.status == "ok" and r.messages]
        for label in sorted({r.label for r in rows}, key=lambda s: (not s.startswith(GRAFOS), s)):
            pts = sorted((r for r in rows if r.label == label), key=lambda r: r.size)
            style = "-" if label.endswith("batch") else "--"
            ax.plot([r.size for r in pts], [r.mb_per_s for r in pts], style, marker="o",
                    linewidth=2.5 if label.startswith(GRAFOS) else 1.2, label=label)
        if mem:
            ax.plot([r.size for r in mem], [r.mb_per_s for r in mem], ":", color="black", label="memcpy")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("payload MB/s")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("grafos beside its peers: throughput against message size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
