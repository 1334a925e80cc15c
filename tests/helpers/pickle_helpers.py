"""Worker functions for the pickling tests: they run in children started with
spawn, forkserver or fork, so they live in a module the child can import."""
from __future__ import annotations

from typing import Any

from grafos.errors import GrafosError
from grafos.mq.consumer import SeekPolicy
from grafos.mq.offset import FabricOffsetStore


def produce_and_consume(mgr: Any, prod: Any, cons: Any, group: Any, out: Any) -> None:
    """Use handles pickled from the parent: send 5, read everything, commit."""
    try:
        for i in range(5):
            prod.send(mgr, b"child-%d" % i)
        store = FabricOffsetStore(mgr)
        owned = group.claim("child")
        cons.assign(owned)
        cons.seek(mgr, store, SeekPolicy.Committed)
        got = sorted(m.value for _, m in cons.poll(mgr, 100))
        cons.commit(store)
        out.put(("ok", mgr.fabric.kind, got, owned, cons.assignment()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put(("error", type(e).__name__, str(e)))


def use_parents_manager(mgr: Any, out: Any) -> None:
    """A fork child using its parent's in-process manager directly."""
    try:
        from grafos.mq.topic import TopicConfig
        mgr.create("from-child", TopicConfig(1, 16, 128))
        out.put(("ok", None))
    except GrafosError as e:
        out.put(("error", type(e).__name__, str(e)))
