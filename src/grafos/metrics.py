"""Prometheus metrics of a bus: a collector that reads the bus at every scrape.

::

    from prometheus_client import REGISTRY, start_http_server
    from grafos.metrics import BusCollector

    REGISTRY.register(BusCollector(mgr))
    start_http_server(9464)

or, for a named bus from the outside, ``grafos metrics NAME --port 9464``.
Needs the ``metrics`` extra (``pip install "grafos[metrics]"``).

What is exported (names follow Prometheus conventions: ``_total`` for
counters, base units, labels for topic, partition, group, member):

========================================== ======= =====================================
metric                                     type    labels
========================================== ======= =====================================
``grafos_partition_produced_total``        counter topic, partition
``grafos_partition_lost_total``            counter topic, partition (overwritten unread)
``grafos_partition_abandoned_total``       counter topic, partition (writer died mid-append)
``grafos_partition_earliest_offset``       gauge   topic, partition
``grafos_partition_lease_ttl_seconds``     gauge   topic, partition (0 when expired)
``grafos_partition_alive``                 gauge   topic, partition
``grafos_partition_reserved_bytes``        gauge   topic, partition (the lease's region)
``grafos_partition_gate_offset``           gauge   topic, partition (producers write below it; 0: not gated)
``grafos_partition_blocked_producers``     gauge   topic, partition (live producers waiting for room now, up to 8)
``grafos_partition_blocked_seconds_total`` counter topic, partition (time producers waited for room)
``grafos_partition_buffer_full_total``     counter topic, partition (sends refused with BufferFull)
``grafos_partition_consumed_total``        counter topic, partition, group (committed past)
``grafos_partition_lag``                   gauge   topic, partition, group
``grafos_partition_group_lost``            gauge   topic, partition, group (overwritten behind its commit)
``grafos_group_members``                   gauge   group, topic
``grafos_group_stale_members``             gauge   group, topic
``grafos_group_member_heartbeat_age_seconds`` gauge group, topic, member
``grafos_group_partition_owner``           gauge   group, topic, partition, member (1 = owns)
``grafos_share_in_flight``                 gauge   group, topic, partition (records locked now)
``grafos_share_available``                 gauge   group, topic, partition (may be acquired now)
``grafos_share_oldest_lock_age_seconds``   gauge   group, topic, partition
``grafos_share_acked_total``               counter group, topic, partition (also ``_redelivered``,
                                                   ``_dead_lettered``, ``_lost``, ``_expired``)
``grafos_fabric_size_bytes``               gauge
``grafos_fabric_reserved_bytes``           gauge   (bytes held by live leases)
``grafos_fabric_resident_bytes``           gauge   (blocks of the backing file)
``grafos_fabric_leases``                   gauge   (live leases)
``grafos_fabric_lock_recoveries_total``    counter (metadata lock taken from a dead holder)
``grafos_producer_transaction_open``       gauge   ``{topic,transactional_id}``: 1 while one is open
``grafos_producer_transaction_age_seconds`` gauge  ``{topic,transactional_id}``
``grafos_producer_transactions_aborted_total`` counter ``{topic,transactional_id}``
``grafos_producer_fenced_total``           counter ``{topic,transactional_id}``
========================================== ======= =====================================

Offsets begin again at 0 when a topic is restarted, so the per-partition
counters reset then, as a process's counters do when it restarts.
Consumption is what groups committed: groups of :class:`ConsumerGroup` on the
bus and every group with offsets in the bus's :class:`FabricOffsetStore` (or
the ``store`` given).
"""
from __future__ import annotations

from typing import Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('grafos.metrics needs prometheus-client: pip install "grafos[metrics]"') from e

from . import _validate
from .errors import GrafosError, NotFound, Unsupported
from .mq.group import ConsumerGroup, current_commit, group_lag, list_groups
from .mq.offset import OffsetStore
from .mq.model import Bus

__all__ = ["BusCollector"]

_P = ["topic", "partition"]
_PG = ["topic", "partition", "group"]
_G = ["group", "topic"]


