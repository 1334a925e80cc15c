"""Whether Linux backs a fabric's mapping with transparent huge pages.

A fabric is shared memory: a memfd (in-process), a file on tmpfs (``/dev/shm``
for a named fabric), or a file on disk. The kernel gives shared memory huge
pages by its shmem settings: ``shmem_enabled`` under
``/sys/kernel/mm/transparent_hugepage`` for a memfd, the tmpfs mount's
``huge=`` option for a file on tmpfs, and ``deny`` or ``force`` in
``shmem_enabled`` over both. A file on a disk filesystem is not mapped with
huge pages for writing. :func:`refusal` reads those settings and says why the
system cannot, or None; :func:`decide` is the rule alone.
"""
from __future__ import annotations

import os

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
MOUNTINFO = "/proc/self/mountinfo"
#: settings under which the kernel gives huge pages to a mapping advised for them
GIVES = ("always", "within_size", "advise")


def selected(setting: str) -> str:
    """The chosen word of a sysfs setting: ``"always [advise] never"`` -> ``"advise"``."""
    words = setting.split()
    for w in words:
        if w.startswith("[") and w.endswith("]"):
            return w[1:-1]
    return words[0] if len(words) == 1 else ""


def decide(shmem_enabled: str | None, path: str | None, fstype: str | None = None, huge: str | None = None,
           mountpoint: str | None = None) -> str | None:
    """Why a fabric at ``path`` (None: in-process) cannot have huge pages, or None.

    ``shmem_enabled``: the sysfs setting's text (None: the kernel has no
    transparent huge pages); for a file, ``fstype`` and the ``huge=`` option
    (None: not given) of the mount at ``mountpoint`` that holds it."""
    if shmem_enabled is None:
        return f"this kernel has no transparent huge pages ({THP_DIR} is missing)"
    mode = selected(shmem_enabled)
    knob = f"{THP_DIR}/shmem_enabled"
    if mode == "deny":
        return f"{knob} is 'deny', which turns huge pages off for all shared memory"
    if path is None:
        if mode in GIVES or mode == "force":
            return None
        return (f"an in-process fabric is a memfd, whose huge pages {knob} turns off ({mode!r}): "
                f"set it to 'advise' (echo advise > {knob})")
    if fstype != "tmpfs":
        return (f"{path} is on {fstype or 'an unknown filesystem'}, not tmpfs: Linux maps huge pages for "
                "writing in shared memory only (put the fabric on a tmpfs mounted with huge=advise)")
    if mode == "force" or (huge or "never") in GIVES:
        return None
    return (f"the tmpfs at {mountpoint} holding {path} is mounted without huge pages (huge={huge or 'never'}): "
            f"mount it with huge=advise (mount -o remount,huge=advise {mountpoint})")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def mount_of(directory: str, mountinfo: str) -> tuple[str | None, str | None, str | None]:
    """(fstype, huge= option, mount point) of the mount holding ``directory``,
    found in ``mountinfo`` (``/proc/self/mountinfo``'s text) by device number."""
    st = os.stat(directory)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    found: tuple[str | None, str | None, str | None] = (None, None, None)
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 7 or fields[2] != dev or "-" not in fields[6:]:
            continue
        tail = fields[fields.index("-", 6) + 1:]
        huge = next((o[5:] for o in (tail[2] if len(tail) > 2 else "").split(",") if o.startswith("huge=")),
                    None)
        found = (tail[0] if tail else None, huge, fields[4])   # the last mount there is the one seen
    return found


def refusal(path: str | None) -> str | None:
    """Why this system cannot back a fabric at ``path`` (None: in-process) with
    huge pages, or None if it can."""
    shmem = _read(f"{THP_DIR}/shmem_enabled")
    if path is None or shmem is None:
        return decide(shmem, path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fstype, huge, mountpoint = mount_of(directory, _read(MOUNTINFO) or "")
    except OSError as e:
        return f"cannot tell which filesystem holds {path}: {e}"
    return decide(shmem, path, fstype, huge, mountpoint)
