"""The structure of the tree, measured: import cycles, who imports the compiled
core, backend checks by class, facade methods that branch on a backend,
pointers handed between the two native layers as Python ints, C file sizes,
atomics outside their header, thread-local side channels, tests by folder,
the places that define benchmark workloads.

    python tools/structure.py            # a markdown table, then the details
    python tools/structure.py --json     # the same, for scripts
    python tools/structure.py --root DIR # another tree of the same layout

Only the standard library: ``ast`` for Python, regular expressions for C
(comments stripped first, so a comment naming a call does not count)."""
from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import re
import sys
from pathlib import Path
from typing import Any

C_LIMIT = 800                   #: lines a C file may have
NATIVE_LIMIT = 3                #: modules that may import the compiled core
ATOMICS = {                     #: the spellings of atomics outside the one header
    "atomic_*(": re.compile(r"(?<!\w)atomic_\w+\s*\("),
    "__atomic_*(": re.compile(r"(?<!\w)__atomic_\w+\s*\("),
    "(_Atomic *)": re.compile(r"\(\s*_Atomic\s+\w+\s*\*\s*\)"),      # a cast; a parameter is no call
}
POINTER_INT = re.compile(r"^\s*(const\s+)?u?intptr_t\s*$")     #: what ffi.cast makes of a pointer to get an int
ADDRESS = re.compile(r"(^|_)address$")      #: a name that holds or returns a pointer as an int
BENCH_HOME = "benchsuite"       #: the package under src/<package>/ that holds every benchmark workload
#: calls that move messages: a file outside the home that makes one defines a workload
BUS_VERBS = {"send", "send_keyed", "send_batch", "poll", "poll_batch", "poll_raw", "peek", "loan",
             "append_batch", "put_many", "get_many", "publish", "fetch"}
#: clocks: a file outside the home that reads one inside a loop times a workload of its own
CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "thread_time"}
#: the one thread-local that is no side channel: the text of the calling thread's
#: last failure, read only after a call returned an error code (as errno, dlerror
#: and sqlite3_errmsg are); every result travels in a return value or an out-struct
ERROR_TEXT = re.compile(r"(?<!\w)last_error\s*\[")
#: the facades: the modules of this subpackage, but for the shared-memory backend's among them
FACADE_PACKAGE = "mq"
BACKEND_MODULES = ("topic", "shm_*")
#: the manager classes a facade would test to learn which backend it is on
MANAGERS = {"TopicManager", "RemoteManager", "JetStreamManager"}
THREAD_LOCAL = re.compile(r"(?<!\w)(_Thread_local|__thread|thread_local)(?!\w)")
C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


# ---- Python: modules and the imports each one runs ------------------------------------------

def modules(src: Path) -> dict[str, Path]:
    """Dotted name -> file, for every .py under ``src`` (a package's name is its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def extensions(src: Path, package: str) -> set[str]:
    """Compiled modules (built or only stubbed): ``from . import _native`` reaches
    one of these, not the package it is imported from."""
    found = {".".join(p.relative_to(src).parent.parts + (p.name.split(".")[0],))
             for p in src.rglob("*") if p.suffix in (".so", ".pyd", ".pyi")}
    return found | {f"{package}._native"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that runs: function bodies included, ``if TYPE_CHECKING:`` bodies not."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports(name: str, path: Path, tree: ast.AST) -> list[tuple[str, list[str]]]:
    """What a module imports at run time, relative imports resolved: ``import a.b``
    as ``("a.b", [])``, ``from a import b, c`` as ``("a", ["b", "c"])``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
    return out


