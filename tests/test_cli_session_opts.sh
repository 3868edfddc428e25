#!/usr/bin/env bash
# recall's --nlist / --nprobe / --gpu-memory-budget against a real recalld (tiny-fot, CPU):
# parsing and usage errors, the values reaching the session (info, text and --json), the
# daemon's refusals passed on, an existing session keeping its options (and the warning
# naming the ones ignored), ppl --text taking them, and the help texts that explain them.
# usage: test_cli_session_opts.sh RECALLD RECALL MODEL_DIR
set -u
recalld=$1; recall=$2; model=$3
. "$(dirname "$0")/cli_lib.sh"

help=$("$recalld" --help)
check "recalld --help: nlist/nprobe" '[[ "$help" == *"--nlist N  --nprobe N"* && "$help" == *"nprobe = nlist is an exact search"* ]]'
check "recalld --help: budget, CPU ignores it" '[[ "$help" == *"--gpu-memory-budget SIZE"* && "$help" == *"The CPU backend"*"ignores it"* ]]'
help=$("$recall" help ingest)
check "recall help ingest: knn explained" '[[ "$help" == *"top K memory keys by inner product"* ]]'
check "recall help ingest: nlist/nprobe trade" '[[ "$help" == *"--nlist N --nprobe N"* && "$help" == *"more cost per"* ]]'
check "recall help ingest: budget" '[[ "$help" == *"--gpu-memory-budget SIZE"* && "$help" == *"a CPU daemon ignores it"* ]]'

start_recalld
for i in $(seq 300); do echo "line $i of a text about nothing in particular"; done > "$dir/doc.txt"

# Usage errors: nothing reaches the daemon.
out=$(R ingest u1 --gpu-memory-budget 12Q "$dir/doc.txt" 2>&1); rc=$?
check "budget 12Q is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"--gpu-memory-budget needs a size such as 512M, 8G, 1.5G"* ]]'
out=$(R ingest u2 --gpu-memory-budget -1G "$dir/doc.txt" 2>&1); rc=$?
check "negative budget is a usage error" '[ $rc -eq 2 ]'
out=$(R ingest u3 --gpu-memory-budget 2048T "$dir/doc.txt" 2>&1); rc=$?
check "absurd budget is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"more than 1P"* ]]'
out=$(R ingest u4 --memory knn --nlist 0 "$dir/doc.txt" 2>&1); rc=$?
check "nlist 0 is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"--nlist must be between 1 and 1048576"* ]]'
out=$(R ingest u5 --memory knn --nprobe -2 "$dir/doc.txt" 2>&1); rc=$?
check "negative nprobe is a usage error" '[ $rc -eq 2 ]'
out=$(R ingest u6 --memory knn --nprobe 2x "$dir/doc.txt" 2>&1); rc=$?
check "nprobe 2x is a usage error" '[ $rc -eq 2 ]'
check "no session was created by usage errors" '[ "$(R sessions)" = "no sessions" ]'

# The daemon's refusals, verbatim.
out=$(R ingest x --nlist 4 "$dir/doc.txt" 2>&1); rc=$?
check "nlist without knn refused" '[ $rc -eq 1 ] && [[ "$out" == *"this session'"'"'s memory is exact: add memory \"knn\" (--memory knn)"* ]]'
out=$(R ingest x --memory knn --nlist 4 --nprobe 8 "$dir/doc.txt" 2>&1); rc=$?
check "nprobe > nlist refused" '[ $rc -eq 1 ] && [[ "$out" == *"nprobe 8 is more than nlist 4"* ]]'
out=$(R ingest x --gpu-memory-budget 1 "$dir/doc.txt" 2>&1); rc=$?
check "a 1-byte budget refused (below one window)" '[ $rc -eq 1 ] && [[ "$out" == *"session options: "* ]]'
check "refused sessions do not exist" '[ "$(R sessions)" = "no sessions" ]'

