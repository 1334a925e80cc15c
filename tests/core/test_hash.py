"""Key hashing is Kafka's (murmur2, positive mod) and slot checksums are CRC32C.

Known-answer vectors come from the projects that define the behaviour; a
pure-Python transcription of each algorithm checks arbitrary inputs.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grafos._native import ffi, lib
from grafos.partition import Partition
from grafos.reader import Reader
from grafos import Fabric

M32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    c = ffi.from_buffer("uint8_t[]", data) if data else ffi.NULL
    return lib.gf_murmur2(c, len(data))


def as_java_int(u: int) -> int:
    return u - (1 << 32) if u & 0x80000000 else u


def kafka_partition(data: bytes, n: int) -> int:
    c = ffi.from_buffer("uint8_t[]", data) if data else ffi.NULL
    return lib.gf_kafka_partition(c, len(data), n)


def crc32c(data: bytes, crc: int = M32) -> int:
    """Raw update, as the core exposes it (no pre/post inversion)."""
    return lib.gf_crc32c(crc, ffi.from_buffer("uint8_t[]", data) if data else ffi.NULL, len(data))


def ref_murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, transcribed (Java ints as & M32)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & M32
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & M32
        k ^= k >> r
        k = (k * m) & M32
        h = (h * m) & M32
        h ^= k
    rest = length % 4
    tail = length & ~3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & M32
    h ^= h >> 13
    h = (h * m) & M32
    h ^= h >> 15
    return h


def ref_crc32c(data: bytes) -> int:
    """Bitwise CRC32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    c = M32
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ M32


# Kafka's own vectors: apache/kafka
# clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2()
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# Partition numbers for 1000 partitions, "compare with output from Kafka's
# org.apache.kafka.clients.producer.Partitioner": dpkp/kafka-python
# test/test_partitioner.py, test_murmur2_java_compatibility()
KAFKA_PARTITIONS_1000 = [
    (b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742),
]


@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2)
def test_murmur2_matches_kafka_utils_test(key, expected):
    assert as_java_int(murmur2(key)) == expected


@pytest.mark.parametrize("key,expected", KAFKA_PARTITIONS_1000)
def test_kafka_partition_matches_java_client_for_1000_partitions(key, expected):
    assert kafka_partition(key, 1000) == expected


@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2)
def test_kafka_partition_is_positive_murmur2_mod_n(key, expected):
    # Utils.toPositive(murmur2(key)) % n, for a few n
    for n in (1, 3, 7, 12, 1000):
        assert kafka_partition(key, n) == (expected & 0x7FFFFFFF) % n


def test_kafka_partition_refuses_zero_partitions():
    assert kafka_partition(b"k", 0) == lib.GF_E_INVAL


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_murmur2_matches_reference_transcription(data):
    assert murmur2(data) == ref_murmur2(data)


def test_crc32c_check_value():
    # The CRC catalogue's check value for CRC-32C (iSCSI) over "123456789".
    assert crc32c(b"123456789") ^ M32 == 0xE3069283


@pytest.mark.parametrize("data,expected", [
    # RFC 3720 (iSCSI), appendix B.4 "CRC Examples"
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_rfc3720_vectors(data, expected):
    assert crc32c(data) ^ M32 == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 200))
def test_crc32c_matches_bitwise_reference_and_chains(data, cut):
    cut = min(cut, len(data))
    assert crc32c(data) ^ M32 == ref_crc32c(data)
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)


