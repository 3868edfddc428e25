/* request_harness.c — see request_harness.h.
 *
 * daemon/server.c is compiled into this file on purpose: the frame checks and the dispatch
 * (handle_message, enqueue) are static there, and fuzzing a copy of them would test the
 * copy. The decoders they call are the request table's (daemon/request.c, linked in).
 * Nothing in the daemon changes for this. */
#include "daemon/server.c"

#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "tests/fuzz/request_harness.h"

struct rh {
    daemon_t d;
    void *router; /* the daemon's side */
    void *dealer; /* ours: identity "fz", the only peer */
    char dir[512];
};

static const char HARNESS_IDENT[] = "fz";

static void rmtree(const char *dir)
{
    char cmd[1024];
    if (!dir[0] || strcmp(dir, "/") == 0) return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "request_harness: could not remove %s\n", dir);
}

/* Reads one reply from our DEALER (waiting up to ms) into res. Returns 1 if one came. */
static int read_reply(rh_t *h, int ms, rh_result_t *res)
{
    zmq_pollitem_t it = {h->dealer, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0 || !(it.revents & ZMQ_POLLIN)) return 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, h->dealer, 0) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    Recall__Response *r =
        recall__response__unpack(NULL, zmq_msg_size(&m), (const uint8_t *)zmq_msg_data(&m));
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    if (more) { /* a reply is one frame: drain and report the extra frames */
        snprintf(res->message, sizeof res->message, "a reply came in several frames");
        do {
            zmq_msg_init(&m);
            zmq_msg_recv(&m, h->dealer, 0);
            more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        } while (more);
    }
    if (!r) {
        res->replied = 0;
        snprintf(res->message, sizeof res->message, "the reply does not decode as a Response");
        return 1;
    }
    res->replied = !more;
    res->resp_id = r->id;
    res->code = r->status ? r->status->code : INT32_MIN;
    if (r->status && r->status->message)
        snprintf(res->message, sizeof res->message, "%s", r->status->message);
    recall__response__free_unpacked(r, NULL);
    return 1;
}

/* Sends a frame through handle_message as the main loop would. */
static void deliver(rh_t *h, const uint8_t *data, size_t len)
{
    inmsg_t m;
    memset(&m, 0, sizeof m);
    memcpy(m.route.ident, HARNESS_IDENT, sizeof HARNESS_IDENT - 1);
    m.route.ident_len = sizeof HARNESS_IDENT - 1;
    zmq_msg_init_size(&m.parts[0], len);
    if (len) memcpy(zmq_msg_data(&m.parts[0]), data, len);
    m.nparts = 1;
    m.total_bytes = len;
    handle_message(&h->d, h->router, &m);
    inmsg_close(&m);
}

/* Takes every queued job off the queue and releases it the way a stopping worker does. */
static size_t drain_queue(rh_t *h)
{
    daemon_t *d = &h->d;
    size_t n = 0;
    for (;;) {
        pthread_mutex_lock(&d->mu);
        job_t *j = d->head;
        if (j) {
            d->head = j->next;
            if (!d->head) d->tail = NULL;
            d->queued--;
            if (j->req->body_case == RECALL__REQUEST__BODY_INGEST && j->sess)
                j->sess->queued_ingest--;
        }
        pthread_mutex_unlock(&d->mu);
        if (!j) break;
        recall__request__free_unpacked(j->req, NULL);
        session_unref(d, j->sess);
        free(j);
        n++;
    }
    return n;
}

static int run_one(rh_t *h, const uint8_t *data, size_t len, rh_result_t *res);

static int create_session(rh_t *h, const char *name, const char *memory, char *err, size_t errlen)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.memory = (char *)memory;
    cs.session = (char *)name;
    cs.options = &o;
    q.id = 1;
    q.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
    q.create_session = &cs;
    uint8_t buf[512];
    size_t n = recall__request__pack(&q, buf);
    rh_result_t res;
    if (run_one(h, buf, n, &res) != 0 || res.code != 0) {
        snprintf(err, errlen, "cannot create session '%s': %s", name, res.message);
        return -1;
    }
    return 0;
}

