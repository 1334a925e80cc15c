"""Offset stores: in memory, SQLite (durable, one row per group/topic/partition,
thread-safe) and in the fabric (shared by attachments of a named bus)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from helpers.bus_helpers import make_mgr, snapshot
from grafos._native import lib
from grafos.errors import InvalidArgument, InvalidType
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore, OffsetStore, SqliteOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import MAX_OFFSET


@pytest.fixture(params=["mem", "sqlite", "fabric"])
def store(request, tmp_path, shm_name):
    kind = request.param
    if kind == "mem":
        yield MemOffsetStore()
    elif kind == "sqlite":
        s = SqliteOffsetStore(tmp_path / "offsets.db")
        yield s
        s.close()
    else:
        mgr = make_mgr("named", shm_name)
        yield FabricOffsetStore(mgr)
        mgr.close()


def test_should_follow_the_offset_store_protocol(store):
    assert isinstance(store, OffsetStore)


def test_should_return_what_was_committed_last(store):
    assert store.committed("g", "events", 0) is None
    store.commit("g", "events", 0, 10)
    store.commit("g", "events", 0, 12)
    store.commit("g", "events", 3, 4)
    store.commit("other", "events", 0, 99)
    assert store.committed("g", "events", 0) == 12
    assert store.committed("g", "events", 3) == 4
    assert store.committed("g", "events", 1) is None
    assert store.committed("other", "events", 0) == 99
    assert store.items() == {("g", "events", 0): 12, ("g", "events", 3): 4, ("other", "events", 0): 99}


def test_should_commit_many_all_or_nothing(store):
    store.commit_many("g", "t", {0: 1, 1: 2})
    with pytest.raises(InvalidArgument):
        store.commit_many("g", "t", {0: 5, 1: -1})
    with pytest.raises(InvalidType):
        store.commit_many("g", "t", {0: 5, "1": 3})
    assert store.items() == {("g", "t", 0): 1, ("g", "t", 1): 2}


def test_should_refuse_bad_input_and_change_nothing(store):
    store.commit("g", "t", 0, 1)
    before = store.items()
    bad = [
        (InvalidType, lambda: store.commit("g", "t", 0, "2")),
        (InvalidType, lambda: store.commit("g", "t", 0, 2.0)),
        (InvalidType, lambda: store.commit("g", "t", True, 2)),
        (InvalidArgument, lambda: store.commit("g", "t", 0, -1)),
        (InvalidArgument, lambda: store.commit("g", "t", 0, 1 << 48)),
        (InvalidArgument, lambda: store.commit("g", "t", -1, 2)),
        (InvalidArgument, lambda: store.commit("", "t", 0, 2)),
        (InvalidArgument, lambda: store.commit("g", "a/b", 0, 2)),
        (InvalidType, lambda: store.commit(None, "t", 0, 2)),
        (InvalidType, lambda: store.committed("g", 5, 0)),
    ]
    for exc, call in bad:
        with pytest.raises(exc):
            call()
    assert store.items() == before


def test_should_take_the_largest_offset_by_the_cores_one_bound(store):
    # one bound, one meaning: the largest offset, inclusive, in C and in Python
    assert MAX_OFFSET == lib.GF_MAX_OFFSET == (1 << lib.GF_OFFSET_BITS) - 1
    store.commit("g", "t", 0, MAX_OFFSET)
    assert store.committed("g", "t", 0) == MAX_OFFSET
    with pytest.raises(InvalidArgument):
        store.commit("g", "t", 0, MAX_OFFSET + 1)
    assert store.committed("g", "t", 0) == MAX_OFFSET


def test_should_keep_sqlite_offsets_across_restarts(tmp_path):
    path = tmp_path / "offsets.db"
    with SqliteOffsetStore(path) as s:
        s.commit("processors", "events", 2, 1234)
        s.commit_many("processors", "events", {0: 5, 1: 6})
    # a fresh process reads them back
    code = ("from grafos.mq.offset import SqliteOffsetStore as S; s = S(%r); "
            "print(s.committed('processors', 'events', 2), s.committed('processors', 'events', 0)); "
            "s.commit('processors', 'events', 2, 2000); s.close()" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["1234", "5"]
    with SqliteOffsetStore(path) as s:
        assert s.committed("processors", "events", 2) == 2000


def test_should_keep_one_sqlite_row_per_group_topic_partition_in_wal_mode(tmp_path):
    path = tmp_path / "offsets.db"
    with SqliteOffsetStore(path) as s:
        for off in range(50):
            s.commit("g", "t", off % 3, off)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT grp, topic, partition, next FROM offsets ORDER BY partition").fetchall()
    finally:
        db.close()
    assert rows == [("g", "t", 0, 48), ("g", "t", 1, 49), ("g", "t", 2, 47)]


def test_should_take_sqlite_commits_from_many_threads(tmp_path):
    with SqliteOffsetStore(tmp_path / "offsets.db", durable=False) as s:
        def work(i: int) -> None:
            for off in range(100):
                s.commit("g", "t", i, off)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert s.items() == {("g", "t", i): 99 for i in range(6)}


def test_should_refuse_a_closed_or_unusable_sqlite_store(tmp_path):
    s = SqliteOffsetStore(tmp_path / "a.db")
    s.close()
    assert s.closed
    with pytest.raises(InvalidArgument, match="closed"):
        s.commit("g", "t", 0, 1)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InvalidArgument, match="not a usable offset database"):
        SqliteOffsetStore(junk)
    with pytest.raises(InvalidType):
        SqliteOffsetStore(42)


def test_should_share_fabric_offsets_between_attachments(shm_name):
    one = TopicManager.open(shm_name, size=8 << 20)
    two = TopicManager.open(shm_name)
    try:
        FabricOffsetStore(one).commit("g", "events", 1, 77)
        assert FabricOffsetStore(two).committed("g", "events", 1) == 77
        FabricOffsetStore(two.fabric).commit("g", "events", 1, 78)
        assert FabricOffsetStore(one).committed("g", "events", 1) == 78
    finally:
        two.close()
        one.close()


def test_should_store_long_names_in_the_fabric(shm_name):
    mgr = make_mgr("named", shm_name)
    try:
        s = FabricOffsetStore(mgr)
        g, t = "g" * 64, "t" * 64
        s.commit(g, t, 4095, 1)
        s.commit(g[:-1] + "h", t, 4095, 2)        # a different long name: a different row
        assert s.committed(g, t, 4095) == 1
        assert s.items() == {(g, t, 4095): 1, (g[:-1] + "h", t, 4095): 2}
    finally:
        mgr.close()


def test_should_refuse_committing_beyond_the_end_and_change_nothing(store, shm_name):
    mgr = TopicManager(size=8 << 20)
    try:
        mgr.create("events", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128))
        prod = Producer("events")
        for _ in range(6):
            prod.send(mgr, b"x")
        c = Consumer("events", "g")
        c.seek(mgr, store, SeekPolicy.Committed)
        c.poll(mgr, 2)
        c.commit(store)
        before = snapshot(mgr, store)
        with pytest.raises(InvalidArgument, match="beyond"):
            c.commit(store, {0: 4})
        with pytest.raises(InvalidArgument):
            c.commit(store, {0: -1})
        with pytest.raises(InvalidArgument):
            c.commit(store, {5: 0})
        assert snapshot(mgr, store) == before
    finally:
        mgr.close()


def test_should_not_accept_a_non_store():
    c = Consumer("events", "g")
    with pytest.raises(InvalidType):
        c.commit({"events": 1})
