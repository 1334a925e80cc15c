"""Slot checksums per topic (``TopicConfig(checksum=...)``): the default follows
the fabric's kind, the choice is recorded where every process sees it, and a
ring without checksums copies plainly and verifies nothing."""
from __future__ import annotations

import struct
import time

import pytest

from grafos import Fabric
from grafos._native import lib
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.partition import Partition


def crc(b: bytes) -> int:
    return lib.gf_crc32c(0xFFFFFFFF, b, len(b)) ^ 0xFFFFFFFF


def slot_crc_field(part: Partition, n: int) -> int:
    """The checksum word of offset n's slot, read from the ring's lease."""
    return struct.unpack("<I", part.lease.read(256 + (n % part.capacity) * part.stride + 36, 4))[0]


@pytest.mark.parametrize("kind", ["in-process", "named", "file"])
def test_the_default_follows_the_fabric_kind(kind, tmp_path, shm_name):
    fab = {"in-process": lambda: Fabric(4 << 20),
           "named": lambda: Fabric.open(shm_name, size=4 << 20),
           "file": lambda: Fabric.open(path=str(tmp_path / "bus"), size=4 << 20)}[kind]()
    with fab:
        mgr = TopicManager(fab)
        t = mgr.create("t", TopicConfig(2, 8, 128, 60.0))
        want = kind != "in-process"
        assert t.config.checksum is want
        assert [p.checksum for p in t.partitions] == [want, want]
        assert mgr.describe("t").config.checksum is want


@pytest.mark.parametrize("checksum", [True, False])
def test_the_choice_is_recorded_for_other_handles_and_kept_by_restart(checksum, tmp_path):
    path = str(tmp_path / "bus")
    with Fabric.open(path=path, size=4 << 20) as fab:
        TopicManager(fab).create("t", TopicConfig(1, 8, 128, 60.0, checksum=checksum))
    with Fabric.open(path=path, create=False) as fab:
        mgr = TopicManager(fab)
        t = mgr.topic("t")
        assert t.config.checksum is checksum
        assert t.partitions[0].checksum is checksum
        old = t.partitions[0].lease.id
        t = mgr.restart("t", now=time.time() + 120)   # the lease expired: a fresh ring
        assert t.partitions[0].lease.id != old
        assert t.config.checksum is checksum and t.partitions[0].checksum is checksum


def test_a_ring_with_checksums_has_the_header_it_always_had(tmp_path):
    """No flags word set, and the header sum over bytes [0, 32) alone: rings made
    before the setting existed read as rings with checksums."""
    path = str(tmp_path / "bus")
    with Fabric.open(path=path, size=4 << 20) as fab:
        p = TopicManager(fab).create("t", TopicConfig(1, 8, 128, 60.0, checksum=True)).partitions[0]
        at = p.lease.offset
    with open(path, "rb") as f:
        d = f.read()
    assert d[at + 36:at + 40] == bytes(4)
    assert struct.unpack_from("<I", d, at + 32)[0] == crc(d[at:at + 32])


@pytest.mark.parametrize("checksum", [True, False])
def test_without_checksums_slots_carry_none_and_a_damaged_byte_is_not_caught(checksum):
    with Fabric(4 << 20) as fab:
        part = Partition.create(fab, 8, 256, ttl=60, checksum=checksum)
        part.append(b"x" * 100, key=b"k")
        with part.loan(50) as ln:
            ln.view[:] = b"y" * 50
        words = [slot_crc_field(part, n) for n in range(2)]
        assert (words == [0, 0]) is not checksum
        part.lease.write(256 + 40 + 1 + 6, b"Z")             # one value byte of offset 0
        rd = part.reader(0)
        got = [m.value for _, m in rd.poll(10)]
        if checksum:
            assert got == [b"y" * 50] and rd.counters(0)["corrupt"] == 1
        else:
            assert got == [b"x" * 6 + b"Z" + b"x" * 93, b"y" * 50] and rd.counters(0)["corrupt"] == 0


def test_producers_and_consumers_of_both_kinds_of_topic_on_one_bus():
    with Fabric(8 << 20) as fab:
        mgr = TopicManager(fab)
        mgr.create("on", TopicConfig(2, 64, 128, 60.0, checksum=True))
        mgr.create("off", TopicConfig(2, 64, 128, 60.0, checksum=False))
        for name in ("on", "off"):
            prod = Producer(name)
            sent = [b"%s-%d" % (name.encode(), i) * (1 + 40 * (i % 3)) for i in range(20)]
            for v in sent:
                prod.send_keyed(mgr, b"k%d" % len(v), v)
            c = Consumer(name)
            got = [m.value for _, m in c.poll(mgr, 100)]
            assert sorted(got) == sorted(sent)
