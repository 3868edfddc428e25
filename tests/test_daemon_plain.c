/* Plain LLaMA models (no memory layers) in sessions: the session is its local context, at
 * most one window — the trained length, or the extended length of Self-Extend / DCA — kept
 * whole; Ingest past it is refused with a clear message and changes nothing; answers equal
 * an in-process stream fed the session's tokens then the question. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu.h"
#include "model/model.h"
#include "model/stream.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

static Recall__Response *create(rpc_client_t *c, const char *name, uint32_t window,
                                const char *positional, uint32_t group, uint32_t neighbor)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.window = window;
    o.positional = (char *)positional;
    o.group = group;
    o.neighbor = neighbor;
    return rpc_create_opts(c, name, &o, 0);
}

static int ingest(rpc_client_t *c, const char *name, uint64_t seq, int32_t *t, size_t n,
                  char *msg, size_t msglen)
{
    Recall__Response *r = rpc_ingest_tokens(c, name, seq, t, n);
    int code = r && r->status ? r->status->code : 99;
    if (msg) snprintf(msg, msglen, "%s", r && r->status && r->status->message ? r->status->message : "");
    if (r) recall__response__free_unpacked(r, NULL);
    return code;
}

/* Greedy answer of n_gen tokens to question tokens qt, through the daemon. */
static size_t ask(rpc_client_t *c, const char *name, int32_t *qt, size_t nq, int32_t *out,
                  size_t n_gen)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__AskRequest a = RECALL__ASK_REQUEST__INIT;
    a.session = (char *)name;
    a.question_tokens = qt;
    a.n_question_tokens = nq;
    a.max_tokens = (uint32_t)n_gen;
    a.ignore_eos = 1;
    q.body_case = RECALL__REQUEST__BODY_ASK;
    q.ask = &a;
    if (rpc_send(c, &q)) return 0;
    size_t n = 0;
    for (;;) {
        Recall__Response *r = rpc_recv(c, 60000);
        if (!r) return 0;
        int more = r->more;
        if (r->ask && !r->ask->done && n < n_gen) out[n++] = r->ask->token;
        recall__response__free_unpacked(r, NULL);
        if (!more) break;
    }
    return n;
}

/* The same in process: feed the session's tokens and the question, then greedy. */
static void expect_answer(model_t *m, const model_stream_opts_t *o, const int32_t *sess,
                          size_t ns, const int32_t *qt, size_t nq, int32_t *out, size_t n_gen)
{
    model_stream_t *s = NULL;
    int vocab = model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * vocab);
    CHECK_RC(model_stream_create(m, o, &s), RC_OK);
    model_stream_feed(s, sess, ns, NULL, NULL);
    model_stream_feed(s, qt, nq, NULL, logits);
    for (size_t i = 0; i < n_gen; i++) {
        out[i] = cpu_argmax(logits, vocab);
        model_stream_feed(s, &out[i], 1, NULL, logits);
    }
    model_stream_destroy(&s);
    free(logits);
}

static void case_session(rpc_client_t *c, model_t *m, const char *name, uint32_t window,
                         const char *positional, uint32_t G, uint32_t Wn,
                         const model_stream_opts_t *o)
{
    Recall__Response *r = create(c, name, window, positional, G, Wn);
    CHECK_MSG(r && r->status && r->status->code == 0, "create %s: %s", name,
              r && r->status ? r->status->message : "no answer");
    if (r) recall__response__free_unpacked(r, NULL);
    int32_t *t = malloc(sizeof(int32_t) * (window + 64));
    unsigned seed = window;
    t[0] = 1;
    for (uint32_t i = 1; i < window + 64; i++) t[i] = 3 + (int32_t)(rand_r(&seed) % 500);
    size_t first = window - 30;
    char msg[512];
    CHECK(ingest(c, name, 1, t, first, NULL, 0) == 0);
    /* 40 more would pass the window: refused, clearly, and nothing changes. */
    CHECK(ingest(c, name, 2, t + first, 40, msg, sizeof msg) == RC_ERR_LIMIT);
    CHECK_MSG(strstr(msg, "full") && strstr(msg, "no memory layers"), "message: %s", msg);
    r = rpc_info(c, name);
    const Recall__SessionInfo *i = r && r->session_info ? r->session_info->info : NULL;
    CHECK_MSG(i && i->tokens == first && i->windows == 0 && i->pending_tokens == first &&
                  i->last_seq == 1,
              "%s: info after the refused chunk", name);
    if (r) recall__response__free_unpacked(r, NULL);
    /* Up to the window exactly is fine, and the whole session stays in context. */
    CHECK(ingest(c, name, 2, t + first, 20, NULL, 0) == 0);
    int32_t qt[6] = {100, 200, 300, 17, 42, 7}, got[8], want[8];
    size_t n = ask(c, name, qt, 6, got, 8);
    expect_answer(m, o, t, first + 20, qt, 6, want, 8);
    CHECK_MSG(n == 8 && memcmp(got, want, sizeof want) == 0, "%s: answer differs from in-process",
              name);
    printf("%s: window %u, %zu tokens held, over-full chunk refused, answer identical\n", name,
           window, first + 20);
    free(t);
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char model_dir[1024], err[512];
    snprintf(model_dir, sizeof model_dir, "%s/tiny-llama", td ? td : "tests/data");
    model_t *m = NULL;
    if (model_load(model_dir, 0, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char dir[512], data[600], log[600], ep[600];
    CHECK(rpc_tempdir(dir, sizeof dir) == 0);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(log, sizeof log, "%s/recalld.log", dir);
    snprintf(ep, sizeof ep, "ipc://%s/sock", dir);
    rpc_daemon_t dm;
    rpc_client_t c;
    if (rpc_daemon_start(&dm, model_dir, data, ep, log, NULL) || rpc_client_open(&c, ep)) {
        rpc_print_file(log);
        return 1;
    }
    /* tiny-llama is trained at 128 tokens; Self-Extend G=4, W=32 reaches (128-32)*4+32 = 416. */
    model_stream_opts_t plain = {.window = 128};
    model_stream_opts_t se = {.window = 400, .positional = POSITIONAL_SELF_EXTEND, .group = 4,
                              .neighbor = 32};
    case_session(&c, m, "plain", 128, "rope", 0, 0, &plain);
    case_session(&c, m, "long", 400, "self-extend", 4, 32, &se);
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
    rpc_rmtree(dir);
    model_destroy(&m);
    return check_summary();
}