int rh_open(rh_t **out, const char *model_dir, char *err, size_t errlen)
{
    *out = NULL;
    rh_t *h = calloc(1, sizeof *h);
    if (!h) return -1;
    daemon_t *d = &h->d;
    d->cfg.model_dir = model_dir;
    d->cfg.max_chunk_bytes = 4096;
    d->cfg.max_frame_bytes = 65536;
    d->cfg.max_sessions = 8;
    d->cfg.max_ask_tokens = LIMITS_DEFAULT_ASK_TOKENS; /* per-client quotas: off (no client) */
    d->cfg.threads = 1;
    d->cfg.device = "cpu";
    omp_set_num_threads(1);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->start_time = clock_now_s();
    log_set_level(LOG_ERROR); /* the daemon's per-request info lines would drown the fuzzer */

    const char *t = getenv("TMPDIR");
    snprintf(h->dir, sizeof h->dir, "%s/recall-fuzz-XXXXXX", t && t[0] ? t : "/tmp");
    if (!mkdtemp(h->dir)) {
        h->dir[0] = 0;
        snprintf(err, errlen, "mkdtemp: %s", strerror(errno));
        goto fail;
    }
    char merr[512] = "";
    if (model_load(model_dir, 0, &d->model, merr, sizeof merr) ||
        model_backend_open(d->model, "cpu", &d->backend, merr, sizeof merr)) {
        snprintf(err, errlen, "cannot load the model in %s: %s", model_dir, merr);
        goto fail;
    }
    d->ready = 1; /* the backend is open: no worker loads it here */
    d->mc = model_get_config(d->model);
    d->tok = model_get_tokenizer(d->model);
    d->row_dim = d->mc->n_kv_heads * d->mc->head_dim;
    snprintf(d->fingerprint, sizeof d->fingerprint, "fuzz harness: %s", model_describe(d->model));
    memory_db_opts_t dbo = {.map_size = 1 << 20};
    if (memory_db_open(h->dir, &dbo, &d->db, merr, sizeof merr)) {
        snprintf(err, errlen, "%s", merr);
        goto fail;
    }
    if (!(d->rows_root = malloc(strlen(h->dir) + 6)) ||
        memory_tiers_create(0, 0, &d->tiers)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    sprintf(d->rows_root, "%s/rows", h->dir);

    d->zctx = zmq_ctx_new();
    h->router = zmq_socket(d->zctx, ZMQ_ROUTER);
    h->dealer = zmq_socket(d->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(h->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(h->dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(h->dealer, ZMQ_ROUTING_ID, HARNESS_IDENT, sizeof HARNESS_IDENT - 1);
    char ep[600];
    snprintf(ep, sizeof ep, "inproc://fuzz-%p", (void *)h);
    if (zmq_bind(h->router, ep) || zmq_connect(h->dealer, ep)) {
        snprintf(err, errlen, "inproc sockets: %s", zmq_strerror(errno));
        goto fail;
    }
    /* One message across makes the ROUTER know our identity before it must route to it. */
    zmq_send(h->dealer, "hi", 2, 0);
    zmq_msg_t f;
    zmq_msg_init(&f);
    zmq_msg_recv(&f, h->router, 0);
    while (zmq_msg_more(&f)) {
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        zmq_msg_recv(&f, h->router, 0);
    }
    zmq_msg_close(&f);

    if (create_session(h, "s", "exact", err, errlen) || create_session(h, "k", "knn", err, errlen))
        goto fail;
    *out = h;
    return 0;
fail:
    rh_close(&h);
    return -1;
}

/* Fuzzed Drops remove the sessions inputs name; bring them back (best effort: a table
 * filled by fuzzed Creates stays full) so later inputs reach the deeper checks again. */
static void ensure_sessions(rh_t *h)
{
    static const char *const names[] = {"s", "k"};
    static const char *const mem[] = {"exact", "knn"};
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&h->d.mu);
        int have = session_find(&h->d, names[i]) != NULL;
        int room = (int)h->d.n_sessions < h->d.cfg.max_sessions;
        pthread_mutex_unlock(&h->d.mu);
        char err[256];
        if (!have && room) create_session(h, names[i], mem[i], err, sizeof err);
    }
}

int rh_run(rh_t *h, const uint8_t *data, size_t len, rh_result_t *res)
{
    int rc = run_one(h, data, len, res);
    ensure_sessions(h);
    return rc;
}

static int run_one(rh_t *h, const uint8_t *data, size_t len, rh_result_t *res)
{
    memset(res, 0, sizeof *res);
    Recall__Request *req = recall__request__unpack(NULL, len, data);
    if (req) {
        res->decoded = 1;
        res->req_id = req->id;
        res->body_case = (int)req->body_case;
        recall__request__free_unpacked(req, NULL);
    }
    size_t queued_before = h->d.queued;
    deliver(h, data, len);
    res->queued = h->d.queued > queued_before;
    size_t drained = drain_queue(h);
    if (res->queued) {
        if (drained != 1) {
            snprintf(res->message, sizeof res->message, "one frame queued %zu jobs", drained);
            return -1;
        }
        if (read_reply(h, 0, res)) {
            snprintf(res->message, sizeof res->message, "a queued request was also answered");
            return -1;
        }
        return 0;
    }
    /* Replies of the main thread are sent before handle_message returns; inproc delivers
     * them at once, the timeout only guards against a lost one. */
    if (!read_reply(h, 1000, res)) {
        snprintf(res->message, sizeof res->message, "no reply and nothing queued");
        return -1;
    }
    if (!res->replied) return -1;
    rh_result_t extra = {0};
    if (read_reply(h, 0, &extra)) {
        snprintf(res->message, sizeof res->message, "two replies to one frame");
        return -1;
    }
    if (res->code > 0 || res->code < RC_ERR_INTERNAL) {
        snprintf(res->message, sizeof res->message, "status code %d is not an rc_t", res->code);
        return -1;
    }
    if (!res->decoded && (res->code != RC_ERR_FORMAT && res->code != RC_ERR_LIMIT)) {
        snprintf(res->message, sizeof res->message,
                 "an undecodable frame got code %d, not FORMAT or LIMIT", res->code);
        return -1;
    }
    if (!res->decoded && res->resp_id != 0) {
        snprintf(res->message, sizeof res->message, "an undecodable frame got id %llu",
                 (unsigned long long)res->resp_id);
        return -1;
    }
    if (res->decoded && len <= h->d.cfg.max_frame_bytes && res->resp_id != res->req_id) {
        snprintf(res->message, sizeof res->message, "request id %llu answered with id %llu",
                 (unsigned long long)res->req_id, (unsigned long long)res->resp_id);
        return -1;
    }
    return 0;
}

/* Unknown fields in m and the messages it holds (Request nests two levels deep). */
static size_t unknown_fields(const ProtobufCMessage *m)
{
    if (!m) return 0;
    size_t n = m->n_unknown_fields;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED) continue;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)((const char *)m + f->quantifier_offset);
            if (which != f->id) continue;
        }
        n += unknown_fields(*(ProtobufCMessage *const *)((const char *)m + f->offset));
    }
    return n;
}

