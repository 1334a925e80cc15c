"""Look into a live bus from another terminal.

``grafos topics NAME``, ``grafos describe NAME TOPIC``, ``grafos groups NAME``,
``grafos tail NAME TOPIC``, ``grafos produce NAME TOPIC``.

``NAME`` is a named bus (``/dev/shm/grafos.NAME``) or, if it contains a ``/``,
the path of a file-backed one, or a JetStream server's ``nats://host:port``
URL (several, comma-separated, for a cluster). Inspecting attaches with ``create=False``: it
never creates a bus. (Attaching reaps leases that have already expired, as
every attach does; it changes nothing that is alive.)

Every command takes ``--json`` for scripts; under it an error is a JSON
object ``{"error": ..., "type": ...}`` on standard output. Exit codes: 0 ok, 1 an error
reported by grafos (no such bus or topic, a damaged bus, a message too
large), 2 a usage error.
"""
from __future__ import annotations

import base64
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterator, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import _validate
from ..errors import GrafosError, NotFound
from ..fabric import shm_path
from . import main


# ---- plumbing -----------------------------------------------------------------------------
def _name_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check a bus name (or path) or topic name up front: a bad one is a usage error."""
    if param.name == "name" and ("/" in value or _is_url(value)):
        return value
    try:
        return _validate.name(value, param.name or "name", 100 if param.name == "name" else 64)
    except GrafosError as e:
        raise click.BadParameter(str(e)) from None


def _is_url(name: str) -> bool:
    return name.startswith(("nats://", "tls://"))


NAME = click.argument("name", callback=_name_arg)
TOPIC = click.argument("topic", callback=_name_arg)
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


@contextmanager
def _bus(name: str) -> Iterator[Any]:
    """Attach to an existing bus, turning every grafos error into exit code 1."""
    from ..mq.topic import TopicManager
    try:
        try:
            if _is_url(name):
                mgr = TopicManager.connect(name.split(","))
            elif "/" in name:
                mgr = TopicManager.open(path=name, create=False)
            else:
                mgr = TopicManager.open(name, create=False)
        except NotFound:
            where = name if "/" in name else shm_path(name)
            raise NotFound(f"no bus named {name!r} (nothing at {where})") from None
        try:
            yield mgr
        finally:
            mgr.close()
    except GrafosError as e:
        fail(e)


def fail(e: GrafosError) -> NoReturn:
    """Report a grafos error and exit 1: under ``--json`` as a JSON object on
    standard output (``{"error": ..., "type": ...}``), else as a line on standard error."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.params.get("as_json"):
        click.echo(json.dumps({"error": str(e), "type": type(e).__name__}))
    else:
        click.echo(f"error: {e}", err=True)
    sys.exit(1)


def _console() -> Console:
    """A console on whatever sys.stdout is now (tests swap it). Into a pipe or a
    file it is as wide as the widest table, so no number is ever cut short."""
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


#: the width of output that goes to no terminal: wider than any table the commands print
PIPE_WIDTH = 4096


