/* test_daemon_badinput.c — bad input gets a clear error, changes nothing, and the daemon
 * keeps serving; start-up errors exit non-zero and write nothing. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "tests/check.h"
#include "tests/rpc_test_util.h"

enum {
    OK = 0,
    INVALID = -1,
    NOT_FOUND = -4,
    EXISTS = -5,
    FORMAT = -6,
    LIMIT = -7,
    UNSUPPORTED = -8,
    SEQUENCE = -10
};

static int code_of(Recall__Response *r)
{
    return r && r->status ? r->status->code : -999;
}

static const char *msg_of(Recall__Response *r)
{
    return r && r->status && r->status->message ? r->status->message : "";
}

/* Checks a response's code and that its message contains `needle`; frees it. */
#define EXPECT(resp, want, needle)                                                                 \
    do {                                                                                           \
        Recall__Response *r_ = (resp);                                                             \
        CHECK_MSG(code_of(r_) == (want), "got %d (%s), want %d", code_of(r_), msg_of(r_),          \
                  (int)(want));                                                                    \
        CHECK_MSG(strstr(msg_of(r_), (needle)) != NULL, "message '%s' lacks '%s'", msg_of(r_),     \
                  (needle));                                                                       \
        if (r_) recall__response__free_unpacked(r_, NULL);                                         \
    } while (0)

static Recall__Response *create_opts(rpc_client_t *c, const char *name, const char *positional,
                                     const char *memory, uint32_t window)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.positional = (char *)positional;
    o.memory = (char *)memory;
    o.window = window;
    return rpc_create_opts(c, name, &o, 0);
}

static Recall__Response *ingest_tokens(rpc_client_t *c, const char *name, uint64_t seq,
                                       int32_t *toks, size_t n, const char *text)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
    in.session = (char *)name;
    in.seq = seq;
    in.tokens = toks;
    in.n_tokens = n;
    if (text) in.text = (char *)text;
    q.body_case = RECALL__REQUEST__BODY_INGEST;
    q.ingest = &in;
    return rpc_call(c, &q, 30000);
}

/* Sends raw frames; returns the one response (any id). */
static Recall__Response *raw(rpc_client_t *c, const void *const *frames, const size_t *lens, int n)
{
    if (rpc_send_frames(c, frames, lens, n)) return NULL;
    return rpc_recv(c, 10000);
}

typedef struct snap {
    int found;
    uint64_t tokens, windows, last_seq, mem_tokens;
} snap_t;

