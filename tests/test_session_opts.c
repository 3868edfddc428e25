/* The kNN index options (nlist, nprobe) and the GPU memory budget on the wire (issue 6):
 *   - recalld refuses bad --nlist / --nprobe / --gpu-memory-budget at start-up, saying why;
 *   - its defaults apply to new sessions (nlist / nprobe to knn sessions only); its
 *     --gpu-memory-budget bounds the daemon, so it is no session's default;
 *   - per-session values round-trip through CreateSession and Info, persist, and survive a
 *     restart with other defaults; a record written before the fields existed reads as 0;
 *   - invalid values are refused with a sentence and create nothing; a budget that
 *     model_stream_opts_resolve refuses reaches the client with its message verbatim;
 *   - a knn session with explicit nlist / nprobe ingests, answers, and scores exactly as an
 *     in-process stream with the same options, also after the restart.
 * On tiny-fot (window 64) on the CPU backend, which ignores the budget. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memory/db.h"
#include "model/model.h"
#include "model/stream.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

#define MIB (1ull << 20)

static char g_dir[512], g_data[600], g_ep[600], g_model[1024];

static const char *reply_msg(const Recall__Response *r)
{
    return r && r->status && r->status->message ? r->status->message : "(no answer)";
}
static int reply_code(const Recall__Response *r)
{
    return r && r->status ? r->status->code : 1;
}

static Recall__Response *create(rpc_client_t *c, const char *name, const char *memory, uint32_t k,
                                uint32_t nlist, uint32_t nprobe, uint64_t budget)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.memory = (char *)memory;
    o.k = k;
    o.knn_nlist = nlist;
    o.knn_nprobe = nprobe;
    o.gpu_memory_budget = budget;
    return rpc_create_opts(c, name, &o, 0);
}

/* Info's options of `name` are memory/nlist/nprobe/budget. */
static void check_info(rpc_client_t *c, const char *name, const char *memory, uint32_t nlist,
                       uint32_t nprobe, uint64_t budget, const char *when)
{
    Recall__Response *r = rpc_info(c, name);
    const Recall__SessionOptions *o =
        r && r->session_info && r->session_info->info ? r->session_info->info->options : NULL;
    CHECK_MSG(o && o->memory && !strcmp(o->memory, memory) && o->knn_nlist == nlist &&
                  o->knn_nprobe == nprobe && o->gpu_memory_budget == budget,
              "%s (%s): info says memory %s nlist %u nprobe %u budget %llu; want %s %u %u %llu",
              name, when, o && o->memory ? o->memory : "?", o ? o->knn_nlist : 0,
              o ? o->knn_nprobe : 0, o ? (unsigned long long)o->gpu_memory_budget : 0ull, memory,
              nlist, nprobe, (unsigned long long)budget);
    if (r) recall__response__free_unpacked(r, NULL);
}

static int exists(rpc_client_t *c, const char *name)
{
    Recall__Response *r = rpc_info(c, name);
    int code = reply_code(r);
    if (r) recall__response__free_unpacked(r, NULL);
    return code == 0;
}

/* An invalid CreateSession: refused as INVALID with a message containing want; nothing made. */
static void check_refused(rpc_client_t *c, const char *name, const char *memory, uint32_t nlist,
                          uint32_t nprobe, uint64_t budget, const char *want)
{
    Recall__Response *r = create(c, name, memory, 0, nlist, nprobe, budget);
    CHECK_MSG(reply_code(r) == RC_ERR_INVALID && strstr(reply_msg(r), want),
              "%s: want INVALID \"...%s...\"; got %d \"%s\"", name, want, reply_code(r),
              reply_msg(r));
    printf("refused %-10s %s\n", name, reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK_MSG(!exists(c, name), "%s: a refused session exists", name);
}

/* recalld with args (after --model/--data/--listen) exits with want and says needle. */
static void check_startup(const char *tag, const char *const *extra, int want, const char *needle)
{
    char log[700];
    snprintf(log, sizeof log, "%s/start-%s.log", g_dir, tag);
    const char *args[32] = {"--model", g_model, "--data", g_data, "--listen", g_ep};
    int k = 6;
    for (int i = 0; extra[i]; i++) args[k++] = extra[i];
    args[k] = NULL;
    int rc = rpc_run_recalld(args, log, 30);
    CHECK_MSG(rc == want && rpc_file_contains(log, needle),
              "start-up %s: exit %d (want %d), message \"%s\" expected", tag, rc, want, needle);
    if (rc != want || !rpc_file_contains(log, needle)) rpc_print_file(log);
}

/* Max |daemon logprob − want| over a session's tokens, or INFINITY. */
static double score_diff(rpc_client_t *c, const char *name, const float *want, size_t n)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sc = RECALL__SCORE_REQUEST__INIT;
    sc.session = (char *)name;
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
    } else {
        fprintf(stderr, "score %s: %s\n", name, reply_msg(r));
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return worst;
}

