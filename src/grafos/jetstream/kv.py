"""JSON records in KV buckets, written with compare-and-set and per-key TTLs.

Writes go to the bucket's stream as ordinary publishes with the headers the
server checks at the stream leader: ``Nats-Expected-Last-Subject-Sequence``
(the revision the writer read; 0 for "no record") and ``Nats-TTL`` (whole
seconds, rounded up: the server's TTLs tick at 1 s). nats-py's KV helpers
truncate TTLs and allow them only on create, so they are not used here.
A deleted record is a purge marker that itself expires after a second, so
deleted keys do not pile up as tombstones.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, Awaitable, Callable, TypeVar

import nats.js.errors
from nats.js.client import JetStreamContext

# JetStream's "wrong last sequence" (the compare of compare-and-set failed); a
# cluster may report it under its own code
_WRONG_LAST = (10071, 10164)
_OP = "KV-Operation"
EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_NO_LEADER_WAIT = 10.0     # seconds a call waits for a bucket's stream to have a leader
T = TypeVar("T")


async def _led(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again while the bucket's stream answers with no responder: a
    bucket created a moment ago (or whose leader just died) has no leader yet,
    and a request nobody received changed nothing, so repeating it is safe."""
    deadline = time.monotonic() + _NO_LEADER_WAIT
    while True:
        try:
            return await call()
        except nats.js.errors.NoStreamResponseError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)


class Conflict(Exception):
    """The record changed since it was read (internal: callers retry or report)."""


def ttl_header(seconds: float) -> str:
    """A ``Nats-TTL`` value: whole seconds, at least 1, rounded up."""
    return f"{max(1, math.ceil(seconds))}s"


def subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


async def get(js: JetStreamContext, bucket: str, key: str) -> tuple[dict | None, int]:
    """(record, revision); (None, revision of the marker or 0) when there is none.
    Read at the stream leader, not a replica (replicas may serve expired keys)."""
    try:
        raw = await _led(lambda: js.get_msg(f"KV_{bucket}", subject=subject(bucket, key)))
    except nats.js.errors.NotFoundError:
        return None, 0
    hdrs = raw.headers or {}
    if hdrs.get(_OP) in ("DEL", "PURGE") or not raw.data:
        return None, raw.seq or 0
    try:
        rec = json.loads(raw.data)
    except ValueError:
        rec = None
    return (rec if isinstance(rec, dict) else None), raw.seq or 0


def encode(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode()


async def put(js: JetStreamContext, bucket: str, key: str, rec: dict[str, Any], last: int,
              ttl: float | None = None, msg_id: str | None = None) -> int:
    """Write ``rec`` if the key's revision is still ``last``; returns the new revision.
    Raises Conflict if it is not. With ``msg_id`` (the id of an earlier try of
    this very write whose answer was lost), a refusal is settled by reading the
    key back: the earlier try's message there is this write's success."""
    hdrs = {EXPECTED: str(last)}
    if ttl is not None:
        hdrs["Nats-TTL"] = ttl_header(ttl)
    if msg_id is not None:
        hdrs["Nats-Msg-Id"] = msg_id
    data = encode(rec)
    try:
        ack = await _led(lambda: js.publish(subject(bucket, key), data, headers=hdrs))
    except nats.js.errors.APIError as e:
        if e.err_code in _WRONG_LAST or "wrong last sequence" in (e.description or ""):
            if msg_id is not None:
                # the server checks the expected revision before the message id, so an
                # earlier try that landed makes this one fail: look for it
                mine = await _written(js, bucket, key, msg_id)
                if mine:
                    return mine
            raise Conflict(key) from None
        raise
    return ack.seq


async def _written(js: JetStreamContext, bucket: str, key: str, msg_id: str) -> int:
    """The revision of ``key`` if its newest message carries ``msg_id``, else 0."""
    try:
        raw = await _led(lambda: js.get_msg(f"KV_{bucket}", subject=subject(bucket, key)))
    except nats.js.errors.NotFoundError:
        return 0
    return (raw.seq or 0) if (raw.headers or {}).get("Nats-Msg-Id") == msg_id else 0


async def delete(js: JetStreamContext, bucket: str, key: str, last: int | None = None) -> None:
    """Remove the record (only if still at revision ``last`` when given): a purge
    marker that expires after a second. Raises Conflict on a changed record."""
    hdrs = {_OP: "PURGE", "Nats-Rollup": "sub", "Nats-TTL": "1s"}
    if last is not None:
        hdrs[EXPECTED] = str(last)
    try:
        await _led(lambda: js.publish(subject(bucket, key), b"", headers=hdrs))
    except nats.js.errors.APIError as e:
        if e.err_code in _WRONG_LAST or "wrong last sequence" in (e.description or ""):
            raise Conflict(key) from None
        raise


async def keys(js: JetStreamContext, bucket: str, prefix: str, pattern: str = ">") -> list[str]:
    """Keys ``prefix`` + ``pattern`` (a NATS wildcard) that have a message (deleted
    ones may show for a second)."""
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=subject(bucket, prefix) + pattern)
    subjects = info.state.subjects or {}
    cut = len(subject(bucket, ""))
    return sorted(s[cut:] for s in subjects)
