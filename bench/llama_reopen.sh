#!/usr/bin/env bash
# llama_reopen.sh — llama.cpp's "reopen a long context" on the GPU host, beside recall's
# session re-open. See bench/llama_reopen.md for what is measured.
#
#   bench/llama_reopen.sh --model CKPT_DIR|MODEL.gguf [options]     (from the repo root)
#
#   --src DIR|TARBALL   llama.cpp source: a tree or the .tar.xz
#                       [peers/llama-src-trimmed.tar.xz in the repo]
#   --model PATH        a recall checkpoint directory (exported here with tools/export_gguf.py)
#                       or a ready .gguf                                    [models/default]
#   --tokens LIST       context lengths, comma-separated             [16384,65536,262144]
#   --ngl LIST          -ngl values each state is restored with (saves run at the first)
#                                                                                  [99,0]
#   --cold              also restore with the page cache dropped (llama_reopen --cold)
#   --outtype T         GGUF weight type for the export: f16|bf16|f32              [f16]
#   --out DIR           JSON lines and logs                       [$OUT, else ./llama-reopen-out]
#   --work DIR          source, build, GGUF, state files           [build-llama-reopen]
#   --build-only        stop after building (the build takes minutes; a run may not fit both)
#   --bin PATH          use this llama_reopen binary, skip configure and build
#   --keep-state        keep the state files (each is deleted after its restores otherwise)
#
# Steps, each logged with its time: extract the source (once), configure and build
# bench/peer/llama_reopen against libllama with CUDA (ninja is incremental, so a second run
# on a warm machine rebuilds nothing), export the GGUF (once per model and type), then for
# each length: save (prefill + llama_state_seq_save_file), and restore in fresh processes at
# each --ngl (warm, and cold with --cold). Results: $out/save.jsonl and $out/restore.jsonl,
# one JSON object a run, with wall_s (the whole process, as the shell saw it) added; the
# table at the end is made from them. A length that fails (say its KV cache does not fit)
# is logged and skipped; the script exits 1 if any run failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=""
model=$root/models/default
tokens=16384,65536,262144
ngls=99,0
cold=0
outtype=f16
out=${OUT:-$PWD/llama-reopen-out}
work=$root/build-llama-reopen
build_only=0
keep_state=0
bin=""

die() { echo "llama_reopen.sh: error: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --src) src=${2:?--src needs a value}; shift 2 ;;
        --model) model=${2:?--model needs a value}; shift 2 ;;
        --tokens) tokens=${2:?--tokens needs a value}; shift 2 ;;
        --ngl) ngls=${2:?--ngl needs a value}; shift 2 ;;
        --cold) cold=1; shift ;;
        --outtype) outtype=${2:?--outtype needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --work) work=${2:?--work needs a value}; shift 2 ;;
        --build-only) build_only=1; shift ;;
        --keep-state) keep_state=1; shift ;;
        --bin) bin=${2:?--bin needs a value}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "llama_reopen.sh: unknown argument: $1" >&2; usage ;;
    esac