def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def _ttl(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


# ---- topics / describe ----------------------------------------------------------------------
def _topic_summary(mgr: Any, topic: str) -> dict[str, Any]:
    d = mgr.describe(topic)
    alive = [p for p in d.partitions if p.alive]
    return {
        "topic": topic,
        "partitions": d.config.num_partitions,
        "capacity": d.config.partition_capacity,
        "stride": d.config.partition_stride,
        "retention_secs": d.config.retention_secs,
        "produced": d.produced,
        "lost": d.lost,
        "partitions_alive": len(alive),
        "min_ttl_secs": min((p.ttl_remaining for p in alive), default=0.0),
    }


@main.command()
@NAME
@JSON
def topics(name: str, as_json: bool) -> None:
    """List the topics of bus NAME: partitions, produced and lost to overwrite (in
    offsets: a message larger than a slot takes one per slot), lease TTL."""
    with _bus(name) as mgr:
        rows = []
        for t in mgr.topics():
            try:
                rows.append(_topic_summary(mgr, t))
            except NotFound:
                continue        # deleted by another process while we listed
        if as_json:
            _dump({"bus": name, "topics": rows})
            return
        table = Table(title=f"bus {name}: {len(rows)} topic(s)")
        for col in ("topic", "parts", "slots x B", "retention", "produced", "lost", "alive", "min TTL"):
            table.add_column(col, justify="left" if col == "topic" else "right")
        for r in rows:
            table.add_row(r["topic"], str(r["partitions"]), f"{r['capacity']} x {r['stride']}",
                          _ttl(r["retention_secs"]), str(r["produced"]), str(r["lost"]),
                          f"{r['partitions_alive']}/{r['partitions']}", _ttl(r["min_ttl_secs"]))
        _console().print(table)


@main.command()
@NAME
@TOPIC
@JSON
def describe(name: str, topic: str, as_json: bool) -> None:
    """Partitions of TOPIC on bus NAME: offsets, lost to overwrite, abandoned slots, lease TTL."""
    with _bus(name) as mgr:
        d = mgr.describe(topic)
        txns = _producers(mgr, topic)
        shares = _shares(mgr, topic)
        if as_json:
            _dump({"bus": name, "topic": topic, "config": asdict(d.config),
                   "produced": d.produced, "lost": d.lost,
                   "partitions": [asdict(p) for p in d.partitions],
                   "producers": [asdict(t) for t in txns],
                   "share_groups": {g: [asdict(s) for s in st] for g, st in shares.items()}})
            return
        c = d.config
        table = Table(title=f"{topic} on {name}: {c.num_partitions} partition(s) of "
                            f"{c.partition_capacity} x {c.partition_stride} B, retention {_ttl(c.retention_secs)}")
        gated = c.on_full != "overwrite"
        # offsets, not messages: a message larger than a slot takes one offset per slot
        incs = any(p.incarnation for p in d.partitions)     # a server bus has none to show
        cols = ["part", "earliest", "latest", "offsets held", "lost", "abandoned", "TTL", "lease"] + \
            (["incarnation"] if incs else [])
        if gated:
            cols += ["gate", "held by", "blocked", "time blocked", "BufferFull"]
        for col in cols:
            table.add_column(col, justify="left" if col == "held by" else "right")
        for p in d.partitions:
            row = [str(p.partition), str(p.earliest), str(p.latest), str(p.latest - p.earliest),
                   str(p.lost), str(p.abandoned), _ttl(p.ttl_remaining) if p.alive else "expired",
                   str(p.lease_id) if p.alive else "-"] + \
                ([f"{p.incarnation:012x}" if p.incarnation else "-"] if incs else [])
            if gated:
                released = [r.reader for r in p.gating if not r.live]
                held = p.gate_held_by or "-"
                if released:
                    held += f" (released: {', '.join(released)})"
                row += [str(p.gate) if p.gate else "-", escape(held), str(p.blocked),
                        f"{p.blocked_secs:.3f}s", str(p.full_raised)]
            table.add_row(*row)
        _console().print(table)
        click.echo(f"produced {d.produced} offsets, lost to overwrite {d.lost}, when full: {c.on_full} "
                   "(offsets: a message larger than a slot takes one per slot)")
        if txns:
            pt = Table(title=f"idempotent and transactional producers of {topic}")
            for col in ("transactional id", "producer", "epoch", "transaction", "state", "open for",
                        "registration", "aborted", "fenced"):
                pt.add_column(col, justify="left" if col == "transactional id" else "right")
            for t in txns:
                pt.add_row(escape(t.transactional_id), str(t.producer), str(t.epoch), str(t.txn), t.state,
                           f"{t.age_s:.1f}s" if t.state != "idle" else "-", "alive" if t.alive else "expired",
                           str(t.aborted), str(t.fenced))
            _console().print(pt)
        for g, states in shares.items():
            st = Table(title=f"share group {g} on {topic}")
            for col in ("part", "floor", "next", "in flight", "available", "acked", "redelivered",
                        "released", "rejected", "dead-lettered", "lost", "oldest lock"):
                st.add_column(col, justify="right")
            for s in states:
                st.add_row(str(s.partition), str(s.floor), str(s.next), str(s.in_flight), str(s.available),
                           str(s.acked), str(s.redelivered), str(s.released), str(s.rejected),
                           str(s.dead_lettered), str(s.lost), f"{s.oldest_lock_age:.1f}s")
            _console().print(st)


def _shares(mgr: Any, topic: str) -> dict[str, list]:
    """Share groups of topic and their state per partition (on a shared-memory bus;
    a JetStream group's state is its members' ``describe()``)."""
    if not getattr(mgr.capabilities, "share_groups", False) or not mgr.capabilities.shared_memory:
        return {}
    from ..mq import share
    return {g: share.describe(mgr, topic, g) for g in share.groups(mgr, topic)}


def _producers(mgr: Any, topic: str) -> list:
    """Producer registrations of topic (a server bus keeps none in this form)."""
    from ..mq import transaction
    return transaction.transactions(mgr, topic) if mgr.capabilities.shared_memory else []


# ---- groups -----------------------------------------------------------------------------------
def _group_rows(mgr: Any) -> list[dict[str, Any]]:
    """Every group the bus knows: consumer groups with state in the fabric
    (members, claims) and plain offset commits in the fabric offset store."""
    from ..mq.group import ConsumerGroup, GroupPartition, _lag, current_commit, list_groups

    store = mgr.offset_store()      # the bus's own: in the fabric, or the offsets a server keeps
    committed: dict[tuple[str, str], dict[int, int]] = {}
    for (g, t, p), off in store.items().items():
        committed.setdefault((g, t), {})[p] = off
    out = []
    configs = {(c.name, c.topic): c for c in list_groups(mgr)}
    for g, t in sorted(set(configs) | set(committed)):
        row: dict[str, Any] = {"group": g, "topic": t, "error": None}
        try:
            if (g, t) in configs:
                d = ConsumerGroup.attach(mgr, g, t).describe(mgr, store)
                row["stale_threshold_secs"] = d.stale_threshold_secs
                row["members"] = [asdict(m) for m in d.members]
                row["partitions"] = [asdict(p) for p in d.partitions]
                row["stale_members"] = d.stale_members
            else:
                tp = mgr.describe(t)
                topic = mgr.topic(t)
                row["stale_threshold_secs"] = None
                row["members"] = []
                row["stale_members"] = []
                row["partitions"] = []
                for p in tp.partitions:
                    c = committed[(g, t)].get(p.partition)
                    current, stale = current_commit(store, g, topic, p.partition)
                    row["partitions"].append(asdict(GroupPartition(
                        p.partition, None, 0, c, p.earliest, p.latest,
                        _lag(current, p.earliest, p.latest), stale)))
            row["lag"] = sum(p["lag"] for p in row["partitions"])
        except GrafosError as e:
            row.update(members=[], partitions=[], stale_members=[], lag=None, error=str(e))
        out.append(row)
    return out


@main.command()
@NAME
@click.option("--topic", "-t", default=None, help="Only groups consuming this topic.")
@JSON
def groups(name: str, topic: str | None, as_json: bool) -> None:
    """Consumer groups on bus NAME: assignment map, committed offsets, lag, stale members."""
    with _bus(name) as mgr:
        rows = [r for r in _group_rows(mgr) if topic is None or r["topic"] == topic]
        if as_json:
            _dump({"bus": name, "groups": rows})
            return
        con = _console()
        if not rows:
            con.print(f"bus {name}: no consumer groups")
            return
        for r in rows:
            head = f"[bold]group {r['group']}[/bold] on [bold]{r['topic']}[/bold]"
            if r["error"]:
                con.print(f"{head}: [red]{escape(r['error'])}[/red]")
                continue
            if r["stale_threshold_secs"] is not None:
                head += f" (stale after {r['stale_threshold_secs']:g}s)"
            head += f": lag {r['lag']}"
            if r["stale_members"]:
                head += f", [red]stale: {', '.join(r['stale_members'])}[/red]"
            elif r["stale_threshold_secs"] is None:
                head += " (offsets only, no members on record)"
            con.print(head)
            if r["members"]:
                mt = Table()
                for col in ("member", "heartbeat age", "state", "partitions"):
                    mt.add_column(col)
                for m in r["members"]:
                    mt.add_row(m["name"], f"{m['age']:.1f}s", "stale" if m["stale"] else "live",
                               ",".join(map(str, m["partitions"])) or "-")
                con.print(mt)
            pt = Table()
            gating = any(p.get("gating") for p in r["partitions"])
            for col in ("part", "owner", "epoch", "committed", "latest", "lag") + (("gate",) if gating else ()):
                pt.add_column(col, justify="left" if col in ("owner", "gate") else "right")
            stale = []
            for p in r["partitions"]:
                committed = "-" if p["committed"] is None else str(p["committed"])
                if p["stale_commit"]:
                    committed += " (earlier incarnation)"
                    stale.append(p["partition"])
                pt.add_row(str(p["partition"]), p["owner"] or "-", str(p["epoch"]), committed,
                           str(p["latest"]), str(p["lag"]), *((p.get("gating") or "-",) if gating else ()))
            con.print(pt)
            if stale:
                con.print(f"partition(s) {','.join(map(str, stale))}: the commit belongs to an earlier "
                          "incarnation (the topic was restarted); the group resumes at the earliest offset")


# ---- tail / produce -----------------------------------------------------------------------------
def _text(b: bytes | None) -> tuple[str | None, str]:
    """(text, encoding) for JSON: utf-8 where it decodes, base64 where it does not."""
    if b is None:
        return None, "none"
    try:
        return b.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(b).decode(), "base64"


@main.command()
@NAME
@TOPIC
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message still in each "
              "partition (default: only messages produced from now on).")
