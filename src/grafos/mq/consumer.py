"""Consumers: read assigned partitions from their positions, commit what was
processed. One crossing into C per poll: ``poll`` is a method of the
crossing's :class:`~grafos._crossing.PollPath`, which runs the core's
``gf_poller_poll`` (it reads every assigned partition and, with a timeout, sleeps on
a futex in the shared mapping) and builds the ``(partition, Message)`` pairs
in C. What it cannot take itself (an unbound consumer, a partition found
expired, unusual arguments) goes to the consumer's session on its bus
(``Bus.consumer_session``: :mod:`grafos.mq.shm_read` on shared memory).

A Consumer belongs to one thread at a time; use one per thread.
"""
from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Iterable

from .. import _validate
from .._crossing import PollPath
from ..errors import Closed, Fenced, InvalidArgument, OffsetOutOfRange, Unsupported
from ..message import Message
from ..reader import Batch, Waiter
from . import gate, serde
from .offset import OffsetStore, commit_many, committed_entry
from .model import Bus, ConsumerSession, SeekPolicy

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..peek import Peek

__all__ = ["Consumer", "SeekPolicy", "Message"]

_IDS = itertools.count(1)
ISOLATIONS = ("read_uncommitted", "read_committed")
ON_LOST = ("earliest", "latest", "raise")


class _Unread:
    """The session of a consumer that has read through no bus yet: no positions,
    nothing lost, nothing to release; a commit goes to the store as given."""

    def position(self, consumer: Consumer, partition: int) -> int:
        raise InvalidArgument("consumer has not polled or sought yet")

    def positions(self, consumer: Consumer) -> dict[int, int]:
        return {}

    def lost(self, consumer: Consumer) -> dict[int, int]:
        return {}

    def aborted(self, consumer: Consumer) -> int:
        return 0

    def latest(self, consumer: Consumer, partition: int) -> int:
        return 0

    def incarnations(self, consumer: Consumer, partitions: list[int]) -> None:
        return None

    def commit_store(self, consumer: Consumer, store: OffsetStore) -> OffsetStore:
        return store

    def reassign(self, consumer: Consumer, partitions: list[int]) -> None:
        return None

    def close_consumer(self, consumer: Consumer) -> None:
        return None


_UNREAD = _Unread()