def test_keyed_send_lands_on_kafka_partition_and_stores_key_hash():
    keys = [b"", b"a", b"ab", b"abc", b"123456789", b"\x00 "] + [b"order-%d" % i for i in range(60)]
    with Fabric(32 << 20) as fab:
        parts = [Partition.create(fab, 128, 128, ttl=600) for _ in range(7)]
        rings = ffi.new("gf_ring *[]", [p.handle for p in parts])
        rr = ffi.new("uint64_t *")
        for k in keys:
            packed = lib.gf_send(rings, len(parts), lib.GF_PART_KEYHASH, rr, k, len(k), 1,
                                 ffi.NULL, 0, b"v", 1, 0, ffi.new("gf_send_result *"))
            assert packed >= 0
            assert packed >> 48 == kafka_partition(k, len(parts))
        rd = Reader(fab, parts)
        batch = rd.poll_batch(1000)
        got = {}
        for i in range(len(batch)):
            got.setdefault(int(batch.partitions[i]), []).append(
                (batch.key(i), int(batch.meta["key_hash"][i])))
        assert sum(map(len, got.values())) == len(keys)
        for p, items in got.items():
            for key, h in items:
                assert kafka_partition(key, len(parts)) == p
                assert h == ref_murmur2(key)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 255, 767, 768, 769, 6143, 6144, 6145, 20000, 1 << 20])
def test_copy_crc_copies_exactly_and_sums_what_gf_crc32c_sums(n):
    src = bytes((i * 131 + (i >> 8)) & 0xFF for i in range(n))
    dst = ffi.new("uint8_t[]", n + 16)
    got = lib.gf_copy_crc(dst + 3, src, n, 0x12345678)      # unaligned destination
    assert got == lib.gf_crc32c(0x12345678, src, n)
    assert ffi.buffer(dst, n + 16)[3:3 + n] == src
    assert ffi.buffer(dst, 3)[:] == b"\0\0\0" and ffi.buffer(dst + 3 + n, 13)[:] == bytes(13)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=20000), st.integers(0, (1 << 32) - 1))
def test_copy_crc_matches_gf_crc32c_for_any_bytes(data, seed):
    dst = ffi.new("uint8_t[]", max(len(data), 1))
    assert lib.gf_copy_crc(dst, data, len(data), seed) == lib.gf_crc32c(seed, data, len(data))
    assert ffi.buffer(dst, len(data))[:] == data


def _table_crc32c(data: bytes, c: int) -> int:
    """The same reflected CRC32C, a byte at a time (fast enough for long inputs)."""
    table = []
    for i in range(256):
        t = i
        for _ in range(8):
            t = (t >> 1) ^ 0x82F63B78 if t & 1 else t >> 1
        table.append(t)
    for b in data:
        c = (c >> 8) ^ table[(c ^ b) & 0xFF]
    return c


# long runs are folded with carry-less multiplies where the CPU allows (256-byte
# blocks from 1 KiB): sizes on both sides of each boundary, and the longest
FOLD_SIZES = [1023, 1024, 1025, 1279, 1280, 1281, 2048 + 255, 4096, 65536 + 77, 200003]


SEED = 0x9ABCDEF0


def _run(n: int) -> tuple[bytes, int]:
    """n bytes of a pattern and their reference CRC32C from SEED."""
    data = bytes((i * 7919 + (i >> 5) * 13) & 0xFF for i in range(n))
    return data, _table_crc32c(data, SEED)


@pytest.mark.parametrize("n", FOLD_SIZES)
def test_long_runs_match_the_reference_crc32c(n):
    data, want = _run(n)
    seed = SEED
    dst = ffi.new("uint8_t[]", n + 1)
    assert lib.gf_crc32c(seed, data, n) == want
    assert lib.gf_copy_crc(dst + 1, data, n, seed) == want
    assert ffi.buffer(dst + 1, n)[:] == data


# the streaming copies (into rings larger than the caches) take an unaligned
# head up to the first cache line, then stream whole lines: every head, from 4 KiB
STREAM_SIZES = [100, 4095, 4096, 4097, 4096 + 255, 65536 + 77, 200003]
STREAM_HEADS = [0, 1, 8, 40, 63]


