"""Two processes append to one partition at once through a named fabric; a
reader in a third gets every message exactly once, each whole (CRC32C
verified by the reader, and a digest inside every value)."""
from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from grafos import Fabric
from grafos.partition import Partition

from helpers.core_procs import SEQ, produce_numbered, stress_scale, unseal

PER_PRODUCER = 6000
PRODUCERS = 2


def test_two_processes_append_to_one_partition_and_the_reader_gets_each_message_once(shm_name):
    ctx = mp.get_context("spawn")
    with Fabric.open(shm_name, size=32 << 20) as fab:
        # a bounded wait far longer than any scheduling hiccup: no live writer is skipped
        fab.set_bounded_wait(30.0)
        part = Partition.create(fab, PER_PRODUCER * PRODUCERS, 128, ttl=600)   # room for all: nothing lost
        go = ctx.Barrier(PRODUCERS + 1)     # everyone attached, then all start at once
        procs = [ctx.Process(target=produce_numbered,
                             args=(shm_name, part.lease.index, part.lease.id, p, PER_PRODUCER, go, p))
                 for p in range(PRODUCERS)]
        for p in procs:
            p.start()
        rd = part.reader(0, max_batch=4096)
        got = []
        try:
            go.wait(120)
            deadline = time.monotonic() + 120
            # read while they write: the reader races the producers slot by slot
            while len(got) < PER_PRODUCER * PRODUCERS and time.monotonic() < deadline:
                got += rd.poll(4096, timeout=0.1)
        finally:
            for p in procs:
                p.join(60)
        assert [p.exitcode for p in procs] == [0] * PRODUCERS
        got += rd.poll(4096)
        c = rd.counters(0)
        assert c == {"lost": 0, "abandoned": 0, "corrupt": 0, "expired": 0}
        offsets = [m.offset for _, m in got]
        assert offsets == list(range(PER_PRODUCER * PRODUCERS))
        seen: dict[int, list[int]] = {p: [] for p in range(PRODUCERS)}
        for _, m in got:
            payload = unseal(m.value)
            assert payload is not None, f"offset {m.offset}: torn or foreign value"
            producer, seq = SEQ.unpack_from(payload)
            seen[producer].append(seq)
        for producer, seqs in seen.items():
            # exactly once, and in each producer's own order
            assert seqs == list(range(PER_PRODUCER)), f"producer {producer}"
        assert part.state().latest == PER_PRODUCER * PRODUCERS


@pytest.mark.stress
def test_producers_lapping_a_small_ring_never_hand_the_reader_a_torn_message(shm_name):
    per = max(2000, round(40000 * stress_scale()))
    ctx = mp.get_context("spawn")
    with Fabric.open(shm_name, size=16 << 20) as fab:
        fab.set_bounded_wait(30.0)
        part = Partition.create(fab, 32, 256, ttl=600)   # overwritten many times over while being read
        go = ctx.Barrier(PRODUCERS + 1)
        procs = [ctx.Process(target=produce_numbered,
                             args=(shm_name, part.lease.index, part.lease.id, p, per, go, 100 + p, 30.0))
                 for p in range(PRODUCERS)]
        for p in procs:
            p.start()
        rd = part.reader(0, max_batch=64)
        got = []
        try:
            go.wait(120)
            while any(p.is_alive() for p in procs):
                got += rd.poll(64, timeout=0.01)
        finally:
            for p in procs:
                p.join(120)
        assert [p.exitcode for p in procs] == [0] * PRODUCERS
        got += rd.poll(64)
        total = per * PRODUCERS
        assert part.state().latest == total
        c = rd.counters(0)
        assert c["corrupt"] == 0 and c["abandoned"] == 0
        offsets = [m.offset for _, m in got]
        assert offsets == sorted(set(offsets))
        assert len(got) + c["lost"] == total          # every offset delivered or reported lost
        last = {p: -1 for p in range(PRODUCERS)}
        for _, m in got:
            payload = unseal(m.value)
            assert payload is not None, f"offset {m.offset}: torn value delivered"
            producer, seq = SEQ.unpack_from(payload)
            assert seq > last[producer]               # each producer's order survives the race
            last[producer] = seq
