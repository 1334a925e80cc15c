"""The walkthrough: the whole bus in one in-process run.

``grafos demo`` runs it, and so does ``python examples/walkthrough.py``. It
goes through:

1. create the topics "events" (4 partitions, one-hour retention) and
   "events-dlq", and keep "events" alive with a RenewalManager;
2. produce keyed orders (every key always lands on the same partition,
   Kafka's partitioner);
3. consume in the group "processors" with committed offsets, retrying
   failing messages and routing poison ones to the DLQ after 3 failures;
4. a second worker joins and the partitions are shared; the first one goes
   silent, loses its partitions after the stale threshold, and is fenced when
   it comes back; the second continues from the committed offsets;
5. retention: renewal ticks keep "events" alive past its TTL, while a
   short-lived topic that nobody renews expires, gives its memory back and
   is restarted;
6. observability: partitions, lease TTLs, the group's assignment map and lag,
   DLQ nack counts and dead letters.

Time in the group and the renewals is a clock the demo advances explicitly
(``now=``), so "31 seconds later" takes no time; the short-lived topic
expires in real time (half a second).

``run(nats="nats://host:4222")`` (``grafos demo --nats URL``) runs the same
calls on a JetStream server: the group's state, the nack counts and the
committed offsets then live on the server (``KvOffsetStore``), and the
expired topic's streams are deleted by the next client that looks. The demo
removes its topics from the server when it ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .errors import Fenced
from .leasekit import RenewalManager, RenewalPolicy
from .message import Message
from .mq.consumer import Consumer, SeekPolicy
from .mq.dlq import DlqRouter
from .mq.group import ConsumerGroup
from .mq.offset import MemOffsetStore
from .mq.producer import Partitioner, Producer, kafka_partition
from .mq.topic import BusHandles, TopicConfig, TopicManager

TOPICS = ("events", "events-dlq", "clicks")
RETENTION_SECS = 3600.0
STALE_SECS = 30.0
MAX_RETRIES = 3
USERS = [f"user-{i}" for i in range(6)]


@dataclass
class Summary:
    """What the walkthrough did, for tests and for the last panel."""

    produced: int = 0
    processed: dict[tuple[int, int], int] = field(default_factory=dict)   # (partition, offset) -> times
    poison: set[tuple[int, int]] = field(default_factory=set)             # where the poison was produced
    dead_letters: list[Message] = field(default_factory=list)
    fenced: list[int] = field(default_factory=list)
    renewed: list[object] = field(default_factory=list)
    expired_reclaimed_blocks: int = 0
    restarted_read: list[bytes] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    lag: int = -1
    events_alive_after: bool = False


class _Worker:
    """One member of the group: claims partitions, polls, processes, commits."""

    def __init__(self, mgr: TopicManager, group: ConsumerGroup, name: str, store: MemOffsetStore,
                 dlq: DlqRouter, summary: Summary) -> None:
        self.mgr, self.group, self.name, self.store, self.dlq = mgr, group, name, store, dlq
        self.summary = summary
        self.consumer = group.consumer(name)     # Consumer("events", "processors") bound for fencing

    def rebalance(self, now: float) -> list[int]:
        owned = self.group.claim(self.name, now=now)
        if owned != self.consumer.assignment():
            self.consumer.assign(owned)
            self.consumer.seek(self.mgr, self.store, SeekPolicy.Committed)
        return owned

    def handle(self, partition: int, msg: Message) -> None:
        if msg.value.startswith(b"poison"):
            raise ValueError(f"cannot parse {msg.value!r}")
        key = (partition, msg.offset)
        self.summary.processed[key] = self.summary.processed.get(key, 0) + 1

    def drain(self, now: float, commit: bool = True) -> int:
        """Poll until nothing is left; commit after every poll. Returns messages polled."""
        polled = 0
        while True:
            msgs = self.consumer.poll(self.mgr, 16)
            if not msgs:
                return polled
            polled += len(msgs)
            self.dlq.process(self.mgr, self.consumer, msgs, self.handle)
            if commit:
                self.consumer.commit(self.store)


def _partitions_table(mgr: TopicManager, topic: str, now: float | None = None) -> Table:
    d = mgr.describe(topic, now=now)
    t = Table(title=f"topic {topic!r}: {d.produced} produced, {d.lost} lost to overwrite")
    for col in ("partition", "earliest", "latest", "lost", "lease TTL left", "alive"):
        t.add_column(col, justify="right")
    for p in d.partitions:
        t.add_row(str(p.partition), str(p.earliest), str(p.latest), str(p.lost),
                  f"{p.ttl_remaining:,.1f} s", "yes" if p.alive else "[red]expired[/]")
    return t


def _group_table(group: ConsumerGroup, mgr: TopicManager, store: MemOffsetStore, now: float) -> Table:
    d = group.describe(mgr, store, now=now)
    t = Table(title=f"group {group.name!r}: consumed {d.consumed}, lag {d.lag}, "
                    f"stale members {d.stale_members or 'none'}")
    for col in ("partition", "owner", "epoch", "committed", "latest", "lag"):
        t.add_column(col, justify="right")
    for p in d.partitions:
        t.add_row(str(p.partition), p.owner or "-", str(p.epoch),
                  "-" if p.committed is None else str(p.committed), str(p.latest), str(p.lag))
    return t


def _bus(nats: str | None, out: Console) -> BusHandles:
    if nats is None:
        return TopicManager()
    mgr = TopicManager.connect(nats)
    left = [t for t in TOPICS if mgr.exists(t)]
    if left:
        out.print(f"removing the demo topics {left} left on {nats} by an earlier run")
        for t in left:
            mgr.delete(t)
    return mgr


def run(console: Console | None = None, nats: str | None = None) -> Summary:
    """Run the walkthrough on a fresh in-process bus (or on the JetStream server at
    ``nats``); print to ``console``."""
    out = console if console is not None else Console()
    s = Summary()
    clock = time.time()      # the demo's clock for heartbeats and renewals

    with _bus(nats, out) as mgr:
        try:
            _walk(mgr, out, s, clock)
        finally:
            if nats is not None:
                for t in TOPICS:
                    if mgr.exists(t):
                        mgr.delete(t)
    return s


def _walk(mgr, out: Console, s: Summary, clock: float) -> None:   # noqa: ANN001 - either bus
    remote = not mgr.capabilities.shared_memory     # a bus on a server: its own records and offset store
    # ---- 1. topics and retention -----------------------------------------------
    out.rule("[bold]1. Topics: retention is a lease")
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=64,
                                     partition_stride=512, retention_secs=RETENTION_SECS))
    mgr.create("events-dlq", TopicConfig(num_partitions=1, partition_capacity=16,
                                         partition_stride=512, retention_secs=7 * 86400.0))
    renewals = RenewalManager(mgr, topic="events")
    now = clock
    for i in range(4):
        renewals.register(i, now + RETENTION_SECS, RenewalPolicy(), now=now)
    out.print(f"topics: {mgr.topics()}; the 4 partition leases of 'events' are registered "
              "for renewal (renewed at half-life)")

    # ---- 2. produce keyed messages ---------------------------------------------
    out.rule("[bold]2. Producing keyed orders")
    prod = Producer("events").with_partitioner(Partitioner.KeyHash)
    placed: dict[str, set[int]] = {}
    for n in range(36):
        user = USERS[n % len(USERS)]
        value = b"poison-order" if n in (7, 22) else f"order-{n}:{user}".encode()
        p, off = prod.send_keyed(mgr, user.encode(), value)
        placed.setdefault(user, set()).add(p)
        if value.startswith(b"poison"):
            s.poison.add((p, off))
        s.produced += 1
    t = Table(title="key -> partition (same as Kafka's murmur2 partitioner)")
    t.add_column("key")
    t.add_column("partition", justify="right")
    t.add_column("Kafka says", justify="right")
    for user in USERS:
        t.add_row(user, ",".join(map(str, sorted(placed[user]))),
                  str(kafka_partition(user.encode(), 4)))
    out.print(t)

    # ---- 3. consume in a group -------------------------------------------------
    out.rule("[bold]3. Consuming in group 'processors' (poison goes to the DLQ after 3 tries)")
    if remote:      # group state, nack counts and offsets on the server
        from .jetstream import KvOffsetStore
        group = ConsumerGroup("processors", "events", 4, STALE_SECS, mgr=mgr)
        store = KvOffsetStore(mgr)
        dlq = DlqRouter("events", "events-dlq", MAX_RETRIES, mgr=mgr)
    else:
        group = ConsumerGroup("processors", "events", 4, STALE_SECS)
        store = MemOffsetStore()
        dlq = DlqRouter("events", "events-dlq", MAX_RETRIES)
    w1 = _Worker(mgr, group, "worker-1", store, dlq, s)
    owned = w1.rebalance(now)
    out.print(f"worker-1 claims {owned}")
    # consume half of it, retrying failures, so the DLQ sees a nack in flight
    msgs = w1.consumer.poll(mgr, 10)
    res = dlq.process(mgr, w1.consumer, msgs, w1.handle)
    w1.consumer.commit(store)
    out.print(f"first poll: {res}; nack counts so far: {dlq.nack_counts()}")
    w1.drain(now)
    out.print(f"worker-1 drained the topic; committed {w1.consumer.positions()}")

    # ---- 4. a second worker, then a silent one ----------------------------------
    out.rule("[bold]4. Sharing, failover and fencing")
    now += 1
    w2 = _Worker(mgr, group, "worker-2", store, dlq, s)
    out.print(f"worker-2 joins and claims {w2.rebalance(now)} (all taken: it waits)")
    out.print(f"worker-1 heartbeats and keeps {group.heartbeat('worker-1', now=now)} "
              "(gives back what is above its fair share)")
    out.print(f"worker-2 claims again: {w2.rebalance(now)}")
    w1.rebalance(now)
    out.print(_group_table(group, mgr, store, now))

    for n in range(36, 60):
        user = USERS[n % len(USERS)]
        prod.send_keyed(mgr, user.encode(), f"order-{n}:{user}".encode())
        s.produced += 1
    polled = w1.drain(now, commit=False)       # worker-1 processes but never commits...
    w2.drain(now)
    out.print(f"worker-1 polled {polled} messages and then went silent without committing")

    now += STALE_SECS / 2
    group.heartbeat("worker-2", now=now)       # worker-2 keeps heartbeating, worker-1 does not
    now += STALE_SECS / 2 + 1
    out.print(f"[yellow]{STALE_SECS + 1:.0f} s later[/]: stale members {group.stale_members(now=now)}")
    out.print(f"worker-2 claims {w2.rebalance(now)} and resumes from the committed offsets")
    w2.drain(now)
    try:
        w1.consumer.commit(store)
    except Fenced as e:
        s.fenced = list(e.partitions)           # type: ignore[attr-defined]
        out.print(f"worker-1 wakes up and tries to commit: [red]Fenced[/] for partitions {s.fenced}")
    out.print(_group_table(group, mgr, store, now))

    # ---- 5. retention ----------------------------------------------------------
    out.rule("[bold]5. Retention = lease TTL")
    now += RETENTION_SECS * 0.6                 # past half-life: renewals are due
    s.renewed = renewals.tick(now=now)
    out.print(f"{RETENTION_SECS * 0.6:,.0f} s later, renewals.tick() renewed partitions {s.renewed}; "
              f"TTL of partition 0 now {renewals.ttl_remaining(0, now=now):,.0f} s")
    now += RETENTION_SECS * 0.9                 # past the original expiry
    s.events_alive_after = all(p.alive for p in mgr.describe("events", now=now).partitions)
    out.print(f"{RETENTION_SECS * 1.5:,.0f} s after creation (more than its TTL) 'events' is "
              f"{'alive' if s.events_alive_after else 'gone'}")

    # on a server each send is a round trip: one batch, and a TTL that outlasts it
    ttl = 1.5 if remote else 0.5
    mgr.create("clicks", TopicConfig(num_partitions=2, partition_capacity=256,
                                     partition_stride=512, retention_secs=ttl))
    clicks = Producer("clicks", Partitioner.RoundRobin)
    if remote:
        clicks.send_batch(mgr, [b"click" * 60] * 400)
    else:
        for n in range(400):
            clicks.send(mgr, b"click" * 60)
    if remote:
        before = len(mgr.streams("clicks"))
        out.print(f"'clicks' (retention {ttl} s, never renewed) holds "
                  f"{mgr.describe('clicks').produced} messages in {before} streams")
        time.sleep(ttl + 0.1)
        reader = Consumer("clicks", "dashboard")
        reader.seek(mgr, store, SeekPolicy.Earliest)     # looking at it deletes what expired
        s.expired_reclaimed_blocks = before - len(mgr.streams("clicks"))
        out.print(f"{ttl + 0.1} s later: a poll returns {len(reader.poll(mgr, 100))} messages; the first "
                  f"look deleted {s.expired_reclaimed_blocks} expired streams from the server")
    else:
        before = mgr.fabric.blocks
        out.print(f"'clicks' (retention 0.5 s, never renewed) holds "
                  f"{mgr.describe('clicks').produced} messages; fabric uses {before * 512:,} bytes")
        time.sleep(0.6)
        reader = Consumer("clicks", "dashboard")
        reader.seek(mgr, store, SeekPolicy.Earliest)
        reclaimed = mgr.fabric.reap()
        s.expired_reclaimed_blocks = before - mgr.fabric.blocks
        out.print(f"0.6 s later: a poll returns {len(reader.poll(mgr, 100))} messages; reap() reclaimed "
                  f"{reclaimed} leases and {s.expired_reclaimed_blocks * 512:,} bytes went back to the OS")
    mgr.restart("clicks")
    clicks.send(mgr, b"fresh click")
    reader.seek(mgr, store, SeekPolicy.Earliest)
    s.restarted_read = [m.value for _, m in reader.poll(mgr, 10)]
    out.print(f"restarted 'clicks' and read from Earliest: {escape(repr(s.restarted_read))}")

    # ---- 6. observability ---------------------------------------------------------
    out.rule("[bold]6. Looking inside")
    out.print(_partitions_table(mgr, "events", now=now))
    dead = Consumer("events-dlq", "dlq-inspector")
    dead.seek(mgr, store, SeekPolicy.Earliest)
    s.dead_letters = [m for _, m in dead.poll(mgr, 100)]
    t = Table(title=f"dead letters in 'events-dlq' (nack counts pending: {dlq.nack_counts() or 'none'})")
    for col in ("value", "source", "failures"):
        t.add_column(col)
    for m in s.dead_letters:
        h = dict(m.headers)
        t.add_row(m.value.decode(), f"{h['x-source-topic'].decode()}[{h['x-source-partition'].decode()}]"
                  f"@{h['x-source-offset'].decode()}", h["x-failures"].decode())
    out.print(t)
    s.committed = {p: store.committed("processors", "events", p) or 0 for p in range(4)}
    s.lag = sum(group.lag(mgr, store).values())
    out.print(Panel(f"produced {s.produced}, processed {len(s.processed)} distinct messages "
                    f"({sum(s.processed.values())} deliveries), dead letters {len(s.dead_letters)}, "
                    f"group lag {s.lag}", title="summary"))


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="The grafos walkthrough.")
    ap.add_argument("--nats", metavar="URL", help="run it on the JetStream server at URL (nats://host:port)")
    args = ap.parse_args(argv)
    run(nats=args.nats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
