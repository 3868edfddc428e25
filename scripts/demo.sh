#!/usr/bin/env bash
# The README's main command: builds recall, starts recalld on a fresh data directory,
# streams a document into a session with `recall ingest`, asks about it with `recall ask`,
# shows the session, restarts the daemon, and asks again from the persisted session.
#
# The model is the embedded default, models/default: a small LongLLaMA (8 layers, FoT memory
# layers) trained by this project on synthetic retrieval tasks and English documentation
# (models/default/MODEL_CARD.md). It ends with LongLLaMA's passkey test through the daemon:
# a short run at 1k/2k tokens, then one trial at 256k tokens (1024 windows of FoT memory) in
# knn memory mode, about 2.5-5 minutes on 2 CPU cores (more when they are busy).
#   scripts/demo.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target recalld recall >/dev/null
model=${1:-models/default}
data=$(mktemp -d /tmp/recall-demo.XXXXXX)
sock="ipc://$data/recalld.sock"
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
start() {
    build/daemon/recalld --model "$model" --data "$data/db" --listen "$sock" 2>>"$data/recalld.log" &
    pid=$!
    for _ in $(seq 50); do build/clients/recall --connect "$sock" health >/dev/null 2>&1 && return; sleep 0.2; done
    echo "recalld did not start; see $data/recalld.log" >&2
    exit 1
}
r() { build/clients/recall --connect "$sock" "$@"; }

echo "== recalld on $sock (model $model, data $data/db)"
start
head -c 16000 tests/data/corpus.txt > "$data/document.txt"
echo "== recall ingest demo document.txt (16 kB of tests/data/corpus.txt)"
r ingest demo "$data/document.txt"
echo "== recall info demo"
r info demo
echo "== recall ask demo (greedy)"
r ask demo "What did the text say about the weather?" --max-tokens 24
echo "== recall ppl demo (low: the embedded model saw tests/data/corpus.txt in training)"
r ppl demo
echo "== restart recalld: the session is read back from LMDB"
kill "$pid"; wait "$pid" || true
start
r sessions
r ask demo "What did the text say about the weather?" --max-tokens 24
echo "== recall passkey: a key hidden in filler at 1k and 2k tokens, 3 depths (LongLLaMA's test)"
r passkey --tokens 1k,2k --depths 3 --trials 2 --png build/passkey-demo.png
# One trial (the key at 50 % depth) keeps the demo to a few minutes on 2 cores; each further
# depth or trial at 256k adds as much again.
echo "== recall passkey at 256k tokens: 1024 windows, each query attending to its top-128 memory"
echo "   keys per head (--memory knn: exact search below 32k keys, IVF lists beyond); one trial"
r passkey --tokens 256k --depths 1 --trials 1 --memory knn
