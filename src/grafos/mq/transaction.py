"""Idempotent producers and transactions on a shared-memory bus.

A producer with a ``transactional_id`` (or ``idempotent=True``, which makes up
an id) **registers** in the fabric: a record ``x/<id>`` in the metadata table
and a small lease of its own whose header holds the producer's number and its
**epoch** (the registration lives as long as the producer renews it: a dead
producer's registration expires). Every message it sends carries a *stamp*
(producer number, epoch, sequence per partition, transaction); a send whose
epoch is not the registration's writes nothing and raises
:class:`~grafos.errors.ProducerFenced`. Registering again with the same id
raises the epoch, which fences the older instance.

A **transaction** is numbered per producer. Its messages carry its number;
readers with ``isolation="read_committed"`` hold them (and everything after
them in the partition) until a *marker* for the transaction arrives in the
same partition: ``C`` (deliver them) or ``A`` (drop them). Committing:

1. under the metadata lock: the offset-store writes the transaction carries
   are staged as records (``xs/<id>/<i>``: key and value), then the record's
   state becomes ``committing`` -- one record write, the decision -- then the
   staged writes are applied;
2. a ``C`` marker goes into every partition of the topic;
3. the state becomes ``idle``.

Aborting writes ``A`` markers instead. A producer that dies or is fenced
between those steps is finished by **whoever looks next** (a new instance
with the same id, a ``read_committed`` reader held up by the transaction, a
listing): ``committing`` is rolled forward (staged writes re-applied, markers
written again: both idempotent), ``open`` with a dead registration is aborted.

Records of the dead are collected by whoever looks (a registration, a
listing, a topic's ``describe``): a registration whose lease is dead has its
transaction resolved first, then its records (``x/``, ``xn/``, ``xs/``) are
dropped: at once for a made-up id (nobody can take it over), after
:data:`ID_EXPIRATION_SECS` for a named one, whose record keeps the id's epoch
and counters for its next instance meanwhile (Kafka's
``transactional.id.expiration.ms``). So the metadata table holds the living.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import struct
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .._clock import now_ns
from .._core import layout, lease, registration
from .._log import get as _logger
from ..errors import (CorruptFabric, GrafosError, InvalidArgument, NotFound, ProducerFenced,
                      TransactionError, Unsupported)
from . import _metakeys, gate
from .offset import FabricOffsetStore, MemOffsetStore

if TYPE_CHECKING:
    from .producer import Producer
    from .topic import Topic, TopicManager

__all__ = ["TxnState", "Registration", "TransactionInfo", "new_id", "register", "unregister", "renew",
           "current_epoch", "begin", "check_store", "staged_writes", "commit", "abort", "resolve",
           "finished", "transactions", "collect", "write_markers", "parse_stamp", "STAMP", "COMMIT", "ABORT",
           "ID_EXPIRATION_SECS", "Transaction"]
_log = _logger("transaction")

#: stamp after a stamped message's value: producer, epoch, sequence, transaction
STAMP = struct.Struct("<IIQQ")
assert STAMP.size == layout.STAMP_SIZE
COMMIT, ABORT = b"C", b"A"      # marker values

_RECORD = struct.Struct("<IIIIQQIIqIIq")  # number, epoch, state, lease index, lease id, txn,
#                                          txn epoch, staged, begin ns, aborted, fenced, dead ns
_COUNTER = "xc"                 # the next producer number
_REGION = 4096                  # a registration's lease: one page
_OWNER_TAG = 0x5052_4F44        # "PROD" in a registration lease's owner tag

#: how long the record of a named producer (a ``transactional_id``) stays once its
#: registration is dead: the id's next instance takes it over meanwhile (epoch,
#: counters). Kafka keeps a transactional id for 7 days; a bus's metadata table
#: holds 4,096 records (two per producer), so one hour here.
ID_EXPIRATION_SECS = 3600.0


class TxnState(enum.IntEnum):
    """Where a producer's current transaction is."""

    Idle = 0          #: none open (the last one was committed or aborted)
    Open = 1          #: begun, neither committed nor aborted
    Committing = 2    #: decided: commit (markers and staged writes may be under way)
    Aborting = 3      #: decided: abort (markers may be under way)


