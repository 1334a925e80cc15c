"""Idempotent producers, epoch fencing, transactions and read_committed."""
from __future__ import annotations

import hashlib
import random
import threading

import pytest

from grafos._native import lib
from grafos.errors import (InvalidArgument, InvalidType, ProducerFenced, TransactionError,
                           Unsupported)
from grafos.mq import transaction
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore, SqliteOffsetStore
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

from helpers import eos_procs
from helpers.bus_helpers import observed_bus
from helpers.mp_helpers import scaled, start


@pytest.fixture
def mgr():
    m = TopicManager()
    m.create("out", TopicConfig(num_partitions=2, partition_capacity=1024))
    yield m
    m.close()


def everything(mgr, topic="out", isolation="read_uncommitted"):
    c = Consumer(topic, f"all-{isolation}", isolation=isolation)
    c.seek(mgr, SeekPolicy.Earliest)
    out = []
    while msgs := c.poll(mgr, 1000):
        out += [(p, m.offset, m.key, m.value) for p, m in msgs]
    return out, c


# ---- idempotence ------------------------------------------------------------------------
@pytest.mark.parametrize("keyed", [True, False])
def test_send_retried_after_its_write_lands_once_and_returns_the_original_offset(mgr, keyed):
    prod = Producer("out", idempotent=True)
    send = (lambda v: prod.send_keyed(mgr, b"k", v)) if keyed else (lambda v: prod.send(mgr, v))
    first = send(b"one")
    lib.gf_test_fault(lib.GF_FAULT_IDEM_WRITTEN, lib.GF_FAULT_FAIL)  # the call fails after the write
    try:
        second = send(b"two")
    finally:
        lib.gf_test_fault(0, 0)
    third = send(b"three")
    msgs, _ = everything(mgr)
    values = sorted(v for *_, v in msgs)
    assert values == [b"one", b"three", b"two"]              # written once
    assert (second[0], second[1]) in {(p, off) for p, off, _, v in msgs if v == b"two"}
    if keyed:
        assert (first[1], second[1], third[1]) == (0, 1, 2)


def test_threads_sharing_a_producer_each_repeat_their_own_failed_send(mgr):
    """One thread's sends fail after their write (injected, again and again) while
    another thread sends through the same producer: each failed send is repeated
    as itself, so every call returns where its own message landed, written once.
    The threads write to different partitions, so neither waits for the other's
    send in flight."""
    prod = Producer("out", idempotent=True)
    keys = {p: [k for k in (b"k%d" % i for i in range(1000)) if kafka_partition(k, 2) == p][:50] for p in (0, 1)}
    got: dict[bytes, tuple[int, int]] = {}
    errors: list[BaseException] = []

    def sends(part: int, fail: bool) -> None:
        try:
            for i, k in enumerate(keys[part]):
                if fail:
                    lib.gf_test_fault(lib.GF_FAULT_IDEM_WRITTEN, lib.GF_FAULT_FAIL)
                got[b"%d:%d" % (part, i)] = prod.send_keyed(mgr, k, b"%d:%d" % (part, i))
        except BaseException as e:      # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=sends, args=(0, True)), threading.Thread(target=sends, args=(1, False))]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        lib.gf_test_fault(0, 0)
    assert errors == []
    msgs, _ = everything(mgr)
    assert sorted(v for *_, v in msgs) == sorted(got)           # each written once
    assert {v: (p, off) for p, off, _, v in msgs} == got        # each call returned its own


def test_every_idempotent_message_carries_its_stamp(mgr):
    prod = Producer("out", transactional_id="stamps")
    for i in range(5):
        prod.send_keyed(mgr, b"k", b"v%d" % i)
    t = mgr.topic("out")
    from grafos.reader import Reader
    p = next(i for i in range(t.n) if t.partitions[i].state().latest)
    rd = Reader(mgr.fabric, [t.partitions[p]])
    b = rd.poll_batch(100)
    stamps = []
    for i in range(len(b)):
        m = b.meta[i]
        assert int(m["flags"]) & lib.GF_MSG_STAMP
        end = int(m["pos"]) + int(m["key_len"]) + int(m["hdr_len"]) + int(m["val_len"])
        stamps.append(transaction.parse_stamp(b.data[end:end + 24].tobytes()))
    reg = transaction.transactions(mgr)[0]
    assert stamps == [(reg.producer, reg.epoch, seq, 0) for seq in range(5)]


