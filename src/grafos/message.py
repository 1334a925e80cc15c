"""Messages as readers see them, and the encoding of message headers."""
from __future__ import annotations

import struct
from operator import itemgetter
from typing import Sequence

from .errors import CorruptFabric, InvalidArgument, InvalidType

Headers = tuple[tuple[str, bytes], ...]


class Message(tuple):
    """One record: ``offset``, ``key`` (None if sent without one), ``value``,
    ``timestamp`` (nanoseconds since the epoch, the producer's clock) and
    ``headers`` (a tuple of (str, bytes) pairs). Frozen.

    A tuple subclass built from one 5-tuple, ``Message((offset, key, value,
    timestamp, headers))``, because that is the cheapest object CPython can make
    per message on the poll path; :meth:`make` takes keywords.
    """

    __slots__ = ()
    _fields = ("offset", "key", "value", "timestamp", "headers")

    offset: int = property(itemgetter(0), doc="offset in the partition")  # type: ignore[assignment]
    key: bytes | None = property(itemgetter(1), doc="key, None if sent without one")  # type: ignore[assignment]
    value: bytes = property(itemgetter(2), doc="value bytes")  # type: ignore[assignment]
    timestamp: int = property(itemgetter(3), doc="producer time, ns since the epoch")  # type: ignore[assignment]
    headers: Headers = property(itemgetter(4), doc="(name, bytes) pairs")  # type: ignore[assignment]

    @classmethod
    def make(cls, offset: int, key: bytes | None, value: bytes, timestamp: int,
             headers: Headers = ()) -> "Message":
        return cls((offset, key, value, timestamp, headers))

    def _asdict(self) -> dict:
        return dict(zip(self._fields, self))

    def __repr__(self) -> str:
        return ("Message(offset=%r, key=%r, value=%r, timestamp=%r, headers=%r)" % tuple(self))

    def __getnewargs__(self) -> tuple:
        return (tuple(self),)


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_HEADERS = 1024


def encode_headers(headers: Sequence[tuple[str | bytes, bytes]] | dict | None) -> bytes:
    """Headers -> bytes: u16 count, then per header u16 key length, key (utf-8),
    u32 value length, value."""
    if not headers:
        return b""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if len(items) > _MAX_HEADERS:
        raise InvalidArgument(f"{len(items)} headers; at most {_MAX_HEADERS}")
    out = [_U16.pack(len(items))]
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidType("headers must be (key, value) pairs")
        k, v = item
        kb = k.encode() if isinstance(k, str) else k
        if not isinstance(kb, bytes):
            raise InvalidType(f"header key must be str or bytes, not {type(k).__name__}")
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise InvalidType(f"header value for {k!r} must be bytes, not {type(v).__name__}")
        if len(kb) > 0xFFFF:
            raise InvalidArgument(f"header key of {len(kb)} bytes; at most 65535")
        out += [_U16.pack(len(kb)), kb, _U32.pack(len(v)), bytes(v)]
    return b"".join(out)


def decode_headers(blob: bytes) -> Headers:
    """The inverse of :func:`encode_headers`; bytes from shared memory are untrusted."""
    if not blob:
        return ()
    try:
        (n,) = _U16.unpack_from(blob, 0)
        pos, out = 2, []
        for _ in range(n):
            (kl,) = _U16.unpack_from(blob, pos)
            pos += 2
            key = blob[pos:pos + kl]
            pos += kl
            (vl,) = _U32.unpack_from(blob, pos)
            pos += 4
            if pos + vl > len(blob) or len(key) != kl:
                raise CorruptFabric("message headers run past their length")
            out.append((key.decode("utf-8", "replace"), blob[pos:pos + vl]))
            pos += vl
        if pos != len(blob):
            raise CorruptFabric("message headers have trailing bytes")
        return tuple(out)
    except struct.error as e:
        raise CorruptFabric(f"message headers are malformed: {e}") from None
