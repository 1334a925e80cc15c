"""Lent bytes (a loan's value, peeked values) are the caller's only while lent,
on every backend that lends them (``caps.loans`` / ``caps.peeks``; the others
refuse clearly): a loan's view and arrays stop being writable at commit and at
abandon, and both loans and peeks are bound to their partition's lease, so
nothing written or read through them after the partition's end lands in, or
comes from, the next topic given its region."""
from __future__ import annotations

import time

import numpy as np
import pytest

from grafos.errors import InvalidArgument, LeaseExpired, Unsupported
from grafos.mq import Consumer, Producer, SeekPolicy
from grafos.mq.topic import TopicConfig
from grafos.peek import ViewsInUse


def _loaned(bus):
    """A loan-capable bus's producer and a reader of its topic; on the others,
    the refusal is the whole test."""
    bus.mgr.create("ln", TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128))
    prod = Producer("ln")       # the plain spelling: these tests are about the loan, not the binding
    if not bus.caps.loans:
        with pytest.raises(Unsupported):
            prod.loan(bus.mgr, 8)
        return None
    return prod


def _published(bus, topic: str = "ln") -> list[bytes]:
    c = Consumer(topic, "check")
    c.seek(bus.mgr, SeekPolicy.Earliest)
    return [bytes(m.value) for _, m in c.poll(bus.mgr, 100)]


def test_a_published_loan_should_refuse_every_late_write(bus):
    prod = _loaned(bus)
    if prod is None:
        return
    with prod.loan(bus.mgr, 8) as ln:
        a = ln.array()
        a[:] = np.frombuffer(b"abcdefgh", np.uint8)
        derived = [a[2:6], a.reshape(2, 4), a.view(np.uint16), a[::2]]
        view = ln.view
    for x in [a, *derived]:
        with pytest.raises(ValueError, match="read-only"):
            x[0] = 0x58
    with pytest.raises(ValueError):
        view[0] = 0x58
    with pytest.raises(InvalidArgument, match="no longer open"):
        ln.view
    with pytest.raises(InvalidArgument, match="no longer open"):
        ln.array()
    with pytest.raises(InvalidArgument, match="no longer open"):
        ln.write(b"X")
    assert _published(bus) == [b"abcdefgh"]
    # what a computation made from the loan's array is the caller's own
    doubled = a * 2
    doubled[0] = 1


def test_an_abandoned_loan_should_refuse_every_late_write(bus):
    prod = _loaned(bus)
    if prod is None:
        return
    with pytest.raises(RuntimeError):
        with prod.loan(bus.mgr, 8) as ln:
            a = ln.array(np.uint8, (2, 4))
            row = a[1]
            raise RuntimeError("the caller gave up")
    with pytest.raises(ValueError, match="read-only"):
        row[:] = 1
    assert _published(bus) == []


def test_a_loan_whose_bytes_are_still_held_should_publish_nothing_and_say_so(bus):
    prod = _loaned(bus)
    if prod is None:
        return
    ln = prod.loan(bus.mgr, 8)
    ln.write(b"abcdefgh")
    held = ln.view[2:4]          # a slice of the view: nothing the loan can make read-only
    with pytest.raises(ViewsInUse, match="nothing was published"):
        ln.commit()
    assert isinstance(ViewsInUse("x"), BufferError)
    assert _published(bus) == []
    held.release()
    with prod.loan(bus.mgr, 8) as ln2:    # the ring goes on
        ln2.write(b"12345678")
    assert _published(bus) == [b"12345678"]


def test_a_loan_open_while_its_topic_is_deleted_should_never_write_into_the_next_topic(bus):
    prod = _loaned(bus)
    if prod is None:
        return
    mgr = bus.mgr
    cfg = TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128)
    where = mgr.topic("ln").partitions[0].lease.offset
    ln = prod.loan(bus.mgr, 64)
    a = ln.array()
    mgr.delete("ln")
    mgr.create("next", cfg)
    assert mgr.topic("next").partitions[0].lease.offset == where     # the region went to "next"
    Producer("next").send(mgr, b"acknowledged message 0")
    with pytest.raises(ValueError, match="read-only"):
        a[:] = ord("X")
    for write in (lambda: ln.write(b"X" * 64), lambda: ln.view, lambda: ln.array(), ln.commit):
        with pytest.raises(LeaseExpired, match="deleted, restarted or expired"):
            write()
    assert _published(bus, "next") == [b"acknowledged message 0"]


def test_a_loan_whose_lease_expired_should_refuse_writes_and_publish_nothing(bus):
    prod = _loaned(bus)
    if prod is None:
        return
    mgr = bus.mgr
    cfg = TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128, retention_secs=0.2)
    mgr.create("short", cfg)
    where = mgr.topic("short").partitions[0].lease.offset
    ln = Producer("short").loan(mgr, 16)
    a = ln.array()
    time.sleep(0.3)
    with pytest.raises(LeaseExpired, match="expired"):
        ln.write(b"late")
    with pytest.raises(LeaseExpired, match="expired"):
        ln.view
    # the region goes to the next topic made: what the loan handed out is revoked first
    mgr.create("after", TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128))
    assert mgr.topic("after").partitions[0].lease.offset == where
    Producer("after").send(mgr, b"acknowledged message 0")
    with pytest.raises(ValueError, match="read-only"):
        a[:] = ord("X")
    with pytest.raises(LeaseExpired):
        ln.commit()
    assert _published(bus, "after") == [b"acknowledged message 0"]


def test_a_peek_across_its_topics_deletion_should_report_its_messages_not_intact(bus):
    mgr = bus.mgr
    cfg = TopicConfig(num_partitions=1, partition_capacity=8, partition_stride=128)
    mgr.create("pk", cfg)
    Producer("pk").send(mgr, b"old message 0")
    con = Consumer("pk", "g")
    con.seek(mgr, SeekPolicy.Earliest)
    if not bus.caps.peeks:
        con.poll(mgr, 10, timeout=5.0)
        with pytest.raises(Unsupported):
            con.peek(mgr, 10)
        return
    pk = con.peek(mgr, 10)
    assert [bytes(m.value) for m in pk] == [b"old message 0"]
    mgr.delete("pk")
    mgr.create("pk2", cfg)
    Producer("pk2").send(mgr, b"new message 0")
    with pytest.raises(LeaseExpired):
        pk.arrays()
    assert [m.offset for m in pk.release()] == [0]
    assert pk.intact.tolist() == [False]
    assert [m.intact for m in pk] == [False]
