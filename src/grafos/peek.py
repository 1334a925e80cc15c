"""Zero-copy reads: a :class:`Peek` holds messages whose values are views into
the ring itself, nothing copied.

    with consumer.peek(mgr, 16) as msgs:         # or reader.peek(16)
        for m in msgs:
            process(np.frombuffer(m.value, np.float32))   # m.value: a read-only memoryview
    if msgs.overwritten:                         # checked on leaving the block
        ...                                      # these were overwritten while in use

A ring overwrites its oldest messages whatever its readers do, so a value read
in place can change under the reader. Leaving the block (or
:meth:`Peek.release`) checks every message: ``m.intact`` is True if no writer
touched its slots while it was in use, False if one did (its bytes may be torn
or another message's: discard what was computed from them), and
:attr:`Peek.overwritten` lists the latter. The check is exact in one direction:
a message reported intact was not overwritten.

Lifetime: keys and headers are copied (small); values are views valid inside
the block. Release releases them: using a value afterwards raises
``ValueError``, it never reads another message's bytes. What is derived from a
value -- slices of it, ``np.frombuffer(m.value)`` -- shares its bytes through
Python's buffer protocol and cannot be revoked: those must not outlive the
block (copy with ``bytes(m.value)`` or ``np.array(...)`` what must). An object
still holding the value's buffer at release (an unfinished
``struct.iter_unpack`` over it, say) keeps the view from being released:
release then raises :class:`ViewsInUse` (a ``BufferError``), after checking
every message.

The reader's position moves past the peeked messages when they are taken, as a
poll would.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from ._check import raise_for
from ._crossing import peek_check, peek_rows
from .errors import GrafosError
from .message import Headers



class ViewsInUse(GrafosError, BufferError):
    """A peeked value is still exported (a numpy array or slice of it is alive) at release."""


class PeekedMessage:
    """One message read in place: ``value`` is a read-only memoryview into the ring."""

    __slots__ = ("partition", "offset", "timestamp", "key", "headers", "value", "intact")

    def __init__(self, partition: int, offset: int, timestamp: int, key: bytes | None,
                 headers: Headers, value: memoryview) -> None:
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.headers = headers
        self.value = value
        self.intact: bool | None = None     #: set at release

    def __repr__(self) -> str:
        return (f"<PeekedMessage partition={self.partition} offset={self.offset} "
                f"{self.value.nbytes if self.intact is None else '-'} B intact={self.intact}>")


class Peek:
    """Messages read in place from one or more rings; see the module doc."""

    __slots__ = ("messages", "_owners", "overwritten", "released", "_checks", "_flags")

    def __init__(self, messages: list[PeekedMessage], owners: list[object],
                 checks: list[tuple[int, int, int]] | None = None, flags: int = 0) -> None:
        self.messages = messages
        self._owners = owners          # the partitions: their rings outlive the views
        self.overwritten: list[PeekedMessage] = []
        self.released = False
        self._checks = checks or []    # (ring, first message, count) per ring, in order
        self._flags = flags            # the address of the reader's scratch for the release check

    @classmethod
    def take(cls, sources: Sequence[tuple[int, int, int, object, int, int, int]], max_messages: int,
             meta: int, flags: int) -> "Peek":
        """``sources``: (partition id, ring address, cursor address, Partition, the
        address of the ring's first slot byte, how many bytes a message may span
        from there, the ring's stride) per ring; ``meta``: the address of a
        ``gf_msg_meta[]`` and ``flags`` of a ``uint8_t[]``, both of at least
        ``max_messages``, the reader's to reuse (``meta``'s rows are read before
        this returns, ``flags`` only inside :meth:`release`)."""
        out: list[PeekedMessage] = []
        checks: list[tuple[int, int, int]] = []
        owners: list[object] = []
        for pid, ring, cursor, owner, base, limit, stride in sources:
            left = max_messages - len(out)
            if left <= 0:
                break
            got = peek_rows(ring, cursor, left, meta, base, limit, stride, pid, PeekedMessage)
            if got.__class__ is int:
                raise_for(got, "peek")
            if got:
                owners.append(owner)
                checks.append((ring, len(out), len(got)))
                out += got
        return cls(out, owners, checks, flags)

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[PeekedMessage]:
        return iter(self.messages)

    def __getitem__(self, i: int) -> PeekedMessage:
        return self.messages[i]

    def release(self) -> list[PeekedMessage]:
        """Check every message (``intact``), release the views, and return those
        that were overwritten while in use. Idempotent."""
        if self.released:
            return self.overwritten
        self.released = True
        if not self.messages:
            return self.overwritten
        in_use = 0
        for ring, start, count in self._checks:
            in_use += peek_check(ring, self.messages, start, count, self._flags, self.overwritten)
        self._checks = []
        self._flags = 0
        self._owners = []
        if in_use:
            raise ViewsInUse(f"{in_use} peeked value(s) are still held by other objects (numpy arrays or "
                             "slices of them) at release: copy what must outlive the peek")
        return self.overwritten

    def __enter__(self) -> "Peek":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Peek of {len(self.messages)} messages{' released' if self.released else ''}>"
