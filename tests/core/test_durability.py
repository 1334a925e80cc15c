"""Durable commits on a file bus (``durability="fsync"``): an acknowledged
append or committed offset is in the file before the call returns, survives
SIGKILL of every process and a reopen, and a torn write found at reopen is
caught by its checksum and skipped, never delivered.

Page-cache contents survive a killed process even without fsync; what the
flag adds (msync(MS_SYNC) of the touched slots, the ring tail and the
metadata entry) is survival of a machine crash, which a test cannot stage.
So the flush itself is checked through the handle's sync counter, and the
kill loop checks the end-to-end promise every durable user relies on.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

from grafos import Fabric
from grafos.errors import InvalidArgument
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from grafos.reader import Reader

MiB = 1 << 20
CAP = 4096


def scale() -> float:
    return float(os.environ.get("GRAFOS_STRESS_SCALE", "1.0"))


def expected(i: int) -> bytes:
    """Message i's value: its number and a digest-derived body of varying length."""
    return b"%d:" % i + hashlib.sha256(b"%d" % i).digest()[: i % 33]


def read_everything(fab: Fabric, mgr: TopicManager, topic: str) -> tuple[dict, Reader]:
    """(partition, offset) -> Message for every message still readable, polling past
    bounded waits on slots a killed writer left half-written."""
    t = mgr.topic(topic)
    rd = Reader(fab, t.partitions, max_batch=512)
    out, empty = {}, 0
    while empty < 3:
        got = rd.poll(512, timeout=0.05)
        for p, m in got:
            out[(p, m.offset)] = m
        empty = 0 if got else empty + 1
    return out, rd


# ---- the flag ----------------------------------------------------------------------------------
def test_durable_handle_flushes_every_acknowledged_append_and_commit(tmp_path):
    path = str(tmp_path / "bus.grafos")
    with TopicManager.open(path=path, size=8 * MiB, durability="fsync") as mgr:
        assert mgr.fabric.durability == "fsync" and mgr.fabric.info().durable
        mgr.create("t", TopicConfig(2, 64, 128, 3600.0))
        prod = Producer("t")
        s0 = mgr.fabric.info().syncs
        prod.send_keyed(mgr, b"k", b"v")
        s1 = mgr.fabric.info().syncs
        assert s1 > s0                                       # flushed before send returned
        prod.send(mgr, b"w")
        prod.send_batch(mgr, [b"a", b"b", b"c"])
        mgr.topic("t").partition(1).append(b"h", headers=[("x", b"y")])
        s2 = mgr.fabric.info().syncs
        assert s2 >= s1 + 3
        FabricOffsetStore(mgr).commit("g", "t", 0, 1)
        assert mgr.fabric.info().syncs > s2                  # committed offsets too
        with Fabric.open(path=path) as other:                # durability is per handle
            assert other.durability == "none" and other.info().syncs == 0


def test_default_handle_never_syncs(tmp_path):
    with TopicManager.open(path=str(tmp_path / "bus.grafos"), size=8 * MiB) as mgr:
        mgr.create("t", TopicConfig(1, 64, 128, 3600.0))
        Producer("t").send(mgr, b"v")
        FabricOffsetStore(mgr).commit("g", "t", 0, 1)
        info = mgr.fabric.info()
        assert not info.durable and info.syncs == 0


@pytest.mark.parametrize("kw,says", [
    ({"durability": "always"}, "durability must be one of"),
    ({"durability": None}, "durability must be one of"),
    ({"durability": "fsync", "name": "x"}, "needs a file fabric"),
])
def test_bad_durability_requests_are_refused(tmp_path, kw, says):
    kw = dict(kw)
    where = {"name": kw.pop("name")} if "name" in kw else {"path": str(tmp_path / "f.grafos")}
    with pytest.raises(InvalidArgument, match=says):
        Fabric.open(**where, size=4 * MiB, **kw)
    assert not (tmp_path / "f.grafos").exists()


# ---- torn writes found at reopen ------------------------------------------------------------------
def _durable_bus(path: str, n: int) -> tuple[int, int]:
    """A bus with n messages in partition 0 of "t"; returns (ring offset, stride)."""
    with TopicManager.open(path=path, size=8 * MiB, durability="fsync") as mgr:
        mgr.create("t", TopicConfig(1, 16, 128, 3600.0))
        part = mgr.topic("t").partition(0)
        for i in range(n):
            part.append(expected(i), key=b"k%d" % i)
        return part.lease.offset, part.stride


def test_torn_payload_found_at_reopen_is_skipped_and_counted(tmp_path):
    path = str(tmp_path / "bus.grafos")
    ring, stride = _durable_bus(path, 6)
    with open(path, "r+b") as f:                # the machine died half-way through slot 3's bytes
        f.seek(ring + 256 + 3 * stride + 40 + len(b"k3") + 1)     # the ':' of b"3:..."
        f.write(b"#")
    with TopicManager.open(path=path) as mgr:
        got, rd = read_everything(mgr.fabric, mgr, "t")
        assert sorted(off for _, off in got) == [0, 1, 2, 4, 5]
        assert all(m.value == expected(m.offset) for m in got.values())
        assert rd.counters(0)["corrupt"] == 1
        c = Consumer("t", "g")
        c.seek(mgr, None, SeekPolicy.Earliest)
        assert [m.offset for _, m in c.poll(mgr, 100)] == [0, 1, 2, 4, 5]


