"""Offsets know their incarnation: a commit made before a topic restart never
points into the fresh ring (commit 8, expire, restart, send 12: a Committed
seek reads new-0 .. new-11), for every store, across processes and after
reopening a file fabric."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore, SqliteOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

CFG = TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128, retention_secs=30)
NEW = [b"new-%d" % i for i in range(12)]


def _store(kind: str, mgr: TopicManager, tmp_path):
    if kind == "mem":
        return MemOffsetStore()
    if kind == "sqlite":
        return SqliteOffsetStore(tmp_path / "offsets.db")
    return FabricOffsetStore(mgr)


def _commit_8_then_restart_and_send_12(mgr: TopicManager, store, bind: bool = False) -> None:
    prod = Producer("t")
    for i in range(10):
        prod.send(mgr, b"old-%d" % i)
    if bind:
        g = ConsumerGroup("g", "t", 1, 30, mgr=mgr)
        g.claim("m")
        c = g.consumer("m")
    else:
        c = Consumer("t", "g")
    c.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c.poll(mgr, 8)] == [b"old-%d" % i for i in range(8)]
    assert c.commit(store) == {0: 8}
    later = time.time() + 60                       # the lease is long dead by then
    mgr.fabric.reap(now=later)
    mgr.restart("t", now=later)
    for v in NEW:
        prod.send(mgr, v)


@pytest.mark.parametrize("kind", ["mem", "sqlite", "fabric"])
def test_should_read_new_0_to_11_when_commit_of_8_predates_restart(kind, tmp_path):
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", CFG)
    store = _store(kind, mgr, tmp_path)
    _commit_8_then_restart_and_send_12(mgr, store)
    c2 = Consumer("t", "g")
    c2.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c2.poll(mgr, 100)] == NEW
    assert c2.reset_by_incarnation == 1
    assert store.committed("g", "t", 0) == 8       # the plain protocol still answers
    d = ConsumerGroup("g", "t", 1, 30).describe(mgr, store)
    assert d.partitions[0].stale_commit and d.partitions[0].lag == 12


@pytest.mark.parametrize("kind", ["mem", "fabric"])
def test_should_record_incarnation_when_a_group_member_commits(kind, tmp_path):
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", CFG)
    store = _store(kind, mgr, tmp_path)
    _commit_8_then_restart_and_send_12(mgr, store, bind=True)
    c2 = Consumer("t", "g")
    c2.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c2.poll(mgr, 100)] == NEW


def test_should_resume_at_the_commit_when_the_incarnation_is_unchanged(tmp_path):
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", CFG)
    store = SqliteOffsetStore(tmp_path / "o.db")
    prod = Producer("t")
    for i in range(10):
        prod.send(mgr, b"%d" % i)
    c = Consumer("t", "g")
    c.seek(mgr, store, SeekPolicy.Committed)
    c.poll(mgr, 4)
    c.commit(store)
    c2 = Consumer("t", "g")
    c2.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c2.poll(mgr, 100)] == [b"%d" % i for i in range(4, 10)]
    assert c2.reset_by_incarnation == 0


class PlainStore:
    """A user-written store with only the protocol's two methods."""

    def __init__(self) -> None:
        self.d: dict = {}

    def committed(self, group, topic, partition):
        return self.d.get((group, topic, partition))

    def commit(self, group, topic, partition, offset):
        self.d[(group, topic, partition)] = offset


def test_should_keep_working_when_a_user_store_knows_no_incarnation():
    mgr = TopicManager(size=32 << 20)
    mgr.create("t", CFG)
    store = PlainStore()
    prod = Producer("t")
    for i in range(5):
        prod.send(mgr, b"%d" % i)
    c = Consumer("t", "g")
    c.seek(mgr, store, SeekPolicy.Committed)
    c.poll(mgr, 3)
    assert c.commit(store) == {0: 3} and store.d == {("g", "t", 0): 3}
    c2 = Consumer("t", "g")
    c2.seek(mgr, store, SeekPolicy.Committed)
    assert [m.value for _, m in c2.poll(mgr, 100)] == [b"3", b"4"]