def import_graph(mods: dict[str, Path], trees: dict[str, ast.AST], leaves: set[str]) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports: ``from a import b`` reaches
    the module ``a.b`` if there is one, else ``a`` (parents a dotted import runs
    on the way are left out, as every import graph tool does)."""
    known = set(mods) | leaves
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in mods.items():
        for target, names in imports(name, path, trees[name]):
            for imp in [f"{target}.{n}" if f"{target}.{n}" in known else target for n in names] or [target]:
                while imp and imp not in known:
                    imp = imp.rpartition(".")[0]
                if imp and imp != name:
                    graph[name].add(imp)
    return graph


def package_graph(src: Path, package: str = "grafos") -> dict[str, set[str]]:
    """The runtime import graph of ``package`` under ``src`` (the folder that holds it)."""
    mods = {n: p for n, p in modules(src).items() if n == package or n.startswith(package + ".")}
    trees = {n: ast.parse(p.read_text(), str(p)) for n, p in mods.items()}
    return import_graph(mods, trees, extensions(src, package))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def isinstance_checks(tree: ast.AST, cls: str) -> int:
    """Calls ``isinstance(x, cls)`` (or a tuple naming ``cls``) that run."""
    def names(node: ast.expr) -> bool:
        if isinstance(node, ast.Tuple):
            return any(names(e) for e in node.elts)
        return (isinstance(node, ast.Name) and node.id == cls) or \
            (isinstance(node, ast.Attribute) and node.attr == cls)
    return sum(1 for n in _runtime_nodes(tree)
               if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance"
               and len(n.args) == 2 and names(n.args[1]))


def pointer_ints(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each place that runs and makes a pointer a Python int for the
    other native layer: ``ffi.cast("uintptr_t", p)``, and each use of an
    ``address`` or ``*_address`` (a helper, property or variable that holds or
    returns one: ``address(p)``, ``sender.address``, ``reader.poller_address``).
    Definitions and imports are not uses."""
    found = []
    for n in _runtime_nodes(tree):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "cast" and n.args \
                and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str) \
                and POINTER_INT.match(n.args[0].value):
            found.append((n.lineno, f'ffi.cast("{n.args[0].value}", ...)'))
        elif isinstance(n, ast.Name) and ADDRESS.search(n.id) and isinstance(n.ctx, ast.Load):
            found.append((n.lineno, n.id))
        elif isinstance(n, ast.Attribute) and ADDRESS.search(n.attr) and isinstance(n.ctx, ast.Load):
            found.append((n.lineno, "." + n.attr))
    return sorted(found)


