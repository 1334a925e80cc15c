"""A model of the gate of a group on a "raise" topic, checked by hypothesis:
members join, heartbeat, leave and die (stop heartbeating past the stale
threshold on an injected clock), commit through every spelling, and a
producer sends. At every step: no send is refused while the group has
committed past the slot it would overwrite (or has no live member), and no
unread message of a live group is overwritten."""
from __future__ import annotations

import time

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import grafos._clock
from grafos.errors import BufferFull, Fenced
from grafos.mq.consumer import Consumer, SeekPolicy
from grafos.mq.group import ConsumerGroup
from grafos.mq.offset import FabricOffsetStore
from grafos.mq.producer import Producer, kafka_partition
from grafos.mq.topic import TopicConfig, TopicManager

P, CAP, STALE = 2, 4, 10.0
MEMBERS = ("a", "b", "c")
SPELLINGS = ("group.commit", "consumer.commit", "group.consumer", "txn.commit_offsets", "store(mgr)",
             "store(fabric)")
KEYS = [next(b"k%d" % j for j in range(1000) if kafka_partition(b"k%d" % j, P) == p) for p in range(P)]


class _Clock:
    """The time module as grafos sees it, at the machine's injected time."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time_ns(self) -> int:
        return int(self.t * 1e9)

    def time(self) -> float:
        return self.t

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else is the real module
        return getattr(time, name)


class GateModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock(time.time())
        grafos._clock.time = self.clock          # type: ignore[assignment]
        self.mgr = TopicManager(size=8 << 20)
        self.mgr.create("t", TopicConfig(P, CAP, 128, 3600.0, on_full="raise"))
        self.group = ConsumerGroup("g", "t", P, STALE, mgr=self.mgr)
        self.prod = Producer("t")
        self.mgr.create("out", TopicConfig(1, 64, 128, 3600.0))
        self.txn = Producer("out", transactional_id="gate-model", transaction_ttl=3600.0)
        self.hb: dict[str, float] = {}           # members that joined and did not leave -> last heartbeat
        self.tail = [0] * P
        self.committed: list[int | None] = [None] * P
        self.sent = self.refused = 0

    def teardown(self) -> None:
        grafos._clock.time = time               # type: ignore[assignment]
        self.mgr.close()

    # ---- the model ---------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.t

    def live(self) -> bool:
        return any(self.now - hb < STALE for hb in self.hb.values())

    def position(self, p: int) -> int:
        earliest = max(0, self.tail[p] - CAP)
        c = self.committed[p]
        return min(max(earliest if c is None else c, earliest), self.tail[p])

    # ---- membership --------------------------------------------------------------------------
    @rule(m=st.sampled_from(MEMBERS))
    def join(self, m: str) -> None:
        self.group.claim(m, now=self.now)
        self.hb[m] = self.now

    @precondition(lambda self: self.hb)
    @rule(data=st.data())
    def heartbeat(self, data) -> None:  # noqa: ANN001
        m = data.draw(st.sampled_from(sorted(self.hb)))
        self.group.heartbeat(m, now=self.now)
        self.hb[m] = self.now

    @precondition(lambda self: self.hb)
    @rule(data=st.data())
    def leave(self, data) -> None:  # noqa: ANN001
        m = data.draw(st.sampled_from(sorted(self.hb)))
        self.group.leave(m)
        del self.hb[m]

    @rule(dt=st.sampled_from([0.5, 3.0, 7.0, 11.0]))
    def tick(self, dt: float) -> None:
        """Time passes: members that do not heartbeat meanwhile die."""
        self.clock.t += dt

    # ---- commits -----------------------------------------------------------------------------
    @precondition(lambda self: self.hb)
    @rule(data=st.data(), spelling=st.sampled_from(SPELLINGS))
    def commit(self, data, spelling: str) -> None:  # noqa: ANN001
        m = data.draw(st.sampled_from(sorted(self.hb)))
        owned = sorted(self.group.owned(m))
        if spelling.startswith("store"):
            owned = list(range(P))
        if not owned:
            return
        p = data.draw(st.sampled_from(owned))
        off = data.draw(st.integers(max(0, self.tail[p] - CAP), self.tail[p]))
        store = FabricOffsetStore(self.mgr.fabric if spelling == "store(fabric)" else self.mgr)
        try:
            if spelling == "group.commit":
                self.group.commit(store, m, "t", {p: off}, now=self.now)
            elif spelling == "store(mgr)" or spelling == "store(fabric)":
                store.commit("g", "t", p, off)
            else:
                c = self.group.consumer(m) if spelling == "group.consumer" else Consumer("t", "g")
                c.assign([p])
                c.seek(self.mgr, store, SeekPolicy.Committed)
                if spelling == "txn.commit_offsets":
                    with self.txn.begin(self.mgr) as txn:
                        txn.commit_offsets(c, store, {p: off})
                else:
                    c.commit(store, {p: off})
                c.close()
        except Fenced:
            return
        self.committed[p] = off

    # ---- sends -------------------------------------------------------------------------------
    @rule(p=st.integers(0, P - 1))
    def send(self, p: int) -> None:
        room = not self.live() or self.tail[p] + 1 <= self.position(p) + CAP
        try:
            got = self.prod.send_keyed(self.mgr, KEYS[p], b"m")
        except BufferFull:
            self.refused += 1
            assert not room, f"partition {p}: refused although the group committed past the slot"
            return
        assert got == (p, self.tail[p])
        assert room, f"partition {p}: overwrote offset {self.tail[p] - CAP} the live group had not read"
        self.tail[p] += 1
        self.sent += 1

    @invariant()
    def gate_is_the_models(self) -> None:
        d = self.mgr.describe("t")
        for p in range(P):
            want = self.position(p) + CAP if self.live() else 0
            assert (d.partitions[p].gate, d.partitions[p].latest) == (want, self.tail[p]), p


TestGateModel = GateModel.TestCase
TestGateModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
