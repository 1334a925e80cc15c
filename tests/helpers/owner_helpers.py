"""An owner as the core knows one (csrc/layout.h, "owners"): a token whose byte,
GF_OWNER_LOCK_BASE + token of the fabric's file, some open file description
holds an OFD write lock on. Lets a test stand in for a live or dead holder of
the metadata lock without a real one."""
from __future__ import annotations

import fcntl
import os
import struct

from grafos._native import lib

_FLOCK = struct.Struct("hhqqi4x")     # struct flock on Linux x86-64 / aarch64


def hold(path: str, token: int) -> int:
    """Hold ``token`` alive for as long as the returned descriptor is open."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, lib.GF_OWNER_LOCK_BASE + token, 1, 0))
    return fd


def alive(path: str, token: int) -> bool:
    """Does some open file description hold ``token``?"""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK,
                          _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, lib.GF_OWNER_LOCK_BASE + token, 1, 0))
    finally:
        os.close(fd)
    return _FLOCK.unpack(out)[0] != fcntl.F_UNLCK


def write_holder(path: str, token: int, pid: int) -> None:
    """Write ``token`` into the lock word and ``pid`` beside it, as a holder would."""
    with open(path, "r+b") as f:
        f.seek(64)
        f.write(struct.pack("<II", token, pid))
