"""Keys of the fabric's metadata table for groups, dead letters and offsets.

The table takes keys of at most 96 bytes and values of at most 144. Names
(groups, topics, members) may be 64 characters each, so a key built from two
names can overflow. Every *scope* (a group on a topic, a DLQ router, an
offset row) gets a prefix that depends on its names only: the names
themselves when they are short (``g/processors/events/``), a digest of them
when they are not (``g/#3fa9c2d1e4b5a6f7/``). Records that must be listed by
name also carry the names in their value, so a digest never loses them.
"""
from __future__ import annotations

import hashlib

from .._core import layout

KEY_MAX: int = layout.META_KEY_MAX
_PREFIX_MAX = 40     # leaves 56 bytes of tail under every prefix


def digest(*parts: str) -> str:
    """16 hex digits naming ``parts`` (NUL-separated, so ("a", "bc") != ("ab", "c"))."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


def prefix(kind: str, *names: str) -> str:
    """``kind/name1/name2/`` when it is short enough, else ``kind/#<digest>/``."""
    literal = f"{kind}/{'/'.join(names)}/"
    if len(literal.encode()) <= _PREFIX_MAX:
        return literal
    return f"{kind}/#{digest(*names)}/"


def child(scope: str, tag: str, name: str) -> str:
    """``<scope><tag>/<name>``, with the name replaced by its digest if the key
    would not fit (names are validated, so they never start with '#')."""
    key = f"{scope}{tag}/{name}"
    if len(key.encode()) <= KEY_MAX:
        return key
    return f"{scope}{tag}/#{digest(name)}"


def pack_names(*names: str) -> bytes:
    """Names for a value: each as one length byte and its utf-8 bytes."""
    out = bytearray()
    for n in names:
        b = n.encode()
        out.append(len(b))
        out += b
    return bytes(out)


def unpack_names(blob: bytes, count: int) -> tuple[list[str], int]:
    """The inverse of :func:`pack_names`; returns (names, bytes used). Values come
    from shared memory: a short or damaged blob raises ValueError."""
    names, pos = [], 0
    for _ in range(count):
        if pos >= len(blob):
            raise ValueError("names run past the value")
        n = blob[pos]
        pos += 1
        if pos + n > len(blob):
            raise ValueError("names run past the value")
        names.append(blob[pos:pos + n].decode("utf-8", "replace"))
        pos += n
    return names, pos
