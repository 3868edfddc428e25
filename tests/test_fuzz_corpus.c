/* test_fuzz_corpus.c — the fuzz corpus as a regression test.
 *
 * Every file in tests/fuzz/corpus (the generated seeds and every input a fuzzer ever
 * found) goes through the same path as tests/fuzz/fuzz_request.c — protobuf decode with a
 * re-pack round trip, the validation helpers, the daemon's handle_message in process — and
 * then, as a frame, to a live recalld. File names carry the verdict (see make_corpus.c):
 * ok-* must succeed, bad-* must get an error status, anything else only needs an answer.
 * Afterwards the daemon still answers Health and stops cleanly. No libFuzzer needed. */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "tests/check.h"
#include "tests/fuzz/request_harness.h"
#include "tests/rpc_test_util.h"

typedef struct entry {
    char name[256];
    uint8_t *data;
    size_t len;
} entry_t;

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry_t *)a)->name, ((const entry_t *)b)->name);
}

static entry_t *load_corpus(const char *dir, size_t *n)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    entry_t *es = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof es->name) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (*n == cap) {
            cap = cap ? 2 * cap : 256;
            es = realloc(es, cap * sizeof *es);
        }
        entry_t *x = &es[(*n)++];
        snprintf(x->name, sizeof x->name, "%s", e->d_name);
        x->len = len > 0 ? (size_t)len : 0;
        x->data = malloc(x->len + 1);
        if (x->len && fread(x->data, 1, x->len, f) != x->len) x->len = 0;
        fclose(f);
    }
    closedir(d);
    qsort(es, *n, sizeof *es, cmp_entry);
    return es;
}

static int is_ok(const entry_t *e)
{
    return strncmp(e->name, "ok-", 3) == 0;
}

static int is_bad(const entry_t *e)
{
    return strncmp(e->name, "bad-", 4) == 0;
}

static void in_process(const char *model, entry_t *es, size_t n)
{
    rh_t *h = NULL;
    char err[1024];
    CHECK_MSG(rh_open(&h, model, err, sizeof err) == 0, "%s", err);
    if (!h) return;
    size_t queued = 0, answered = 0;
    for (size_t i = 0; i < n; i++) {
        const entry_t *e = &es[i];
        CHECK_MSG(rh_check_roundtrip(e->data, e->len) == 0, "%s: re-pack round trip", e->name);
        if (e->len <= 4096)
            CHECK_MSG(rh_check_helpers(e->data, e->len) == 0, "%s: helpers", e->name);
        rh_result_t r;
        int rc = rh_run(h, e->data, e->len, &r);
        CHECK_MSG(rc == 0, "%s: %s", e->name, r.message);
        queued += r.queued;
        answered += r.replied;
        if (is_ok(e))
            CHECK_MSG(r.queued || (r.replied && r.code == 0), "%s: code %d (%s), want success",
                      e->name, r.code, r.message);
        if (is_bad(e))
            CHECK_MSG(!r.queued && r.replied && r.code < 0, "%s: %s, want an error status",
                      e->name, r.queued ? "queued" : "code 0");
    }
    printf("in process: %zu frames, %zu answered, %zu queued for the worker\n", n, answered,
           queued);
    rh_close(&h);
}

/* Sends one raw frame and returns the final reply's status code (INT32_MIN: none). */
static int32_t live_one(rpc_client_t *c, const entry_t *e, char *msg, size_t msglen)
{
    const void *f[] = {e->data};
    size_t l[] = {e->len};
    msg[0] = 0;
    if (rpc_send_frames(c, f, l, 1)) return INT32_MIN;
    for (;;) {
        Recall__Response *r = rpc_recv(c, 60000);
        if (!r) return INT32_MIN;
        int more = r->more;
        int32_t code = r->status ? r->status->code : INT32_MIN;
        if (r->status && r->status->message) snprintf(msg, msglen, "%s", r->status->message);
        recall__response__free_unpacked(r, NULL);
        if (!more) return code;
    }
}

