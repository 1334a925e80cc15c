"""Consumer groups: coordinator-free claiming, fair shares, stale members,
fencing, failover from committed offsets. Every behaviour runs against the
three state backends: in the group object, in an in-process fabric, and in a
named shared bus (two attachments of it stand for two processes)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.bus_helpers import bus_store, make_mgr, snapshot
from grafos.errors import Fenced, InvalidArgument, InvalidType, NotFound
from grafos.mq.consumer import SeekPolicy
from grafos.mq.group import ConsumerGroup, group_lag, list_groups
from grafos.mq.offset import FabricOffsetStore, MemOffsetStore
from grafos.mq.producer import Producer
from grafos.mq.topic import TopicConfig, TopicManager

T0 = 1_000_000.0     # the group's injected clock
STALE = 30.0


@pytest.fixture(params=["object", "inproc-fabric", "named-fabric", "jetstream"])
def backend(request, shm_name):
    """(mgr, make_group): make_group() returns a ConsumerGroup on the backend under
    test; for the fabric and JetStream backends each call is a separate object over
    the same state (as separate processes would have)."""
    kind = request.param
    mgr = make_mgr({"named-fabric": "named", "jetstream": "jetstream"}.get(kind, "inproc"), shm_name, request)
    mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=1024, partition_stride=128))
    shared = ConsumerGroup("processors", "events", 4, STALE)
    mgrs = [mgr]

    def make_group(separate_attachment: bool = False) -> ConsumerGroup:
        if kind == "object":
            return shared
        m = mgr
        if separate_attachment and kind == "named-fabric":
            m = TopicManager.open(shm_name)
            mgrs.append(m)
        if separate_attachment and kind == "jetstream":
            m = TopicManager.connect(request.getfixturevalue("nats_url"))
            mgrs.append(m)
        return ConsumerGroup("processors", "events", 4, STALE, mgr=m)

    yield mgr, make_group
    for m in reversed(mgrs):
        m.close()


def test_should_own_every_partition_when_alone(backend):
    _, make = backend
    g = make()
    assert g.claim("a", now=T0) == [0, 1, 2, 3]
    assert g.assignments() == {0: "a", 1: "a", 2: "a", 3: "a"}
    assert g.members() == ["a"]


def test_should_share_partitions_when_a_member_joins(backend):
    _, make = backend
    ga, gb = make(), make(separate_attachment=True)
    assert ga.claim("a", now=T0) == [0, 1, 2, 3]
    assert gb.claim("b", now=T0 + 1) == []            # all taken, a is live
    kept = ga.heartbeat("a", now=T0 + 2)              # a gives back above its share
    assert len(kept) == 2
    got = gb.claim("b", now=T0 + 3)
    assert len(got) == 2 and set(got).isdisjoint(kept)
    assert ga.assignments() == {**{p: "a" for p in kept}, **{p: "b" for p in got}}


def test_should_give_every_member_a_share_when_partitions_do_not_divide(backend):
    """4 partitions, 3 members: shares 2, 1, 1 -- nobody is left with nothing."""
    _, make = backend
    g = make()
    g.claim("a", now=T0)
    g.claim("b", now=T0)
    g.claim("c", now=T0)
    for m in "abc":
        g.heartbeat(m, now=T0 + 1)
    for m in "abc":
        g.claim(m, now=T0 + 2)
    owners = g.assignments()
    assert sorted(owners) == [0, 1, 2, 3]
    counts = sorted(list(owners.values()).count(m) for m in "abc")
    assert counts == [1, 1, 2]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(partitions=st.integers(1, 12), members=st.integers(1, 6), order=st.randoms(use_true_random=False))
def test_should_converge_to_a_fair_assignment_for_any_sizes(partitions, members, order):
    g = ConsumerGroup("g", "t", partitions, STALE)
    names = [f"m{i}" for i in range(members)]
    now = T0
    for _ in range(3):                       # three rounds of everyone heartbeating then claiming
        order.shuffle(names)
        for m in names:
            g.heartbeat(m, now=now)
        for m in names:
            g.claim(m, now=now)
        now += 1
    owners = g.assignments()
    assert sorted(owners) == list(range(partitions))       # every partition owned, once
    counts = [list(owners.values()).count(m) for m in names]
    assert max(counts) - min(counts) <= 1
    assert max(counts) == -(-partitions // members)        # ceil(P / M)


def test_should_keep_partitions_while_heartbeating(backend):
    _, make = backend
    ga, gb = make(), make(separate_attachment=True)
    ga.claim("a", now=T0)
    for k in range(1, 11):                                  # 100 s of heartbeats every 10 s
        assert ga.heartbeat("a", now=T0 + 10 * k) == [0, 1, 2, 3]
        assert gb.stale_members(now=T0 + 10 * k + 9) == []
    assert [gb.epoch(p) for p in range(4)] == [1, 1, 1, 1]  # never taken over
    got = gb.claim("b", now=T0 + 105)                       # b joins: a is live, b waits
    assert got == []
    assert len(ga.heartbeat("a", now=T0 + 106)) == 2        # then a shares
    assert len(gb.claim("b", now=T0 + 107)) == 2


def test_should_lose_partitions_after_the_stale_threshold(backend):
    _, make = backend
    ga, gb = make(), make(separate_attachment=True)
    ga.claim("a", now=T0)
    assert gb.claim("b", now=T0 + STALE - 1) == []
    assert gb.stale_members(now=T0 + STALE - 1) == []
    assert gb.stale_members(now=T0 + STALE + 1) == ["a"]
    assert [ga.epoch(p) for p in range(4)] == [1, 1, 1, 1]
    assert gb.claim("b", now=T0 + STALE + 1) == [0, 1, 2, 3]
    assert [ga.epoch(p) for p in range(4)] == [2, 2, 2, 2]        # every takeover bumps the epoch
    assert gb.assignments() == {p: "b" for p in range(4)}
    assert ga.heartbeat("a", now=T0 + STALE + 2) == []            # a comes back to nothing


def test_should_let_others_take_over_at_once_when_a_member_leaves(backend):
    _, make = backend
    ga, gb = make(), make(separate_attachment=True)
    ga.claim("a", now=T0)
    gb.claim("b", now=T0)
    assert ga.leave("a") == [0, 1, 2, 3]
    assert gb.claim("b", now=T0 + 1) == [0, 1, 2, 3]
    assert ga.members() == ["b"]


def test_should_refuse_commit_from_a_fenced_member(backend):
    mgr, make = backend
    ga, gb = make(), make(separate_attachment=True)
    store = MemOffsetStore()
    ga.claim("a", now=T0)
    ga.commit(store, "a", "events", {0: 0, 1: 0})
    gb.claim("b", now=T0 + STALE + 1)
    before = store.items()
    with pytest.raises(Fenced) as ei:
        ga.commit(store, "a", "events", {0: 0, 1: 0})
    assert ei.value.partitions == [0, 1]
    assert store.items() == before                                # nothing committed for them
    gb.commit(store, "b", "events", {0: 0})                       # the successor commits fine


def test_should_commit_owned_partitions_and_fence_the_rest(backend):
    _, make = backend
    ga, gb = make(), make(separate_attachment=True)
    store = MemOffsetStore()
    ga.claim("a", now=T0)
    gb.claim("b", now=T0)
    kept = ga.heartbeat("a", now=T0 + 1)
    taken = gb.claim("b", now=T0 + 1)
    with pytest.raises(Fenced) as ei:
        ga.commit(store, "a", "events", {p: 0 for p in range(4)})
    assert ei.value.partitions == sorted(taken)
    assert store.items() == {("processors", "events", p): 0 for p in kept}


@pytest.mark.parametrize("kind", ["inproc", "named"])
def test_should_fence_a_member_reclaiming_under_a_new_epoch(kind, shm_name):
    """a owned p under epoch 1; b took it (2); b left; a claimed it again (3) through
    another group object over the same fabric. The first object still holds
    epoch 1 for a: its commit is fenced."""
    mgr = make_mgr(kind, shm_name)
    try:
        mgr.create("events", TopicConfig(num_partitions=4, partition_capacity=16, partition_stride=128))
        g1, g2, gb = (ConsumerGroup("processors", "events", 4, STALE, mgr=mgr) for _ in range(3))
        store = MemOffsetStore()
        g1.claim("a", now=T0)
        gb.claim("b", now=T0 + STALE + 1)
        gb.leave("b")
        assert g2.claim("a", now=T0 + STALE + 2) == [0, 1, 2, 3]
        assert g1.epoch(0) == 3
        with pytest.raises(Fenced):
            g1.commit(store, "a", "events", {0: 0})
        assert store.items() == {}
        g2.commit(store, "a", "events", {0: 0})
        assert store.committed("processors", "events", 0) == 0
    finally:
        mgr.close()


def test_should_fence_a_bound_consumer_commit(backend):
    mgr, make = backend
    ga, gb = make(), make(separate_attachment=True)
    store = MemOffsetStore()
    prod = Producer("events")
    for i in range(8):
        prod.send(mgr, b"m%d" % i)
    ca = ga.consumer("a")
    ca.assign(ga.claim("a", now=T0))
    ca.seek(mgr, store, SeekPolicy.Committed)
    assert len(ca.poll(mgr, 100)) == 8
    gb.claim("b", now=T0 + STALE + 1)
    with pytest.raises(Fenced):
        ca.commit(store)
    assert store.items() == {}


def test_should_hand_over_from_committed_offsets_losing_nothing(backend):
    """a commits part of its work, polls more without committing and goes silent;
    after the stale threshold b takes over from the committed offsets: every
    message is processed, nothing a committed is delivered to b again, and what
    a polled but did not commit is delivered again (at least once)."""
    mgr, make = backend
    ga, gb = make(), make(separate_attachment=True)
    # each "process" has its own store object over its own attachment of the bus
    store_a = bus_store(ga.mgr) if ga.mgr is not None else MemOffsetStore()
    store_b = bus_store(gb.mgr) if gb.mgr is not None else store_a
    mgr_b = gb.mgr or mgr
    prod = Producer("events")
    produced = {prod.send_keyed(mgr, b"user-%d" % (i % 13), b"v%d" % i) for i in range(400)}

    ca = ga.consumer("a")
    ca.assign(ga.claim("a", now=T0))
    ca.seek(mgr, store_a, SeekPolicy.Committed)
    committed_by_a = set()
    for _ in range(3):
        got = ca.poll(mgr, 40)
        committed_by_a |= {(p, m.offset) for p, m in got}
        ca.commit(store_a)
    uncommitted = {(p, m.offset) for p, m in ca.poll(mgr, 40)}     # then a goes silent
    assert uncommitted and committed_by_a

    assert gb.claim("b", now=T0 + STALE / 2) == []
    owned = gb.claim("b", now=T0 + STALE + 1)
    assert owned == [0, 1, 2, 3]
    cb = gb.consumer("b")
    cb.assign(owned)
    cb.seek(mgr_b, store_b, SeekPolicy.Committed)
    delivered_to_b = []
    while got := cb.poll(mgr_b, 64):
        delivered_to_b += [(p, m.offset) for p, m in got]
        cb.commit(store_b)
    assert len(delivered_to_b) == len(set(delivered_to_b))
    assert committed_by_a | set(delivered_to_b) == produced        # nothing lost
    assert committed_by_a.isdisjoint(delivered_to_b)               # nothing committed comes again
    assert uncommitted <= set(delivered_to_b)
    with pytest.raises(Fenced):
        ca.commit(store_a)
    assert gb.lag(mgr_b, store_b) == {p: 0 for p in range(4)}


def test_should_describe_members_partitions_and_lag(backend):
    mgr, make = backend
    g = make()
    store = MemOffsetStore()
    prod = Producer("events")
    for i in range(20):
        prod.send(mgr, b"x")                  # round robin: 5 per partition
    g.claim("a", now=T0)
    g.commit(store, "a", "events", {0: 5, 1: 2})
    d = g.describe(mgr, store, now=T0 + 1)
    assert [p.lag for p in d.partitions] == [0, 3, 5, 5]
    assert d.lag == 13 and d.consumed == 7
    assert d.assignments() == g.assignments()
    assert [(m.name, m.stale, m.partitions) for m in d.members] == [("a", False, [0, 1, 2, 3])]
    assert g.describe(mgr, store, now=T0 + STALE + 1).stale_members == ["a"]
    assert group_lag(mgr, store, "processors", "events") == g.lag(mgr, store)


def test_should_refuse_bad_input_and_change_nothing(backend):
    mgr, make = backend
    g = make()
    store = MemOffsetStore()
    g.claim("a", now=T0)
    g.commit(store, "a", "events", {0: 1})
    before = (g.assignments(), g.members(), snapshot(mgr, store))
    bad = [
        (InvalidType, lambda: g.claim(7, now=T0)),
        (InvalidArgument, lambda: g.claim("", now=T0)),
        (InvalidArgument, lambda: g.claim("a/b", now=T0)),
        (InvalidType, lambda: g.heartbeat(None, now=T0)),
        (InvalidType, lambda: g.claim("x", now="soon")),
        (InvalidArgument, lambda: g.commit(store, "a", "events", {4: 0})),      # partition out of range
        (InvalidArgument, lambda: g.commit(store, "a", "events", {0: 2, 1: -1})),
        (InvalidType, lambda: g.commit(store, "a", "events", {0: "3"})),
        (InvalidType, lambda: g.commit(store, "a", "events", [(0, 1)])),
        (InvalidArgument, lambda: g.commit(store, "a", "other", {0: 2})),        # wrong topic
        (InvalidType, lambda: g.commit({}, "a", "events", {0: 2})),              # not a store
        (InvalidType, lambda: g.epoch("0")),
        (InvalidArgument, lambda: ConsumerGroup("g", "events", 0, STALE)),
        (InvalidArgument, lambda: ConsumerGroup("g", "events", 4, -1)),
        (InvalidArgument, lambda: ConsumerGroup("g", "events", 4, 0)),
        (InvalidType, lambda: ConsumerGroup("g", "events", 4.0, STALE)),
        (InvalidType, lambda: ConsumerGroup("g", "events", 4, STALE, mgr="bus")),
        (InvalidArgument, lambda: ConsumerGroup("g", "events", 8, STALE, mgr=mgr)),  # topic has 4
    ]
    for exc, call in bad:
        with pytest.raises(exc):
            call()
    assert (g.assignments(), g.members(), snapshot(mgr, store)) == before


def test_should_list_fabric_groups_and_attach_by_name(backend):
    mgr, make = backend
    g = make()
    if g.mgr is None:
        assert list_groups(mgr) == []
        return
    [cfg] = list_groups(mgr)
    assert (cfg.name, cfg.topic, cfg.num_partitions, cfg.stale_threshold_secs) == ("processors", "events", 4, STALE)
    g.claim("a", now=T0)
    again = ConsumerGroup.attach(mgr, "processors", "events")
    assert again.assignments() == g.assignments()
    with pytest.raises(NotFound):
        ConsumerGroup.attach(mgr, "nobody", "events")


def test_should_handle_names_too_long_for_literal_fabric_keys(shm_name):
    """64-character group, topic and member names do not fit a 96-byte key
    together: the fabric backend digests them and still reports them by name."""
    mgr = make_mgr("named", shm_name)
    try:
        topic, group = "t" * 64, "g" * 64
        members = ["m" * 63 + str(i) for i in range(2)]
        mgr.create(topic, TopicConfig(num_partitions=4, partition_capacity=16, partition_stride=128))
        g = ConsumerGroup(group, topic, 4, STALE, mgr=mgr)
        other = ConsumerGroup("g" * 63 + "h", topic, 4, STALE, mgr=mgr)     # a different long name
        g.claim(members[0], now=T0)
        g.claim(members[1], now=T0)
        g.heartbeat(members[0], now=T0)
        g.claim(members[1], now=T0)
        assert g.members() == sorted(members)
        assert sorted(set(g.assignments().values())) == sorted(members)
        assert other.members() == [] and other.assignments() == {}
        assert {(c.name, c.topic) for c in list_groups(mgr)} == {(group, topic), ("g" * 63 + "h", topic)}
        store = FabricOffsetStore(mgr)
        mine = g.owned(members[0])
        g.commit(store, members[0], topic, {p: 0 for p in mine})
        assert {k for k in store.items()} == {(group, topic, p) for p in mine}
    finally:
        mgr.close()


def test_should_commit_through_a_fabric_store_on_another_attachment_of_the_bus(shm_name):
    """The group holds its bus's lock while it commits; a FabricOffsetStore opened on
    a second attachment of the same bus in this process must not wait on it."""
    one = make_mgr("named", shm_name)
    two = TopicManager.open(shm_name)
    try:
        one.create("events", TopicConfig(num_partitions=2, partition_capacity=16, partition_stride=128))
        g = ConsumerGroup("processors", "events", 2, STALE, mgr=one)
        store = FabricOffsetStore(two)
        g.claim("a", now=T0)
        assert g.commit(store, "a", "events", {0: 0, 1: 0}) == {0: 0, 1: 0}
        assert store.items() == {("processors", "events", 0): 0, ("processors", "events", 1): 0}
    finally:
        two.close()
        one.close()