class BusCollector(Collector):
    """Reads ``mgr`` at every scrape (``collect``): topics, partitions, groups and
    the fabric. ``store`` is where groups commit (default: the bus's own
    :class:`FabricOffsetStore`)."""

    def __init__(self, mgr: Bus, store: OffsetStore | None = None) -> None:
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        if not mgr.capabilities.shared_memory:
            raise Unsupported(f"the collector reads a bus's fabric, and {type(mgr).__name__} has none "
                              "(capabilities.shared_memory is false)")
        self.mgr = mgr
        self.store = store if store is not None else mgr.offset_store()

    def describe(self) -> list[Metric]:
        return []       # no scrape at registration time: the bus is read when scraped

    def collect(self) -> Iterator[Metric]:
        mgr = self.mgr
        produced = CounterMetricFamily("grafos_partition_produced", "Messages appended to the partition "
                                       "(since the topic's last restart).", labels=_P)
        lost = CounterMetricFamily("grafos_partition_lost", "Messages overwritten by the ring before "
                                   "every reader got to them.", labels=_P)
        abandoned = CounterMetricFamily("grafos_partition_abandoned", "Slots skipped because their "
                                        "writer died mid-append.", labels=_P)
        earliest = GaugeMetricFamily("grafos_partition_earliest_offset", "Oldest offset still in the ring.",
                                     labels=_P)
        ttl = GaugeMetricFamily("grafos_partition_lease_ttl_seconds", "Seconds until the partition's "
                                "lease expires (its retention); 0 when expired.", labels=_P)
        alive = GaugeMetricFamily("grafos_partition_alive", "1 while the partition's lease is alive.",
                                  labels=_P)
        reserved = GaugeMetricFamily("grafos_partition_reserved_bytes", "Bytes of the fabric reserved "
                                     "for the partition (its lease's region).", labels=_P)
        gate_off = GaugeMetricFamily("grafos_partition_gate_offset", "Producers may write offsets below "
                                     "this (the slowest live gating reader plus the ring); 0: not gated.",
                                     labels=_P)
        blocked = GaugeMetricFamily("grafos_partition_blocked_producers", "Live producers waiting for "
                                    "room now (topics with on_full block; up to 8 per partition: 8 means "
                                    "at least 8).", labels=_P)
        blocked_s = CounterMetricFamily("grafos_partition_blocked_seconds", "Time producers spent "
                                        "waiting for room.", labels=_P)
        full = CounterMetricFamily("grafos_partition_buffer_full", "Sends refused with BufferFull.",
                                   labels=_P)
        consumed = CounterMetricFamily("grafos_partition_consumed", "Messages the group has committed "
                                       "past (since the topic's last restart).", labels=_PG)
        lag = GaugeMetricFamily("grafos_partition_lag", "Messages between the group's committed offset "
                                "and the end of the partition.", labels=_PG)
        behind = GaugeMetricFamily("grafos_partition_group_lost", "Messages the ring overwrote before the "
                                   "group read them: its commit is older than the oldest offset held.",
                                   labels=_PG)
        bounds: dict[str, list[tuple[int, int]]] = {}
        for name in mgr.topics():
            try:
                d = mgr.describe(name)
                t = mgr.topic(name)
            except NotFound:
                continue        # deleted since listed
            bounds[name] = []
            for p in d.partitions:
                lb = [name, str(p.partition)]
                produced.add_metric(lb, p.latest)
                lost.add_metric(lb, p.lost)
                abandoned.add_metric(lb, p.abandoned)
                gate_off.add_metric(lb, p.gate)
                blocked.add_metric(lb, p.blocked)
                blocked_s.add_metric(lb, p.blocked_secs)
                full.add_metric(lb, p.full_raised)
                earliest.add_metric(lb, p.earliest)
                ttl.add_metric(lb, p.ttl_remaining)
                alive.add_metric(lb, 1 if p.alive else 0)
                part = t.partitions[p.partition]
                reserved.add_metric(lb, part.lease.size if part is not None and p.alive else 0)
                bounds[name].append((p.earliest, p.latest) if p.alive else (0, 0))

        members = GaugeMetricFamily("grafos_group_members", "Members of the group (live and stale).",
                                    labels=_G)
        stale = GaugeMetricFamily("grafos_group_stale_members", "Members whose last heartbeat is older "
                                  "than the stale threshold.", labels=_G)
        hb_age = GaugeMetricFamily("grafos_group_member_heartbeat_age_seconds", "Seconds since the "
                                   "member's last heartbeat.", labels=[*_G, "member"])
        owner = GaugeMetricFamily("grafos_group_partition_owner", "1 for the member that owns the "
                                  "partition (the group's assignment map).",
                                  labels=[*_G, "partition", "member"])
        groups: set[tuple[str, str]] = set()
        for cfg in list_groups(mgr):
            try:
                g = ConsumerGroup.attach(mgr, cfg.name, cfg.topic).describe()
            except GrafosError:
                continue
            groups.add((cfg.name, cfg.topic))
            lb = [cfg.name, cfg.topic]
            members.add_metric(lb, len(g.members))
            stale.add_metric(lb, len(g.stale_members))
            for m in g.members:
                hb_age.add_metric([*lb, m.name], max(0.0, m.age))
            for gp in g.partitions:
                if gp.owner is not None:
                    owner.add_metric([*lb, str(gp.partition), gp.owner], 1)
        items = getattr(self.store, "items", None)
        if callable(items):
            groups |= {(grp, topic) for grp, topic, _ in items()}
        for grp, topic in sorted(groups):
            if topic not in bounds:
                continue
            lags = group_lag(mgr, self.store, grp, topic)
            t = mgr.topic(topic)
            for i, (lo, hi) in enumerate(bounds[topic]):
                c = self.store.committed(grp, topic, i)
                lb = [topic, str(i), grp]
                consumed.add_metric(lb, 0 if c is None else min(max(c, lo), hi))
                lag.add_metric(lb, lags.get(i, 0))
                cur, _ = current_commit(self.store, grp, t, i)
                behind.add_metric(lb, lo - cur if cur is not None and cur < lo else 0)

        info = mgr.fabric.info()
        fab = [
            GaugeMetricFamily("grafos_fabric_size_bytes", "Size of the fabric's mapping.",
                              value=info.total_size),
            GaugeMetricFamily("grafos_fabric_reserved_bytes", "Bytes held by live leases.",
                              value=info.bytes_leased),
            GaugeMetricFamily("grafos_fabric_resident_bytes", "Bytes the backing file occupies "
                              "(reclaimed leases give theirs back).", value=info.blocks * 512),
            GaugeMetricFamily("grafos_fabric_leases", "Live leases.", value=info.leases_live),
            CounterMetricFamily("grafos_fabric_lock_recoveries", "Times the metadata lock was taken "
                                "over from a dead holder.", value=info.lock_recoveries),
        ]
        yield from (produced, lost, abandoned, earliest, ttl, alive, reserved, gate_off, blocked, blocked_s,
                    full, consumed, lag, behind,
                    members, stale, hb_age, owner, *fab, *self._producers(mgr), *self._shares(mgr))

    @staticmethod
    def _shares(mgr) -> list[Metric]:  # noqa: ANN001
        """Share groups, per group, topic and partition: records in flight and
        available, the oldest lock's age, and what happened to records so far."""
        from .mq import share
        lb = ["group", "topic", "partition"]
        in_flight = GaugeMetricFamily("grafos_share_in_flight", "Records locked to a member now.", labels=lb)
        avail = GaugeMetricFamily("grafos_share_available", "Records (offsets) that may be acquired now.",
                                  labels=lb)
        age = GaugeMetricFamily("grafos_share_oldest_lock_age_seconds", "Seconds since the oldest lock "
                                "held now was taken.", labels=lb)
        counters = {f: CounterMetricFamily(f"grafos_share_{f}", doc, labels=lb) for f, doc in (
            ("acked", "Records acknowledged."), ("redelivered", "Deliveries after the first."),
            ("dead_lettered", "Records archived at the delivery limit."),
            ("lost", "Unfinished records the ring overwrote."),
            ("expired", "Unfinished records that expired with their partition."))}
        for topic in mgr.topics():
            for grp in share.groups(mgr, topic):
                try:
                    states = share.describe(mgr, topic, grp)
                except Exception:   # noqa: BLE001 - a topic deleted or expired while scraped
                    continue
                for st in states:
                    key = [grp, topic, str(st.partition)]
                    in_flight.add_metric(key, st.in_flight)
                    avail.add_metric(key, st.available)
                    age.add_metric(key, st.oldest_lock_age)
                    for f in ("acked", "redelivered", "dead_lettered", "lost"):
                        counters[f].add_metric(key, getattr(st, f))
                counters["expired"].add_metric([grp, topic, ""], share.expired_count(mgr, topic, grp))
        return [in_flight, avail, age, *counters.values()]

    @staticmethod
    def _producers(mgr) -> list[Metric]:  # noqa: ANN001
        """Idempotent and transactional producers: open transactions and their age,
        transactions aborted, times fenced."""
        from .mq import transaction
        lb = ["topic", "transactional_id"]
        open_ = GaugeMetricFamily("grafos_producer_transaction_open", "1 while the producer has a "
                                  "transaction open or being decided.", labels=lb)
        age = GaugeMetricFamily("grafos_producer_transaction_age_seconds", "Seconds since the producer's "
                                "current transaction began (0 when none is open).", labels=lb)
        aborted = CounterMetricFamily("grafos_producer_transactions_aborted", "Transactions aborted (by the "
                                      "producer, or by a resolver after its registration expired).", labels=lb)
        fenced = CounterMetricFamily("grafos_producer_fenced", "Times an instance of this transactional id "
                                     "was fenced by a newer one.", labels=lb)
        for t in transaction.transactions(mgr):
            key = [t.topic, t.transactional_id]
            open_.add_metric(key, 0 if t.state == "idle" else 1)
            age.add_metric(key, t.age_s)
            aborted.add_metric(key, t.aborted)
            fenced.add_metric(key, t.fenced)
        return [open_, age, aborted, fenced]
