"""Messages as readers see them, and the encoding of message headers."""
from __future__ import annotations

import struct
from operator import itemgetter
from typing import Sequence, Union

from .errors import CorruptFabric, InvalidArgument, InvalidType

Headers = tuple[tuple[str, bytes], ...]


class Message(tuple):
    """One record: ``offset``, ``key`` (None if sent without one), ``value``,
    ``timestamp`` (nanoseconds since the epoch, the producer's clock),
    ``headers`` (a tuple of (str, bytes) pairs), and where it was read:
    ``topic`` and ``partition``. Frozen.

    A tuple subclass, because that is the cheapest object CPython can make per
    message on the poll path; :meth:`make` takes keywords. Every message a
    consumer hands out (``poll``, a Batch's iteration, the JetStream backend,
    ``read_committed`` reads) carries its topic and partition; a message read
    from a bare :class:`~grafos.partition.Partition` has topic None and
    partition 0. ``Message((offset, key, value, timestamp, headers))`` built
    by hand has topic and partition None (give a 7-tuple to set them); a
    pickled message keeps both. Equality is a tuple's: two messages are equal
    when all seven fields are.
    """

    __slots__ = ()
    _fields = ("offset", "key", "value", "timestamp", "headers", "topic", "partition")

    offset: int = property(itemgetter(0), doc="offset in the partition")  # type: ignore[assignment]
    key: bytes | None = property(itemgetter(1), doc="key, None if sent without one")  # type: ignore[assignment]
    value: bytes = property(itemgetter(2), doc="value bytes")  # type: ignore[assignment]
    timestamp: int = property(itemgetter(3), doc="producer time, ns since the epoch")  # type: ignore[assignment]
    headers: Headers = property(itemgetter(4), doc="(name, bytes) pairs")  # type: ignore[assignment]
    topic: str | None = property(itemgetter(5), doc="topic it was read from")  # type: ignore[assignment]
    partition: int | None = property(itemgetter(6), doc="partition it was read from")  # type: ignore[assignment]

    def __new__(cls, fields: Sequence, /) -> "Message":
        fields = tuple(fields)
        if len(fields) == 5:
            return tuple.__new__(cls, fields + (None, None))
        if len(fields) != 7:
            raise InvalidArgument(f"a Message is built from (offset, key, value, timestamp, headers"
                                  f"[, topic, partition]), not {len(fields)} fields")
        return tuple.__new__(cls, fields)

    @classmethod
    def make(cls, offset: int, key: bytes | None, value: bytes, timestamp: int,
             headers: Headers = (), topic: str | None = None, partition: int | None = None) -> "Message":
        return tuple.__new__(cls, (offset, key, value, timestamp, headers, topic, partition))

    def _replace_kv(self, key: object, value: object) -> "Message":
        """This message with another key and value (what deserializers made)."""
        return tuple.__new__(type(self), (self[0], key, value, self[3], self[4], self[5], self[6]))

    def _asdict(self) -> dict:
        return dict(zip(self._fields, self))

    def __repr__(self) -> str:
        return ("Message(topic=%r, partition=%r, offset=%r, key=%r, value=%r, timestamp=%r, headers=%r)"
                % (self[5], self[6], self[0], self[1], self[2], self[3], self[4]))

    def __getnewargs__(self) -> tuple:
        return (tuple(self),)


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_HEADERS = 1024


#: what a send takes as headers: (key, value) pairs or a dict, keys str or bytes
SendHeaders = Union[Sequence[tuple[Union[str, bytes], bytes]], dict[str, bytes], dict[bytes, bytes], None]


def encode_headers(headers: SendHeaders) -> bytes:
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