done
[[ $tokens =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--tokens wants numbers separated by commas: $tokens"
[[ $ngls =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--ngl wants numbers separated by commas: $ngls"
case $outtype in f16|bf16|f32) ;; *) die "--outtype must be f16, bf16 or f32" ;; esac
[ -n "$src" ] || src=$root/peers/llama-src-trimmed.tar.xz
[ -e "$src" ] || die "llama.cpp source $src not found (pass --src DIR_OR_TARBALL)"
mkdir -p "$out/logs" "$work"
out=$(cd "$out" && pwd)
work=$(cd "$work" && pwd)

# seconds since T0 (a `date +%s.%N`), without bc, which a bare host may lack
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }
t_script=$(date +%s.%N)
log() { printf '[%s %8ss] %s\n' "$(date +%H:%M:%S)" "$(since "$t_script")" "$*" >&2; }
# step NAME CMD...: runs CMD with stdout and stderr in $out/logs/NAME.log and logs how long
# it took; on failure shows the log's tail and returns CMD's status.
step() {
    local name=$1 t0 rc=0
    shift
    t0=$(date +%s.%N)
    log "$name: $*"
    "$@" >"$out/logs/$name.log" 2>&1 || rc=$?
    if [ $rc = 0 ]; then
        log "$name: done in $(since "$t0") s"
    else
        log "$name: FAILED (exit $rc) after $(since "$t0") s; last lines of $out/logs/$name.log:"
        tail -n 30 "$out/logs/$name.log" >&2
    fi
    return $rc
}

# --- 1. source: a tree as given, a tarball unpacked once (a stamp names the tarball)
if [ -d "$src" ]; then
    llama=$(cd "$src" && pwd)
else
    stamp=$(ls -l "$(cd "$(dirname "$src")" && pwd)/$(basename "$src")")
    if [ "$(cat "$work/src/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$work/src"
        mkdir -p "$work/src"
        step extract tar -xJf "$src" -C "$work/src" || die "cannot unpack $src"
        echo "$stamp" >"$work/src/.stamp"
    fi
    # the archive's top folder (llama-trim/ in ours), whatever it is called
    hdr=$(find "$work/src" -maxdepth 3 -path '*/include/llama.h' | head -1)
    [ -n "$hdr" ] || die "$src holds no llama.cpp tree (no include/llama.h)"
    llama=$(dirname "$(dirname "$hdr")")
fi
[ -f "$llama/include/llama.h" ] || die "$llama is not a llama.cpp tree (no include/llama.h)"
log "llama.cpp source: $llama (commit $(head -c 12 "$llama/LLAMA_COMMIT.txt" 2>/dev/null || true))"

# --- 2. build. README's line for the peer (Release, CUDA arch 90, static), with the CPU
# backend tuned for this host (GGML_NATIVE: it is built where it runs, as a user would) and
# NCCL off (one GPU; avoids a runtime dependency). Only llama_reopen and the libraries it
# links are built: bench/peer/CMakeLists.txt adds llama.cpp as a subdirectory.
build=$work/build
if [ -n "$bin" ]; then
    [ -x "$bin" ] || die "--bin $bin is not an executable"
    log "using $bin as it is (--bin): no build"
else
    command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "nvcc not found"
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
    gen="Unix Makefiles"
    command -v ninja >/dev/null && gen=Ninja
    step configure cmake -S "$root/bench/peer" -B "$build" -G "$gen" \
        -DLLAMA_SRC="$llama" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DGGML_CUDA_NCCL=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_COMMON=OFF || die "cmake configure failed ($out/logs/configure.log)"
    step build cmake --build "$build" --target llama_reopen -j "$(nproc)" ||
        die "build failed ($out/logs/build.log)"
    bin=$build/llama_reopen
    [ -x "$bin" ] || die "build produced no $bin"
fi
# shellcheck source=scripts/gpu_env.sh
. "$root/scripts/gpu_env.sh"
gpu_libpath "$build"
gpu_find_libs "$bin"
if ldd "$bin" | grep -q 'not found'; then
    ldd "$bin" >&2
    die "$bin has unresolved libraries"
fi
[ $build_only = 1 ] && { log "built $bin (--build-only)"; exit 0; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1 ||
    echo "nvidia-smi failed" >"$out/gpu.txt"
log "GPU: $(cat "$out/gpu.txt")"

# --- 3. the model as GGUF
if [ -f "$model" ]; then
    gguf=$model
else
    [ -f "$model/config.json" ] || die "--model $model: neither a .gguf nor a checkpoint directory"
    gguf=$work/$(basename "$(cd "$model" && pwd)")-$outtype.gguf
    if [ ! -f "$gguf" ] || [ -n "$(find "$model" -newer "$gguf" -type f | head -1)" ]; then
        step export "${PYTHON:-python3}" "$root/tools/export_gguf.py" "$model" "$gguf" \
            --outtype "$outtype" --gguf-py "$llama/gguf-py" ||
            die "GGUF export failed ($out/logs/export.log)"
    fi
fi
log "model: $gguf ($(du -h "$gguf" | cut -f1))"

# --- 4. save and restore per length
# run NAME JSONL CMD...: one llama_reopen process, stderr (llama.cpp's log) in
# $out/logs/NAME.log; its JSON line (stdout) goes to JSONL with wall_s, the process's whole
# life as seen from here (exec, dynamic loading and teardown included), appended.
failed=0
run() {
    local name=$1 jsonl=$2 t0 wall line rc=0
    shift 2
    log "$name: $*"
    t0=$(date +%s.%N)
    "$@" >"$out/logs/$name.json" 2>"$out/logs/$name.log" || rc=$?
    wall=$(since "$t0")
    line=$(head -1 "$out/logs/$name.json")
    if [ $rc != 0 ] || [ "${line:0:1}" != "{" ]; then
        log "$name: FAILED (exit $rc) after $wall s; last lines of $out/logs/$name.log:"
        tail -n 30 "$out/logs/$name.log" >&2
        failed=1
        return 1
    fi
    log "$name: done in $wall s"
    echo "${line%\}},\"wall_s\":$wall}" | tee -a "$jsonl" >&2
}
# state_bytes / tokens of the last save, in whole bytes
per_token() {
    "${PYTHON:-python3}" -c 'import json, sys; s = json.loads(open(sys.argv[1]).readlines()[-1])
print(-(-s["state_bytes"] // s["tokens"]))' "$out/save.jsonl"
}
: >"$out/save.jsonl"
: >"$out/restore.jsonl"
save_ngl=${ngls%%,*}
for n in ${tokens//,/ }; do
    state=$work/state-$n.bin
    rm -f "$state"
    # state files are large (2 bytes x 2 (K, V) x layers x kv width per token): check the
    # disk before writing one, from the size per token of the previous save
    if [ -s "$out/save.jsonl" ]; then
        per_tok=$(per_token)
        free=$(df -PB1 "$work" | awk 'NR == 2 { print $4 }')
        need=$(( per_tok * n + (1 << 30) ))
        if [ "$need" -gt "$free" ]; then
            log "skip $n tokens: its state needs ~$((need >> 30)) GiB, $((free >> 30)) GiB free"
            failed=1
            continue
        fi
    fi
    run "save-$n" "$out/save.jsonl" "$bin" save "$gguf" "$n" "$state" --ngl "$save_ngl" || continue
    for ngl in ${ngls//,/ }; do
        run "restore-$n-ngl$ngl" "$out/restore.jsonl" "$bin" restore "$gguf" "$state" --ngl "$ngl" || true
        if [ $cold = 1 ]; then
            run "restore-$n-ngl$ngl-cold" "$out/restore.jsonl" "$bin" restore "$gguf" "$state" \
                --ngl "$ngl" --cold || true
        fi
    done
    [ $keep_state = 1 ] || rm -f "$state"
done

# --- 5. table: one row per restore, beside its save
"${PYTHON:-python3}" - "$out/save.jsonl" "$out/restore.jsonl" <<'EOF' | tee "$out/summary.txt"
import json, sys
saves = {}
for l in open(sys.argv[1]):
    s = json.loads(l)
    saves[s["tokens"]] = s
print("%8s %9s %8s %8s %8s | %4s %4s %7s %8s %9s %8s %8s %5s" % (
    "tokens", "prefill_s", "save_s", "fsync_s", "state_GB", "ngl", "cold", "load_s",
    "restore_s", "first_tok_s", "total_s", "wall_s", "same"))
for l in open(sys.argv[2]):
    r = json.loads(l)
    s = saves.get(r["restored_tokens"], {})
    same = "-" if not s else ("yes" if s["first_token"] == r["first_token"] else "no")
    print("%8d %9.3f %8.3f %8.3f %8.2f | %4d %4d %7.3f %8.3f %9.3f %8.3f %8.3f %5s" % (
        r["restored_tokens"], s.get("prefill_s", float("nan")), s.get("save_s", float("nan")),
        s.get("fsync_s", float("nan")), r["state_bytes"] / 1e9, r["ngl"], r["cold"],
        r["load_s"], r["restore_s"], r["first_token_s"], r["total_s"], r["wall_s"], same))
EOF
log "results in $out (save.jsonl, restore.jsonl, summary.txt, logs/)"
[ $failed = 0 ] || die "some runs failed or were skipped; see the log above and $out/logs"
