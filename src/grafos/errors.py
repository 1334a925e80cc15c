"""One exception hierarchy for grafos.

Every error the library raises is a :class:`GrafosError`; where a builtin
fits, the class is also that builtin (``MessageTooLarge`` is a ``ValueError``,
``LockTimeout`` a ``TimeoutError``), so callers can catch either.
"""
from __future__ import annotations


class GrafosError(Exception):
    """Base of every grafos error."""


class InvalidArgument(GrafosError, ValueError):
    """An argument was out of range or of the wrong kind."""


class InvalidType(GrafosError, TypeError):
    """An argument had the wrong type."""


class FabricFull(GrafosError):
    """No room: the arena, the lease table or the metadata table is full."""


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


class Fenced(GrafosError):
    """A consumer-group member lost the partition to another member."""


class Unavailable(GrafosError, ConnectionError):
    """The server behind a remote bus did not answer in time (down, unreachable,
    or electing a leader); the call gave up after its bounded wait."""


class UnsupportedPlatform(GrafosError, ImportError):
    """grafos runs on Linux only."""
