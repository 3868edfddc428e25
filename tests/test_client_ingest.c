/* test_client_ingest.c — `recall ingest` against a fake daemon that follows the Ingest rules
 * (proto/recall.proto: seq in order, duplicates re-acknowledged, gaps refused) and refuses
 * some chunks as BUSY. Checks that the CLI pipelines up to the credit and never beyond,
 * continues the session's seq numbers, resends refused chunks in order, never resends an
 * acknowledged chunk, and that what the daemon committed is the file, byte for byte.
 * Also: a chunk taken by another writer (a duplicate on first send) and a fatal error stop
 * the CLI with exit 1 and report what was acknowledged.
 *
 * The same daemon then takes token ids from the library call itself (recall_ingest_tokens,
 * clients/ingest.h, what `recall passkey` uses): the same pipelining and resends, every id
 * committed once and in order, a chunk not taken whole is a PROTOCOL fault, and a refusal
 * is a DAEMON fault whose message (the daemon's own words) is the client error.
 *
 * Needs the recall binary: $RECALL_BIN, else $RECALL_BUILD_DIR/clients/recall. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "check.h"
#include "clients/ingest.h"
#include "proto/recall.pb-c.h"

#define CREDIT 4
#define START_SEQ 5 /* the session already holds chunks 1..5 */

enum scenario { SC_BUSY, SC_STOLEN, SC_FATAL, SC_SHORT };

typedef struct pending {
    zmq_msg_t ident;
    Recall__Request *req;
} pending;

static struct {
    void *ctx, *sock;
    char endpoint[256];
    enum scenario sc;
    volatile int stop;
    /* results */
    char *committed;
    size_t committed_len;
    int32_t ids[4096]; /* token ids committed, in order */
    size_t n_ids;
    uint64_t last_seq;
    int max_pending, received_after_ack, first_seq, busy_sent, gaps_sent, creates;
    int acked[4096];     /* acked[seq]: 1 once acknowledged */
    int busy_done[4096]; /* busy_done[seq]: 1 once refused as BUSY */
} S;

static void reply(zmq_msg_t *ident, Recall__Response *r)
{
    size_t n = recall__response__get_packed_size(r);
    uint8_t *buf = malloc(n ? n : 1);
    recall__response__pack(r, buf);
    zmq_msg_t id;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, ident);
    zmq_msg_send(&id, S.sock, ZMQ_SNDMORE);
    zmq_send(S.sock, buf, n, 0);
    free(buf);
}

static void reply_status(zmq_msg_t *ident, uint64_t id, int code, const char *msg)
{
    Recall__Response r = RECALL__RESPONSE__INIT;
    Recall__Status st = RECALL__STATUS__INIT;
    st.code = code;
    st.message = (char *)msg;
    r.id = id;
    r.status = &st;
    reply(ident, &r);
}

