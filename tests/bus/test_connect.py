"""``grafos.connect``: one call that opens a bus, whichever backend holds it, and
the package that exports the bus (the README's walkthrough imports from it)."""
from __future__ import annotations

import pytest

import grafos
from grafos import TopicConfig, TopicManager
from grafos.errors import GrafosError, InvalidArgument, InvalidType
from grafos.mq.model import Bus


def _roundtrip(mgr: Bus) -> None:
    mgr.create("t", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=256))
    p, off = mgr.producer("t").send_keyed(b"k", b"v")
    c = mgr.consumer("t", partitions=[p])
    c.seek("earliest")
    assert [(q, m.value) for q, m in c.poll(10, timeout=5.0)] == [(p, b"v")]
    assert off == 0


def test_connect_should_open_each_kind_of_bus(shm_name, tmp_path):
    with grafos.connect() as mgr:
        assert repr(mgr) == "<TopicManager in-process>"
        _roundtrip(mgr)
    with grafos.connect(shm_name, size=8 << 20) as mgr:
        assert repr(mgr) == f"<TopicManager named {shm_name!r}>"
        _roundtrip(mgr)
    path = str(tmp_path / "bus.grafos")
    with grafos.connect(path, size=8 << 20) as mgr:
        assert repr(mgr) == f"<TopicManager file {path!r}>"
        _roundtrip(mgr)


def test_connect_should_open_the_bus_on_a_server(nats_url):
    mgr = grafos.connect(nats_url)
    try:
        assert isinstance(mgr, Bus) and not mgr.capabilities.shared_memory
        _roundtrip(mgr)
        mgr.delete("t")
    finally:
        mgr.close()


def test_connect_should_refuse_what_names_no_bus():
    for bad, exc in ((42, InvalidType), ("http://127.0.0.1:1", InvalidArgument), ([], InvalidType)):
        with pytest.raises(exc) as ei:
            grafos.connect(bad)
        assert isinstance(ei.value, GrafosError)
    # the manager's spelling takes server URLs only: a name is not one
    with pytest.raises(InvalidArgument, match="not a NATS server URL"):
        TopicManager.connect("localhost:4222")


def test_the_package_should_export_the_bus():
    import grafos.mq
    names = ["TopicManager", "TopicConfig", "Producer", "Partitioner", "Consumer", "SeekPolicy", "ConsumerGroup",
             "DlqRouter", "MemOffsetStore", "SqliteOffsetStore", "FabricOffsetStore", "OffsetStore", "Message", "Bus"]
    for name in names:
        assert getattr(grafos, name) is getattr(grafos.mq, name), name
        assert name in grafos.__all__
    assert grafos.RenewalManager is grafos.leasekit.RenewalManager
    assert "connect" in grafos.__all__ and callable(grafos.connect)
