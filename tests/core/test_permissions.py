"""Who can read and write a bus (docs/hardening.md, "Trust model").

* Shared fabrics are created owner-only (0600) unless the caller passes a
  mode, whatever the umask; the OS then keeps other users out.
* Names are validated: no path separators, no '..', bounded length.
* Attaching a fabric owned by another user, or writable by other users, is
  refused unless ``trust_any=True``: such a file may have been planted or
  altered by someone else. A symlink or a non-regular file is never attached.

The tests run as root (as CI does) so they can hand files to ``nobody``.
"""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from grafos import Fabric
from grafos.errors import FabricIOError, InvalidArgument, InvalidType, PermissionDenied
from grafos.fabric import shm_path
from grafos.mq.topic import TopicConfig, TopicManager

MiB = 1 << 20
NOBODY = 65534

#: only the tests that hand a file to another user need root (CI runs as root)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_zero():
    old = os.umask(0)        # the most permissive umask: the mode must still be exact
    yield
    os.umask(old)


# ---- creation modes -------------------------------------------------------------------------
def test_named_fabric_is_created_owner_only(shm_name, umask_zero):
    with Fabric.open(shm_name, size=4 * MiB):
        assert mode_of(shm_path(shm_name)) == 0o600
        assert os.stat(shm_path(shm_name)).st_uid == os.geteuid()


def test_file_fabric_and_bus_are_created_owner_only(tmp_path, umask_zero):
    with Fabric.open(path=tmp_path / "f.grafos", size=4 * MiB):
        assert mode_of(str(tmp_path / "f.grafos")) == 0o600
    with TopicManager.open(path=str(tmp_path / "bus.grafos"), size=4 * MiB):
        assert mode_of(str(tmp_path / "bus.grafos")) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o400, 0o644])
def test_a_mode_passed_is_the_mode_given_whatever_the_umask(tmp_path, mode):
    old = os.umask(0o077)
    try:
        with Fabric.open(path=tmp_path / "f.grafos", size=4 * MiB, mode=mode):
            assert mode_of(str(tmp_path / "f.grafos")) == mode
    finally:
        os.umask(old)


def test_attaching_does_not_change_the_mode(tmp_path):
    p = str(tmp_path / "f.grafos")
    Fabric.open(path=p, size=4 * MiB, mode=0o640).close()
    Fabric.open(path=p, mode=0o600).close()       # mode is for creating only
    assert mode_of(p) == 0o640


@pytest.mark.parametrize("mode,exc", [(-1, InvalidArgument), (0o1000, InvalidArgument),
                                      ("0600", InvalidType), (6.0, InvalidType)])
def test_bad_modes_are_refused_and_nothing_is_created(tmp_path, mode, exc):
    with pytest.raises(exc, match="mode"):
        Fabric.open(path=tmp_path / "f.grafos", size=4 * MiB, mode=mode)
    assert not (tmp_path / "f.grafos").exists()


@needs_root
def test_other_users_cannot_open_an_owner_only_fabric(shm_name):
    with Fabric.open(shm_name, size=4 * MiB):
        path = shm_path(shm_name)
        as_nobody = dict(preexec_fn=lambda: os.setuid(NOBODY), capture_output=True)
        assert subprocess.run(["cat", path], **as_nobody).returncode != 0
        assert subprocess.run(["sh", "-c", f"printf x >> {path}"], **as_nobody).returncode != 0
        os.chmod(path, 0o644)       # a mode that lets others read: they can read, still not write
        assert subprocess.run(["sh", "-c", f"cat {path} > /dev/null"], **as_nobody).returncode == 0
        assert subprocess.run(["sh", "-c", f"printf x >> {path}"], **as_nobody).returncode != 0


# ---- names -------------------------------------------------------------------------------------
BAD_NAMES = [("a/b", InvalidArgument), ("../etc", InvalidArgument), ("..", InvalidArgument),
             ("a..b", InvalidArgument), (".hidden", InvalidArgument), ("-x", InvalidArgument),
             ("", InvalidArgument), ("x" * 101, InvalidArgument), ("a\0b", InvalidArgument),
             ("a b", InvalidArgument), ("é", InvalidArgument), (b"bytes", InvalidType),
             (7, InvalidType)]