/* The daemon's Ingest rule, plus the injected refusals. */
static void answer_ingest(pending *p)
{
    Recall__IngestRequest *q = p->req->ingest;
    uint64_t seq = q->seq;
    if (seq < 4096 && S.acked[seq]) S.received_after_ack++;
    if (S.sc == SC_BUSY && (seq == 9 || seq == 15) && !S.busy_done[seq]) {
        S.busy_done[seq] = 1;
        S.busy_sent++;
        reply_status(&p->ident, p->req->id, -9, "the work queue is full; retry later");
        return;
    }
    if (S.sc == SC_FATAL && seq == 8) {
        reply_status(&p->ident, p->req->id, -7, "chunk too large for this daemon");
        return;
    }
    Recall__Response r = RECALL__RESPONSE__INIT;
    Recall__Status st = RECALL__STATUS__INIT;
    Recall__IngestResponse ir = RECALL__INGEST_RESPONSE__INIT;
    r.id = p->req->id;
    r.status = &st;
    r.body_case = RECALL__RESPONSE__BODY_INGEST;
    r.ingest = &ir;
    ir.seq = seq;
    ir.credit = CREDIT;
    int stolen = S.sc == SC_STOLEN && seq == 7;
    if (stolen) S.last_seq = 7; /* another writer took seq 7 just now */
    if (seq <= S.last_seq) {
        ir.duplicate = 1;
    } else if (seq != S.last_seq + 1) {
        S.gaps_sent++;
        reply_status(&p->ident, p->req->id, -10, "seq leaves a gap");
        return;
    } else if (q->n_tokens) {
        for (size_t i = 0; i < q->n_tokens && S.n_ids < 4096; i++)
            S.ids[S.n_ids++] = q->tokens[i];
        S.last_seq = seq;
        ir.tokens_added = q->n_tokens - (S.sc == SC_SHORT && seq == 8); /* one id lost */
        if (seq < 4096) S.acked[seq] = 1;
    } else {
        size_t n = strlen(q->text);
        S.committed = realloc(S.committed, S.committed_len + n + 1);
        memcpy(S.committed + S.committed_len, q->text, n + 1);
        S.committed_len += n;
        S.last_seq = seq;
        ir.tokens_added = n; /* one "token" per byte */
        if (seq < 4096) S.acked[seq] = 1;
    }
    ir.tokens = S.committed_len + S.n_ids;
    ir.windows = ir.tokens / 64;
    /* a Progress message first, as the daemon sends for chunks of many windows */
    Recall__Response pr = RECALL__RESPONSE__INIT;
    Recall__Progress prog = RECALL__PROGRESS__INIT;
    pr.id = r.id;
    pr.status = &st;
    pr.more = 1;
    pr.body_case = RECALL__RESPONSE__BODY_PROGRESS;
    pr.progress = &prog;
    prog.done = 1;
    prog.total = 2;
    reply(&p->ident, &pr);
    reply(&p->ident, &r);
}

static void *server(void *arg)
{
    (void)arg;
    pending q[64];
    int n = 0;
    while (!S.stop) {
        zmq_pollitem_t it = {.socket = S.sock, .events = ZMQ_POLLIN};
        /* Hold requests a little so that the client's pipeline fills up. */
        int rc = zmq_poll(&it, 1, 30);
        if (rc > 0) {
            zmq_msg_t ident, body;
            zmq_msg_init(&ident);
            zmq_msg_init(&body);
            zmq_msg_recv(&ident, S.sock, 0);
            zmq_msg_recv(&body, S.sock, 0);
            Recall__Request *req =
                recall__request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
            zmq_msg_close(&body);
            if (req && req->body_case == RECALL__REQUEST__BODY_CREATE_SESSION) {
                Recall__Response r = RECALL__RESPONSE__INIT;
                Recall__Status st = RECALL__STATUS__INIT;
                Recall__CreateSessionResponse cr = RECALL__CREATE_SESSION_RESPONSE__INIT;
                Recall__SessionInfo info = RECALL__SESSION_INFO__INIT;
                info.name = req->create_session->session;
                info.last_seq = START_SEQ;
                cr.info = &info;
                r.id = req->id;
                r.status = &st;
                r.body_case = RECALL__RESPONSE__BODY_CREATE_SESSION;
                r.create_session = &cr;
                S.creates++;
                reply(&ident, &r);
                recall__request__free_unpacked(req, NULL);
                zmq_msg_close(&ident);
            } else if (req && req->body_case == RECALL__REQUEST__BODY_INGEST && n < 64) {
                if (!S.first_seq) S.first_seq = (int)req->ingest->seq;
                q[n].req = req;
                zmq_msg_init(&q[n].ident);
                zmq_msg_move(&q[n].ident, &ident);
                n++;
                if (n > S.max_pending) S.max_pending = n;
                zmq_msg_close(&ident);
            } else {
                if (req) recall__request__free_unpacked(req, NULL);
                zmq_msg_close(&ident);
            }
            if (n < CREDIT) continue; /* more may be on the way */
        }
        for (int i = 0; i < n; i++) {
            answer_ingest(&q[i]);
            recall__request__free_unpacked(q[i].req, NULL);
            zmq_msg_close(&q[i].ident);
        }
        n = 0;
    }
    /* Stopped with requests held back (a client that gave up): they are not answered. */
    for (int i = 0; i < n; i++) {
        recall__request__free_unpacked(q[i].req, NULL);
        zmq_msg_close(&q[i].ident);
    }
    return NULL;
}

