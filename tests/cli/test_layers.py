"""The package's layers, read from its source: the backend is chosen once, when
a handle binds (nothing outside the backends asks which manager class it was
given: not the facades, not the tools above them), the JetStream
backend imports the bus's vocabulary and not the shared-memory facades, no
two modules import each other, directly or round a loop (imports inside
functions count: they run as surely as the ones at the top), and the
benchmarks' workloads have one home, ``grafos.benchsuite``."""
from __future__ import annotations

import ast
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "grafos"
_spec = importlib.util.spec_from_file_location("structure", ROOT / "tools" / "structure.py")
structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(structure)      # the import graph and its cycles, as tools/structure.py reports them


def import_graph(src: pathlib.Path = SRC.parent) -> dict[str, set[str]]:
    return structure.package_graph(src)


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    return [frozenset(c) for c in structure.cycles(graph)]

#: the manager classes a facade must not test for: the bus says what serves a handle
MANAGERS = {"RemoteManager", "JetStreamManager", "TopicManager"}
#: the backends, which may know their own managers: the shared-memory manager and its sessions, JetStream
BACKENDS = {SRC / "mq" / "topic.py", *SRC.glob("mq/shm_*.py"), *SRC.glob("jetstream/*.py")}
#: everything else: the facades, the edges (connect, asyncio, metrics, CLI, benchmarks, demo), the low layer
OUTSIDE_BACKENDS = sorted(set(SRC.rglob("*.py")) - BACKENDS)
#: what the JetStream backend must not import from grafos.mq: the shared-memory bus and its facades
JETSTREAM_MAY_NOT_IMPORT = {"grafos.mq.topic", "grafos.mq.producer", "grafos.mq.consumer", "grafos.mq.group",
                            "grafos.mq.subscribe", "grafos.mq.bound", "grafos.mq.offset", "grafos.mq.dlq",
                            "grafos.mq.gate", "grafos.mq.transaction"}


def _class_tests(path: pathlib.Path) -> list[str]:
    """``isinstance(x, M)`` calls in ``path`` whose classes include a manager class."""
    found = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance" \
                and len(n.args) == 2:
            classes = n.args[1].elts if isinstance(n.args[1], ast.Tuple) else [n.args[1]]
            named = {c.id if isinstance(c, ast.Name) else c.attr if isinstance(c, ast.Attribute) else None
                     for c in classes}
            if named & MANAGERS:
                found.append(f"{path.parent.name}/{path.name}:{n.lineno}: {ast.unparse(n)}")
    return found


def test_nothing_outside_the_backends_should_ask_which_manager_class_it_was_given():
    assert SRC / "metrics.py" in OUTSIDE_BACKENDS and SRC / "cli" / "top.py" in OUTSIDE_BACKENDS
    found = [hit for f in OUTSIDE_BACKENDS for hit in _class_tests(f)]
    assert not found, "modules outside the backends testing the manager's class (ask the bus: its " \
                      "sessions, its own methods, or a capability):\n" + "\n".join(found)


def test_no_facade_method_should_branch_on_the_backend_it_is_on():
    mods = structure.modules(SRC.parent)
    found = [f"{n}: {f}" for n in structure.facades(mods, "grafos")
             for f in structure.backend_branches(ast.parse(mods[n].read_text()))]
    assert structure.facades(mods, "grafos") and "grafos.mq.topic" not in structure.facades(mods, "grafos")
    assert not found, "facade methods that ask which backend they are on (delegate to the handle's " \
                      "session instead):\n" + "\n".join(found)


def test_the_class_scan_should_see_a_class_test(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def send(mgr):\n    if isinstance(mgr, (int, RemoteManager)):\n        return 1\n"
                 "    return isinstance(mgr, topic.TopicManager) or isinstance(mgr, Bus)\n")
    assert [h.split(":")[1] for h in _class_tests(f)] == ["2", "4"]


def test_no_modules_should_import_each_other_round_a_loop():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles (function-level imports included): {found}"


def test_the_cycle_check_should_see_a_loop_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "grafos"
    (pkg / "mq").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mq" / "__init__.py").write_text("")
    (pkg / "mq" / "a.py").write_text("from . import b\n")
    (pkg / "mq" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import X\n"
                                     "def f():\n    from ..mq.c import Y\n")
    (pkg / "mq" / "c.py").write_text("def g():\n    from .a import Z\n")
    assert cycles(import_graph(tmp_path)) == [frozenset({"grafos.mq.a", "grafos.mq.b", "grafos.mq.c"})]
    (pkg / "mq" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import Z\n")
    assert cycles(import_graph(tmp_path)) == []


def test_the_jetstream_backend_should_import_the_vocabulary_not_the_shared_memory_bus():
    graph = import_graph()
    found = {m: sorted(graph[m] & JETSTREAM_MAY_NOT_IMPORT) for m in graph if m.startswith("grafos.jetstream")}
    assert not any(found.values()), f"JetStream modules importing the shared-memory bus: {found}"


def test_the_vocabulary_should_import_no_backend_and_no_facade():
    imported = import_graph()["grafos.mq.model"]
    assert not {m for m in imported if m.startswith(("grafos.mq", "grafos.jetstream"))}, imported


def test_benchmark_workloads_should_have_one_home():
    places = structure.workload_places(ROOT)
    outside = {p: why for p, why in places.items() if why != ["the home"]}
    assert not outside, "benchmark files defining workloads of their own (move them into grafos.benchsuite " \
                        f"and drive them from there): {outside}"
    assert list(places) == ["src/grafos/benchsuite"]


def test_the_workload_scan_should_see_a_timed_loop_in_a_driver(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "drive.py").write_text(
        "import time\nfrom grafos.benchsuite import calls\nfor w in calls.workloads(None).values():\n"
        "    print(w.once())\n")
    assert structure.workload_places(tmp_path) == {}
    (tmp_path / "benchmarks" / "drive.py").write_text(
        "import time\nwhile True:\n    t = time.perf_counter_ns()\n")
    assert structure.workload_places(tmp_path) == {"benchmarks/drive.py": ["reads a clock in a loop"]}