@pytest.mark.parametrize("name,exc", BAD_NAMES, ids=[repr(n)[:20] for n, _ in BAD_NAMES])
def test_bad_fabric_names_are_refused_before_touching_the_filesystem(name, exc):
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(exc, match="fabric name"):
        Fabric.open(name, size=4 * MiB)
    with pytest.raises(exc, match="fabric name"):
        TopicManager.open(name, size=4 * MiB)
    assert set(os.listdir("/dev/shm")) - before == set()


def test_longest_allowed_name_works(shm_name):
    name = (shm_name + "x" * 100)[:100]
    try:
        with Fabric.open(name, size=4 * MiB):
            assert os.path.exists(shm_path(name))
    finally:
        Fabric.unlink(name)


@pytest.mark.parametrize("topic", ["a/b", "..", "x" * 65, "", "t/../u"])
def test_bad_topic_names_are_refused(topic):
    with TopicManager(size=8 * MiB) as mgr:
        with pytest.raises(InvalidArgument, match="topic name"):
            mgr.create(topic, TopicConfig(1, 4, 128))
        assert mgr.topics() == []


# ---- attaching: owner and mode ------------------------------------------------------------------
def test_fabric_writable_by_others_is_refused_unless_trusted(tmp_path):
    p = str(tmp_path / "f.grafos")
    Fabric.open(path=p, size=4 * MiB).close()
    os.chmod(p, 0o602)                                   # o+w
    with pytest.raises(PermissionDenied, match="writable by other users"):
        Fabric.open(path=p)
    with pytest.raises(PermissionDenied):
        TopicManager.open(path=p)
    Fabric.open(path=p, trust_any=True).close()
    TopicManager.open(path=p, trust_any=True).close()


def test_group_writable_fabric_is_attached(tmp_path):
    """The documented line: your group is trusted when you give it g+w; others never."""
    p = str(tmp_path / "f.grafos")
    Fabric.open(path=p, size=4 * MiB, mode=0o660).close()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o660      # really group-writable
    with Fabric.open(path=p, create=False) as f:          # ...and attached all the same
        assert f.info().total_size == 4 * MiB


@needs_root
def test_fabric_of_another_user_is_refused_unless_trusted(tmp_path):
    p = str(tmp_path / "f.grafos")
    Fabric.open(path=p, size=4 * MiB).close()
    os.chown(p, NOBODY, NOBODY)
    with pytest.raises(PermissionDenied, match=f"owned by uid {NOBODY}"):
        Fabric.open(path=p)
    with Fabric.open(path=p, trust_any=True) as fab:
        assert fab.info().created is False


@needs_root
def test_a_planted_file_is_not_attached_when_creating(tmp_path):
    """Someone else created the path first (a world-writable directory): opening
    with create=True must not silently attach their file."""
    p = str(tmp_path / "bus.grafos")
    Fabric.open(path=p, size=4 * MiB).close()        # a valid fabric...
    os.chown(p, NOBODY, NOBODY)                      # ...that belongs to someone else
    os.chmod(p, 0o666)
    with pytest.raises(PermissionDenied):
        Fabric.open(path=p, size=4 * MiB)
    with pytest.raises(PermissionDenied):
        TopicManager.open(path=p, size=4 * MiB)


@needs_root
def test_a_planted_named_fabric_is_not_attached(shm_name):
    Fabric.open(shm_name, size=4 * MiB).close()
    os.chown(shm_path(shm_name), NOBODY, NOBODY)
    with pytest.raises(PermissionDenied):
        TopicManager.open(shm_name, size=4 * MiB)


def test_ownership_is_checked_before_a_byte_is_read(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"\xff" * 8192)
    os.chmod(p, 0o666)
    with pytest.raises(PermissionDenied):
        Fabric.open(path=p)


def test_symlinks_are_never_followed(tmp_path, shm_name):
    real = str(tmp_path / "real.grafos")
    Fabric.open(path=real, size=4 * MiB).close()
    link = str(tmp_path / "link.grafos")
    os.symlink(real, link)
    with pytest.raises(FabricIOError):
        Fabric.open(path=link)
    os.symlink(real, shm_path(shm_name))
    with pytest.raises(FabricIOError):
        Fabric.open(shm_name, create=False)


def test_non_regular_files_are_refused(tmp_path):
    with pytest.raises((InvalidArgument, FabricIOError)):
        Fabric.open(path=tmp_path)                  # a directory
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        Fabric.open(path=fifo, create=False)