int rh_check_roundtrip(const uint8_t *data, size_t len)
{
    Recall__Request *a = recall__request__unpack(NULL, len, data);
    if (!a) return 0;
    size_t n1 = recall__request__get_packed_size(a);
    uint8_t *b1 = malloc(n1 ? n1 : 1);
    size_t w1 = recall__request__pack(a, b1);
    int bad = w1 != n1;
    Recall__Request *b = bad ? NULL : recall__request__unpack(NULL, n1, b1);
    if (!b) {
        /* protobuf-c keeps unknown fields as they came, including ones it would refuse in
         * their canonical encoding (field number 0 written as a two-byte tag decodes; as
         * one byte it does not). Those need not survive; everything else must. */
        bad = bad || unknown_fields(&a->base) == 0;
    } else {
        size_t n2 = recall__request__get_packed_size(b);
        uint8_t *b2 = malloc(n2 ? n2 : 1);
        size_t w2 = recall__request__pack(b, b2);
        bad = w2 != n2 || n2 != n1 || memcmp(b1, b2, n1) != 0 || a->id != b->id ||
              a->body_case != b->body_case;
        free(b2);
        recall__request__free_unpacked(b, NULL);
    }
    free(b1);
    recall__request__free_unpacked(a, NULL);
    return bad ? -1 : 0;
}

/* An independent strict UTF-8 check (RFC 3629): decode each sequence to its code point,
 * then reject overlongs, surrogates and values past U+10FFFF. */
static int ref_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = p[i];
        size_t k;
        uint32_t min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if (n - i <= k) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) return 0;
            c = (c << 6) | (p[i + j] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

/* The rule as SESSION_NAME_RULE states it. */
static int ref_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > SESSION_NAME_MAX || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-' || c == ':' || c == '@' || c == '+';
        if (!ok) return 0;
    }
    return 1;
}

int rh_check_helpers(const uint8_t *data, size_t len)
{
    int bad = 0;
    if (!utf8_valid((const char *)data, len) != !ref_utf8_valid(data, len)) {
        fprintf(stderr, "utf8_valid says %d, the reference decoder %d\n",
                utf8_valid((const char *)data, len), ref_utf8_valid(data, len));
        bad = 1;
    }
    char *name = malloc(len + 1);
    if (!name) return -1;
    memcpy(name, data, len);
    name[len] = 0; /* a wire string ends at its first NUL for the daemon too */
    const char *problem = session_name_problem(name);
    if (!problem || (!problem[0]) != ref_name_ok(name)) {
        fprintf(stderr, "session_name_problem disagrees with the rule on '%s': '%s'\n", name,
                problem ? problem : "(null)");
        bad = 1;
    }
    free(name);
    return bad ? -1 : 0;
}

size_t rh_sessions(rh_t *h)
{
    pthread_mutex_lock(&h->d.mu);
    size_t n = h->d.n_sessions;
    pthread_mutex_unlock(&h->d.mu);
    return n;
}

void rh_close(rh_t **ph)
{
    if (!ph || !*ph) return;
    rh_t *h = *ph;
    daemon_t *d = &h->d;
    drain_queue(h);
    if (h->router) zmq_close(h->router);
    if (h->dealer) zmq_close(h->dealer);
    if (d->zctx) zmq_ctx_term(d->zctx);
    for (size_t i = 0; i < d->n_sessions; i++)
        session_free(d->sessions[i]);
    free(d->sessions);
    memory_tiers_destroy(&d->tiers);
    free(d->rows_root);
    memory_db_close(&d->db);
    model_backend_close(&d->backend);
    model_destroy(&d->model);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    rmtree(h->dir);
    free(h);
    *ph = NULL;
}