def test_a_new_instance_fences_the_old_one_which_then_writes_nothing(mgr):
    old = Producer("out", transactional_id="w")
    old.send_keyed(mgr, b"k", b"before")
    new = Producer("out", transactional_id="w")
    assert new.register(mgr) == old.epoch + 1
    with pytest.raises(ProducerFenced) as e:
        old.send_keyed(mgr, b"k", b"zombie")
    assert e.value.epoch == old.epoch and e.value.current_epoch == new.epoch
    with pytest.raises(ProducerFenced):
        old.send(mgr, b"zombie")
    with pytest.raises(ProducerFenced):
        old.send_batch(mgr, [b"zombie"])
    new.send_keyed(mgr, b"k", b"after")
    assert [v for *_, v in everything(mgr)[0]] == [b"before", b"after"]
    info = {i.transactional_id: i for i in transaction.transactions(mgr)}["w"]
    assert info.fenced == 1 and info.epoch == new.epoch


def test_a_fenced_producers_open_transaction_is_aborted_by_its_successor(mgr):
    old = Producer("out", transactional_id="w")
    txn = old.begin(mgr)
    old.send_keyed(mgr, b"k", b"zombie-txn")
    new = Producer("out", transactional_id="w")
    new.register(mgr)
    with pytest.raises(ProducerFenced):
        txn.commit()
    with new.begin(mgr):
        new.send_keyed(mgr, b"k", b"good")
    committed, rc = everything(mgr, isolation="read_committed")
    assert [v for *_, v in committed] == [b"good"]
    assert rc.aborted == 1
    assert [v for *_, v in everything(mgr)[0]] == [b"zombie-txn", b"good"]


# ---- transactions and isolation -----------------------------------------------------------
def test_read_committed_sees_commits_in_order_and_never_aborts_read_uncommitted_sees_all(mgr):
    plain = Producer("out")
    tx = Producer("out", transactional_id="t")
    rc = Consumer("out", "rc", isolation="read_committed")
    rc.seek(mgr, SeekPolicy.Earliest)
    plain.send_keyed(mgr, b"k", b"p0")
    txn = tx.begin(mgr)
    tx.send_keyed(mgr, b"k", b"t1")
    plain.send_keyed(mgr, b"k", b"p1")              # behind an open transaction: held
    tx.send_keyed(mgr, b"k", b"t2")
    assert [m.value for _, m in rc.poll(mgr, 100)] == [b"p0"]
    assert rc.poll(mgr, 100, timeout=0.05) == []
    txn.commit()
    assert [m.value for _, m in rc.poll(mgr, 100)] == [b"t1", b"p1", b"t2"]
    with pytest.raises(RuntimeError):
        with tx.begin(mgr):
            tx.send_keyed(mgr, b"k", b"a1")
            plain.send_keyed(mgr, b"k", b"p2")
            raise RuntimeError("the block fails: the transaction aborts")
    plain.send_keyed(mgr, b"k", b"p3")
    assert [m.value for _, m in rc.poll(mgr, 100)] == [b"p2", b"p3"]
    assert rc.aborted == 1
    uncommitted = [v for *_, v in everything(mgr)[0]]
    assert uncommitted == [b"p0", b"t1", b"p1", b"t2", b"a1", b"p2", b"p3"]


def test_transaction_commits_offsets_with_its_messages_and_aborts_them_with_it(mgr):
    mgr.create("in", TopicConfig(num_partitions=1))
    src = Producer("in")
    for i in range(6):
        src.send(mgr, b"%d" % i)
    store = FabricOffsetStore(mgr)
    cons = Consumer("in", "eos")
    cons.seek(mgr, store, SeekPolicy.Committed)
    prod = Producer("out", transactional_id="ctp")
    txn = prod.begin(mgr)
    for _, m in cons.poll(mgr, 3):
        prod.send(mgr, m.value)
    assert txn.commit_offsets(cons, store) == {0: 3}
    txn.abort()
    assert store.committed("eos", "in", 0) is None
    txn = prod.begin(mgr)
    txn.commit_offsets(cons, store)
    txn.commit()
    assert store.committed("eos", "in", 0) == 3
    with pytest.raises(TransactionError):
        txn.commit()


