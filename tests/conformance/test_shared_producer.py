"""A producer may be shared by threads: batches sent at once from several
threads through one ``Producer`` (lists and numpy rows, of sizes that make a
large batch's copy run without the GIL) each land whole, every message once,
at the offset its ``send_batch`` returned, on every backend."""
from __future__ import annotations

import threading
import time

import numpy as np

from grafos.mq import Consumer, Producer, SeekPolicy, TopicConfig

THREADS = 3
BATCHES = 8
CFG = TopicConfig(num_partitions=2, partition_capacity=8192, partition_stride=256)


def _value(t: int, b: int, i: int, size: int) -> bytes:
    head = b"%d:%d:%d:" % (t, b, i)
    return head + bytes((t * 31 + b * 7 + i + j) & 0xFF for j in range(size - len(head)))


def _batch(t: int, b: int) -> list[bytes] | np.ndarray:
    """Thread t's batch b: a list of bytes of mixed sizes, growing from batch to
    batch (so a handle's scratch buffer grows under a batch in flight), or
    numpy rows of one width."""
    n = 150 + 40 * b
    if t % 2 == 0:
        return [_value(t, b, i, 40 + (i * 13 + b) % 120) for i in range(n)]
    return np.frombuffer(b"".join(_value(t, b, i, 128) for i in range(n)), dtype=np.uint8).reshape(n, 128)


def test_one_producer_shared_by_threads_should_land_every_batch_whole(bus):
    bus.mgr.create("shared", CFG)
    prod = Producer("shared")
    sent: dict[tuple[int, int], bytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def run(t: int) -> None:
        try:
            start.wait()
            for b in range(BATCHES):
                values = _batch(t, b)
                parts, offs = prod.send_batch(bus.mgr, values)
                rows = [bytes(v) for v in values]
                assert len(parts) == len(offs) == len(rows)
                with lock:
                    for p, o, v in zip(parts.tolist(), offs.tolist(), rows):
                        assert (p, o) not in sent, f"offset {o} of partition {p} returned twice"
                        sent[(p, o)] = v
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert not any(th.is_alive() for th in threads)
    assert len(sent) == sum(len(_batch(t, b)) for t in range(THREADS) for b in range(BATCHES))

    c = Consumer("shared", "g")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    got: dict[tuple[int, int], bytes] = {}
    end = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < end:
        for p, m in c.poll(bus.mgr, 1000, timeout=1.0):
            assert (p, m.offset) not in got, f"offset {m.offset} of partition {p} read twice"
            got[(p, m.offset)] = bytes(m.value)
    assert got == sent
    # each thread's batches in the order it sent them, within each partition
    for t in range(THREADS):
        for p in range(CFG.num_partitions):
            order = [tuple(int(x) for x in v.split(b":", 3)[1:3])
                     for (q, _), v in sorted(got.items()) if q == p and v.startswith(b"%d:" % t)]
            assert order == sorted(order)
