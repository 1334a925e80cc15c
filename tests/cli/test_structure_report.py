"""``tools/structure.py`` on a small tree made for it: a cycle through imports
inside functions, a module importing the compiled core, facade methods that
branch on a backend, pointers made Python ints, atomics and a thread-local in
C, a test file at the top of tests/, benchmark workloads defined outside the
benchmark suite's package; each is reported."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "structure.py"

TREE = {
    "src/grafos/__init__.py": "from grafos.c import lib\n",
    "src/grafos/a.py": "def f():\n    from grafos import b\n    return b\n",
    "src/grafos/b.py": "def g():\n    from . import a\n    return a\n",
    "src/grafos/c.py": textwrap.dedent("""\
        from typing import TYPE_CHECKING
        from grafos._native import lib
        if TYPE_CHECKING:
            import grafos
        """),
    "src/grafos/d.py": "from . import _native\n",
    "src/grafos/e.py": textwrap.dedent("""\
        from typing import TYPE_CHECKING
        def address(p):
            return int(ffi.cast("uintptr_t", p))
        def bind(path, reader, sender):
            path._bind_fast(reader.poller_address, address(sender), sender.address)
            ffi.addressof(sender, "rr")
            ffi.cast("uint8_t *", sender)
            # ffi.cast("uintptr_t", p) in a comment is not a call
        if TYPE_CHECKING:
            x = address(None)
        """),
    "src/grafos/mq/__init__.py": "",
    "src/grafos/mq/producer.py": textwrap.dedent("""\
        class Producer:
            def send(self, mgr):
                if (s := self._session(mgr)) is not None:
                    return s.send(self)
                return 0

            def close(self):
                if isinstance(self.mgr, (int, topic.TopicManager)):
                    return
                self._sess.close(self)

            def lag(self, mgr):
                return self._session(mgr).lag(self) is None
        """),
    "src/grafos/mq/shm_send.py": "def send(s):\n    return s.session() is None or isinstance(s, TopicManager)\n",
    "csrc/gf_atomics.h": "#define GF_LOAD(p) atomic_load(p)\n",
    "csrc/platform.c": "static __thread char last_error[64];\n",
    "csrc/ring.c": textwrap.dedent("""\
        /* atomic_store( in a comment is not a call */
        static _Thread_local int last;
        int f(_Atomic int *p) { return atomic_load(p) + __atomic_load_n((int *)p, 0); }
        int g(int *p) { return atomic_load((_Atomic int *)p); }
        """),
    "tests/test_flat.py": "",
    "tests/core/test_ring.py": "",
    "tests/helpers/__init__.py": "",
    "tests/helpers/mp_helpers.py": "",
    "src/grafos/benchsuite/__init__.py": "",
    "src/grafos/benchsuite/rates.py": textwrap.dedent("""\
        import time
        def rate(prod, mgr):
            t = time.perf_counter()
            for _ in range(10):
                prod.send(mgr, b"x")
            return 10 / (time.perf_counter() - t)
        """),
    "benchmarks/run.py": textwrap.dedent("""\
        import time
        from grafos.benchsuite import rates
        t0 = time.monotonic()
        for r in range(3):
            print(rates.rate(None, None))
        print(time.monotonic() - t0)
        """),
    "benchmarks/own.py": textwrap.dedent("""\
        from time import perf_counter
        def rate(cons, mgr):
            clock, spent = perf_counter, 0.0
            for _ in range(10):
                t = clock()
                cons.poll(mgr, 10)
                spent += clock() - t
            return 10 / spent
        """),
    "benchmarks/sub/floor.py": "from grafos._core.bench import CopyWalk\n",
}


def report(tmp_path: Path, *args: str) -> str:
    for rel, text in TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    r = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_should_report_a_cycle_through_function_level_imports_and_who_imports_native(tmp_path):
    m = json.loads(report(tmp_path, "--json"))
    assert m["import_cycles"] == [["grafos.a", "grafos.b"]]
    assert m["native_importers"] == ["grafos.c", "grafos.d"]


def test_should_list_each_pointer_made_a_python_int_and_each_address_used(tmp_path):
    """A cast to uintptr_t and every use of an address name count; a definition,
    a comment, a TYPE_CHECKING block, addressof and a cast to a pointer do not."""
    m = json.loads(report(tmp_path, "--json"))
    assert m["pointer_ints"] == ['src/grafos/e.py:3: ffi.cast("uintptr_t", ...)', "src/grafos/e.py:5: .address",
                                 "src/grafos/e.py:5: .poller_address", "src/grafos/e.py:5: address"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in report(tmp_path).splitlines()
            if line.startswith("| ")}
    assert [r for t, r in rows.items() if t.startswith("pointers handed")] == [
        "| pointers handed between the native layers as Python ints (casts to `uintptr_t`, `address` uses) "
        "| 4 | 0 | no |"]


def test_should_name_the_facade_methods_that_branch_on_a_backend_and_not_the_backends(tmp_path):
    m = json.loads(report(tmp_path, "--json"))
    assert m["backend_branches"] == ["grafos.mq.producer: Producer.send:2", "grafos.mq.producer: Producer.close:7"]
    rows = {r["trait"].split(" (")[0]: r for r in m["table"]}
    assert (rows["facade methods that branch on a backend"]["measured"],
            rows["facade methods that branch on a backend"]["holds"]) == ("2", "no")


def test_should_count_atomics_outside_their_header_and_thread_locals(tmp_path):
    m = json.loads(report(tmp_path, "--json"))
    assert m["bare_atomics"] == {"csrc/ring.c": {"atomic_*(": 2, "__atomic_*(": 1, "(_Atomic *)": 1}}
    assert m["thread_locals"] == ["csrc/ring.c:2: static _Thread_local int last;"]
    # the failure text (errno-like) is listed apart from the side channels
    assert m["error_text"] == ["csrc/platform.c:1: static __thread char last_error[64];"]
    assert m["c_file_lines"] == [["csrc/ring.c", 4], ["csrc/platform.c", 1]]


def test_should_count_tests_and_helpers_by_folder(tmp_path):
    m = json.loads(report(tmp_path, "--json"))
    assert m["tests_by_folder"] == {".": {"tests": 1, "helpers": 0}, "core": {"tests": 1, "helpers": 0},
                                    "helpers": {"tests": 0, "helpers": 1}}



def test_should_count_each_file_that_defines_benchmark_workloads_outside_the_suite_as_a_place(tmp_path):
    m = json.loads(report(tmp_path, "--json"))
    assert m["benchmark_homes"] == ["src/grafos/benchsuite", "benchmarks/own.py", "benchmarks/sub/floor.py"]
    assert m["workload_signs"] == {"benchmarks/own.py": ["calls the bus", "reads a clock in a loop"],
                                   "benchmarks/sub/floor.py": ["imports the core"]}
    row = next(r for r in m["table"] if r["trait"] == "places that define benchmark workloads")
    assert (row["measured"].split(":")[0], row["holds"]) == ("3", "no")


def test_should_print_the_table_with_each_cycle_and_importer_named(tmp_path):
    out = report(tmp_path)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["import cycles among modules (runtime, function-level included)"].endswith("| 0 | no |")
    assert rows["modules that import `_native`"] == "| modules that import `_native` | 2 | at most 3 | yes |"
    assert "- grafos.a, grafos.b" in out.splitlines()
    assert "- grafos.c" in out.splitlines() and "- grafos.d" in out.splitlines()
