"""A lease's entry points, by (index, id), for callers that hold the metadata
lock already (:class:`grafos.fabric.MemLease` is the handle that takes it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._check import check
from . import ffi, lib

if TYPE_CHECKING:
    from ..fabric import Fabric


def acquire(fabric: "Fabric", size: int, expires_ns: int, owner_tag: int, now_ns: int,
            context: str = "") -> tuple[int, int]:
    """Lease ``size`` bytes until ``expires_ns``; its (index, id)."""
    out = ffi.new("gf_lease_info *")
    check(lib.gf_lease_acquire(fabric.handle, size, expires_ns, owner_tag, now_ns, out), context)
    return out.index, out.id


def renew(fabric: "Fabric", index: int, lease_id: int, expires_ns: int, now_ns: int) -> None:
    check(lib.gf_lease_renew(fabric.handle, index, lease_id, expires_ns, now_ns))


def release(fabric: "Fabric", index: int, lease_id: int) -> int:
    """Give the region back; the core's return code (a lease already gone is no error here)."""
    return lib.gf_lease_release(fabric.handle, index, lease_id)


def alive(fabric: "Fabric", index: int, lease_id: int, now_ns: int) -> bool:
    """The lease is alive at ``now_ns`` (False too if it is gone or never was)."""
    return lib.gf_lease_check(fabric.handle, index, lease_id, now_ns) == 1