static int run_recall(const char *recall, const char *file, const char *extra, char *out,
                      size_t cap)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "'%s' ingest s '%s' --connect '%s' --chunk-bytes 64 --json "
             "--timeout 10 %s 2>/dev/null",
             recall, file, S.endpoint, extra);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* recall_ingest_tokens of ids[0..n) in chunks of 64 into session "s" (at START_SEQ). */
static rc_t run_library(const int32_t *ids, size_t n, recall_ingest_state *st,
                        recall_ingest_error *err, char *client_err, size_t cap, int *remote)
{
    recall_client *c;
    const char *cerr;
    rc_t rc = recall_client_create(S.endpoint, &c, &cerr);
    if (rc) return rc;
    recall_client_set_timeout(c, 10000);
    *st = (recall_ingest_state){.session = "s", .last_seq = START_SEQ};
    recall_ingest_opts o = {.chunk_tokens = 64};
    rc = recall_ingest_tokens(c, ids, n, &o, st, err);
    snprintf(client_err, cap, "%s", recall_client_error(c));
    *remote = recall_client_error_remote(c);
    recall_client_destroy(&c);
    return rc;
}

static void start(enum scenario sc, pthread_t *th)
{
    free(S.committed);
    memset(&S, 0, sizeof S);
    S.sc = sc;
    S.last_seq = START_SEQ;
    S.ctx = zmq_ctx_new();
    S.sock = zmq_socket(S.ctx, ZMQ_ROUTER);
    zmq_bind(S.sock, "tcp://127.0.0.1:*");
    size_t len = sizeof S.endpoint;
    zmq_getsockopt(S.sock, ZMQ_LAST_ENDPOINT, S.endpoint, &len);
    pthread_create(th, NULL, server, NULL);
}

static void finish(pthread_t th)
{
    S.stop = 1;
    pthread_join(th, NULL);
    zmq_close(S.sock);
    zmq_ctx_term(S.ctx);
}