def test_transaction_states_with_an_injected_clock(mgr):
    """open -> committed, open -> aborted, open -> expired (aborted by whoever
    looks after the registration's TTL), and fencing by epoch."""
    prod = Producer("out", transactional_id="m", transaction_ttl=5.0)
    prod.register(mgr)
    t0 = transaction.transactions(mgr)[0]
    assert (t0.state, t0.epoch, t0.txn) == ("idle", 1, 0)
    txn = prod.begin(mgr)
    prod.send(mgr, b"a")
    assert transaction.transactions(mgr)[0].state == "open"
    txn.commit()
    assert transaction.transactions(mgr)[0].state == "idle"
    txn = prod.begin(mgr)
    txn.abort()
    info = transaction.transactions(mgr)[0]
    assert (info.state, info.txn, info.aborted) == ("idle", 2, 1)
    txn = prod.begin(mgr)
    prod.send(mgr, b"b")
    import time
    later = time.time() + 3.0
    assert transaction.resolve(mgr, now=later) == 0          # alive: nobody may touch it
    assert transaction.transactions(mgr, now=later)[0].age_s >= 3.0
    much_later = time.time() + 60.0
    assert transaction.resolve(mgr, now=much_later) == 1     # its registration expired: aborted
    info = transaction.transactions(mgr, now=much_later)[0]
    assert (info.state, info.aborted, info.alive) == ("idle", 2, False)
    with pytest.raises((TransactionError, ProducerFenced)):
        txn.commit()
    assert [v for *_, v in everything(mgr, isolation="read_committed")[0]] == [b"a"]
    again = Producer("out", transactional_id="m")
    assert again.register(mgr) == 2


