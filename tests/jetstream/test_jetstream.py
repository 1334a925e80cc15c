"""The bus on a real JetStream server: what the behaviour tests shared with the
shared-memory bus do not cover. Keys land on the same partitions on both
buses; offsets are dense from 0; overflow shows in lost(); retention is the
lease (renewed it outlives its TTL, left alone its streams are deleted by the
next look and a restart begins again at offset 0); batches; connection
errors and a server that goes away give Unavailable within the bound; an
interrupt gets through a blocking poll; the shared-memory bus never imports
nats."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import nats.errors
import numpy as np
import pytest

from helpers.bus_helpers import read_all
from grafos.errors import (Fenced, GrafosError, InvalidArgument, InvalidType, LeaseExpired, NotFound, ProducerFenced,
                           Unavailable, Unsupported)
from grafos.jetstream import KvOffsetStore
from grafos.leasekit import RenewalManager, RenewalPolicy
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import MemOffsetStore, SqliteOffsetStore
from grafos.mq.producer import Partitioner, Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.nats_helpers import NatsServer


def test_should_put_keys_on_the_partitions_kafka_and_the_shared_memory_bus_use(js):
    shm = TopicManager(size=16 << 20)
    keys = [b""] + [b"user-%d" % i for i in range(60)] + [bytes([i]) * 7 for i in range(20)]
    for n in (1, 3, 7):
        cfg = TopicConfig(num_partitions=n, partition_capacity=256, partition_stride=128)
        js.create(f"keys-{n}", cfg)
        shm.create(f"keys-{n}", cfg)
        a, b = Producer(f"keys-{n}"), Producer(f"keys-{n}")
        for k in keys:
            p, _ = a.send_keyed(js, k, b"v")
            assert p == b.send_keyed(shm, k, b"v")[0] == kafka_partition(k, n)
    shm.close()


def test_should_give_dense_offsets_from_zero_and_one_stream_per_partition(js):
    js.create("events", TopicConfig(num_partitions=3, partition_capacity=200, partition_stride=256))
    assert len(js.streams("events")) == 3
    prod = Producer("events", Partitioner.RoundRobin)
    sent = [prod.send(js, b"m%d" % i) for i in range(30)]
    per: dict[int, list[int]] = {}
    for p, off in sent:
        per.setdefault(p, []).append(off)
    assert per == {p: list(range(10)) for p in range(3)}
    parts, offs = prod.send_batch(js, [b"b%d" % i for i in range(300)])
    for p in range(3):
        assert sorted(offs[parts == p].tolist()) == list(range(10, 110))
    got = read_all(js, "events")
    assert len(got) == 330 and len({(p, m.offset) for p, m in got}) == 330


def test_should_send_keyed_batches_and_read_them_as_arrays(js):
    js.create("events", TopicConfig(num_partitions=2, partition_capacity=1000, partition_stride=128))
    keys = [b"k%d" % (i % 5) for i in range(200)]
    values = np.arange(200 * 8, dtype=np.uint8).reshape(200, 8)
    parts, offs = Producer("events").send_batch(js, values, keys)
    assert parts.tolist() == [kafka_partition(k, 2) for k in keys]
    c = Consumer("events", "g")
    c.seek(js, None, SeekPolicy.Earliest)
    seen = []
    while len(b := c.poll_batch(js, 64)):
        assert (b.value_lengths == 8).all() and b.has_keys.all()
        for (p, m) in b:
            seen.append((p, m.offset, m.key, m.value))
    assert len(seen) == 200 and c.consumed == 200
    want = {(int(p), int(o), keys[i], values[i].tobytes()) for i, (p, o) in enumerate(zip(parts, offs))}
    assert set(seen) == want


def test_should_count_what_overflow_dropped_as_lost(js):
    js.create("small", TopicConfig(num_partitions=1, partition_capacity=5, partition_stride=128))
    c = Consumer("small", "g")
    c.seek(js, None, SeekPolicy.Earliest)          # at offset 0, nothing written yet
    prod = Producer("small")
    for i in range(12):
        prod.send(js, b"%d" % i)
    d = js.describe("small").partitions[0]
    assert (d.earliest, d.latest, d.lost) == (7, 12, 7)
    got = c.poll(js, 100)
    assert [m.offset for _, m in got] == [7, 8, 9, 10, 11]
    assert c.lost() == {0: 7} and c.positions() == {0: 12}


def test_should_seek_by_policy_and_resume_from_committed_offsets_in_each_store(js, tmp_path):
    js.create("events", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
    prod = Producer("events", Partitioner.RoundRobin)
    for i in range(20):
        prod.send(js, b"%d" % i)
    for store in (MemOffsetStore(), SqliteOffsetStore(tmp_path / "o.db"), KvOffsetStore(js)):
        c = Consumer("events", "g-" + type(store).__name__.lower())
        c.seek(js, store, SeekPolicy.Committed)    # nothing committed: from the earliest
        assert len(c.poll(js, 7)) == 7
        c.commit(store)
        again = Consumer("events", c.group)
        again.seek(js, store, SeekPolicy.Committed)
        assert len(again.poll(js, 100)) == 13
        again.seek(js, store, SeekPolicy.Latest)
        assert again.poll(js, 100) == [] and again.lag(js) == {0: 0, 1: 0}
        again.seek(js, store, SeekPolicy.Earliest)
        assert len(again.poll(js, 100)) == 20
        again.seek_partition(js, 1, 9)
        assert [(p, m.offset) for p, m in again.poll(js, 100)] == [(1, 9)]
    assert {k: v for k, v in KvOffsetStore(js).items().items()} == {("g-kvoffsetstore", "events", 0): 4,
                                                                    ("g-kvoffsetstore", "events", 1): 3}


def test_should_outlive_its_ttl_while_renewed(js):
    js.create("events", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=256,
                                    retention_secs=1.0))
    prod = Producer("events", Partitioner.RoundRobin)
    for i in range(50):
        prod.send(js, b"%d" % i)
    renewals = RenewalManager(js, topic="events")
    start = time.time()
    for i in range(2):
        renewals.register(i, start + 1.0, RenewalPolicy(renew_fraction=0.8))
    while time.time() < start + 3.0:               # three TTLs
        renewals.tick()
        time.sleep(0.1)
    assert renewals.expired == []
    assert all(p.alive for p in js.describe("events").partitions)
    assert len(read_all(js, "events")) == 50
    assert len(js.streams("events")) == 2


def test_should_delete_expired_streams_on_the_next_look_and_restart_at_offset_zero(js):
    js.create("clicks", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=256,
                                    retention_secs=0.5))
    js.create("orders", TopicConfig(num_partitions=1, partition_capacity=100, partition_stride=256,
                                    retention_secs=600.0))
    prod = Producer("clicks", Partitioner.RoundRobin)
    for i in range(20):
        prod.send(js, b"old-%d" % i)
    Producer("orders").send(js, b"kept")
    c = Consumer("clicks", "g")
    c.seek(js, None, SeekPolicy.Earliest)
    time.sleep(0.7)
    d = js.describe("clicks")                      # looking deletes what expired
    assert not any(p.alive for p in d.partitions)
    assert js.streams("clicks") == [] and len(js.streams("orders")) == 1
    with pytest.raises(LeaseExpired, match="restart"):
        prod.send(js, b"late")
    assert c.poll(js, 100) == []
    js.restart("clicks")
    assert len(js.streams("clicks")) == 2
    sent = [prod.send(js, b"new-%d" % i) for i in range(4)]
    assert sorted(sent) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < 4 and time.monotonic() < deadline:
        got += c.poll(js, 100, timeout=1.0)        # the consumer follows the restart from 0
    assert sorted((p, m.offset, m.value) for p, m in got) == sorted(
        (p, off, b"new-%d" % i) for i, (p, off) in enumerate(sent))
    assert [m.value for _, m in read_all(js, "orders")] == [b"kept"]


def test_should_reap_the_streams_of_leases_dead_at_a_given_time(js):
    t0 = time.time()
    js.create("hot", TopicConfig(num_partitions=2, partition_capacity=10, partition_stride=128,
                                 retention_secs=10.0), now=t0)
    js.create("cold", TopicConfig(num_partitions=2, partition_capacity=10, partition_stride=128,
                                  retention_secs=10.0), now=t0)
    renewals = RenewalManager(js)
    ids = renewals.register_topic("hot", now=t0)
    for k in range(1, 4):
        assert renewals.tick(now=t0 + 6 * k) == ids
    later = t0 + 19
    assert [p.ttl_remaining for p in js.describe("hot", now=later).partitions] == [pytest.approx(9.0)] * 2
    assert not any(p.alive for p in js.describe("cold", now=later).partitions)
    assert js.reap(now=later) == 2
    assert js.streams("cold") == [] and len(js.streams("hot")) == 2


def test_should_refuse_bad_connection_input(nats_url):
    for bad, exc in (("localhost:4222", InvalidArgument), (42, InvalidType), ([], InvalidType),
                     ("http://127.0.0.1:1", InvalidArgument)):
        with pytest.raises(exc) as ei:
            TopicManager.connect(bad)
        assert isinstance(ei.value, GrafosError)
    with pytest.raises(InvalidArgument, match="replicas"):
        TopicManager.connect(nats_url, replicas=0)
    with pytest.raises(InvalidArgument, match="num_partitions"):
        with TopicManager.connect(nats_url) as m:
            m.create("wide", TopicConfig(num_partitions=300))


def test_should_say_unavailable_when_no_server_answers():
    from helpers.nats_helpers import free_ports
    port = free_ports(1)[0]
    t = time.monotonic()
    with pytest.raises(Unavailable, match=str(port)):
        TopicManager.connect(f"nats://127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - t < 5


def test_should_give_unavailable_within_the_bound_when_the_server_goes_away(tmp_path):
    srv = NatsServer(str(tmp_path)).start()
    try:
        mgr = TopicManager.connect(srv.url, timeout=1.0)
        mgr.create("events", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
        prod = Producer("events")
        prod.send_keyed(mgr, b"k", b"before")
        c = Consumer("events", "g")
        c.seek(mgr, None, SeekPolicy.Earliest)
        assert len(c.poll(mgr, 10)) == 1
        srv.kill()
        for call in (lambda: prod.send_keyed(mgr, b"k", b"after"),
                     lambda: prod.send_batch(mgr, [b"a", b"b"]),
                     lambda: c.poll(mgr, 10, timeout=0.2),
                     lambda: c.poll(mgr, 10),
                     lambda: mgr.describe("events"),
                     lambda: mgr.create("other")):
            t = time.monotonic()
            with pytest.raises(Unavailable):
                call()
            assert time.monotonic() - t < 6, call
        srv.start()                                # the client reconnects on its own
        deadline = time.monotonic() + 10
        while True:
            try:
                prod.send_keyed(mgr, b"k", b"again")
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        values = [m.value for _, m in read_all(mgr, "events")]
        assert values[0] == b"before" and values[-1] == b"again"
        mgr.close()
    finally:
        srv.stop()


def test_should_let_an_interrupt_through_a_blocking_poll(nats_url, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from grafos.mq.topic import TopicManager, TopicConfig
        from grafos.mq.consumer import Consumer, SeekPolicy
        mgr = TopicManager.connect({nats_url!r})
        mgr.create("quiet", TopicConfig(num_partitions=1))
        c = Consumer("quiet", "g")
        c.seek(mgr, None, SeekPolicy.Latest)
        print("polling", flush=True)
        try:
            c.poll(mgr, 10, timeout=None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            mgr.close()
            sys.exit(3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "polling"
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 3
        assert proc.stdout.read().strip() == "interrupted"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_should_share_one_producer_between_threads(js):
    import threading
    js.create("events", TopicConfig(num_partitions=4, partition_capacity=10_000, partition_stride=128))
    prod = Producer("events", Partitioner.RoundRobin)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                prod.send(js, b"%d:%d" % (t, i))
            prod.send_batch(js, [b"%d:b%d" % (t, i) for i in range(100)])
        except BaseException as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert [p.latest for p in js.describe("events").partitions] == [200] * 4


def test_should_raise_not_found_for_a_deleted_topic(js):
    js.create("events", TopicConfig(num_partitions=1))
    prod = Producer("events")
    prod.send(js, b"x")
    c = Consumer("events", "g")
    c.seek(js, None, SeekPolicy.Earliest)
    js.delete("events")
    assert js.streams("events") == [] and js.topics() == []
    with pytest.raises(NotFound, match="events"):
        prod.send(js, b"y")
    with pytest.raises(NotFound, match="events"):
        c.seek(js, None, SeekPolicy.Earliest)


def refuse_placement(monkeypatch: pytest.MonkeyPatch, mgr: Any, times: int, reason: str) -> list[str]:
    """The next ``times`` stream creations are refused as a cluster refuses a
    stream it cannot place ("no suitable peers for placement, <reason>"), then
    the server's own answer follows. Returns the name of every stream asked for."""
    from nats.js.errors import APIError
    asked: list[str] = []
    left = [times]
    real = mgr.js.add_stream

    async def add_stream(config: Any = None, **kw: Any) -> Any:
        asked.append(config.name)
        if left[0] > 0:
            left[0] -= 1
            raise APIError(code=500, err_code=10005, description=f"no suitable peers for placement, {reason}")
        return await real(config, **kw)
    monkeypatch.setattr(mgr.js, "add_stream", add_stream)
    return asked


