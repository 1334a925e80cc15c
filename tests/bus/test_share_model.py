"""A share group on one partition driven side by side with a plain Python model.

Several members (ShareConsumers of one group) poll, ack, release, reject and
renew; the clock is injected and moves in whole seconds, so locks run out
exactly when the model says; members die (dropped without releasing) and
leave (close, releasing what they hold). After every step the model and the
group's state agree: which records a poll hands out (in offset order: those
released or whose lock ran out first, then new ones; at the delivery limit
to the DLQ instead), their delivery counts, which settles are refused
(LockLost), the floor, in-flight and available counts and every counter.
The ring is small and never lapped (sends wait for the floor), so no record
may be lost: every offset ends acked or archived, and the DLQ holds exactly
the archived ones with their provenance.
"""
from __future__ import annotations

import time

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from grafos.errors import LockLost
from grafos.mq import TopicConfig, TopicManager

LOCK = 10
T0 = int(time.time())
MEMBERS = 3


class ShareVsModel(RuleBasedStateMachine):
    @initialize(capacity=st.sampled_from([4, 8, 16]), max_deliveries=st.integers(1, 3),
                with_dlq=st.booleans())
    def setup(self, capacity, max_deliveries, with_dlq):
        self.mgr = TopicManager(size=16 << 20)
        self.mgr.create("jobs", TopicConfig(num_partitions=1, partition_capacity=capacity))
        self.dlq = "jobs-dlq" if with_dlq else None
        if with_dlq:
            self.mgr.create("jobs-dlq", TopicConfig(num_partitions=1, partition_capacity=1024))
        self.cap = capacity
        self.maxd = max_deliveries
        self.t = T0
        self.prod = self.mgr.producer("jobs")
        self.gen = 0
        self.members: list = [self.join() for _ in range(MEMBERS)]
        self.holding: list[list] = [[] for _ in range(MEMBERS)]   # records each member got
        # offset -> {"state": avail|held|acked|archived, "count", "holder", "deadline", "value", "last"}
        self.rec: dict[int, dict] = {}
        self.tail = 0
        self.next = 0
        self.c = dict(delivered=0, redelivered=0, acked=0, released=0, rejected=0, dead=0, expired_locks=0)
        self.dead_letters: list[tuple[int, int, str]] = []    # (offset, count, last member)

    def teardown(self):
        if hasattr(self, "mgr"):
            self.mgr.close()

    def join(self):
        self.gen += 1
        return self.mgr.share_consumer("jobs", group="g", lock_secs=LOCK, max_deliveries=self.maxd,
                                       dlq=self.dlq, member=f"m{self.gen}")

    # ---- model ---------------------------------------------------------------------
    @property
    def floor(self) -> int:
        for o in range(self.next):
            if self.rec[o]["state"] not in ("acked", "archived"):
                return o
        return self.next

    def held_live(self, o: int) -> bool:
        r = self.rec[o]
        return r["state"] == "held" and r["deadline"] > self.t

    def takeable(self, o: int) -> bool:
        r = self.rec[o]
        return r["state"] == "avail" or (r["state"] == "held" and r["deadline"] <= self.t)

    def expect_poll(self, n: int, who: str) -> list[int]:
        """What a poll of n hands out, applied to the model (offsets, in order)."""
        got, out = 0, []
        for o in range(self.floor, self.next):
            if got == n:
                break
            if not self.takeable(o):
                continue
            r = self.rec[o]
            if r["state"] == "held":
                self.c["expired_locks"] += 1
            got += 1
            if r["count"] >= self.maxd:     # at the limit: to the DLQ, archived
                if self.dlq is not None:
                    self.dead_letters.append((o, r["count"], r["holder"]))
                r.update(state="archived")
                self.c["dead"] += 1
                continue
            if r["count"]:
                self.c["redelivered"] += 1
            r.update(state="held", count=r["count"] + 1, holder=who, deadline=self.t + LOCK)
            self.c["delivered"] += 1
            out.append(o)
        while got < n and self.next < min(self.tail, self.floor + self.cap):
            o = self.next
            self.next += 1
            self.rec[o].update(state="held", count=1, holder=who, deadline=self.t + LOCK)
            self.c["delivered"] += 1
            got += 1
            out.append(o)
        return out

    def current(self, rec, who: str) -> bool:
        """The model's view: `rec` is this member's current acquisition of its record."""
        r = self.rec[rec.offset]
        return r["state"] == "held" and r["holder"] == who and r["count"] == rec.delivery_count

    # ---- rules ----------------------------------------------------------------------
    @precondition(lambda self: self.tail - self.floor < self.cap)
    @rule(k=st.integers(1, 4))
    def send(self, k):
        for _ in range(min(k, self.cap - (self.tail - self.floor))):
            v = b"v%d" % self.tail
            _, off = self.prod.send(v)
            assert off == self.tail
            self.rec[off] = dict(state="avail", count=0, holder=None, deadline=0, value=v)
            self.tail += 1

    @rule(i=st.integers(0, MEMBERS - 1), n=st.integers(1, 6))
    def poll(self, i, n):
        c = self.members[i]
        want = self.expect_poll(n, c.member)
        got = c.poll(n, now=self.t)
        assert [r.offset for r in got] == want
        for r in got:
            m = self.rec[r.offset]
            assert r.value == m["value"]
            assert r.delivery_count == m["count"]
            assert r.partition == 0
            assert r.deadline == self.t + LOCK
        self.holding[i] += got

    def settle(self, i, data, op):
        c, mine = self.members[i], self.holding[i]
        if not mine:
            return
        picked = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=4, unique_by=id))
        picked = list({(r.offset, r.delivery_count): r for r in picked}.values())
        lost = []
        for r in picked:
            m = self.rec[r.offset]
            ok = self.current(r, c.member) and (op == "release" and m["count"] < self.maxd or self.held_live(r.offset))
            if not ok:
                lost.append(r)
                continue
            if op == "ack":
                m["state"] = "acked"
                self.c["acked"] += 1
            elif op == "renew":
                m["deadline"] = self.t + LOCK
            elif op == "release" and m["count"] < self.maxd:
                m["state"] = "avail"
                self.c["released"] += 1
            else:   # reject, or a release at the limit: archived (to the DLQ when one is set)
                m["state"] = "archived"
                self.c["rejected" if op == "reject" else "dead"] += 1
                if self.dlq is not None:
                    self.dead_letters.append((r.offset, m["count"], c.member))
        try:
            getattr(c, op)(picked, now=self.t)
            assert not lost, f"{op} of {[(r.offset, r.delivery_count) for r in lost]} was not refused"
        except LockLost as e:
            assert lost, f"{op} refused {e}"
            assert sorted((r.offset, r.delivery_count) for r in e.records) == \
                sorted((r.offset, r.delivery_count) for r in lost)
        if op != "renew":
            done = {id(r) for r in picked}
            self.holding[i] = [r for r in mine if id(r) not in done]

    @rule(i=st.integers(0, MEMBERS - 1), data=st.data())
    def ack(self, i, data):
        self.settle(i, data, "ack")

    @rule(i=st.integers(0, MEMBERS - 1), data=st.data())
    def release(self, i, data):
        self.settle(i, data, "release")

    @rule(i=st.integers(0, MEMBERS - 1), data=st.data())
    def reject(self, i, data):
        self.settle(i, data, "reject")

    @rule(i=st.integers(0, MEMBERS - 1), data=st.data())
    def renew(self, i, data):
        self.settle(i, data, "renew")

    @rule(dt=st.sampled_from([1, 3, LOCK - 1, LOCK, LOCK + 1, 2 * LOCK]))
    def tick(self, dt):
        self.t += dt

    @rule(i=st.integers(0, MEMBERS - 1))
    def die(self, i):
        """The member vanishes without a word: its locks run out."""
        self.members[i] = self.join()
        self.holding[i] = []

    @rule(i=st.integers(0, MEMBERS - 1))
    def leave(self, i):
        """close(): what it still holds (its lock unexpired or not) is released."""
        c = self.members[i]
        for (_, o) in c.held():
            r = self.rec[o]
            if r["state"] == "held" and r["holder"] == c.member:
                r["state"] = "avail"
                self.c["released"] += 1
        c.close()
        self.members[i] = self.join()
        self.holding[i] = []

    # ---- invariants ------------------------------------------------------------------
    @invariant()
    def agrees(self):
        if not hasattr(self, "mgr"):
            return
        (s,) = self.members[0].describe(now=self.t)
        assert s.floor == self.floor
        assert s.next == self.next
        assert s.latest == self.tail
        assert s.in_flight == sum(self.held_live(o) for o in range(self.floor, self.next))
        window_avail = sum(self.takeable(o) for o in range(self.floor, self.next))
        assert s.available == window_avail + (min(self.tail, self.floor + self.cap) - self.next)
        got = dict(delivered=s.delivered, redelivered=s.redelivered, acked=s.acked, released=s.released,
                   rejected=s.rejected, dead=s.dead_lettered, expired_locks=s.expired_locks)
        assert got == self.c
        assert s.lost == 0
        # each member knows of the records it holds (it may still list a lock that ran
        # out: it learns that at its next settle)
        for c in self.members:
            live = {(0, o) for o in range(self.floor, self.next)
                    if self.held_live(o) and self.rec[o]["holder"] == c.member}
            assert live <= set(c.held())

    @invariant()
    def dead_letters_match(self):
        if not hasattr(self, "mgr") or self.dlq is None:
            return
        msgs = self.mgr.topic(self.dlq).partition(0).read(0, 4096)
        seen = []
        for m in msgs:
            h = dict(m.headers)
            assert h["x-source-topic"] == b"jobs" and h["x-source-partition"] == b"0"
            assert m.value == self.rec[int(h["x-source-offset"])]["value"]
            seen.append((int(h["x-source-offset"]), int(h["x-delivery-count"]), h["x-last-member"].decode()))
        assert seen == self.dead_letters


ShareVsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_share_model = ShareVsModel.TestCase
