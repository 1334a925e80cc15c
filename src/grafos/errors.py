"""One exception hierarchy for grafos.

Every error the library raises is a :class:`GrafosError`; where a builtin
fits, the class is also that builtin (``MessageTooLarge`` is a ``ValueError``,
``LockTimeout`` a ``TimeoutError``), so callers can catch either.
"""
from __future__ import annotations

import errno
import queue
from typing import Mapping, Sequence


class GrafosError(Exception):
    """Base of every grafos error."""


class _Fields:
    """Mixin of an error made from a message and keyword fields: ``_pickled``
    names the fields that survive pickling (multiprocessing hands errors
    between processes), rebuilt through the class's own ``__init__``."""

    _pickled: tuple[str, ...] = ()

    def __reduce__(self):  # noqa: ANN204
        return (_rebuild, (type(self), str(self), {f: getattr(self, f) for f in self._pickled}))


class InvalidArgument(GrafosError, ValueError):
    """An argument was out of range or of the wrong kind."""


class Closed(InvalidArgument):
    """The handle (a manager, its fabric, a consumer) was closed; as with Python's
    closed files, using it is a ValueError."""


class InvalidType(GrafosError, TypeError):
    """An argument had the wrong type."""


class FabricFull(GrafosError):
    """No room: the arena, the lease table or the metadata table is full."""


class NoSpace(FabricFull, OSError):
    """The filesystem holding the fabric cannot reserve the pages a lease or the
    fabric's tables need (``errno`` is ``ENOSPC``). Raised when the space is
    handed out, so no later write can fault on a full filesystem."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


class SpaceWarning(UserWarning):
    """A fabric was created larger than the free space of the filesystem holding it."""


class LeaseExpired(GrafosError):
    """The lease expired (or was released and reclaimed)."""


class MessageTooLarge(GrafosError, ValueError):
    """A message does not fit a partition slot."""

    def __init__(self, message: str, size: int = -1, room: int = -1) -> None:
        super().__init__(message)
        self.size = size
        self.room = room


class CorruptFabric(GrafosError):
    """Shared memory failed validation: not a fabric, damaged, or hostile."""


class FabricVersionError(CorruptFabric):
    """The fabric was written by another layout version."""


class NotFound(GrafosError, LookupError):
    """No such fabric, topic, lease or entry."""


class AlreadyExists(GrafosError):
    """A fabric or topic of that name exists already."""


class FabricIOError(GrafosError, OSError):
    """A system call on the fabric failed."""


class LockTimeout(GrafosError, TimeoutError):
    """The metadata lock stayed held by a live process past the timeout."""


class NotLocked(GrafosError):
    """A metadata call was made without holding the metadata lock (a bug)."""


class SlotAbandoned(GrafosError):
    """A write took longer than the bounded wait and readers skipped its slot."""


class PermissionDenied(GrafosError, PermissionError):
    """The fabric's owner or mode is not trusted (see ``trust_any``)."""


class BufferTooSmall(GrafosError, ValueError):
    """A read buffer cannot hold even one message."""


class BufferFull(GrafosError, queue.Full):
    """A partition has no room: a gating reader has not read the slot the message
    would overwrite (a topic with ``on_full="raise"``, or a blocking send whose
    timeout passed). Nothing was written."""


class QueueFull(GrafosError, queue.Full):
    """A put to a grafos.Queue found no room (maxsize reached, or its ring full)
    within its timeout (also a queue.Full). Nothing was put."""


class QueueEmpty(GrafosError, queue.Empty):
    """A get from a grafos.Queue found nothing within its timeout (also a queue.Empty)."""


class QueueClosed(GrafosError, ValueError):
    """A put or get on a grafos.Queue this process has closed (also a ValueError)."""


