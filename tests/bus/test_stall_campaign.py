"""The stall campaign: producers and consumers in their own processes on
each ``on_full`` policy, SIGKILLed and SIGSTOPped/SIGCONTed at random moments
(producers also stop themselves now and then between taking their slots and
copying their value); afterwards every acknowledged message is delivered intact
or counted lost. It aims at one window the wider campaign
(``tests/helpers/fault_campaign.py``) reaches only by chance: a writer paused between
taking its slots and copying into them while the ring laps it.

The seed is a constant (``GRAFOS_CAMPAIGN_SEED`` sets another; the default is below), printed in
every failure, so a run can be replayed; ``GRAFOS_STRESS_SCALE`` sets its length:

    GRAFOS_CAMPAIGN_SEED=7 GRAFOS_STRESS_SCALE=10 python -m pytest -m stress tests/bus/test_stall_campaign.py
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grafos.mq.group import ConsumerGroup
from grafos.mq.topic import TopicConfig, TopicManager

from helpers.stall_campaign_procs import value
from helpers.mp_helpers import stopped, stress_scale

SEED = int(os.environ.get("GRAFOS_CAMPAIGN_SEED", "20261207"))
PROCS = str(Path(__file__).parents[1] / "helpers" / "stall_campaign_procs.py")
PRODUCERS, CONSUMERS = 3, 2


class Proc:
    """A campaign process and the acknowledgements read from its stdout."""

    def __init__(self, args: list[str], writer: int | None, acked: dict, lock: threading.Lock) -> None:
        self.writer = writer
        self.p = subprocess.Popen([sys.executable, PROCS, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.stopped_until = 0.0
        self.ready = threading.Event()      # attached and running: faults may hit it
        self.damage = 0                     # slots a consumer found corrupt, values not as sent
        self.died: int | None = None        # its exit status, when it ended without our SIGKILL
        self._t = threading.Thread(target=self._read, args=(acked, lock), daemon=True)
        self._t.start()

    def _read(self, acked: dict, lock: threading.Lock) -> None:
        for line in self.p.stdout:          # type: ignore[union-attr]
            f = line.split()
            if f == [b"R"]:
                self.ready.set()
            if len(f) == 3 and f[0] == b"C" and line.endswith(b"\n"):    # a consumer met damage
                self.damage = max(self.damage, int(f[1]) + int(f[2]))
            if len(f) == 5 and f[0] == b"A" and line.endswith(b"\n"):   # a line cut by SIGKILL is no ack
                p, off, seq, size = map(int, f[1:])
                with lock:
                    acked[(p, off)] = value(self.writer, seq, size)  # type: ignore[arg-type]

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def finish(self) -> None:
        if self.died is None and (rc := self.p.poll()) is not None:
            self.died = rc                  # a campaign process runs until killed: it failed
        self.signal(signal.SIGKILL)
        self.p.wait(30)
        self._t.join(30)


@pytest.mark.stress
@pytest.mark.parametrize("on_full", ["overwrite", "block", "raise"])
def test_every_acknowledged_message_survives_kills_and_pauses(shm_name, on_full):
    seed = SEED + ["overwrite", "block", "raise"].index(on_full)
    rnd = random.Random(seed)
    why = f"(seed {seed}: GRAFOS_CAMPAIGN_SEED={SEED}, on_full={on_full!r})"
    duration = max(3.0, 10.0 * stress_scale())
    mgr = TopicManager.open(shm_name, size=64 << 20)
    mgr.create("t", TopicConfig(2, 512, 256, 3600.0, on_full=on_full))
    ConsumerGroup("g", "t", 2, 1.0, mgr=mgr)
    acked: dict[tuple[int, int], bytes] = {}
    lock = threading.Lock()
    writers = iter(range(1 << 30))
    members = iter(range(1 << 30))

    def producer() -> Proc:
        w = next(writers)
        return Proc(["produce", shm_name, str(w), str(rnd.randrange(1 << 30))], w, acked, lock)

    def consumer() -> Proc:
        return Proc(["consume", shm_name, f"c{next(members)}"], None, acked, lock)

    procs = [producer() for _ in range(PRODUCERS)] + [consumer() for _ in range(CONSUMERS)]
    faults = {"kill": 0, "stop": 0}
    damage = 0
    died: list[int] = []
    try:
        for pr in procs:
            assert pr.ready.wait(60), f"a campaign process did not start {why}"
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(rnd.uniform(0.02, 0.2))
            now = time.monotonic()
            for pr in procs:
                if pr.stopped_until and now >= pr.stopped_until:
                    pr.signal(signal.SIGCONT)
                    pr.stopped_until = 0.0
                elif not pr.stopped_until and stopped(pr.p.pid):    # it stopped itself mid-write
                    pr.stopped_until = now + rnd.uniform(0.01, 1.0)
                    faults["stop"] += 1
            i = rnd.randrange(len(procs))
            pr = procs[i]
            if not pr.ready.is_set():       # still starting: faults hit running processes only
                continue
            if rnd.random() < 0.2:          # SIGKILL, then a new process in its place
                pr.finish()
                damage += pr.damage
                died += [pr.died] if pr.died is not None else []
                procs[i] = producer() if pr.writer is not None else consumer()
                faults["kill"] += 1
            elif not pr.stopped_until:      # SIGSTOP for up to a second: often past the bounded wait
                pr.signal(signal.SIGSTOP)
                pr.stopped_until = now + rnd.uniform(0.01, 1.0)
                faults["stop"] += 1
        for pr in procs:
            pr.signal(signal.SIGCONT)
        time.sleep(0.5)                     # the resumed ones finish what they were writing
    finally:
        for pr in procs:
            pr.finish()
            damage += pr.damage
            died += [pr.died] if pr.died is not None else []

    assert died == [], f"campaign processes ended on their own with status {died} {why}"
    assert acked, f"nothing was acknowledged {why}"
    assert damage == 0, f"consumers met {damage} destroyed messages {why}"
    mgr.fabric.set_bounded_wait(0.2)        # step over the slots of the writers killed mid-write
    t = mgr.topic("t")
    for p in range(2):
        part = t.partitions[p]
        earliest = part.state().earliest
        rd = part.reader(0, max_batch=1024)
        got: dict[int, bytes] = {}
        while True:
            batch = rd.poll(1024, timeout=0.5)
            if not batch:
                break
            got.update((m.offset, m.value) for _, m in batch)
        c = rd.counters(0)
        assert c["corrupt"] == 0, f"partition {p}: {c['corrupt']} slots destroyed {why}"
        for (q, off), v in sorted(acked.items()):
            if q != p:
                continue
            if off >= earliest:
                assert got.get(off) == v, f"acknowledged message {p}/{off} not delivered intact {why}"
            else:
                assert c["lost"] >= earliest - off, f"acknowledged message {p}/{off} gone uncounted {why}"
    print(f"campaign {why}: {len(acked)} acknowledged, {faults}")
    mgr.close()
