"""An acknowledged single send on JetStream goes out on a connection of the
caller's own, in the calling thread, without a hop to the event-loop thread;
whatever that connection cannot settle goes through the loop's connection with
the same message id."""
from __future__ import annotations

import pytest

from grafos.errors import NotFound
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.nats_helpers import count_hops


def test_a_send_makes_no_hop_to_the_event_loop(js, monkeypatch):
    js.create("d", TopicConfig(num_partitions=2))
    prod = Producer("d")
    prod.send(js, b"warm")          # the topic's routing is looked up once
    hops = count_hops(js, monkeypatch)
    got = [prod.send_keyed(js, b"k%d" % i, b"v%d" % i) for i in range(20)]
    assert hops == []
    # offsets are dense per partition, as the loop's path gives them
    for part in (0, 1):
        offs = [o for p, o in got if p == part]
        assert offs == sorted(offs) and len(set(offs)) == len(offs)
    c = Consumer("d", "g")
    c.seek(js, None, SeekPolicy.Earliest)
    msgs: list = []
    for _ in range(50):             # a server bus hands them out over several polls
        msgs += c.poll(js, 100, timeout=0.2)
        if len(msgs) >= 21:
            break
    assert sorted(m.value for _, m in msgs) == sorted([b"warm"] + [b"v%d" % i for i in range(20)])
    c.close()


@pytest.mark.parametrize("call", ["send", "send_batch"])
def test_what_the_direct_connection_cannot_settle_goes_through_the_loop(js, monkeypatch, call):
    js.create("d", TopicConfig(num_partitions=1))
    prod = Producer("d")
    prod.send(js, b"a")
    js.delete("d")                  # no stream on the subject any more: no responders
    hops = count_hops(js, monkeypatch)
    with pytest.raises(NotFound):
        prod.send(js, b"b") if call == "send" else prod.send_batch(js, [b"b", b"c"])
    assert hops                     # the loop's path said why


def test_the_direct_connection_closes_with_the_manager(nats_url):
    m = TopicManager.connect(nats_url)
    m.create("d", TopicConfig(num_partitions=1))
    Producer("d").send(m, b"x")
    sock = m._direct._sock
    assert sock is not None and sock.fileno() >= 0
    m.close()
    assert sock.fileno() == -1


def test_threads_sending_at_once_each_get_their_own_offsets(js):
    import threading
    js.create("d", TopicConfig(num_partitions=1))
    prod = Producer("d")
    got: list = []

    def send(t: int) -> None:
        for i in range(25):
            got.append(prod.send(js, b"%d-%d" % (t, i)))
    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o for _, o in got) == list(range(100))


def test_a_batch_makes_no_hop_to_the_event_loop(js, monkeypatch):
    js.create("d", TopicConfig(num_partitions=2, partition_capacity=10_000))
    prod = Producer("d")
    prod.send(js, b"warm")          # the topic's routing is looked up once
    hops = count_hops(js, monkeypatch)
    values = [b"v%d" % i for i in range(3000)]       # more than the connection keeps unanswered
    parts, offs = prod.send_batch(js, values, keys=[b"k%d" % (i % 7) for i in range(3000)])
    assert hops == []
    monkeypatch.undo()
    for part in (0, 1):
        got = sorted(int(o) for p, o in zip(parts, offs) if p == part)
        assert got == list(range(got[0], got[0] + len(got)))     # dense, each offset once
    c = Consumer("d", "g")
    c.seek(js, None, SeekPolicy.Earliest)
    by_place: dict = {}
    for _ in range(100):
        for p, m in c.poll(js, 1000, timeout=0.2):
            by_place[(p, m.offset)] = m.value
        if len(by_place) >= 3001:
            break
    assert {(int(p), int(o)): v for p, o, v in zip(parts, offs, values)}.items() <= by_place.items()
    c.close()

def _send_later(js, topic: str, value: bytes, after: float):
    import threading
    t = threading.Timer(after, lambda: Producer(topic).send(js, value))
    t.start()
    return t


def test_a_poll_waiting_on_a_pull_already_out_makes_no_hop(js, monkeypatch):
    js.create("d", TopicConfig(num_partitions=2))
    prod = Producer("d")
    c = Consumer("d", "g")
    c.seek(js, None, SeekPolicy.Latest)
    prod.send(js, b"first")
    assert [m.value for _, m in c.poll(js, 10, timeout=2.0)] == [b"first"]   # pulls are out now
    hops = count_hops(js, monkeypatch)
    t = _send_later(js, "d", b"second", 0.1)
    got = c.poll(js, 10, timeout=2.0)
    t.join()
    assert [m.value for _, m in got] == [b"second"]
    assert hops == []
    c.close()


def test_a_poll_whose_pulls_run_out_while_it_waits_asks_again(js):
    js.create("d", TopicConfig(num_partitions=1))
    c = Consumer("d", "g")
    c.seek(js, None, SeekPolicy.Latest)
    assert c.poll(js, 10, timeout=0.3) == []       # a pull out for 0.3 s, which runs out
    t = _send_later(js, "d", b"late", 1.5)          # after the next poll's first pull (1 s) ran out
    got = c.poll(js, 10, timeout=5.0)
    t.join()
    assert [m.value for _, m in got] == [b"late"]
    c.close()
