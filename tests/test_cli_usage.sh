#!/usr/bin/env bash
# test_cli_usage.sh — the recall CLI without a daemon: help, usage errors (exit 2 with a
# message that says what is wrong) and unreachable endpoints (exit 3, fast).
# Usage: test_cli_usage.sh [PATH_TO_RECALL]  (default $RECALL_BUILD_DIR/clients/recall)
set -u
recall=${1:-${RECALL_BIN:-$RECALL_BUILD_DIR/clients/recall}}
pass=0
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run NAME WANT_EXIT [--out REGEX] [--err REGEX] -- ARGS...
run() {
    local name=$1 want=$2 out_re="" err_re=""
    shift 2
    while [ "$1" != "--" ]; do
        case $1 in
        --out) out_re=$2; shift 2 ;;
        --err) err_re=$2; shift 2 ;;
        esac
    done
    shift
    "$recall" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    local got=$?
    local ok=1
    if [ "$got" != "$want" ]; then ok=0; echo "FAIL $name: exit $got, want $want"; fi
    if [ -n "$out_re" ] && ! grep -Eq -- "$out_re" "$tmp/out"; then
        ok=0; echo "FAIL $name: stdout does not match /$out_re/:"; sed 's/^/  | /' "$tmp/out" | head -5
    fi
    if [ -n "$err_re" ] && ! grep -Eq -- "$err_re" "$tmp/err"; then
        ok=0; echo "FAIL $name: stderr does not match /$err_re/:"; sed 's/^/  | /' "$tmp/err" | head -5
    fi
    if [ $ok = 1 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
}

if [ ! -x "$recall" ]; then
    echo "FAIL: no recall binary at $recall"
    echo "0 passed, 1 failed"
    exit 1
fi

# Help teaches: commands, options and examples.
run help 0 --out 'ingest' --out 'Examples' -- --help
run help_lists_all 0 --out 'sessions' -- help
grep -q 'drop' "$tmp/out" && grep -q 'stats' "$tmp/out" && grep -q 'ppl' "$tmp/out" &&
    grep -q 'health' "$tmp/out" && pass=$((pass + 1)) || { echo "FAIL help does not list every command"; fail=$((fail + 1)); }
run help_ingest 0 --out '--chunk-bytes' -- help ingest
grep -q 'recall ingest books' "$tmp/out" && pass=$((pass + 1)) || { echo "FAIL help ingest has no example"; fail=$((fail + 1)); }
run ingest_help 0 --out '--positional' -- ingest --help
run ask_help 0 --out '--temperature' -- ask -h
run keygen_help 0 --out 'recall keygen DIR' --out '--allow' -- help keygen
run keygen_no_dir 2 --err 'keygen takes one DIR' -- keygen
run keygen_bad_name 2 --err 'letters, digits' -- keygen "$tmp/k" --name 'a/b'
run curve_half 2 --err 'server-key' -- --curve-keys "$tmp" health
run ppl_help_after_global 0 --out '--text' -- --json ppl --help
run help_unknown 2 --err "no command 'frob'" -- help frob
run passkey_bad_tokens 2 --err "'12q' is not a length" -- passkey --tokens 12q
run bench_bad_tokens 2 --err 'outside 1 .. 64M' -- bench --tokens 0

# Usage errors: exit 2, say what is wrong.
run no_command 2 --err 'no command' --
run unknown_command 2 --err "unknown command 'frob'" -- frob
run unknown_option 2 --err "unknown option '--bogus'" -- health --bogus
run unknown_short 2 --err "unknown option '-x'" -- sessions -x
run missing_value 2 --err 'needs a value' -- ask s q --max-tokens
run ask_args 2 --err 'needs a SESSION and a QUESTION' -- ask onlysession
run ask_two_questions 2 --err 'one QUESTION' -- ask s q1 q2
run bad_number 2 --err "--window needs a whole number, not '4x'" -- ingest s f --window 4x
run negative_number 2 --err '--k' -- ingest s f --k -3
run bad_choice 2 --err 'rope \| self-extend \| dca' -- ingest s f --positional alibi
run bad_memory 2 --err 'exact \| knn' -- ingest s f --memory approx
run option_wrong_cmd 2 --err "does not apply to 'ask'" -- ask s q --window 5
run flag_with_value 2 --err 'takes no value' -- ask s q --append=yes
run temperature_range 2 --err 'temperature must be between' -- ask s q --temperature -1
run top_p_range 2 --err 'top-p' -- ask s q --top-p 1.5
run ppl_both 2 --err 'not both' -- ppl s --text f
run ppl_neither 2 --err 'SESSION or --text' -- ppl
run ppl_session_opts 2 --err 'ppl --text only' -- ppl s --window 64
run info_args 2 --err 'exactly one SESSION' -- info
run drop_args 2 --err 'exactly one SESSION' -- drop a b
run sessions_args 2 --err 'no arguments' -- sessions extra
run bad_endpoint 2 --err 'tcp://HOST:PORT or ipc://PATH' -- --connect http://x health
run bad_timeout 2 --err 'timeout' -- health --timeout 0
run chunk_bytes 2 --err 'chunk-bytes' -- ingest s f --chunk-bytes 2
run missing_file 2 --err "cannot read $tmp/nope" -- ingest s "$tmp/nope" --connect tcp://127.0.0.1:1
run stdin_twice 2 --err 'stdin' -- ingest s - - --connect tcp://127.0.0.1:1
run option_before_command 2 --err "given without a command" -- --window 5
# --json: usage errors are one JSON object on stdout too.
run json_usage 2 --out '^\{"error":\{"code":-1,"name":"INVALID","message":"unknown command' -- --json frob
[ "$(wc -l <"$tmp/out")" = 1 ] && pass=$((pass + 1)) || { echo "FAIL json_usage: not one line"; fail=$((fail + 1)); }

# Nothing listening: exit 3 within seconds, and say so.
t0=$(date +%s%N)
run dead_tcp 3 --err 'is recalld running\?' -- health --connect tcp://127.0.0.1:1
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -lt 10000 ] && pass=$((pass + 1)) || { echo "FAIL dead_tcp took $ms ms"; fail=$((fail + 1)); }
run dead_ipc_json 3 --out '"name":"IO"' --out 'is recalld running' -- --json info s --connect "ipc://$tmp/none.sock"
RECALL_CONNECT=tcp://127.0.0.1:1 run env_connect 3 --err 'tcp://127.0.0.1:1' -- sessions
# A listener that never answers (a plain TCP socket that is not ZeroMQ, or a ZeroMQ peer
# that is silent): --timeout bounds the wait.
if command -v /usr/bin/python3 >/dev/null; then
    /usr/bin/python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
conns = []
end = time.time() + 20
s.settimeout(0.5)
while time.time() < end:
    try: conns.append(s.accept()[0])
    except socket.timeout: pass
' >"$tmp/port" &
    spid=$!
    for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
    port=$(head -1 "$tmp/port")
    t0=$(date +%s%N)
    run silent_peer 3 --err 'within|cannot connect' -- stats --connect "tcp://127.0.0.1:$port" --timeout 1
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ $ms -lt 8000 ] && pass=$((pass + 1)) || { echo "FAIL silent_peer took $ms ms"; fail=$((fail + 1)); }
    kill $spid 2>/dev/null
    wait $spid 2>/dev/null
fi

echo "$pass passed, $fail failed"
[ $fail = 0 ]
