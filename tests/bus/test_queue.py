"""grafos.Queue, JoinableQueue and SimpleQueue: multiprocessing's queues over a
ring in shared memory. Semantics in one process and across processes under
every start method, killed producers and consumers, what put refuses, and
where the queue's memory goes."""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback

import numpy as np
import pytest

from helpers import queue_procs as w
from helpers.mp_helpers import stopped
from grafos import JoinableQueue, Queue, SimpleQueue
from grafos.errors import CorruptFabric, GrafosError, MessageTooLarge, QueueClosed, QueueEmpty, QueueFull
from grafos.fabric import Fabric, probe, shm_path

METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture
def make():
    """Queues made by a test, closed and unlinked afterwards whatever happened."""
    made: list = []

    def factory(cls=Queue, *a, **kw):
        q = cls(*a, **kw)
        made.append(q)
        return q
    yield factory
    for q in made:
        q.close()
        Fabric.unlink(q.name)


def join_all(ps, timeout=60.0):
    for p in ps:
        p.join(timeout)
        assert p.exitcode is not None, f"{p} did not finish"


# ---- one process -----------------------------------------------------------------
def test_fifo_and_counts(make):
    q = make(Queue, 3)
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    for item in (1, "two", {"three": [3]}):
        q.put(item)
    assert (q.qsize(), q.empty(), q.full()) == (3, False, True)
    assert [q.get(), q.get(), q.get()] == [1, "two", {"three": [3]}]
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)


def test_full_and_empty_raise_the_queue_module_exceptions(make):
    q = make(Queue, 1)
    q.put_nowait(1)
    with pytest.raises(queue.Full) as e:
        q.put_nowait(2)
    assert isinstance(e.value, QueueFull) and isinstance(e.value, GrafosError)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    assert q.get_nowait() == 1
    with pytest.raises(queue.Empty) as e:
        q.get_nowait()
    assert isinstance(e.value, QueueEmpty)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(True, 0.2)
    assert time.monotonic() - t0 >= 0.19
    assert q.qsize() == 0


def test_a_blocked_put_and_get_wake_up(make):
    q = make(Queue, 1)
    q.put("a")
    threading.Timer(0.2, q.get).start()
    t0 = time.monotonic()
    q.put("b")                           # waits for the timer's get
    assert time.monotonic() - t0 >= 0.15
    assert q.get() == "b"
    threading.Timer(0.2, q.put, ("c",)).start()
    t0 = time.monotonic()
    assert q.get(timeout=30) == "c"
    assert time.monotonic() - t0 >= 0.15


def test_a_full_ring_blocks_an_unbounded_queue_like_a_full_one(make):
    q = make(Queue, ring_bytes=64 << 10, slot_bytes=256)      # 256 slots
    n = 0
    with pytest.raises(queue.Full):
        while True:
            q.put_nowait(n)
            n += 1
    assert n == 256 and q.qsize() == 256
    threading.Timer(0.2, q.get).start()
    q.put("after", timeout=30)
    assert [q.get() for _ in range(256)] == list(range(1, 256)) + ["after"]


def test_closed_queue_put_get_raise_value_error(make):
    for q in make(Queue), make(JoinableQueue):
        q.close()
        with pytest.raises(ValueError, match="is closed"):
            q.put("foo")
        with pytest.raises(QueueClosed, match="is closed"):
            q.get()
        q.join_thread()
        q.cancel_join_thread()


def test_join_thread_needs_close_as_in_multiprocessing(make):
    q = make(Queue)
    with pytest.raises(AssertionError):
        q.join_thread()


def test_task_done_and_join(make):
    q = make(JoinableQueue)
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    for i in range(5):
        q.put(i)
    done = []

    def work():
        for _ in range(5):
            done.append(q.get())
            time.sleep(0.01)
            q.task_done()
    t = threading.Thread(target=work)
    t.start()
    q.join()
    assert done == list(range(5))
    t.join()
    with pytest.raises(ValueError):
        q.task_done()


