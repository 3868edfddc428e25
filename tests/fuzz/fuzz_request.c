/* fuzz_request.c — libFuzzer target: one untrusted frame through recalld's request path.
 *
 * Each input is a frame as it arrives on the ROUTER. It goes through
 *   1. recall__request__unpack, with a re-pack round trip that must be stable;
 *   2. the public helpers on the raw bytes (utf8_valid and session_name_problem, each
 *      against an independent reference);
 *   3. the daemon's own handle_message (request_harness.c compiles daemon/server.c in),
 *      with the tiny model and a real LMDB environment, checking the reply's shape.
 * Any disagreement aborts, so libFuzzer keeps the input as a crash.
 *
 *   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
 *         -DRECALL_FUZZ=ON -DRECALL_CUDA=OFF
 *   cmake --build build-fuzz --target fuzz_request
 *   RECALL_FUZZ_MODEL=build/tests/data/tiny-fot \
 *     build-fuzz/tests/fuzz/fuzz_request -max_len=4096 -max_total_time=300 \
 *     /tmp/fuzz-work tests/fuzz/corpus
 * (new interesting inputs go to the first directory; copy crashes into tests/fuzz/corpus
 * as found-*.bin so tests/test_fuzz_corpus.c replays them forever.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/request_harness.h"

static rh_t *g_h;

static void close_harness(void)
{
    rh_close(&g_h);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char model[1024];
    const char *m = getenv("RECALL_FUZZ_MODEL");
    const char *td = getenv("RECALL_TEST_DATA");
    if (m && m[0])
        snprintf(model, sizeof model, "%s", m);
    else
        snprintf(model, sizeof model, "%s/tiny-fot", td && td[0] ? td : "tests/data");
    char err[1024];
    if (rh_open(&g_h, model, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_request: %s\n(set RECALL_FUZZ_MODEL to a tiny-fot checkpoint)\n",
                err);
        exit(2);
    }
    atexit(close_harness);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (rh_check_roundtrip(data, size) != 0) {
        fprintf(stderr, "fuzz_request: the request does not survive a re-pack round trip\n");
        abort();
    }
    if (size <= 4096 && rh_check_helpers(data, size) != 0) abort();
    rh_result_t res;
    if (rh_run(g_h, data, size, &res) != 0) {
        fprintf(stderr, "fuzz_request: %s (decoded %d, body %d, queued %d, code %d)\n",
                res.message, res.decoded, res.body_case, res.queued, res.code);
        abort();
    }
    return 0;
}
