"""Argument checks shared by the public classes: each names what was wrong."""
from __future__ import annotations

import re
from typing import Any

from .errors import InvalidArgument, InvalidType

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def name(value: Any, what: str = "name", max_len: int = 64) -> str:
    if not isinstance(value, str):
        raise InvalidType(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(f"{what} {value!r} is longer than {max_len} characters")
    if ".." in value or not _NAME.match(value):
        raise InvalidArgument(
            f"{what} {value!r} may only use letters, digits, '.', '_' and '-' "
            "(no '/', no '..', not starting with '.' or '-')")
    return value


def integer(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{what} must be an int, not {type(value).__name__}")
    if lo is not None and value < lo:
        raise InvalidArgument(f"{what} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise InvalidArgument(f"{what} must be <= {hi}, got {value}")
    return value


def number(value: Any, what: str, lo: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidType(f"{what} must be a number, not {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{what} must be finite, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise InvalidArgument(f"{what} must be {'>' if lo_open else '>='} {lo}, got {value}")
    return float(value)


def timeout(value: Any, what: str = "timeout") -> float | None:
    """Seconds to wait: None (forever) or a number; NaN would make a deadline that
    never passes, so it is refused (inf is allowed: forever)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidType(f"{what} must be a number of seconds or None, not {type(value).__name__}")
    if value != value:
        raise InvalidArgument(f"{what} must not be NaN")
    return value


def as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        try:
            return bytes(value)
        except (ValueError, TypeError, BufferError) as e:   # a released view, a broken exporter
            raise InvalidArgument(f"{what}: its buffer cannot be read ({e})") from None
    if isinstance(value, str):
        raise InvalidType(f"{what} must be bytes, not str (encode it first)")
    raise InvalidType(f"{what} must be bytes, not {type(value).__name__}")