static void live(const char *model, entry_t *es, size_t n)
{
    char tmp[512], data[700], ep[700], log[700];
    CHECK(rpc_tempdir(tmp, sizeof tmp) == 0);
    snprintf(data, sizeof data, "%s/data", tmp);
    snprintf(ep, sizeof ep, "ipc://%s/recalld.sock", tmp);
    snprintf(log, sizeof log, "%s/recalld.log", tmp);
    const char *extra[] = {"--max-chunk-bytes", "4096", "--max-frame-bytes", "65536",
                           "--max-sessions", "16", NULL};
    rpc_daemon_t dm;
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, extra) == 0);
    if (dm.pid <= 0) return;
    rpc_client_t c;
    CHECK(rpc_client_open(&c, ep) == 0);
    Recall__Response *r = rpc_create(&c, "s", 0, 0);
    CHECK(r && r->status && r->status->code == 0);
    if (r) recall__response__free_unpacked(r, NULL);
    r = rpc_ingest_text(&c, "s", 1, "The recipe asked for 253 grams of flour.");
    CHECK(r && r->status && r->status->code == 0);
    if (r) recall__response__free_unpacked(r, NULL);
    {
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
        Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
        o.memory = (char *)"knn";
        cs.session = (char *)"k";
        cs.options = &o;
        q.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
        q.create_session = &cs;
        r = rpc_call(&c, &q, 30000);
        CHECK(r && r->status && r->status->code == 0);
        if (r) recall__response__free_unpacked(r, NULL);
    }
    size_t answered = 0;
    for (size_t i = 0; i < n; i++) {
        const entry_t *e = &es[i];
        char msg[512];
        int32_t code = live_one(&c, e, msg, sizeof msg);
        CHECK_MSG(code != INT32_MIN, "%s: no reply from recalld", e->name);
        if (code == INT32_MIN) break; /* the rest would only time out */
        answered++;
        if (is_ok(e)) CHECK_MSG(code == 0, "%s: code %d (%s), want 0", e->name, code, msg);
        if (is_bad(e)) CHECK_MSG(code < 0, "%s: code %d, want an error", e->name, code);
    }
    printf("live recalld: %zu of %zu frames answered\n", answered, n);
    Recall__Response *h = rpc_health(&c);
    CHECK(h && h->status && h->status->code == 0 && h->health && h->health->ok);
    if (h) recall__response__free_unpacked(h, NULL);
    /* "s" kept exactly its one acknowledged chunk: every replayed Ingest was a duplicate
     * or refused. */
    Recall__Response *in = rpc_info(&c, "s");
    CHECK(in && in->session_info && in->session_info->info &&
          in->session_info->info->last_seq == 1);
    if (in) recall__response__free_unpacked(in, NULL);
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);
    if (check_failed_) rpc_print_file(log);
    rpc_rmtree(tmp);
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    const char *src = getenv("RECALL_SOURCE_DIR");
    char model[1024], dir[1024];
    snprintf(model, sizeof model, "%s/tiny-fot", td ? td : "tests/data");
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus", src ? src : ".");
    struct stat st;
    if (stat(model, &st) != 0) {
        printf("skipped: no tiny model at %s (run the make_tiny_models fixture)\n", model);
        return CHECK_SKIP;
    }
    size_t n = 0;
    entry_t *es = load_corpus(dir, &n);
    CHECK_MSG(n >= 50, "only %zu corpus files in %s", n, dir);
    size_t ok = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        ok += is_ok(&es[i]);
        bad += is_bad(&es[i]);
    }
    CHECK(ok >= 10 && bad >= 10);
    printf("corpus: %zu files (%zu ok-, %zu bad-)\n", n, ok, bad);
    in_process(model, es, n);
    live(model, es, n);
    for (size_t i = 0; i < n; i++)
        free(es[i].data);
    free(es);
    return check_summary();
}
