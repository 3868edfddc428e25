#!/usr/bin/env bash
# Runs every libFuzzer target (tests/fuzz) for a total time, split between them, with
# AddressSanitizer + UndefinedBehaviorSanitizer, from the committed corpora.
#   scripts/fuzz_long.sh [SECONDS] [BUILD_DIR]     (defaults: 3600, build-fuzz)
# .ci/run calls it with 120. Configures and builds BUILD_DIR with clang (-DRECALL_FUZZ=ON)
# if needed; the tiny models come from build/tests/data (ctest -R make_tiny_models in the
# normal build). New interesting inputs go to BUILD_DIR/fuzz-work/<target> (not the tree);
# a crash leaves BUILD_DIR/fuzz-artifacts/<target>-crash-* and makes the script exit 1:
# copy it into tests/fuzz/corpus* as found-<what>.bin once fixed, so the replay tests keep
# it. Prints one line per target: seconds, executions, corpus size, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-3600}
build=${2:-build-fuzz}
models=${RECALL_TEST_DATA:-$PWD/build/tests/data}
if [ ! -f "$models/tiny-fot/tokenizer.model" ]; then
    echo "fuzz: no tiny models in $models (run ctest -R make_tiny_models in build/)" >&2
    exit 2
fi
if ! command -v clang > /dev/null; then
    echo "fuzz: no clang (bash scripts/deps.sh fuzz installs it)" >&2
    exit 2
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
    CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DRECALL_CUDA=OFF -DRECALL_FUZZ=ON -DRECALL_SANITIZE=ON > /dev/null
fi
cmake --build "$build" -j"${RECALL_FUZZ_JOBS:-$(nproc)}" --target fuzz_request fuzz_loader fuzz_tokenizer
export RECALL_FUZZ_MODEL=$models/tiny-fot RECALL_TEST_DATA=$models
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0}

# target  share of the time (%)  max input length  corpus
targets=("fuzz_request 50 4096 tests/fuzz/corpus"
         "fuzz_loader 25 16384 tests/fuzz/corpus_loader"
         "fuzz_tokenizer 25 4096 tests/fuzz/corpus_tokenizer")
art=$build/fuzz-artifacts
mkdir -p "$art"
status=0
summary=""
for line in "${targets[@]}"; do
    read -r t share maxlen corpus <<< "$line"
    secs=$(( total * share / 100 ))
    [ "$secs" -ge 1 ] || secs=1
    work=$build/fuzz-work/$t
    mkdir -p "$work"
    log=$build/fuzz-$t.log
    set +e
    "$build/tests/$t" -max_len="$maxlen" -max_total_time="$secs" -timeout=30 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$art/$t-" \
        "$work" "$corpus" > "$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    found=$(ls "$art" | grep -c "^$t-" || true)
    units=$(ls "$work" | wc -l)
    summary+=$(printf '%-15s %5d s  %10s executions  %5d inputs in the work corpus  exit %d  %d artifacts' \
        "$t" "$secs" "${execs:-?}" "$units" "$rc" "$found")$'\n'
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "fuzz: $t exited $rc; the end of its log ($log):"
        tail -60 "$log"
    fi
done
printf 'fuzz: %d s in all\n%s' "$total" "$summary"
exit $status
