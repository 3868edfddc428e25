#!/usr/bin/env bash
# The long kill -9 soak (issue 17, point 4): tests/e2e_soak.py with many kills.
#   bench/soak.sh [KILLS] [SEED] [BUILD_DIR]     (defaults: 500, the date, build)
# Needs a built tree with the tiny models (ctest -R make_tiny_models). Prints the seed (to
# replay a failure: the same SEED), a line every 10 kills, and the figures at the end:
# kills survived, how many at each crash point, chunks acknowledged, creates and drops.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-500}
seed=${2:-$(date +%s)}
build=${3:-build}
[ -x "$build/daemon/recalld" ] || { echo "soak: no $build/daemon/recalld; build first" >&2; exit 2; }
[ -f "$build/tests/data/tiny-fot/config.json" ] ||
    ctest --test-dir "$build" -R make_tiny_models > /dev/null
export RECALL_BIN=$build/clients/recall RECALLD_BIN=$build/daemon/recalld
export RECALL_TEST_DATA=$build/tests/data RECALL_SOURCE_DIR=$PWD
exec /usr/bin/python3 tests/e2e_soak.py --kills "$kills" --seed "$seed"
