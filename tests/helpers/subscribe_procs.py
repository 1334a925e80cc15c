"""Worker processes of the subscribe tests (spawned, so they live in an
importable module and take only picklable arguments).

A worker subscribes to a topic as ``member`` and writes what happens to two
files, one ``os.write`` of whole lines at a time (appends from several
processes keep their order): its rebalance callbacks to ``events``, and the
``(partition, offset)`` of every message a poll returned to ``seen``, before
it polls again (so before that poll's auto-commit).
"""
from __future__ import annotations

import os
import time
from typing import Any


def open_bus(kind: str, address: str) -> Any:
    from grafos.mq.topic import TopicManager
    return TopicManager.connect(address) if kind == "jetstream" else TopicManager.open(address)


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def member(kind: str, address: str, topic: str, name: str, events: str, seen: str, stop: Any,
           batch: int = 50, pause: float = 0.0, session_timeout: float = 5.0) -> None:
    mgr = open_bus(kind, address)
    store_of = {}

    def on_revoke(parts: list[int]) -> None:
        # auto_commit committed the positions just before: the next owner starts there
        store = store_of["store"]
        sub = store_of["sub"]
        same = all(store.committed(sub.group, topic, p) == sub.position(p) for p in parts)
        _append(events, f"{name} revoke {','.join(map(str, parts))} {'committed' if same else 'NOT-committed'}\n")

    def on_assign(parts: list[int]) -> None:
        _append(events, f"{name} assign {','.join(map(str, parts))}\n")

    sub = mgr.subscribe(topic, group="workers", member=name, on_assign=on_assign, on_revoke=on_revoke,
                        heartbeat_interval=0.05, session_timeout=session_timeout)
    store_of["sub"], store_of["store"] = sub, sub.store
    try:
        while not stop.is_set():
            got = sub.poll(batch, timeout=0.05)
            if got:
                _append(seen, "".join(f"{p} {m.offset}\n" for p, m in got))
                if pause:
                    time.sleep(pause)
    finally:
        sub.close()
        mgr.close()
