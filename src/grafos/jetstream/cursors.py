"""Reading JetStream partitions for :class:`~grafos.mq.consumer.Consumer`.

Each assigned partition gets a *feed*: a disposable pull consumer on the
partition's stream (``ack_policy=none``, in memory, one replica, starting at
the consumer's position) and an inbox its messages arrive on. Positions,
committed offsets and fencing stay on the client and in the offset store, so
a feed can be dropped and made again at any time: after a seek, after its
node died, after the server forgot it for inactivity. A poll sends pull
requests (``no_wait`` for ``timeout=0``, else lingering ones that expire)
and hands out what has arrived, fairly across partitions; messages that
arrived beyond ``max_messages`` wait for the next poll. While every feed
has a pull out, a poll or a wait waits for what it brings in the consumer's
own thread, with no hop to the event loop; otherwise a wait is one coroutine
on the loop that pulls until something is readable or its time is up.

Offsets are stream sequences minus one, so they are dense, and a jump in the
sequence is what capacity (or age) dropped before this consumer read it:
that is ``lost()``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
import uuid
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
from nats.js import api

from .. import _validate
from ..errors import Closed, InvalidArgument, NotFound, Unavailable
from ..mq.model import MAX_OFFSET, OffsetStore, SeekPolicy
from ..reader import META_DTYPE, Batch
from . import envelope

if TYPE_CHECKING:
    from ..mq.consumer import Consumer
    from .manager import JetStreamManager
    from .topics import JsPartition, JsTopic

_SLICE = 1.0            # seconds a blocking poll waits per round (then looks at the topic again)
_REFRESH_GAP = 0.05     # at most one directory re-read per this many seconds for dead partitions
_INACTIVE = 30.0        # seconds the server keeps a feed nobody pulls from
_MIN_PULL = 128         # messages asked for per pull at least (the rest wait for the next poll)
_STATUS = "Status"
_unpack_head = envelope.decode


class _Feed:
    """One pull consumer and its inbox. Touched by the loop thread (arrivals) and
    the consumer's thread (taking from ``buf``: deque operations are atomic)."""

    def __init__(self, stream: str, start: int, wake: asyncio.Event, arrived: threading.Event) -> None:
        self.stream = stream
        self.name = "gf" + uuid.uuid4().hex[:20]
        self.inbox = "_INBOX." + uuid.uuid4().hex
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.name}"
        self.expect = start          # next offset the server should deliver
        self.buf: deque[tuple[int, bytes]] = deque()
        self.pulling = False
        self.left = 0
        self.until = 0.0
        self.broken = False
        self.gap = 0                 # messages skipped by the server (dropped before we read them)
        self.wake = wake             # the loop's waiters
        self.arrived = arrived       # the consumer's thread, waiting on a pull already sent
        self.sub: Any = None

    async def on_msg(self, msg: Any) -> None:
        hdrs = msg.headers
        if hdrs is not None and _STATUS in hdrs:
            code = hdrs[_STATUS]
            if code == "100":        # idle heartbeat / flow control
                return
            self.pulling = False
            if code == "503" or (code == "409" and "Deleted" in str(hdrs.get("Description", ""))):
                self.broken = True   # the feed (or its stream) is gone
            self.wake.set()
            self.arrived.set()
            return
        tokens = msg.reply.split(".")
        seq = int(tokens[5] if len(tokens) == 9 else tokens[-5])
        off = seq - 1
        if off < self.expect:
            return                    # a duplicate from a feed we already moved past
        if off > self.expect:
            self.gap += off - self.expect
        self.expect = off + 1
        self.buf.append((off, msg.data))
        self.left -= 1
        if self.left <= 0:
            self.pulling = False
        self.wake.set()
        self.arrived.set()


class _Cursor:
    __slots__ = ("partition", "part", "pos", "feed", "lost", "gaps")

    def __init__(self, partition: int, part: "JsPartition | None", pos: int) -> None:
        self.partition = partition
        self.part = part
        self.pos = pos
        self.feed: _Feed | None = None
        self.lost = 0           # dropped by the server while a feed read (the feed's gap)
        # committed offset -> messages dropped before it, per commit this cursor started from
        self.gaps: dict[int, int] = {}


class _State:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.topic: JsTopic | None = None
        self.cursors: dict[int, _Cursor] = {}
        self.saved: dict[int, tuple[int, int, int, dict[int, int]]] = {}   # partition -> (incarnation, position, lost, gaps)
        self.wake = asyncio.Event()
        self.arrived = threading.Event()
        self.next_look = 0.0
        self.closed = False         # set by Cursors.close: a wait in progress ends (Closed)


