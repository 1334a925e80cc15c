"""Processes of the stall campaign (tests/bus/test_stall_campaign.py): a producer that
reports every acknowledged send, and a consumer of the campaign's group.

Both print one line per event on stdout, flushed; a line cut short by a SIGKILL
is ignored by the reader of the pipe."""
from __future__ import annotations

import random
import sys
import time

from grafos._native import lib
from grafos.errors import BufferFull, GrafosError
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicManager

BOUNDED_WAIT = 0.1      # short, so that paused writers are stepped over often


def value(writer: int, seq: int, size: int) -> bytes:
    """The value a producer sends: the parent rebuilds it from (writer, seq, size)."""
    head = b"%d:%d:" % (writer, seq)
    return head + bytes([(writer * 31 + seq) % 251]) * max(0, size - len(head))


def intact(v: bytes) -> bool:
    """A delivered value is one a producer sent, byte for byte."""
    try:
        writer, seq, _ = v.split(b":", 2)
        return value(int(writer), int(seq), len(v)) == v
    except ValueError:
        return False


def produce(name: str, writer: int, seed: int) -> None:
    rnd = random.Random(seed)
    mgr = TopicManager.open(name)
    mgr.fabric.set_bounded_wait(BOUNDED_WAIT)
    prod = Producer("t", timeout=0.2)
    print("R", flush=True)
    seq = 0
    while True:
        # mostly one slot, often several (the slot holds 216 bytes)
        size = rnd.choice((16, 100, 200, 600, 1500, 3000, 20000))
        # now and then the producer stops itself between taking its slots and
        # copying its value (the parent continues it): a pause at the worst moment
        pause = rnd.random() < 0.002
        if pause:
            lib.gf_test_fault(lib.GF_FAULT_COPY, lib.GF_FAULT_STOP)
        try:
            p, off = prod.send(mgr, value(writer, seq, size))
        except BufferFull:
            time.sleep(0.005)
            continue
        except GrafosError as e:        # refused: not acknowledged
            print(f"E {type(e).__name__}", flush=True)
            continue
        finally:
            if pause:
                lib.gf_test_fault(lib.GF_FAULT_COPY, 0)
        print(f"A {p} {off} {seq} {size}", flush=True)
        seq += 1


def consume(name: str, member: str) -> None:
    """A member of group "g": claims its share, reads and commits (which moves
    the gate of a "block" or "raise" topic), claims again when it lost some."""
    mgr = TopicManager.open(name)
    mgr.fabric.set_bounded_wait(BOUNDED_WAIT)
    store = FabricOffsetStore(mgr)
    group = ConsumerGroup("g", "t", 2, 1.0, mgr=mgr)
    print("R", flush=True)
    c, cur = None, None
    bad = 0
    while True:
        mine = group.claim(member)
        if mine != cur:
            cur = mine
            c = Consumer("t", "g")
            if mine:
                c.assign(mine)
                c.seek(mgr, store, SeekPolicy.Committed)
        if not mine:
            time.sleep(0.05)
            continue
        for _, m in c.poll(mgr, 200, timeout=0.05):
            if not intact(m.value):
                bad += 1
        reader = c._session(mgr)._reader        # this reader's counts, since its seek
        corrupt = sum(reader.counters(p)["corrupt"] for p in mine)
        if bad or corrupt:
            print(f"C {corrupt} {bad}", flush=True)
        try:
            group.commit(store, member, "t", {p: c.position(p) for p in mine})
        except GrafosError:
            cur = None          # fenced: claim again


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        produce(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        consume(sys.argv[2], sys.argv[3])