def workload_signs(name: str, path: Path, tree: ast.AST, package: str) -> list[str]:
    """Why a benchmark file outside the home defines a workload of its own: it
    imports the compiled core or its binding (floors belong beside the
    workloads), calls the bus or a peer to move messages, or reads a clock in
    a loop (a timed loop). Empty for a driver that only runs and prints."""
    signs = set()
    core = (f"{package}._native", f"{package}._core")
    for target, names in imports(name, path, tree):
        if any(i == c or i.startswith(c + ".") for i in [target, *(f"{target}.{a}" for a in names)] for c in core):
            signs.add("imports the core")
    def named(node: ast.expr) -> str | None:
        return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    # a clock under another name (``clock = time.perf_counter``) is still a clock
    clocks = set(CLOCKS)
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                pairs = zip(t.elts, n.value.elts) if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple) \
                    else [(t, n.value)]
                clocks |= {a.id for a, v in pairs if isinstance(a, ast.Name) and named(v) in CLOCKS}
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.AsyncFor, ast.While))]
    in_loop = {id(c) for loop in loops for c in ast.walk(loop)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            called = named(n.func)
            if called in BUS_VERBS:
                signs.add("calls the bus")
            if called in clocks and id(n) in in_loop:
                signs.add("reads a clock in a loop")
    return sorted(signs)


def workload_places(root: Path, package: str = "grafos") -> dict[str, list[str]]:
    """Every place that defines benchmark workloads, each with why: the home
    (``src/<package>/benchsuite``) and every Python file of a top-level
    ``bench*`` folder that shows a :func:`workload_signs` sign."""
    out: dict[str, list[str]] = {}
    home = root / "src" / package / BENCH_HOME
    if home.is_dir() and any(home.rglob("*.py")):
        out[str(home.relative_to(root))] = ["the home"]
    for d in sorted(root.glob("bench*")):
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.py")):
            name = ".".join(p.relative_to(root).with_suffix("").parts)
            signs = workload_signs(name, p, ast.parse(p.read_text(), str(p)), package)
            if signs:
                out[str(p.relative_to(root))] = signs
    return out


def _names(node: ast.expr) -> set[str]:
    """The class names an isinstance's second argument spells (a name, an attribute, a tuple)."""
    if isinstance(node, ast.Tuple):
        return {n for e in node.elts for n in _names(e)}
    if isinstance(node, ast.Name):
        return {node.id}
    return {node.attr} if isinstance(node, ast.Attribute) else set()


def _asks_for_a_session(node: ast.expr) -> bool:
    """``f(...)`` whose name says it looks up a session or a remote bus (a walrus unwrapped)."""
    if isinstance(node, ast.NamedExpr):
        node = node.value
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return "session" in name or "remote" in name


def _branches_on_backend(node: ast.AST) -> bool:
    """A session (or remote bus) tested against None, or a manager's class tested."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Is, ast.IsNot)) \
            and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value is None:
        return _asks_for_a_session(node.left)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance" \
        and len(node.args) == 2 and bool(_names(node.args[1]) & MANAGERS)


def backend_branches(tree: ast.AST) -> list[str]:
    """``Class.method:line`` of every function that branches on the backend it is on."""
    out = []
    todo: list[tuple[ast.AST, str]] = [(tree, "")]
    while todo:
        node, prefix = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                todo.append((child, f"{prefix}{child.name}."))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(_branches_on_backend(n) for n in _runtime_nodes(child)):
                    out.append(f"{prefix}{child.name}:{child.lineno}")
    return sorted(out, key=lambda s: int(s.rpartition(":")[2]))


def facades(mods: dict[str, Path], package: str) -> list[str]:
    base = f"{package}.{FACADE_PACKAGE}."
    return sorted(n for n in mods if n.startswith(base)
                  and not any(fnmatch.fnmatch(n[len(base):], pat) for pat in BACKEND_MODULES))


# ---- C ------------------------------------------------------------------------------------

def c_files(csrc: Path) -> list[Path]:
    return sorted(p for p in csrc.rglob("*") if p.suffix in (".c", ".h")) if csrc.is_dir() else []


def line_count(path: Path) -> int:
    return len(path.read_text(errors="replace").splitlines())


def code_of(path: Path) -> str:
    """A C file with its comments blanked (newlines kept, so line numbers hold)."""
    return C_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(errors="replace"))


# ---- the report ---------------------------------------------------------------------------

def measure(root: Path, package: str = "grafos", atomics_header: str = "gf_atomics.h") -> dict[str, Any]:
    src = root / "src"
    mods = {n: p for n, p in modules(src).items() if n == package or n.startswith(package + ".")}
    trees = {n: ast.parse(p.read_text(), str(p)) for n, p in mods.items()}
    native = f"{package}._native"
    natives = sorted(n for n, p in mods.items()
                     if any(i == native or i.startswith(native + ".")
                            for t, names in imports(n, p, trees[n]) for i in [t, *(f"{t}.{a}" for a in names)]))
    remote = {n: k for n in mods if (k := isinstance_checks(trees[n], "RemoteManager"))}
    pointers = [f"{mods[n].relative_to(root)}:{line}: {what}"
                for n in sorted(mods) for line, what in pointer_ints(trees[n])]
    branches = [f"{n}: {f}" for n in facades(mods, package) for f in backend_branches(trees[n])]

    cfiles = c_files(root / "csrc")
    rel = {p: str(p.relative_to(root)) for p in cfiles}
    sizes = sorted(((rel[p], line_count(p)) for p in cfiles if p.suffix == ".c"), key=lambda t: (-t[1], t[0]))
    atomics: dict[str, dict[str, int]] = {}
    thread_locals, error_text = [], []
    for p in cfiles:
        code = code_of(p)
        if p.name != atomics_header:
            counts = {kind: len(rx.findall(code)) for kind, rx in ATOMICS.items()}
            if any(counts.values()):
                atomics[rel[p]] = counts
        for i, line in enumerate(code.splitlines(), 1):
            if THREAD_LOCAL.search(line):
                (error_text if ERROR_TEXT.search(line) else thread_locals).append(
                    f"{rel[p]}:{i}: {' '.join(line.split())}")

    tests: dict[str, dict[str, int]] = {}
    troot = root / "tests"
    for p in sorted(troot.rglob("*.py")) if troot.is_dir() else []:
        if p.name in ("conftest.py", "__init__.py"):
            continue
        folder = str(p.parent.relative_to(troot)) if p.parent != troot else "."
        kind = "tests" if p.name.startswith("test_") else "helpers"
        tests.setdefault(folder, {"tests": 0, "helpers": 0})[kind] += 1
    flat = tests.get(".", {"tests": 0, "helpers": 0})

    places = workload_places(root, package)
    readme = root / "benchmarks" / "README.md"

    return {
        "import_cycles": cycles(package_graph(src, package)),
        "native_importers": natives,
        "remote_isinstance": remote,
        "pointer_ints": pointers,
        "backend_branches": branches,
        "c_file_lines": sizes,
        "bare_atomics": atomics,
        "thread_locals": thread_locals,
        "error_text": error_text,
        "tests_by_folder": tests,
        "tests_at_top_level": flat,
        "benchmark_homes": list(places),
        "workload_signs": {p: why for p, why in places.items() if why != ["the home"]},
        "benchmarks_readme_lines": line_count(readme) if readme.is_file() else 0,
        "atomics_header": atomics_header,
    }


def rows(m: dict[str, Any]) -> list[dict[str, str]]:
    """The table: trait, what was measured, the goal, whether it holds."""
    def row(trait: str, measured: str, goal: str, holds: bool | None) -> dict[str, str]:
        return {"trait": trait, "measured": measured, "goal": goal,
                "holds": "-" if holds is None else ("yes" if holds else "no")}
    cyc = m["import_cycles"]
    atom = sum(sum(c.values()) for c in m["bare_atomics"].values())
    kinds = {k: sum(c[k] for c in m["bare_atomics"].values()) for k in ATOMICS}
    big = [(f, n) for f, n in m["c_file_lines"] if n > C_LIMIT]
    top = ", ".join(f"`{f}` {n:,}" for f, n in m["c_file_lines"][:3]) or "none"
    folders = ", ".join(f"{'top level' if f == '.' else f} {c['tests']}+{c['helpers']}"
                        for f, c in m["tests_by_folder"].items())
    flat = m["tests_at_top_level"]
    return [
        row("import cycles among modules (runtime, function-level included)",
            f"{len(cyc)}" + (": " + "; ".join(f"{len(c)} modules" for c in cyc) if cyc else ""), "0", not cyc),
        row("modules that import `_native`", str(len(m["native_importers"])), f"at most {NATIVE_LIMIT}",
            len(m["native_importers"]) <= NATIVE_LIMIT),
        row("`isinstance(..., RemoteManager)` checks", str(sum(m["remote_isinstance"].values())), "0",
            not m["remote_isinstance"]),
        row("pointers handed between the native layers as Python ints (casts to `uintptr_t`, `address` uses)",
            str(len(m["pointer_ints"])), "0", not m["pointer_ints"]),
        row("facade methods that branch on a backend (a session tested for None, a manager class tested)",
            str(len(m["backend_branches"])), "0", not m["backend_branches"]),
        row("largest C files (lines)", top + f"; {len(big)} over {C_LIMIT}", f"none over {C_LIMIT}", not big),
        row(f"bare atomics calls in C outside `{m['atomics_header']}`",
            f"{atom} (" + ", ".join(f"`{k}` {n}" for k, n in kinds.items()) + ")", "0", atom == 0),
        row("thread-local side channels in C (results outside a return value or an out-struct)",
            str(len(m["thread_locals"])), "0", not m["thread_locals"]),
        row("thread-local failure text in C (errno-like, read after an error code)",
            str(len(m["error_text"])), "at most 1", len(m["error_text"]) <= 1),
        row("test files + helper modules by folder", folders or "none",
            "none at the top level of tests/", flat["tests"] + flat["helpers"] == 0),
        row("places that define benchmark workloads", f"{len(m['benchmark_homes'])}: "
            + ", ".join(m["benchmark_homes"]), f"1 (the `{BENCH_HOME}` package)",
            len(m["benchmark_homes"]) == 1 and not m["workload_signs"]),
        row("lines of benchmarks/README.md", str(m["benchmarks_readme_lines"]), "method + current tables", None),
    ]


def markdown(m: dict[str, Any]) -> str:
    out = ["| trait | measured | goal | holds |", "|---|---|---|---|"]
    out += [f"| {r['trait']} | {r['measured']} | {r['goal']} | {r['holds']} |" for r in rows(m)]
    details = [("import cycles", [", ".join(c) for c in m["import_cycles"]]),
               ("modules that import _native", m["native_importers"]),
               ("isinstance(..., RemoteManager)", [f"{n}: {k}" for n, k in sorted(m["remote_isinstance"].items())]),
               ("pointers as Python ints", m["pointer_ints"]),
               ("facade methods that branch on a backend", m["backend_branches"]),
               ("bare atomics", [f"{f}: " + ", ".join(f"{k} {n}" for k, n in c.items() if n)
                                 for f, c in m["bare_atomics"].items()]),
               ("thread-local side channels", m["thread_locals"]),
               ("thread-local failure text", m["error_text"]),
               ("benchmark workloads outside the home", [f"{p}: " + ", ".join(why)
                                                         for p, why in m["workload_signs"].items()])]
    for title, items in details:
        if items:
            out += ["", f"{title}:"] + [f"- {i}" for i in items]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the tree to measure (holds src/, csrc/, tests/, benchmarks/)")
    ap.add_argument("--package", default="grafos", help="the package under src/")
    ap.add_argument("--json", action="store_true", help="print the measures and the table as JSON")
    args = ap.parse_args(argv)
    m = measure(args.root, args.package)
    print(json.dumps({**m, "table": rows(m)}, indent=2) if args.json else markdown(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
