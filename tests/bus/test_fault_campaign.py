"""The fault campaign (tests/helpers/fault_campaign.py): a mixed workload across
processes under SIGKILL, SIGSTOP/SIGCONT, PID namespaces, gc, lease expiry,
a full tmpfs and damaged bytes, then a check of the whole history. CI runs
one fixed seed for 60 s x GRAFOS_STRESS_SCALE (at least 15 s of workload);
a failure prints the seed and the command that replays it. The history
judges are also fed histories that break each promise, so each check is
known to fail when it should."""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from helpers import fault_campaign as fc
from helpers.mp_helpers import stress_scale

SEED = 20261207


@pytest.mark.stress
def test_fault_campaign_holds_every_promise(tmp_path):
    seconds = max(15.0, 60.0 * stress_scale())
    res = fc.run(SEED, seconds, str(tmp_path))
    print(res.summary())
    assert res.ok, res.summary()
    ran = set(res.faults)
    for fault in ("damaged-file", "gc-race", "expire+restart"):
        assert fault in ran, res.summary()
    assert any(f.startswith("kill ") for f in ran) and any(f.startswith("pause ") for f in ran), res.summary()
    # a fault the machine cannot inject is named with its reason, and the others ran
    for fault, reason in (("pidns-worker", "PID namespaces"), ("full-tmpfs", "full tmpfs")):
        assert fault in ran or any(s.startswith(reason) for s in res.skipped), res.summary()
    assert res.stats["acked"] > 1000 and res.stats["txn_committed"] > 0, res.summary()


def _history(**kw) -> dict:
    h = {"acked": {}, "polled": defaultdict(list), "lost": Counter(), "corrupt": [],
         "sends": defaultdict(list), "committed": set(), "aborted": set(), "peek": [0, 0]}
    h.update(kw)
    return h


def _clean() -> dict:
    acked = {("ow", 0, i): f"d{i}" for i in range(10)}
    polled = defaultdict(list, {k: [d] for k, d in acked.items()})
    return _history(acked=acked, polled=polled)


def test_judge_passes_a_clean_history_and_losses_that_were_counted():
    assert fc.judge(_clean(), member_faults=1) == []
    h = _clean()
    del h["polled"][("ow", 0, 3)], h["polled"][("ow", 0, 4)]
    h["lost"][("ow", 0)] = 2
    assert fc.judge(h, member_faults=1) == []


def test_judge_finds_a_silent_loss():
    h = _clean()
    del h["polled"][("ow", 0, 3)], h["polled"][("ow", 0, 4)]
    h["lost"][("ow", 0)] = 1
    assert any("1 lost silently" in p for p in fc.judge(h, member_faults=1))


def test_judge_finds_an_acknowledged_message_destroyed():
    h = _clean()
    h["polled"][("ow", 0, 5)] = ["d5", "other"]
    assert any("delivered with other bytes" in p for p in fc.judge(h, member_faults=1))


def test_judge_finds_a_torn_delivery_and_a_message_written_twice():
    h = _clean()
    h["corrupt"].append("member-1.log: X ow 0 7")
    h["polled"][("ow", 0, 10)] = ["d2"]
    problems = fc.judge(h, member_faults=1)
    assert any("fails its digest" in p for p in problems)
    assert any("written at two offsets" in p for p in problems)


def test_judge_bounds_redeliveries_by_the_faults():
    h = _clean()
    for k in list(h["polled"]):
        h["polled"][k] *= fc.POLL
    assert fc.judge(h, member_faults=1) != []
    assert fc.judge(h, member_faults=10) == []


def test_judge_txn_finds_aborted_shown_committed_hidden_and_half_shown():
    sends = defaultdict(list, {"a": [(0, 0, "x0"), (0, 1, "x1")], "b": [(0, 2, "x2")], "c": [(0, 4, "x4"), (0, 5, "x5")]})
    h = _history(sends=sends, committed={"b"}, aborted={"a"})
    assert fc.judge_txn(h, {(0, 2): "x2"}) == []                         # c unknown: none shown is fine
    assert fc.judge_txn(h, {(0, 2): "x2", (0, 4): "x4", (0, 5): "x5"}) == []   # ... and all shown too
    assert any("aborted transaction a" in p for p in fc.judge_txn(h, {(0, 0): "x0", (0, 2): "x2"}))
    assert any("committed transaction b" in p for p in fc.judge_txn(h, {}))
    assert any("part of transaction c" in p for p in fc.judge_txn(h, {(0, 2): "x2", (0, 4): "x4"}))
    assert any("another message" in p for p in fc.judge_txn(h, {(0, 2): "zz"}))


def test_judge_txn_leaves_out_what_the_ring_lapped_before_the_reader_came():
    h = _history(sends=defaultdict(list, {"a": [(0, 0, "x0"), (0, 1, "x1")], "b": [(0, 2, "x2")]}),
                 committed={"a", "b"})
    assert fc.judge_txn(h, {(0, 2): "x2"}, start={0: 2}) == []
    assert any("committed transaction a" in p for p in fc.judge_txn(h, {(0, 2): "x2"}, start={0: 1}))
