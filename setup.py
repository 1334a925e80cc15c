# All metadata is in pyproject.toml. setuptools cannot read `cffi_modules` or
# C extensions from there, so this stub hands it the two native modules:
# the core, built by cffi (grafos._native), and the per-message crossing into
# it (grafos._fast, csrc/fast*.c), which links none of the core and calls it
# through a table the core hands over at import.
import os

from setuptools import Extension, setup

_sanitize = bool(os.environ.get("GRAFOS_SANITIZE"))
_flags = ["-std=gnu11", "-O3", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers"]
if _sanitize:
    _flags += ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    ext_modules=[Extension("grafos._fast",
                           sources=["csrc/fast.c", "csrc/fast_send.c", "csrc/fast_poll.c",
                                    "csrc/fast_records.c", "csrc/fast_peek.c"],
                           include_dirs=["csrc"],
                           depends=["csrc/grafos.h", "csrc/crossing.h", "csrc/fast_internal.h"],
                           extra_compile_args=_flags,
                           extra_link_args=["-fsanitize=address,undefined"] if _sanitize else [])],
)
