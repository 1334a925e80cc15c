"""The fabric: one mmap'd arena holding a lease table, a metadata table and
leased regions. Three kinds, one code path:

* ``Fabric()`` -- in-process (a memfd; nothing to clean up),
* ``Fabric.open("orders-bus", size=...)`` -- named shared memory under
  ``/dev/shm`` that other processes attach to by name,
* ``Fabric.open(path="/some/dir/bus.grafos", size=...)`` -- a file that
  outlives the processes.

A :class:`MemLease` is a region with an absolute expiry. Once that time has
passed the lease is dead for every reader at once; whoever next allocates,
attaches or calls :meth:`Fabric.reap` returns its pages to the OS.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from . import _validate, hugepages
from ._check import check, raise_for
from ._clock import now_ns, to_ns
from ._log import get as _logger
from ._core import ffi, lib
from .errors import (Closed, FabricIOError, InvalidArgument, LeaseExpired, LockTimeout, NotFound, NotPortable,
                     SpaceWarning, Unsupported)

_log = _logger("fabric")
DEFAULT_SIZE = 256 << 20          #: default arena size: sparse, untouched pages cost nothing
SHM_DIR = "/dev/shm"
SHM_PREFIX = "grafos."
LOCK_TIMEOUT = 5.0                #: seconds to wait for the metadata lock held by a live process
DURABILITY = ("none", "fsync")    #: values of Fabric.open(durability=)
HUGE_PAGES = ("off", "try", "on")  #: values of Fabric(huge_pages=) and Fabric.open(huge_pages=)
_MAX_INT = 1 << 62                # sizes and offsets past this are out of range (and past what C takes)


#: called as ``hook(fabric, lease_id, now_ns)`` before this process releases lease
#: ``lease_id`` or (``lease_id`` None) reaps or allocates, which may reuse the
#: region of any lease dead at ``now_ns``: buffers lent out of it (loans) are
#: revoked first (:mod:`grafos.loan` registers)
before_reuse: "list[Callable[[Fabric, int | None, int], None]]" = []


def reusing(fabric: "Fabric", lease_id: int | None, t: int) -> None:
    for hook in before_reuse:
        hook(fabric, lease_id, t)


def shm_path(name: str) -> str:
    """Where the named fabric ``name`` lives."""
    return os.path.join(SHM_DIR, SHM_PREFIX + _validate.name(name, "fabric name", 100))


@dataclass(frozen=True)
class FabricInfo:
    kind: str
    name: str | None
    path: str | None
    total_size: int
    data_size: int
    lease_slots: int
    meta_slots: int
    version: int
    created: bool
    lock_recoveries: int
    leases_live: int
    bytes_leased: int
    blocks: int           #: st_blocks of the backing file, in 512-byte units
    bounded_wait: float   #: seconds a reader waits on an unfinished slot before skipping it
    durable: bool = False  #: this handle flushes acknowledged writes (durability="fsync")
    syncs: int = 0         #: msync calls this handle made for durability
    huge_pages: bool = False  #: this handle's mapping is advised for huge pages the system gives here


class Fabric:
    """One arena. Use as a context manager or call :meth:`close`."""

    def __init__(self, size: int = DEFAULT_SIZE, *, lease_slots: int = 0, meta_slots: int = 0,
                 huge_pages: str = "off") -> None:
        """An in-process fabric of ``size`` bytes. ``huge_pages``: see :meth:`open`."""
        self._setup(None, size, 0o600, lib.GF_OPEN_CREATE, lease_slots, meta_slots, "in-process", None,
                    huge_pages)

    @classmethod
    def open(cls, name: str | None = None, *, path: str | None = None, size: int | None = None,
             mode: int = 0o600, create: bool = True, exclusive: bool = False,
             trust_any: bool = False, lease_slots: int = 0, meta_slots: int = 0,
             durability: str = "none", huge_pages: str = "off") -> "Fabric":
        """Create or attach to a named or file-backed fabric.

        ``size`` (bytes) is needed only to create it. ``create=False`` only
        attaches; ``exclusive=True`` only creates. A fabric owned by another
        user or writable by others is refused unless ``trust_any=True``.
        ``durability="fsync"`` (file fabrics only) flushes every acknowledged
        append and metadata change (committed offsets, topics, leases) to the
        file before the call returns, so it survives a machine crash, not just
        a killed process; it is per handle (docs/hardening.md).
        ``huge_pages`` advises this handle's mapping for 2 MiB transparent huge
        pages (fewer TLB misses and page faults on rings larger than the caches):
        ``"off"`` (the default) does not ask; ``"try"`` asks where the system
        gives them and otherwise maps 4 KiB pages as ``"off"`` does;
        ``"on"`` raises :class:`~grafos.errors.Unsupported`, saying which
        setting refuses, where the system does not give them
        (:mod:`grafos.hugepages`). ``info().huge_pages`` says which it got.
        """
        if durability not in DURABILITY:
            raise InvalidArgument(f"durability must be one of {DURABILITY}, got {durability!r}")
        if durability != "none" and path is None:
            raise InvalidArgument("durability='fsync' needs a file fabric (path=...); a named fabric "
                                  "lives in /dev/shm, which is memory")
        if (name is None) == (path is None):
            raise InvalidArgument("give exactly one of name= or path=")
        if name is not None:
            fpath, kind = shm_path(name), "named"
        else:
            if not isinstance(path, (str, os.PathLike)):
                raise _validate.InvalidType(f"path must be a str or os.PathLike, not {type(path).__name__}")
            fpath, kind = os.fspath(path), "file"
            if not fpath:
                raise InvalidArgument("path must not be empty")
        _validate.integer(mode, "mode", 0, 0o777)
        flags = 0
        if create:
            flags |= lib.GF_OPEN_CREATE
        if exclusive:
            flags |= lib.GF_OPEN_CREATE | lib.GF_OPEN_EXCL
        if trust_any:
            flags |= lib.GF_OPEN_TRUST_ANY
        self = cls.__new__(cls)
        self._setup(fpath, size or 0, mode, flags, lease_slots, meta_slots, kind, name, huge_pages)
        self._trust_any = trust_any
        if kind == "named":
            self._warn_if_oversized()
        if durability == "fsync":
            self._make_durable()
        return self

    def _make_durable(self) -> None:
        """Flush what is there now (and the file's directory entry), then every change."""
        try:
            check(lib.gf_fabric_set_durable(self._h, 1), f"fabric {self.path!r}")
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            self.close()
            raise FabricIOError(f"fabric {self.path!r}: cannot make it durable: {e}") from None
        except BaseException:
            self.close()
            raise
        self.durability = "fsync"

    def _warn_if_oversized(self) -> None:
        """A new named fabric larger than what /dev/shm has free will run out of
        space before it is full: say so now, with what to do about it (creating
        topics past the space raises NoSpace; nothing faults)."""
        info = self.info()
        if not info.created:
            return
        st = os.statvfs(os.path.dirname(self.path or SHM_DIR))
        free = st.f_bavail * st.f_frsize + info.blocks * 512   # + what the new tables took
        if info.total_size > free:
            warnings.warn(
                f"named fabric {self.name!r} is {info.total_size} bytes but {SHM_DIR} has only "
                f"{free} bytes free: topics past that raise NoSpace. Give {SHM_DIR} more "
                "(docker run --shm-size=1g), share the host's (docker run --ipc=host), or keep "
                "the bus in a file on disk (TopicManager.open(path=...))", SpaceWarning, stacklevel=3)

    @staticmethod
    def unlink(name: str) -> bool:
        """Remove the named fabric from the system. Processes still attached keep
        their mapping until they close it. Returns False if there was none."""
        try:
            os.unlink(shm_path(name))
            return True
        except FileNotFoundError:
            return False

    @staticmethod
    def exists(name: str) -> bool:
        return os.path.exists(shm_path(name))

    def _setup(self, path: str | None, size: int, mode: int, flags: int, lease_slots: int,
               meta_slots: int, kind: str, name: str | None, huge_pages: str) -> None:
        _validate.integer(size, "size", 0, _MAX_INT)
        _validate.integer(lease_slots, "lease_slots", 0, 1 << 20)
        _validate.integer(meta_slots, "meta_slots", 0, 1 << 22)
        if not isinstance(huge_pages, str) or huge_pages not in HUGE_PAGES:
            raise InvalidArgument(f"huge_pages must be one of {HUGE_PAGES}, got {huge_pages!r}")
        why = None if huge_pages == "off" else hugepages.refusal(path)
        if huge_pages == "on" and why:
            raise Unsupported(f"huge_pages='on': {why}; huge_pages='try' maps 4 KiB pages where the system "
                              "does not give huge ones")
        if why:
            _log.info("huge_pages='try' maps 4 KiB pages for %s: %s", path or "an in-process fabric", why)
        huge = huge_pages != "off" and not why
        if huge:
            flags |= lib.GF_OPEN_HUGE
        err = ffi.new("int *")
        h = lib.gf_fabric_open(path.encode() if path is not None else ffi.NULL, size, mode, flags,
                               lease_slots, meta_slots, err)
        if h == ffi.NULL:
            raise_for(err[0])
        self._h = ffi.gc(h, lib.gf_fabric_close)
        self.kind = kind
        self.name = name
        self.path = path
        self._flock = _file_lock(path, self)
        self._join_depth = 0
        self._closed = False
        self._trust_any = False
        self._generation = _FORK_GENERATION   # which side of a fork made this handle
        self.durability = "none"
        #: what this handle's mapping asked for and got: "off", or the huge_pages it was opened with
        self.huge_pages = huge_pages if huge else "off"
        #: default seconds :meth:`locked` waits for a live holder (lower it to bound every call)
        self.lock_timeout = LOCK_TIMEOUT

    # ---- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        """Unmap. Open partitions keep the mapping alive until they close."""
        if not self._closed:
            self._closed = True
            ffi.release(self._h)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Fabric":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def same_bus(self, other: "Fabric") -> bool:
        """True if ``other`` is a handle of this bus: itself, or another
        attachment of the same named or file bus (an in-process bus has one)."""
        return other is self or (self.path is not None and other.path == self.path)

    def __repr__(self) -> str:
        where = self.name or self.path or "in-process"
        return f"<Fabric {self.kind} {where}{' closed' if self._closed else ''}>"

    @property
    def handle(self):  # noqa: ANN201 - cffi pointer
        if self._closed:
            where = f" {self.name or self.path!r}" if self.name or self.path else ""
            raise Closed(f"the {self.kind} bus{where} is closed (TopicManager.close or Fabric.close "
                         "was called): open it again to use it")
        if self._generation != _FORK_GENERATION:
            self.check_process()
        return self._h

    def check_process(self) -> None:
        """Raise NotPortable if this is an in-process fabric of a parent process
        used in a child after ``fork``: its memory and locks belong to the
        parent (a lock a parent thread held at the fork would never be let go).
        Named and file fabrics work in a fork child (they are opened by name)."""
        if self._generation != _FORK_GENERATION and self.kind == "in-process":
            raise NotPortable(
                "this in-process fabric belongs to the process that made it; a child started by fork "
                "cannot use it. Share the bus by name instead: TopicManager.open(name) or "
                "TopicManager.open(path=...), then open it (or pass the manager) in the child")

    def __reduce__(self):  # noqa: ANN204 - pickles to what re-attaches it
        if self.kind == "in-process":
            raise NotPortable(
                "an in-process fabric lives in this process's memory and cannot be pickled into another "
                "process: share the bus by name, Fabric.open(name) / TopicManager.open(name), or by file, "
                "path=...")
        return (_reattach, (self.name, None if self.name is not None else self.path, self._trust_any,
                            self.durability, "try" if self.huge_pages != "off" else "off"))

    def info(self) -> FabricInfo:
        out = ffi.new("gf_fabric_info *")
        check(lib.gf_fabric_info_get(self.handle, out))
        return FabricInfo(self.kind, self.name, self.path, out.total_size, out.data_size,
                          out.lease_slots, out.meta_slots, out.version, bool(out.created),
                          out.lock_recoveries, out.leases_live, out.bytes_leased, out.blocks,
                          out.stall_ns / 1e9, bool(out.durable), out.syncs, self.huge_pages != "off")

    @property
    def blocks(self) -> int:
        """Allocated 512-byte blocks of the backing memory (``st_blocks``)."""
        return self.info().blocks

    def set_bounded_wait(self, seconds: float) -> None:
        """How long readers wait on a claimed-but-unpublished slot before skipping it,
        and a later lap's writer before giving way to it (docs/hardening.md)."""
        lib.gf_fabric_set_stall(self.handle, to_ns(_validate.number(seconds, "bounded wait", 0, True)))

    # ---- the metadata lock ------------------------------------------------
    @contextmanager
    def locked(self, timeout: float | None = None) -> Iterator["Fabric"]:
        """Hold the process-shared metadata lock (re-entrant within a process).
        ``timeout`` defaults to :attr:`lock_timeout` seconds."""
        fl = self._flock
        left = self._thread_lock(timeout)
        try:
            first = fl.depth == 0
            if first:
                if check(lib.gf_lock(self.handle, left)) == lib.GF_RECOVERED:
                    self.lock_recovered()
                fl.owner = self
            guest = fl.owner is not self   # nested through another handle of the same file
            if guest:
                if self._join_depth == 0:
                    check(lib.gf_lock_join(self.handle))
                self._join_depth += 1
            fl.depth += 1
            try:
                yield self
            finally:
                fl.depth -= 1
                if guest:
                    self._join_depth -= 1
                    if self._join_depth == 0:
                        lib.gf_lock_leave(self._h)
                if first:
                    fl.owner = None
                    lib.gf_unlock(self._h)
        finally:
            fl.rlock.release()

    def _thread_lock(self, timeout: float | None) -> int:
        """The metadata lock's part within this process: one thread at a time,
        whichever handle it uses, bounded like the wait for another process (a
        negative timeout waits for as long as it takes). Returns the ns left of
        ``timeout`` (default :attr:`lock_timeout`) for the wait on other processes."""
        if timeout is None:
            timeout = self.lock_timeout
        to_ns(timeout, "timeout")
        self.check_process()      # before the thread lock: a forked child must not wait on it
        t0 = time.monotonic()
        if not self._flock.rlock.acquire(timeout=-1 if timeout < 0 else timeout):
            raise LockTimeout(f"metadata lock held by another thread of this process for longer than "
                              f"{timeout * 1000:.0f} ms")
        return to_ns(timeout if timeout < 0 else max(0.0, timeout - (time.monotonic() - t0)), "timeout")

    @contextmanager
    def lock_in_core(self, timeout: float | None = None) -> Iterator[int | None]:
        """For a core call that takes the metadata lock and gives it back itself,
        in one call where :meth:`locked` makes three (each call into the core
        lets another thread take the GIL): keeps this process's other threads
        out as :meth:`locked` does and yields the ns the call may wait for
        another process. Yields None when this thread holds the lock already:
        the caller then works under that :meth:`locked`."""
        fl = self._flock
        left = self._thread_lock(timeout)
        try:
            yield None if fl.depth else left
        finally:
            fl.rlock.release()

    def lock_recovered(self) -> None:
        """Log that this handle took the metadata lock over from a holder that died."""
        _log.warning("took the metadata lock of %r over from a holder that died", self)

    # ---- leases -------------------------------------------------------------
    def acquire(self, size: int, *, ttl: float | None = None, expires_at: float | None = None,
                owner_tag: int = 0, now: float | None = None) -> "MemLease":
        """Lease ``size`` bytes until ``expires_at`` (or for ``ttl`` seconds)."""
        _validate.integer(size, "lease size", 1, _MAX_INT)
        _validate.integer(owner_tag, "owner_tag", 0, (1 << 64) - 1)
        t = now_ns(now)
        exp = _expiry(t, ttl, expires_at)
        out = ffi.new("gf_lease_info *")
        reusing(self, None, t)
        with self.locked():
            check(lib.gf_lease_acquire(self.handle, size, exp, owner_tag, t, out))
        return MemLease(self, out.index, out.id)

    def lease(self, index: int, lease_id: int) -> "MemLease":
        """The live lease (index, id); raises LeaseExpired if it is gone."""
        _validate.integer(index, "lease index", 0, 0xFFFFFFFF)
        _validate.integer(lease_id, "lease id", 1, (1 << 64) - 1)
        lease = MemLease(self, index, lease_id)
        lease.info()
        return lease

    def leases(self) -> list["MemLease"]:
        """All leases in the table (live or expired-but-not-yet-reaped)."""
        info = self.info()
        out = ffi.new("gf_lease_info[]", info.lease_slots)
        count = ffi.new("uint32_t *")
        check(lib.gf_lease_list(self.handle, out, info.lease_slots, count))
        return [MemLease(self, out[i].index, out[i].id) for i in range(count[0])]

    def reap(self, now: float | None = None) -> int:
        """Reclaim every expired lease; returns how many. Their pages go back to the OS."""
        t = now_ns(now)
        reusing(self, None, t)
        with self.locked():
            n = check(lib.gf_reap(self.handle, t, ffi.NULL))
        if n:
            _log.info("reaped %d expired lease(s) of %r", n, self)
        return n

    # ---- metadata table (small values, under the lock) ---------------------
    def meta_get(self, key: str) -> bytes | None:
        k = _meta_key(key)
        val = ffi.new("uint8_t[]", lib.GF_META_VAL_MAX)
        vlen = ffi.new("uint32_t *")
        with self.locked():
            rc = lib.gf_meta_get(self.handle, k, len(k), val, lib.GF_META_VAL_MAX, vlen)
        if rc == lib.GF_E_NOTFOUND:
            return None
        check(rc, f"metadata {key!r}")
        return ffi.buffer(val, vlen[0])[:]

    def meta_put(self, key: str, value: bytes) -> None:
        k = _meta_key(key)
        value = _validate.as_bytes(value, "metadata value")
        with self.locked():
            check(lib.gf_meta_put(self.handle, k, len(k), value, len(value)), f"metadata {key!r}")

    def meta_put_many(self, items: "list[tuple[str, bytes]]") -> None:
        """Several puts under one hold of the lock (in order)."""
        args = [(_meta_key(k), _validate.as_bytes(v, "metadata value")) for k, v in items]
        with self.locked():
            for (key, _), (k, v) in zip(items, args):
                check(lib.gf_meta_put(self.handle, k, len(k), v, len(v)), f"metadata {key!r}")

    def meta_del(self, key: str) -> bool:
        k = _meta_key(key)
        with self.locked():
            rc = lib.gf_meta_del(self.handle, k, len(k))
        if rc == lib.GF_E_NOTFOUND:
            return False
        check(rc, f"metadata {key!r}")
        return True

    def meta_items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        p = _meta_key(prefix, "metadata prefix")
        cursor = ffi.new("uint32_t *")
        key = ffi.new("uint8_t[]", lib.GF_META_KEY_MAX)
        val = ffi.new("uint8_t[]", lib.GF_META_VAL_MAX)
        klen, vlen = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        items = []
        with self.locked():
            while check(lib.gf_meta_next(self.handle, cursor, p, len(p), key, klen, val, vlen)) == 1:
                items.append((ffi.buffer(key, klen[0])[:].decode("utf-8", "replace"),
                              ffi.buffer(val, vlen[0])[:]))
        return items

    def meta_epoch(self) -> int:
        """Bumped by every metadata or lease-table change (cheap, lock-free)."""
        return lib.gf_meta_epoch(self.handle)


@dataclass(frozen=True)
class FabricUsage:
    """Who uses a fabric file, seen from outside (:func:`probe`)."""

    path: str
    size: int
    in_use: bool          #: some process has it open
    ready: bool           #: its creator finished it (False and not in use: abandoned)
    lock_pid: int         #: pid of the metadata lock's holder, as its own PID namespace numbers it (0: free)
    lock_alive: bool      #: ... and that holder is alive (its owner token's file lock is held)
    leases_live: int      #: leases not yet expired
    leases_total: int
    last_expiry: float    #: latest expiry among its leases, seconds since the epoch (0.0: none)
    removed: bool = False

    @property
    def idle(self) -> bool:
        """Nobody has it open, no live process holds its lock, every lease expired."""
        return not self.in_use and not self.lock_alive and self.leases_live == 0


def probe(path: str, *, now: float | None = None, remove_if_idle: bool = False,
          leases_matter: bool = True) -> FabricUsage:
    """Look at the fabric file ``path`` without attaching to it; with
    ``remove_if_idle`` remove it if it is :attr:`~FabricUsage.idle` (the check
    and the removal under the file's lock, so no process attaches in between).
    ``leases_matter=False``: idle means nobody has it open, whatever its leases
    (a queue's memory lives as long as its users)."""
    out = ffi.new("gf_probe *")
    mode = 0 if not remove_if_idle else 1 if leases_matter else lib.GF_PROBE_REMOVE_UNUSED
    check(lib.gf_fabric_probe(os.fsencode(path), now_ns(now), mode, out), path)
    return FabricUsage(path, out.size, bool(out.in_use), bool(out.ready), out.lock_pid, bool(out.lock_alive),
                       out.leases_live, out.leases_total, out.last_expiry_ns / 1e9, bool(out.removed))


def named_fabrics() -> list[str]:
    """Names of the named fabrics on this machine (files under /dev/shm)."""
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(e[len(SHM_PREFIX):] for e in entries if e.startswith(SHM_PREFIX))


def _meta_key(key: str, what: str = "metadata key") -> bytes:
    if not isinstance(key, str):
        raise _validate.InvalidType(f"{what} must be a str, not {type(key).__name__}")
    return key.encode()


class _FileLock:
    """The metadata lock's in-process side for one fabric file: every handle of
    this process on that file shares it, so two attachments of one bus neither
    deadlock each other nor race inside the process."""

    __slots__ = ("rlock", "depth", "owner", "__weakref__")

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.owner: Fabric | None = None


_FILE_LOCKS: "weakref.WeakValueDictionary[tuple, _FileLock]" = weakref.WeakValueDictionary()
_FILE_LOCKS_GUARD = threading.Lock()
_FORK_GENERATION = 0


def _after_fork_in_child() -> None:
    """A fork child has one thread: locks other threads of the parent held are
    held for ever. Start the child's in-process side of every lock afresh (the
    core gives the child's handles owner tokens of their own, so a lock the
    parent holds is not the child's), and make the parent's in-process fabrics
    foreign to it."""
    global _FILE_LOCKS_GUARD, _FORK_GENERATION
    _FORK_GENERATION += 1
    _FILE_LOCKS_GUARD = threading.Lock()
    for fl in list(_FILE_LOCKS.values()):
        fl.rlock = threading.RLock()
        fl.depth = 0
        fl.owner = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reattach(name: str | None, path: str | None, trust_any: bool, durability: str,
              huge_pages: str = "off") -> "Fabric":
    return Fabric.open(name, path=path, create=False, trust_any=trust_any, durability=durability,
                       huge_pages=huge_pages)


def _file_lock(path: str | None, fabric: "Fabric") -> _FileLock:
    if path is None:
        return _FileLock()           # in-process: nobody else can open this memfd by name
    try:
        st = os.stat(path)
        key: tuple = (st.st_dev, st.st_ino)
    except OSError:
        key = ("path", os.path.realpath(path))
    with _FILE_LOCKS_GUARD:
        fl = _FILE_LOCKS.get(key)
        if fl is None:
            fl = _FileLock()
            _FILE_LOCKS[key] = fl
        return fl


def _expiry(t: int, ttl: float | None, expires_at: float | None) -> int:
    if (ttl is None) == (expires_at is None):
        raise InvalidArgument("give exactly one of ttl= or expires_at=")
    if ttl is not None:
        _validate.number(ttl, "ttl", 0, lo_open=True)
        return t + to_ns(ttl, "ttl")
    exp = to_ns(expires_at, "expires_at")  # type: ignore[arg-type]
    if exp <= t:
        raise InvalidArgument(f"expires_at {expires_at} is not in the future")
    return exp


class MemLease:
    """A leased region of a fabric, named by (index, id). Ids are never reused."""

    __slots__ = ("fabric", "index", "id")

    def __init__(self, fabric: Fabric, index: int, lease_id: int) -> None:
        self.fabric = fabric
        self.index = index
        self.id = lease_id

    def __repr__(self) -> str:
        return f"<MemLease id={self.id} index={self.index}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemLease) and other.fabric is self.fabric and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self.fabric), self.id))

    def info(self):  # noqa: ANN201 - gf_lease_info cdata
        out = ffi.new("gf_lease_info *")
        check(lib.gf_lease_get(self.fabric.handle, self.index, self.id, out))
        return out

    @property
    def size(self) -> int:
        return self.info().size

    @property
    def offset(self) -> int:
        return self.info().offset

    @property
    def expires_at(self) -> float:
        """Absolute expiry, seconds since the epoch (0.0 once reclaimed)."""
        try:
            return self.info().expires_ns / 1e9
        except (LeaseExpired, NotFound):
            return 0.0

    def expired(self, now: float | None = None) -> bool:
        """True once ``now`` reaches the expiry, or once any read, append, renewal
        or reap has seen the lease expired (whatever ``now`` says afterwards)."""
        try:
            info = self.info()
        except (LeaseExpired, NotFound):
            return True
        return bool(info.dead) or info.expires_ns <= now_ns(now)

    def alive(self, now: float | None = None) -> bool:
        """Is the lease alive at ``now``? Unlike :meth:`expired` (a what-if query
        that may ask about any time), this decides: once it has answered False
        the lease is dead for every process, even if the clock goes back."""
        return check(lib.gf_lease_check(self.fabric.handle, self.index, self.id, now_ns(now))) == 1

    def ttl_remaining(self, now: float | None = None) -> float:
        """Seconds until expiry; 0.0 if expired or gone."""
        try:
            info = self.info()
        except (LeaseExpired, NotFound):
            return 0.0
        if info.dead:
            return 0.0
        return max(0.0, (info.expires_ns - now_ns(now)) / 1e9)

    def renew(self, expires_at: float | None = None, *, ttl: float | None = None,
              now: float | None = None) -> None:
        """Move the expiry. A lease that has already expired cannot be renewed."""
        t = now_ns(now)
        exp = _expiry(t, ttl, expires_at)
        with self.fabric.locked():
            check(lib.gf_lease_renew(self.fabric.handle, self.index, self.id, exp, t))

    def release(self) -> None:
        """Give the region back now."""
        reusing(self.fabric, self.id, now_ns(None))
        with self.fabric.locked():
            check(lib.gf_lease_release(self.fabric.handle, self.index, self.id))

    def write(self, offset: int, data: bytes, now: float | None = None) -> None:
        _validate.integer(offset, "offset", 0, _MAX_INT)
        data = _validate.as_bytes(data, "data")
        check(lib.gf_lease_write(self.fabric.handle, self.index, self.id, offset, data, len(data), now_ns(now)))

    def read(self, offset: int, length: int, now: float | None = None) -> bytes:
        _validate.integer(offset, "offset", 0, _MAX_INT)
        _validate.integer(length, "length", 0, 1 << 40)
        buf = ffi.new("uint8_t[]", length)
        check(lib.gf_lease_read(self.fabric.handle, self.index, self.id, offset, buf, length, now_ns(now)))
        return ffi.buffer(buf, length)[:]
