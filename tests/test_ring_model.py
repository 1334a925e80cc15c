"""A partition ring driven side by side with a plain Python model.

The model is a list of every message ever appended. Offset n is log[n];
the ring holds the last `capacity` of them. A reader at position p that
fell behind the ring resumes at the earliest offset and reports how many it
lost. Capacities are tiny (1..8) so wrap-around and overwrite happen in
almost every run.
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
values = st.binary(max_size=96)
header_lists = st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=6)), max_size=2)
# event timestamps are data: anything from the epoch to far past the lease's expiry
timestamps = st.none() | st.integers(1, 1 << 62) | st.integers(NOW_NS - 10**12, NOW_NS + 10**13)


class RingVsModel(RuleBasedStateMachine):
    @initialize(capacity=st.integers(1, 8), stride=st.sampled_from([48, 56, 64, 80, 128]))
    def make_ring(self, capacity, stride):
        self.fab = Fabric(2 << 20, lease_slots=4, meta_slots=4)
        self.part = Partition.create(self.fab, capacity, stride, ttl=3600)
        self.capacity = capacity
        self.room = stride - 40
        self.log: list[tuple[bytes | None, bytes, tuple, int | None]] = []
        # a long-lived reader and where the model says it is
        self.reader = self.part.reader(0, max_batch=16)
        self.rpos = 0
        self.rlost = 0

    def teardown(self):
        if hasattr(self, "fab"):
            self.part.close()
            self.fab.close()

    # ---- model ---------------------------------------------------------------
    @property
    def tail(self) -> int:
        return len(self.log)

    @property
    def earliest(self) -> int:
        return max(0, self.tail - self.capacity)

    def expect(self, start: int, n: int) -> list[tuple]:
        start = max(start, self.earliest)
        return [(off, *self.log[off]) for off in range(start, min(self.tail, start + n))]

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
            assert size > self.room, f"refused a {size}-byte message with {self.room} bytes of room"
            assert e.room == self.room
            assert str(size) in str(e) and str(self.room) in str(e)
            return
        assert size <= self.room, f"accepted a {size}-byte message with {self.room} bytes of room"
        assert off == self.tail
        self.log.append((key, value, headers, ts))

    @rule(items=st.lists(st.tuples(st.binary(max_size=12), values), min_size=1, max_size=12),
          keyed=st.booleans(), ts=timestamps)
    def append_batch(self, items, keyed, ts):
        vals = [v for _, v in items]
        ks = [k for k, _ in items] if keyed else None
        fits = all((len(k) if keyed else 0) + len(v) <= self.room for k, v in items)
        try:
            first = self.part.append_batch(vals, keys=ks, timestamp=ts)
        except MessageTooLarge:
            assert not fits
            return   # all or nothing: the model does not move
        assert fits
        assert first == self.tail
        for k, v in items:
            self.log.append((k if keyed else None, v, (), ts))

    @rule(data=st.data(), n=st.integers(1, 12))
    def read_fresh(self, data, n):
        # anywhere: behind the ring, inside it, at the end, past the end
        offset = data.draw(st.integers(0, self.tail + 3), label="offset")
        rd = self.part.reader(offset, max_batch=n)
        got = rd.poll(n)
        self.check_messages(got, self.expect(offset, n))
        c = rd.counters(0)
        assert c["lost"] == max(0, self.earliest - offset)
        assert (c["abandoned"], c["corrupt"], c["expired"]) == (0, 0, 0)
        expected_pos = max(offset, self.earliest) + len(got) if offset <= self.tail else offset
        assert rd.position(0) == expected_pos

    @rule(n=st.integers(1, 16))
    def poll_long_lived(self, n):
        if self.rpos < self.earliest:      # fell behind the ring: resume at its start, count the gap
            self.rlost += self.earliest - self.rpos
            self.rpos = self.earliest
        expected = self.expect(self.rpos, n)
        got = self.reader.poll(n)
        self.check_messages(got, expected)
        self.rpos += len(expected)
        assert self.reader.counters(0)["lost"] == self.rlost
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
        exp = self.expect(offset, self.capacity)
        self.check_messages([(0, m) for m in msgs], exp)

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