def test_simple_queue(make):
    q = make(SimpleQueue)
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    q.close()
    with pytest.raises(ValueError):
        q.put(1)


def test_an_unpicklable_value_raises_at_put_with_its_traceback(make):
    class NotSerializable:
        def __reduce__(self):
            raise AttributeError("cannot pickle this one")

    q = make(Queue, 1)
    with pytest.raises(AttributeError, match="cannot pickle this one") as e:
        q.put(NotSerializable())
    frames = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
    assert "__reduce__" in frames and "put" in frames
    assert q.qsize() == 0 and q.empty()
    q.put(True)                          # and the queue works on, its one place free
    assert q.get(timeout=1) is True


def test_an_item_larger_than_the_ring_is_refused_at_once(make):
    q = make(Queue, ring_bytes=1 << 20)
    q.put("before")
    for big in (np.zeros(2 << 20, np.uint8), b"x" * (2 << 20)):
        t0 = time.monotonic()
        with pytest.raises(MessageTooLarge) as e:
            q.put(big)
        assert time.monotonic() - t0 < 5
        assert isinstance(e.value, ValueError)
        assert "ring_bytes" in str(e.value) and str(1 << 20)[:3] in str(e.value)
    assert q.qsize() == 1 and q.get() == "before"


def test_buffers_travel_out_of_band_and_come_back_writable(make):
    q = make(Queue, ring_bytes=16 << 20)
    big = np.arange(1 << 18, dtype=np.float64)            # 2 MiB: its own buffer at get
    small = np.arange(100, dtype=np.int32)
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    strided = np.arange(20)[::2]
    q.put({"big": big, "small": small, "f": fortran, "s": strided, "ba": bytearray(b"abc" * 5000)})
    got = q.get()
    assert np.array_equal(got["big"], big) and got["big"].flags.writeable
    assert np.array_equal(got["small"], small) and got["small"].flags.writeable
    assert np.array_equal(got["f"], fortran) and np.array_equal(got["s"], strided)
    assert got["ba"] == bytearray(b"abc" * 5000)
    got["big"][0] = 7.0                 # its own memory: the next item cannot change it
    q.put(np.zeros(1 << 18))
    assert got["big"][0] == 7.0 and q.get().sum() == 0


def test_threads_share_a_queue(make):
    q = make(Queue)
    out: list = []
    lock = threading.Lock()

    def getter():
        while (item := q.get(timeout=30)) is not None:
            with lock:
                out.append(item)
    ts = [threading.Thread(target=getter) for _ in range(3)]
    for t in ts:
        t.start()
    for i in range(3000):
        q.put(i)
    for _ in ts:
        q.put(None)
    for t in ts:
        t.join(30)
    assert sorted(out) == list(range(3000))


def test_bad_arguments_name_what_was_wrong():
    with pytest.raises(TypeError, match="maxsize"):
        Queue("3")
    with pytest.raises(ValueError, match="slot_bytes"):
        Queue(slot_bytes=100)
    with pytest.raises(ValueError, match="ring_bytes"):
        Queue(ring_bytes=10)


# ---- across processes ----------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_processes_under_every_start_method(make, method):
    ctx = mp.get_context(method)
    q, out = make(Queue), ctx.Queue()
    producers = [ctx.Process(target=w.produce, args=(q, k * 1000, 500)) for k in range(2)]
    consumers = [ctx.Process(target=w.consume, args=(q, out, 500)) for _ in range(2)]
    for p in producers + consumers:
        p.start()
    got = out.get(timeout=120) + out.get(timeout=120)
    join_all(producers + consumers)
    assert sorted(got) == list(range(500)) + list(range(1000, 1500))
    assert q.empty()


@pytest.mark.parametrize("method", METHODS)
def test_arrays_across_processes(make, method):
    ctx = mp.get_context(method)
    q, back = make(Queue, ring_bytes=8 << 20), make(Queue)
    p = ctx.Process(target=w.echo_arrays, args=(q, back, 3))
    p.start()
    for k in range(3):
        a = np.full(1 << 17, float(k))          # 1 MiB
        q.put(a)
        assert back.get(timeout=60) == float(k) * (1 << 17)
    join_all([p])
    assert p.exitcode == 0


