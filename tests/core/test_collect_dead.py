"""Records of the dead are collected: the registrations of producers that died
without close() expire and are dropped by whoever looks (a registration, a
listing, a topic's describe), a transaction they left open aborted first, so
the 4,096-entry metadata table holds only the living."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from grafos.errors import ProducerFenced
from grafos.mq import transaction
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

MiB = 1 << 20


def _records(mgr: TopicManager, prefix: str) -> int:
    return sum(1 for _ in mgr.fabric.meta_items(prefix))


def test_thousands_of_dead_idempotent_producers_leave_the_table_to_the_living():
    mgr = TopicManager(size=64 * MiB)            # the default table: 4,096 records
    mgr.create("t", TopicConfig(1, 16, 128, 3600.0))
    base = time.time()
    for i in range(3000):                        # each registers, then dies: nobody renews or closes it
        transaction.register(mgr, transaction.new_id(), "t", ttl=0.5, now=base + i)
    assert _records(mgr, "x/") <= 1 and _records(mgr, "xn/") <= 1
    # what needs a record still works: a claim, a commit, a create, a new producer
    group = ConsumerGroup("g", "t", 1, 30.0, mgr=mgr)
    group.claim("m")
    group.commit(FabricOffsetStore(mgr), "m", "t", {0: 0})
    mgr.create("t2", TopicConfig(1, 16, 128, 3600.0))
    assert Producer("t2", idempotent=True).send(mgr, b"alive") == (0, 0)
    mgr.close()


DIES = textwrap.dedent("""
    import os, sys
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicManager
    mgr = TopicManager.open(sys.argv[1])
    producers = [Producer("t", idempotent=True) for _ in range(200)]
    for p in producers:
        p.send(mgr, b"from a process that dies")
    txn = Producer("t", transactional_id="w")
    txn.begin(mgr)
    txn.send(mgr, b"never committed")
    os._exit(0)                                  # no close(): every registration is left behind
""")


def test_a_dead_processs_registrations_are_dropped_and_its_open_transaction_aborted(shm_name):
    mgr = TopicManager.open(shm_name, size=64 * MiB)
    mgr.create("t", TopicConfig(1, 1024, 256, 3600.0))
    subprocess.run([sys.executable, "-c", DIES, shm_name], check=True, timeout=120)
    assert _records(mgr, "x/") == 201
    later = time.time() + 120                    # every registration's TTL (60 s) has run out
    mgr.describe("t", now=later)                 # whoever looks collects
    left = transaction.transactions(mgr, now=later)
    # the named one stays for its next instance (the id's epoch), its transaction aborted
    assert [(i.transactional_id, i.state, i.alive, i.aborted) for i in left] == [("w", "idle", False, 1)]
    assert _records(mgr, "x/") == 1 and _records(mgr, "xn/") == 1
    c = Consumer("t", "check", isolation="read_committed")
    c.seek(mgr, None, SeekPolicy.Earliest)
    got = [m.value for _, m in c.poll(mgr, 1000, timeout=0.5)]
    assert got == [b"from a process that dies"] * 200
    # the named record goes too once the id has been dead for ID_EXPIRATION_SECS
    assert transaction.collect(mgr, now=later + transaction.ID_EXPIRATION_SECS) == 1
    assert _records(mgr, "x/") == 0 and _records(mgr, "xn/") == 0
    again = Producer("t", transactional_id="w")
    assert again.register(mgr) == 1              # a fresh record
    again.close()
    mgr.close()


def test_an_instance_whose_record_was_dropped_and_made_again_is_fenced():
    """A record made again for the same id has a new producer number: an
    instance of the dropped record cannot pass for the new one, whatever its epoch."""
    mgr = TopicManager(size=16 * MiB)
    mgr.create("t", TopicConfig(1, 16, 128, 3600.0))
    base = time.time()
    old = transaction.register(mgr, "w", "t", ttl=1.0, now=base)
    transaction.collect(mgr, now=base + 10)                               # found dead
    transaction.collect(mgr, now=base + 20 + transaction.ID_EXPIRATION_SECS)  # dropped
    new = transaction.register(mgr, "w", "t", ttl=60.0, now=base + 30 + transaction.ID_EXPIRATION_SECS)
    assert (new.epoch, old.epoch) == (1, 1) and new.number != old.number
    with pytest.raises(ProducerFenced):
        transaction.begin(mgr, old, 60.0, now=base + 31 + transaction.ID_EXPIRATION_SECS)
    mgr.close()
