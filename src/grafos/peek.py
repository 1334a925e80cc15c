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

Batches without a Python object per message: :meth:`Peek.arrays` gives the
values as read-only 2-D uint8 arrays over the ring, one per run of messages of
one value length (a run ends where a length changes, the ring wraps, or the
next partition starts), and :attr:`Peek.intact` one flag per message after
release:

    with reader.peek(64) as pk:
        for a in pk.arrays():                    # (messages, value bytes) each
            total += a.view(np.float32).sum()
    ok = pk.intact                               # False where overwritten in use

Lifetime: keys and headers are copied (small); values are views valid inside
the block. Release releases them: using a value afterwards raises
``ValueError``, it never reads another message's bytes. What is derived from a
value -- slices of it, ``np.frombuffer(m.value)`` -- shares its bytes through
Python's buffer protocol and cannot be revoked: those must not outlive the
block (copy with ``bytes(m.value)`` or ``np.array(...)`` what must). An object
still holding the value's buffer at release (an unfinished
``struct.iter_unpack`` over it, say) keeps the view from being released:
release then raises :class:`ViewsInUse` (a ``BufferError``), after checking
every message. The arrays of :meth:`Peek.arrays` are tracked whole: one of
them, or any slice or view of it, alive at release is reported the same way,
and once they are gone their bytes can no longer be taken.

A peek is bound to its partitions' leases: a partition deleted, restarted or
expired while peeked may have its region given to another topic, so release
reports every message of it not intact, and :meth:`Peek.arrays` raises
:class:`~grafos.errors.LeaseExpired` instead of viewing the new tenant's bytes.

The reader's position moves past the peeked messages when they are taken, as a
poll would.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ._check import raise_for
from ._crossing import Poller, Segment, Span, peek_build, peek_check, peek_release, peek_runs, peek_take
from .errors import InvalidArgument, LeaseExpired, ViewsInUse
from .message import Headers


_NONE: list = []     # an empty peek's segments and owners (never appended to)
_EAGER = 4           # peeks of up to this many messages build them at the take


