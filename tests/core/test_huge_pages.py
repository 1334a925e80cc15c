"""The fabric's huge_pages option: accepted where the system gives huge pages,
refused with the setting that does not ("on"), mapped with 4 KiB pages
otherwise ("try"), and the rule that says which (grafos.hugepages)."""
from __future__ import annotations

import os
import pickle
import re

import pytest

from grafos import hugepages
from grafos.errors import InvalidArgument, Unsupported
from grafos.fabric import Fabric, shm_path
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from helpers.smaps import mappings

MiB = 1 << 20
NEVER = "always within_size advise [never] deny force"
ADVISE = "always within_size [advise] never deny force"


@pytest.mark.parametrize("bad", ["yes", "", "ON", True, None, 1])
def test_a_value_other_than_off_try_on_is_refused_and_makes_no_fabric(shm_name, bad):
    with pytest.raises(InvalidArgument, match="huge_pages must be one of") as e:
        Fabric.open(shm_name, size=64 * MiB, huge_pages=bad)
    assert isinstance(e.value, ValueError)
    assert not Fabric.exists(shm_name)
    with pytest.raises(InvalidArgument, match="huge_pages must be one of"):
        Fabric(64 * MiB, huge_pages=bad)


def test_on_is_refused_with_the_setting_that_refuses_and_makes_no_fabric(shm_name, monkeypatch):
    monkeypatch.setattr(hugepages, "refusal", lambda path: f"the tmpfs holding {path} says no")
    with pytest.raises(Unsupported, match=r"huge_pages='on': the tmpfs holding .*test-.* says no; "
                                          r"huge_pages='try' maps 4 KiB pages") as e:
        TopicManager.open(shm_name, size=64 * MiB, huge_pages="on")
    assert isinstance(e.value, NotImplementedError)
    assert not Fabric.exists(shm_name)
    with pytest.raises(Unsupported, match="says no"):
        Fabric(64 * MiB, huge_pages="on")


def test_try_falls_back_to_small_pages_where_the_system_refuses(shm_name, monkeypatch):
    monkeypatch.setattr(hugepages, "refusal", lambda path: "no huge pages here")
    mgr = TopicManager.open(shm_name, size=64 * MiB, huge_pages="try")
    try:
        assert mgr.fabric.huge_pages == "off" and mgr.fabric.info().huge_pages is False
        assert all("hg" not in m.flags for m in mappings(shm_path(shm_name)))
        mgr.create("t", TopicConfig(1, 64, 1024, 60.0))
        Producer("t").send(mgr, b"works")
    finally:
        mgr.close()


@pytest.mark.parametrize("asked", ["try", "on"])
def test_the_mapping_is_advised_for_huge_pages_where_the_system_gives_them(shm_name, monkeypatch, asked):
    monkeypatch.setattr(hugepages, "refusal", lambda path: None)
    mgr = TopicManager.open(shm_name, size=64 * MiB, huge_pages=asked)
    try:
        assert mgr.fabric.huge_pages == asked and mgr.fabric.info().huge_pages is True
        maps = mappings(shm_path(shm_name))
        assert maps and all("hg" in m.flags for m in maps)     # VM_HUGEPAGE: MADV_HUGEPAGE took
        # an attached process's handle asks for them too, falling back where it cannot
        again = pickle.loads(pickle.dumps(mgr.fabric))
        try:
            assert again.huge_pages == "try"
        finally:
            again.close()
    finally:
        mgr.close()


def test_off_does_not_advise_the_mapping(shm_name):
    with Fabric.open(shm_name, size=64 * MiB) as fab:
        assert fab.huge_pages == "off" and fab.info().huge_pages is False
        assert all("hg" not in m.flags for m in mappings(shm_path(shm_name)))


def test_on_follows_this_systems_settings(shm_name):
    """Whichever way this machine is set up, "on" does what the rule says of it."""
    why = hugepages.refusal(shm_path(shm_name))
    if why:
        with pytest.raises(Unsupported, match="huge_pages='on'"):
            Fabric.open(shm_name, size=64 * MiB, huge_pages="on")
        assert not Fabric.exists(shm_name)
    else:
        with Fabric.open(shm_name, size=64 * MiB, huge_pages="on") as fab:
            assert fab.info().huge_pages is True


# ---- the rule --------------------------------------------------------------------------------
def test_selected_reads_the_bracketed_word():
    assert hugepages.selected(NEVER) == "never"
    assert hugepages.selected("always [madvise] never\n") == "madvise"
    assert hugepages.selected("advise\n") == "advise"


@pytest.mark.parametrize("shmem, path, fstype, huge, refused", [
    (None, None, None, None, "no transparent huge pages"),
    (NEVER, None, None, None, "shmem_enabled turns off"),
    (ADVISE, None, None, None, None),
    ("always within_size advise never deny [force]", None, None, None, None),
    ("always within_size advise never [deny] force", None, None, None, "'deny'"),
    ("always within_size advise never [deny] force", "/dev/shm/x", "tmpfs", "always", "'deny'"),
    (NEVER, "/dev/shm/x", "tmpfs", None, r"mounted without huge pages \(huge=never\)"),
    (NEVER, "/dev/shm/x", "tmpfs", "never", "mounted without huge pages"),
    (NEVER, "/dev/shm/x", "tmpfs", "advise", None),       # a tmpfs mount's own setting
    (NEVER, "/dev/shm/x", "tmpfs", "within_size", None),
    ("always within_size advise never deny [force]", "/dev/shm/x", "tmpfs", None, None),
    (ADVISE, "/data/bus", "ext4", None, "on ext4, not tmpfs"),
    ("always within_size advise never deny [force]", "/data/bus", "xfs", None, "on xfs, not tmpfs"),
])
def test_decide(shmem, path, fstype, huge, refused):
    why = hugepages.decide(shmem, path, fstype, huge, "/dev/shm")
    if refused is None:
        assert why is None
    else:
        assert why is not None and re.search(refused, why), why


def test_mount_of_finds_the_mount_by_device(tmp_path):
    st = os.stat(tmp_path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    info = (f"20 1 0:99 / /elsewhere rw,relatime - ext4 /dev/vdb rw\n"
            f"21 1 {dev} / /mnt/fast rw,relatime shared:5 - tmpfs tmpfs rw,size=1048576k,huge=advise\n")
    assert hugepages.mount_of(str(tmp_path), info) == ("tmpfs", "advise", "/mnt/fast")
    no_huge = f"21 1 {dev} / /mnt/fast rw - tmpfs tmpfs rw,size=1048576k\n"
    assert hugepages.mount_of(str(tmp_path), no_huge) == ("tmpfs", None, "/mnt/fast")
    assert hugepages.mount_of(str(tmp_path), "20 1 0:99 / /elsewhere rw - ext4 /dev/vdb rw\n") == (None, None, None)
