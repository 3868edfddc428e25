#!/bin/bash
# The passkey test on the GPU host: `recall passkey` through recalld --device cuda, and the
# same test run by the PyTorch reference stream (tools/train/eval_passkey.py) for comparison.
#
#   bench/scale_1m.sh prepare build-gpuknn     on the development machine (the carry)
#   bench/passkey_gpu.sh                       on the GPU host, from the repository root,
#                                              carry ["build-scale-carry"]
#
# Environment (defaults in brackets):
#   MODEL   checkpoint directory [models/default]
#   TOKENS  recall passkey --tokens [256k]        DEPTHS  --depths [10]   TRIALS  --trials [5]
#   MEMORY  exact|knn [knn]                       K       --k [128]       SEED    --seed [1]
#   TORCH   comma list of k for the PyTorch eval (0 = exact; empty: skip it) []
#   TORCH_LENGTHS  lengths for the PyTorch eval [262144]
#   TORCH_TRIALS   trials per depth for the PyTorch eval [1]
# Writes $OUT (default ./passkey-out): recall.json (recall passkey --json), heatmap.png,
# recalld.log, torch.json / torch.log, and RESULT lines in results.txt.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/passkey-out}
work=${WORK:-$root/build-passkey-work}
model=${MODEL:-$root/models/default}
mkdir -p "$out" "$work"
result() { echo "RESULT $*" | tee -a "$out/results.txt"; }

if [ -n "${TORCH:-}" ]; then
    t0=$(date +%s.%N)
    ${PYTHON:-python3} "$root/tools/train/eval_passkey.py" --model "$model" \
        --lengths "${TORCH_LENGTHS:-262144}" --depths "${DEPTHS:-10}" \
        --trials "${TORCH_TRIALS:-1}" --knn "$TORCH" --out "$out/torch.json" \
        > "$out/torch.log" 2>&1 || { tail "$out/torch.log"; exit 1; }
    grep passkey "$out/torch.log" | sed 's/^/RESULT torch /' | tee -a "$out/results.txt"
    result "torch seconds=$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
fi
[ -n "${TOKENS-256k}" ] || exit 0

if [ ! -x "$work/stage/bin/recalld" ]; then
    tar -C "$work" -xJf "$root/build-scale-carry/carry.tar.xz" || exit 1
fi
bin=$work/stage/bin
. "$root/scripts/gpu_env.sh"
gpu_libpath "$work/stage/lib"
data=$work/data
rm -rf "$data"
ep=ipc://$work/recalld.sock
"$bin/recalld" --model "$model" --data "$data" --device "${DEVICE:-cuda}" --listen "$ep" \
    > "$out/recalld.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    "$bin/recall" --connect "$ep" health > /dev/null 2>&1 && break
    sleep 0.2
done
t0=$(date +%s.%N)
"$bin/recall" --connect "$ep" passkey --tokens "${TOKENS:-256k}" --depths "${DEPTHS:-10}" \
    --trials "${TRIALS:-5}" --seed "${SEED:-1}" --memory "${MEMORY:-knn}" --k "${K:-128}" \
    --png "$out/heatmap.png" --json > "$out/recall.json" 2> "$out/recall.err"
rc=$?
result "recall rc=$rc seconds=$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
${PYTHON:-python3} - "$out/recall.json" <<'PY' | tee -a "$out/results.txt"
import json, sys
r = json.load(open(sys.argv[1]))
print("RESULT recall accuracy=%.4f passed=%d total=%d tokens=%s seconds=%.1f" % (
    r["accuracy"], r["passed"], r["total"], r["tokens_range"], r["seconds"]))
for L, row in zip(r["target_tokens"], r["cells"]):
    print("RESULT recall cells %d: %s" % (L, " ".join("%.2f" % c for c in row)))
for t in r["results"]:
    if not t["pass"]:
        print("RESULT recall miss depth=%.3f key=%s answer=%r" % (t["depth"], t["key"], t["answer"]))
PY
exit $rc