@dataclass
class Registration:
    """A producer's record ``x/<id>`` (what the fabric holds, decoded)."""

    transactional_id: str
    topic: str
    number: int
    epoch: int
    state: TxnState
    lease_index: int
    lease_id: int
    txn: int            # the current (or last) transaction's number
    txn_epoch: int      # the epoch that transaction was begun in
    staged: int         # staged offset writes of a committing transaction
    begin_ns: int       # when the current transaction began
    aborted: int        # transactions aborted so far (by the producer or a resolver)
    fenced: int         # times an instance of this id was fenced by a newer one
    dead_ns: int = 0    # when a collector first found its registration dead (0: alive since)

    def encode(self) -> bytes:
        return _RECORD.pack(self.number, self.epoch, int(self.state), self.lease_index, self.lease_id,
                            self.txn, self.txn_epoch, self.staged, self.begin_ns, self.aborted,
                            self.fenced, self.dead_ns) + _metakeys.pack_names(self.topic)

    @classmethod
    def decode(cls, tid: str, raw: bytes) -> "Registration":
        """ValueError if damaged (values come from shared memory)."""
        if len(raw) < _RECORD.size:
            raise ValueError("short producer record")
        f = _RECORD.unpack_from(raw)
        if f[2] not in TxnState._value2member_map_:
            raise ValueError(f"unknown transaction state {f[2]}")
        (topic,), _ = _metakeys.unpack_names(raw[_RECORD.size:], 1)
        return cls(tid, topic, f[0], f[1], TxnState(f[2]), f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10],
                   f[11])


@dataclass(frozen=True)
class TransactionInfo:
    """One producer registration as listings show it."""

    transactional_id: str
    topic: str
    producer: int
    epoch: int
    state: str
    txn: int
    age_s: float        # seconds since the current transaction began (0 when idle)
    alive: bool         # the registration's lease is alive
    aborted: int
    fenced: int


def _key(tid: str) -> str:
    return f"x/{tid}"


def _number_key(number: int) -> str:
    return f"xn/{number}"


def _staged_key(tid: str, i: int) -> str:
    return f"xs/{tid}/{i}"


def _stage(key: str, value: bytes) -> list[bytes]:
    """A metadata write as staged records' values: one (key length, key, value)
    when it fits, else the key and the value in two records."""
    k = key.encode()
    if 1 + len(k) + len(value) <= layout.META_VAL_MAX:
        return [bytes([len(k)]) + k + value]
    return [b"\0" + k, value]


def new_id() -> str:
    """An id for a producer that is idempotent without a name of its own."""
    return f"~{os.getpid()}-{uuid.uuid4().hex[:16]}"


def _get(fabric: Any, tid: str) -> Registration | None:
    raw = fabric.meta_get(_key(tid))
    if raw is None:
        return None
    try:
        return Registration.decode(tid, raw)
    except (ValueError, struct.error):
        raise CorruptFabric(f"the record of producer {tid!r} in the fabric is damaged") from None


def _put(fabric: Any, reg: Registration) -> None:
    fabric.meta_put(_key(reg.transactional_id), reg.encode())


def _alive(fabric: Any, reg: Registration, now: int) -> bool:
    return lease.alive(fabric, reg.lease_index, reg.lease_id, now)


