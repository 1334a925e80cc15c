"""Shared fixtures: unique named fabrics that are always unlinked, and the
processes a multi-process test starts, killed at teardown."""
from __future__ import annotations

import os
import signal
import uuid

import pytest

from grafos import Fabric


@pytest.fixture
def shm_name(request):
    """A fresh fabric name under /dev/shm; the fabric is unlinked afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: Fabric.unlink(name))
    return name


@pytest.fixture
def procs():
    """Processes a test starts; any still alive at teardown are killed by PID."""
    started: list = []
    yield started
    for p in started:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
        p.join(10)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One ``nats-server -js`` for the run (started on first use, stopped by PID)."""
    from helpers.nats_helpers import NatsServer
    srv = NatsServer(str(tmp_path_factory.mktemp("nats"))).start()
    yield srv
    srv.stop()


@pytest.fixture
def nats_url(nats_server):
    """The server's URL; every stream and bucket a test made is deleted after it."""
    from helpers.nats_helpers import wipe
    yield nats_server.url
    wipe(nats_server.url)
