"""``mypy --strict`` passes on the code a reader copies: every Python block of
the README and of the documentation site, and ``examples/``, type-checked
against the installed package (its ``py.typed`` and ``_fast.pyi``); what the
bus hands out is typed as what it is, not ``Any``; and the crossing's stub
says what the C module has."""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys

import pytest
from mypy import api

from grafos.mq.topic import TopicManager
from helpers.snippets import EXAMPLES, docs_blocks, readme_blocks


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    """One cache for the module's runs: the package is analysed once."""
    return str(tmp_path_factory.mktemp("mypy-cache"))


def _mypy(mypy_cache: str, *paths: str) -> tuple[int, str]:
    out, err, status = api.run(["--strict", "--cache-dir", mypy_cache, "--no-color-output",
                                "--no-error-summary", *paths])
    return status, out + err


def test_the_readme_the_docs_and_the_examples_should_pass_mypy_strict(tmp_path, monkeypatch, mypy_cache):
    monkeypatch.chdir(tmp_path)                 # mypy names files relative to here: blocks/README_md_1.py:12
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    for where, code in readme_blocks() + docs_blocks():
        # one module per block, named after where it is: "docs/concepts/fabric.md:0" -> docs_concepts_fabric_md_0
        (blocks / (re.sub(r"\W", "_", where) + ".py")).write_text(code)
    shutil.copytree(EXAMPLES, tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    status, out = _mypy(mypy_cache, "blocks", "examples")
    assert status == 0, out


PROGRAM = """\
import grafos
from grafos.mq import TopicConfig

mgr = grafos.connect()
mgr.create("t", TopicConfig(num_partitions=2))
with mgr.consumer("t", group="g") as c:
    reveal_type(c)
    c.poll("ten")
reveal_type(mgr.partition_leases("t")[0].expires_at)
"""
#: the calls a bound handle takes without its manager
BOUND_CALLS = {"p": ["send", "send_keyed", "send_batch", "loan", "begin", "register"],
               "c": ["poll", "poll_batch", "seek", "seek_partition", "lag", "wait", "peek"]}


def test_what_the_bus_hands_out_should_be_typed_as_what_it_is(tmp_path, monkeypatch, mypy_cache):
    monkeypatch.chdir(tmp_path)
    calls = [(var, name) for var, names in BOUND_CALLS.items() for name in names]
    program = PROGRAM + 'p = mgr.producer("t")\nc = mgr.consumer("t")\n' + \
        "".join(f"reveal_type({var}.{name})\n" for var, name in calls)
    (tmp_path / "program.py").write_text(program)
    status, out = _mypy(mypy_cache, "program.py")
    # mypy 1.x spells builtins with their module ("builtins.int")
    notes = re.findall(r'program\.py:\d+: note: Revealed type is "(.*)"', out.replace("builtins.", ""))
    errors = re.findall(r"program\.py:(\d+): error: (.*)", out)
    assert status == 1 and len(notes) == 2 + len(calls), out
    assert notes[0] == "grafos.mq.bound.BoundConsumer"
    assert notes[1] == "float"
    assert errors == [("8", 'Argument 1 to "poll" of "BoundConsumer" has incompatible type "str"; '
                            'expected "int"  [arg-type]')], out
    # each call as type checkers read it takes what it takes at run time, without mgr
    mgr = TopicManager()
    mgr.create("t")
    handles = {"p": mgr.producer("t"), "c": mgr.consumer("t")}
    for (var, name), revealed in zip(calls, notes[2:]):
        shown = [n for n in inspect.signature(getattr(handles[var], name)).parameters if n != "mgr"]
        assert re.findall(r"(\w+): ", revealed) == shown, (name, revealed)
        assert revealed.startswith("def ("), (name, revealed)


def test_the_crossings_stub_should_say_what_the_c_module_has(tmp_path):
    # stubtest compares _fast.pyi with the module's members and text signatures
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "grafos._fast", "--concise"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    # PEP 800's @disjoint_base is newer than some of the mypy versions the test extra allows
    problems = [line for line in r.stdout.splitlines() if line.strip() and "disjoint base" not in line]
    assert problems == [], r.stdout + r.stderr
