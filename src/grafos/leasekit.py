"""Keeping leases alive: retention by renewal.

A partition lives as long as its lease. :class:`RenewalManager` holds a set of
registrations and, on every :meth:`~RenewalManager.tick`, renews the ones
whose expiry is near (as :class:`RenewalPolicy` says). Stop ticking and they
expire: that is how a topic's retention ends, with no cleanup job.

What a registration id means:

* a lease: a :class:`~grafos.fabric.MemLease` (the real lease in the fabric), or
  the lease of a partition on another bus (what ``mgr.partition_leases(topic)``
  returns there; anything with the :class:`Lease` calls). Registering moves
  its expiry to ``expires_at``; ticks renew it. Its id in the manager is the
  lease object itself.
* with ``RenewalManager(mgr)``: a ``(topic, partition)`` tuple is that
  partition's lease (looked up at every tick, so it follows
  :meth:`TopicManager.restart <grafos.mq.topic.TopicManager.restart>`), and
  :meth:`~RenewalManager.register_topic` registers every partition of a topic.
  With ``RenewalManager(mgr, topic="events")`` a bare int ``i`` means partition
  ``i`` of "events", so a loop over partition numbers renews real partitions::

      renewals = RenewalManager(mgr, topic="events")
      for i in range(4):
          renewals.register(i, now + retention_secs, RenewalPolicy())

* anything else (an int or str without a topic to map it to): a plain timer
  that the manager keeps and renews, touching nothing in the fabric.

An expired lease cannot be renewed (the fabric refuses: a dead lease stays
dead, its memory may already belong to someone else). :meth:`register` raises
:class:`~grafos.errors.LeaseExpired` for one; :meth:`tick` drops such
registrations, lists them in :attr:`RenewalManager.expired` and carries on with
the others, so one dead partition does not stop the renewal of the rest.

The manager is thread-safe; :meth:`start` ticks it from a daemon thread.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Protocol, runtime_checkable

from . import _validate
from ._clock import now_s
from ._log import get as _logger
from .errors import InvalidArgument, LeaseExpired, NotFound
from .fabric import MemLease

if TYPE_CHECKING:
    from .mq.topic import TopicManager

__all__ = ["RenewalPolicy", "RenewalManager", "Registration", "Lease"]
_log = _logger("leasekit")


@runtime_checkable
class Lease(Protocol):
    """What a renewable lease offers (a :class:`~grafos.fabric.MemLease`, or a
    partition's lease on a remote bus), besides an ``expires_at`` attribute."""

    def alive(self, now: float | None = None) -> bool: ...

    def renew(self, expires_at: float | None = None, *, ttl: float | None = None,
              now: float | None = None) -> float: ...

    def ttl_remaining(self, now: float | None = None) -> float: ...


@dataclass(frozen=True)
class RenewalPolicy:
    """When a registration is due and how far a renewal pushes it.

    * ``ttl``: seconds from the renewal to the new expiry. ``None`` (default)
      keeps the period it was registered with (``expires_at - now`` at
      :meth:`RenewalManager.register`), so a topic created with a one-hour
      retention keeps one hour.
    * ``renew_fraction``: renew once less than this fraction of ``ttl`` remains
      (default 0.5: renewing at half-life leaves a whole half period of slack
      for a late tick).
    * ``renew_before``: renew once fewer than this many seconds remain; when
      set it replaces ``renew_fraction``.
    """

    ttl: float | None = None
    renew_fraction: float = 0.5
    renew_before: float | None = None

    def __post_init__(self) -> None:
        if self.ttl is not None:
            _validate.number(self.ttl, "ttl", 0, lo_open=True)
        f = _validate.number(self.renew_fraction, "renew_fraction", 0, lo_open=True)
        if f > 1:
            raise InvalidArgument(f"renew_fraction must be <= 1, got {f}")
        if self.renew_before is not None:
            _validate.number(self.renew_before, "renew_before", 0)

    def due(self, remaining: float, period: float) -> bool:
        """Is a registration with ``remaining`` seconds left, renewed every
        ``period`` seconds, due for renewal?"""
        limit = self.renew_before if self.renew_before is not None else self.renew_fraction * period
        return remaining <= limit


@dataclass
class Registration:
    """One entry of a :class:`RenewalManager` (a snapshot when returned)."""

    id: Hashable
    expires_at: float          #: seconds since the epoch
    period: float              #: seconds each renewal extends to
    policy: RenewalPolicy
    renewals: int = 0
    lease: Lease | None = None               #: a registered lease
    partition: tuple[str, int] | None = None  #: (topic, partition) with a manager


class RenewalManager:
    """Renews registered leases (and timers) when they are due; see the module docs.

    ``RenewalManager()`` renews :class:`MemLease` objects and plain timers;
    ``RenewalManager(mgr)`` also ``(topic, partition)`` ids, and
    ``RenewalManager(mgr, topic=name)`` bare partition numbers of ``name``.
    """

    def __init__(self, mgr: "TopicManager | None" = None, *, topic: str | None = None) -> None:
        if mgr is not None:
            from .mq.topic import BusHandles
            if not isinstance(mgr, BusHandles):
                raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        if topic is not None:
            if mgr is None:
                raise InvalidArgument("topic= needs a TopicManager: RenewalManager(mgr, topic=...)")
            _validate.name(topic, "topic", 64)
        self.mgr = mgr
        self.topic = topic
        self._regs: dict[Hashable, Registration] = {}
        self._lock = threading.RLock()
        #: ids dropped by :meth:`tick` because they had expired before being renewed
        self.expired: list[Hashable] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        on = f" on topic {self.topic!r}" if self.topic is not None else ""
        return f"<RenewalManager{on}: {len(self._regs)} registration(s)>"

    # ---- registering -----------------------------------------------------------
    def _resolve(self, lease_or_id: object) -> tuple[Hashable, Lease | None, tuple[str, int] | None]:
        """(id, lease, (topic, partition)) for what the caller registered."""
        if isinstance(lease_or_id, (MemLease, Lease)):
            return lease_or_id, lease_or_id, None
        if isinstance(lease_or_id, bool) or lease_or_id is None:
            raise _validate.InvalidType(f"cannot register {lease_or_id!r}: give a MemLease, "
                                        "an int or str id, or a (topic, partition) tuple")
        if isinstance(lease_or_id, tuple):
            if self.mgr is None:
                raise InvalidArgument("(topic, partition) ids need RenewalManager(mgr)")
            if len(lease_or_id) != 2:
                raise InvalidArgument(f"a partition id is (topic, partition), got {lease_or_id!r}")
            topic, part = lease_or_id
            _validate.name(topic, "topic", 64)
            _validate.integer(part, "partition", 0)
            return (topic, part), None, (topic, part)
        if isinstance(lease_or_id, int):
            if self.topic is not None:
                _validate.integer(lease_or_id, "partition", 0)
                return lease_or_id, None, (self.topic, lease_or_id)
            return lease_or_id, None, None
        if isinstance(lease_or_id, str):
            return lease_or_id, None, None
        raise _validate.InvalidType(f"cannot register a {type(lease_or_id).__name__}: give a MemLease, "
                                    "an int or str id, or a (topic, partition) tuple")

    def _lease_of(self, reg: Registration) -> Lease | None:
        """The real lease behind a registration (None for a plain timer)."""
        if reg.lease is not None:
            return reg.lease
        if reg.partition is not None:
            assert self.mgr is not None
            topic, part = reg.partition
            t = self.mgr.topic(topic)
            p = t.partition(part)     # raises LeaseExpired / InvalidArgument
            return p.lease
        return None

    def register(self, lease_or_id: object, expires_at: float, policy: RenewalPolicy | None = None,
                 *, now: float | None = None) -> Hashable:
        """Keep ``lease_or_id`` alive: it expires at ``expires_at`` (seconds since
        the epoch) and is renewed as ``policy`` says. A real lease has its expiry
        moved to ``expires_at`` now. Registering an id again replaces the old
        registration. Returns the id to use with :meth:`ttl_remaining` and
        :meth:`deregister`."""
        policy = RenewalPolicy() if policy is None else policy
        if not isinstance(policy, RenewalPolicy):
            raise _validate.InvalidType(f"policy must be a RenewalPolicy, not {type(policy).__name__}")
        exp = _validate.number(expires_at, "expires_at")
        t = now_s(now)
        if exp <= t:
            raise InvalidArgument(f"expires_at {expires_at} is not in the future (now is {t})")
        key, lease, part = self._resolve(lease_or_id)
        reg = Registration(key, exp, policy.ttl if policy.ttl is not None else exp - t, policy,
                           lease=lease, partition=part)
        with self._lock:
            real = self._lease_of(reg)
            if real is not None:
                real.renew(expires_at=exp, now=t)   # LeaseExpired if it is already dead
            self._regs[key] = reg
        return key

    def register_topic(self, topic: str, policy: RenewalPolicy | None = None, *,
                       now: float | None = None) -> list[Hashable]:
        """Register every partition of ``topic`` (needs ``RenewalManager(mgr)``),
        from its current expiry: registering does not shorten or extend it.
        Returns the ids, ``(topic, partition)`` tuples."""
        if self.mgr is None:
            raise InvalidArgument("register_topic needs RenewalManager(mgr)")
        t = self.mgr.topic(_validate.name(topic, "topic", 64))
        ids = []
        for i in range(t.n):
            lease = t.partition(i).lease
            exp = lease.expires_at
            if lease.expired(now):
                raise LeaseExpired(f"topic {topic!r} partition {i} has expired; restart the topic")
            ids.append(self.register((topic, i), exp, policy, now=now))
        return ids

    def deregister(self, lease_or_id: object) -> bool:
        """Stop renewing; the lease keeps its current expiry. Returns False if it
        was not registered."""
        key = self._key_of(lease_or_id)
        with self._lock:
            return self._regs.pop(key, None) is not None

    def _key_of(self, lease_or_id: object) -> Hashable:
        """The id a registration is kept under: a lease is its own id."""
        if isinstance(lease_or_id, (MemLease, Lease)):
            return lease_or_id
        try:
            hash(lease_or_id)
        except TypeError:
            raise _validate.InvalidType(f"a registration id must be hashable, not "
                                        f"{type(lease_or_id).__name__}") from None
        return lease_or_id  # type: ignore[return-value]

    # ---- renewing ----------------------------------------------------------------
    @staticmethod
    def _renew(reg: Registration, lease: Lease | None, new: float, t: float) -> None:
        """Move a registration, and its real lease if it has one, to expire at ``new``."""
        if lease is not None:
            lease.renew(expires_at=new, now=t)
        reg.expires_at = new
        reg.renewals += 1

    def _drop(self, key: Hashable) -> None:
        """Forget a registration found expired (it cannot be renewed); listed in :attr:`expired`."""
        del self._regs[key]
        self.expired.append(key)

    def tick(self, now: float | None = None) -> list[Hashable]:
        """Renew every registration that is due; return the ids renewed.

        Registrations that had already expired (for a real lease: the fabric
        says so) cannot be renewed: they are dropped and appended to
        :attr:`expired`."""
        t = now_s(now)
        renewed: list[Hashable] = []
        with self._lock:
            for key, reg in list(self._regs.items()):
                try:
                    lease = self._lease_of(reg)
                    exp = lease.expires_at if lease is not None else reg.expires_at
                    if lease is not None and not lease.alive(t):   # decides: dead for good
                        raise LeaseExpired(f"lease of {key!r} expired")
                    if exp <= t:
                        raise LeaseExpired(f"{key!r} expired")
                    if not reg.policy.due(exp - t, reg.period):
                        reg.expires_at = exp
                        continue
                    self._renew(reg, lease, t + reg.period, t)
                except (LeaseExpired, NotFound):
                    self._drop(key)
                    _log.warning("lease %r expired before it was renewed: dropped", key)
                    continue
                renewed.append(key)
        return renewed

    def renew_now(self, lease_or_id: object, *, now: float | None = None) -> float:
        """Renew one registration whether due or not; returns the new expiry.
        Raises LeaseExpired if it has expired (and drops it)."""
        key = self._key_of(lease_or_id)
        t = now_s(now)
        with self._lock:
            reg = self._get(key)
            try:
                lease = self._lease_of(reg)
                if (lease is not None and not lease.alive(t)) or (lease is None and reg.expires_at <= t):
                    raise LeaseExpired(f"{key!r} has expired and cannot be renewed")
                # never moves an expiry back (a clock stepped back must not shorten a lease)
                new = max(t + reg.period, lease.expires_at if lease is not None else reg.expires_at)
                self._renew(reg, lease, new, t)
            except (LeaseExpired, NotFound):
                self._drop(key)
                raise
            return new

    # ---- looking ---------------------------------------------------------------------
    def _get(self, key: Hashable) -> Registration:
        reg = self._regs.get(key)
        if reg is None:
            raise NotFound(f"{key!r} is not registered")
        return reg

    def ttl_remaining(self, lease_or_id: object, now: float | None = None) -> float:
        """Seconds until the registration expires (0.0 once expired). For a real
        lease this reads the fabric, so it shows renewals made by other processes."""
        key = self._key_of(lease_or_id)
        t = now_s(now)
        with self._lock:
            reg = self._get(key)
            try:
                lease = self._lease_of(reg)
            except LeaseExpired:
                return 0.0
        if lease is not None:
            return lease.ttl_remaining(t)
        return max(0.0, reg.expires_at - t)

    def registrations(self) -> list[Registration]:
        """Snapshots of what is registered."""
        with self._lock:
            return [Registration(r.id, r.expires_at, r.period, r.policy, r.renewals, r.lease, r.partition)
                    for r in self._regs.values()]

    def __contains__(self, lease_or_id: object) -> bool:
        with self._lock:
            return lease_or_id in self._regs

    def __len__(self) -> int:
        with self._lock:
            return len(self._regs)

    # ---- ticking in the background -------------------------------------------------
    def start(self, interval: float = 1.0) -> None:
        """Tick every ``interval`` seconds from a daemon thread until :meth:`stop`.
        Choose an interval well below the shortest TTL times ``renew_fraction``."""
        _validate.number(interval, "interval", 0, lo_open=True)
        with self._lock:
            if self._thread is not None:
                raise InvalidArgument("the renewal thread is already running")
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(interval,),
                                            name="grafos-renewals", daemon=True)
            self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.tick()

    def stop(self) -> None:
        """Stop the renewal thread (if running) and wait for it."""
        th = self._thread
        if th is not None:
            self._stop.set()
            th.join()
            self._thread = None

    def __enter__(self) -> "RenewalManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
