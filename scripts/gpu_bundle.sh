#!/usr/bin/env bash
# gpu_bundle.sh — copy the shared libraries a build's binaries need into <build>/lib, so the
# build tree runs on a bare GPU host (driver, CUDA runtime and cuBLAS, no Debian libraries).
#
#   scripts/gpu_bundle.sh [BUILD_DIR [BINARY...]]
#
# BUILD_DIR defaults to build/. With no BINARY, every ELF executable and shared library under
# BUILD_DIR (outside CMakeFiles/ and lib/) is scanned. Bundled: everything ldd resolves except
# glibc's core libraries (they must match the host's loader) and the CUDA toolkit and driver
# (the GPU host has its own, matched to its driver). On the host:
#   export LD_LIBRARY_PATH=$PWD/build/lib:$LD_LIBRARY_PATH
# (an rpath of $ORIGIN/lib would not reach indirect dependencies such as libsodium via libzmq).
set -euo pipefail

build=${1:-build}
shift || true
[ -d "$build" ] || { echo "gpu_bundle: no build directory '$build'" >&2; exit 1; }
build=$(cd "$build" && pwd)
lib="$build/lib"
mkdir -p "$lib"

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
    while IFS= read -r -d '' f; do
        is_elf "$f" && bins+=("$f")
    done < <(find "$build" -path "$build/lib" -prune -o -path '*/CMakeFiles' -prune -o \
                 -type f \( -perm -u+x -o -name '*.so*' \) -print0)
fi
[ ${#bins[@]} -gt 0 ] || { echo "gpu_bundle: no binaries found under $build" >&2; exit 1; }

# glibc's core (tied to the host's ld.so) and the CUDA toolkit / driver stay behind.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libresolv|libutil\.so|libanl|libnsl|libcrypt\.so|libcuda\.so|libcudart|libcublas|libcublasLt|libnvidia|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver)'

declare -A seen=()
missing=0
for b in "${bins[@]}"; do
    while read -r name arrow path _; do
        [ "$arrow" = "=>" ] || continue
        if [ "$path" = "not" ]; then
            echo "gpu_bundle: $b: $name not found" >&2
            missing=1
            continue
        fi
        [[ $name =~ $skip ]] && continue
        [[ $path == /usr/local/cuda* ]] && continue
        [ -n "${seen[$name]:-}" ] && continue
        seen[$name]=1
        cp -L "$path" "$lib/$name"
    done < <(ldd "$b" 2>/dev/null || true)
done

echo "gpu_bundle: ${#bins[@]} binaries, ${#seen[@]} libraries in $lib ($(du -sh "$lib" | cut -f1))"
ls "$lib" | tr '\n' ' '
echo
exit $missing