# ---- registering ---------------------------------------------------------------------
def register(mgr: "TopicManager", tid: str, topic: str, ttl: float, now: float | None = None
             ) -> Registration:
    """Register (or take over) producer ``tid`` of ``topic``: a higher epoch that
    fences every older instance. A transaction the previous instance left open
    is aborted, one it decided to commit is finished, before this returns."""
    fabric = mgr.fabric
    collect(mgr, now)
    t = now_ns(now)
    exp = t + int(ttl * 1e9)
    with fabric.locked():
        reg = _get(fabric, tid)
        if reg is not None and reg.topic != topic:
            raise InvalidArgument(f"transactional_id {tid!r} belongs to a producer of topic {reg.topic!r}, "
                                  f"not {topic!r}")
        if reg is None:
            raw = fabric.meta_get(_COUNTER)
            number = int.from_bytes(raw, "little") if raw else 1
            fabric.meta_put(_COUNTER, (number + 1).to_bytes(8, "little"))
            reg = Registration(tid, topic, number, 0, TxnState.Idle, 0, 0, 0, 0, 0, 0, 0, 0)
            fabric.meta_put(_number_key(number), tid.encode())
        alive = bool(reg.lease_id) and _alive(fabric, reg, t)
        reg.fenced += alive             # an instance that is alive now loses its registration
        if reg.state is TxnState.Open:              # the old instance's transaction dies with it
            reg.state = TxnState.Aborting
        reg.epoch += 1
        reg.dead_ns = 0
        if alive:
            lease.renew(fabric, reg.lease_index, reg.lease_id, exp, t)
            registration.fence(fabric, reg.lease_index, reg.lease_id, reg.epoch, f"producer {tid!r}")
        else:
            reg.lease_index, reg.lease_id = lease.acquire(fabric, _REGION, exp, _OWNER_TAG, t,
                                                          f"registering producer {tid!r}")
            registration.init(fabric, reg.lease_index, reg.lease_id, reg.number, reg.epoch, f"producer {tid!r}")
        _put(fabric, reg)
    if reg.state in (TxnState.Committing, TxnState.Aborting):
        reg = _finish(mgr, reg, now)
    return reg


def unregister(mgr: "TopicManager", reg: Registration) -> None:
    """A producer closed: give its registration back (if still its own, idle)."""
    fabric = mgr.fabric
    with fabric.locked():
        cur = _get(fabric, reg.transactional_id)
        if cur is None or cur.epoch != reg.epoch or cur.state is not TxnState.Idle:
            return
        lease.release(fabric, cur.lease_index, cur.lease_id)
        for key, _ in fabric.meta_items(_staged_key(cur.transactional_id, 0)[:-1]):
            fabric.meta_del(key)
        if cur.transactional_id.startswith("~"):     # a made-up id: nobody takes it over
            fabric.meta_del(_key(cur.transactional_id))
            fabric.meta_del(_number_key(cur.number))
        else:
            cur.lease_id = cur.lease_index = 0
            _put(fabric, cur)


def _current(fabric: Any, reg: Registration, t: int, cur: Registration | None = None) -> Registration:
    """Under the lock: the record (``cur``, if just read), if ``reg``'s instance
    still owns it; else ProducerFenced (a newer epoch, or the registration expired)."""
    if cur is None:
        cur = _get(fabric, reg.transactional_id)
    if cur is None or cur.epoch != reg.epoch or cur.number != reg.number:   # a record made again
        raise ProducerFenced(transactional_id=reg.transactional_id, topic=reg.topic, epoch=reg.epoch,
                             current_epoch=cur.epoch if cur is not None else -1)
    if not _alive(fabric, cur, t):
        raise ProducerFenced(f"producer {reg.transactional_id!r} of topic {reg.topic!r}: its registration "
                             f"expired (nothing renewed it for transaction_ttl); nothing was written",
                             transactional_id=reg.transactional_id, topic=reg.topic, epoch=reg.epoch,
                             current_epoch=cur.epoch)
    return cur


def _mine(fabric: Any, reg: Registration, t: int) -> Registration | None:
    """Under the lock: a copy of ``reg`` when it is still this instance's record
    as last written by it (its epoch word unchanged, its lease alive: only the
    owner writes the record then), without reading the record; else None."""
    if registration.epoch(fabric, reg.lease_index, reg.lease_id) == reg.epoch and _alive(fabric, reg, t):
        return dataclasses.replace(reg)
    return None