@pytest.mark.parametrize("n", STREAM_SIZES)
def test_streaming_copies_copy_exactly_and_sum_the_reference_crc32c(n):
    data, want = _run(n)
    seed = SEED
    mem = ffi.new("uint8_t[]", n + 256)
    line = (-int(ffi.cast("uintptr_t", mem))) % 64 + 64
    for head in STREAM_HEADS:
        for crc in (False, True):
            ffi.memmove(mem, b"\xee" * (n + 256), n + 256)
            dst = mem + line + head
            if crc:
                assert lib.gf_copy_crc_stream(dst, data, n, seed) == want, (head, n)
            else:
                lib.gf_copy_stream(dst, data, n)
            got = ffi.buffer(mem, n + 256)[:]
            at = line + head
            assert got[at:at + n] == data, (head, n, crc)
            assert got[:at] == b"\xee" * at and got[at + n:] == b"\xee" * (256 - at), (head, n, crc)


def test_the_folded_and_the_instruction_paths_agree():
    """GRAFOS_NO_FOLD=1 keeps the crc32 instruction alone: both give the same sums."""
    code = ("from grafos._native import lib; import sys; "
            f"print(' '.join(str(lib.gf_crc32c(7, bytes(range(256)) * ({max(FOLD_SIZES)} // 256 + 1), n)) "
            f"for n in {FOLD_SIZES}))")
    sums = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, **env}).stdout.split()
            for env in ({}, {"GRAFOS_NO_FOLD": "1"})]
    assert sums[0] == sums[1] and len(sums[0]) == len(FOLD_SIZES)


# gf_copy takes its own vector loop: AVX-512 (stores aligned to the cache line
# after a masked head) for every copy, or AVX2 where the destination lies within
# 64 bytes of the source modulo 4096 (glibc's `rep movsb` is 15-25x slower there
# on AMD Zen) and memcpy elsewhere: every distance around a page multiple,
# lengths around the loop's steps (a head up to 63 bytes, 256-byte blocks,
# 64-byte moves, a masked tail)
COPY_LENGTHS = [0, 1, 63, 255, 256, 257, 319, 320, 383, 511, 4096, 65536 + 13]
COPY_DISTANCES = list(range(0, 70)) + list(range(4030, 4096)) + [129, 1000, 2048, 4029]


def _copies_exactly() -> list[str]:
    src_mem = ffi.new("uint8_t[]", 3 * 4096 + 70000)
    dst_mem = ffi.new("uint8_t[]", 3 * 4096 + 70000 + 4096)
    src = src_mem + (-int(ffi.cast("uintptr_t", src_mem))) % 4096 + 17
    pattern = bytes((i * 7 + (i >> 9)) & 0xFF for i in range(66000))
    ffi.memmove(src, pattern, len(pattern))
    bad = []
    base = int(ffi.cast("uintptr_t", src))
    for d in COPY_DISTANCES:
        dst = dst_mem + 64 + ((base + d) - int(ffi.cast("uintptr_t", dst_mem + 64))) % 4096
        for n in COPY_LENGTHS:
            ffi.memmove(dst - 64, b"\xee" * (n + 128), n + 128)
            lib.gf_copy(dst, src, n)
            got = ffi.buffer(dst - 64, n + 128)[:]
            if got[64:64 + n] != pattern[:n] or got[:64] != b"\xee" * 64 or got[64 + n:] != b"\xee" * 64:
                bad.append(f"distance {d} length {n}")
    return bad


def test_copy_is_exact_at_every_distance_and_writes_nothing_around():
    assert _copies_exactly() == []


@pytest.mark.parametrize("choice", ["avx2", "0"])
def test_copy_is_exact_with_each_loop(choice):
    """The AVX2 loop (where the CPU has AVX-512 it is otherwise never taken) and plain memcpy."""
    code = "import tests.core.test_hash as t; print(len(t._copies_exactly()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         env={**os.environ, "GRAFOS_WIDE_COPY": choice}).stdout.split()
    assert out == ["0"]