def test_a_decided_commit_is_carried_through_by_the_next_instance(mgr, monkeypatch):
    prod = Producer("out", transactional_id="d")
    txn = prod.begin(mgr)
    prod.send_keyed(mgr, b"k", b"decided")
    monkeypatch.setattr(transaction, "write_markers", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        txn.commit()                            # decided, then "died" before its markers
    monkeypatch.undo()
    assert transaction.transactions(mgr)[0].state == "committing"
    assert everything(mgr, isolation="read_committed")[0] == []
    Producer("out", transactional_id="d").register(mgr)
    assert [v for *_, v in everything(mgr, isolation="read_committed")[0]] == [b"decided"]


# ---- bad input ------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_clear_error(mgr, tmp_path):
    with pytest.raises(InvalidType, match="idempotent"):
        Producer("out", idempotent="yes")
    with pytest.raises(InvalidArgument, match="transactional_id"):
        Producer("out", transactional_id="")
    with pytest.raises(InvalidArgument, match="transaction_ttl"):
        Producer("out", transactional_id="x", transaction_ttl=0)
    with pytest.raises(InvalidArgument, match="isolation"):
        Consumer("out", isolation="serializable")
    with pytest.raises(TransactionError, match="transactional_id"):
        Producer("out", idempotent=True).begin(mgr)
    idem = Producer("out", transactional_id="bad")
    with pytest.raises(Unsupported, match="loan"):
        idem.loan(mgr, 10)
    txn = idem.begin(mgr)
    with pytest.raises(TransactionError, match="already"):
        idem.begin(mgr)
    cons = Consumer("out", "g")
    cons.seek(mgr, SeekPolicy.Earliest)
    with SqliteOffsetStore(str(tmp_path / "o.db")) as sq:
        with pytest.raises(Unsupported, match="FabricOffsetStore"):
            txn.commit_offsets(cons, sq)
    txn.commit_offsets(cons, MemOffsetStore())
    txn.abort()
    mgr.create("other", TopicConfig(num_partitions=1))
    with pytest.raises(InvalidArgument, match="belongs to a producer of topic"):
        Producer("other", transactional_id="bad").register(mgr)
    rc = Consumer("out", "rc", isolation="read_committed")
    with pytest.raises(Unsupported, match="poll"):
        rc.poll_batch(mgr, 10)


# ---- end to end, across processes, with kills ------------------------------------------------
def eos_bus(shm_name: str, parts: int, keys: int, per_key: int, out_capacity: int):
    """A bus with ``in`` full of keyed inputs ("<key>:<seq>", per key in order)
    and an empty ``out``; returns it and the outputs expected."""
    mgr = TopicManager.open(shm_name, size=64 << 20)
    mgr.create("in", TopicConfig(num_partitions=parts, partition_capacity=4096))
    mgr.create("out", TopicConfig(num_partitions=parts, partition_capacity=out_capacity))
    src = Producer("in")
    expected = []
    for seq in range(per_key):
        for k in range(keys):
            src.send_keyed(mgr, b"key-%d" % k, b"%d:%d" % (k, seq))
            expected.append(b"out:%d:%d" % (k, seq))
    return mgr, expected


def assert_exactly_once(mgr, expected: list[bytes], keys: int, per_key: int) -> Consumer:
    """A read_committed reader of ``out`` sees each expected output once (count
    and digest), each key's in input order; returns the reader."""
    got, rc = everything(mgr, isolation="read_committed")
    values = [v for *_, v in got]
    assert len(values) == len(expected)
    assert hashlib.blake2b(b"|".join(sorted(values))).digest() == \
        hashlib.blake2b(b"|".join(sorted(expected))).digest()
    for k in range(keys):
        mine = [int(v.split(b":")[2]) for v in values if v.startswith(b"out:%d:" % k)]
        assert mine == list(range(per_key))
    return rc


def test_consume_transform_produce_is_exactly_once_across_sigkills(shm_name, procs):
    parts, keys, per_key, batch = 2, 8, scaled(40, 10), 7
    mgr, expected = eos_bus(shm_name, parts, keys, per_key, 8192)
    rnd = random.Random(1234)
    # every kill point at least once per partition, then a clean run that drains
    plans = {p: [(rnd.randrange(0, 3), point) for point in eos_procs.POINTS] + [(-1, "")] for p in range(parts)}
    killed = 0
    for step in range(len(eos_procs.POINTS) + 1):
        running = [(p, start(procs, eos_procs.worker, shm_name, p, batch, *plans[p][step], 1.0))
                   for p in range(parts)]
        for p, proc in running:
            proc.join(60)
            assert not proc.is_alive(), f"worker of partition {p} hung"
            if plans[p][step][0] >= 0 and proc.exitcode == -9:
                killed += 1
            else:
                assert proc.exitcode == 0, f"worker of partition {p} exited {proc.exitcode}"
    assert killed >= parts * 2       # most planned kills happened (a kill beyond the input is skipped)
    assert_exactly_once(mgr, expected, keys, per_key)
    uncommitted = [v for *_, v in everything(mgr)[0]]
    assert len(uncommitted) > len(expected)     # the killed workers did write; none of it leaked
    assert all(i.state == "idle" for i in transaction.transactions(mgr))
    mgr.close()


# ---- observability ---------------------------------------------------------------------------
def test_describe_shows_open_transactions_their_age_aborts_and_fencing(shm_name):
    import json

    from click.testing import CliRunner

    from grafos.cli import main
    mgr, prod = observed_bus(shm_name)
    out = CliRunner().invoke(main, ["describe", shm_name, "out", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    (info,) = json.loads(out.output)["producers"]
    assert (info["transactional_id"], info["state"], info["epoch"], info["aborted"], info["fenced"]) == \
        ("obs", "open", 2, 1, 1)
    assert info["age_s"] >= 0
    table = CliRunner().invoke(main, ["describe", shm_name, "out"], catch_exceptions=False).output
    assert "transactional producers" in table and "obs" in table and "open" in table
    prod.close()
    mgr.close()


def test_a_write_in_flight_at_the_fence_never_holds_read_committed_readers_up(mgr):
    """A fenced producer's write that passed its epoch check before the fence
    lands after its transaction's abort marker: no marker will come for it."""
    from grafos._native import ffi
    old = Producer("out", transactional_id="late")
    old.begin(mgr)
    old.send_keyed(mgr, b"k", b"zombie-1")
    number, epoch, txn = transaction.transactions(mgr)[0].producer, old.epoch, old.transaction.number
    new = Producer("out", transactional_id="late")
    new.register(mgr)                                   # fences old, aborts its transaction
    t = mgr.topic("out")
    p = Producer("out").send_keyed(mgr, b"k", b"x")[0]  # the key's partition
    stamp = ffi.new("gf_stamp *", {"producer": number, "epoch": epoch, "seq": 1, "txn": txn})
    late = lib.gf_ring_append_stamped(t.rings[p], lib.GF_MSG_TXN, stamp, b"k", 1, 1, ffi.NULL, 0,
                                      b"zombie-late", 11, 0)        # the write in flight
    assert late >= 0
    Producer("out").send_keyed(mgr, b"k", b"after")
    rc = Consumer("out", "rc", isolation="read_committed")      # read past the abort marker
    rc.seek(mgr, SeekPolicy.Earliest)
    assert [m.value for _, m in rc.poll(mgr, 100, timeout=0.5)] == [b"x", b"after"]
    assert rc.aborted == 2
    joined = Consumer("out", "joined", isolation="read_committed")   # starts after the marker
    joined.assign([p])
    joined.seek_partition(mgr, p, late)
    got = []
    for _ in range(20):
        got += [m.value for _, m in joined.poll(mgr, 100, timeout=0.2)]
        if got:
            break
    assert got == [b"after"]
    assert joined.aborted == 1


@pytest.mark.stress
def test_consume_transform_produce_is_exactly_once_when_killed_at_random_moments(shm_name, procs):
    """The same workers, SIGKILLed by the test at random moments (inside the
    metadata lock, mid-append, between the decision and the markers: wherever
    the timer lands), restarted each time; then drained. Every input's output
    is read exactly once by a read_committed consumer, in key order."""
    import os
    import signal
    import time
    parts, keys, per_key, batch = 2, 8, scaled(150, 30), 5
    mgr, expected = eos_bus(shm_name, parts, keys, per_key, 16384)
    rnd = random.Random(99)
    kills = 0
    out = mgr.topic("out")

    def written() -> int:
        return sum(out.partition(p).latest() for p in range(parts))
    for _ in range(scaled(12, 4)):
        before = written()
        workers = [start(procs, eos_procs.worker, shm_name, p, batch, -1, "", 1.0, 0.001)
                   for p in range(parts)]
        deadline = time.monotonic() + 20
        while written() == before and time.monotonic() < deadline and any(w.is_alive() for w in workers):
            time.sleep(0.001)                       # until they work, then a random moment later
        time.sleep(rnd.random() * 0.1)
        victim = rnd.choice(workers)
        if victim.is_alive():
            os.kill(victim.pid, signal.SIGKILL)
            kills += 1
        for w in workers:
            if w is not victim and w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
            w.join(30)
    drain = [start(procs, eos_procs.worker, shm_name, p, batch, -1, "", 1.0) for p in range(parts)]
    for w in drain:
        w.join(120)
        assert w.exitcode == 0, f"draining worker exited {w.exitcode}"
    assert kills > 0
    rc = assert_exactly_once(mgr, expected, keys, per_key)
    print(f"{kills} kills, {rc.aborted} aborted outputs skipped, "
          f"{len(everything(mgr)[0]) - len(expected)} written outputs not committed")
    mgr.close()


def test_a_read_committed_reader_lapped_past_a_marker_is_not_held_up_forever():
    mgr = TopicManager()
    mgr.create("small", TopicConfig(num_partitions=1, partition_capacity=16))
    tx, plain = Producer("small", transactional_id="lap"), Producer("small")
    rc = Consumer("small", "rc", isolation="read_committed")
    rc.seek(mgr, SeekPolicy.Earliest)
    txn = tx.begin(mgr)
    tx.send(mgr, b"t1")
    assert rc.poll(mgr, 10) == []                  # held: its transaction is open
    txn.commit()                                   # the marker lands at offset 1 ...
    for i in range(40):                            # ... and is overwritten before the reader sees it
        plain.send(mgr, b"p%d" % i)
    got = []
    for _ in range(20):
        got += [m.value for _, m in rc.poll(mgr, 100, timeout=0.2)]
        if got:
            break
    assert got == [b"p%d" % i for i in range(24, 40)]
    assert rc.lost()[0] > 0 and rc.aborted == 1
    mgr.close()