def current_epoch(mgr: "TopicManager", reg: Registration) -> int:
    """The epoch in reg's registration now (-1 once its lease is gone): what
    fenced an instance of epoch ``reg.epoch``. One load, no lock."""
    e = registration.epoch(mgr.fabric, reg.lease_index, reg.lease_id)
    return e if e >= 0 else -1


def renew(mgr: "TopicManager", reg: Registration, ttl: float, now: float | None = None) -> int:
    """Renew the registration for ``ttl`` seconds; returns the new expiry (ns).
    ProducerFenced if another instance took over or it expired."""
    fabric = mgr.fabric
    t = now_ns(now)
    exp = t + int(ttl * 1e9)
    with fabric.locked():
        cur = _current(fabric, reg, t)
        lease.renew(fabric, cur.lease_index, cur.lease_id, exp, t)
    return exp


# ---- transactions --------------------------------------------------------------------
def begin(mgr: "TopicManager", reg: Registration, ttl: float, now: float | None = None) -> Registration:
    fabric = mgr.fabric
    t = now_ns(now)
    with fabric.locked():
        cur = _mine(fabric, reg, t) or _current(fabric, reg, t)
        if cur.state is not TxnState.Idle:
            raise TransactionError(f"producer {reg.transactional_id!r} has transaction {cur.txn} "
                                   f"{cur.state.name.lower()}; commit or abort it first")
        cur.txn += 1
        cur.txn_epoch = cur.epoch
        cur.state = TxnState.Open
        cur.begin_ns = t
        cur.staged = 0
        lease.renew(fabric, cur.lease_index, cur.lease_id, t + int(ttl * 1e9), t)
        _put(fabric, cur)
    return cur


def _staged(fabric: Any, reg: Registration) -> Iterator[tuple[str, bytes]]:
    """The staged writes of reg's committing transaction (records past
    ``reg.staged`` are an earlier transaction's leftovers: never read)."""
    i = 0
    while i < reg.staged:
        raw = fabric.meta_get(_staged_key(reg.transactional_id, i))
        i += 1
        if not raw:
            continue
        if raw[0]:
            yield raw[1:1 + raw[0]].decode("utf-8", "replace"), raw[1 + raw[0]:]
        else:
            value = fabric.meta_get(_staged_key(reg.transactional_id, i))
            i += 1
            if value is not None:
                yield raw[1:].decode("utf-8", "replace"), value


def staged_writes(stores: list[tuple[Any, str, str, dict[int, int], dict[int, int] | None]]
                  ) -> tuple[list[tuple[str, bytes]], list]:
    """Split offset commits into metadata writes of this fabric (staged with the
    decision, so a crash cannot separate them from it) and in-memory ones."""
    puts: list[tuple[str, bytes]] = []
    later = []
    for store, group, topic, offsets, incs in stores:
        if isinstance(store, FabricOffsetStore):
            puts += store.writes(group, topic, offsets, incs)
        else:
            later.append((store, group, topic, offsets, incs))
    return puts, later


def check_store(fabric: Any, store: Any) -> None:
    """A transaction commits offsets atomically with its messages to a
    FabricOffsetStore of the same bus, or a MemOffsetStore (in-process)."""
    if isinstance(store, FabricOffsetStore):
        if not fabric.same_bus(store.fabric):
            raise InvalidArgument("the FabricOffsetStore belongs to another bus than the transaction's topic")
        return
    if isinstance(store, MemOffsetStore):
        return
    raise Unsupported(f"a transaction cannot commit offsets to a {type(store).__name__} atomically with its "
                      "messages: use a FabricOffsetStore of the same bus (shared by processes) or a "
                      "MemOffsetStore (this process only)")


