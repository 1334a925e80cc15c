"""Shared fixtures for the core tests: unique named fabrics that are always
unlinked, and the stress scale."""
from __future__ import annotations

import os
import uuid

import pytest

from grafos import Fabric


def stress_scale() -> float:
    """GRAFOS_STRESS_SCALE (float, default 1.0) scales the length of stress loops."""
    return float(os.environ.get("GRAFOS_STRESS_SCALE", "1.0"))


@pytest.fixture
def shm_name(request):
    """A fresh fabric name under /dev/shm; the fabric is unlinked afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: Fabric.unlink(name))
    return name