class Fenced(_Fields, GrafosError):
    """A consumer-group member lost partitions to another member: its commit for
    them was refused. ``partitions`` are the fenced ones, ``owners`` who owns
    each now (None: nobody), ``committed`` what was committed for the others."""

    _pickled = ("group", "topic", "member", "partitions", "owners", "committed")

    def __init__(self, message: str = "", *, group: str = "", topic: str = "", member: str = "",
                 partitions: Sequence[int] = (), owners: Mapping[int, str | None] | None = None,
                 committed: Mapping[int, int] | None = None) -> None:
        self.group = group
        self.topic = topic
        self.member = member
        self.partitions = sorted(partitions)
        self.owners = dict(owners or {})
        self.committed = dict(committed or {})
        if not message:
            message = (f"member {member!r} of group {group!r} no longer owns partition(s) "
                       f"{self.partitions} of {topic!r} (owners now: {self.owners}); "
                       f"committed only {sorted(self.committed)}")
        super().__init__(message)


class ProducerFenced(Fenced):
    """An idempotent or transactional producer was fenced: another instance
    registered with the same ``transactional_id`` (a higher epoch), or its
    registration expired. The call wrote nothing; the producer is unusable and
    a new one must be made (which fences in turn)."""

    _pickled = ("transactional_id", "topic", "epoch", "current_epoch")

    def __init__(self, message: str = "", *, transactional_id: str = "", topic: str = "",
                 epoch: int = -1, current_epoch: int = -1) -> None:
        self.transactional_id = transactional_id
        self.epoch = epoch
        self.current_epoch = current_epoch
        if not message:
            message = (f"producer {transactional_id!r} of topic {topic!r} was fenced: its epoch is {epoch}, "
                       f"the registration's is now {current_epoch}; nothing was written")
        super().__init__(message, topic=topic)


class OffsetOutOfRange(_Fields, GrafosError, LookupError):
    """A committed offset the ring no longer holds (overwritten before the group
    read it), met by a ``Committed`` seek of a consumer made with
    ``on_lost="raise"`` (Kafka's ``auto.offset.reset=none``). ``partition``,
    ``committed`` and ``earliest`` (the oldest offset still held) say where."""

    _pickled = ("topic", "group", "partition", "committed", "earliest")

    def __init__(self, message: str = "", *, topic: str = "", group: str = "", partition: int = -1,
                 committed: int = -1, earliest: int = -1) -> None:
        self.topic = topic
        self.group = group
        self.partition = partition
        self.committed = committed
        self.earliest = earliest
        if not message:
            message = (f"group {group!r} committed offset {committed} of {topic!r} partition {partition}, "
                       f"but the oldest offset the partition still holds is {earliest}: "
                       f"{earliest - committed} message(s) were overwritten unread (on_lost='raise')")
        super().__init__(message)


class LockLost(Fenced):
    """A share consumer settled (acked, released, rejected, renewed) records whose
    lock it no longer holds: the lock ran out, and the record may have gone to
    another member. Nothing was applied to them; the others in the call were.
    ``records`` are the refused ones."""

    _pickled = ("group", "topic", "member")      # the records stay behind

    def __init__(self, message: str = "", *, group: str = "", topic: str = "", member: str = "",
                 records: Sequence[object] = ()) -> None:
        self.records = list(records)
        super().__init__(message, group=group, topic=topic, member=member,
                         partitions=sorted({getattr(r, "partition", 0) for r in self.records}))


class TransactionError(GrafosError, RuntimeError):
    """A transaction call out of order (begin while one is open, send or commit
    with none open), or a transaction that can no longer commit (it was aborted
    by a resolver after its producer's registration expired)."""


class Unsupported(GrafosError, NotImplementedError):
    """The bus behind the call does not offer this feature (the message says
    which, and what to use instead)."""


class ViewsInUse(GrafosError, BufferError):
    """Bytes lent to the caller (a peeked value, a loan's view) are still held by
    an object that cannot be revoked when the lending ends (the message says
    what happened to the peek or loan)."""


class Unavailable(GrafosError, ConnectionError):
    """The server behind a remote bus did not answer in time (down, unreachable,
    or electing a leader); the call gave up after its bounded wait."""


class UnsupportedPlatform(GrafosError, ImportError):
    """grafos runs on Linux only."""


class NotPortable(GrafosError, TypeError):
    """A handle that cannot cross a process boundary: an in-process fabric (or
    state kept in this process) pickled, or used in a child after ``fork``."""


def _rebuild(cls: type, message: str, fields: dict) -> Exception:
    return cls(message, **fields)
