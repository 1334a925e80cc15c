"""The loops of ``grafos bench`` charge every system the same: the peers are
driven as grafos is (the library's own put and get called directly in
bursts, no Python layer of the harness per message, a blocking call with a
timeout only when the channel is full or empty), and neither grafos' nor the
peers' consumer pays a bookkeeping call per receive that the other does not."""
from __future__ import annotations

import os
import queue
import sys

import pytest

from grafos.benchsuite import peers
from grafos.benchsuite.harness import PEERS
from grafos.benchsuite.procs import STOP

HARNESS = os.path.dirname(peers.__file__)


def harness_calls(fn):
    """(Python calls into grafos.benchsuite's code while ``fn`` runs, what it
    returned). faster-fifo's identity (de)serializer is the peer's own hook,
    one call per message its API requires, so it is not counted."""
    n = 0

    def profile(frame, event, arg) -> None:  # noqa: ANN001
        nonlocal n
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(HARNESS) and code.co_name != "_identity":
            n += 1
    sys.setprofile(profile)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return n, out


@pytest.mark.parametrize("peer", PEERS)
def test_single_puts_and_gets_should_not_pass_through_the_harness_per_message(peer):
    calls, res = harness_calls(lambda: peers.inproc(peer, 64, 256, "single", 0.05))
    if peers.missing(peer):
        assert res.status == "missing"
        return
    assert res.status == "ok" and res.messages > 0, res
    # a Python wrapper per put and per get would be 2 calls per message
    assert calls / res.messages < 0.25, (calls, res.messages)


class _Full(Exception):
    pass


def test_a_full_channel_should_turn_the_rest_of_the_burst_into_blocking_puts():
    got: list[tuple] = []
    refusals = iter([False, False, True])

    def put(value, block, timeout):  # noqa: ANN001
        if not block and next(refusals, False):
            raise _Full
        got.append((value, block))

    s = peers.Sender(put, (False, 0.0), (True, 0.05), _Full)
    assert s.put_burst("m", 6, [0] * (STOP + 1))
    # every message put once; from the one refused on, each waits for room
    assert got == [("m", False)] * 2 + [("m", True)] * 4
    assert s.put_burst("m", 2, [0] * (STOP + 1)) and got[-2:] == [("m", False)] * 2


def test_a_full_channel_should_give_up_when_told_to_stop():
    flags = [0] * (STOP + 1)
    tries = []

    def put(value, block, timeout):  # noqa: ANN001
        tries.append(block)
        if block:
            flags[STOP] = 1
        raise _Full

    assert not peers.Sender(put, (False, 0.0), (True, 0.05), _Full).put_burst("m", 3, flags)
    assert tries == [False, True]


def test_an_empty_channel_should_turn_the_rest_of_the_burst_into_waiting_gets():
    ready = [1, 2]          # taken without waiting, then the channel is empty
    arriving = [3, 4]       # come while the consumer waits; then a wait times out

    def take():
        if not ready:
            raise queue.Empty
        return ready.pop(0)

    def take_wait():
        if not arriving:
            raise queue.Empty
        return arriving.pop(0)

    r = peers.Receiver(take, take_wait, queue.Empty, batches=False)
    assert r.take_burst(10) == 4
    ready[:] = [5, 6, 7]
    assert r.take_burst(2) == 2 and ready == [7]       # a full burst never waits
    arriving[:] = [8]
    assert r.take_burst(10) == 2 and not arriving


def test_a_consumer_loop_should_look_at_the_producers_once_per_interval():
    from grafos.benchsuite import procs

    class Proc:
        looks = 0
        running = True

        def is_alive(self) -> bool:
            Proc.looks += 1
            return Proc.running

    crew = procs.Crew(0)
    crew.procs = [Proc()]
    every = procs.ALIVE_EVERY
    assert not any(crew.dead(t * every / 100) for t in range(100))    # one interval, many calls
    assert Proc.looks == 1
    Proc.running = False
    assert not crew.dead(every * 0.99)           # still within the interval: not looked at
    assert crew.dead(every * 1.01) and Proc.looks == 2


def test_grafos_cross_consumer_should_not_count_lost_messages_after_every_poll():
    """The producers' flow control needs the lost count only when the consumer
    runs dry; a look at it costs more than a poll of a few messages."""
    from grafos.benchsuite import grafos_runs
    from grafos.mq import consumer

    polls = lost = 0

    def profile(frame, event, arg) -> None:  # noqa: ANN001
        nonlocal polls, lost
        if event == "c_call" and getattr(arg, "__name__", "") == "poll":    # the C crossing
            polls += 1
        elif event == "call" and frame.f_code.co_filename == consumer.__file__ and frame.f_code.co_name == "lost":
            lost += 1
    sys.setprofile(profile)
    try:
        res = grafos_runs.cross(64, 256, "single", 0.2)
    finally:
        sys.setprofile(None)
    assert res.status == "ok" and res.messages > 0 and res.lost == 0, res
    # a poll waits up to 10 ms for a message, so at most a few dozen come back empty
    assert polls > 100 and lost < polls / 4, (polls, lost)