def test_should_migrate_when_the_sqlite_file_has_the_schema_without_incarnation(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE offsets (grp TEXT NOT NULL, topic TEXT NOT NULL,
                  partition INTEGER NOT NULL, next INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
                  PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID""")
    db.execute("INSERT INTO offsets VALUES ('g', 't', 0, 7, 1)")
    db.commit()
    db.close()
    with SqliteOffsetStore(path) as store:
        assert store.committed("g", "t", 0) == 7
        assert store.committed_entry("g", "t", 0) == (7, None)
        store.commit("g", "t", 1, 3, incarnation=12345)
        assert store.committed_entry("g", "t", 1) == (3, 12345)
    with SqliteOffsetStore(path) as again:       # opening a migrated file changes nothing
        assert again.items() == {("g", "t", 0): 7, ("g", "t", 1): 3}


# ---- across processes, and after reopening a file fabric ------------------------------------
CHILD = textwrap.dedent("""
    import sys, time
    from grafos.mq.consumer import Consumer, SeekPolicy
    from grafos.mq.offset import FabricOffsetStore, SqliteOffsetStore
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicConfig, TopicManager
    step, path, kind, db = sys.argv[1:5]
    mgr = TopicManager.open(path=path, size=32 << 20)
    store = SqliteOffsetStore(db) if kind == "sqlite" else FabricOffsetStore(mgr)
    prod = Producer("t")
    if step == "commit":
        mgr.create("t", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=128,
                                    retention_secs=30))
        for i in range(10):
            prod.send(mgr, b"old-%d" % i)
        c = Consumer("t", "g")
        c.seek(mgr, store, SeekPolicy.Committed)
        assert len(c.poll(mgr, 8)) == 8
        c.commit(store)
    else:
        later = time.time() + 60
        mgr.fabric.reap(now=later)
        mgr.restart("t", now=later)
        for i in range(12):
            prod.send(mgr, b"new-%d" % i)
    mgr.close()
""")


@pytest.mark.parametrize("kind", ["sqlite", "fabric"])
def test_should_read_new_0_to_11_when_commit_and_restart_happened_in_other_processes(kind, tmp_path):
    path, db = str(tmp_path / "bus.grafos"), str(tmp_path / "offsets.db")
    for step in ("commit", "restart"):           # each in its own process: the file is reopened
        subprocess.run([sys.executable, "-c", CHILD, step, path, kind, db], check=True, timeout=120)
    with TopicManager.open(path=path, create=False) as mgr:
        store = SqliteOffsetStore(db) if kind == "sqlite" else FabricOffsetStore(mgr)
        assert store.committed("g", "t", 0) == 8
        c = Consumer("t", "g")
        c.seek(mgr, store, SeekPolicy.Committed)
        assert [m.value for _, m in c.poll(mgr, 100)] == NEW
        assert c.reset_by_incarnation == 1


def test_should_say_so_in_grafos_groups_and_describe_when_a_commit_predates_a_restart(shm_name):
    import json

    from click.testing import CliRunner

    from grafos.cli import main
    mgr = TopicManager.open(shm_name, size=32 << 20)
    try:
        mgr.create("t", CFG)
        store = FabricOffsetStore(mgr)
        _commit_8_then_restart_and_send_12(mgr, store)
        out = CliRunner().invoke(main, ["groups", shm_name, "--json"])
        assert out.exit_code == 0, out.output
        part = json.loads(out.output)["groups"][0]["partitions"][0]
        assert part["committed"] == 8 and part["stale_commit"] and part["lag"] == 12
        text = CliRunner().invoke(main, ["groups", shm_name]).output
        assert "earlier incarnation" in text
        desc = json.loads(CliRunner().invoke(main, ["describe", shm_name, "t", "--json"]).output)
        assert desc["partitions"][0]["incarnation"] == mgr.topic("t").partition_incarnation(0)
    finally:
        mgr.close()
