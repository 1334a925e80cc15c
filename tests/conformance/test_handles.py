"""Handles bound to a bus (``mgr.producer``, ``mgr.consumer``) take every call
without the manager, on every backend, and every option of their classes;
loans, peeks and transactions where the bus has them (``mgr.capabilities``),
a clear ``Unsupported`` where it does not."""
from __future__ import annotations

import time

import pytest

from grafos.errors import InvalidArgument, Unsupported
from grafos.mq import Partitioner, SeekPolicy
from grafos.mq.topic import TopicConfig, TopicManager

CFG = TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=256)


def _values(msgs) -> list[bytes]:
    return sorted(bytes(m.value) for _, m in msgs)


def test_bound_handles_should_take_every_call_without_the_manager(bus):
    mgr = bus.mgr
    mgr.create("bh", CFG)
    prod = mgr.producer("bh", partitioner=Partitioner.RoundRobin, timeout=1.0)
    assert prod.timeout == 1.0
    prod.send(b"a")
    prod.send_keyed(b"k", b"b")
    prod.send_batch([b"c", b"d"])
    prod.send(mgr, b"e")                        # the long spelling still works on a bound handle
    assert isinstance(mgr.producer("bh", idempotent=True).register(), int)

    store = bus.store()
    con = mgr.consumer("bh", group="g", max_batch=64, check_crcs=False)
    assert (con.max_batch, con.check_crcs) == (64, False)
    con.seek(SeekPolicy.Earliest)
    assert con.wait(5.0) is True
    assert sum(con.lag().values()) == 5
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        got += con.poll(10, timeout=1.0)
    assert _values(got) == [b"a", b"b", b"c", b"d", b"e"]
    assert sum(con.positions().values()) == 5 and con.position(0) + con.position(1) == 5
    con.commit(store)
    con.seek_partition(0, 0)
    con.seek(store, SeekPolicy.Committed)
    assert con.positions() == {0: con.position(0), 1: con.position(1)} and sum(con.lag().values()) == 0
    con.seek(SeekPolicy.Earliest)
    batch = con.poll_batch(10, timeout=5.0)
    assert len(batch) >= 1
    con.close()


def test_bound_handles_should_take_every_option_of_their_classes(bus):
    bus.mgr.create("bo", CFG)
    p = bus.mgr.producer("bo", transactional_id="bo-1", transaction_ttl=30.0)
    assert (p.transactional_id, p.idempotent, p.transaction_ttl) == ("bo-1", True, 30.0)
    c = bus.mgr.consumer("bo", group="g", isolation="read_committed", gating=True, gating_ttl=5.0,
                         on_lost="latest")
    assert (c.isolation, c.gating, c.gating_ttl, c.on_lost) == ("read_committed", True, 5.0, "latest")
    with pytest.raises(TypeError):
        bus.mgr.producer("bo", no_such_option=1)


def test_loans_peeks_and_transactions_should_work_bound_or_be_refused_clearly(bus):
    mgr = bus.mgr
    mgr.create("lp", CFG)
    prod = mgr.producer("lp")
    con = mgr.consumer("lp", group="g")
    con.seek(SeekPolicy.Earliest)
    if bus.caps.loans:
        with prod.loan(5, key=b"k") as ln:
            ln.write(b"hello")
    else:
        with pytest.raises(Unsupported, match="loans"):
            prod.loan(5, key=b"k")
        prod.send_keyed(b"k", b"hello")
    if bus.caps.peeks:
        with con.peek(10) as pk:
            assert [bytes(m.value) for m in pk] == [b"hello"]
    else:
        con.poll(10, timeout=5.0)        # reading makes the consumer known to the bus first
        with pytest.raises(Unsupported, match="peeks"):
            con.peek(10)
    tx = mgr.producer("lp", transactional_id="lp-1")
    if bus.caps.transactions:
        with tx.begin() as txn:
            txn.send(b"in a transaction")
    else:
        with pytest.raises(Unsupported, match="transactions"):
            tx.begin()


def test_the_fabric_should_be_the_shared_memory_buses_or_refused_clearly(bus):
    if bus.caps.shared_memory:
        from grafos.fabric import Fabric
        assert isinstance(bus.mgr.fabric, Fabric)
    else:
        with pytest.raises(Unsupported, match="has no fabric"):
            bus.mgr.fabric


def test_a_bound_handle_should_refuse_another_buses_manager_and_write_nothing(bus):
    bus.mgr.create("ob", CFG)
    other = TopicManager(size=16 << 20)
    other.create("ob", CFG)
    prod = bus.mgr.producer("ob")
    con = bus.mgr.consumer("ob", group="g")
    calls = [lambda: prod.send(other, b"x"), lambda: prod.send_keyed(other, b"k", b"x"),
             lambda: prod.send_batch(other, [b"x"]), lambda: con.poll(other, 10),
             lambda: con.seek(other, SeekPolicy.Earliest), lambda: con.lag(other)]
    for call in calls:
        with pytest.raises(InvalidArgument, match="is bound to"):
            call()
    assert bus.mgr.describe("ob").produced == 0 and other.describe("ob").produced == 0
    other.close()


def test_async_bound_handles_should_await_messages_and_survive_a_cancelled_poll(bus):
    import asyncio

    from grafos.aio import AsyncConsumer, AsyncProducer
    bus.mgr.create("ah", CFG)

    async def go() -> list[bytes]:
        async with AsyncProducer(bus.mgr.producer("ah")) as prod, \
                   AsyncConsumer(bus.mgr.consumer("ah", group="g")) as con:
            con.seek(SeekPolicy.Earliest)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(con.poll(10, timeout=None), 0.05)     # nothing yet: cancelled
            await prod.send(b"after the cancelled poll")
            got = []
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                got = await con.poll(10, timeout=1.0)
            return [m.value for _, m in got]

    assert asyncio.run(go()) == [b"after the cancelled poll"]