@click.option("-n", "--max", "max_messages", type=click.IntRange(1), default=None,
              help="Exit after this many messages.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Exit after this many seconds without a new message (default: wait for ever).")
@click.option("--partition", "-p", "partitions", type=click.IntRange(0), multiple=True,
              help="Only these partitions (repeatable; default all).")
@JSON
def tail(name: str, topic: str, from_beginning: bool, max_messages: int | None, timeout: float | None,
         partitions: tuple[int, ...], as_json: bool) -> None:
    """Print the messages of TOPIC on bus NAME as they arrive (one per line:
    partition:offset, key, value; --json: one JSON object per line). Reads only:
    commits nothing. Ctrl-C stops it."""
    from ..mq.consumer import Consumer, SeekPolicy

    with _bus(name) as mgr:
        c = Consumer(topic, "grafos-tail")
        n = mgr.topic(topic).n
        if partitions:
            bad = [p for p in partitions if p >= n]
            if bad:
                raise NotFound(f"topic {topic!r} has partitions 0..{n - 1}, not {bad}")
            c.assign(sorted(set(partitions)))
        c.seek(mgr, SeekPolicy.Earliest if from_beginning else SeekPolicy.Latest)
        out = sys.stdout       # CliRunner swaps it in; a pipe closing is handled below
        seen = 0
        last = time.monotonic()
        try:
            while max_messages is None or seen < max_messages:
                wait = 0.2 if timeout is None else max(0.0, min(0.2, last + timeout - time.monotonic()))
                room = 500 if max_messages is None else min(500, max_messages - seen)
                msgs = c.poll(mgr, room, timeout=wait) if wait > 0 else []
                if not msgs:
                    if timeout is not None and time.monotonic() - last >= timeout:
                        break
                    continue
                last = time.monotonic()
                for p, m in msgs:
                    out.write(_format(p, m, as_json) + "\n")
                seen += len(msgs)
                out.flush()
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:      # `grafos tail ... | head`
            sys.stderr.close()


