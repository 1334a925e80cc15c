"""Process bodies for the gc-versus-attach race (``test_gc.py``): importable by
multiprocessing "spawn" children, picklable arguments only."""
from __future__ import annotations

import random
import time

from grafos import Fabric
from grafos.errors import GrafosError, NotFound
from grafos.fabric import probe, shm_path


def attach_loop(name: str, worker: int, seconds: float, ready, go, out) -> None:
    """Open the bus (making it when missing), write a key, and look for it through a
    fresh open by name while the first handle is still open: a handle on a file gc
    removed writes where no later opener looks."""
    ready.put(True)
    go.wait(60)
    opens = split = 0
    errors: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with Fabric.open(name, size=4 << 20) as fab:
                key = f"w{worker}-{opens}"
                fab.meta_put(key, b"1")
                opens += 1
                try:
                    with Fabric.open(name, create=False) as other:
                        seen = other.meta_get(key) is not None
                except NotFound:
                    seen = False
                split += not seen
                fab.meta_del(key)
        except GrafosError as e:
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(random.uniform(0, 0.003))     # leave the bus idle now and then: gc's moment
    out.put(("attach", worker, opens, split, errors[:3], len(errors)))


def gc_loop(name: str, seconds: float, ready, go, out) -> None:
    """``grafos gc NAME --yes`` as fast as it goes."""
    ready.put(True)
    go.wait(60)
    removed = probes = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            removed += probe(shm_path(name), remove_if_idle=True).removed
            probes += 1
        except NotFound:
            pass
    out.put(("gc", removed, probes))
