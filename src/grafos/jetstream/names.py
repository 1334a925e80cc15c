"""Names on the server: streams, subjects and KV keys for grafos names.

Stream names may not contain ``.`` and should stay short, while grafos names
allow ``.`` and 64 characters, so a topic (or group) is named on the server
by a token: the first 12 hex digits of its blake2b digest. The real names
travel in the records.
"""
from __future__ import annotations

import hashlib

#: KV buckets of the bus
TOPICS = "GF_TOPICS"       #: t.<tok> -> topic record (config, incarnation of each partition)
LEASES = "GF_LEASES"       #: l.<tok>.<i> -> lease record (incarnation, expiry), TTL'd by the server
GROUPS = "GF_GROUPS"       #: g.<group tok>.<tok> -> group record (config, members, claims, offsets)
DLQ = "GF_DLQ"             #: d.<source tok>.<dlq tok> -> nack counts
PRODUCERS = "GF_PRODUCERS" #: p.<transactional id tok> -> registration (epoch)
BUCKETS = (TOPICS, LEASES, GROUPS, DLQ, PRODUCERS)

STREAM_PREFIX = "GF_"


def token(name: str) -> str:
    return hashlib.blake2b(name.encode(), digest_size=6).hexdigest()


def stream(tok: str, partition: int, inc: int) -> str:
    """One stream per partition incarnation: a restarted partition is a new stream."""
    return f"{STREAM_PREFIX}{tok}_{partition}_{inc}"


def parse_stream(name: str) -> tuple[str, int, int] | None:
    """(token, partition, incarnation) of a partition stream; None for other streams."""
    if not name.startswith(STREAM_PREFIX):
        return None
    parts = name[len(STREAM_PREFIX):].split("_")
    if len(parts) != 3 or len(parts[0]) != 12:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def subject(tok: str, partition: int, inc: int) -> str:
    return f"gf.{tok}.{partition}.{inc}"


def topic_key(tok: str) -> str:
    return f"t.{tok}"


def lease_key(tok: str, partition: int) -> str:
    return f"l.{tok}.{partition}"


def group_key(group: str, topic: str) -> str:
    return f"g.{token(group)}.{token(topic)}"


def dlq_key(source: str, dlq: str) -> str:
    return f"d.{token(source)}.{token(dlq)}"


def producer_key(transactional_id: str) -> str:
    return f"p.{token(transactional_id)}"
