#!/usr/bin/env bash
# recalld with no --model and no RECALL_MODEL loads the embedded default model
# (models/default), answers Health with it, and a session can ingest and answer.
set -u
recalld=$1; recall=$2
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $1"; fi; }
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
env -u RECALL_MODEL "$recalld" --data "$dir/db" --listen "ipc://$dir/s" 2> "$dir/log" &
pid=$!
for _ in $(seq 100); do "$recall" --connect "ipc://$dir/s" health > /dev/null 2>&1 && break; sleep 0.2; done
health=$("$recall" --connect "ipc://$dir/s" --json health 2>&1)
check "health names the embedded model" '[[ "$health" == *"8 layers"* && "$health" == *"models/default"* ]]'
printf 'The pass key is 4711. Remember it.\nThe sky is blue.\n' > "$dir/doc.txt"
check "ingest" '"$recall" --connect "ipc://$dir/s" -q ingest s "$dir/doc.txt" > /dev/null'
ans=$("$recall" --connect "ipc://$dir/s" --json ask s "What is the pass key? The pass key is" --max-tokens 6 2>&1)
check "ask answers" '[[ "$ans" == *"\"generated\""* ]]'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
