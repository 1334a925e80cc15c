"""The per-message calls beside ``queue.Queue``, in one process: what a user
times first. 100-byte values, 16-byte keys spread over 4 partitions:

* ``send_keyed`` and ``send`` against ``queue.Queue.put``;
* ``poll(mgr, 1000)``, per message delivered, against ``queue.Queue.get``;
* ``send_batch`` of a list of 1024 64-byte ``bytes`` against the same batch as
  a 2-D numpy array (and against ``put`` per message);
* ``send`` and ``send_keyed`` to a topic with ``on_full="block"`` whose
  consumer group keeps up (it commits the end after every round, untimed)
  against the same calls to an identical ``"overwrite"`` topic: the gate's cost;
* ``send_keyed`` and ``send`` of an idempotent producer against a plain
  producer's;
* a transaction of 100 ``send_keyed`` whose consumed offsets commit with it
  (begin, sends, ``commit_offsets``, ``commit``) against 100 plain sends and
  one offset commit, per message.

Rings fit the caches, as they do for a consumer that keeps up.

Each call is a :class:`Call`: an untimed ``setup`` (a refill, a seek), the
timed ``run`` that returns how many messages it moved, and an untimed
``after`` (a queue cleared, a group's commit). ``grafos bench`` times each
call alone (:func:`measure`); ``benchmarks/bus_ratios.py`` interleaves them
round by round on one bus (:func:`workloads`).
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .harness import GRAFOS, WARMUP_ROUNDS, Result

N = 1000            #: calls per round
BATCH = 1024        #: messages per send_batch
TXN = 100           #: sends per transaction
VALUE = b"v" * 100
QUEUE = "queue.Queue"
#: (grafos call, what it is measured against)
AGAINST = {"send_keyed": "put", "send": "put", "poll(1000)": "get", "send_batch list": "put",
           "send_batch 2-D": "put"}
#: (exactly-once call, the plain call it is measured against)
PLAIN = {"send_keyed idempotent": "send_keyed", "transaction of 100": "100 sends + commit"}
#: the calls ``grafos bench`` runs, each alone
CALLS = tuple(AGAINST) + ("put", "get") + tuple(PLAIN) + ("100 sends + commit",)
#: the calls only the interleaved driver runs: the gate's and the idempotent ``send``
GATE_CALLS = ("send overwrite", "send block", "send_keyed overwrite", "send_keyed block",
              "send idempotent")
ALL_CALLS = CALLS + GATE_CALLS


@dataclass
class Call:
    """One workload: ``run`` is timed and returns the messages it moved;
    ``setup`` before it and ``after`` it are not timed."""

    name: str
    run: Callable[[], int]
    setup: Callable[[], None] | None = None
    after: Callable[[], None] | None = None

    def once(self) -> tuple[int, float]:
        """One round: (messages moved, seconds ``run`` took)."""
        if self.setup is not None:
            self.setup()
        t0 = time.perf_counter()
        n = self.run()
        dt = time.perf_counter() - t0
        if self.after is not None:
            self.after()
        return n, dt


def bus(size: int = 256 << 20) -> Any:
    """An in-process bus with the topics every call uses: ``t`` (100-byte
    values), ``b`` (the 64-byte batches), and ``ow``/``blk``, identical but for
    ``on_full``, all of 4 partitions of 2048 slots."""
    from ..fabric import Fabric
    from ..mq.topic import TopicConfig, TopicManager
    mgr = TopicManager(Fabric(size))
    mgr.create("t", TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=256))
    mgr.create("b", TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=128))
    for name, on_full in (("ow", "overwrite"), ("blk", "block")):
        mgr.create(name, TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=256,
                                     on_full=on_full))
    return mgr


def _keys() -> list[bytes]:
    return [b"user-%011d" % i for i in range(64)]     # 16-byte keys spread over the partitions


def _sends(prod: Any, mgr: Any, keyed: bool) -> Callable[[], int]:
    keys = _keys()
    if keyed:
        def keyed_round() -> int:
            s = prod.send_keyed
            for i in range(N):
                s(mgr, keys[i & 63], VALUE)
            return N
        return keyed_round

    def plain_round() -> int:
        s = prod.send
        for _ in range(N):
            s(mgr, VALUE)
        return N
    return plain_round


def _queue_call(name: str) -> Call:
    q: queue.Queue = queue.Queue()
    if name == "put":
        def put_round() -> int:
            put = q.put
            for _ in range(N):
                put(VALUE)
            return N
        return Call(name, put_round, after=q.queue.clear)

    def get_round() -> int:
        get = q.get
        for _ in range(N):
            get()
        return N
    return Call(name, get_round, setup=lambda: q.queue.extend([VALUE] * N))


def _poll_call(mgr: Any) -> Call:
    """Refill about N messages over the 4 partitions (untimed), then time the
    polls that take them."""
    from ..mq.consumer import Consumer, SeekPolicy
    from ..mq.producer import Producer
    prod, cons = Producer("t"), Consumer("t", "g", max_batch=N)
    keys = _keys()
    refill = [VALUE] * 250
    refill_keys = [keys[i & 63] for i in range(250)]

    def setup() -> None:
        cons.seek(mgr, None, SeekPolicy.Latest)
        for _ in range(N // 250):
            prod.send_batch(mgr, refill, keys=refill_keys)

    def poll_round() -> int:
        got = 0
        while got < N:
            got += len(cons.poll(mgr, N))
        return got
    return Call("poll(1000)", poll_round, setup=setup)


def _batch_call(name: str, mgr: Any) -> Call:
    from ..mq.producer import Producer
    prod = Producer("b")
    blist = [bytes([i & 0xFF]) * 64 for i in range(BATCH)]
    batch = blist if name == "send_batch list" else \
        np.frombuffer(b"".join(blist), dtype=np.uint8).reshape(BATCH, 64)

    def batch_round() -> int:
        prod.send_batch(mgr, batch)
        return BATCH
    return Call(name, batch_round)


def keeps_up(mgr: Any) -> Callable[[], None]:
    """A consumer group on the block topic ``blk`` that commits its end when
    called: run after each round of sends there, it keeps the gate open."""
    from ..mq.group import ConsumerGroup
    from ..mq.offset import FabricOffsetStore
    group = ConsumerGroup("keeps-up", "blk", 4, 3600.0, mgr=mgr)
    group.claim("m")
    store = FabricOffsetStore(mgr)

    def keep_up() -> None:
        t = mgr.topic("blk")
        group.commit(store, "m", "blk", {p: t.partition(p).latest() for p in range(t.n)})
    return keep_up


def _gate_call(name: str, mgr: Any, keep_up: Callable[[], None] | None) -> Call:
    """``send``/``send_keyed`` to the overwrite topic, or to the block topic
    whose group commits the end after each round (untimed), so it keeps up."""
    from ..mq.producer import Producer
    call, kind = name.rsplit(" ", 1)
    topic = "blk" if kind == "block" else "ow"
    run = _sends(Producer(topic), mgr, call == "send_keyed")
    if topic == "ow":
        return Call(name, run)
    return Call(name, run, after=keep_up if keep_up is not None else keeps_up(mgr))


def _txn_call(name: str, mgr: Any) -> Call:
    """N messages in transactions of TXN sends, each committing a consumer's
    offsets to the fabric; or the same sends plain with one offset commit each."""
    from ..mq.consumer import Consumer, SeekPolicy
    from ..mq.offset import FabricOffsetStore
    from ..mq.producer import Producer
    keys = _keys()
    plain = name == "100 sends + commit"
    store, cons = FabricOffsetStore(mgr), Consumer("t", "ctp-plain" if plain else "ctp-txn")
    cons.seek(mgr, SeekPolicy.Earliest)
    if plain:
        prod = Producer("t")

        def plain_round() -> int:
            s = prod.send_keyed
            for _ in range(N // TXN):
                for i in range(TXN):
                    s(mgr, keys[i & 63], VALUE)
                cons.commit(store)
            return N
        return Call(name, plain_round)
    tprod = Producer("t", transactional_id="bench")

    def txn_round() -> int:
        s = tprod.send_keyed
        for _ in range(N // TXN):
            txn = tprod.begin(mgr)
            for i in range(TXN):
                s(mgr, keys[i & 63], VALUE)
            txn.commit_offsets(cons, store)
            txn.commit()
        return N
    return Call(name, txn_round)


def workload(name: str, mgr: Any, keep_up: Callable[[], None] | None = None) -> Call:
    """The call ``name`` (one of :data:`ALL_CALLS`) on the bus ``mgr`` (see
    :func:`bus`); the block topic's calls share ``keep_up`` (:func:`keeps_up`)
    when given."""
    from ..mq.producer import Producer
    if name in ("put", "get"):
        return _queue_call(name)
    if name == "poll(1000)":
        return _poll_call(mgr)
    if name.startswith("send_batch"):
        return _batch_call(name, mgr)
    if name in ("transaction of 100", "100 sends + commit"):
        return _txn_call(name, mgr)
    if name.endswith((" block", " overwrite")):
        return _gate_call(name, mgr, keep_up)
    if name in ("send_keyed", "send", "send_keyed idempotent", "send idempotent"):
        prod = Producer("t", idempotent=name.endswith("idempotent"))
        return Call(name, _sends(prod, mgr, name.startswith("send_keyed")))
    raise ValueError(f"unknown call {name!r}; one of {', '.join(ALL_CALLS)}")


def workloads(mgr: Any, names: tuple[str, ...] = ALL_CALLS) -> dict[str, Call]:
    """Every call of ``names`` on the one bus ``mgr``, by name; the block
    topic's calls share one group that keeps up."""
    keep_up = keeps_up(mgr) if any(n.endswith(" block") for n in names) else None
    return {n: workload(n, mgr, keep_up) for n in names}