def test_half_written_slot_found_at_reopen_is_skipped_after_the_bounded_wait(tmp_path):
    path = str(tmp_path / "bus.grafos")
    ring, stride = _durable_bus(path, 4)
    with open(path, "r+b") as f:                # offset 2 claimed, never published
        f.seek(ring + 256 + 16 * stride + 2 * 8)    # its sequence word, after the 16 slots
        f.write(struct.pack("<Q", 2 * 2 + 1))
    with TopicManager.open(path=path) as mgr:
        mgr.fabric.set_bounded_wait(0.01)
        got, rd = read_everything(mgr.fabric, mgr, "t")
        assert sorted(off for _, off in got) == [0, 1, 3]
        assert rd.counters(0)["abandoned"] == 1


# ---- the kill loop -------------------------------------------------------------------------------
CHILD = r"""
import hashlib, os, sys
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

def expected(i):
    return b"%d:" % i + hashlib.sha256(b"%d" % i).digest()[: i % 33]

path, i = sys.argv[1], int(sys.argv[2])
mgr = TopicManager.open(path=path, durability="fsync")
prod, store = Producer("log"), FabricOffsetStore(mgr)
os.write(1, b"r\n")
while True:
    p, off = prod.send_keyed(mgr, b"k%d" % i, expected(i))
    os.write(1, b"a %d %d %d\n" % (i, p, off))          # acknowledged: one atomic pipe write
    if i % 5 == 0:
        store.commit("g", "log", p, off + 1)
        os.write(1, b"c %d %d\n" % (p, off + 1))
    i += 1
"""


def _run_child(path: str, start: int, rng: random.Random) -> list[bytes]:
    """Start a writer, let it run a random while, SIGKILL it; returns its complete lines."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, str(start)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    buf = b""
    try:
        deadline = time.monotonic() + 60
        while b"r\n" not in buf and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
        assert b"r\n" in buf, f"writer did not start: {proc.poll()}"
        kill_at = time.monotonic() + rng.uniform(0.02, 0.4)
        while time.monotonic() < kill_at:
            if select.select([proc.stdout], [], [], max(0.0, kill_at - time.monotonic()))[0]:
                buf += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    buf += proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return buf.split(b"\n")[:-1]          # a partial last line was never acknowledged


@pytest.mark.stress
def test_every_acknowledged_message_and_commit_survives_sigkill_loops(tmp_path):
    path = str(tmp_path / "log.grafos")
    # room for every message, nothing overwritten: the loop stops early when a fast
    # disk (an fsync of ~200 us writes ~4,000 messages a second) fills half of it
    cap = 4 * CAP * max(1, math.ceil(scale()))
    with TopicManager.open(path=path, size=(4 + 2 * cap * 128 // MiB) * MiB, durability="fsync") as mgr:
        mgr.create("log", TopicConfig(2, cap, 128, 3600.0))
    rng = random.Random(6)
    iterations = max(3, int(20 * scale()))
    acked: dict[int, tuple[int, int]] = {}
    commits: dict[int, int] = {}
    next_i = 0
    done = 0
    for _ in range(iterations):
        done += 1
        for line in _run_child(path, next_i, rng):
            kind, *nums = line.split()
            if kind == b"a":
                i, p, off = map(int, nums)
                acked[i] = (p, off)
            elif kind == b"c":
                p, off = map(int, nums)
                commits[p] = max(commits.get(p, 0), off)
        next_i = max(acked, default=next_i - 1) + 1
        # every process is dead: reopen and check all that was acknowledged so far
        with TopicManager.open(path=path) as mgr:
            mgr.fabric.set_bounded_wait(0.01)
            got, rd = read_everything(mgr.fabric, mgr, "log")
            assert all(mgr.describe("log").partitions[p].latest < cap for p in (0, 1))   # no overwrite
            for (p, off), m in got.items():                      # whatever is delivered is intact
                i = int(m.value.split(b":")[0])
                assert m.value == expected(i) and m.key == b"k%d" % i
            missing = [i for i, where in acked.items() if where not in got
                       or got[where].value != expected(i)]
            assert missing == [], f"acknowledged but lost: {missing[:10]}"
            store = FabricOffsetStore(mgr)
            for p, off in commits.items():
                assert store.committed("g", "log", p) >= off
            if done >= 3 and max(mgr.describe("log").partitions[p].latest for p in (0, 1)) > cap // 2:
                break
    iterations = done
    recovered = sum(1 for where in acked.values() if where in got)
    print(f"kill loop: iterations={iterations} acknowledged={len(acked)} recovered={recovered} "
          f"delivered={len(got)} commits={commits}")
    assert len(acked) > iterations            # the writers did get work acknowledged
    assert recovered == len(acked)
