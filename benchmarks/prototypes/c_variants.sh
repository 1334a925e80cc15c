#!/usr/bin/env bash
# Where the C core's per-message time goes: build native_floor.c against copies
# of csrc/ with one piece taken out at a time, and run them interleaved.
# The copies live in a temp dir; csrc/ itself is never touched.
#
#   benchmarks/prototypes/c_variants.sh [REPEATS]
#
# Variants (the removals are for measuring only, none is a proposal as is):
#   base      csrc/ as it is, built with build_ffi.py's flags
#   lto       the same with -flto (gf_crc32c/gf_murmur2 inlined into the write path)
#   nocrc     gf_crc32c returns its input: the slot checksum costs nothing
#   nomurmur  gf_murmur2 returns 0: the key hash costs nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc=$(cd "$here/../../csrc" && pwd)
reps=${1:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags="-std=gnu11 -O3 -fno-strict-aliasing"

variant() {  # name, extra cflags, python snippet editing hash.c in $dir
    local name=$1 extra=$2 edit=$3 dir=$tmp/$1
    mkdir -p "$dir" && cp "$csrc"/*.c "$csrc"/*.h "$dir"/
    [ -n "$edit" ] && (cd "$dir" && python3 -c "$edit")
    local core=()   # the core's sources: every file but the CPython crossing
    for f in "$dir"/*.c; do [ "$(basename "$f")" = fast.c ] || core+=("$f"); done
    cc $flags $extra -I"$dir" "$here/native_floor.c" "${core[@]}" -o "$tmp/floor_$name" -lpthread
}
stub() {  # python that turns the definition of function $1 into a stub body $2
    echo "import re; s=open('hash.c').read(); i=s.index('$1'); j=s.index('{', i);
s=s[:j]+'{ $2 }\nstatic inline __attribute__((unused)) '+s[i:j].replace('$1'.split('(')[0], '$1'.split('(')[0]+'_unused')+s[j:]
open('hash.c','w').write(s)"
}
variant base "" ""
variant lto "-flto" ""
variant nocrc "" "$(stub 'uint32_t gf_crc32c(uint32_t crc, const uint8_t *data, uint64_t len)' 'return crc;')"
variant nomurmur "" "$(stub 'uint32_t gf_murmur2(const uint8_t *data, uint32_t len)' 'return 0;')"

echo "== CRC32C and memcpy, 4 KiB"
"$tmp/floor_base" crc
for args in "256 100 1024 400" "4160 4096 256 150"; do
    echo "== stride/value/batch/rounds: $args"
    for _ in $(seq "$reps"); do
        for v in base lto nocrc nomurmur; do
            for m in append poll; do
                printf '%-9s ' "$v"; "$tmp/floor_$v" $m $args
            done
        done
    done | sort -s -k1,2
done