def measure(call: str, duration: float) -> Result:
    """``call`` alone on a bus of its own: warm-up rounds, then rounds until
    ``duration`` seconds of timed ``run`` have passed."""
    system = QUEUE if call in ("put", "get") else GRAFOS
    size = 64 if call.startswith("send_batch") else 100
    res = Result("calls", system, call, "in-process", size, batch=BATCH if call.startswith("send_batch") else 1)
    mgr = bus(64 << 20)
    try:
        w = workload(call, mgr)
        for _ in range(WARMUP_ROUNDS):
            w.once()
        moved, spent = 0, 0.0
        while True:
            n, dt = w.once()
            moved += n
            spent += dt
            if spent >= duration:
                break
        res.messages, res.seconds = moved, spent
    finally:
        mgr.close()
    return res


def derive(results: list[Result]) -> None:
    """vs_peer of each grafos call: its rate over queue.Queue's for the matching
    operation; the list batch's note gives its ratio to the 2-D array batch."""
    ok = {r.mode: r for r in results if r.group == "calls" and r.status == "ok" and r.messages}
    for call, other in AGAINST.items():
        r, q = ok.get(call), ok.get(other)
        if r is not None and q is not None:
            r.vs_peer = r.msg_per_s / q.msg_per_s
            r.best_peer = f"{QUEUE}.{other}"
    for call, other in PLAIN.items():
        r, q = ok.get(call), ok.get(other)
        if r is not None and q is not None:
            r.vs_peer = r.msg_per_s / q.msg_per_s
            r.best_peer = f"grafos {other}"
            r.note = f"costs {q.msg_per_s / r.msg_per_s:.2f}x {other}"
    lst, arr = ok.get("send_batch list"), ok.get("send_batch 2-D")
    if lst is not None and arr is not None:
        lst.note = f"{lst.msg_per_s / arr.msg_per_s:.2f}x the 2-D array batch"


def interleave(work: dict[str, Call], rounds: int, warmup: int = 3) -> dict[str, list[float]]:
    """Messages/s of every call of ``work`` per round: each round times every
    call once, in an order rotated each round, so a ratio is taken between
    measurements milliseconds apart (``warmup`` untimed rounds first: they bind
    the handles and first-touch the rings)."""
    for _ in range(warmup):
        for w in work.values():
            w.once()
    rate: dict[str, list[float]] = {k: [] for k in work}
    names = list(work)
    for r in range(rounds):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            n, dt = work[k].once()
            rate[k].append(n / dt)
    return rate
