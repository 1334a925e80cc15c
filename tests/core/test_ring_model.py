"""A partition ring driven side by side with a plain Python model.

The model maps each offset that starts a message to the message; a message
larger than one slot's room takes one offset per slot it spans, and one that
would straddle the ring's end starts at the next lap's slot 0 after padding
offsets. Offsets without a message are gaps. The ring holds the last
`capacity` offsets; a message is readable while its first offset is among
them (so overwriting any part of it, its first slot first, ends it). A reader
at position p that fell behind the ring resumes at the earliest offset and
reports how many it lost. Capacities are tiny (1..8) so wrap-around across
the ring's end and overwrite of multi-slot messages happen in almost every run.
"""
from __future__ import annotations

import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from grafos import Fabric
from grafos.errors import MessageTooLarge
from grafos.message import encode_headers
from grafos.partition import Partition

NOW_NS = time.time_ns()

keys = st.none() | st.binary(max_size=12)
# mostly one slot, often several (up to and past the whole ring: 8 x 128 bytes)
values = st.binary(max_size=96) | st.binary(min_size=90, max_size=1100)
header_lists = st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=6)), max_size=2)
# event timestamps are data: anything from the epoch to far past the lease's expiry
timestamps = st.none() | st.integers(1, 1 << 62) | st.integers(NOW_NS - 10**12, NOW_NS + 10**13)


class RingVsModel(RuleBasedStateMachine):
    @initialize(capacity=st.integers(1, 8), stride=st.sampled_from([48, 56, 64, 80, 128]))
    def make_ring(self, capacity, stride):
        self.fab = Fabric(2 << 20, lease_slots=4, meta_slots=4)
        self.part = Partition.create(self.fab, capacity, stride, ttl=3600)
        self.capacity = capacity
        self.stride = stride
        self.room = stride - 40
        self.max_message = capacity * stride - 40
        # offset -> (key, value, headers, timestamp, span); offsets below tail not in it are gaps
        self.log: dict[int, tuple] = {}
        self.tail = 0
        # a long-lived reader and where the model says it is
        self.reader = self.part.reader(0, max_batch=16)
        self.rpos = 0
        self.rlost = 0
        self.rgaps = 0

    def teardown(self):
        if hasattr(self, "fab"):
            self.part.close()
            self.fab.close()

    # ---- model ---------------------------------------------------------------
    def span(self, size: int) -> int:
        return 1 if size <= self.room else -(-(40 + size) // self.stride)

    def place(self, size: int) -> int:
        """Where the next message of `size` bytes starts (padding the ring's end)."""
        k, at = self.span(size), self.tail
        if at % self.capacity + k > self.capacity:
            at += self.capacity - at % self.capacity
        return at

    def add(self, key, value, headers, ts, size: int) -> int:
        at = self.place(size)
        k = self.span(size)
        self.log[at] = (key, value, headers, ts, k)
        self.tail = at + k
        return at

    @property
    def earliest(self) -> int:
        return max(0, self.tail - self.capacity)

    def walk(self, start: int, n: int) -> tuple[list[tuple], int, int, int]:
        """What a read of at most n messages from `start` returns:
        (messages, position after, lost, gaps)."""
        lost = max(0, self.earliest - start)
        pos = max(start, self.earliest)
        out, gaps = [], 0
        while len(out) < n and pos < self.tail:
            if pos in self.log:
                m = self.log[pos]
                out.append((pos, *m[:4]))
                pos += m[4]
                gaps += m[4] - 1
            else:
                pos += 1
                gaps += 1
        return out, pos, lost, gaps

    def check_messages(self, got, expected):
        assert len(got) == len(expected), (got, expected)
        for (pid, m), (off, key, value, headers, ts) in zip(got, expected):
            assert pid == 0
            assert m.offset == off
            assert m.key == key
            assert m.value == value
            assert m.headers == tuple((k, v) for k, v in headers)
            if ts is not None:
                assert m.timestamp == ts

    # ---- rules -----------------------------------------------------------------
    @rule(key=keys, value=values, headers=header_lists, ts=timestamps)
    def append(self, key, value, headers, ts):
        size = len(key or b"") + len(encode_headers(headers)) + len(value)
        try:
            off = self.part.append(value, key=key, headers=headers, timestamp=ts)
        except MessageTooLarge as e:
            assert size > self.max_message, f"refused a {size}-byte message, the ring holds {self.max_message}"
            assert e.room == self.max_message
            assert str(size) in str(e) and str(self.max_message) in str(e)
            return
        assert size <= self.max_message, f"accepted a {size}-byte message, the ring holds {self.max_message}"
        assert off == self.add(key, value, headers, ts, size)

    @rule(items=st.lists(st.tuples(st.binary(max_size=12), values), min_size=1, max_size=12),
          keyed=st.booleans(), ts=timestamps)
    def append_batch(self, items, keyed, ts):
        vals = [v for _, v in items]
        ks = [k for k, _ in items] if keyed else None
        fits = all((len(k) if keyed else 0) + len(v) <= self.max_message for k, v in items)
        try:
            got = self.part.append_batch(vals, keys=ks, timestamp=ts)
        except MessageTooLarge:
            assert not fits
            return   # all or nothing: the model does not move
        assert fits
        offs = [self.add(k if keyed else None, v, (), ts, (len(k) if keyed else 0) + len(v)) for k, v in items]
        assert got.tolist() == offs

    @rule(data=st.data(), n=st.integers(1, 12))
    def read_fresh(self, data, n):
        # anywhere: behind the ring, inside it (inside a multi-slot message too), at the end, past it
        offset = data.draw(st.integers(0, self.tail + 3), label="offset")
        rd = self.part.reader(offset, max_batch=n)
        got = rd.poll(n)
        expected, pos, lost, gaps = self.walk(offset, n)
        self.check_messages(got, expected)
        c = rd.counters(0)
        assert c["lost"] == lost
        assert (c["abandoned"], c["corrupt"], c["expired"]) == (0, 0, 0)
        assert rd.gaps(0) == gaps
        assert rd.position(0) == (pos if offset <= self.tail else offset)

    @rule(n=st.integers(1, 16))
    def poll_long_lived(self, n):
        expected, pos, lost, gaps = self.walk(self.rpos, n)
        got = self.reader.poll(n)
        self.check_messages(got, expected)
        self.rpos, self.rlost, self.rgaps = pos, self.rlost + lost, self.rgaps + gaps
        assert self.reader.counters(0)["lost"] == self.rlost
        assert self.reader.gaps(0) == self.rgaps
        assert self.reader.position(0) == self.rpos

    @rule(data=st.data())
    def seek_long_lived(self, data):
        offset = data.draw(st.integers(0, self.tail + 2), label="seek")
        self.reader.seek(0, offset)
        self.rpos = offset

    @precondition(lambda self: self.tail > 0)
    @rule(data=st.data())
    def read_one_behind_or_in(self, data):
        # Partition.read, the convenience path
        offset = data.draw(st.integers(0, self.tail - 1), label="offset")
        msgs = self.part.read(offset, max_messages=self.capacity)
        self.check_messages([(0, m) for m in msgs], self.walk(offset, self.capacity)[0])

    @invariant()
    def state_matches(self):
        if not hasattr(self, "part"):
            return
        s = self.part.state()
        assert s.latest == self.tail
        assert s.earliest == self.earliest
        assert s.lost == self.earliest
        assert s.abandoned == 0
        assert s.alive


RingVsModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestRingVsModel = RingVsModel.TestCase
