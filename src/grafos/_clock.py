"""Time conventions: the Python API speaks float seconds since the epoch
(like ``time.time()``); the core speaks integer nanoseconds. ``now=None``
means the real wall clock; tests pass a value to stay deterministic."""
from __future__ import annotations

import math
import time

from .errors import InvalidArgument, InvalidType


def to_ns(seconds: float | int, what: str = "time") -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidType(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if not math.isfinite(seconds):
        raise InvalidArgument(f"{what} must be finite, got {seconds!r}")
    ns = seconds * 1_000_000_000       # a float may be finite and still overflow int64 ns
    if not -(1 << 62) < ns < (1 << 62):
        raise InvalidArgument(f"{what} {seconds!r} is out of range")
    return int(ns)


def now_ns(now: float | None = None) -> int:
    return time.time_ns() if now is None else to_ns(now, "now")


def now_s(now: float | None = None) -> float:
    if now is None:
        return time.time()
    to_ns(now, "now")          # the same checks (type, finite, range) as every other time
    return float(now)