def commit(mgr: "TopicManager", reg: Registration, stores: list, now: float | None = None) -> Registration:
    """Decide, apply and mark a commit (see the module's docstring)."""
    fabric = mgr.fabric
    t = now_ns(now)
    puts, later = staged_writes(stores)
    records = [r for k, v in puts for r in _stage(k, v)]
    with fabric.locked():
        cur = _open_txn(fabric, reg, t)
        cur.staged = len(records)
        cur.state = TxnState.Committing
        fabric.meta_put_many([(_staged_key(cur.transactional_id, i), r) for i, r in enumerate(records)] +
                             [(_key(cur.transactional_id), cur.encode())] +      # the decision
                             puts)
        for topic in {s[2] for s in stores if isinstance(s[0], FabricOffsetStore)}:
            gate.follow_commit(mgr, topic)      # the offsets are a gating group's gate
    for store, group, topic, offsets, incs in later:
        store.commit_many(group, topic, offsets, incs)
    return _finish(mgr, cur, now, applied=True, own=True)


def abort(mgr: "TopicManager", reg: Registration, now: float | None = None) -> Registration:
    fabric = mgr.fabric
    t = now_ns(now)
    with fabric.locked():
        cur = _open_txn(fabric, reg, t, aborting=True)
        cur.state = TxnState.Aborting
        _put(fabric, cur)
    return _finish(mgr, cur, now, own=True)


def _open_txn(fabric: Any, reg: Registration, t: int, aborting: bool = False) -> Registration:
    cur = _mine(fabric, reg, t)
    if cur is not None and cur.state is TxnState.Open:
        return cur
    cur = _get(fabric, reg.transactional_id)
    if cur is not None and cur.epoch == reg.epoch and cur.txn == reg.txn and \
            cur.state is TxnState.Idle and cur.aborted > reg.aborted:
        raise TransactionError(f"transaction {reg.txn} of producer {reg.transactional_id!r} was aborted "
                               "(its registration expired before it committed)")
    cur = _current(fabric, reg, t, cur)
    if cur.state is not TxnState.Open or cur.txn != reg.txn:
        raise TransactionError(f"producer {reg.transactional_id!r} has no open transaction {reg.txn} "
                               f"(state {cur.state.name.lower()}, transaction {cur.txn})")
    return cur


def _finish(mgr: "TopicManager", reg: Registration, now: float | None = None,
            applied: bool = False, own: bool = False) -> Registration:
    """Carry a decided transaction to its end: staged writes (again, unless the
    committer just ``applied`` them), markers (again), then idle. Every step
    may be repeated by another process. ``own``: the producer finishes its
    own transaction (its record is as it wrote it unless it was fenced)."""
    fabric = mgr.fabric
    committing = reg.state is TxnState.Committing
    if committing and reg.staged and not applied:
        with fabric.locked():
            for k, v in list(_staged(fabric, reg)):
                fabric.meta_put(k, v)
    try:
        write_markers(mgr, reg.topic, reg.number, reg.txn_epoch, reg.txn, COMMIT if committing else ABORT)
    except NotFound:
        pass        # the topic is gone: nobody can read the transaction's messages
    with fabric.locked():
        cur = (own and _mine(fabric, reg, now_ns(now))) or _get(fabric, reg.transactional_id)
        if cur is not None and cur.txn == reg.txn and cur.txn_epoch == reg.txn_epoch and cur.state is reg.state:
            cur.staged = 0
            cur.aborted += not committing
            cur.state = TxnState.Idle
            cur.begin_ns = 0
            _put(fabric, cur)
            return cur
    return cur if cur is not None else reg


def write_markers(mgr: "TopicManager", topic: str, number: int, epoch: int, txn: int, kind: bytes) -> None:
    """One marker of ``kind`` for transaction (number, epoch, txn) in every live
    partition of ``topic``."""
    t: Topic = mgr.topic(topic)
    for p, part in enumerate(t.partitions):
        # an expired partition (None, or reclaimed under us) reads as empty: nothing of
        # the transaction is visible there
        if part is not None:
            part.append_marker(number, epoch, txn, kind, f"writing a transaction marker to {topic!r} partition {p}")


