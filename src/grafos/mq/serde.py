"""Serializers and deserializers of keys and values: callables a producer or
consumer is given (``value_serializer=lambda o: json.dumps(o).encode()``),
checked once when given and applied in Python, outside the crossing: a handle
without them keeps its C path. json, msgpack or pickle are the user's choice;
grafos depends on none of them."""
from __future__ import annotations

from typing import Any, Callable

from .._validate import InvalidType
from ..errors import InvalidArgument

Serializer = Callable[[Any], "bytes | bytearray | memoryview"]
Deserializer = Callable[[bytes], Any]

_BYTES_LIKE = (bytes, bytearray, memoryview)


def checked(fn: object, what: str) -> Any:
    """``fn`` if it is None or callable; InvalidType naming ``what`` otherwise."""
    if fn is not None and not callable(fn):
        raise InvalidType(f"{what} must be callable, not {type(fn).__name__}")
    return fn


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def serialize(fn: Serializer, obj: object, what: str) -> bytes | bytearray | memoryview:
    """``fn(obj)``, which must be bytes-like: InvalidArgument naming the
    serializer otherwise. What ``fn`` raises goes to the caller as it is."""
    out = fn(obj)
    if out.__class__ is bytes or isinstance(out, _BYTES_LIKE):
        return out
    raise InvalidArgument(f"{what} {_name(fn)} returned {type(out).__name__}, not bytes")


def serialize_key(fn: Serializer | None, key: object) -> object:
    """A key through ``fn``; None (no key: the partitioner decides) stays None."""
    return key if fn is None or key is None else serialize(fn, key, "key_serializer")


def serialize_value(fn: Serializer | None, value: object) -> object:
    return value if fn is None else serialize(fn, value, "value_serializer")


def add_note(error: BaseException, note: str) -> None:
    """Add ``note`` to a deserializer's own error before it propagates. Python 3.10
    has no ``add_note``; its ``__notes__`` list is what 3.11 and later show."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", ()), note]  # type: ignore[attr-defined]