class Consumer(PollPath):
    """``Consumer("events", "processors")``: reads partitions given to :meth:`assign`
    (all partitions if never assigned).

    A partition this consumer has not been positioned on by a seek starts at
    the group's committed offset in the bus's own offset records (a
    :class:`~grafos.mq.offset.FabricOffsetStore` of the bus), or at the oldest
    message still held if there is none; and a commit never moves a store's
    committed offset of such a partition backwards (it raises
    :class:`~grafos.errors.InvalidArgument`: seek to rewind on purpose).

    ``poll(mgr, max_messages=100, timeout=0.0, *, spin=None)`` returns up to
    ``max_messages`` ``(partition, Message)`` pairs. ``timeout``: 0 (default)
    returns at once; a number of seconds blocks until a message arrives or the
    time passes; None blocks until a message arrives. Blocking sleeps on a
    futex and lets Ctrl-C through. Before it sleeps it polls for a while
    (``spin``), since a futex wake-up across CPUs costs tens of microseconds:
    by default (None) as long as recent waits suggest, twice the recent wait
    and at most 200 us, dropping to none on a consumer whose waits are longer
    than that (an idle one never spins); a number of seconds spins that long
    before each first sleep; 0 never spins. ``consumed`` counts what polls returned.

    ``key_deserializer`` and ``value_deserializer`` (callables ``bytes -> obj``,
    e.g. ``lambda b: json.loads(b)``) turn each polled message's key (when it
    has one) and value into objects; the message's other fields stay. They run
    in Python after the read (a consumer with one polls through Python). A
    deserializer that raises makes ``poll`` raise that error (with a note
    naming the topic, partition and offset) when the message is the first the
    poll would hand out; the messages before it in the same poll are handed
    out first. Either way the consumer's position stays before the message
    that failed, so nothing is skipped: seek past it to go on.
    ``poll_batch`` and ``peek`` hand out raw bytes, so a consumer with a
    deserializer refuses them (:class:`~grafos.errors.Unsupported`).
    """

    def __init__(self, topic: str, group: str = "default", *, max_batch: int = 1024,
                 gating: bool = False, gating_ttl: float = 30.0, check_crcs: bool = True,
                 isolation: str = "read_uncommitted", on_lost: str = "earliest",
                 key_deserializer: serde.Deserializer | None = None,
                 value_deserializer: serde.Deserializer | None = None) -> None:
        """``check_crcs``: verify each message's checksum on read (see
        :class:`~grafos.reader.Reader`); ``False`` skips it. ``isolation``:
        ``"read_uncommitted"`` (default) hands out every message as it is
        written; ``"read_committed"`` hands out transactional messages only
        once their transaction commits, never if it aborts, in partition
        order (see :mod:`grafos.mq.isolation`). ``on_lost``: where a
        ``Committed`` seek (or the first read of a partition no seek
        positioned) puts a partition whose committed offset the ring no
        longer holds (Kafka's ``auto.offset.reset``): ``"earliest"``
        (default: the oldest message still held), ``"latest"`` (the end), both
        counting the overwritten messages in :meth:`lost`, or ``"raise"``
        (:class:`~grafos.errors.OffsetOutOfRange`, naming the partition and
        both offsets; nothing moves)."""
        if isolation not in ISOLATIONS:
            raise InvalidArgument(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        if on_lost not in ON_LOST:
            raise InvalidArgument(f"on_lost must be one of {ON_LOST}, not {on_lost!r}")
        self.on_lost = on_lost
        self.isolation = isolation
        self.key_deserializer = serde.checked(key_deserializer, "key_deserializer")
        self.value_deserializer = serde.checked(value_deserializer, "value_deserializer")
        if not isinstance(check_crcs, bool):
            raise _validate.InvalidType(f"check_crcs must be a bool, not {type(check_crcs).__name__}")
        self.check_crcs = check_crcs
        self.topic = _validate.name(topic, "topic", 64)
        self.group = _validate.name(group, "group", 64)
        self.max_batch = _validate.integer(max_batch, "max_batch", 1, 1 << 20)
        if not isinstance(gating, bool):
            raise _validate.InvalidType(f"gating must be a bool, not {type(gating).__name__}")
        #: on a topic with on_full "block"/"raise", producers never overwrite what this
        #: consumer has not polled yet, while it polls at least every ``gating_ttl`` seconds
        self.gating = gating
        self.gating_ttl = _validate.number(gating_ttl, "gating_ttl", 0, lo_open=True)
        #: the name this consumer's gate goes by, where it gates a topic
        self._gate_name = gate.consumer_reader(f"{self.group}.{os.getpid()}.{next(_IDS)}")
        self._assigned: list[int] | None = None
        self._closed = False
        # (bus, its session for this consumer): the bus the consumer last read through
        self._sess: tuple = (None, _UNREAD)
        self._member: tuple[object, str] | None = None   # (ConsumerGroup, member) for fencing
        self.consumed = 0
        # partitions positioned by a seek, or whose commit was checked against the store
        # (a commit of a partition not in it must not move the store's offset back)
        self._positioned: set[int] = set()
        #: partitions a Committed seek started at the earliest offset because the
        #: commit belonged to an earlier incarnation (the topic was restarted)
        self.reset_by_incarnation = 0

    # ---- crossing processes -------------------------------------------------------
    def __reduce__(self):  # noqa: ANN204 - settings, assignment and group binding; no positions
        """A consumer crosses processes as its topic, group, batch size, assignment
        and group binding. Positions stay behind (they belong to this process's
        reader): seek in the child, from the committed offsets."""
        return (_remake, (self.topic, self.group, self.isolation, self.on_lost),
                {"max_batch": self.max_batch, "assigned": self._assigned, "member": self._member,
                 "key_deserializer": self.key_deserializer, "value_deserializer": self.value_deserializer})

    def __setstate__(self, state: dict) -> None:
        self.key_deserializer = state.get("key_deserializer")
        self.value_deserializer = state.get("value_deserializer")
        self.max_batch = state["max_batch"]
        self._assigned = state["assigned"]
        self._member = state["member"]

    # ---- assignment -----------------------------------------------------------
    def __repr__(self) -> str:
        parts = "all partitions" if self._assigned is None else f"partitions {list(self._assigned)}"
        return f"<{type(self).__name__} {self.topic!r} group {self.group!r}, {parts}>"

    def assign(self, partitions: Iterable[int]) -> None:
        try:
            parts = list(partitions)
        except TypeError:
            raise _validate.InvalidType(f"partitions must be an iterable of ints, "
                                        f"not {type(partitions).__name__}") from None
        for p in parts:
            _validate.integer(p, "partition", 0, 1 << 20)
        if len(set(parts)) != len(parts):
            raise InvalidArgument(f"duplicate partitions in {parts}")
        self._sess[1].reassign(self, parts)
        self._assigned = sorted(parts)
        self._positioned &= set(parts)
        self._unbind_fast()

    def assignment(self) -> list[int]:
        if self._assigned is not None:
            return list(self._assigned)
        return list(self.positions())

    def assigned(self) -> list[int] | None:
        """The partitions given to :meth:`assign`; None if never assigned (all of them)."""
        return None if self._assigned is None else list(self._assigned)

    def _session(self, mgr: Bus) -> ConsumerSession:
        """What serves this consumer's calls on ``mgr``: asked once per bus, when
        the consumer first reads through it."""
        m, s = self._sess
        if m is mgr:
            return s
        if not isinstance(mgr, Bus):
            raise _validate.InvalidType(f"mgr must be a TopicManager, not {type(mgr).__name__}")
        s = mgr.consumer_session(self)
        self._sess = (mgr, s)
        return s

    def bind(self, group: object, member: str) -> None:
        """Tie this consumer to a group member: commits for partitions the member
        no longer owns raise :class:`~grafos.errors.Fenced`."""
        self._member = (group, member)

    # ---- positions ---------------------------------------------------------------
    def seek(self, mgr: Bus, /, store_or_partition=None, policy: SeekPolicy | str | int | None = None) -> None:
        """``seek(mgr, store, SeekPolicy.Committed|Earliest|Latest)`` for every assigned
        partition; ``seek(mgr, SeekPolicy.Earliest|Latest)`` needs no store. A policy
        may be given by name (``seek(mgr, "earliest")``). One
        partition: :meth:`seek_partition` (``seek(mgr, partition, offset)`` also works)."""
        if self._closed:
            raise self._closed_error()
        if isinstance(store_or_partition, (SeekPolicy, str)) and policy is None:
            store_or_partition, policy = None, store_or_partition
        if isinstance(policy, str):
            policy = SeekPolicy.of(policy)
        if isinstance(store_or_partition, int) and not isinstance(store_or_partition, bool):
            self.seek_partition(mgr, store_or_partition, policy)   # type: ignore[arg-type]
            return
        s = self._session(mgr)
        s.seek(self, store_or_partition, policy)
        self._positioned.update(s.positions(self))

    def _start_of(self, p: int, committed: int, earliest: int, latest: int) -> tuple[int, int]:
        """Where committed offset ``committed`` puts partition ``p``, whose ring
        holds ``earliest`` to ``latest``, and how many messages it lost behind
        that commit (on every backend): the commit itself, ``earliest`` for a
        commit beyond the end, else ``on_lost`` decides."""
        if committed > latest:
            return earliest, 0
        if committed >= earliest:
            return committed, 0
        if self.on_lost == "raise":
            raise OffsetOutOfRange(topic=self.topic, group=self.group, partition=p, committed=committed,
                                   earliest=earliest)
        return latest if self.on_lost == "latest" else earliest, earliest - committed

    def seek_partition(self, mgr: Bus, /, partition: int, offset: int) -> None:
        """Put one assigned partition at ``offset`` (at most its end)."""
        if self._closed:
            raise self._closed_error()
        self._session(mgr).seek_partition(self, partition, offset)
        self._positioned.add(partition)

    def position(self, partition: int) -> int:
        """The next offset this consumer will read from ``partition``."""
        return self._sess[1].position(self, partition)

    def positions(self) -> dict[int, int]:
        return self._sess[1].positions(self)

    @property
    def aborted(self) -> int:
        """Messages a ``read_committed`` consumer skipped: their transaction aborted."""
        return self._sess[1].aborted(self)

    def lost(self) -> dict[int, int]:
        """Per partition that lost something: messages overwritten before this
        consumer read them, while it polled or behind a committed offset it
        sought. ``{}``: nothing lost."""
        return self._sess[1].lost(self)

    def lag(self, mgr: Bus, /) -> dict[int, int]:
        """Per assigned partition: offsets between the position and the end (a message
        larger than a slot counts as one per slot it spans)."""
        return self._session(mgr).lag(self)

    # ---- reading -------------------------------------------------------------------
    @property
    def _deserializing(self) -> bool:
        return self.key_deserializer is not None or self.value_deserializer is not None

    # poll() is PollPath's (C); it comes here when it cannot take the call itself,
    # with the arguments exactly as given (always, on a consumer with a deserializer).
    def _poll_fallback(self, mgr: Bus, max_messages: int = 100, timeout: float | None = 0.0,
                       *, spin: float | None = None) -> list[tuple[int, Message]]:
        if self._closed:
            raise self._closed_error()
        s = self._session(mgr)
        msgs = self._deserialize(mgr, s.poll(self, max_messages, timeout, spin))
        self.consumed += len(msgs)
        s.polled(self, len(msgs), max_messages)      # after the deserializers: they may seek back
        return msgs

    def _deserialize(self, mgr: Bus, msgs: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """``msgs`` through the deserializers (if any), up to the first that fails:
        from it on, every partition is put back at its first message not handed out."""
        kd, vd = self.key_deserializer, self.value_deserializer
        if (kd is None and vd is None) or not msgs:
            return msgs
        out = []
        for i, (p, m) in enumerate(msgs):
            which = "key_deserializer"
            try:
                k = m[1] if kd is None or m[1] is None else kd(m[1])
                which = "value_deserializer"
                v = m[2] if vd is None else vd(m[2])
            except Exception as e:
                rest = msgs[i:]
                back: dict[int, int] = {}
                for q, r in rest:
                    back[q] = min(back.get(q, r[0]), r[0])
                for q, off in back.items():
                    self.seek_partition(mgr, q, off)
                if out:
                    return out
                serde.add_note(e, f"grafos: {which} failed on topic {self.topic!r} partition {p} offset {m[0]}; "
                               "the consumer stays before it (seek past it to go on)")
                raise
            out.append((p, m._replace_kv(k, v)))
        return out

    def pending_commit(self, offsets: dict[int, int] | None = None
                       ) -> tuple[str, str, dict[int, int], dict[int, int] | None]:
        """(group, topic, offsets, incarnations) that :meth:`commit` would commit,
        checked, not committed (a transaction commits them with its messages)."""
        pos = self.positions()
        if offsets is not None:
            for p, off in offsets.items():
                if p not in pos:
                    raise InvalidArgument(f"partition {p} is not assigned to this consumer")
                _validate.integer(off, "offset", 0)
                latest = self._latest(p)
                if off > latest:
                    raise InvalidArgument(f"cannot commit offset {off} for partition {p}: beyond its end ({latest})")
            pos = dict(offsets)
        return self.group, self.topic, pos, self._incarnations(list(pos))

    def _incarnations(self, partitions: list[int]) -> dict[int, int] | None:
        """Which life of each partition a commit belongs to, where the bus tells."""
        return self._sess[1].incarnations(self, partitions)

    def poll_batch(self, mgr: Bus, /, max_messages: int = 1024, timeout: float | None = 0.0,
                   *, spin: float | None = None) -> Batch:
        """Like :meth:`poll`, as a :class:`~grafos.reader.Batch` of numpy arrays over
        one buffer (valid until the next poll)."""
        if self._deserializing:
            raise Unsupported(f"consumer of {self.topic!r} has a deserializer: poll_batch hands out raw rows; "
                              "use poll")
        if self._closed:
            raise self._closed_error()
        s = self._session(mgr)
        b = s.poll_batch(self, max_messages, timeout, spin)
        self.consumed += len(b)
        s.polled(self, len(b), max_messages)
        return b

    def wait(self, mgr: Bus, /, timeout: float | None = None) -> bool:
        """Block until :meth:`poll` would find a message (or ``timeout`` seconds pass;
        None: no limit) without reading one: positions do not move, so a caller
        that gives up leaves the consumer where it was. True if something is
        readable. A thread may wait for the consumer's owner while the owner
        waits for it (this is how :mod:`grafos.aio` awaits messages)."""
        return self._session(mgr).wait(self, timeout)

    def wait_request(self, waiter: Waiter, mgr: Bus, timeout: float | None = None) -> int:
        """Ask ``waiter`` (a :class:`~grafos.reader.Waiter`, which an event loop
        watches) to wait as :meth:`wait` does, in its own thread; returns the
        request's number. Reads nothing."""
        return self._session(mgr).wait_request(self, waiter, timeout)

    # ---- committing -------------------------------------------------------------
    def commit(self, store: OffsetStore, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit the current positions (or ``offsets``: partition -> next offset to
        read) of the assigned partitions. Returns what was committed."""
        if not isinstance(store, OffsetStore):
            raise _validate.InvalidType(f"store must be an offset store, not {type(store).__name__}")
        _, _, pos, incs = self.pending_commit(offsets)
        if self._member is not None:        # fenced: a member's partitions are its own
            group, member = self._member
            group.commit(store, member, self.topic, pos, incarnations=incs)  # type: ignore[attr-defined]
            return pos
        if offsets is None:
            self._check_rewind(store, pos)
        store = self._sess[1].commit_store(self, store)
        commit_many(store, self.group, self.topic, pos, incs)
        self._positioned.update(pos)        # from here on the store follows this consumer
        return pos

    def _check_rewind(self, store: OffsetStore, pos: dict[int, int]) -> None:
        """A partition no seek positioned must not move the store's committed
        offset backwards (it started where the bus's records said, which need
        not be where this store is)."""
        incs = None
        for p, off in pos.items():
            if p in self._positioned:
                continue
            e = committed_entry(store, self.group, self.topic, p)
            if e is None or e.offset <= off:
                continue
            incs = self._incarnations(list(pos)) if incs is None else incs
            if e.incarnation is not None and incs is not None and p in incs and e.incarnation != incs[p]:
                continue        # a commit of an earlier life of the partition: nothing to rewind
            raise InvalidArgument(
                f"commit would move group {self.group!r}'s committed offset of {self.topic!r} partition {p} "
                f"back from {e.offset} to {off}: this consumer was not positioned on it by a seek; "
                f"seek(mgr, store, SeekPolicy.Committed) first (or seek to rewind on purpose)")

    # ---- in place ------------------------------------------------------------------
    def peek(self, mgr: Bus, /, max_messages: int = 100) -> "Peek":
        """Up to ``max_messages`` from the assigned partitions, read in place without
        waiting: values are views into the rings, checked for overwrite when the
        block is left (see :mod:`grafos.peek`). Positions move past them as with
        :meth:`poll`."""
        if self._deserializing:
            raise Unsupported(f"consumer of {self.topic!r} has a deserializer: peek hands out raw bytes in "
                              "place; use poll")
        pk = self._session(mgr).peek(self, max_messages)
        self.consumed += len(pk)
        return pk

    def _latest(self, p: int) -> int:
        """The end of partition ``p`` (for checking a commit)."""
        return self._sess[1].latest(self, p)

    def close(self) -> None:
        if self._closed:
            return
        self._sess[1].close_consumer(self)
        self._unbind_fast()
        self._closed = True

    def _closed_error(self) -> Closed:
        return Closed(f"consumer of {self.topic!r} in group {self.group!r} is closed: make a new one")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ += ["Fenced"]


def _remake(topic: str, group: str, isolation: str, on_lost: str = "earliest") -> Consumer:
    return Consumer(topic, group, isolation=isolation, on_lost=on_lost)