class PeekedMessage:
    """One message read in place: ``value`` is a read-only memoryview into the ring;
    ``topic`` and ``partition`` say where (topic None: a bare partition's reader)."""

    __slots__ = ("partition", "offset", "timestamp", "key", "headers", "value", "intact", "topic")

    def __init__(self, partition: int, offset: int, timestamp: int, key: bytes | None,
                 headers: Headers, value: memoryview, topic: str | None = None) -> None:
        self.topic = topic
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

    __slots__ = ("_segments", "_messages", "_views", "_count", "_owners", "overwritten", "released",
                 "_bad", "_topic")

    def __init__(self, segments: list[tuple[Segment, int]], owners: list[object],
                 messages: list[PeekedMessage] | None, count: int) -> None:
        self._segments = segments      # (the crossing's rows of one ring, partition) per ring
        self._messages = messages      # built on first use when no message has a key or headers
        self._views: list[Span] = []   # under the arrays handed out
        self._count = count
        self._owners = owners          # the partitions: their rings outlive the views
        self.overwritten: list[PeekedMessage] = []
        self.released = False
        self._bad: list[tuple[int, bytes]] = []   # (first message, flags) of segments with overwrites
        self._topic: str | None = None  # what the messages say they were read from

    @classmethod
    def take(cls, sources: Sequence[tuple[int, int, object, object, int]], max_messages: int,
             poller: Poller, topic: str | None = None) -> "Peek":
        """``sources``: (partition id, the ring's index in ``poller``, the Partition
        (each segment holds it: its ring stays open), a buffer over the ring's
        slot bytes, the ring's stride) per ring; ``poller``:
        the reader's, whose rings and cursors are read (the rows are copied out
        of it before this returns: a peek may outlive its consumer)."""
        segments: list[tuple[Segment, int]] = []
        owners: list[object] = []
        count = 0
        plain = True
        for pid, index, owner, slots, stride in sources:
            left = max_messages - count
            if left <= 0:
                break
            got = peek_take(poller, index, left, slots, stride, owner)
            if got.__class__ is int:
                raise_for(got, "peek")
            seg, flat = got
            n = len(seg)
            if n:
                owners.append(owner)
                segments.append((seg, pid))
                count += n
                plain = plain and flat
        if not count:
            return cls(_NONE, _NONE, [], 0)
        pk = cls(segments, owners, None, count)
        pk._topic = topic
        # keys and headers are copied out now, while they are surely the message's
        # own; a few messages are built now too (a small peek is taken to be iterated)
        if count <= _EAGER or not plain:
            pk._messages = pk._build()
        return pk

    def _build(self) -> list[PeekedMessage]:
        out: list[PeekedMessage] = []
        for seg, pid in self._segments:
            out += peek_build(seg, pid, PeekedMessage, self._topic)
        return out

    @property
    def messages(self) -> list[PeekedMessage]:
        """The messages, in order (one ring's after another's)."""
        if self._messages is None:
            self._messages = self._build()
            if self.released:       # read first after the block: their values come released
                for m in self._messages:
                    m.value.release()
        return self._messages

    def arrays(self) -> list[np.ndarray]:
        """The values as read-only 2-D uint8 arrays over the ring, no Python object
        per message: one array per run of messages, in order, whose values have
        one length and lie evenly spaced (a run ends where a length changes, the
        ring wraps, or the next ring starts), ``(messages, value length)`` each.
        ``np.concatenate`` joins them (a copy); ``a.view(np.float32)`` reads the
        bytes as another type. Same lifetime as the values: not past the block."""
        if self.released:
            raise InvalidArgument("this peek was released: its values are no longer readable")
        for owner in self._owners:
            if not owner.alive():
                raise LeaseExpired(f"a partition of this peek was deleted, restarted or expired: its region "
                                   f"may be another topic's now ({owner!r})")
        out = []
        for seg, _ in self._segments:
            for count, view, length, step in peek_runs(seg):
                self._views.append(view)       # a Span: it counts the arrays over it
                # frombuffer holds the span's buffer for as long as any array over it
                # lives (ndarray(buffer=span) would keep only a reference)
                out.append(np.ndarray((count, length), np.uint8, np.frombuffer(view, np.uint8), 0, (step, 1)))
        return out

    @property
    def intact(self) -> np.ndarray:
        """After release: one bool per message, in order, False where it was overwritten."""
        if not self.released:
            raise InvalidArgument("intact is known when the peek is released")
        ok = np.ones(self._count, dtype=bool)
        for start, flags in self._bad:
            ok[start:start + len(flags)] = np.frombuffer(flags, dtype=np.uint8) == 1
        return ok

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[PeekedMessage]:
        return iter(self._messages if self._messages is not None else self.messages)

    def __getitem__(self, i: int) -> PeekedMessage:
        return self.messages[i]

    def release(self) -> list[PeekedMessage]:
        """Check every message (``intact``), release the views, and return those
        that were overwritten while in use. Idempotent."""
        if self.released:
            return self.overwritten
        self.released = True
        if not self._count:
            return self.overwritten
        in_use = 0
        start = 0
        for seg, _ in self._segments:
            n = len(seg)
            bad = peek_check(seg)     # also false where the lease ended
            if bad:
                self._bad.append((start, seg.flags))
                if self._messages is None:
                    # values read only through arrays: the overwritten are reported as
                    # messages too (no key or headers to read: the rows are enough)
                    self._messages = self._build()
            if self._messages is not None:
                in_use += peek_release(self._messages, start, seg, self.overwritten)
            start += n
        for view in self._views:
            try:
                view.release()
            except BufferError:
                in_use += 1
        self._views = []
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
        return f"<Peek of {self._count} messages{' released' if self.released else ''}>"
