"""CPython's own queue tests run against grafos.Queue and grafos.JoinableQueue.

``_TestQueue`` comes from the interpreter's ``test._test_multiprocessing``,
with processes started by fork, spawn and forkserver; ``BaseQueueTestMixin``
from ``test.test_queue`` checks ``queue.Queue``'s blocking, timeouts and
``task_done``/``join`` with threads. Both are used unchanged; the tests left
out are named below, each with why.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import unittest

import pytest

import grafos

tm = pytest.importorskip("test._test_multiprocessing",
                         reason="the interpreter's test package (python3-test / libpython3-testsuite)")
tq = pytest.importorskip("test.test_queue", reason="the interpreter's test package")

#: _TestQueue's tests that do not apply, and why
LEFT_OUT = {
    "test_no_import_lock_contention": "builds multiprocessing.Queue directly (in a module it writes)",
    "test_timeout": "builds multiprocessing.Queue directly; "
                    "test_queue.py::test_full_and_empty_raise_the_queue_module_exceptions is its twin",
    "test_closed_queue_put_get_exceptions": "builds multiprocessing.Queue and JoinableQueue directly; "
                                            "test_queue.py::test_closed_queue_put_get_raise_value_error is its twin",
    "test_queue_feeder_donot_stop_onexc": "exercises the feeder thread: it expects put of an unpicklable value "
                                          "to succeed and the error to be printed by the thread later; "
                                          "grafos.Queue has no feeder and raises at put "
                                          "(test_queue.py::test_an_unpicklable_value_raises_at_put_with_its_traceback)",
    "test_queue_feeder_on_queue_feeder_error": "subclasses multiprocessing.queues.Queue to hook its feeder thread",
}


def _mixin(method: str) -> type:
    ctx = mp.get_context(method)

    class Mixin(tm.ProcessesMixin):
        Process = ctx.Process
        Event = staticmethod(ctx.Event)
        Queue = staticmethod(grafos.Queue)
        JoinableQueue = staticmethod(grafos.JoinableQueue)
    return Mixin


class _Base(tm._TestQueue):
    pass


for _name in LEFT_OUT:
    setattr(_Base, _name, None)      # unittest collects callables only


class TestCPythonQueueFork(_Base, _mixin("fork"), unittest.TestCase):
    pass


class TestCPythonQueueSpawn(_Base, _mixin("spawn"), unittest.TestCase):
    pass


class TestCPythonQueueForkserver(_Base, _mixin("forkserver"), unittest.TestCase):
    pass


#: test.test_queue's BaseQueueTestMixin tests that do not apply, and why
LEFT_OUT_QUEUE = {
    "test_shrinking_queue": "sets maxsize on a live queue; multiprocessing.Queue's maxsize is fixed at creation",
    "test_negative_timeout_raises_exception": "queue.Queue refuses a negative timeout; multiprocessing.Queue "
                                              "takes it as 0 (a non-blocking try), and grafos.Queue follows it",
}


class Queue(grafos.JoinableQueue):
    """basic_queue_test looks its expected order up by the class's name."""


class TestCPythonQueueModule(tq.BaseQueueTestMixin, unittest.TestCase):
    queue = queue            # queue.Full and queue.Empty, which grafos's exceptions are (as multiprocessing's)

    def setUp(self) -> None:
        self.type2test = Queue
        super().setUp()


# queue.Queue.shutdown (Python 3.13) is queue.Queue's alone: multiprocessing's queues have no
# shutdown, and neither has grafos.Queue, so the mixin's shutdown tests would wait for ever
LEFT_OUT_QUEUE.update({_name: "queue.Queue.shutdown is not part of multiprocessing.Queue's interface"
                       for _name in dir(tq.BaseQueueTestMixin) if _name.startswith("test_shutdown")})

for _name in LEFT_OUT_QUEUE:
    setattr(TestCPythonQueueModule, _name, None)