def _format(partition: int, m: Any, as_json: bool) -> str:
    if as_json:
        key, kenc = _text(m.key)
        value, venc = _text(m.value)
        return json.dumps({"partition": partition, "offset": m.offset, "timestamp_ns": m.timestamp,
                           "key": key, "key_encoding": kenc, "value": value, "value_encoding": venc,
                           "headers": {k: _text(v)[0] for k, v in m.headers}})
    value = m.value.decode("utf-8", "backslashreplace")
    if m.key is None:
        return f"{partition}:{m.offset}\t{value}"
    return f"{partition}:{m.offset}\t{m.key.decode('utf-8', 'backslashreplace')}\t{value}"


@main.command()
@NAME
@TOPIC
@click.option("--key", "-k", default=None, help="Send every line under this key (Kafka's partitioner).")
@click.option("--key-separator", default=None, metavar="SEP",
              help="Each line is KEY SEP VALUE: split at the first SEP.")
@JSON
def produce(name: str, topic: str, key: str | None, key_separator: str | None, as_json: bool) -> None:
    """Send the lines of standard input to TOPIC on bus NAME, one message per line."""
    from ..mq.producer import Producer

    if key is not None and key_separator is not None:
        raise click.UsageError("give --key or --key-separator, not both")
    if key_separator == "":
        raise click.BadParameter("must not be empty", param_hint="--key-separator")
    sep = key_separator.encode() if key_separator is not None else None
    fixed = key.encode() if key is not None else None
    with _bus(name) as mgr:
        prod = Producer(topic)
        mgr.topic(topic)                 # NotFound before reading any input
        sent: dict[int, list[int]] = {}
        count = 0
        try:
            for raw in sys.stdin.buffer:
                line = raw[:-1] if raw.endswith(b"\n") else raw
                if line.endswith(b"\r"):
                    line = line[:-1]
                k = fixed
                if sep is not None:
                    if sep not in line:
                        raise click.ClickException(f"line {count + 1} has no key separator {key_separator!r}")
                    k, line = line.split(sep, 1)
                try:
                    p, off = prod.send_keyed(mgr, k, line) if k is not None else prod.send(mgr, line)
                except GrafosError as e:
                    raise type(e)(f"{e} (after {count} message(s) sent)") from None
                span = sent.setdefault(p, [off, off, 0])
                span[1] = off
                span[2] += 1
                count += 1
        except KeyboardInterrupt:
            click.echo(f"interrupted after {count} message(s)", err=True)
            sys.exit(130)
        if as_json:
            _dump({"bus": name, "topic": topic, "sent": count,
                   "partitions": {str(p): {"first": s[0], "last": s[1], "count": s[2]}
                                  for p, s in sorted(sent.items())}})
        else:
            click.echo(f"sent {count} message(s) to {topic}", err=True)
