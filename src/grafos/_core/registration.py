"""A producer's registration region: the epoch word that fences its older
instances (the records around it are :mod:`grafos.mq.transaction`'s)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._check import check
from . import lib

if TYPE_CHECKING:
    from ..fabric import Fabric


def init(fabric: "Fabric", index: int, lease_id: int, number: int, epoch: int, context: str) -> None:
    """Write producer ``number``'s registration at ``epoch`` into the leased region."""
    check(lib.gf_producer_init(fabric.handle, index, lease_id, number, epoch), context)


def fence(fabric: "Fabric", index: int, lease_id: int, epoch: int, context: str) -> None:
    """Raise the registration's epoch: every instance of a lower one is fenced."""
    check(lib.gf_producer_fence(fabric.handle, index, lease_id, epoch), context)


def epoch(fabric: "Fabric", index: int, lease_id: int) -> int:
    """The registration's epoch now (negative once its lease is gone). One load, no lock."""
    return lib.gf_producer_epoch(fabric.handle, index, lease_id)
