# cli_lib.sh — the harness shared by the shell tests that drive a real recalld with the
# recall CLI. Source it after setting recalld, recall and model; it gives:
#   check NAME 'CONDITION'   counts a pass or prints "FAIL: NAME"
#   R ARGS...                recall against this test's daemon
#   start_recalld ARGS...    starts recalld on $model with a scratch data dir (extra flags
#                            appended), waits until it answers; its log is $dir/log
#   finish                   prints the log on failure and the counts; its status is the verdict
# $dir is a scratch directory removed at exit, together with the daemon.
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $1"; fi; }
dir=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
ep="ipc://$dir/s"
R() { "$recall" --connect "$ep" "$@"; }
start_recalld() {
    "$recalld" --model "$model" --data "$dir/db" --listen "$ep" --threads 1 "$@" 2>> "$dir/log" &
    pid=$!
    for _ in $(seq 100); do R health > /dev/null 2>&1 && break; sleep 0.2; done
}
finish() {
    [ "$fail" -eq 0 ] || cat "$dir/log"
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
