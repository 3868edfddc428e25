/* Session options travel intact from the wire to the stream: sessions created over RPC
 * with Self-Extend, DCA, GALI or a RoPE scaling (windows 4x the trained length of tiny-fot)
 * score their tokens exactly as an in-process stream with the same options does, report
 * their resolved options, and keep them across a restart. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/stream.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

#define N_TOK 700

typedef struct variant {
    const char *name, *positional, *scaling;
    uint32_t window, group, neighbor, chunk, local;
    float factor;
    model_stream_opts_t opts;
    const char *gali_mode; /* gali: the mode sent, and whether local_window is sent as set */
    int local_set;
} variant_t;

static variant_t variants[] = {
    {"se", "self-extend", "", 256, 6, 20, 0, 0, 0, {.window = 256, .positional = POSITIONAL_SELF_EXTEND, .group = 6, .neighbor = 20}, NULL, 0},
    {"dca", "dca", "", 256, 0, 0, 0, 0, 0, {.window = 256, .positional = POSITIONAL_DCA}, NULL, 0},
    {"dca2", "dca", "", 200, 0, 0, 40, 8, 0, {.window = 200, .positional = POSITIONAL_DCA, .chunk_size = 40, .local_window = 8}, NULL, 0},
    {"yarn", "rope", "yarn", 128, 0, 0, 0, 0, 2.0f, {.window = 128, .rope_scaling_set = 1, .rope_scaling = ROPE_SCALING_YARN, .rope_factor = 2.0f}, NULL, 0},
    /* GALI with w = 0 (sent as set: 0 alone means the default) and the bf16 coefficient. */
    {"gali", "gali", "", 256, 0, 0, 40, 0, 0, {.window = 256, .positional = POSITIONAL_GALI, .chunk_size = 40, .local_window = 0, .local_window_set = 1, .gali_mode = GALI_MODE_REFERENCE}, "reference", 1},
};
#define N_VAR (sizeof variants / sizeof variants[0])

static Recall__Response *create(rpc_client_t *c, const variant_t *v)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.positional = (char *)v->positional;
    o.rope_scaling = (char *)v->scaling;
    o.rope_factor = v->factor;
    o.window = v->window;
    o.group = v->group;
    o.neighbor = v->neighbor;
    o.chunk_size = v->chunk;
    o.local_window = v->local;
    o.gali_mode = (char *)(v->gali_mode ? v->gali_mode : "");
    o.local_window_set = v->local_set;
    return rpc_create_opts(c, v->name, &o, 0);
}

static int ingest(rpc_client_t *c, const char *name, int32_t *toks, size_t n)
{
    Recall__Response *r = rpc_ingest_tokens(c, name, 1, toks, n);
    int ok = r && r->status && r->status->code == 0;
    if (r) recall__response__free_unpacked(r, NULL);
    return ok ? 0 : -1;
}

/* Max |daemon logprob − in-process logprob| for session v, or INFINITY. */
static double score_diff(rpc_client_t *c, const variant_t *v, const float *want, size_t n)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sc = RECALL__SCORE_REQUEST__INIT;
    sc.session = (char *)v->name;
    sc.want_logprobs = 1;
    q.body_case = RECALL__REQUEST__BODY_SCORE;
    q.score = &sc;
    Recall__Response *r = rpc_call(c, &q, 120000);
    double worst = INFINITY;
    if (r && r->score && r->score->n_logprobs == n - 1) {
        worst = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            double d = fabs(r->score->logprobs[i] - want[i]);
            if (!(d <= worst)) worst = d;
        }
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return worst;
}

