"""The conformance suite: one set of behaviour tests run on every backend.

Every test here takes the ``bus`` fixture and runs four times: on an
in-process bus, on named shared memory, on a bus in a file, and on a real
NATS JetStream server started by the suite. A difference by design is a
capability of the backend (``bus.caps``, the product's own
``mgr.capabilities``): a test of a capability a backend lacks checks that the
backend refuses it clearly (``Unsupported``), it never skips.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from grafos.mq.offset import FabricOffsetStore, MemOffsetStore
from grafos.mq.topic import TopicManager

BACKENDS = ["inproc", "named", "file", "jetstream"]


@dataclass
class Bus:
    """One bus under test: ``mgr`` and how to reach the same bus again."""

    kind: str                      #: "inproc", "named", "file" or "jetstream"
    mgr: Any                       #: the manager the test uses
    attach: Callable[[], Any]      #: another manager on the same bus (the same object in process)
    address: str | None            #: what another process opens (a name, a path or a URL); None in process

    @property
    def caps(self) -> Any:
        return self.mgr.capabilities

    @property
    def shared_memory(self) -> bool:
        return self.kind != "jetstream"

    def store(self, mgr: Any = None) -> Any:
        """The offset store a group on this bus shares between its members."""
        m = self.mgr if mgr is None else mgr
        if self.kind == "jetstream":
            from grafos.jetstream import KvOffsetStore
            return KvOffsetStore(m)
        if self.kind == "inproc":
            return FabricOffsetStore(m)
        return FabricOffsetStore(m)

    def mem_store(self) -> MemOffsetStore:
        return MemOffsetStore()


@pytest.fixture(params=BACKENDS)
def bus(request, tmp_path):
    kind = request.param
    opened: list = []

    def keep(m: Any) -> Any:
        opened.append(m)
        return m

    if kind == "inproc":
        mgr = keep(TopicManager(size=64 << 20))
        b = Bus(kind, mgr, lambda: mgr, None)
    elif kind == "named":
        from grafos import Fabric
        name = f"test-{uuid.uuid4().hex}"
        request.addfinalizer(lambda: Fabric.unlink(name))
        mgr = keep(TopicManager.open(name, size=64 << 20))
        b = Bus(kind, mgr, lambda: keep(TopicManager.open(name)), name)
    elif kind == "file":
        path = str(tmp_path / "bus.grafos")
        mgr = keep(TopicManager.open(path=path, size=64 << 20))
        b = Bus(kind, mgr, lambda: keep(TopicManager.open(path=path)), path)
    else:
        url = request.getfixturevalue("nats_url")
        mgr = keep(TopicManager.connect(url))
        b = Bus(kind, mgr, lambda: keep(TopicManager.connect(url)), url)
    yield b
    for m in reversed(opened):
        try:
            m.close()
        except Exception:   # noqa: BLE001 - a test may have closed it already
            pass
