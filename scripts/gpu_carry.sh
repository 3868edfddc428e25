#!/usr/bin/env bash
# gpu_carry.sh — packs a build tree into something that runs ctest on a bare GPU host and
# fits the device machine's carry limit (64 MiB): every executable (stripped), the ctest
# files, the tiny test models, the generated protobuf sources' headers are not needed.
# Shared libraries the binaries need are bundled by scripts/gpu_bundle.sh into build/lib.
#
#   scripts/gpu_carry.sh [BUILD] [OUT]    default build, build-carry/carry.tar.xz
#
# On the GPU host, from the repository root (carry ["build-carry"]):
#   tar -xJf build-carry/carry.tar.xz && scripts/gpu_ctest.sh [CTEST ARGS]   (e.g. -L gpu)
# The archive unpacks to build/ (or the BUILD's basename).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
out=${2:-$root/build-carry/carry.tar.xz}
name=$(basename "$build")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dst=$stage/$name
mkdir -p "$dst"
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
cd "$build"
# ctest's files, the cache (for the source path), executables, and the tiny models.
find . -path ./lib -prune -o -path '*/CMakeFiles' -prune -o \
    \( -name CTestTestfile.cmake -o -name CMakeCache.txt \) -print |
    while read -r f; do mkdir -p "$dst/$(dirname "$f")"; cp "$f" "$dst/$f"; done
find . -path ./lib -prune -o -path '*/CMakeFiles' -prune -o -type f -perm -u+x -print |
    while read -r f; do
        is_elf "$f" || continue
        mkdir -p "$dst/$(dirname "$f")"
        cp "$f" "$dst/$f"
        strip "$dst/$f"
    done
[ -d tests/data ] && mkdir -p "$dst/tests" && cp -r tests/data "$dst/tests/"
"$root/scripts/gpu_bundle.sh" "$dst" > /dev/null
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out" "$name"
du -h "$out"
