"""A fenced group commit on JetStream is one compare-and-set written from the
caller's thread on its blocking connection; what that connection cannot
settle goes through the loop as the same write, and a write the server
already took is found by reading the record back, never applied twice."""
from __future__ import annotations

import time

import pytest

from grafos.errors import Fenced, Unavailable
from grafos.jetstream import KvOffsetStore
from grafos.jetstream import kv, names
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from helpers.nats_helpers import NatsServer, count_hops

T0 = 1_000_000.0
STALE = 30.0


def _record(mgr, group: str, topic: str) -> tuple[dict, int]:
    got = mgr.run(kv.get(mgr.js, names.GROUPS, names.group_key(group, topic)), "reading")
    return got[0] or {}, got[1]


def _member(mgr, topic: str = "rt"):
    mgr.create(topic, TopicConfig(num_partitions=1, partition_capacity=1000, partition_stride=128))
    group = ConsumerGroup("g", topic, 1, STALE, mgr=mgr)
    store = KvOffsetStore(mgr)
    c = group.consumer("m")
    c.assign(group.claim("m"))
    c.seek(mgr, store, SeekPolicy.Latest)
    return group, store, c


def _wrap_direct(mgr, monkeypatch, before=None, after=None) -> list[str]:
    """Calls of the direct connection's publish, with ``before``/``after`` run around it."""
    calls: list[str] = []
    inner = mgr._direct._publish

    def publish(subject, payload, *args):
        if not subject.startswith("$KV."):
            return inner(subject, payload, *args)
        calls.append(subject)
        if before is not None:
            before()
        out = inner(subject, payload, *args)
        if after is not None:
            after()
        return out
    monkeypatch.setattr(mgr._direct, "_publish", publish)
    return calls


def _take_one(mgr, c) -> None:
    while not c.poll(mgr, 1, timeout=1.0):
        pass


def test_a_group_round_trip_commits_without_a_hop_to_the_event_loop(js, monkeypatch):
    _, store, c = _member(js)
    prod = Producer("rt")
    prod.send(js, b"warm")
    _take_one(js, c)
    c.commit(store)                      # the member's first commit reads the record
    hops = count_hops(js, monkeypatch)
    for i in range(5):
        prod.send(js, b"m%d" % i)
        _take_one(js, c)
        before = list(hops)
        assert c.commit(store) == {0: 2 + i}
        assert hops == before
    other = TopicManager.connect(js.servers[0])
    try:
        assert KvOffsetStore(other).committed("g", "rt", 0) == 6
    finally:
        other.close()


def test_a_commit_whose_answer_is_lost_is_found_on_the_server_and_not_written_again(js, monkeypatch):
    _, store, c = _member(js)
    Producer("rt").send_batch(js, [b"a", b"b"])
    _take_one(js, c)
    assert c.commit(store) == {0: 1}
    _, rev = _record(js, "g", "rt")

    def lose_the_answer() -> None:
        raise OSError("the connection broke after the server took the write")
    calls = _wrap_direct(js, monkeypatch, after=lose_the_answer)
    _take_one(js, c)
    assert c.commit(store) == {0: 2}
    assert len(calls) == 1               # the direct write went out once and was not answered
    rec, rev2 = _record(js, "g", "rt")
    assert rec["offsets"] == {"0": 2}
    assert rev2 == rev + 1               # one write: the one the server took
    monkeypatch.undo()
    hops = count_hops(js, monkeypatch)  # the member's copy is the server's: the next commit is one write
    assert c.commit(store) == {0: 2}
    assert hops == []
    assert _record(js, "g", "rt")[1] == rev + 2


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "loop"])
def test_a_stale_copy_is_fenced_the_same_through_the_direct_connection_or_the_loop(nats_url, monkeypatch, direct):
    ma, mb = TopicManager.connect(nats_url), TopicManager.connect(nats_url)
    try:
        ma.create("rt", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
        if not direct:
            ma._direct.close()
            monkeypatch.setattr(ma, "_direct", None)
        ga = ConsumerGroup("g", "rt", 2, STALE, mgr=ma)
        gb = ConsumerGroup("g", "rt", 2, STALE, mgr=mb)
        sa, sb = KvOffsetStore(ma), KvOffsetStore(mb)
        ga.claim("a", now=T0)
        ga.commit(sa, "a", "rt", {0: 1, 1: 1}, now=T0)
        calls = _wrap_direct(ma, monkeypatch) if direct else []
        gb.claim("b", now=T0 + STALE + 1)                # b takes both; a's copy is stale
        with pytest.raises(Fenced) as ei:
            ga.commit(sa, "a", "rt", {0: 2, 1: 2}, now=T0 + STALE + 1)
        assert (ei.value.partitions, ei.value.committed, ei.value.owners) == ([0, 1], {}, {0: "b", 1: "b"})
        assert [sb.committed("g", "rt", p) for p in (0, 1)] == [1, 1]
        if direct:
            assert calls                                 # the refused write went out directly first
    finally:
        ma.close()
        mb.close()


def test_a_server_that_goes_away_mid_commit_gives_unavailable_and_the_commit_lands_after(tmp_path, monkeypatch):
    srv = NatsServer(str(tmp_path)).start()
    try:
        mgr = TopicManager.connect(srv.url, timeout=2.0)
        _, store, c = _member(mgr)
        Producer("rt").send_batch(mgr, [b"a", b"b"])
        _take_one(mgr, c)
        c.commit(store)
        _take_one(mgr, c)
        calls = _wrap_direct(mgr, monkeypatch, before=srv.kill)
        t = time.monotonic()
        with pytest.raises(Unavailable):
            c.commit(store)
        assert time.monotonic() - t < 10
        assert len(calls) == 1
        monkeypatch.undo()
        srv.start()                                      # the client reconnects on its own
        deadline = time.monotonic() + 15
        while True:
            try:
                assert c.commit(store) == {0: 2}
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        other = TopicManager.connect(srv.url)
        try:
            assert KvOffsetStore(other).committed("g", "rt", 0) == 2
        finally:
            other.close()
        mgr.close()
    finally:
        srv.stop()


def test_threads_committing_through_one_group_object_each_land_every_commit(js):
    import threading
    js.create("rt", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
    group = ConsumerGroup("g", "rt", 2, STALE, mgr=js)
    store = KvOffsetStore(js)
    assert group.claim("a", now=T0) == [0, 1]
    errors: list = []
    seen: dict[int, list[int]] = {0: [], 1: []}

    def commits(p: int) -> None:
        try:
            for off in range(1, 41):
                group.commit(store, "a", "rt", {p: off}, now=T0)
                seen[p].append(store.committed("g", "rt", p))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=commits, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert seen == {0: list(range(1, 41)), 1: list(range(1, 41))}   # no commit lost to the other's
    assert _record(js, "g", "rt")[0]["offsets"] == {"0": 40, "1": 40}
