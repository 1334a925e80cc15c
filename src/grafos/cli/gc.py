"""``grafos gc NAME|--all [--yes]``: find named buses nobody uses any more.

A bus is idle when no process has it open (every attached handle holds the
file's lock), no live process holds its metadata lock, and every lease in it
has expired (or its creator died before finishing it). A queue's bus
(``grafos.Queue``, named ``queue-...``) is idle once no process has it open:
its leases live as long as its users. ``gc`` lists what it
finds; ``--yes`` removes the idle ones (checked again, under the file's
lock, at the moment of removal).
"""
from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.table import Table

from .. import _validate
from ..errors import GrafosError
from ..fabric import named_fabrics, probe, shm_path
from ..queues import QUEUE_PREFIX
from . import main
from .inspect import _console, fail


def _verdict(u: Any, queue: bool) -> str:
    if u.removed:
        return "removed"
    if u.in_use:
        return "in use"
    if u.lock_alive:
        return f"locked by live pid {u.lock_pid}"
    if queue:
        return "idle (a queue no process has open)"
    if u.leases_live:
        return f"{u.leases_live} live lease(s)"
    return "idle" if u.ready else "idle (abandoned before it was ready)"


def human_size(n: int) -> str:
    """Bytes in binary units for people (``--json`` keeps the byte count)."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@main.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every named bus on this machine.")
@click.option("--yes", is_flag=True, help="Remove the idle ones (default: only list them).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def gc(name: str | None, all_: bool, yes: bool, as_json: bool) -> None:
    """List named buses (their size in binary units; --json: in bytes) that no live process holds and whose every lease has
    expired; with --yes, remove them."""
    if (name is None) == (not all_):
        raise click.UsageError("give a bus NAME or --all")
    if name is not None:
        try:
            _validate.name(name, "name", 100)
        except GrafosError as e:
            raise click.BadParameter(str(e)) from None
    names = [name] if name is not None else named_fabrics()
    rows: list[dict[str, Any]] = []
    now = time.time()
    failed = False
    for n in names:
        queue = n.startswith(QUEUE_PREFIX)     # a queue lives as long as some process has it open
        try:
            u = probe(shm_path(n), now=now, remove_if_idle=yes, leases_matter=not queue)
        except GrafosError as e:
            if name is not None:
                fail(e)
            rows.append({"bus": n, "state": f"skipped: {e}", "idle": False, "removed": False})
            failed = True
            continue
        rows.append({"bus": n, "size": u.size, "in_use": u.in_use, "ready": u.ready,
                     "lock_pid": u.lock_pid, "leases_live": u.leases_live, "leases": u.leases_total,
                     "idle": u.idle or queue and not u.in_use and not u.lock_alive,
                     "removed": u.removed, "state": _verdict(u, queue)})
    if as_json:
        click.echo(json.dumps({"buses": rows, "removed": sum(r["removed"] for r in rows)}, indent=2))
        return
    con = _console()
    if not rows:
        con.print("no named buses")
        return
    table = Table(title="named buses" + (" (removing idle ones)" if yes else ""))
    for col in ("bus", "size", "leases live/all", "state"):
        table.add_column(col, justify="left" if col in ("bus", "state") else "right")
    for r in rows:
        table.add_row(r["bus"], human_size(r["size"]) if "size" in r else "-", f"{r.get('leases_live', '-')}/{r.get('leases', '-')}",
                      r["state"])
    con.print(table)
    idle = [r for r in rows if r["idle"] and not r["removed"]]
    if idle and not yes:
        con.print(f"{len(idle)} idle bus(es); run again with --yes to remove them")
    if failed:
        con.print("some files under /dev/shm named like buses could not be read (see above)")
