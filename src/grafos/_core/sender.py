"""What a send hands the core: a topic's table of ring pointers."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .._native import ffi

if TYPE_CHECKING:
    from ..partition import Partition


def ring_table(partitions: "Sequence[Partition | None]") -> Any:
    """The rings of a topic's partitions as the core's ``gf_ring *[]`` (NULL where a
    partition expired), the table a send picks a partition from."""
    rings = ffi.new("gf_ring *[]", len(partitions))
    for i, p in enumerate(partitions):
        if p is not None:
            rings[i] = p.handle
    return rings