# Values reach the session.
check "knn ingest with nlist/nprobe/budget" 'R -q ingest s --memory knn --k 8 --nlist 4 --nprobe 2 --gpu-memory-budget 1.5G "$dir/doc.txt"'
js=$(R --json info s)
check "info --json" '[[ "$js" == *"\"memory\":\"knn\",\"k\":8,\"knn_nlist\":4,\"knn_nprobe\":2,\"gpu_memory_budget\":1610612736"* ]]'
txt=$(R info s)
check "info text: knn line" '[[ "$txt" == *"knn (k 8, nlist 4, nprobe 2)"* ]]'
check "info text: budget" '[[ "$txt" == *"gpu budget     1.5 GiB"* ]]'
ans=$(R --json ask s "What is this about?" --max-tokens 4 2>&1)
check "the knn session answers" '[[ "$ans" == *"\"generated\":4"* ]]'
out=$(R ingest s --nlist 8 --gpu-memory-budget 512M "$dir/doc.txt" 2>&1); rc=$?
check "existing session keeps its options and says which were ignored" '[ $rc -eq 0 ] && [[ "$out" == *"it keeps its own options, not --nlist 8 (it has 4), --gpu-memory-budget 512.0 MiB (it has 1.5 GiB)"* ]]'
check "options unchanged" '[[ "$(R --json info s)" == *"\"knn_nlist\":4,\"knn_nprobe\":2,\"gpu_memory_budget\":1610612736"* ]]'
check "budget none" 'R -q ingest e --gpu-memory-budget none "$dir/doc.txt"'
check "budget none: info" '[[ "$(R info e)" == *"gpu budget     none"* && "$(R info e)" == *"memory         exact"* ]]'
check "budget in plain bytes" 'R -q ingest b --gpu-memory-budget 1048576 "$dir/doc.txt" && [[ "$(R --json info b)" == *"\"gpu_memory_budget\":1048576"* ]]'
check "knn defaults shown" 'R -q ingest d --memory knn "$dir/doc.txt" && [[ "$(R info d)" == *"knn (k 128, nlist auto, nprobe default)"* ]]'

# ppl --text takes them too.
out=$(R ppl --text "$dir/doc.txt" --memory knn --nlist 4 --nprobe 2 --gpu-memory-budget 8G 2>&1); rc=$?
check "ppl --text with knn options" '[ $rc -eq 0 ] && [[ "$out" == "ppl "* ]]'
out=$(R ppl --text "$dir/doc.txt" --nprobe 2 2>&1); rc=$?
check "ppl --text: nprobe without knn refused" '[ $rc -eq 1 ] && [[ "$out" == *"score options: nlist and nprobe tune the kNN index"* ]]'

# GALI's options: parsing, the daemon's ranges, the values kept (w = 0 included).
out=$(R ingest g1 --positional gali --gali-mode fast "$dir/doc.txt" 2>&1); rc=$?
check "gali-mode fast is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"--gali-mode must be paper | reference"* ]]'
out=$(R ingest g2 --positional gali --seed 3 "$dir/doc.txt" 2>&1); rc=$?
check "--seed without --gali-noise on ingest is a usage error" '[ $rc -eq 2 ] && [[ "$out" == *"--seed goes with --gali-noise"* ]]'
out=$(R ingest g3 --positional gali --local-window 64 "$dir/doc.txt" 2>&1); rc=$?
check "gali w = L refused with the range" '[ $rc -eq 1 ] && [[ "$out" == *"gali --local-window must be in 0 <= w < L, here 0 to 63"* ]]'
out=$(R ingest g4 --positional gali --chunk-size 65 "$dir/doc.txt" 2>&1); rc=$?
check "gali c > L refused with the range" '[ $rc -eq 1 ] && [[ "$out" == *"gali --chunk-size must be in 1 <= c <= L, here 1 to 64"* ]]'
check "gali session" 'R -q ingest g --positional gali --window 256 --gali-mode reference --local-window 0 --chunk-size 40 --gali-noise 0.25 --seed 9 "$dir/doc.txt"'
js=$(R --json info g)
check "gali info --json" '[[ "$js" == *"\"positional\":\"gali\""* && "$js" == *"\"chunk_size\":40,\"local_window\":0"* && "$js" == *"\"gali_mode\":\"reference\",\"gali_noise\":0.25,\"gali_seed\":9"* ]]'
check "gali defaults" 'R -q ingest g5 --positional gali "$dir/doc.txt" && [[ "$(R --json info g5)" == *"\"chunk_size\":48,\"local_window\":8"*"\"gali_mode\":\"paper\""* ]]'
check "refused gali sessions do not exist" '[[ "$(R sessions)" != *"g1"* && "$(R sessions)" != *"g3"* ]]'

# Restart: the options are stored with the session.
kill $pid; wait $pid 2>/dev/null
start_recalld --nlist 64
check "after a restart" '[[ "$(R --json info s)" == *"\"knn_nlist\":4,\"knn_nprobe\":2,\"gpu_memory_budget\":1610612736"* ]]'
check "after a restart: defaults stay with old sessions" '[[ "$(R info d)" == *"nlist auto"* ]]'
check "after a restart: gali options kept" '[[ "$(R --json info g)" == *"\"local_window\":0"*"\"gali_mode\":\"reference\""* ]]'

finish
