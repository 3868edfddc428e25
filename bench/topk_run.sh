#!/usr/bin/env bash
# topk_run.sh BIN_DIR [args...]: on a GPU host, times cuda_topk (BIN_DIR/bench_cuda_topk)
# and PyTorch's matmul + torch.topk (bench/torch_topk.py) on the same kNN memory searches
# and prints one table with the ratio torch_ms / recall_ms (> 1: recall is faster).
# Extra arguments ("decode", "prefill", a row cap) go to both.
set -euo pipefail
bin=${1:?usage: topk_run.sh BIN_DIR [decode|prefill] [max_rows]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin/bench_cuda_topk" "$@" | tee "$tmp/recall.txt"
PYTHONUNBUFFERED=1 "$py" "$here/torch_topk.py" "$@" | tee "$tmp/torch.txt"

echo
printf '%-8s %9s %10s %10s %7s %12s %12s\n' mode rows recall_ms torch_ms ratio recall_TF/s recall_GB/s
awk '
  function val(line, key,   i, n, f) {
    n = split(line, f, " ")
    for (i = 1; i <= n; i++) if (index(f[i], key "=") == 1) return substr(f[i], length(key) + 2)
    return ""
  }
  FNR == NR && /^RESULT / { k = $2 " " val($0, "rows"); r[k] = val($0, "recall_ms");
                            tf[k] = val($0, "tflops"); gb[k] = val($0, "key_gbs");
                            order[++n] = k; next }
  /^RESULT / { k = $2 " " val($0, "rows"); t[k] = val($0, "torch_ms") }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]; split(k, m, " ")
      ratio = (k in t && r[k] > 0) ? sprintf("%.2f", t[k] / r[k]) : "-"
      printf "%-8s %9s %10s %10s %7s %12s %12s\n", m[1], m[2], r[k], (k in t ? t[k] : "-"),
             ratio, tf[k], gb[k]
      printf "RESULT_JOINED %s rows=%s recall_ms=%s torch_ms=%s ratio=%s\n", m[1], m[2], r[k],
             (k in t ? t[k] : "-"), ratio
    }
  }' "$tmp/recall.txt" "$tmp/torch.txt"
