#!/usr/bin/env bash
# gpu_run.sh — what runs ON the GPU host, from the repository root, over a build tree made
# on the development machine and bundled by scripts/gpu_bundle.sh:
#   1. the GPU, as nvidia-smi sees it;
#   2. ctest -L gpu (the kernel parity tests), full output to $OUT/ctest.log;
#   3. the attention micro-benchmark and PyTorch's sdpa on the same shapes, as ratios;
#   4. a short summary, printed last.
# Logs go to $OUT (default ./gpu-out). BUILD overrides the build directory (default build/).
set -uo pipefail

root=$PWD
build=${BUILD:-$root/build}
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
. "$root/scripts/gpu_env.sh"
gpu_libpath "$build/lib"
[ -x "$build/tests/test_cuda_kernels" ] && gpu_find_libs "$build/tests/test_cuda_kernels"

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv,noheader 2>&1 | head -1)
echo "gpu: $gpu"

# The build was configured elsewhere: ctest's files hold that tree's absolute paths. If this
# copy lives at another path, point them here (they are a copy; nothing else reads them).
old_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
if [ -n "$old_src" ] && [ "$old_src" != "$root" ]; then
    echo "build configured at $old_src; rewriting ctest paths to $root"
    find "$build" -name CTestTestfile.cmake -exec \
        sed -i "s#\([\"=; ]\)$old_src\([/\";]\)#\1$root\2#g" {} +
fi

echo "== missing libraries (should be none)"
for b in "$build"/tests/test_cuda_kernels "$build"/bench/bench_cuda_attention; do
    [ -x "$b" ] && ldd "$b" | grep "not found"
done

echo "== ctest -L gpu"
if command -v ctest > /dev/null; then
    (cd "$build" && ctest -L gpu -V --output-on-failure --timeout 400) > "$out/ctest.log" 2>&1
    ctest_rc=$?
else # no ctest on the host: run the test binary the way ctest would (prefix the lines alike)
    echo "ctest not found; running the test binary directly"
    (cd "$build/tests" && ./test_cuda_kernels 2>&1 | sed 's/^/1: /') > "$out/ctest.log"
    ctest_rc=$?
fi
grep -E "^[0-9]+: (device|[a-z_]+ +.*rel_err|argmax|FAIL|[0-9]+ passed)" "$out/ctest.log" |
    sed 's/^[0-9]*: //'
grep -E "tests passed|tests failed|Skipped|\*\*\*" "$out/ctest.log"

# Out-of-bounds accesses and misaligned loads that happen to give right numbers.
echo "== compute-sanitizer memcheck"
memcheck="not run"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$cs" ] && [ -x "$build/tests/test_cuda_kernels" ]; then
    (cd "$build/tests" && timeout 240 "$cs" --tool memcheck --leak-check no --error-exitcode 3 \
        ./test_cuda_kernels) > "$out/memcheck.log" 2>&1
    mc_rc=$?
    memcheck="rc $mc_rc, $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
    echo "$memcheck"
fi

echo "== attention benchmark (bf16): recall vs torch sdpa"
bench_rc=0
if [ -x "$build/bench/bench_cuda_attention" ]; then
    "$build/bench/bench_cuda_attention" > "$out/bench_recall.txt" 2> "$out/bench.err" ||
        bench_rc=$?
    PYTHONUNBUFFERED=1 python3 "$root/bench/sdpa_attention.py" > "$out/bench_torch.txt" \
        2>> "$out/bench.err" || bench_rc=$?
    awk 'NR == FNR { t[$1] = $2; tf[$1] = $3; next }
         { printf "%-28s recall %8.3f ms %6.1f TFLOP/s | torch %8.3f ms %6.1f TFLOP/s | torch/recall %5.2f\n",
                  $1, $2, $3, t[$1], tf[$1], ($2 > 0 ? t[$1] / $2 : 0) }' \
        "$out/bench_torch.txt" "$out/bench_recall.txt" | tee "$out/bench_table.txt"
    tail -5 "$out/bench.err"
fi

echo "== summary"
echo "gpu: $gpu"
echo "kernel tests: $(grep -E '^[0-9]+: [0-9]+ passed' "$out/ctest.log" | sed 's/^[0-9]*: //' | tail -1)" \
     "(ctest rc $ctest_rc: $(grep -E 'tests passed' "$out/ctest.log" | tail -1))"
echo "memcheck: $memcheck"
[ -s "$out/bench_table.txt" ] && cat "$out/bench_table.txt"
echo "bench rc $bench_rc"
exit $ctest_rc
