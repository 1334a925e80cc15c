"""Share groups on the JetStream bus: the queue model of :mod:`grafos.mq.share`
mapped onto JetStream's explicit-ack pull consumers.

A group is one durable pull consumer per partition stream (``gs<group token>``)
with ``AckWait = lock_secs`` and ``MaxDeliver = max_deliveries + 1``. A poll
pulls without waiting at the server (``no_wait``), so the server never hands a
record to a request this member stopped listening to. Settling a record answers
its delivery's ack subject and waits for the server's reply: ``+ACK`` is ack,
``-NAK`` release, ``+TERM`` reject (and the archive at the delivery limit),
``+WPI`` renew. The delivery count comes from the message's metadata.

**The delivery limit.** A record released at ``max_deliveries`` is copied to
the DLQ by the member that released it, then terminated. A record whose last
lock ran out comes once more (the one delivery past the limit the server
allows): the member that pulls it copies it to the DLQ and terminates it
instead of handing it out. The headers are those of the shared-memory bus;
``x-last-member`` is the member that took its last allowed delivery.

**Locks are the client's.** The server applies an acknowledgement sent to an
old delivery's subject to the record's current delivery, so a late settle is
refused by the member itself: a record settles only while the member's lock,
timed from just before the pull (and from just before a renew), has not run
out by its clock (``Capabilities.share_fenced`` is False on this bus). A settle
sent in the last moments of a lock can still reach the server after it
redelivered the record.

**The counters** (acked, released, rejected, dead-lettered, redelivered, lock
expiries) and the group's settings are kept in one KV record per group and
topic (``GF_GROUPS/s.<group>.<topic>``), changed in a record transaction per
poll that delivered again and per settle; the window (floor, next, in flight,
available) is the consumer's state on the server.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable

import nats.js.errors
from nats.js import api

from ..errors import CorruptFabric, InvalidArgument, LockLost, NotFound, Unavailable
from ..mq.share import ShareRecord, ShareState, _ShareMember
from . import envelope, names
from .records import Record

if TYPE_CHECKING:
    from .manager import JetStreamManager
    from .topics import JsTopic

__all__ = ["JsShareConsumer"]

_OPS = {"ack": b"+ACK", "release": b"-NAK", "reject": b"+TERM", "archive": b"+TERM", "renew": b"+WPI"}
_COUNTERS = ("delivered", "redelivered", "acked", "released", "rejected", "dead", "expired_locks")
_make = tuple.__new__


def _durable(group: str) -> str:
    return "gs" + names.token(group)


def _key(group: str, topic: str) -> str:
    return f"s.{names.token(group)}.{names.token(topic)}"


class JsShareConsumer(_ShareMember):
    """``mgr.share_consumer(topic, group=..., lock_secs=30, max_deliveries=5, dlq=None)``
    on a :class:`~grafos.jetstream.JetStreamManager` (see the module doc and
    :mod:`grafos.mq.share`). One thread at a time; use one per thread."""

    _WAIT_SLICE = 0.05      # seconds between no-wait pulls while a poll waits
    _LOST_WHY = ("it ran out after lock_secs={lock:g}, or the record was settled, and it may have gone to "
                 "another member")

    def __init__(self, mgr: "JetStreamManager", topic: str, group: str = "default", *, lock_secs: float = 30.0,
                 max_deliveries: int = 5, dlq: str | None = None, member: str | None = None,
                 max_batch: int = 1024, gating_ttl: float = 30.0, buf_size: int | None = None) -> None:
        self._settings(mgr, topic, group, lock_secs, max_deliveries, dlq, member, max_batch, gating_ttl, buf_size)
        self._durable = _durable(self.group)
        self._record = Record(mgr, names.GROUPS, _key(self.group, self.topic))
        self._t: JsTopic | None = None
        self._held: dict[tuple[int, int], tuple[str, float]] = {}   # (partition, offset) -> (ack subject, deadline)
        self._start = 0
        self._inbox = "_INBOX." + uuid.uuid4().hex
        with self._record.locked() as rec:
            self._config(rec.data)
            rec.data["members"] = int(rec.data.get("members", 0)) + 1
        self._bind()

    # ---- binding ----------------------------------------------------------------------
    def _config(self, data: dict) -> None:
        """The group's settings, written by its first member; a member with other
        settings is refused (they are the group's, not the member's)."""
        data.setdefault("names", [self.group, self.topic])
        cfg = data.get("cfg")
        if cfg is None:
            data["cfg"] = [self.lock_secs, self.max_deliveries]
            return
        try:
            lock, maxd = float(cfg[0]), int(cfg[1])
        except (TypeError, ValueError, IndexError):
            raise CorruptFabric(f"share group record of {self.group!r} on {self.topic!r} is damaged") from None
        if lock != self.lock_secs or maxd != self.max_deliveries:
            raise self._other_settings(lock, maxd)

    def _bind(self, refresh: bool = False) -> "JsTopic":
        t = self._t
        if t is not None and not refresh:
            return t
        t = self.mgr.refresh(self.topic) if refresh else self.mgr.topic(self.topic)
        cfg = api.ConsumerConfig(durable_name=self._durable, ack_policy=api.AckPolicy.EXPLICIT,
                                 deliver_policy=api.DeliverPolicy.ALL, ack_wait=self.lock_secs,
                                 max_deliver=self.max_deliveries + 1, max_ack_pending=-1,
                                 description=f"grafos share group {self.group} of {self.topic}")

        async def make() -> None:
            async def one(stream: str) -> None:
                try:
                    await self.mgr.js.add_consumer(stream, cfg)
                except nats.js.errors.NotFoundError:
                    pass        # the partition's stream went away: it reads as expired
            await asyncio.gather(*(one(p.stream) for p in t.partitions if p is not None))
        self.mgr.run(make(), f"joining share group {self.group!r} of {self.topic!r}")
        old = self._t
        if old is not None:     # locks held in a partition made again are gone with its stream
            gone = {p for p in range(old.n) if p >= t.n or _stream(old, p) != _stream(t, p)}
            self._held = {k: v for k, v in self._held.items() if k[0] not in gone}
        self._t = t
        return t

    # ---- polling ----------------------------------------------------------------------
    def poll(self, max_records: int = 100, timeout: float | None = 0.0, *,
             now: float | None = None) -> list[ShareRecord]:
        """Lock up to ``max_records`` records to this member and return them.
        ``timeout``: 0 returns at once, a number of seconds waits that long for
        one, None waits until there is one. ``now`` (seconds) is for tests."""
        n, deadline = self._poll_deadline(max_records, timeout)
        refresh = False
        while True:
            out, expired = self._poll_once(n, now, refresh)
            refresh = expired
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out
            left = self._WAIT_SLICE if deadline is None else min(self._WAIT_SLICE, deadline - time.monotonic())
            if left > 0:
                time.sleep(left)

    def _poll_once(self, n: int, now: float | None, refresh: bool) -> tuple[list[ShareRecord], bool]:
        t = self._bind(refresh)
        k = t.n
        order = [(self._start + i) % k for i in range(k)]
        self._start = (self._start + 1) % max(1, k)
        taken = time.time() if now is None else now        # locks are timed from before the pull
        got, expired = self.mgr.run(self._pull(t, order, n), f"share poll of {self.topic!r}")
        lock_end = taken + self.lock_secs
        out: list[ShareRecord] = []
        over: list[tuple[int, Any]] = []
        last_call: list[tuple[int, int]] = []
        for p, msg in got:
            md = msg.metadata
            off, count = md.sequence.stream - 1, md.num_delivered
            if count > self.max_deliveries:
                over.append((p, msg))
                continue
            m = envelope.decode(off, msg.data)
            out.append(_make(ShareRecord, (p, off, m[1], m[2], m[3], m[4], count, int(lock_end * 1e9),
                                           msg.reply, _stream(t, p), self.topic)))
            self._held[(p, off)] = (msg.reply, lock_end)
            if count == self.max_deliveries:
                last_call.append((p, off))
        if out or over:
            self._count_poll(t, out, last_call, over)
        return out, expired and not out

    async def _pull(self, t: "JsTopic", order: list[int], n: int) -> tuple[list[tuple[int, Any]], bool]:
        """No-wait pulls partition by partition until ``n`` records came."""
        nc = self.mgr.nc
        out: list[tuple[int, Any]] = []
        expired = False
        for p in order:
            part = t.partitions[p]
            if part is None:
                expired = True
                continue
            want = n - len(out)
            if want <= 0:
                break
            q: asyncio.Queue = asyncio.Queue()
            inbox = f"{self._inbox}.{uuid.uuid4().hex[:12]}"

            async def cb(msg: Any, q: asyncio.Queue = q) -> None:
                q.put_nowait(msg)
            sub = await nc.subscribe(inbox, cb=cb)
            try:
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{part.stream}.{self._durable}",
                                 json.dumps({"batch": want, "no_wait": True}).encode(), reply=inbox)
                got = 0
                while got < want:
                    try:
                        msg = await asyncio.wait_for(q.get(), self.mgr.timeout)
                    except asyncio.TimeoutError:
                        raise Unavailable(f"share poll of {self.topic!r} partition {p}: no answer from "
                                          f"the JetStream server") from None
                    hdrs = msg.headers
                    if hdrs is not None and "Status" in hdrs:
                        code = hdrs["Status"]
                        if code == "100":
                            continue
                        if code == "409" and "Consumer Deleted" in str(hdrs.get("Description", "")) \
                                or code == "503":
                            expired = True
                        elif code not in ("404", "408", "409"):
                            raise Unavailable(f"share poll of {self.topic!r} partition {p}: the server "
                                              f"answered {code} {hdrs.get('Description', '')}")
                        break
                    out.append((p, msg))
                    got += 1
            finally:
                await sub.unsubscribe()
        return out, expired

    def _count_poll(self, t: "JsTopic", out: list[ShareRecord], last_call: list[tuple[int, int]],
                    over: list[tuple[int, Any]]) -> None:
        """Count deliveries, note who took a record's last delivery, and dead-letter
        the records that came past the limit (their last lock ran out)."""
        deads: list[tuple[int, Any, str]] = []
        with self._record.locked() as rec:
            d = rec.data
            last = d.setdefault("last", {})
            rel = d.setdefault("rel", {})
            for r in out:
                c = self._counts(d, t, r[0])
                c["delivered"] += 1
                if r[6] > 1:
                    c["redelivered"] += 1
                    if rel.pop(f"{r[9]}:{r[1]}", None) is None:
                        c["expired_locks"] += 1
            for p, off in last_call:
                last[f"{_stream(t, p)}:{off}"] = self.member
            for p, msg in over:
                off = msg.metadata.sequence.stream - 1
                c = self._counts(d, t, p)
                c["redelivered"] += 1
                c["expired_locks"] += 1
                c["dead"] += 1
                deads.append((p, msg, str(last.pop(f"{_stream(t, p)}:{off}", ""))))
        for p, msg, who in deads:
            off = msg.metadata.sequence.stream - 1
            m = envelope.decode(off, msg.data)
            self._copy(p, off, m[1], m[2], m[4], self.max_deliveries, who)
            self.mgr.run(self._answer([(msg.reply, b"+TERM")]), f"share archive on {self.topic!r}")

    @staticmethod
    def _counts(d: dict, t: "JsTopic", p: int) -> dict:
        per = d.setdefault("parts", {})
        s = _stream(t, p)
        c = per.get(s)
        if not isinstance(c, dict):
            c = per[s] = {}
        for name in _COUNTERS:
            c.setdefault(name, 0)
        return c

    # ---- settling ---------------------------------------------------------------------
    def ack(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Accept records: never delivered again. Returns how many."""
        return self._settle("ack", self._records(records), now)

    def release(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Make records available again at once (their delivery count stays); a
        record at the delivery limit goes to the DLQ instead."""
        return self._settle("release", self._records(records), now)

    def reject(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Never deliver these records again; copy them to the DLQ first if one is set."""
        return self._settle("reject", self._records(records), now)

    def renew(self, records: "ShareRecord | Iterable[ShareRecord]", *, now: float | None = None) -> int:
        """Extend the locks of records: they run for ``lock_secs`` from now."""
        return self._settle("renew", self._records(records), now)

    def held(self) -> list[tuple[int, int]]:
        """(partition, offset) of the records this consumer holds (as far as it knows)."""
        return sorted(self._held)

    def _held_between(self, p: int, a: int, b: int) -> list[ShareRecord]:
        t = self._bind()
        return [_make(ShareRecord, (p, off, None, b"", 0, (), 0, int(dl * 1e9), subj, _stream(t, p), self.topic))
                for (q, off), (subj, dl) in sorted(self._held.items()) if q == p and a <= off < b]

    def _settle(self, op: str, recs: list[ShareRecord], now: float | None) -> int:
        if not recs:
            return 0
        t = self._bind()
        for r in recs:
            if not 0 <= r[0] < t.n:
                raise InvalidArgument(f"topic {self.topic!r} has partitions 0..{t.n - 1}, not {r[0]}")
        at = time.time() if now is None else now
        good: list[ShareRecord] = []
        refused: list[ShareRecord] = []
        seen: set[tuple[int, int]] = set()
        for r in recs:
            h = self._held.get((r[0], r[1]))
            if h is None or h[0] != r[8] or at >= h[1] or (r[0], r[1]) in seen:
                refused.append(r)       # released, settled, lost to the clock, or an older delivery
            else:
                good.append(r)
                seen.add((r[0], r[1]))
        if op == "release":
            dead = [r for r in good if self._count(r) >= self.max_deliveries]
            ops = [(r, "archive" if self._count(r) >= self.max_deliveries else "release") for r in good]
        elif op == "reject":
            dead = good if self._dlq_producer is not None else []
            ops = [(r, "reject") for r in good]
        else:
            dead, ops = [], [(r, op) for r in good]
        for r in dead:      # the copy before the archive: a crash between leaves the record to another
            self._copy_record(t, r, op)
        if ops:
            self.mgr.run(self._answer([(r[8], _OPS[o]) for r, o in ops]), f"share {op} on {self.topic!r}")
        if op == "renew":
            for r in good:
                self._held[(r[0], r[1])] = (r[8], at + self.lock_secs)
        else:
            for r in good:
                self._held.pop((r[0], r[1]), None)
            self._count_settle(t, ops)
        if refused:
            raise self._lock_lost(refused, op)
        return len(good)

    def _count(self, r: ShareRecord) -> int:
        """A record's delivery count: from the record, or (a range call's
        placeholder) from its delivery's ack subject."""
        if r[6]:
            return r[6]
        from nats.aio.msg import Msg
        return Msg.Metadata._from_reply(r[8]).num_delivered

    async def _answer(self, pairs: list[tuple[str, bytes]]) -> None:
        """Send acknowledgements and wait for the server to take each."""
        nc = self.mgr.nc
        await asyncio.gather(*(nc.request(subj, body, timeout=self.mgr.timeout) for subj, body in pairs))

    def _count_settle(self, t: "JsTopic", ops: list[tuple[ShareRecord, str]]) -> None:
        if not ops:
            return
        name = {"ack": "acked", "release": "released", "reject": "rejected", "archive": "dead"}
        with self._record.locked() as rec:
            d = rec.data
            rel = d.setdefault("rel", {})
            last = d.setdefault("last", {})
            for r, o in ops:
                self._counts(d, t, r[0])[name[o]] += 1
                where = f"{r[9]}:{r[1]}"
                last.pop(where, None)
                if o == "release":
                    rel[where] = 1

    # ---- dead letters -----------------------------------------------------------------
    def _copy_record(self, t: "JsTopic", r: ShareRecord, op: str) -> None:
        key, value, headers = r[2], r[3], r[5]
        if not value and not key and r[4] == 0:     # a range call's placeholder: read the record
            key, value, headers = self._read(t, r[0], r[1])
        self._copy(r[0], r[1], key, value, headers, self._count(r), self.member)

    def _read(self, t: "JsTopic", p: int, off: int) -> tuple[bytes | None, bytes, Any]:
        part = t.partitions[p]
        if part is None:
            return None, b"", ()
        try:
            raw = self.mgr.run(self.mgr.js.get_msg(part.stream, off + 1), f"reading {self.topic!r}")
        except NotFound:
            return None, b"", ()
        m = envelope.decode(off, raw.data or b"")
        return m[1], m[2], m[4]

    def _copy(self, p: int, off: int, key: bytes | None, value: bytes, headers: Any, count: int,
              last: str) -> None:
        if self._dlq_producer is not None:
            self._send_dead_letter(p, off, key, value, headers, count, last.encode())

    # ---- observability ------------------------------------------------------------------
    def describe(self, now: float | None = None) -> list[ShareState]:
        """Per partition: the window, records in flight and available, and the counters.
        ``in_flight`` counts released records until they are delivered again;
        ``oldest_lock_age`` is of the locks this consumer holds."""
        t = self._bind()
        at = time.time() if now is None else now

        async def infos() -> list[Any]:
            async def one(stream: str) -> Any:
                try:
                    return (await self.mgr.js.consumer_info(stream, self._durable),
                            await self.mgr.stream_bounds(stream))
                except nats.js.errors.NotFoundError:
                    return None
            return list(await asyncio.gather(*(one(p.stream) for p in t.partitions if p is not None)))
        got = self.mgr.run(infos(), f"describing share group {self.group!r} of {self.topic!r}")
        rec, _ = self.mgr.run(_kv_get(self.mgr, _key(self.group, self.topic)), "reading the share group")
        rec = rec or {}
        per = rec.get("parts", {}) if isinstance(rec.get("parts"), dict) else {}
        members = int(rec.get("members", 0)) if isinstance(rec.get("members"), int) else 0
        out = []
        live = [p for p in range(t.n) if t.partitions[p] is not None]
        for p, info in zip(live, got):
            if info is None:
                continue
            ci, (earliest, latest) = info
            c = per.get(_stream(t, p), {})
            c = {k: int(c.get(k, 0)) if isinstance(c, dict) else 0 for k in _COUNTERS}
            floor = max(ci.ack_floor.stream_seq if ci.ack_floor else 0, earliest)
            nxt = max(ci.delivered.stream_seq if ci.delivered else 0, floor)
            locks = [dl - self.lock_secs for (q, _), (_, dl) in self._held.items() if q == p]
            age = max(0.0, at - min(locks)) if locks else 0.0
            out.append(ShareState(p, floor, nxt, latest, ci.num_ack_pending, ci.num_pending, c["delivered"],
                                  c["redelivered"], c["acked"], c["released"], c["rejected"], c["dead"], 0,
                                  c["expired_locks"], age, members))
        return out

    def expired(self) -> int:
        """Records the group had not finished when their partition expired: not
        counted on this bus (a partition's stream and consumer go together)."""
        return 0

    # ---- life ---------------------------------------------------------------------------
    def close(self, *, release: bool = True) -> None:
        """Leave the group: release the records this consumer still holds (with
        ``release=False`` their locks run out instead)."""
        if self._closed:
            return
        if release and self._held and self._t is not None:
            t = self._t
            recs = [_make(ShareRecord, (p, off, None, b"", 0, (), 0, int(dl * 1e9), subj, _stream(t, p),
                                        self.topic))
                    for (p, off), (subj, dl) in self._held.items()]
            try:
                self._settle("release", recs, None)
            except (LockLost, Unavailable):
                pass
        self._held.clear()
        self._closed = True
        self._t = None

    # ---- asyncio ------------------------------------------------------------------------
    async def apoll(self, max_records: int = 100, timeout: float | None = 0.0) -> list[ShareRecord]:
        """:meth:`poll` for asyncio, in a worker thread (the bus's calls wait on its own loop)."""
        return await asyncio.to_thread(self.poll, max_records, timeout)

    async def aack(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return await asyncio.to_thread(self.ack, records)

    async def arelease(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return await asyncio.to_thread(self.release, records)

    async def areject(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return await asyncio.to_thread(self.reject, records)

    async def arenew(self, records: "ShareRecord | Iterable[ShareRecord]") -> int:
        return await asyncio.to_thread(self.renew, records)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)


def _stream(t: "JsTopic", p: int) -> str:
    part = t.partitions[p] if p < t.n else None
    return part.stream if part is not None else ""


async def _kv_get(mgr: "JetStreamManager", key: str) -> tuple[dict | None, int]:
    from . import kv
    return await kv.get(mgr.js, names.GROUPS, key)