static rc_t score_local(model_t *m, const model_stream_opts_t *o, const int32_t *tok,
                        size_t n, float *lp)
{
    model_stream_t *s = NULL;
    rc_t rc = model_stream_create(m, o, &s);
    if (!rc) rc = model_stream_feed(s, tok, n, lp, NULL);
    model_stream_destroy(&s);
    return rc;
}

/* Rewrites the stored record of `name` as recalld wrote it before knn_nlist, knn_nprobe and
 * gpu_memory_budget existed: proto3 leaves zero fields out, so zeroing them is exactly an
 * old record. The daemon must be stopped. */
static int make_old_record(const char *name)
{
    memory_db_t *db = NULL;
    char err[256];
    memory_db_record_t *recs = NULL;
    size_t n = 0;
    int ok = 0;
    if (memory_db_open(g_data, NULL, &db, err, sizeof err) || memory_db_list(db, &recs, &n))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(recs[i].name, name)) continue;
        Recall__SessionRecord *r =
            recall__session_record__unpack(NULL, recs[i].len, (const uint8_t *)recs[i].data);
        if (!r || !r->info || !r->info->options) {
            if (r) recall__session_record__free_unpacked(r, NULL);
            goto out;
        }
        r->info->options->knn_nlist = r->info->options->knn_nprobe = 0;
        r->info->options->gpu_memory_budget = 0;
        size_t len = recall__session_record__get_packed_size(r);
        uint8_t *buf = malloc(len);
        if (buf) {
            recall__session_record__pack(r, buf);
            memory_db_commit_t cm = {.session = name, .record = buf, .record_len = len};
            ok = memory_db_commit(db, &cm, err, sizeof err) == RC_OK;
        }
        free(buf);
        recall__session_record__free_unpacked(r, NULL);
    }
