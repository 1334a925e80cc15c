"""Shared fixtures: unique named fabrics that are always unlinked."""
from __future__ import annotations

import uuid

import pytest

from grafos import Fabric


@pytest.fixture
def shm_name(request):
    """A fresh fabric name under /dev/shm; the fabric is unlinked afterwards."""
    name = f"test-{uuid.uuid4().hex}"
    request.addfinalizer(lambda: Fabric.unlink(name))
    return name
