"""The core's return codes that callers tell apart (the error table,
:mod:`grafos._check`, maps every code to its exception)."""
from __future__ import annotations

from . import lib

INVAL: int = lib.GF_E_INVAL
FULL: int = lib.GF_E_FULL
EXPIRED: int = lib.GF_E_EXPIRED
TOOBIG: int = lib.GF_E_TOOBIG
CORRUPT: int = lib.GF_E_CORRUPT
NOTFOUND: int = lib.GF_E_NOTFOUND
ABANDONED: int = lib.GF_E_ABANDONED
BUFFER: int = lib.GF_E_BUFFER
FULL_RING: int = lib.GF_E_FULL_RING
FENCED: int = lib.GF_E_FENCED
BUSY: int = lib.GF_E_BUSY
RENEW: int = lib.GF_E_RENEW