def test_maxsize_is_exact_across_processes(make):
    ctx = mp.get_context("fork")
    q = make(Queue, 5)
    go, results = ctx.Event(), ctx.Array("i", [-1] * 16, lock=False)
    ps = [ctx.Process(target=w.put_maybe, args=(q, go, results, i)) for i in range(16)]
    for p in ps:
        p.start()
    go.set()
    join_all(ps)
    assert sorted(results) == [0] * 11 + [1] * 5
    assert q.qsize() == 5 and q.full()


def test_a_killed_producer_loses_nothing_acknowledged_and_wedges_nobody(make):
    ctx = mp.get_context("fork")
    q = make(Queue)
    acked = ctx.Array("q", [0], lock=False)
    p = ctx.Process(target=w.produce_acked, args=(q, acked, 400))
    p.start()
    deadline = time.monotonic() + 60
    while acked[0] < 400:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    got = []
    while True:
        try:
            got.append(q.get(timeout=0.5))
        except queue.Empty:
            break
    assert got == list(range(400))
    q.put("still works", timeout=5)
    assert q.get(timeout=5) == "still works"


@pytest.mark.parametrize("cls", [Queue, JoinableQueue])
def test_a_producer_killed_mid_write_is_stepped_over_and_uncounted(make, cls):
    ctx = mp.get_context("fork")
    q = make(cls, 3)
    q.put("first")
    p = ctx.Process(target=w.die_mid_put, args=(q,))
    p.start()
    p.join(10)
    assert p.exitcode == 77                     # the fault point's _exit, inside put
    q.put("next", timeout=0)
    assert q.qsize() == 3 and q.full()          # the dead put still counts ...
    assert q.get(timeout=5) == "first"
    t0 = time.monotonic()
    assert q.get(timeout=30) == "next"          # ... the dead slot stepped over after the bounded wait
    assert time.monotonic() - t0 < 10
    assert q.qsize() == 0 and q.empty()         # ... and no longer counted
    if cls is JoinableQueue:
        q.task_done()
        q.task_done()
        done = threading.Event()
        threading.Thread(target=lambda: (q.join(), done.set()), daemon=True).start()
        assert done.wait(10), "join waits for the dead producer's item"
        with pytest.raises(ValueError):
            q.task_done()


def test_a_producer_killed_holding_a_counted_place_does_not_wedge_a_full_queue(make):
    ctx = mp.get_context("fork")
    q = make(Queue, 1)
    p = ctx.Process(target=w.die_after_reserving, args=(q,))
    p.start()
    p.join(10)
    assert p.exitcode == 77                     # the fault point's _exit, inside put
    assert q.qsize() == 1 and q.full()          # its place is counted, and no item will come ...
    q.put("next", timeout=5)                    # ... so a put into the full queue gives it back
    assert q.qsize() == 1 and q.get(timeout=5) == "next" and q.empty()


def test_a_producer_stalled_mid_write_is_stepped_over_then_puts_again(make):
    ctx = mp.get_context("fork")
    q = make(Queue)
    p = ctx.Process(target=w.stall_mid_put, args=(q,))
    p.start()
    try:
        deadline = time.monotonic() + 30
        while not stopped(p.pid):
            assert time.monotonic() < deadline, "the producer never reached its fault point"
            time.sleep(0.01)
        q.put("other")
        assert q.get(timeout=30) == "other"      # past the stalled slot after the bounded wait
        assert q.qsize() == 0
        os.kill(p.pid, signal.SIGCONT)
        # its commit finds the slot taken back, and the put starts again: at the
        # fault point once more, where it stops again (nobody reads meanwhile)
        deadline = time.monotonic() + 30
        while not stopped(p.pid):
            assert time.monotonic() < deadline, "the put did not start again"
            time.sleep(0.01)
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert q.get(timeout=30) == "slow"           # the item came, once
    p.join(30)
    assert p.exitcode == 0
    assert q.qsize() == 0
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)


