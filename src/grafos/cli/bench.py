"""``grafos bench``: throughput of grafos beside multiprocessing.Queue,
faster-fifo, pyzmq and memcpy, measured in the same run and harness.

The runners live in :mod:`grafos.benchsuite` so the command works from an
installed package.
"""
from __future__ import annotations

import re

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..benchsuite import SCENARIO_HELP, SCENARIOS, Options, judge, load_goals, plan, quick_options, run_jobs
from ..benchsuite import report
from . import main

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20}


def _ints(value: str, what: str, lo: int, hi: int, units: bool = False) -> tuple[int, ...]:
    out = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", part)
        if not m or (m.group(2) and not units) or m.group(2).lower() not in _UNITS:
            raise click.BadParameter(f"{part!r} is not a number{' of bytes (e.g. 64, 4K, 64KiB)' if units else ''}",
                                     param_hint=f"--{what}")
        n = int(m.group(1)) * _UNITS[m.group(2).lower()]
        if not lo <= n <= hi:
            raise click.BadParameter(f"{part} is out of range ({lo} to {hi})", param_hint=f"--{what}")
        out.append(n)
    if not out:
        raise click.BadParameter("needs at least one value", param_hint=f"--{what}")
    return tuple(dict.fromkeys(out))


def _scenario_help() -> str:
    return "; ".join(f"{k}: {v}" for k, v in SCENARIO_HELP.items())


@main.command()
@click.option("--quick", is_flag=True, help="A small subset in a few seconds (64 B and 4 KiB in-process, "
              "64 B cross-process batch, short sweeps).")
@click.option("--scenario", "-s", "scenarios", multiple=True, type=click.Choice(SCENARIOS + ("all",)),
              help="Scenario group to run (repeatable; default all). " + _scenario_help())
@click.option("--sizes", default=None, metavar="LIST",
              help="Message sizes, e.g. 16,64,4K,64K (default 16 B to 64 KiB).")
@click.option("--duration", type=click.FloatRange(0.01, 60), default=None,
              help="Seconds timed per measurement (default 0.5; --quick 0.15).")
@click.option("--partitions", "partitions", default=None, metavar="LIST",
              help="Partition counts for the partitions sweep (default 1,4,16,64).")
@click.option("--topics", "topics", default=None, metavar="LIST",
              help="Topic counts for the topics sweep (default 1,10,100,1000).")
@click.option("--producers", "producers", default=None, metavar="LIST",
              help="Producer process counts for the producers scenario (default 1,2,4).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write every result, the goals' verdicts and the machine to this JSON file.")
@click.option("--goals", "goals_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Judge the run against the goals in this JSON file (the source tree's "
                   "benchmarks/goals.json holds the project's).")
@click.option("--nats", "nats_url", metavar="URL", default=None,
              help="Measure the JetStream bus on the server at URL against raw nats-py doing the "
                   "same work (publish, pipelined publish, fetch, group round trip) instead.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG of throughput against message size (needs matplotlib: "
                   'pip install "grafos[plot]").')
def bench(quick: bool, scenarios: tuple[str, ...], sizes: str | None, duration: float | None,
          partitions: str | None, topics: str | None, producers: str | None,
          json_path: str | None, plot_path: str | None, goals_path: str | None,
          nats_url: str | None) -> None:
    """Measure grafos beside multiprocessing.Queue, faster-fifo, pyzmq (ipc://) and
    memcpy: messages/s and MB/s, ratios against the best peer and against memcpy.

    Peers that are not installed are reported as missing (pip install "grafos[peers]").
    Numbers from a shared or busy machine are noisy: compare within one run.
    """
    if nats_url is not None:
        _bench_nats(nats_url, quick, json_path)
        return
    if plot_path and not report.have_matplotlib():
        raise click.ClickException("--plot needs matplotlib, which is not installed: "
                                   'pip install matplotlib (or pip install "grafos[plot]")')
    goals = []
    if goals_path:
        try:
            goals = load_goals(goals_path)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--goals") from None
    opt = quick_options() if quick else Options()
    if scenarios and "all" not in scenarios:
        opt.scenarios = tuple(s for s in SCENARIOS if s in scenarios)
    elif scenarios:
        opt.scenarios = SCENARIOS
    if sizes is not None:
        opt.sizes = _ints(sizes, "sizes", 1, 1 << 20, units=True)
        opt.cross_sizes = opt.sizes[:1] if quick else None   # --quick: one cross-process size
    if duration is not None:
        opt.duration = duration
    if partitions is not None:
        opt.partitions = _ints(partitions, "partitions", 1, 4096)
    if topics is not None:
        opt.topics = _ints(topics, "topics", 1, 4000)
    if producers is not None:
        opt.producers = _ints(producers, "producers", 1, 64)

    console = Console()
    if not console.is_terminal:     # piped to a file: keep rows on one line
        console = Console(width=160)
    jobs = plan(opt)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("starting", total=len(jobs))

        def step(job, result) -> None:  # noqa: ANN001
            if result is None:
                progress.update(task, description=job.title)
            else:
                progress.advance(task)

        results = run_jobs(jobs, step)
    ts = judge(goals, results)
    report.print_report(console, results, ts, goals_path)
    errors = [r for r in results if r.status == "error"]
    for r in errors:
        console.print(f"[red]error[/] {r.placement} {r.label} {r.size} B: {escape(r.note)}")
    if json_path:
        report.write_json(json_path, opt, results, ts)
        console.print(f"wrote {json_path}")
    if plot_path:
        report.plot(plot_path, results)
        console.print(f"wrote {plot_path}")
    if any(r.system == "grafos" and r.status == "error" for r in errors):
        raise SystemExit(1)


def _bench_nats(url: str, quick: bool, json_path: str | None) -> None:
    import json
    from dataclasses import asdict

    from rich.table import Table

    from ..benchsuite import jetstream
    from ..errors import GrafosError

    console = Console()
    try:
        results = jetstream.run(url, n=500 if quick else 2000, rounds=1 if quick else 3)
    except GrafosError as e:
        raise click.ClickException(str(e)) from None
    t = Table(title=f"grafos on JetStream ({url}) against raw nats-py, 100 B messages, best of "
                    f"{1 if quick else 3}")
    for col in ("scenario", "messages", "grafos msg/s", "raw nats-py msg/s", "grafos time / raw"):
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        t.add_row(r.scenario, str(r.messages), f"{r.grafos_per_s:,.0f}", f"{r.raw_per_s:,.0f}",
                  f"{r.ratio:.2f}x")
    console.print(t)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"server": url, "results": [dict(asdict(r), ratio=r.ratio) for r in results]}, f,
                      indent=2)
        console.print(f"wrote {json_path}")
