"""A blocking connection of the caller's own for acknowledged publishes.

A synchronous ``send`` through the event-loop thread pays two thread
hand-overs per call (to the loop, and the answer back), which take about as
long as the acknowledged publish itself; so does each compare-and-set write
of a group's record (a publish with an expected last sequence), and a
batch's publishes pay nats-py's per-message future on the loop besides.
:class:`DirectPublisher` speaks the NATS protocol's few lines a publish
needs (``CONNECT``, ``SUB``, ``HPUB``, the reply ``MSG``) on a plain socket,
in the calling thread, under a lock; a batch goes out pipelined, at most
``WINDOW`` unanswered. It only takes the happy path: anything else (no
answer in time, no responders, an error from the server, a closed socket, a
server that wants TLS or credentials) returns ``None`` for what it did not
settle and the caller publishes that through the loop, with the same
``Nats-Msg-Id``, so a message the server did take is deduplicated (a
compare-and-set that the server took fails its expected sequence when sent
again, so the record writer reads the record back and finds its own id).
One thread at a time uses the connection; a send of another thread
meanwhile goes through the loop.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

#: after a failed connect, publishes go through the loop for this long
RETRY_AFTER = 1.0
#: pipelined publishes: at most this many unanswered, written this many at a time
WINDOW = 2000
CHUNK = 250


class DirectPublisher:
    """Publishes to the server ``where()`` names (``(host, port)``, or None: none
    to use), waiting ``timeout`` seconds at most for an acknowledgement."""

    def __init__(self, where: Callable[[], tuple[str, int] | None], timeout: float) -> None:
        self.where, self.timeout = where, timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = b""
        self._pid = 0
        self._next = 0
        self._inbox = b""
        self._down_until = 0.0
        self._closed = False

    def publish(self, subject: str, payload: bytes, msg_id: str,
                headers: dict[str, str] | None = None) -> int | None:
        """The stream sequence of the acknowledged message, or None (publish
        through the loop instead). ``headers`` go out beside ``Nats-Msg-Id``
        (the server's checks, such as an expected last sequence: a refusal is
        None too, and the loop's path says why). A send while another
        thread's is in flight here goes through the loop too, so threads'
        sends still overlap."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed or (self._sock is None and time.monotonic() < self._down_until):
                return None
            if self._sock is None or self._pid != os.getpid():
                self._connect()
            return self._publish(subject, payload, msg_id, headers)
        except (OSError, ValueError, KeyError, TypeError):
            self._drop()
            return None
        finally:
            self._lock.release()

    def publish_many(self, items: list[tuple[str, bytes, str]]) -> list[int | None]:
        """Pipelined publishes of (subject, payload, msg_id): each one's stream
        sequence, or None where this connection did not settle it (publish
        those through the loop with the same ids). All None while another
        thread uses the connection."""
        out: list[int | None] = [None] * len(items)
        if not self._lock.acquire(blocking=False):
            return out
        try:
            if self._closed or (self._sock is None and time.monotonic() < self._down_until):
                return out
            if self._sock is None or self._pid != os.getpid():
                self._connect()
            self._pipeline(items, out)
        except (OSError, ValueError, KeyError, TypeError):
            self._drop()
        finally:
            self._lock.release()
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    # ---- the protocol --------------------------------------------------------------
    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = b""

    def _connect(self) -> None:
        self._drop()
        self._down_until = time.monotonic() + RETRY_AFTER
        server = self.where()
        if server is None:
            raise ValueError("no server to connect to")
        sock = socket.create_connection(server, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._pid = sock, os.getpid()
        line = self._line()
        if not line.startswith(b"INFO "):
            raise ValueError("no INFO from the server")
        info = json.loads(line[5:])
        if info.get("auth_required") or info.get("tls_required") or not info.get("headers"):
            self._closed = True     # this connection cannot serve: the loop's does, always
            raise ValueError("the server wants what the direct path does not speak")
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "lang": "python-grafos", "version": "1"}
        self._inbox = f"_INBOX.{uuid.uuid4().hex}".encode()
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nSUB " + self._inbox +
                     b".* 1\r\nPING\r\n")
        while (line := self._line()) != b"PONG":
            if line.startswith(b"-ERR"):
                raise ValueError(line.decode(errors="replace"))
        self._down_until = 0.0

    def _publish(self, subject: str, payload: bytes, msg_id: str,
                 headers: dict[str, str] | None) -> int | None:
        assert self._sock is not None
        self._next += 1
        reply = self._inbox + b".%d" % self._next
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + b"\r\n" + extra.encode() + b"\r\n"
        self._sock.settimeout(self.timeout)
        self._sock.sendall(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(), reply, len(hdr), len(hdr) + len(payload), hdr, payload))
        while True:
            line = self._line()
            if line == b"PING":
                self._sock.sendall(b"PONG\r\n")
                continue
            if line in (b"PONG", b"+OK") or line.startswith(b"INFO "):
                continue        # an INFO: the server's news about its cluster
            parts = line.split()
            if not parts or parts[0] not in (b"MSG", b"HMSG"):
                raise ValueError(line.decode(errors="replace"))   # -ERR or anything unknown
            body = self._read(int(parts[-1]) + 2)[:-2]
            if parts[1] != reply:
                continue        # not ours: an answer to nothing we wait for
            if parts[0] == b"HMSG":
                return None     # a status (no responders: 503): the loop's path says why
            ack: Any = json.loads(body)
            if "error" in ack or not isinstance(ack.get("seq"), int):
                return None
            return ack["seq"]

    def _pipeline(self, items: list[tuple[str, bytes, str]], out: list[int | None]) -> None:
        """Send ``items`` with at most ``WINDOW`` unanswered, filling ``out`` from the answers."""
        assert self._sock is not None
        sock = self._sock
        sock.settimeout(self.timeout)
        n = len(items)
        first = self._next + 1
        self._next += n
        prefix = self._inbox + b"."
        answered = bytearray(n)
        sent = waiting = 0
        while sent < n or waiting:
            if sent < n and waiting < WINDOW:
                end = min(n, sent + CHUNK)
                chunk = []
                for j in range(sent, end):
                    subject, payload, msg_id = items[j]
                    hdr = b"NATS/1.0\r\nNats-Msg-Id: " + msg_id.encode() + b"\r\n\r\n"
                    chunk.append(b"HPUB %s %s%d %d %d\r\n%s%s\r\n" % (
                        subject.encode(), prefix, first + j, len(hdr), len(hdr) + len(payload), hdr, payload))
                sock.sendall(b"".join(chunk))
                waiting += end - sent
                sent = end
                continue
            line = self._line()
            if line == b"PING":
                sock.sendall(b"PONG\r\n")
                continue
            if line in (b"PONG", b"+OK") or line.startswith(b"INFO "):
                continue
            parts = line.split()
            if not parts or parts[0] not in (b"MSG", b"HMSG"):
                raise ValueError(line.decode(errors="replace"))
            body = self._read(int(parts[-1]) + 2)[:-2]
            if not parts[1].startswith(prefix):
                continue
            j = int(parts[1][len(prefix):]) - first
            if not 0 <= j < n or answered[j]:
                continue        # an answer to an earlier call's publish
            answered[j] = 1
            waiting -= 1
            if parts[0] == b"HMSG":
                continue        # a status (no responders): the loop's path says why
            ack: Any = json.loads(body)
            if "error" not in ack and isinstance(ack.get("seq"), int):
                out[j] = ack["seq"]

    def _line(self) -> bytes:
        while (i := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line, self._buf = self._buf[:i], self._buf[i + 2:]
        return line

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise OSError("the server closed the connection")
        if len(self._buf) > 1 << 24:
            raise ValueError("an answer larger than any acknowledgement")
        self._buf += chunk