def test_a_killed_consumer_loses_only_what_it_took_and_wedges_nobody(make):
    ctx = mp.get_context("fork")
    q = make(Queue)
    n = 3000
    got = ctx.Array("q", [-1] * n, lock=False)
    count = ctx.Value("q", 0, lock=False)
    for i in range(n):
        q.put(i)
    p = ctx.Process(target=w.consume_acked, args=(q, got, count))
    p.start()
    deadline = time.monotonic() + 60
    while count.value < 300:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    taken = [x for x in got[:count.value]]
    rest = []
    while True:
        try:
            rest.append(q.get(timeout=0.5))
        except queue.Empty:
            break
    # every item is either recorded by the killed consumer or still in the
    # queue, never both; at most the one it was holding when killed is neither
    assert not set(taken) & set(rest)
    assert len(taken) == len(set(taken)) and len(rest) == len(set(rest))
    assert rest == sorted(rest)
    assert n - 1 <= len(taken) + len(rest) <= n
    q.put("still works", timeout=5)
    assert q.get(timeout=5) == "still works"


# ---- memory ---------------------------------------------------------------------------
def test_the_last_user_to_close_removes_the_memory():
    ctx = mp.get_context("spawn")
    q, out = Queue(), ctx.Queue()
    path = shm_path(q.name)
    p = ctx.Process(target=w.attach_and_exit, args=(q, out))
    p.start()
    q.put("hello")
    assert out.get(timeout=60) == "hello"
    join_all([p])
    assert os.path.exists(path)          # the child left; this process still uses it
    q.close()                            # (with other threads about: when q goes, below)
    del q
    gc.collect()
    assert not os.path.exists(path)


def test_gc_removes_a_queue_whose_users_were_all_killed(tmp_path):
    from click.testing import CliRunner

    from grafos.cli import main
    ctx = mp.get_context("fork")
    q = Queue()
    name = q.name
    p = ctx.Process(target=w.put_then_die, args=(q,))
    p.start()
    p.join(10)
    q._parts[0].close()                  # this process lets go without the cleanup a close does
    q._parts.clear()
    q._finalizer.detach()
    try:
        assert probe(shm_path(name)).leases_live == 2      # the ring and its state: live, yet nobody's
        res = CliRunner().invoke(main, ["gc", name, "--yes", "--json"])
        assert res.exit_code == 0, res.output
        assert not os.path.exists(shm_path(name))
    finally:
        Fabric.unlink(name)


def test_a_scribbled_read_position_is_a_clear_error_not_a_crash(make):
    q = make(Queue)
    q.put("x")
    fabric, _, state = q._parts
    head_at = state.offset + 24            # the state block's read position (queue.c, struct gf_qstate)
    with open(shm_path(q.name), "r+b") as f:
        f.seek(head_at)
        f.write((1 << 40).to_bytes(8, "little"))
    with pytest.raises(CorruptFabric, match="head"):
        q.get(timeout=1)
    with pytest.raises(CorruptFabric):
        q.get_nowait()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_children_that_outlive_the_creator_remove_the_memory(method):
    ctx = mp.get_context(method)
    q, out = Queue(), ctx.Queue()
    path = shm_path(q.name)
    go = ctx.Event()
    p = ctx.Process(target=w.attached_then_get, args=(q, out, go))
    p.start()
    try:
        assert out.get(timeout=60) == "attached"
        q.put("hello")
        q.close()
        q._finalizer()                  # this process lets go first, whatever its other threads
        assert os.path.exists(path)     # the child still has it
        go.set()
        assert out.get(timeout=60) == "hello"
        join_all([p])
        assert p.exitcode == 0
        assert not os.path.exists(path)  # the last one out (through multiprocessing's exit) removed it
    finally:
        Fabric.unlink(q.name)
