"""tools/build_wheels.sh makes, from the sdist, a wheel for this interpreter that
auditwheel accepts as manylinux2014 and that holds both native modules.

Marked ``wheel``: it builds with zig's compiler (fetched from the package
index on first use) and takes about half a minute, so the default run leaves
it out and CI runs it (``pytest -m wheel``)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"


@pytest.mark.wheel
def test_build_wheels_should_leave_a_manylinux2014_wheel_with_both_native_modules(tmp_path):
    r = subprocess.run(["bash", "tools/build_wheels.sh", VERSION], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env={**os.environ, "GRAFOS_WHEELHOUSE": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = sorted(tmp_path.glob("grafos-*.whl"))
    assert [w.name.split("-")[2:4] for w in wheels] == [[TAG, TAG]], wheels

    # auditwheel's own verdict on the file, independent of the script's checks
    show = subprocess.run([str(ROOT / "build/wheels/tools/bin/auditwheel"), "show", str(wheels[0])],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{ROOT / 'build/wheels/tools/bin'}:{os.environ['PATH']}"})
    assert show.returncode == 0, show.stderr
    verdict = " ".join(show.stdout.split())
    assert 'is consistent with the following platform tag: "manylinux_2_17_x86_64"' in verdict, show.stdout

    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    tags = sorted(line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Tag: "))
    assert tags == [f"{TAG}-{TAG}-manylinux2014_x86_64", f"{TAG}-{TAG}-manylinux_2_17_x86_64"]
    # the cffi core is built for the stable ABI; the crossing is per interpreter
    assert "grafos/_native.abi3.so" in names
    assert f"grafos/_fast{sysconfig.get_config_var('EXT_SUFFIX')}" in names
    # type checkers read the package's annotations (PEP 561) and the crossing's stub
    assert {"grafos/py.typed", "grafos/_fast.pyi"} <= set(names)
