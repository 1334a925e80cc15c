"""Several processes create-or-attach the same named fabric at the same
moment: exactly one creates it, all end up on that one valid fabric."""
from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest

from grafos import Fabric

from helpers.core_procs import open_in_race

PROCS = 4
ROUNDS = 8
SIZE = 4 << 20


@pytest.fixture
def race_names():
    names = [f"test-{uuid.uuid4().hex}" for _ in range(ROUNDS)]
    yield names
    for n in names:
        Fabric.unlink(n)


def test_concurrent_create_or_attach_ends_on_one_valid_fabric(race_names):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCS)
    out = ctx.Queue()
    procs = [ctx.Process(target=open_in_race, args=(race_names, SIZE, barrier, i, out))
             for i in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(PROCS * ROUNDS)]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * PROCS
    errors = [r for r in results if r[4] is not None]
    assert errors == []
    for name in race_names:
        mine = [r for r in results if r[0] == name]
        assert sorted(r[1] for r in mine) == list(range(PROCS))
        assert sum(1 for r in mine if r[2]) == 1, f"{name}: not exactly one creator: {mine}"
        assert {r[3] for r in mine} == {SIZE}
        with Fabric.open(name, create=False) as fab:
            # everyone's marks are on the one fabric that exists under the name
            for i in range(PROCS):
                assert fab.meta_get(f"proc-{i}") is not None
            leases = fab.leases()
            assert sorted(ls.info().owner_tag for ls in leases) == list(range(1, PROCS + 1))
            for ls in leases:
                assert ls.read(0, 6) == f"proc-{ls.info().owner_tag - 1}".encode()
