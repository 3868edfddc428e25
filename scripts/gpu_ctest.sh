#!/usr/bin/env bash
# gpu_ctest.sh — runs ctest over a build tree unpacked from scripts/gpu_carry.sh's archive on
# the GPU host, from the repository root:
#   scripts/gpu_ctest.sh [CTEST ARGS...]      e.g. -L gpu, or -R e2e_tiers_gpu
# BUILD overrides the tree (default build/). The tree was configured on another machine, so
# the absolute paths in its ctest files are pointed here first; its bundled libraries
# (build/lib) go on LD_LIBRARY_PATH.
set -uo pipefail
root=$PWD
build=${BUILD:-$root/build}
. "$root/scripts/gpu_env.sh"
gpu_libpath "$build/lib"
old_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
old_bin=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
for pair in "$old_bin:$build" "$old_src:$root"; do
    from=${pair%%:*} to=${pair#*:}
    [ -n "$from" ] && [ "$from" != "$to" ] &&
        find "$build" -name CTestTestfile.cmake -exec \
            sed -i "s#\([\"=; ]\)$from\([/\";]\)#\1$to\2#g" {} +
done
# Tools at this host's paths: the build recorded the development machine's cmake and the
# system python3 (which here may lack numpy; the one on PATH has it).
for tool in cmake python3; do
    here=$(command -v "$tool") || continue
    find "$build" -name CTestTestfile.cmake -exec sed -i "s#/usr/bin/$tool\([\"; ]\)#$here\1#g" {} +
done
sed -i "s#^CMAKE_CACHEFILE_DIR:INTERNAL=.*#CMAKE_CACHEFILE_DIR:INTERNAL=$build#;s#^CMAKE_HOME_DIRECTORY:INTERNAL=.*#CMAKE_HOME_DIRECTORY:INTERNAL=$root#" \
    "$build/CMakeCache.txt"
cd "$build" && ctest --output-on-failure "$@"