class Cursors:
    """The consumers of one :class:`JetStreamManager` and their feeds."""

    def __init__(self, bus: "JetStreamManager") -> None:
        self.bus = bus
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ---- state ---------------------------------------------------------------------------
    def _state(self, c: "Consumer") -> _State:
        st = self._states.get(c)
        if st is None:
            st = self._states[c] = _State(self.bus.loop.loop)
        return st

    def _sync(self, c: "Consumer", refresh: bool = False, start: bool = True) -> _State:
        """Cursors for the current assignment, on the topic as last read. A new
        cursor of a partition no seek positioned starts at the group's committed
        offset in the bus's offset records (``start``; False: a seek follows)."""
        st = self._state(c)
        bus = self.bus
        t = st.topic
        if t is None or refresh:
            t = bus.refresh(c.topic) if refresh else bus.topic(c.topic)
            self._adopt(st, t)
        wanted = c.assigned()
        parts = list(range(t.n)) if wanted is None else wanted
        for p in parts:
            if p >= t.n:
                raise InvalidArgument(f"topic {c.topic!r} has partitions 0..{t.n - 1}, not {p}")
        for p in list(st.cursors):
            if p not in parts:
                self._drop(st, p)
        new = [p for p in parts if p not in st.cursors]
        if new:
            bounds = self._bounds(st, new)
            for p in new:
                part = t.partitions[p]
                saved = st.saved.pop(p, None)
                cur = _Cursor(p, part, bounds[p][0])
                if saved is not None and part is not None and saved[0] == part.inc:
                    cur.pos, cur.lost, cur.gaps = saved[1], saved[2], saved[3]
                elif start and part is not None and p not in c._positioned:
                    cur.pos = self._committed(c, cur, bus.offset_store(), *bounds[p])
                st.cursors[p] = cur
        if list(st.cursors) != parts:
            st.cursors = {p: st.cursors[p] for p in parts}
        return st

    def _adopt(self, st: _State, t: "JsTopic") -> None:
        """Take a re-read topic: cursors of a new incarnation start at its earliest
        offset; cursors of a partition that died read nothing until a restart."""
        st.topic = t
        st.next_look = time.monotonic() + _REFRESH_GAP
        changed = []
        for p, cur in st.cursors.items():
            part = t.partitions[p] if p < t.n else None
            same = cur.part is not None and part is not None and cur.part.inc == part.inc
            if not same:
                changed.append(p)
            cur.part = part
            if not same or (cur.feed is not None and cur.feed.broken):
                self._close_feed(cur)
        if changed:
            bounds = self._bounds(st, changed)
            for p in changed:
                cur = st.cursors[p]
                cur.pos, cur.lost, cur.gaps = bounds[p][0], 0, {}
        for p in list(st.saved):
            part = t.partitions[p] if p < t.n else None
            if part is None or part.inc != st.saved[p][0]:
                del st.saved[p]

    def _bounds(self, st: _State, parts: list[int]) -> dict[int, tuple[int, int]]:
        t = st.topic
        assert t is not None

        async def all_bounds() -> list[tuple[int, int]]:
            return list(await asyncio.gather(*(
                self.bus.stream_bounds(t.partitions[p].stream) if t.partitions[p] is not None else _zero()
                for p in parts)))
        return dict(zip(parts, self.bus.run(all_bounds(), f"reading topic {t.name!r}")))

    def _drop(self, st: _State, p: int) -> None:
        cur = st.cursors.pop(p)
        if cur.part is not None:
            st.saved[p] = (cur.part.inc, cur.pos, cur.lost, cur.gaps)
        self._close_feed(cur)

    def _close_feed(self, cur: _Cursor) -> None:
        f, cur.feed = cur.feed, None
        if f is not None:
            self.bus.loop.spawn(self._dispose(f))

    async def _dispose(self, f: _Feed) -> None:
        try:
            if f.sub is not None:
                await f.sub.unsubscribe()
            await self.bus.js.delete_consumer(f.stream, f.name)
        except Exception:  # noqa: BLE001 - the server forgets idle feeds anyway
            pass

    def close(self, c: "Consumer") -> None:
        st = self._states.pop(c, None)
        if st is not None:
            st.closed = True
            st.arrived.set()
            if not self.bus.loop.loop.is_closed():
                self.bus.loop.loop.call_soon_threadsafe(st.wake.set)
            for cur in st.cursors.values():
                self._close_feed(cur)

    def close_all(self) -> None:
        for c in list(self._states):
            self.close(c)

    def _index(self, st: _State, partition: int) -> _Cursor:
        cur = st.cursors.get(partition)
        if cur is None:
            raise InvalidArgument(f"partition {partition} is not assigned to this consumer "
                                  f"(assigned: {sorted(st.cursors)})")
        return cur

    # ---- feeds -----------------------------------------------------------------------------
    async def _open_feed(self, st: _State, cur: _Cursor) -> _Feed:
        assert cur.part is not None
        f = _Feed(cur.part.stream, cur.pos, st.wake, st.arrived)
        f.sub = await self.bus.nc.subscribe(f.inbox, cb=f.on_msg)
        cfg = api.ConsumerConfig(
            name=f.name, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=cur.pos + 1,
            ack_policy=api.AckPolicy.NONE, mem_storage=True, num_replicas=1,
            inactive_threshold=_INACTIVE)
        try:
            await self.bus.js.add_consumer(cur.part.stream, cfg)
        except BaseException:
            await f.sub.unsubscribe()
            raise
        cur.feed = f
        return f

    async def _pull(self, st: _State, want: int, wait: float) -> bool:
        """Ask every live feed for messages (opening feeds as needed) and wait:
        with ``wait`` 0 until every feed answered, else until something arrives
        or ``wait`` passes. Returns True if a feed broke (look at the topic)."""
        bus = self.bus
        if not bus.nc.is_connected:
            end = time.monotonic() + bus.timeout
            while not bus.nc.is_connected:
                if time.monotonic() > end:
                    raise Unavailable(f"not connected to the JetStream server for {bus.timeout:.1f} s")
                await asyncio.sleep(0.05)
        st.wake.clear()
        now = time.monotonic()
        batch = max(want, _MIN_PULL)
        feeds, sent = [], []
        for cur in st.cursors.values():
            if cur.part is None:
                continue
            f = cur.feed
            if f is None:
                try:
                    f = await self._open_feed(st, cur)
                except Exception as e:  # noqa: BLE001 - a stream gone meanwhile: look again
                    from .loop import translate
                    err = translate(e, "opening a feed")
                    if isinstance(err, (NotFound, InvalidArgument)):
                        return True
                    raise err from None
            if f.broken:
                return True
            if f.pulling and now > f.until:
                f.pulling = False           # the answer was lost (reconnect): ask again
            if not f.pulling and not f.buf:
                req: dict[str, Any] = {"batch": batch}
                if wait < 0.01:
                    req["no_wait"] = True
                else:
                    req["expires"] = int(min(wait, _INACTIVE / 2) * 1e9)
                f.pulling, f.left = True, batch
                f.until = now + max(wait, 0) + bus.timeout
                await bus.nc.publish(f.next_subject, json.dumps(req).encode(), reply=f.inbox)
                sent.append(f)
            feeds.append(f)
        if not feeds:
            if wait > 0:
                await asyncio.sleep(min(wait, _REFRESH_GAP))
            return True
        if wait < 0.01:
            wait = 0.0
        end = time.monotonic() + (bus.timeout if wait <= 0 else wait)
        while True:
            if st.closed:
                return False
            if any(f.broken for f in feeds):
                return True
            if wait <= 0:
                if all(not f.pulling for f in sent):     # every partition answered: fair shares
                    return False
            elif any(f.buf for f in feeds):
                return False
            left = end - time.monotonic()
            if left <= 0:
                if wait <= 0:
                    raise Unavailable(f"no answer to a pull within {bus.timeout:.1f} s")
                return False
            st.wake.clear()
            try:
                await asyncio.wait_for(st.wake.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _take(self, st: _State, want: int) -> list[tuple[int, int, bytes]]:
        """Up to ``want`` arrived messages as (partition, offset, payload), fairly:
        every partition gets its share before any gets more."""
        out: list[tuple[int, int, bytes]] = []
        live = [c for c in st.cursors.values() if c.feed is not None and c.feed.buf]
        while live and len(out) < want:
            share = max(1, (want - len(out)) // len(live))
            for cur in live:
                f = cur.feed
                assert f is not None
                buf = f.buf
                n = min(share, want - len(out))
                while n and buf:
                    off, data = buf.popleft()
                    if off < cur.pos:
                        continue
                    out.append((cur.partition, off, data))
                    cur.pos = off + 1
                    n -= 1
                cur.lost = f.gap
            live = [c for c in live if c.feed is not None and c.feed.buf]
        return out

    def _round(self, c: "Consumer", want: int, timeout: float | None) -> list[tuple[int, int, bytes]]:
        _validate.integer(want, "max_messages", 1)
        _validate.timeout(timeout)
        st = self._sync(c)
        out = self._take(st, want)
        if out:
            return out
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            wait = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
            if wait >= 0.01 and self._in_flight(st):
                # every feed has a pull out: wait here for what it brings, no hop to the loop
                st.arrived.clear()
                out = self._take(st, want)
                if out:
                    return out
                st.arrived.wait(wait)
                out = self._take(st, want)
                if out:
                    return out
                if deadline is not None and time.monotonic() >= deadline:
                    return []
                if self._in_flight(st):
                    continue
            broke = self.bus.run(self._pull(st, want, wait), f"polling topic {c.topic!r}",
                                 timeout=wait + self.bus.timeout + 1.0)
            out = self._take(st, want)
            if out:
                return out
            if broke and time.monotonic() >= st.next_look:
                st = self._sync(c, refresh=True)      # NotFound if the topic was deleted
                if wait <= 0:
                    self.bus.run(self._pull(st, want, 0.0), f"polling topic {c.topic!r}",
                                 timeout=self.bus.timeout + 1.0)
                out = self._take(st, want)
                if out:
                    return out
            if deadline is not None and time.monotonic() >= deadline:
                return []

    @staticmethod
    def _in_flight(st: _State) -> bool:
        """Every live cursor's feed has a pull out that can still bring messages."""
        now = time.monotonic()
        live = [cur.feed for cur in st.cursors.values() if cur.part is not None]
        return bool(live) and all(f is not None and f.pulling and not f.broken and now < f.until
                                  for f in live)

    @staticmethod
    def _ready(st: _State) -> bool:
        """A message at or past some cursor's position has arrived."""
        return any(cur.feed is not None and cur.feed.buf and cur.feed.buf[-1][0] >= cur.pos
                   for cur in st.cursors.values())

    def wait(self, c: "Consumer", timeout: float | None) -> bool:
        """Pull until a message is readable (True) or ``timeout`` passes (False),
        taking none: the positions do not move. While every feed has a pull out
        the wait is in this thread; else one coroutine on the loop pulls until
        something is readable or the deadline passes (one hop for the whole
        wait, not one per slice). Raises Closed if the consumer or the bus is
        closed meanwhile."""
        _validate.timeout(timeout)
        st = self._sync(c)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if st.closed:
                raise Closed(f"waiting on topic {c.topic!r}: the consumer was closed")
            if self._ready(st):
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if (left is None or left >= 0.01) and self._in_flight(st):
                # every feed has a pull out: wait here for what it brings, no hop to the loop
                st.arrived.clear()
                if not self._ready(st) and not st.closed and self._in_flight(st):
                    st.arrived.wait(_SLICE if left is None else min(left, _SLICE))
                continue
            bound = None if left is None else left + self.bus.timeout + 1.0
            if self.bus.run(self._wait(st, deadline), f"waiting on topic {c.topic!r}", timeout=bound):
                st = self._sync(c, refresh=True)      # a feed broke: read the topic again

    def wait_future(self, c: "Consumer", timeout: float | None) -> "concurrent.futures.Future[bool]":
        """:meth:`wait` started on the loop, for an awaiting task: one hop for the
        whole wait. The future ends True when a message is readable, False when
        ``timeout`` passed or a feed broke (the next poll reads the topic again);
        cancelling it ends the wait."""
        _validate.timeout(timeout)
        st = self._sync(c)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)

        async def readable() -> bool:
            await self._wait(st, deadline)
            return self._ready(st)
        return self.bus.loop.submit(readable(), f"waiting on topic {c.topic!r}")

    async def _wait(self, st: _State, deadline: float | None) -> bool:
        """On the loop: pull, slice after slice, until a message is readable or
        ``deadline`` passes (False), or a feed broke (True: the caller reads the
        topic again, at most once per refresh gap)."""
        while not st.closed and not self._ready(st):
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                break
            if await self._pull(st, 1, left):
                gap = st.next_look - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap if deadline is None else min(gap, max(0.0, deadline - time.monotonic())))
                return True
        return False

    # ---- the Consumer's calls ------------------------------------------------------------------
    def poll(self, c: "Consumer", want: int, timeout: float | None) -> list:
        decode, topic = _unpack_head, c.topic
        return [(p, decode(off, data, topic, p)) for p, off, data in self._round(c, want, timeout)]

    def poll_batch(self, c: "Consumer", want: int, timeout: float | None) -> Batch:
        got = self._round(c, want, timeout)
        st = self._state(c)
        ids = sorted(st.cursors)
        index = {p: i for i, p in enumerate(ids)}
        meta = np.zeros(len(got), dtype=META_DTYPE)
        cols: dict[str, list[int]] = {k: [] for k in ("offset", "timestamp", "pos", "key_len", "hdr_len",
                                                         "val_len", "flags", "partition")}
        chunks, pos = [], 0
        for p, off, data in got:
            ts, kl, hl = envelope.head(off, data)
            body = memoryview(data)[envelope.SIZE:]
            k = max(kl, 0)
            for name, v in (("offset", off), ("timestamp", ts), ("pos", pos), ("key_len", k),
                            ("hdr_len", hl), ("val_len", len(body) - k - hl),
                            ("flags", 1 if kl >= 0 else 0), ("partition", index[p])):
                cols[name].append(v)
            chunks.append(body)
            pos += len(body)
        for name, v in cols.items():
            meta[name] = v
        data = np.frombuffer(b"".join(chunks), dtype=np.uint8) if chunks else np.zeros(0, dtype=np.uint8)
        return Batch(meta, data, ids, c.topic)

    def seek(self, c: "Consumer", store: Any, policy: Any) -> None:
        if not isinstance(policy, SeekPolicy):
            raise _validate.InvalidType(f"policy must be a SeekPolicy, not {type(policy).__name__}")
        if policy is SeekPolicy.Committed and not isinstance(store, OffsetStore):
            raise _validate.InvalidType("SeekPolicy.Committed needs an offset store")
        st = self._sync(c, refresh=True, start=False)
        bounds = self._bounds(st, list(st.cursors))
        offs, gaps = {}, {p: dict(cur.gaps) for p, cur in st.cursors.items()}
        for p, cur in st.cursors.items():       # all first: on_lost="raise" moves nothing
            earliest, latest = bounds[p]
            if policy is SeekPolicy.Earliest:
                offs[p] = earliest
            elif policy is SeekPolicy.Latest:
                offs[p] = latest
            else:
                offs[p] = self._committed(c, cur, store, earliest, latest, gaps[p])
        for p, cur in st.cursors.items():
            cur.gaps = gaps[p]
            self._move(cur, offs[p])

    @staticmethod
    def _committed(c: "Consumer", cur: _Cursor, store: Any, earliest: int, latest: int,
                   gaps: dict[int, int] | None = None) -> int:
        """Where the group's commit puts ``cur``: a commit the stream no longer
        holds counts the messages dropped before it (in ``gaps``, else the
        cursor's own) and follows the consumer's ``on_lost``."""
        got = store.committed(c.group, c.topic, cur.partition)
        if got is None:
            return earliest
        pos, lost = c._start_of(cur.partition, got, earliest, latest)
        if lost:
            (cur.gaps if gaps is None else gaps)[got] = lost
        return pos

    def _move(self, cur: _Cursor, off: int) -> None:
        if cur.pos != off or (cur.feed is not None and cur.feed.buf and cur.feed.buf[0][0] != off):
            self._close_feed(cur)
        cur.pos = off

    def seek_partition(self, c: "Consumer", partition: int, offset: int) -> None:
        st = self._sync(c)
        cur = self._index(st, partition)
        _validate.integer(offset, "offset", 0, MAX_OFFSET)
        latest = self.latest(c, partition)
        if offset > latest:
            raise InvalidArgument(f"offset {offset} is beyond the end ({latest}) of partition {partition}")
        self._move(cur, offset)

    def position(self, c: "Consumer", partition: int) -> int:
        st = self._states.get(c)
        if st is None or st.topic is None:
            raise InvalidArgument("consumer has not polled or sought yet")
        return self._index(st, partition).pos

    def positions(self, c: "Consumer") -> dict[int, int]:
        st = self._states.get(c)
        return {} if st is None else {p: cur.pos for p, cur in st.cursors.items()}

    def lost(self, c: "Consumer") -> dict[int, int]:
        st = self._states.get(c)
        if st is None:
            return {}
        out = {p: cur.lost + sum(cur.gaps.values()) for p, cur in sorted(st.cursors.items())}
        return {p: n for p, n in out.items() if n > 0}

    def lag(self, c: "Consumer") -> dict[int, int]:
        st = self._sync(c)
        bounds = self._bounds(st, list(st.cursors))
        return {p: max(0, bounds[p][1] - cur.pos) for p, cur in st.cursors.items()}

    def latest(self, c: "Consumer", partition: int) -> int:
        st = self._sync(c)
        return self._bounds(st, [partition])[partition][1]


async def _zero() -> tuple[int, int]:
    return 0, 0
