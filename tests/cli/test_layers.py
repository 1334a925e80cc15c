"""The package's layers, read from its source: the backend is chosen once, when
a handle binds (no facade asks which manager class it was given), the JetStream
backend imports the bus's vocabulary and not the shared-memory facades, and
no two modules import each other, directly or round a loop (imports inside
functions count: they run as surely as the ones at the top)."""
from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "grafos"

#: the manager classes a facade must not test for: the bus says what serves a handle
MANAGERS = {"RemoteManager", "JetStreamManager", "TopicManager"}
#: the facades: every module of grafos.mq, the renewal manager and the demo
FACADES = sorted(SRC.glob("mq/*.py")) + [SRC / "leasekit.py", SRC / "demo.py"]
#: the one import cycle left, between the ring's partition and its reader (the
#: binding layer's to break); any other cycle fails
PARTITION_READER_CYCLE = frozenset({"grafos.partition", "grafos.reader"})
ALLOWED_CYCLES = {PARTITION_READER_CYCLE}
#: what the JetStream backend must not import from grafos.mq: the shared-memory bus and its facades
JETSTREAM_MAY_NOT_IMPORT = {"grafos.mq.topic", "grafos.mq.producer", "grafos.mq.consumer", "grafos.mq.group",
                            "grafos.mq.subscribe", "grafos.mq.bound", "grafos.mq.offset", "grafos.mq.dlq",
                            "grafos.mq.gate", "grafos.mq.transaction"}


def _modules(src: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``src``."""
    out = {}
    for f in src.rglob("*.py"):
        parts = list(f.relative_to(src.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (f, package)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The nodes under ``if TYPE_CHECKING:`` (never run)."""
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for stmt in n.body:
                skip.update(id(k) for k in ast.walk(stmt))
    return skip


def _targets(mods: dict, name: str, package: bool, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The grafos modules one import statement runs. ``from . import x`` names the
    module x when there is one (else an attribute of the package); a package's
    own ``__init__`` imported on the way to a submodule is not counted, as every
    module would otherwise loop through its package."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in mods}
    if node.level:
        base = name.split(".") if package else name.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = set()
    for a in node.names:
        sub = f"{target}.{a.name}"
        if sub in mods:
            out.add(sub)
        elif target in mods:
            folder = mods[target][0].parent
            compiled = mods[target][1] and any(p.name.split(".")[0] == a.name for p in folder.iterdir())
            if not compiled:        # an attribute of the module, not a compiled submodule (_native)
                out.add(target)
    return out


def import_graph(src: pathlib.Path = SRC) -> dict[str, set[str]]:
    """Module -> the grafos modules it imports when run, inside functions included."""
    mods = _modules(src)
    graph = {}
    for name, (f, package) in mods.items():
        tree = ast.parse(f.read_text())
        skip = _type_checking_nodes(tree)
        graph[name] = {t for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip
                       for t in _targets(mods, name, package, n) if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


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


def test_no_facade_should_ask_which_manager_class_it_was_given():
    found = [hit for f in FACADES for hit in _class_tests(f)]
    assert not found, "facades testing the manager's class (ask the bus: session(), its own methods, " \
                      "or a capability):\n" + "\n".join(found)


def test_the_class_scan_should_see_a_class_test(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text("def send(mgr):\n    if isinstance(mgr, (int, RemoteManager)):\n        return 1\n"
                 "    return isinstance(mgr, topic.TopicManager) or isinstance(mgr, Bus)\n")
    assert [h.split(":")[1] for h in _class_tests(f)] == ["2", "4"]


def test_no_modules_should_import_each_other_round_a_loop():
    found = [sorted(c) for c in cycles(import_graph()) if c not in ALLOWED_CYCLES]
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
    assert cycles(import_graph(pkg)) == [frozenset({"grafos.mq.a", "grafos.mq.b", "grafos.mq.c"})]
    (pkg / "mq" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import Z\n")
    assert cycles(import_graph(pkg)) == []


def test_the_jetstream_backend_should_import_the_vocabulary_not_the_shared_memory_bus():
    graph = import_graph()
    found = {m: sorted(graph[m] & JETSTREAM_MAY_NOT_IMPORT) for m in graph if m.startswith("grafos.jetstream")}
    assert not any(found.values()), f"JetStream modules importing the shared-memory bus: {found}"


def test_the_vocabulary_should_import_no_backend_and_no_facade():
    imported = import_graph()["grafos.mq.model"]
    assert not {m for m in imported if m.startswith(("grafos.mq", "grafos.jetstream"))}, imported
