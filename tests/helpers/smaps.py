"""This process's mappings of a file, as /proc/self/smaps shows them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


@dataclass
class Mapping:
    start: int
    end: int
    rss: int = 0                       #: bytes mapped in this process's page tables
    flags: set[str] = field(default_factory=set)   #: VmFlags ("hg": advised for huge pages)


def mappings(path: str) -> list[Mapping]:
    """Every mapping of ``path`` in this process, in address order."""
    out: list[Mapping] = []
    cur: Mapping | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = _RANGE.match(line)
            if m:
                cur = Mapping(int(m.group(1), 16), int(m.group(2), 16)) if m.group(3) == path else None
                if cur:
                    out.append(cur)
            elif cur and line.startswith("Rss:"):
                cur.rss = int(line.split()[1]) * 1024
            elif cur and line.startswith("VmFlags:"):
                cur.flags = set(line.split()[1:])
    return out
