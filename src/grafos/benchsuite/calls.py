"""The per-message calls beside ``queue.Queue``, in one process: what a user
times first. 100-byte values, 16-byte keys spread over 4 partitions:

* ``send_keyed`` and ``send`` against ``queue.Queue.put``;
* ``poll(mgr, 1000)``, per message delivered, against ``queue.Queue.get``;
* ``send_batch`` of a list of 1024 64-byte ``bytes`` against the same batch as
  a 2-D numpy array (and against ``put`` per message);
* ``send_keyed`` of an idempotent producer against a plain producer's;
* a transaction of 100 ``send_keyed`` whose consumed offsets commit with it
  (begin, sends, ``commit_offsets``, ``commit``) against 100 plain sends and
  one offset commit, per message.

Rings fit the caches, as they do for a consumer that keeps up.
"""
from __future__ import annotations

import queue
import time
from typing import Callable

import numpy as np

from .harness import GRAFOS, WARMUP_ROUNDS, Result, timed_rounds

N = 1000            #: calls per round
BATCH = 1024        #: messages per send_batch
QUEUE = "queue.Queue"
#: (grafos call, what it is measured against)
AGAINST = {"send_keyed": "put", "send": "put", "poll(1000)": "get", "send_batch list": "put",
           "send_batch 2-D": "put"}
#: (exactly-once call, the plain call it is measured against)
PLAIN = {"send_keyed idempotent": "send_keyed", "transaction of 100": "100 sends + commit"}
TXN = 100
CALLS = tuple(AGAINST) + ("put", "get") + tuple(PLAIN) + ("100 sends + commit",)


def _bus():
    from ..fabric import Fabric
    from ..mq.topic import TopicConfig, TopicManager
    mgr = TopicManager(Fabric(64 << 20))
    mgr.create("t", TopicConfig(num_partitions=4, partition_capacity=2048, partition_stride=256))
    return mgr


def _round(call: str, mgr) -> Callable[[], int]:  # noqa: ANN001
    """One round of ``call``: returns how many messages it moved."""
    from ..mq.producer import Producer
    keys = [b"user-%011d" % i for i in range(64)]
    value = b"v" * 100
    if call in ("put", "get"):
        q: queue.Queue = queue.Queue()
        if call == "put":
            def put_round() -> int:
                put = q.put
                for _ in range(N):
                    put(value)
                q.queue.clear()
                return N
            return put_round

        def get_round() -> int:
            q.queue.extend([value] * N)
            get = q.get
            for _ in range(N):
                get()
            return N
        return get_round
    if call in ("transaction of 100", "100 sends + commit"):
        return _txn_round(call, mgr, keys, value)
    prod = Producer("t", idempotent=call == "send_keyed idempotent")
    if call in ("send_keyed", "send_keyed idempotent"):
        def send_keyed_round() -> int:
            s = prod.send_keyed
            for i in range(N):
                s(mgr, keys[i & 63], value)
            return N
        return send_keyed_round
    if call == "send":
        def send_round() -> int:
            s = prod.send
            for _ in range(N):
                s(mgr, value)
            return N
        return send_round
    blist = [bytes([i & 0xFF]) * 64 for i in range(BATCH)]
    batch = blist if call == "send_batch list" else \
        np.frombuffer(b"".join(blist), dtype=np.uint8).reshape(BATCH, 64)

    def batch_round() -> int:
        prod.send_batch(mgr, batch)
        return BATCH
    return batch_round


def _txn_round(call: str, mgr, keys: list[bytes], value: bytes) -> Callable[[], int]:  # noqa: ANN001
    """N messages in transactions of TXN sends, each committing a consumer's
    offsets to the fabric; or the same sends plain with one offset commit each."""
    from ..mq.consumer import Consumer, SeekPolicy
    from ..mq.offset import FabricOffsetStore
    from ..mq.producer import Producer
    store, cons = FabricOffsetStore(mgr), Consumer("t", "bench")
    cons.seek(mgr, SeekPolicy.Earliest)
    if call == "100 sends + commit":
        prod = Producer("t")

        def plain_round() -> int:
            s = prod.send_keyed
            for _ in range(N // TXN):
                for i in range(TXN):
                    s(mgr, keys[i & 63], value)
                cons.commit(store)
            return N
        return plain_round
    prod = Producer("t", transactional_id="bench")

    def txn_round() -> int:
        s = prod.send_keyed
        for _ in range(N // TXN):
            txn = prod.begin(mgr)
            for i in range(TXN):
                s(mgr, keys[i & 63], value)
            txn.commit_offsets(cons, store)
            txn.commit()
        return N
    return txn_round


def _timed_polls(mgr, duration: float) -> tuple[int, float]:  # noqa: ANN001
    """Refill about N messages (untimed), then time the polls that take them."""
    from ..mq.consumer import Consumer, SeekPolicy
    from ..mq.producer import Producer
    prod, cons = Producer("t"), Consumer("t", max_batch=N)
    cons.seek(mgr, None, SeekPolicy.Latest)
    refill = [b"v" * 100] * 250
    keys = [b"user-%011d" % (i & 63) for i in range(250)]
    moved, spent, rounds = 0, 0.0, 0
    clock = time.perf_counter
    while spent < duration or rounds < WARMUP_ROUNDS + 1:
        for _ in range(N // 250):
            prod.send_batch(mgr, refill, keys=keys)
        got = 0
        t0 = clock()
        while got < N:
            got += len(cons.poll(mgr, N))
        if rounds >= WARMUP_ROUNDS:
            spent += clock() - t0
            moved += got
        rounds += 1
    return moved, spent


def measure(call: str, duration: float) -> Result:
    system = QUEUE if call in ("put", "get") else GRAFOS
    size = 64 if call.startswith("send_batch") else 100
    res = Result("calls", system, call, "in-process", size, batch=BATCH if call.startswith("send_batch") else 1)
    mgr = _bus()
    try:
        if call == "poll(1000)":
            res.messages, res.seconds = _timed_polls(mgr, duration)
        else:
            res.messages, res.seconds = timed_rounds(_round(call, mgr), duration)
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
