/* Restart continuation (issue "FoT memory layers", item 3): a session that ingests part A,
 * is restarted (cleanly, and with kill -9), then ingests part B must be indistinguishable
 * from one that ingested A then B in one daemon's lifetime: same counters, same memory,
 * the same per-token log-probs from Score, and the same greedy answer token for token.
 * Part A ends mid-window, so the pending tail has to survive the restart too. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "tests/rpc_test_util.h"

#define N_CHUNKS 6

typedef struct outcome {
    uint64_t tokens, windows, pending, memory_tokens, memory_bytes_disk;
    size_t n_logprobs;
    float logprobs[4096];
    double nll;
    int32_t answer[64];
    size_t n_answer;
} outcome_t;

static char chunks[N_CHUNKS][2048];

/* Six chunks of the corpus, each a run of whole lines of about 600 bytes. */
static int load_chunks(void)
{
    const char *src = getenv("RECALL_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/corpus.txt", src ? src : ".");
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[4096];
    int c = 0;
    while (c < N_CHUNKS && fgets(line, sizeof line, f)) {
        if (strlen(chunks[c]) + strlen(line) >= sizeof chunks[c]) continue;
        strcat(chunks[c], line);
        if (strlen(chunks[c]) > 600) c++;
    }
    fclose(f);
    return c == N_CHUNKS ? 0 : -1;
}

static int ingest(rpc_client_t *c, int from, int to)
{
    for (int i = from; i < to; i++) {
        Recall__Response *r = rpc_ingest_text(c, "cont", (uint64_t)i + 1, chunks[i]);
        int ok = r && r->status && r->status->code == 0;
        if (!ok) fprintf(stderr, "ingest chunk %d: %s\n", i, r && r->status ? r->status->message : "no answer");
        if (r) recall__response__free_unpacked(r, NULL);
        if (!ok) return -1;
    }
    return 0;
}

static void observe(rpc_client_t *c, outcome_t *o)
{
    memset(o, 0, sizeof *o);
    Recall__Response *r = rpc_info(c, "cont");
    CHECK(r && r->status && r->status->code == 0 && r->session_info && r->session_info->info);
    if (r && r->session_info && r->session_info->info) {
        const Recall__SessionInfo *i = r->session_info->info;
        o->tokens = i->tokens;
        o->windows = i->windows;
        o->pending = i->pending_tokens;
        o->memory_tokens = i->memory_tokens;
        o->memory_bytes_disk = i->memory_bytes_disk;
    }
    if (r) recall__response__free_unpacked(r, NULL);

    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sc = RECALL__SCORE_REQUEST__INIT;
    sc.session = (char *)"cont";
    sc.want_logprobs = 1;
    q.body_case = RECALL__REQUEST__BODY_SCORE;
    q.score = &sc;
    r = rpc_call(c, &q, 120000);
    CHECK(r && r->status && r->status->code == 0 && r->score);
    if (r && r->score) {
        o->n_logprobs = r->score->n_logprobs < 4096 ? r->score->n_logprobs : 4096;
        memcpy(o->logprobs, r->score->logprobs, o->n_logprobs * sizeof(float));
        o->nll = r->score->nll;
    }
    if (r) recall__response__free_unpacked(r, NULL);

    rpc_answer_t *a = calloc(1, sizeof *a);
    CHECK(rpc_ask(c, "cont", "What did the text say about the river?", 40, 0, a) == 0);
    CHECK(a->status == 0);
    o->n_answer = a->n_tokens < 64 ? a->n_tokens : 64;
    memcpy(o->answer, a->tokens, o->n_answer * sizeof(int32_t));
    free(a);
}

static void compare(const char *what, const outcome_t *a, const outcome_t *b)
{
    CHECK_MSG(a->tokens == b->tokens && a->windows == b->windows && a->pending == b->pending,
              "%s: tokens %llu/%llu windows %llu/%llu", what, (unsigned long long)a->tokens,
              (unsigned long long)b->tokens, (unsigned long long)a->windows,
              (unsigned long long)b->windows);
    CHECK_MSG(a->memory_tokens == b->memory_tokens && a->memory_bytes_disk == b->memory_bytes_disk,
              "%s: memory differs", what);
    CHECK_MSG(a->n_logprobs == b->n_logprobs && a->n_logprobs > 0 &&
                  memcmp(a->logprobs, b->logprobs, a->n_logprobs * sizeof(float)) == 0,
              "%s: Score log-probs differ", what);
    CHECK_MSG(a->n_answer == b->n_answer && a->n_answer > 0 &&
                  memcmp(a->answer, b->answer, a->n_answer * sizeof(int32_t)) == 0,
              "%s: greedy answers differ", what);
    printf("%s: %llu tokens, %llu windows, %llu pending, %llu memory tokens, nll %.6f, "
           "answer of %zu tokens: identical\n",
           what, (unsigned long long)b->tokens, (unsigned long long)b->windows,
           (unsigned long long)b->pending, (unsigned long long)b->memory_tokens, b->nll,
           b->n_answer);
}

/* Runs A, then (restart with sig, or none when sig == 0), then B, and observes. */
static int run(const char *model, int sig, outcome_t *o)
{
    char dir[512], data[600], log[600], ep[600];
    if (rpc_tempdir(dir, sizeof dir)) return -1;
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/recalld.log", dir);
    snprintf(ep, sizeof ep, "ipc://%s/sock", dir);
    rpc_daemon_t dm;
    rpc_client_t c;
    int rc = -1;
    if (rpc_daemon_start(&dm, model, data, ep, log, NULL)) goto out;
    if (rpc_client_open(&c, ep)) goto out;
    Recall__Response *r = rpc_create(&c, "cont", 64, 0);
    CHECK(r && r->status && r->status->code == 0);
    if (r) recall__response__free_unpacked(r, NULL);
    if (ingest(&c, 0, 3)) goto out_client;
    if (sig) {
        rpc_client_close(&c);
        rpc_daemon_stop(&dm, sig);
        if (rpc_daemon_start(&dm, model, data, ep, log, NULL)) goto out;
        if (rpc_client_open(&c, ep)) goto out;
    }
    if (ingest(&c, 3, N_CHUNKS)) goto out_client;
    observe(&c, o);
    rc = 0;
out_client:
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
out:
    if (rc) rpc_print_file(log);
    rpc_rmtree(dir);
    return rc;
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-fot", td ? td : "tests/data");
    CHECK(load_chunks() == 0);
    static outcome_t straight, clean, killed;
    CHECK(run(model, 0, &straight) == 0);
    CHECK(straight.windows >= 8);                        /* enough to exercise memory */
    CHECK(straight.pending > 0);                         /* and a tail */
    CHECK(straight.memory_tokens == straight.windows * 64);
    CHECK(run(model, SIGTERM, &clean) == 0);
    compare("A, SIGTERM + restart, B", &straight, &clean);
    CHECK(run(model, SIGKILL, &killed) == 0);
    compare("A, kill -9 + restart, B", &straight, &killed);
    return check_summary();
}
