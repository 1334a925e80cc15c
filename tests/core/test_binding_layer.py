"""The binding layer: one module imports the compiled core, and no module
outside the layer touches its ``ffi`` or ``lib`` (import cycles are checked
with the rest of the layering, in tests/cli/test_layers.py).

The checks read the source (an AST scan of ``src/grafos``), so a function-level
import counts as much as a top-level one.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grafos

SRC = Path(grafos.__file__).parent
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("structure", ROOT / "tools" / "structure.py")
structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(structure)      # the pointers-as-ints count, as tools/structure.py reports it

#: the one module that imports the compiled core (``grafos._native``): the binding
#: package, whose modules and the binding's other modules take ``ffi`` and ``lib`` from it
CORE_IMPORTER = "grafos._core"
#: the binding layer: the typed wrappers (``grafos._core`` and its modules), the
#: error table, the crossing, and the fabric, ring and reader handles
BINDING = {"grafos._check", "grafos._crossing", "grafos.fabric", "grafos.partition", "grafos.reader"}

#: names of the compiled core's cffi objects: nothing outside the binding layer
#: imports them, from ``_native`` or from a module that re-exports them
CFFI_NAMES = {"ffi", "lib"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.Module, is_package: bool) -> list[tuple[str, set[str]]]:
    """(module imported, names taken from it) for every import in ``tree``, at any depth,
    including ``importlib.import_module("...")`` with a literal name."""
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, set()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            names = {a.name for a in node.names}
            found.append((target, names))
            found += [(f"{target}.{n}", set()) for n in names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            if name.startswith("."):
                pkg = node.args[1] if len(node.args) > 1 else None
                base = pkg.value if isinstance(pkg, ast.Constant) else module
                name = f"{base}{name}"
            found.append((name, set()))
    return found


def _packages() -> set[str]:
    return {".".join(p.relative_to(SRC.parent).parent.parts) for p in SRC.rglob("__init__.py")}


def _in_binding(module: str) -> bool:
    return module in BINDING or module == CORE_IMPORTER or module.startswith(CORE_IMPORTER + ".")


def _scan() -> tuple[set[str], set[str]]:
    """(modules that import ``_native``, modules that take ``ffi`` or ``lib`` from a grafos module)."""
    pkgs = _packages()
    importers, users = set(), set()
    for module, tree in _modules().items():
        for target, names in _imports(module, tree, module in pkgs):
            if target == "grafos._native" or target.startswith("grafos._native."):
                importers.add(module)
            if (target == "grafos" or target.startswith("grafos.")) and names & CFFI_NAMES:
                users.add(module)
    return importers, users


def test_one_module_imports_the_compiled_core():
    importers, _ = _scan()
    assert importers == {CORE_IMPORTER}, f"modules importing grafos._native: {sorted(importers)}"


def test_only_the_binding_layer_uses_the_core_s_ffi_and_lib():
    importers, users = _scan()
    outside = {m for m in importers | users if not _in_binding(m)}
    assert not outside, f"modules outside the binding layer using the compiled core: {sorted(outside)}"


def test_the_scan_sees_every_spelling_of_an_import_of_the_core():
    spellings = {
        "from .._native import ffi": ("grafos.mq.x", False),
        "from grafos._native import lib": ("grafos.mq.x", False),
        "import grafos._native": ("grafos.mq.x", False),
        "def f():\n    from ._native import lib": ("grafos.x", False),
        "from .. import _native": ("grafos.mq.x", False),
        "import importlib\nimportlib.import_module('grafos._native')": ("grafos.mq.x", False),
        "from ._native import ffi": ("grafos", True),
    }
    for source, (module, is_package) in spellings.items():
        targets = {t for t, _ in _imports(module, ast.parse(source), is_package)}
        assert "grafos._native" in targets, source


def test_the_crossing_should_be_handed_objects_never_pointers_as_ints():
    """Sends, polls, peeks, loans and share groups reach the crossing with the
    objects that own their memory (its SenderState, Poller and Segments,
    buffers): a pointer made a Python int is checked by nothing and outlives
    what it points to."""
    assert structure.measure(ROOT)["pointer_ints"] == []


def test_the_c_core_should_keep_its_shape():
    """Every C file under the size a reader takes in at once, atomics spelled in
    their one header only, and no result carried by a thread-local: a retry
    learns what failed from an out-struct its caller owns, so threads sharing a
    handle never read each other's results. The failure text is the one
    thread-local, read as errno is, after a call returned an error code."""
    m = structure.measure(ROOT)
    assert [(f, n) for f, n in m["c_file_lines"] if n > structure.C_LIMIT] == []
    assert m["bare_atomics"] == {}
    assert m["thread_locals"] == []
    assert [e.split(":")[0] for e in m["error_text"]] == ["csrc/platform.c"]
