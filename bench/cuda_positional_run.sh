#!/usr/bin/env bash
# cuda_positional_run.sh — issue 5's GPU run (Self-Extend / DCA / YaRN on CUDA), on the GPU
# host from the repository root, over build-cudapos/carry/ (git-ignored; CARRY overrides):
#   bin/test_cuda_positional, bin/bench_cuda_positional, lib/ (scripts/gpu_bundle.sh),
#   models/ (tools/make_test_model.py: pos-fot-d64, pos-llama-d64)
# Steps: nvidia-smi; the parity test (kernel vs cpu_attention_ext, CUDA vs CPU backend);
# compute-sanitizer memcheck and racecheck over the kernel cases; the throughput bench and
# PyTorch's causal sdpa on the same shapes; a summary, last. Logs in $OUT.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry=${CARRY:-$root/build-cudapos/carry}
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
. "$root/scripts/gpu_env.sh"
gpu_libpath "$carry/lib"
export PYTHONUNBUFFERED=1 RECALL_SOURCE_DIR="$root" RECALL_PYTHON=python3
export RECALL_GPU_TEST_MODELS="$carry/models"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "gpu: $gpu"
ldd "$carry/bin/test_cuda_positional" | grep "not found"

stamp "== test_cuda_positional"
timeout 200 "$carry/bin/test_cuda_positional" > "$out/test.log" 2>&1
test_rc=$?
grep -E "FAIL|rel_err|max\|dlp\||greedy|worst|passed" "$out/test.log" | tail -60

cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
mc="not run"; rcx="not run"
if [ -n "$cs" ]; then
    stamp "== compute-sanitizer memcheck (kernel cases)"
    RECALL_POS_KERNEL_ONLY=1 timeout 120 "$cs" --tool memcheck --leak-check no \
        --error-exitcode 3 "$carry/bin/test_cuda_positional" > "$out/memcheck.log" 2>&1
    mc="rc $?, $(grep -E 'ERROR SUMMARY' "$out/memcheck.log" | tail -1)"
    echo "$mc"
    stamp "== compute-sanitizer racecheck (kernel cases)"
    RECALL_POS_KERNEL_ONLY=1 timeout 100 "$cs" --tool racecheck --error-exitcode 3 \
        "$carry/bin/test_cuda_positional" > "$out/racecheck.log" 2>&1
    rcx="rc $?, $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$out/racecheck.log" | tail -1)"
    echo "$rcx"
fi

stamp "== bench_cuda_positional"
timeout 120 "$carry/bin/bench_cuda_positional" > "$out/bench.txt" 2>&1
bench_rc=$?
cat "$out/bench.txt"
stamp "== torch sdpa (causal)"
timeout 90 python3 "$root/bench/cuda_positional_sdpa.py" > "$out/sdpa.txt" 2>&1
cat "$out/sdpa.txt" | tail -6

stamp "== summary"
{
    echo "gpu: $gpu"
    echo "test rc $test_rc: $(tail -1 "$out/test.log")"
    grep -E "worst" "$out/test.log"
    echo "memcheck: $mc"
    echo "racecheck: $rcx"
    echo "bench rc $bench_rc"
    grep -E "^check_" "$out/bench.txt"
    printf "| %-6s | %-4s | %-11s | %9s | %7s | %8s | %14s |\n" T d scheme ms TFLOP/s "vs plain" "vs torch sdpa"
    awk 'NR == FNR { if ($1 ~ /^sdpa_/) t[$1] = $2; next }
         $1 ~ /^attn_T/ { split($1, f, "_"); key = "sdpa_" f[2] "_" f[3] "_causal";
             r = (key in t) ? sprintf("%.2f", $2 / t[key]) : "-";
             printf "| %-6s | %-4s | %-11s | %9.3f | %7.1f | %8.3f | %14s |\n", substr(f[2], 2), substr(f[3], 2), f[4], $2, $4, $7, r }' \
        "$out/sdpa.txt" "$out/bench.txt"
    grep -E "^sdpa_" "$out/sdpa.txt"
} | tee "$out/summary.txt"
