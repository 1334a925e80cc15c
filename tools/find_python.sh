#!/usr/bin/env bash
# Print the path of a CPython X.Y interpreter, or fail saying where it looked.
#   tools/find_python.sh 3.12
# Looks in pyenv's versions (PYENV_ROOT, else ~/.pyenv, else /root/.pyenv: the
# newest X.Y.Z there, never a free-threaded "t" build), then for pythonX.Y on
# PATH. A candidate counts only if it runs and reports X.Y: a pyenv shim of a
# version that is not selected does not.
set -euo pipefail
want="${1:?usage: tools/find_python.sh X.Y}"
[[ "$want" =~ ^3\.[0-9]+$ ]] || { echo "find_python: '$want' is not a version like 3.12" >&2; exit 2; }

reports() {   # does $1 run and report version $want?
    [ -x "$1" ] && [ "$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]
}

looked=()
for root in "${PYENV_ROOT:-}" "$HOME/.pyenv" /root/.pyenv; do
    [ -n "$root" ] && [ -d "$root/versions" ] || continue
    [[ " ${looked[*]} " == *" $root/versions/$want.* "* ]] && continue
    looked+=("$root/versions/$want.*")
    newest=$(ls "$root/versions" | grep -E "^${want//./\\.}\.[0-9]+$" | sort -V | tail -n 1 || true)
    if [ -n "$newest" ] && reports "$root/versions/$newest/bin/python$want"; then
        echo "$root/versions/$newest/bin/python$want"
        exit 0
    fi
done
looked+=("python$want on PATH")
if cand=$(command -v "python$want") && reports "$cand"; then
    echo "$cand"
    exit 0
fi
echo "find_python: no CPython $want found (looked in: ${looked[*]})" >&2
exit 1