def test_should_create_a_topic_once_an_offline_peer_is_back(js, monkeypatch):
    asked = refuse_placement(monkeypatch, js, 3, "peer offline")
    js.create("events", TopicConfig(num_partitions=1))
    assert len(asked) == 4 and len(set(asked)) == 1
    assert js.topics() == ["events"] and len(js.streams("events")) == 1


def test_should_refuse_at_once_a_topic_the_cluster_cannot_place(js, monkeypatch):
    asked = refuse_placement(monkeypatch, js, 100, "insufficient resources")
    with pytest.raises(InvalidArgument, match="insufficient resources"):
        js.create("events", TopicConfig(num_partitions=1))
    assert len(asked) == 1
    assert js.topics() == [] and js.streams("events") == []


def test_should_say_unavailable_while_a_peer_stays_offline(nats_url, monkeypatch):
    mgr = TopicManager.connect(nats_url, timeout=0.5)
    try:
        refuse_placement(monkeypatch, mgr, 10**6, "peer offline")
        with pytest.raises(Unavailable, match="creating topic 'events'"):
            mgr.create("events", TopicConfig(num_partitions=1))
        assert mgr.topics() == []
    finally:
        mgr.close()


# ---- idempotent and fenced producers ---------------------------------------------------------
def lose_acks(monkeypatch: pytest.MonkeyPatch, mgr: Any, count: int) -> list[str]:
    """The next ``count`` publishes to a partition land on the server, but their
    acknowledgements are lost: the client sees a timeout, as when a connection
    drops after the write. Returns the Nats-Msg-Id of every partition publish."""
    import asyncio
    ids: list[str] = []
    left = [count]
    real, real_async = mgr.js.publish, mgr.js.publish_async

    async def publish(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        ack = await real(subject, payload, **kw)
        if subject.startswith("gf."):
            ids.append(kw["headers"]["Nats-Msg-Id"])
            if left[0] > 0:
                left[0] -= 1
                raise nats.errors.TimeoutError
        return ack

    async def publish_async(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        fut = await real_async(subject, payload, **kw)
        if not subject.startswith("gf."):
            return fut
        ids.append(kw["headers"]["Nats-Msg-Id"])
        if left[0] <= 0:
            return fut
        left[0] -= 1
        lost = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: lost.set_exception(nats.errors.TimeoutError()))
        return lost

    monkeypatch.setattr(mgr.js, "publish", publish)
    monkeypatch.setattr(mgr.js, "publish_async", publish_async)
    if mgr._direct is not None:     # single sends go out on the caller's own connection
        real_direct = mgr._direct._publish

        def direct(subject: str, payload: bytes, msg_id: str, *rest: Any) -> Any:
            seq = real_direct(subject, payload, msg_id, *rest)
            if subject.startswith("gf."):
                ids.append(msg_id)
                if left[0] > 0:
                    left[0] -= 1
                    raise TimeoutError("the acknowledgement was lost")
            return seq
        monkeypatch.setattr(mgr._direct, "_publish", direct)
        real_pipeline = mgr._direct._pipeline

        def pipeline(items: list, out: list) -> None:       # a batch's answers, some lost
            real_pipeline(items, out)
            for j, (subject, _, msg_id) in enumerate(items):
                if subject.startswith("gf."):
                    ids.append(msg_id)
                    if left[0] > 0 and out[j] is not None:
                        left[0] -= 1
                        out[j] = None
        monkeypatch.setattr(mgr._direct, "_pipeline", pipeline)
    return ids


@pytest.mark.parametrize("kind", [{}, {"idempotent": True}, {"transactional_id": "worker-1"}])
def test_should_write_once_and_return_the_original_offset_when_an_ack_is_lost(js, monkeypatch, kind):
    js.create("out", TopicConfig(num_partitions=1, partition_capacity=100, partition_stride=128))
    prod = Producer("out", **kind)
    assert prod.send(js, b"first") == (0, 0)
    ids = lose_acks(monkeypatch, js, 1)
    assert prod.send(js, b"second") == (0, 1)          # the retry was told the original offset
    assert len(ids) == 2 and ids[0] == ids[1]           # one message id, published twice
    assert prod.send(js, b"third") == (0, 2)
    if prod.idempotent:                                 # <instance>.<epoch>.<partition>.<sequence>
        assert ids[0].split(".")[1:] == ["0", "0", "1"]
    assert [(m.offset, m.value) for _, m in read_all(js, "out")] == [(0, b"first"), (1, b"second"),
                                                                     (2, b"third")]


@pytest.mark.parametrize("kind", [{}, {"idempotent": True}])
def test_should_write_a_batch_once_when_some_of_its_acks_are_lost(js, monkeypatch, kind):
    js.create("out", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
    prod = Producer("out", Partitioner.RoundRobin, **kind)
    ids = lose_acks(monkeypatch, js, 3)
    values = [b"v%d" % i for i in range(10)]
    parts, offs = prod.send_batch(js, values)
    assert len(ids) == 13 and len(set(ids)) == 10       # three messages published twice
    got = {(p, m.offset): m.value for p, m in read_all(js, "out")}
    assert len(got) == 10
    assert {(int(p), int(o)): v for p, o, v in zip(parts, offs, values)} == got


def test_should_number_an_idempotent_producers_messages_per_partition(js, monkeypatch):
    js.create("out", TopicConfig(num_partitions=2, partition_capacity=100, partition_stride=128))
    prod = Producer("out", Partitioner.RoundRobin, idempotent=True)
    ids = lose_acks(monkeypatch, js, 0)
    for i in range(4):
        prod.send(js, b"%d" % i)
    prod.send_batch(js, [b"b0", b"b1"])
    assert [i.split(".")[2:] for i in ids] == [["0", "0"], ["1", "0"], ["0", "1"], ["1", "1"],
                                               ["0", "2"], ["1", "2"]]
    assert len({i.split(".")[0] for i in ids}) == 1


def test_should_fence_the_older_instance_of_a_transactional_id(js, nats_url):
    js.create("out", TopicConfig(num_partitions=1, partition_capacity=100, partition_stride=128))
    old = Producer("out", transactional_id="worker-1")
    assert old.send(js, b"a") == (0, 0)                 # the first send registers: epoch 0
    assert js.register(old) == 0
    with TopicManager.connect(nats_url) as other:       # the new instance, on its own connection
        new = Producer("out", transactional_id="worker-1")
        assert other.register(new) == 1
        with pytest.raises(ProducerFenced) as e:
            old.send(js, b"zombie")
        assert isinstance(e.value, Fenced)
        assert (e.value.transactional_id, e.value.topic, e.value.epoch, e.value.current_epoch) == \
            ("worker-1", "out", 0, 1)
        with pytest.raises(ProducerFenced):
            old.send_batch(js, [b"z1", b"z2"])
        assert new.send(other, b"b") == (0, 1)
        third = Producer("out", transactional_id="worker-1")
        assert third.send(js, b"c") == (0, 2)           # registered by its first send: epoch 2
        with pytest.raises(ProducerFenced, match="epoch is 1"):
            new.send_keyed(other, b"k", b"late")
        with pytest.raises(ProducerFenced):             # a fenced producer stays fenced
            old.send(js, b"again")
    assert [m.value for _, m in read_all(js, "out")] == [b"a", b"b", b"c"]


def test_should_not_fence_idempotent_producers_or_other_transactional_ids(js):
    js.create("out", TopicConfig(num_partitions=1, partition_capacity=100, partition_stride=128))
    a, b = Producer("out", idempotent=True), Producer("out", idempotent=True)
    x, y = Producer("out", transactional_id="x"), Producer("out", transactional_id="y")
    assert js.register(a) == js.register(b) == js.register(x) == js.register(y) == 0
    for p in (a, b, x, y, a, b, x, y):
        p.send(js, b"m")
    assert js.describe("out").partitions[0].latest == 8


def test_should_say_transactions_are_unsupported_and_why(js):
    js.create("out", TopicConfig(num_partitions=1))
    prod = Producer("out", transactional_id="worker-1")
    with pytest.raises(Unsupported, match="atomic batch commits messages to one stream") as e:
        js.begin(prod)
    assert isinstance(e.value, NotImplementedError)
    assert js.describe("out").partitions[0].latest == 0


def test_should_find_the_servers_atomic_batches_confined_to_one_stream(nats_url):
    """What keeps transactions off this bus: a batch over two streams is refused
    and none of it is stored (one stream takes it whole)."""
    import asyncio
    import json

    import nats
    from nats.js import api

    async def probe() -> tuple[dict, dict, list[int]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for name in ("TXA", "TXB"):
            await js.add_stream(api.StreamConfig(name=name, subjects=[name.lower()], allow_atomic=True))
        await nc.publish("txa", b"1", headers={"Nats-Batch-Id": "one", "Nats-Batch-Sequence": "1"})
        one = await nc.request("txa", b"2", timeout=5, headers={
            "Nats-Batch-Id": "one", "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"})
        await nc.publish("txa", b"1", headers={"Nats-Batch-Id": "two", "Nats-Batch-Sequence": "1"})
        two = await nc.request("txb", b"2", timeout=5, headers={
            "Nats-Batch-Id": "two", "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"})
        counts = [(await js.stream_info(n)).state.messages for n in ("TXA", "TXB")]
        await nc.close()
        return json.loads(one.data), json.loads(two.data), counts

    one, two, counts = asyncio.run(probe())
    assert one.get("count") == 2 and "error" not in one
    assert "error" in two and "incomplete" in two["error"]["description"]
    assert counts == [2, 0]


def test_should_not_import_nats_on_the_shared_memory_bus():
    code = ("import sys\n"
            "from grafos.mq.topic import TopicManager, TopicConfig\n"
            "from grafos.mq import producer, consumer, group, dlq, offset\n"
            "from grafos import leasekit, demo\n"
            "from grafos.cli import main\n"
            "m = TopicManager(size=8 << 20); m.create('t', TopicConfig(1, 64, 128)); producer.Producer('t').send(m, b'x')\n"
            "assert not [n for n in sys.modules if n == 'nats' or n.startswith('nats.')], 'nats imported'\n"
            "assert 'grafos.jetstream' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr



def test_should_run_the_jetstream_benchmark_against_raw_nats_py(nats_url, tmp_path):
    import json

    from click.testing import CliRunner

    from grafos.cli import main
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--nats", nats_url, "--quick", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [row["scenario"].split(" (")[0] for row in rows] == ["publish", "pipelined publish", "fetch",
                                                                 "group round trip", "wait then poll"]
    assert all(row["grafos_per_s"] > 0 and row["raw_per_s"] > 0 and row["messages"] > 0 for row in rows)
    with TopicManager.connect(nats_url) as m:      # it cleaned up after itself
        assert m.topics() == []


def _count_hops(mgr: Any) -> list[int]:
    """Counts the calls that run a coroutine on the bus's loop thread (a hop there and back)."""
    hops = [0]
    real = mgr.loop.run

    def counting(*args: Any, **kw: Any) -> Any:
        hops[0] += 1
        return real(*args, **kw)
    mgr.loop.run = counting
    return hops


def test_a_wait_should_make_one_hop_to_the_loop_however_many_slices_it_lasts(js):
    js.create("waits", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=256))
    c = Consumer("waits", "g")
    c.seek(js, None, SeekPolicy.Latest)
    hops = _count_hops(js)
    t0 = time.monotonic()
    assert c.wait(js, 2.6) is False             # nothing sent: three slices of waiting
    assert time.monotonic() - t0 >= 2.5
    assert hops[0] == 1
    hops[0] = 0
    Producer("waits").send_keyed(js, b"k", b"v")
    assert c.wait(js, 5.0) is True              # a pull is out on every partition: no hop at all
    assert hops[0] <= 1
    assert [m.value for _, m in c.poll(js, 10)] == [b"v"]
    c.close()


def test_closing_the_bus_should_end_a_wait_without_a_deadline(nats_url):
    import threading
    from grafos.errors import Closed
    mgr = TopicManager.connect(nats_url)
    mgr.create("closing", TopicConfig(num_partitions=1, partition_capacity=64, partition_stride=256))
    c = Consumer("closing", "g")
    c.seek(mgr, None, SeekPolicy.Latest)
    out: list[BaseException | bool] = []

    def wait() -> None:
        try:
            out.append(c.wait(mgr, None))
        except BaseException as e:  # noqa: BLE001 - what the wait ended with is the result
            out.append(e)
    t = threading.Thread(target=wait)
    t.start()
    time.sleep(1.5)                             # into the second slice of the wait
    mgr.close()
    t.join(10)
    assert not t.is_alive(), "the wait outlived the bus"
    assert len(out) == 1 and isinstance(out[0], Closed), out


def test_an_awaited_poll_should_wait_in_one_hop_and_end_when_its_task_is_cancelled(js):
    import asyncio
    import threading

    from grafos.aio import AsyncConsumer
    js.create("awaits", TopicConfig(num_partitions=2, partition_capacity=64, partition_stride=256))
    c = Consumer("awaits", "g")
    c.seek(js, None, SeekPolicy.Latest)
    hops = _count_hops(js)
    submit = js.loop.submit

    def counting_submit(*args: Any, **kw: Any) -> Any:
        hops[0] += 1
        return submit(*args, **kw)
    js.loop.submit = counting_submit

    async def main() -> list:
        ac = AsyncConsumer(c, js)
        assert await ac.poll(10, timeout=1.3) == []         # six slices of the shared-memory wait
        empty_hops = hops[0]
        task = asyncio.ensure_future(ac.poll(10, timeout=None))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        threading.Timer(0.3, lambda: Producer("awaits").send_keyed(js, b"k", b"late")).start()
        got = await asyncio.wait_for(ac.poll(10, timeout=None), 10.0)
        return [empty_hops, [m.value for _, m in got]]

    empty_hops, values = asyncio.run(main())
    assert empty_hops <= 3          # a poll, one wait, a poll
    assert values == [b"late"]      # the cancelled wait took nothing
    c.close()