out:
    if (recs) memory_db_records_free(recs, n);
    memory_db_close(&db);
    return ok;
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char err[512];
    snprintf(g_model, sizeof g_model, "%s/tiny-fot", td ? td : "tests/data");
    model_t *m = NULL;
    if (model_load(g_model, 0, &m, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const model_config_t *mc = model_get_config(m);
    CHECK(rpc_tempdir(g_dir, sizeof g_dir) == 0);
    snprintf(g_data, sizeof g_data, "%s/data", g_dir);
    snprintf(g_ep, sizeof g_ep, "ipc://%s/sock", g_dir);
    char log[700];
    snprintf(log, sizeof log, "%s/recalld.log", g_dir);

    /* ---- start-up checks: nothing listens, nothing is written ---- */
    check_startup("nlist0", (const char *[]){"--nlist", "0", NULL}, 2,
                  "--nlist must be a whole number of lists from 1 to 1048576, not '0'");
    check_startup("nprobe-neg", (const char *[]){"--nprobe", "-4", NULL}, 2,
                  "--nprobe must be a whole number of lists");
    check_startup("nlist-huge", (const char *[]){"--nlist", "99999999", NULL}, 2, "not '99999999'");
    check_startup("budget-unit", (const char *[]){"--gpu-memory-budget", "8Q", NULL}, 2,
                  "--gpu-memory-budget must be a size such as 512M, 8G, 1.5G");
    check_startup("budget-neg", (const char *[]){"--gpu-memory-budget", "-1G", NULL}, 2,
                  "not '-1G'");
    check_startup("budget-huge", (const char *[]){"--gpu-memory-budget", "4096T", NULL}, 2,
                  "at most 1P");
    /* Checked as a knn session would get them, even though the default mode is exact. */
    check_startup("probe-gt-list", (const char *[]){"--nlist", "8", "--nprobe", "16", NULL}, 1,
                  "nprobe 16 is more than nlist 8");
    /* A budget model_stream_opts_resolve refuses (below one window) stops the start. */
    model_stream_opts_t tiny = {.gpu_memory_budget = 1};
    char tiny_err[512] = "";
    rc_t tiny_rc = model_stream_opts_resolve(m, &tiny, tiny_err, sizeof tiny_err);
    if (tiny_rc)
        check_startup("budget-1", (const char *[]){"--gpu-memory-budget", "1", NULL}, 1,
                      tiny_err);
    CHECK_MSG(access(g_data, F_OK) != 0, "a refused start created the data directory");

    /* ---- daemon defaults ---- */
    rpc_daemon_t dm;
    rpc_client_t c;
    const char *dflt[] = {"--nlist", "16", "--nprobe", "4", "--gpu-memory-budget", "64M", NULL};
    if (rpc_daemon_start(&dm, g_model, g_data, g_ep, log, dflt) || rpc_client_open(&c, g_ep)) {
        rpc_print_file(log);
        return 1;
    }
    CHECK(rpc_file_contains(log, "--gpu-memory-budget has no effect: the cpu backend"));
    Recall__Response *r;
    r = create(&c, "dk", "knn", 0, 0, 0, 0);
    CHECK_MSG(reply_code(r) == 0, "create dk: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    /* recalld's --gpu-memory-budget bounds all sessions together: it is not a session
     * option, so a session asking for none has no budget of its own (0). */
    check_info(&c, "dk", "knn", 16, 4, 0, "daemon defaults");
    /* An exact session gets no kNN tuning (and is not refused for the daemon's). */
    r = create(&c, "dx", "", 0, 0, 0, 0);
    CHECK_MSG(reply_code(r) == 0, "create dx: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    check_info(&c, "dx", "exact", 0, 0, 0, "daemon defaults");

    /* ---- explicit values win; "none" is no limit ---- */
    r = create(&c, "kx", "knn", 8, 4, 2, 3 * MIB / 2);
    CHECK_MSG(reply_code(r) == 0, "create kx: %s", reply_msg(r));
    const Recall__SessionOptions *co = r && r->create_session && r->create_session->info
                                           ? r->create_session->info->options
                                           : NULL;
    CHECK_MSG(co && co->knn_nlist == 4 && co->knn_nprobe == 2 && co->k == 8 &&
                  co->gpu_memory_budget == 3 * MIB / 2,
              "CreateSession's answer echoes the options");
    if (r) recall__response__free_unpacked(r, NULL);
    check_info(&c, "kx", "knn", 4, 2, 3 * MIB / 2, "explicit");
    r = create(&c, "nolimit", "exact", 0, 0, 0, UINT64_MAX);
    CHECK_MSG(reply_code(r) == 0, "create nolimit: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    check_info(&c, "nolimit", "exact", 0, 0, 0, "budget none");
    /* if_not_exists keeps a session's options (as for every other option). */
    Recall__SessionOptions other = RECALL__SESSION_OPTIONS__INIT;
    other.memory = (char *)"knn";
    other.knn_nlist = 32;
    other.gpu_memory_budget = 8 * MIB;
    r = rpc_create_opts(&c, "kx", &other, 1);
    CHECK_MSG(reply_code(r) == 0 && r->create_session && !r->create_session->created,
              "if_not_exists on kx: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    check_info(&c, "kx", "knn", 4, 2, 3 * MIB / 2, "after if_not_exists with others");
    /* ... even when they would not fit a new session (no memory given: the daemon's default,
     * exact): they are not the existing session's, so they are not checked. */
    other.memory = (char *)"";
    r = rpc_create_opts(&c, "kx", &other, 1);
    CHECK_MSG(reply_code(r) == 0 && r->create_session && !r->create_session->created,
              "if_not_exists on kx with --nlist only: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    /* Without if_not_exists an existing name is refused, options or not. */
    r = rpc_create_opts(&c, "kx", &other, 0);
    CHECK_MSG(reply_code(r) != 0, "kx created twice");
    if (r) recall__response__free_unpacked(r, NULL);

    /* ---- invalid values ---- */
    check_refused(&c, "bad1", "exact", 64, 0, 0, "nlist and nprobe tune the kNN index");
    check_refused(&c, "bad2", "", 0, 8, 0, "--memory knn");
    check_refused(&c, "bad3", "knn", 4, 5, 0, "nprobe 5 is more than nlist 4");
    check_refused(&c, "bad4", "knn", 1u << 21, 0, 0, "nlist 2097152 is absurdly large (at most 1048576 lists)");
    check_refused(&c, "bad5", "knn", 0, 0, 1ull << 60, "absurdly large");
    /* Too small for one window: whatever model_stream_opts_resolve says, verbatim. */
    r = create(&c, "bad6", "knn", 0, 0, 0, 1);
    if (tiny_rc) {
        CHECK_MSG(reply_code(r) == (int)tiny_rc && strstr(reply_msg(r), tiny_err),
                  "budget 1: want %d \"%s\"; got %d \"%s\"", (int)tiny_rc, tiny_err,
                  reply_code(r), reply_msg(r));
        printf("refused %-10s %s\n", "bad6", reply_msg(r));
        CHECK(!exists(&c, "bad6"));
    } else {
        CHECK_MSG(reply_code(r) == 0, "budget 1 resolves in-process but the daemon says %s",
                  reply_msg(r));
        printf("note: model_stream_opts_resolve accepts a 1-byte budget (not checked yet)\n");
    }
    if (r) recall__response__free_unpacked(r, NULL);
    /* Score of text takes the same checks. */
    {
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__ScoreRequest sc = RECALL__SCORE_REQUEST__INIT;
        Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
        so.memory = (char *)"exact";
        so.knn_nprobe = 3;
        sc.text = (char *)"one two three four";
        sc.options = &so;
        q.body_case = RECALL__REQUEST__BODY_SCORE;
        q.score = &sc;
        r = rpc_call(&c, &q, 30000);
        CHECK_MSG(reply_code(r) == RC_ERR_INVALID && strstr(reply_msg(r), "score options: nlist"),
                  "score with nprobe on exact: %d %s", reply_code(r), reply_msg(r));
        if (r) recall__response__free_unpacked(r, NULL);
    }

    /* ---- a knn session with explicit nlist / nprobe ingests, answers and scores as an
     * in-process stream with the same options. (Whether nlist / nprobe change results past
     * the IVF threshold of 32768 rows is test_knn's; a daemon run that long is not a CI
     * test on two cores.) ---- */
    const size_t W = (size_t)mc->max_pos;
    const size_t n = 12 * W + 9;
    int32_t *toks = malloc(n * sizeof *toks);
    float *want = malloc(n * sizeof *want);
    unsigned seed = 11;
    toks[0] = 1;
    for (size_t i = 1; i < n; i++)
        toks[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(mc->vocab_size - 3));
    r = rpc_ingest_tokens(&c, "kx", 1, toks, n);
    CHECK_MSG(reply_code(r) == 0 && r->ingest && r->ingest->windows == 12, "ingest kx: %s",
              reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    static rpc_answer_t ans;
    CHECK(rpc_ask(&c, "kx", "What was it about?", 8, 0, &ans) == 0);
    CHECK_MSG(ans.status == 0 && ans.n_tokens > 0, "ask kx: %s", ans.message);
    model_stream_opts_t kx = {.memory_knn = 1, .knn_k = 8, .knn_nlist = 4, .knn_nprobe = 2};
    CHECK_RC(score_local(m, &kx, toks, n, want), RC_OK);
    double d = score_diff(&c, "kx", want, n);
    CHECK_MSG(d <= 1e-5, "kx: daemon vs in-process (nlist 4, nprobe 2) max |dlogprob| %g", d);
    printf("kx: %zu tokens, answered %zu tokens; daemon vs in-process max |dlogprob| %.2g\n", n,
           ans.n_tokens, d);

    /* ---- restart with other defaults: stored sessions keep theirs ---- */
    rpc_client_close(&c);
    CHECK(rpc_daemon_stop(&dm, SIGTERM) == 0);
    CHECK_MSG(make_old_record("dk"), "could not rewrite dk's record as an old one");
    const char *dflt2[] = {"--nlist", "32", "--nprobe", "8", "--gpu-memory-budget", "1.5G", NULL};
    CHECK(rpc_daemon_start(&dm, g_model, g_data, g_ep, log, dflt2) == 0 &&
          rpc_client_open(&c, g_ep) == 0);
    check_info(&c, "kx", "knn", 4, 2, 3 * MIB / 2, "after restart");
    check_info(&c, "dx", "exact", 0, 0, 0, "after restart");
    check_info(&c, "nolimit", "exact", 0, 0, 0, "after restart");
    check_info(&c, "dk", "knn", 0, 0, 0, "old record: fields read as 0");
    d = score_diff(&c, "kx", want, n);
    CHECK_MSG(d <= 1e-5, "kx after restart: max |dlogprob| %g", d);
    r = create(&c, "dk2", "knn", 0, 0, 0, 0);
    CHECK_MSG(reply_code(r) == 0, "create dk2: %s", reply_msg(r));
    if (r) recall__response__free_unpacked(r, NULL);
    check_info(&c, "dk2", "knn", 32, 8, 0, "new defaults (the GPU budget is the daemon's)");

    rpc_client_close(&c);
    CHECK(rpc_daemon_stop(&dm, SIGTERM) == 0);
    free(toks), free(want);
    if (!check_failed_) rpc_rmtree(g_dir);
    model_destroy(&m);
    return check_summary();
}
