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