static void check_info(rpc_client_t *c, const variant_t *v)
{
    Recall__Response *r = rpc_info(c, v->name);
    const Recall__SessionOptions *o =
        r && r->session_info && r->session_info->info ? r->session_info->info->options : NULL;
    CHECK_MSG(o && o->window == v->window && !strcmp(o->positional, v->positional),
              "%s: info options", v->name);
    if (o && !strcmp(v->positional, "dca"))
        CHECK_MSG(o->chunk_size > o->local_window && o->local_window > 0,
                  "%s: dca sizes resolved (S %u, w %u)", v->name, o->chunk_size, o->local_window);
    if (o && !strcmp(v->positional, "gali"))
        CHECK_MSG(!strcmp(o->gali_mode, v->gali_mode) && o->local_window == v->local &&
                      o->local_window_set && o->chunk_size == v->chunk,
                  "%s: gali options kept (mode %s, w %u, c %u)", v->name, o->gali_mode,
                  o->local_window, o->chunk_size);
    if (o && v->scaling[0])
        CHECK_MSG(!strcmp(o->rope_scaling, v->scaling) && o->rope_factor == v->factor,
                  "%s: rope scaling kept", v->name);
    if (r) recall__response__free_unpacked(r, NULL);
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char model_dir[1024], err[512];
    snprintf(model_dir, sizeof model_dir, "%s/tiny-fot", td ? td : "tests/data");
    model_t *m = NULL;
    if (model_load(model_dir, 0, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int32_t toks[N_TOK];
    unsigned seed = 7;
    toks[0] = 1;
    for (int i = 1; i < N_TOK; i++) toks[i] = 3 + (int32_t)(rand_r(&seed) % 500);
    static float want[N_VAR][N_TOK];
    for (size_t v = 0; v < N_VAR; v++) {
        model_stream_t *s = NULL;
        CHECK_RC(model_stream_create(m, &variants[v].opts, &s), RC_OK);
        if (s) CHECK_RC(model_stream_feed(s, toks, N_TOK, want[v], NULL), RC_OK);
        model_stream_destroy(&s);
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
    for (size_t v = 0; v < N_VAR; v++) {
        Recall__Response *r = create(&c, &variants[v]);
        CHECK_MSG(r && r->status && r->status->code == 0, "create %s: %s", variants[v].name,
                  r && r->status ? r->status->message : "no answer");
        if (r) recall__response__free_unpacked(r, NULL);
        CHECK(ingest(&c, variants[v].name, toks, N_TOK) == 0);
        check_info(&c, &variants[v]);
        double d = score_diff(&c, &variants[v], want[v], N_TOK);
        CHECK_MSG(d <= 1e-5, "%s: daemon vs in-process max |dlogprob| %g", variants[v].name, d);
        printf("%-5s window %u: daemon vs in-process max |dlogprob| %.2g\n", variants[v].name,
               variants[v].window, d);
    }
    /* Options are persisted resolved: a restarted daemon scores the same. */
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
    CHECK(rpc_daemon_start(&dm, model_dir, data, ep, log, NULL) == 0);
    CHECK(rpc_client_open(&c, ep) == 0);
    for (size_t v = 0; v < N_VAR; v++) {
        check_info(&c, &variants[v]);
        CHECK_MSG(score_diff(&c, &variants[v], want[v], N_TOK) <= 1e-5, "%s after restart",
                  variants[v].name);
    }
    /* A window Self-Extend cannot reach: (L − W)·G + W = (64 − 16)·4 + 16 = 208 < 256. */
    variant_t far = {"far", "self-extend", "", 256, 4, 16, 0, 0, 0, {0}, NULL, 0};
    far.group = 4;
    Recall__Response *r = create(&c, &far);
    CHECK(r && r->status && r->status->code == -1);
    if (r) recall__response__free_unpacked(r, NULL);
    /* GALI's ranges and its mode's names are checked, with the range in the message. */
    variant_t bad_w = {"badw", "gali", "", 256, 0, 0, 0, 64, 0, {0}, "paper", 0};
    r = create(&c, &bad_w);
    CHECK_MSG(r && r->status && r->status->code == -1 && r->status->message &&
                  strstr(r->status->message, "--local-window") &&
                  strstr(r->status->message, "0 to 63"),
              "gali w = L refused with the range: %s",
              r && r->status ? r->status->message : "no answer");
    if (r) recall__response__free_unpacked(r, NULL);
    variant_t bad_m = {"badm", "gali", "", 256, 0, 0, 0, 0, 0, {0}, "fast", 0};
    r = create(&c, &bad_m);
    CHECK_MSG(r && r->status && r->status->code == -1 && r->status->message &&
                  strstr(r->status->message, "paper or reference"),
              "unknown gali mode refused: %s", r && r->status ? r->status->message : "");
    if (r) recall__response__free_unpacked(r, NULL);
    variant_t bad_s = {"bads", "dca", "", 256, 0, 0, 0, 0, 0, {0}, "reference", 0};
    r = create(&c, &bad_s);
    CHECK_MSG(r && r->status && r->status->code == -1, "gali_mode with dca refused");
    if (r) recall__response__free_unpacked(r, NULL);

    /* Daemon defaults: a daemon started with --positional dca --window 256 gives new
     * sessions without options exactly the dca variant's results, while stored sessions
     * keep the options they were created with. */
    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
    const char *dflt_args[] = {"--positional", "dca", "--window", "256", NULL};
    CHECK(rpc_daemon_start(&dm, model_dir, data, ep, log, dflt_args) == 0);
    CHECK(rpc_client_open(&c, ep) == 0);
    for (size_t v = 0; v < N_VAR; v++) check_info(&c, &variants[v]);
    variant_t plain = {"plainopts", "", "", 0, 0, 0, 0, 0, 0, {0}, NULL, 0};
    r = create(&c, &plain);
    CHECK(r && r->status && r->status->code == 0);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(ingest(&c, "plainopts", toks, N_TOK) == 0);
    variant_t as_dca = variants[1];
    as_dca.name = "plainopts";
    check_info(&c, &as_dca);
    double dd = score_diff(&c, &as_dca, want[1], N_TOK);
    CHECK_MSG(dd <= 1e-5, "defaulted session vs dca in-process: %g", dd);
    printf("daemon defaults --positional dca --window 256: new session scores as dca (%.2g)\n",
           dd);

    rpc_client_close(&c);
    rpc_daemon_stop(&dm, SIGTERM);
    rpc_rmtree(dir);
    model_destroy(&m);
    return check_summary();
}
