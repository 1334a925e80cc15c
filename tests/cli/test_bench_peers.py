"""The cross-process consumer loops of ``grafos bench`` (grafos' and the
peers') ask whether the producers still run at most once per interval: a
look is a syscall per process, which a look per call would charge to every
message a single-message peer receives."""
from __future__ import annotations

from grafos.benchsuite import procs


def test_a_consumer_loop_should_look_at_the_producers_once_per_interval():
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