int main(void)
{
    char recall[1024];
    const char *bin = getenv("RECALL_BIN");
    if (bin)
        snprintf(recall, sizeof recall, "%s", bin);
    else
        snprintf(recall, sizeof recall, "%s/clients/recall",
                 getenv("RECALL_BUILD_DIR") ? getenv("RECALL_BUILD_DIR") : ".");
    if (access(recall, X_OK) != 0) {
        fprintf(stderr, "no recall binary at %s\n", recall);
        CHECK(0);
        return check_summary();
    }

    /* A text of lines of different lengths, with multi-byte characters and one line longer
     * than a chunk. */
    char path[] = "/tmp/recall-test-ingest-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    size_t text_len = 0;
    static char text[8192];
    for (int i = 0; i < 60; i++) {
        int n = snprintf(text + text_len, sizeof text - text_len, "line %d: %.*s caf\xC3\xA9\n", i,
                         (i * 7) % 40, "the quick brown fox jumps over the lazy dog");
        text_len += (size_t)n;
    }
    for (int i = 0; i < 150; i++)
        text[text_len++] = (char)('a' + i % 26);
    text[text_len++] = '\n';
    fwrite(text, 1, text_len, f);
    fclose(f);

    char out[4096];
    pthread_t th;

    /* 1. BUSY refusals mid-pipeline */
    start(SC_BUSY, &th);
    int rc = run_recall(recall, path, "", out, sizeof out);
    finish(th);
    CHECK_MSG(rc == 0, "exit %d, output %s", rc, out);
    CHECK(S.creates == 1);
    CHECK(S.first_seq == START_SEQ + 1);
    CHECK_MSG(S.committed_len == text_len && !memcmp(S.committed, text, text_len),
              "committed %zu bytes, file has %zu", S.committed_len, text_len);
    CHECK_MSG(S.max_pending <= CREDIT, "%d chunks unacknowledged, credit %d", S.max_pending,
              CREDIT);
    CHECK_MSG(S.max_pending >= 2, "no pipelining: at most %d chunk in flight", S.max_pending);
    CHECK(S.busy_sent == 2);
    CHECK_MSG(S.received_after_ack == 0, "%d acknowledged chunks were sent again",
              S.received_after_ack);
    char want[64];
    snprintf(want, sizeof want, "\"last_seq\":%llu", (unsigned long long)S.last_seq);
    CHECK_MSG(strstr(out, want) != NULL, "output %s lacks %s", out, want);
    snprintf(want, sizeof want, "\"chunks\":%llu", (unsigned long long)(S.last_seq - START_SEQ));
    CHECK_MSG(strstr(out, want) != NULL, "output %s lacks %s", out, want);
    snprintf(want, sizeof want, "\"tokens_added\":%zu", text_len);
    CHECK_MSG(strstr(out, want) != NULL, "output %s lacks %s", out, want);

    /* 2. another writer took a seq: stop, exit 1, say so */
    start(SC_STOLEN, &th);
    rc = run_recall(recall, path, "", out, sizeof out);
    finish(th);
    CHECK_MSG(rc == 1, "exit %d, output %s", rc, out);
    CHECK_MSG(strstr(out, "another client") && strstr(out, "\"name\":\"SEQUENCE\""), "%s", out);
    CHECK_MSG(strstr(out, "\"partial\"") && strstr(out, "\"last_seq\":6"), "%s", out);

    /* 3. a fatal error: exit 1 with the daemon's message and what was acknowledged */
    start(SC_FATAL, &th);
    rc = run_recall(recall, path, "", out, sizeof out);
    finish(th);
    CHECK_MSG(rc == 1, "exit %d, output %s", rc, out);
    CHECK_MSG(strstr(out, "chunk too large") && strstr(out, "\"name\":\"LIMIT\""), "%s", out);
    CHECK_MSG(strstr(out, "\"last_seq\":7"), "acknowledged up to seq 7: %s", out);
    CHECK(S.last_seq == 7);

    /* 4. the library with token ids: BUSY refusals mid-pipeline, as in 1 */
    static int32_t ids[1000];
    for (int i = 0; i < 1000; i++)
        ids[i] = (i * 37) % 2048;
    recall_ingest_state st;
    recall_ingest_error err;
    char cerr[512];
    int remote;
    start(SC_BUSY, &th);
    rc = run_library(ids, 1000, &st, &err, cerr, sizeof cerr, &remote);
    finish(th);
    CHECK_MSG(rc == RC_OK, "%s: %s", rc_name(rc), err.message);
    CHECK(S.first_seq == START_SEQ + 1);
    CHECK_MSG(S.n_ids == 1000 && !memcmp(S.ids, ids, sizeof ids), "committed %zu ids", S.n_ids);
    CHECK_MSG(S.max_pending <= CREDIT && S.max_pending >= 2, "%d chunks in flight", S.max_pending);
    CHECK(S.busy_sent == 2);
    CHECK(S.received_after_ack == 0);
    CHECK(st.tokens_added == 1000 && st.chunks_acked == 16 && st.last_seq == START_SEQ + 16);
    CHECK(st.last_seq == S.last_seq && st.tokens == 1000);

    /* 5. a chunk of ids not taken whole */
    start(SC_SHORT, &th);
    rc = run_library(ids, 1000, &st, &err, cerr, sizeof cerr, &remote);
    finish(th);
    CHECK_MSG(rc == RC_ERR_FORMAT && err.fault == RECALL_INGEST_PROTOCOL && err.seq == 8,
              "%s fault %d seq %llu: %s", rc_name(rc), (int)err.fault, (unsigned long long)err.seq,
              err.message);
    CHECK(st.last_seq == 7);

    /* 6. a refusal: the daemon's words become the client error, marked remote */
    start(SC_FATAL, &th);
    rc = run_library(ids, 1000, &st, &err, cerr, sizeof cerr, &remote);
    finish(th);
    CHECK_MSG(rc == RC_ERR_LIMIT && err.fault == RECALL_INGEST_DAEMON && err.code == -7 &&
                  err.seq == 8,
              "%s fault %d: %s", rc_name(rc), (int)err.fault, err.message);
    CHECK_MSG(remote && !strcmp(cerr, "chunk too large for this daemon"), "client error '%s'",
              cerr);
    CHECK_MSG(strstr(err.message, "(chunk 8 of s)"), "%s", err.message);
    CHECK(st.last_seq == 7 && st.tokens_added == 128);

    free(S.committed);
    unlink(path);
    return check_summary();
}
