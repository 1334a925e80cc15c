"""A handle that writes to a ring another handle populated has the ring in its
page tables from its first write on: its first lap takes no page fault per 4 KiB."""
from __future__ import annotations

from grafos.fabric import shm_path
from grafos.mq.consumer import Consumer
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager
from helpers.smaps import mappings

MiB = 1 << 20
SLOTS, STRIDE = 256, 65576          # a 16 MiB ring


def _new_mapping(path: str, before: set[int]):
    fresh = [m for m in mappings(path) if m.start not in before]
    assert len(fresh) == 1, fresh
    return fresh[0]


def test_a_second_handle_maps_the_whole_ring_at_its_first_send(shm_name):
    path = shm_path(shm_name)
    mgr = TopicManager.open(shm_name, size=64 * MiB)
    try:
        mgr.create("t", TopicConfig(1, SLOTS, STRIDE, 60.0))
        before = {m.start for m in mappings(path)}
        other = TopicManager.open(shm_name)        # a mapping of its own, as another process's
        try:
            mine = _new_mapping(path, before)
            assert mine.rss < SLOTS * STRIDE // 4      # attaching alone maps the tables it reads
            Producer("t").send(other, b"one small message")
            mine = _new_mapping(path, before)
            assert mine.rss >= SLOTS * STRIDE, f"{mine.rss} bytes mapped of a {SLOTS * STRIDE}-byte ring"
        finally:
            other.close()
    finally:
        mgr.close()


def test_a_reader_on_a_second_handle_maps_only_what_it_reads(shm_name):
    """Read faults map 16 pages around each (a write fault maps one), and a
    process that only looks (grafos top, a consumer at the head) needs no more."""
    path = shm_path(shm_name)
    mgr = TopicManager.open(shm_name, size=64 * MiB)
    try:
        mgr.create("t", TopicConfig(1, SLOTS, STRIDE, 60.0))
        Producer("t").send(mgr, b"hello")
        before = {m.start for m in mappings(path)}
        other = TopicManager.open(shm_name)
        try:
            got = Consumer("t").poll(other, 10)
            assert [m.value for _, m in got] == [b"hello"]
            assert _new_mapping(path, before).rss < SLOTS * STRIDE // 4
        finally:
            other.close()
    finally:
        mgr.close()


def test_a_loan_on_a_second_handle_maps_the_ring(shm_name):
    path = shm_path(shm_name)
    mgr = TopicManager.open(shm_name, size=64 * MiB)
    try:
        mgr.create("t", TopicConfig(1, SLOTS, STRIDE, 60.0))
        before = {m.start for m in mappings(path)}
        other = TopicManager.open(shm_name)
        try:
            with Producer("t").loan(other, 100) as ln:
                ln.write(b"x" * 100)
            assert _new_mapping(path, before).rss >= SLOTS * STRIDE
        finally:
            other.close()
    finally:
        mgr.close()
