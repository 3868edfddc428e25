#!/usr/bin/env bash
# The README's test command: installs dependencies, builds everything (the CUDA backend
# too when nvcc is present), and runs the whole test suite with ctest. GPU tests print
# "skipped: no GPU" on a machine without one; ctest lists them as skipped, not passed.
#   scripts/test.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash scripts/deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)" --timeout 900
