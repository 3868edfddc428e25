#!/usr/bin/env bash
# recall bench against a real recalld (tiny-fot, CPU): the JSON report's fields and their
# sanity, the throwaway session dropped afterwards (kept with --keep), usage errors that
# create nothing, knn session options, and the help text.
# usage: test_cli_bench.sh RECALLD RECALL MODEL_DIR
set -u
recalld=$1; recall=$2; model=$3
py=${RECALL_PYTHON:-python3}
. "$(dirname "$0")/cli_lib.sh"
# jget JSON EXPR: a Python expression over j, the parsed object; prints its value.
jget() { "$py" -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

help=$("$recall" help bench)
check "help: what it measures" '[[ "$help" == *"tokens/s"* && "$help" == *"first streamed token"* ]]'
check "help: creates and drops a session" '[[ "$help" == *"creates a fresh session"* && "$help" == *"drops the session"* ]]'
check "help: examples" '[[ "$help" == *"recall bench --tokens 256k --memory knn"* && "$help" == *"recall --json bench --tokens 1M"* ]]'
check "help: points to bench/" '[[ "$help" == *"see bench/ in the"* ]]'

start_recalld

# Usage errors: exit 2, nothing created.
out=$(R bench --tokens 0 2>&1); rc=$?
check "--tokens 0 is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"--tokens: 0 is outside 1 .. 64M tokens"* ]]'
out=$(R bench --tokens 2x 2>&1); rc=$?
check "--tokens 2x is a usage error" '[ $rc -eq 2 ]'
out=$(R bench --tokens 1k,2k 2>&1); rc=$?
check "--tokens list is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"one length"* ]]'
out=$(R bench --max-tokens 0 2>&1); rc=$?
check "--max-tokens 0 is a usage error" '[ $rc -eq 2 ]'
out=$(R bench --memory fuzzy 2>&1); rc=$?
check "bad --memory is a usage error" '[ $rc -eq 2 ]'
out=$(R bench extra 2>&1); rc=$?
check "an argument is a usage error" '[ $rc -eq 2 ]'
check "usage errors created no session" '[ "$(R sessions)" = "no sessions" ]'

# The run.
js=$(R --json bench --tokens 2k --max-tokens 4); rc=$?
check "bench exits 0" '[ $rc -eq 0 ]'
check "one JSON object" '[ "$(printf "%s\n" "$js" | wc -l)" -eq 1 ]'
check "tokens within 10% of 2048" '[ "$(jget "$js" "int(abs(j[\"tokens\"] - 2048) <= 205)")" = 1 ]'
check "target_tokens" '[ "$(jget "$js" "j[\"target_tokens\"]")" = 2048 ]'
check "tokens/s > 0, ingest_s > 0" '[ "$(jget "$js" "int(j[\"tokens_per_s\"] > 0 and j[\"ingest_s\"] > 0)")" = 1 ]'
check "generated == 4" '[ "$(jget "$js" "j[\"generated\"]")" = 4 ]'
check "ttft, prefill, decode sane" '[ "$(jget "$js" "int(j[\"ttft_ms\"] > 0 and j[\"prefill_ms\"] >= 0 and j[\"decode_ms\"] >= 0 and j[\"decode_ms_per_token\"] >= 0 and j[\"prompt_tokens\"] > 0)")" = 1 ]'
check "memory bytes present" '[ "$(jget "$js" "int(all(isinstance(j[k], (int, float)) and j[k] >= 0 for k in (\"memory_bytes_host\", \"memory_bytes_device\", \"memory_bytes_disk\")) and j[\"memory_bytes_host\"] + j[\"memory_bytes_disk\"] > 0)")" = 1 ]'
check "device and session named" '[ -n "$(jget "$js" "j[\"device\"]")" ] && [[ "$(jget "$js" "j[\"session\"]")" == bench-* ]]'
check "not kept" '[ "$(jget "$js" "j[\"kept\"]")" = False ]'
check "session dropped afterwards" '[ "$(R sessions)" = "no sessions" ]'

# --keep, and knn options reaching the session.
js=$(R --json bench --tokens 1k --max-tokens 2 --keep --memory knn --k 8); rc=$?
check "bench --keep --memory knn exits 0" '[ $rc -eq 0 ]'
name=$(jget "$js" "j[\"session\"]")
check "kept" '[ "$(jget "$js" "j[\"kept\"]")" = True ]'
check "knn options in the report" '[ "$(jget "$js" "j[\"options\"][\"memory\"] + str(j[\"options\"][\"k\"])")" = knn8 ]'
check "--keep keeps the session" '[[ "$(R sessions)" == *"$name"* ]]'
R -q drop "$name" > /dev/null

# Text output.
out=$(R bench --tokens 1k --max-tokens 2 2>&1); rc=$?
check "text table" '[ $rc -eq 0 ] && [[ "$out" == *"tokens/s"* && "$out" == *"first token"* && "$out" == *"ms/token"* && "$out" == *"memory         host"* ]]'
check "text run dropped its session" '[ "$(R sessions)" = "no sessions" ]'

# A daemon error: the daemon's message, exit 1, nothing left behind.
out=$(R bench --tokens 1k --memory knn --nlist 4 --nprobe 8 2>&1); rc=$?
check "daemon refusal passed on" '[ $rc -eq 1 ] && [[ "$out" == *"nprobe 8 is more than nlist 4"* ]]'
check "refused run left no session" '[ "$(R sessions)" = "no sessions" ]'

finish