static snap_t info(rpc_client_t *c, const char *name)
{
    snap_t s = {0};
    Recall__Response *r = rpc_info(c, name);
    if (code_of(r) == 0 && r->session_info && r->session_info->info) {
        s.found = 1;
        s.tokens = r->session_info->info->tokens;
        s.windows = r->session_info->info->windows;
        s.last_seq = r->session_info->info->last_seq;
        s.mem_tokens = r->session_info->info->memory_tokens;
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return s;
}

static void startup_errors(const char *model, const char *tmp, const char *running_data)
{
    char data[700], log[700], badmodel[700];
    snprintf(data, sizeof data, "%s/never-created", tmp);
    snprintf(badmodel, sizeof badmodel, "%s/no-such-model", tmp);
    struct stat st;

    /* --help teaches and exits 0. */
    snprintf(log, sizeof log, "%s/help.log", tmp);
    const char *help[] = {"--help", NULL};
    CHECK_RC(rpc_run_recalld(help, log, 10), 0);
    CHECK(rpc_file_contains(log, "--max-chunk-bytes"));
    CHECK(rpc_file_contains(log, "example"));
    CHECK(rpc_file_contains(log, "session name"));

    /* No --model and RECALL_MODEL naming nothing: the loader's message, nothing written
     * (with neither, recalld uses the embedded default model: tests/test_default_model.sh). */
    snprintf(log, sizeof log, "%s/nomodel.log", tmp);
    const char *nomodel[] = {"--data", data, "--listen", "ipc:///nonexistent-dir/x", NULL};
    setenv("RECALL_MODEL", badmodel, 1);
    CHECK(rpc_run_recalld(nomodel, log, 30) > 0);
    unsetenv("RECALL_MODEL");
    CHECK(rpc_file_contains(log, "cannot load the model"));
    CHECK(stat(data, &st) != 0);

    /* A bad flag value. */
    snprintf(log, sizeof log, "%s/badflag.log", tmp);
    const char *badflag[] = {"--model", model, "--data", data, "--max-chunk-bytes", "lots", NULL};
    CHECK(rpc_run_recalld(badflag, log, 10) > 0);
    CHECK(rpc_file_contains(log, "--max-chunk-bytes"));

    /* A model directory that is not there: the loader's message, nothing written. */
    snprintf(log, sizeof log, "%s/badmodel.log", tmp);
    const char *bm[] = {"--model", badmodel, "--data", data, "--listen", "ipc:///nonexistent-dir/x",
                        NULL};
    CHECK(rpc_run_recalld(bm, log, 30) > 0);
    CHECK(rpc_file_contains(log, "cannot load the model"));
    CHECK(stat(data, &st) != 0);

    /* Address in use: bind a port ourselves first. */
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[256];
    size_t eplen = sizeof ep;
    CHECK(zmq_bind(s, "tcp://127.0.0.1:*") == 0);
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &eplen);
    snprintf(log, sizeof log, "%s/inuse.log", tmp);
    const char *inuse[] = {"--model", model, "--data", data, "--listen", ep, NULL};
    CHECK(rpc_run_recalld(inuse, log, 30) > 0);
    CHECK(rpc_file_contains(log, "already in use"));
    CHECK(stat(data, &st) != 0);
    zmq_close(s);
    zmq_ctx_term(ctx);

    /* The data directory of a running daemon. */
    char ep2[700];
    snprintf(ep2, sizeof ep2, "ipc://%s/second.sock", tmp);
    snprintf(log, sizeof log, "%s/second.log", tmp);
    const char *second[] = {"--model", model, "--data", running_data, "--listen", ep2, NULL};
    CHECK(rpc_run_recalld(second, log, 30) > 0);
    CHECK(rpc_file_contains(log, "in use by another recalld"));

    /* --data naming a file. */
    {
        char file[700];
        snprintf(file, sizeof file, "%s/plainfile", tmp);
        FILE *f = fopen(file, "w");
        if (f) fclose(f);
        snprintf(log, sizeof log, "%s/file.log", tmp);
        const char *fd[] = {"--model", model, "--data", file, NULL};
        CHECK(rpc_run_recalld(fd, log, 30) > 0);
        CHECK(rpc_file_contains(log, "not a directory"));
    }

    /* A data directory that cannot be written (root may write anywhere: skip then). */
    if (geteuid() != 0) {
        char ro[700];
        snprintf(ro, sizeof ro, "%s/readonly", tmp);
        mkdir(ro, 0500);
        snprintf(log, sizeof log, "%s/ro.log", tmp);
        const char *rod[] = {"--model", model, "--data", ro, NULL};
        CHECK(rpc_run_recalld(rod, log, 30) > 0);
        CHECK(rpc_file_contains(log, "not writable"));
        chmod(ro, 0700);
    }
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-fot", td ? td : "tests/data");
    struct stat st;
    if (stat(model, &st) != 0) {
        printf("skipped: no tiny model at %s (run the make_tiny_models fixture)\n", model);
        return CHECK_SKIP;
    }
    char tmp[512], data[700], ep[700], log[700];
    CHECK(rpc_tempdir(tmp, sizeof tmp) == 0);
    snprintf(data, sizeof data, "%s/data", tmp);
    snprintf(ep, sizeof ep, "ipc://%s/recalld.sock", tmp);
    snprintf(log, sizeof log, "%s/recalld.log", tmp);
    rpc_daemon_t dm;
    const char *extra[] = {
        "--max-chunk-bytes", "4096", "--max-frame-bytes", "65536", "--max-sessions", "4", NULL};
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, extra) == 0);
    if (dm.pid <= 0) return check_summary();
    rpc_client_t c;
    CHECK(rpc_client_open(&c, ep) == 0);

    /* The state that must survive everything below. */
    EXPECT(rpc_create(&c, "s", 0, 0), OK, "ok");
    EXPECT(rpc_ingest_text(&c, "s", 1, "The recipe asked for 253 grams of flour."), OK, "ok");
    snap_t s0 = info(&c, "s");
    CHECK(s0.found && s0.tokens > 0 && s0.last_seq == 1);

    /* Unknown session, every way it can be named. */
    EXPECT(rpc_ingest_text(&c, "nope", 1, "text"), NOT_FOUND, "nope");
    EXPECT(rpc_info(&c, "nope"), NOT_FOUND, "nope");
    {
        rpc_answer_t *a = calloc(1, sizeof *a);
        CHECK(rpc_ask(&c, "nope", "hello", 4, 0, a) == 0);
        CHECK(a->status == NOT_FOUND);
        free(a);
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__DropSessionRequest ds = RECALL__DROP_SESSION_REQUEST__INIT;
        ds.session = (char *)"nope";
        q.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
        q.drop_session = &ds;
        EXPECT(rpc_call(&c, &q, 10000), NOT_FOUND, "nope");
        Recall__Request q2 = RECALL__REQUEST__INIT;
        Recall__ScoreRequest sc = RECALL__SCORE_REQUEST__INIT;
        sc.session = (char *)"nope";
        q2.body_case = RECALL__REQUEST__BODY_SCORE;
        q2.score = &sc;
        EXPECT(rpc_call(&c, &q2, 10000), NOT_FOUND, "nope");
    }

    /* Duplicate create; if_not_exists reuses. */
    EXPECT(rpc_create(&c, "s", 0, 0), EXISTS, "already exists");
    {
        Recall__Response *r = rpc_create(&c, "s", 0, 1);
        CHECK_RC(code_of(r), OK);
        CHECK(r && r->create_session && !r->create_session->created && r->create_session->info &&
              r->create_session->info->tokens == s0.tokens);
        if (r) recall__response__free_unpacked(r, NULL);
    }
    /* Reuse asking for another memory dtype: refused by the daemon itself, naming both. */
    {
        Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
        o.mem_dtype = (char *)"int8";
        EXPECT(rpc_create_opts(&c, "s", &o, 1), INVALID, "cannot change to int8");
    }

    /* Chunk over --max-chunk-bytes: the message gives the limit. */
    {
        char *big = malloc(5001);
        memset(big, 'a', 5000);
        big[5000] = 0;
        EXPECT(rpc_ingest_text(&c, "s", 2, big), LIMIT, "4096");
        free(big);
    }
    /* Invalid UTF-8 (a lone continuation byte, an overlong, a surrogate). */
    EXPECT(rpc_ingest_text(&c, "s", 2, "abc \x80 def"), INVALID, "UTF-8");
    EXPECT(rpc_ingest_text(&c, "s", 2, "\xc0\xaf"), INVALID, "UTF-8");
    EXPECT(rpc_ingest_text(&c, "s", 2, "\xed\xa0\x80"), INVALID, "UTF-8");
    /* Token ids out of range. */
    {
        int32_t t1[] = {5, 6, 512};
        EXPECT(ingest_tokens(&c, "s", 2, t1, 3, NULL), INVALID, "out of range");
        int32_t t2[] = {-1};
        EXPECT(ingest_tokens(&c, "s", 2, t2, 1, NULL), INVALID, "out of range");
        int32_t t3[] = {5};
        EXPECT(ingest_tokens(&c, "s", 2, t3, 1, "and text"), INVALID, "not both");
        EXPECT(ingest_tokens(&c, "s", 0, t3, 1, NULL), INVALID, "seq");
        /* A gap in the sequence. */
        EXPECT(ingest_tokens(&c, "s", 5, t3, 1, NULL), SEQUENCE, "expected seq 2");
    }

    /* Unsafe session names. */
    {
        char longname[200];
        memset(longname, 'a', 129);
        longname[129] = 0;
        const char *bad[] = {"",  longname, "a/b",     "a\\b",   "a\x01z",
                             ".", "..",     ".hidden", "sp ace", "semi;colon"};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            EXPECT(rpc_create(&c, bad[i], 0, 0), INVALID, "session name");
            EXPECT(rpc_ingest_text(&c, bad[i], 1, "x"), INVALID, "session name");
        }
        /* The rule's edges are allowed: 128 bytes and the punctuation. */
        longname[128] = 0;
        EXPECT(rpc_create(&c, longname, 0, 0), OK, "ok");
        EXPECT(rpc_create(&c, "a.b_c-d:e@f+g", 0, 0), OK, "ok");
    }

    /* --max-sessions 4: "s" and the two above, one more fits, the next does not. */
    EXPECT(rpc_create(&c, "fourth", 0, 0), OK, "ok");
    EXPECT(rpc_create(&c, "fifth", 0, 0), LIMIT, "--max-sessions");

    /* Options this build does not have yet, and impossible ones: self-extend without its
     * group size and neighbour window cannot place any key. */
    EXPECT(create_opts(&c, "o1", "self-extend", "", 0), INVALID, "group size");
    EXPECT(create_opts(&c, "o2", "", "fuzzy", 0), INVALID, "fuzzy");
    EXPECT(create_opts(&c, "o3", "sideways", "", 0), INVALID, "sideways");
    EXPECT(create_opts(&c, "o4", "", "", 100000), INVALID, "window");

    /* Malformed frames, each answered with id 0. */
    {
        const char garbage[] = "\xff\xff\xff\xff\xff\xff\xff\xff";
        const void *f1[] = {garbage};
        size_t l1[] = {sizeof garbage - 1};
        Recall__Response *r = raw(&c, f1, l1, 1);
        CHECK(r && r->id == 0);
        EXPECT(r, FORMAT, "malformed");

        const void *f2[] = {""};
        size_t l2[] = {0};
        EXPECT(raw(&c, f2, l2, 1), FORMAT, "no body");

        /* A valid request cut short. */
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
        in.session = (char *)"s";
        in.seq = 2;
        in.text = (char *)"some text that makes the message long enough to cut";
        q.id = 77;
        q.body_case = RECALL__REQUEST__BODY_INGEST;
        q.ingest = &in;
        size_t n = recall__request__get_packed_size(&q);
        uint8_t *buf = malloc(n);
        recall__request__pack(&q, buf);
        const void *f3[] = {buf};
        size_t l3[] = {n / 2};
        EXPECT(raw(&c, f3, l3, 1), FORMAT, "malformed");

        /* Three frames. */
        const void *f4[] = {buf, buf, buf};
        size_t l4[] = {n, n, n};
        EXPECT(raw(&c, f4, l4, 3), FORMAT, "3 frames");
        free(buf);

        /* A frame over --max-frame-bytes. */
        size_t hn = 100000;
        uint8_t *huge = calloc(1, hn);
        const void *f5[] = {huge};
        size_t l5[] = {hn};
        EXPECT(raw(&c, f5, l5, 1), LIMIT, "65536");
        free(huge);
    }

    /* A REQ peer (which wraps its message in an envelope) is answered in kind. */
    {
        void *ctx = zmq_ctx_new();
        void *req = zmq_socket(ctx, ZMQ_REQ);
        int linger = 0, tmo = 10000;
        zmq_setsockopt(req, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(req, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        CHECK(zmq_connect(req, ep) == 0);
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__HealthRequest hq = RECALL__HEALTH_REQUEST__INIT;
        q.id = 4242;
        q.body_case = RECALL__REQUEST__BODY_HEALTH;
        q.health = &hq;
        uint8_t buf[64];
        size_t n = recall__request__pack(&q, buf);
        CHECK(zmq_send(req, buf, n, 0) == (int)n);
        uint8_t in[4096];
        int got = zmq_recv(req, in, sizeof in, 0);
        CHECK(got > 0);
        Recall__Response *r = got > 0 ? recall__response__unpack(NULL, (size_t)got, in) : NULL;
        CHECK(r && r->id == 4242 && code_of(r) == OK && r->health && r->health->ok);
        if (r) recall__response__free_unpacked(r, NULL);
        zmq_close(req);
        zmq_ctx_term(ctx);
    }

    /* After all of that: alive, and nothing changed. */
    Recall__Response *h = rpc_health(&c);
    CHECK(h && code_of(h) == OK && h->health && h->health->ok);
    if (h) recall__response__free_unpacked(h, NULL);
    snap_t s1 = info(&c, "s");
    CHECK(s1.found && s1.tokens == s0.tokens && s1.windows == s0.windows &&
          s1.last_seq == s0.last_seq && s1.mem_tokens == s0.mem_tokens);
    /* The next chunk in sequence still goes in. */
    EXPECT(rpc_ingest_text(&c, "s", 2, " More text."), OK, "ok");
    CHECK(info(&c, "s").last_seq == 2);

    startup_errors(model, tmp, data);

    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);
    if (check_failed_) rpc_print_file(log);
    rpc_rmtree(tmp);
    return check_summary();
}
