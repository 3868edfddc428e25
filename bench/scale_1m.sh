#!/usr/bin/env bash
# scale_1m.sh — issue 6's scale benchmark: one session of a LongLLaMA-3B-shaped random model,
# up to 1M tokens streamed over ZeroMQ by the recall client into recalld on one GPU.
#
#   bench/scale_1m.sh prepare [BUILD]   on the development machine: builds recalld, recall and
#                                       bench_cuda_topk in BUILD (default build-scale,
#                                       configured with CUDA arch 90), bundles them with their
#                                       shared libraries into build-scale-carry/carry.tar.xz
#   bench/scale_1m.sh run PHASE...      on the GPU host, from the repository root (carry
#                                       ["build-scale-carry"]); phases, in the order given:
#     model     a 26-layer LongLLaMA-3B-shaped checkpoint (bench/hf_baseline.py --make; mem
#               layers 6, 12, 18, bf16 memory, window 2048) with the embedded model's
#               tokenizer (its 2,048 ids are all valid for the 32,000-entry vocabulary), and
#               a text of about 1.05M tokens of that tokenizer (tests/data/corpus.txt repeated)
#     topk      bench/topk_run.sh: recall's exact GPU top-k against torch bf16 matmul + topk
#     exact:N   an exact-memory session of the first N tokens (e.g. exact:262144)
#     knn:N     a knn session (k 128, all memory on the GPU) of the first N tokens
#     spill:N:B a knn session of N tokens under --gpu-memory-budget B (the Faiss spill tier)
#   Each session phase starts a fresh recalld (own data dir, removed afterwards: the disk
#   holds one 1M-token session's 38 GB of memory rows, not two), ingests with
#   `recall ingest`, asks twice (64 greedy tokens, --ignore-eos), and records: ingest
#   seconds and tokens/s as the client sees them (every chunk durable in LMDB), the ask's
#   prefill (time to the first token) and decode ms/token from the daemon's reply and the
#   client's wall time, peak GPU memory (nvidia-smi sampled every 0.5 s) and recalld's peak
#   RSS. Quality figures of the knn approximation come from build/bench/bench_knn_probe
#   (bench/knn_probe.h), run on the same model and text.
# Logs and RESULT lines go to $OUT (default ./scale-out); the work dir ($WORK, default
# build-scale-work, git-ignored) keeps the model and text between calls on a warm machine.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ "${1:-}" = prepare ]; then
    set -e
    build=${2:-$root/build-scale}
    [ -f "$build/CMakeCache.txt" ] ||
        cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_ARCHITECTURES=90
    cmake --build "$build" -j2 --target recalld recall bench_cuda_topk
    stage=$root/build-scale-carry/stage
    rm -rf "$root/build-scale-carry"
    mkdir -p "$stage/bin"
    cp "$build/daemon/recalld" "$build/clients/recall" "$build/tests/bench_cuda_topk" "$stage/bin/"
    "$root/scripts/gpu_bundle.sh" "$stage" "$stage"/bin/*
    strip "$stage"/bin/*
    tar -C "$root/build-scale-carry" -cJf "$root/build-scale-carry/carry.tar.xz" stage
    rm -rf "$stage"
    du -sh "$root/build-scale-carry"
    exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare [BUILD] | run PHASE..." >&2; exit 2; }
shift

out=${OUT:-$root/scale-out}
work=${WORK:-$root/build-scale-work}
mkdir -p "$out" "$work"
if [ ! -x "$work/stage/bin/recalld" ]; then
    tar -C "$work" -xJf "$root/build-scale-carry/carry.tar.xz" || exit 1
fi
bin=$work/stage/bin
. "$root/scripts/gpu_env.sh"
gpu_libpath "$work/stage/lib"
model=${MODEL:-$work/m3b}
py=${PYTHON:-python3}
text=$work/text.txt
result() { echo "RESULT $*" | tee -a "$out/results.txt"; }

phase_model() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    free -g | tee -a "$out/gpu.txt"; df -h "$work" | tee -a "$out/gpu.txt"
    if [ ! -f "$model/config.json" ]; then
        local t0=$(date +%s.%N)
        "$py" "$root/bench/hf_baseline.py" --make "$model" --layers 26 > "$out/make.log" 2>&1 ||
            { tail "$out/make.log"; return 1; }
        rm -rf "$model/hf" # transformers' copy: not needed here, and it costs disk
        cp "$root/models/default/tokenizer.model" "$model/"
        echo "model made in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"
    fi
    if [ ! -f "$text" ]; then
        "$py" - "$root/tests/data/corpus.txt" "$root/models/default/tokenizer.model" "$text" <<'EOF'
import sys
import sentencepiece as spm
src, tok, dst = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=tok)
base = open(src).read()
per = len(sp.encode(base))
reps = 1_100_000 // per + 1
with open(dst, "w") as f:
    for _ in range(reps):
        f.write(base)
print("text: %d copies of corpus.txt, about %d tokens" % (reps, reps * per))
EOF
    fi
}

phase_topk() {
    bash "$root/bench/topk_run.sh" "$bin" ${TOPK_ARGS:-} > "$out/topk.log" 2>&1
    grep -E "RESULT|ratio|rows" "$out/topk.log" | tail -20
}

# A text file of the first n tokens (approximately: cut by bytes at the text's measured
# bytes per token, then the session reports the exact count).
cut_text() {
    local n=$1 dst=$2
    "$py" - "$text" "$root/models/default/tokenizer.model" "$n" "$dst" <<'EOF'
import sys
import sentencepiece as spm
src, tok, n, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sp = spm.SentencePieceProcessor(model_file=tok)
data = open(src).read()
probe = data[:400000]
bpt = len(probe) / len(sp.encode(probe))
open(dst, "w").write(data[: int(n * bpt)])
EOF
}

session_phase() { # name mode n [budget]
    local name=$1 mode=$2 n=$3 budget=${4:-}
    local data=$work/data-$name log=$out/$name
    rm -rf "$data"
    cut_text "$n" "$work/in-$name.txt"
    local ep=ipc://$work/recalld-$name.sock
    "$bin/recalld" --model "$model" --data "$data" --device "${DEVICE:-cuda}" --listen "$ep" \
        --db-map-size 48G > "$log.recalld.log" 2>&1 &
    local pid=$!
    for _ in $(seq 120); do
        "$bin/recall" --connect "$ep" health > /dev/null 2>&1 && break
        sleep 1
    done
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$log.gpumem" &
    local smi=$!
    local opts=(--memory "$mode")
    [ "$mode" = knn ] && opts+=(--k 128)
    [ -n "$budget" ] && opts+=(--gpu-memory-budget "$budget")
    local t0=$(date +%s.%N)
    "$bin/recall" --connect "$ep" --quiet --timeout 3000 ingest big "$work/in-$name.txt" \
        "${opts[@]}" --chunk-bytes 256K > "$log.ingest.log" 2>&1
    local rc=$? t1=$(date +%s.%N)
    local secs=$(awk "BEGIN{print $t1 - $t0}")
    "$bin/recall" --connect "$ep" --json info big > "$log.info.json" 2>&1
    local tokens=$("$py" -c "import json;print(json.load(open('$log.info.json'))['tokens'])" 2>/dev/null)
    result "$name ingest rc=$rc tokens=$tokens seconds=$secs tok_per_s=$(awk "BEGIN{printf \"%.0f\", ${tokens:-0} / $secs}")"
    for i in 1 2; do
        local a0=$(date +%s.%N)
        "$bin/recall" --connect "$ep" --json --timeout 600 ask big \
            "What was the first sentence of the text?" --max-tokens 64 --ignore-eos \
            > "$log.ask$i.json" 2>&1
        local a1=$(date +%s.%N)
        "$py" - "$log.ask$i.json" "$name" "$i" "$(awk "BEGIN{print $a1 - $a0}")" <<'EOF' | tee -a "$out/results.txt"
import json, sys
p, name, i, wall = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
try:
    o = json.load(open(p))
except Exception as e:
    print("RESULT %s ask%s failed: %s" % (name, i, open(p).read()[:300]))
    sys.exit(0)
g = o.get("generated") or 0
dec = o.get("decode_ms") or 0.0
print("RESULT %s ask%s prompt=%s prefill_ms=%.1f generated=%d decode_ms_per_token=%.2f "
      "client_wall_s=%.2f" % (name, i, o.get("prompt_tokens"), o.get("prefill_ms") or 0.0, g,
                              dec / max(g - 1, 1), wall))
EOF
    done
    local hwm=$(grep VmHWM /proc/$pid/status | awk '{print $2}')
    kill $smi 2>/dev/null
    local peak=$(sort -n "$log.gpumem" | tail -1)
    result "$name memory gpu_peak_mib=$peak recalld_peak_rss_gib=$(awk "BEGIN{printf \"%.1f\", ${hwm:-0} / 1048576}")"
    grep "knn-probe" "$log.recalld.log" | tee -a "$out/results.txt"
    kill -TERM $pid; wait $pid
    du -sh "$data" | tee -a "$out/results.txt"
    rm -rf "$data" "$work/in-$name.txt"
}

for ph in "$@"; do
    echo "=== $ph ($(date +%T))"
    IFS=: read -r kind a b <<< "$ph"
    case $kind in
    model) phase_model ;;
    topk) phase_topk ;;
    exact) session_phase "exact-$a" exact "$a" ;;
    knn) session_phase "knn-$a" knn "$a" ;;
    spill) session_phase "spill-$a-$b" knn "$a" "$b" ;;
    *) echo "unknown phase $ph" >&2; exit 2 ;;
    esac
done
echo "=== summary"
cat "$out/results.txt" 2>/dev/null
