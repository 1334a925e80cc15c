"""Return codes of the native core -> exceptions, in one table."""
from __future__ import annotations

from typing import NoReturn

from . import errors
from ._core import ffi, lib

_TABLE: dict[int, type[errors.GrafosError]] = {
    lib.GF_E_INVAL: errors.InvalidArgument,
    lib.GF_E_FULL: errors.FabricFull,
    lib.GF_E_EXPIRED: errors.LeaseExpired,
    lib.GF_E_TOOBIG: errors.MessageTooLarge,
    lib.GF_E_CORRUPT: errors.CorruptFabric,
    lib.GF_E_NOTFOUND: errors.NotFound,
    lib.GF_E_EXISTS: errors.AlreadyExists,
    lib.GF_E_IO: errors.FabricIOError,
    lib.GF_E_VERSION: errors.FabricVersionError,
    lib.GF_E_TIMEOUT: errors.LockTimeout,
    lib.GF_E_NOLOCK: errors.NotLocked,
    lib.GF_E_ABANDONED: errors.SlotAbandoned,
    lib.GF_E_PERM: errors.PermissionDenied,
    lib.GF_E_BUFFER: errors.BufferTooSmall,
    lib.GF_E_NOSPACE: errors.NoSpace,
    lib.GF_E_FULL_RING: errors.BufferFull,
    lib.GF_E_FENCED: errors.ProducerFenced,
    lib.GF_E_DUPLICATE: errors.InvalidArgument,
}


def last_error() -> str:
    return ffi.string(lib.gf_last_error()).decode("utf-8", "replace")


def raise_for(rc: int, context: str = "") -> NoReturn:
    cls = _TABLE.get(rc, errors.GrafosError)
    msg = last_error() or f"native error {rc}"
    raise cls(f"{context}: {msg}" if context else msg)


def check(rc: int, context: str = "") -> int:
    """Return rc when it is not an error code, raise the mapped exception otherwise."""
    if rc < 0:
        raise_for(rc, context)
    return rc