# ---- whoever looks next --------------------------------------------------------------
def resolve(mgr: "TopicManager", number: int | None = None, now: float | None = None) -> int:
    """Finish the transactions whose producers can no longer finish them: open
    ones whose registration expired are aborted, decided ones are carried to
    their end. ``number``: only that producer's. Returns how many it finished."""
    fabric = mgr.fabric
    t = now_ns(now)
    todo = []
    with fabric.locked():
        for tid in _ids(fabric, number):
            reg = _get(fabric, tid)
            if reg is None or reg.state is TxnState.Idle or _alive(fabric, reg, t):
                continue
            if reg.state is TxnState.Open:
                reg.state = TxnState.Aborting
                _put(fabric, reg)
                _log.warning("transaction %d of producer %r aborted: its registration expired before it "
                             "committed", reg.txn, reg.transactional_id)
            todo.append(reg)
    for reg in todo:
        _finish(mgr, reg, now)
    return len(todo)


def finished(mgr: "TopicManager", number: int, epoch: int, txn: int) -> bool:
    """True if transaction (number, epoch, txn) is over and its markers are all
    written: its producer moved on to a later transaction or a newer instance
    registered, and nothing of it is still being decided. A reader caught up
    with a partition that still holds a message of it will get no marker: the
    message was written after the marker (a fenced producer's write in flight
    at the fence), or the reader was lapped past the marker."""
    fabric = mgr.fabric
    with fabric.locked():
        tids = _ids(fabric, number)
        reg = _get(fabric, tids[0]) if tids else None
    if reg is None:
        # collected: only a registration whose transactions were all resolved is
        # dropped (a number is never given out again)
        return _given_out(fabric, number)
    if reg.state in (TxnState.Committing, TxnState.Aborting) and (reg.txn_epoch, reg.txn) == (epoch, txn):
        return False
    if reg.epoch > epoch:
        return True
    return reg.epoch == epoch and (reg.txn > txn or (reg.txn == txn and reg.state is TxnState.Idle))


def _ids(fabric: Any, number: int | None) -> list[str]:
    if number is not None:
        raw = fabric.meta_get(_number_key(number))
        return [raw.decode("utf-8", "replace")] if raw else []
    return [k[2:] for k, _ in fabric.meta_items("x/")]


def _given_out(fabric: Any, number: int) -> bool:
    """True if producer ``number`` was given out (numbers only grow)."""
    raw = fabric.meta_get(_COUNTER)
    return bool(raw) and 0 < number < int.from_bytes(raw, "little")


def _drop(fabric: Any, reg: Registration) -> None:
    """Under the lock: remove a dead, idle registration's records."""
    tid = reg.transactional_id
    for key, _ in list(fabric.meta_items(_staged_key(tid, 0)[:-1])):
        fabric.meta_del(key)
    if fabric.meta_get(_number_key(reg.number)) == tid.encode():
        fabric.meta_del(_number_key(reg.number))
    fabric.meta_del(_key(tid))


def collect(mgr: "TopicManager", now: float | None = None) -> int:
    """Drop the records of producers whose registration is dead (see the module's
    docstring); a transaction such a producer left open is aborted, a decided
    one finished, first. Returns how many registrations were dropped."""
    fabric = mgr.fabric
    t = now_ns(now)
    keep = int(ID_EXPIRATION_SECS * 1e9)
    todo = []
    dropped = 0
    with fabric.locked():
        for key, raw in list(fabric.meta_items("x/")):
            try:
                reg = Registration.decode(key[2:], raw)
            except (ValueError, struct.error):
                continue            # damaged: whoever reads it says so
            if reg.lease_id and _alive(fabric, reg, t):
                continue
            if reg.state is not TxnState.Idle:      # resolved first, dropped by a later look
                if reg.state is TxnState.Open:
                    reg.state = TxnState.Aborting
                    _put(fabric, reg)
                todo.append(reg)
                continue
            if reg.transactional_id.startswith("~") or (reg.dead_ns and t - reg.dead_ns >= keep):
                _drop(fabric, reg)
                dropped += 1
            elif not reg.dead_ns:
                reg.dead_ns = t
                _put(fabric, reg)
    for reg in todo:
        _finish(mgr, reg, now)
    return dropped


