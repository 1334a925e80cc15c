"""A message as stored in a stream: one payload carrying what grafos keeps
per message (producer timestamp, key or none, headers, value), so the NATS
headers carry only the server's own control headers.

Layout: i64 timestamp (ns), i32 key length (-1: no key), u32 headers length,
then the key, the headers (:func:`grafos.message.encode_headers`) and the
value. Payloads come from the network: a malformed one raises CorruptFabric
naming the message, never a struct error.
"""
from __future__ import annotations

import struct

from ..errors import CorruptFabric
from ..message import Message, decode_headers

_make = tuple.__new__

_HEAD = struct.Struct("<qiI")
SIZE = _HEAD.size
_pack = _HEAD.pack
_unpack = _HEAD.unpack_from


def encode(ts: int, key: bytes | None, hdrs: bytes, value: bytes) -> bytes:
    if key is None:
        return _pack(ts, -1, len(hdrs)) + hdrs + value
    return b"".join((_pack(ts, len(key), len(hdrs)), key, hdrs, value))


def head(offset: int, data: bytes) -> tuple[int, int, int]:
    """(timestamp, key length or -1, headers length), checked against the payload."""
    try:
        ts, kl, hl = _unpack(data)
    except struct.error:
        raise CorruptFabric(f"message at offset {offset} is not a grafos message "
                            f"({len(data)} bytes)") from None
    if kl < -1 or SIZE + max(kl, 0) + hl > len(data):
        raise CorruptFabric(f"message at offset {offset} is damaged (lengths run past its end)")
    return ts, kl, hl


def decode(offset: int, data: bytes, topic: str | None = None, partition: int | None = None) -> Message:
    try:
        ts, kl, hl = _unpack(data)
    except struct.error:
        raise CorruptFabric(f"message at offset {offset} is not a grafos message "
                            f"({len(data)} bytes)") from None
    pos = SIZE
    if kl < 0:
        key = None
    else:
        key = data[pos:pos + kl]
        pos += kl
    if pos + hl > len(data) or kl < -1:
        raise CorruptFabric(f"message at offset {offset} is damaged (lengths run past its end)")
    hdrs = decode_headers(data[pos:pos + hl]) if hl else ()
    return _make(Message, (offset, key, data[pos + hl:], ts, hdrs, topic, partition))
