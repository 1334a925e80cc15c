"""Build the native core with cffi in API mode.

The cdef is the part of ``csrc/grafos.h`` between the ``cdef-begin`` and
``cdef-end`` markers, then the same part of ``csrc/grafos_test.h`` (the test
hooks, compiled in so that tests reach them through ``lib``); ``...``
constants are filled in by the compiler. The compiled module is private:
``grafos._native``.
"""
from __future__ import annotations

import os
import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = ["platform.c", "fabric.c", "meta.c", "lease.c",
           "ring.c", "ring_write.c", "send.c", "batch.c", "read.c", "wait.c", "gate.c", "loan.c",
           "hash.c", "producer.c", "crossing.c", "queue.c", "share.c"]
LAYOUT_CONSTANTS = ["GF_META_KEY_MAX", "GF_META_VAL_MAX", "GF_SLOT_HDR_SIZE", "GF_OWNER_LOCK_BASE",
                    "GF_RING_HDR_SIZE", "GF_RING_WAITERS", "GF_LAYOUT_VERSION", "GF_HDR_SIZE",
                    "GF_SHARE_ENTRIES_OFF", "GF_SH_ACKED"]


def _cdef_part(header: str) -> str:
    text = (CSRC / header).read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start:text.index("/* cdef-end */")]


def _cdef() -> str:
    # layout constants Python needs; the compiler fills in their values from layout.h
    consts = "".join(f"#define {c} ...\n" for c in LAYOUT_CONSTANTS)
    return _cdef_part("grafos.h") + _cdef_part("grafos_test.h") + consts


def _cflags() -> list[str]:
    flags = ["-std=gnu11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra",
             "-Wno-unused-parameter"]
    # GRAFOS_SANITIZE=1 builds the core with ASan+UBSan (see README, "Sanitizers").
    if os.environ.get("GRAFOS_SANITIZE"):
        flags += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    return flags


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "grafos._native",
    '#include "grafos.h"\n#include "grafos_test.h"\n#include "layout.h"\n',
    sources=[str((CSRC / s).relative_to(HERE)) for s in SOURCES],
    include_dirs=[str(CSRC.relative_to(HERE))],
    extra_compile_args=_cflags(),
    extra_link_args=["-fsanitize=address,undefined"] if os.environ.get("GRAFOS_SANITIZE") else [],
)

if __name__ == "__main__":
    if not sys.platform.startswith("linux"):
        sys.exit("grafos needs Linux (futex, /dev/shm, hole punching)")
    ffibuilder.compile(verbose=True)