def transactions(mgr: "TopicManager", topic: str | None = None, now: float | None = None
                 ) -> list[TransactionInfo]:
    """Every producer registration (of ``topic``): its epoch, its transaction's
    state and age, whether it is alive, how often it aborted and was fenced.
    Registrations of dead producers are collected first (:func:`collect`)."""
    fabric = mgr.fabric
    collect(mgr, now)
    t = now_ns(now)
    out = []
    with fabric.locked():
        for key, raw in fabric.meta_items("x/"):
            try:
                reg = Registration.decode(key[2:], raw)
            except (ValueError, struct.error):
                continue
            if topic is not None and reg.topic != topic:
                continue
            alive = bool(reg.lease_id) and _alive(fabric, reg, t)
            age = (t - reg.begin_ns) / 1e9 if reg.state is not TxnState.Idle and reg.begin_ns else 0.0
            out.append(TransactionInfo(reg.transactional_id, reg.topic, reg.number, reg.epoch,
                                       reg.state.name.lower(), reg.txn, max(age, 0.0), alive,
                                       reg.aborted, reg.fenced))
    return sorted(out, key=lambda i: i.transactional_id)


def parse_stamp(blob: bytes | memoryview) -> tuple[int, int, int, int]:
    """(producer, epoch, sequence, transaction) of a stamp."""
    return STAMP.unpack(blob)


class Transaction:
    """An open transaction of a :class:`~grafos.mq.producer.Producer`
    (``prod.begin(mgr)``): the producer's sends until :meth:`commit` or
    :meth:`abort` belong to it. ``send``/``send_keyed`` here are the producer's.
    As a context manager it commits when the block ends normally and aborts
    when it raises."""

    def __init__(self, producer: Producer, mgr: TopicManager, reg: Registration,
                 ended: Callable[[Registration], None]) -> None:
        self.producer = producer
        self.mgr = mgr
        self.number = reg.txn
        self._reg = reg
        self._ended = ended         # tells the producer's session the transaction is over
        self._offsets: list = []
        self.state = "open"

    def send(self, value: bytes, headers=None) -> tuple[int, int]:
        self._check_open()
        return self.producer.send(self.mgr, value, headers)

    def send_keyed(self, key: bytes | None, value: bytes, headers=None) -> tuple[int, int]:
        self._check_open()
        return self.producer.send_keyed(self.mgr, key, value, headers)

    def commit_offsets(self, consumer, store, offsets: dict[int, int] | None = None) -> dict[int, int]:
        """Commit ``consumer``'s positions (or ``offsets``) to ``store`` as part of
        this transaction: they become committed if and only if it commits.
        ``store``: a FabricOffsetStore of the same bus, or a MemOffsetStore
        (not for a group that gates the topic: its gate follows the bus's
        offsets). Returns what will be committed."""
        self._check_open()
        check_store(self.mgr.fabric, store)
        group, topic, pos, incs = consumer.pending_commit(offsets)
        gate.check_store(self.mgr, topic, group, store)
        self._offsets.append((store, group, topic, pos, incs))
        return dict(pos)

    send_offsets_to_transaction = commit_offsets    #: Kafka's name

    def commit(self) -> None:
        """Make every message of the transaction and its offsets visible at once."""
        self._check_open()
        try:
            reg = commit(self.mgr, self._reg, self._offsets)
        except GrafosError:
            self.state = "failed"
            self._ended(self._reg)
            raise
        self.state = "committed"
        self._ended(reg)

    def abort(self) -> None:
        """Make none of the transaction visible (its offsets are not committed)."""
        if self.state != "open":
            return
        try:
            reg = abort(self.mgr, self._reg)
        finally:
            self.state = "aborted"
            self._ended(self._reg)
        self._ended(reg)

    def _check_open(self) -> None:
        if self.state != "open":
            raise TransactionError(f"transaction {self.number} of {self.producer.transactional_id!r} "
                                   f"is {self.state}")

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state != "open":
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<Transaction {self.number} of {self.producer.transactional_id!r}: {self.state}>"
