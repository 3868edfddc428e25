/* server.c — the ZeroMQ loop: receive, check, answer quick requests, queue model work.
 *
 * The ROUTER lives in the main thread only (ZeroMQ sockets are not thread-safe). Every
 * message the worker produces arrives on the inproc PAIR already laid out as ROUTER frames
 * (identity, [delimiter], payload) and is forwarded unchanged. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/daemon.h"

#ifdef RECALL_VERSION
#define RECALL_VERSION_STR RECALL_VERSION
#else
#define RECALL_VERSION_STR "unknown"
#endif

int server_send(void *sock, const route_t *route, Recall__Response *resp)
{
    size_t n = recall__response__get_packed_size(resp);
    uint8_t stackbuf[4096];
    uint8_t *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
    if (!buf) return -1;
    recall__response__pack(resp, buf);
    int rc = zmq_send(sock, route->ident, route->ident_len, ZMQ_SNDMORE);
    if (rc >= 0 && route->delim) rc = zmq_send(sock, "", 0, ZMQ_SNDMORE);
    if (rc >= 0) rc = zmq_send(sock, buf, n, 0);
    if (buf != stackbuf) free(buf);
    return rc < 0 ? -1 : 0;
}

int server_send_status(void *sock, const route_t *route, uint64_t id, rc_t code, const char *fmt,
                       ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__Status st = RECALL__STATUS__INIT;
    st.code = code;
    st.message = msg;
    resp.id = id;
    resp.status = &st;
    return server_send(sock, route, &resp);
}

/* ---- quick requests (main thread) ---------------------------------------------------- */

typedef struct reply {
    rc_t code;
    char msg[1024];
} reply_t;

static void set_reply(reply_t *r, rc_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_reply(reply_t *r, rc_t code, const char *fmt, ...)
{
    r->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

static void send_reply(daemon_t *d, void *router, const route_t *route, uint64_t id, reply_t *r,
                       Recall__Response *resp)
{
    Recall__Status st = RECALL__STATUS__INIT;
    st.code = r->code;
    st.message = r->code ? r->msg : (char *)"ok";
    resp->id = id;
    resp->status = &st;
    if (r->code) resp->body_case = RECALL__RESPONSE__BODY__NOT_SET;
    pthread_mutex_lock(&d->mu);
    if (r->code) d->errors++;
    pthread_mutex_unlock(&d->mu);
    server_send(router, route, resp);
}

/* A success response sent without taking mu (callers that hold it, so the body's
 * pointers into session counters stay valid while packing). */
static void send_ok(void *router, const route_t *route, uint64_t id, Recall__Response *resp)
{
    Recall__Status st = RECALL__STATUS__INIT;
    st.message = (char *)"ok";
    resp->id = id;
    resp->status = &st;
    server_send(router, route, resp);
}

/* Checks a session name; on failure fills r and returns 0. */
static int name_ok(const char *name, reply_t *r)
{
    const char *bad = session_name_problem(name);
    if (!bad[0]) return 1;
    set_reply(r, RC_ERR_INVALID, "%s; %s", bad, SESSION_NAME_RULE);
    return 0;
}

static void do_create(daemon_t *d, void *router, const route_t *route, uint64_t id,
                      const Recall__CreateSessionRequest *q)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__CreateSessionResponse cr = RECALL__CREATE_SESSION_RESPONSE__INIT;
    Recall__SessionInfo info;
    Recall__SessionOptions opts;
    model_stream_opts_t o;
    session_t *s = NULL;
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    char err[512];
    if (!name_ok(q->session, &r)) goto out;
    /* An existing session keeps its options, so with if_not_exists the ones given are not
     * checked: they may only make sense with the options it has (--nlist on a knn session
     * when the daemon's default memory is exact). The client compares them with the answer. */
    pthread_mutex_lock(&d->mu);
    session_t *old = session_find(d, q->session);
    if (!(old && q->if_not_exists)) {
        pthread_mutex_unlock(&d->mu);
        Recall__SessionOptions want = session_opts_with_defaults(d, q->options);
        rc_t orc = session_opts_resolve(d, &want, &o, err, sizeof err);
        if (orc) {
            set_reply(&r, orc, "session options: %s", err);
            goto out;
        }
        pthread_mutex_lock(&d->mu);
        old = session_find(d, q->session);
    }
    rc_t rc;
    if (old && q->if_not_exists) {
        session_info_fill(old, &info, &opts);
        cr.info = &info;
        cr.created = 0;
        resp.body_case = RECALL__RESPONSE__BODY_CREATE_SESSION;
        resp.create_session = &cr;
        send_ok(router, route, id, &resp); /* packed under mu: info points at live counters */
        pthread_mutex_unlock(&d->mu);
        return;
    }
    if (old) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_EXISTS, "session '%s' already exists (set if_not_exists to reuse it)",
                  q->session);
        goto out;
    }
    if ((int)d->n_sessions >= d->cfg.max_sessions) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_LIMIT,
                  "there are already %d sessions, the --max-sessions limit; drop one first",
                  d->cfg.max_sessions);
        goto out;
    }
    pthread_mutex_unlock(&d->mu);
    rc = session_new(d, q->session, &o, 0, &s);
    if (rc) {
        set_reply(&r, rc, "cannot create the session: %s", rc_strerror(rc));
        goto out;
    }
    pthread_mutex_lock(&d->mu);
    /* Re-check under the lock held through the commit: only this thread creates, but be
     * exact about it anyway. */
    if (session_find(d, q->session)) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_EXISTS, "session '%s' already exists", q->session);
        goto out;
    }
    rc = session_record_pack(d, s, 0, 0, 0, 0, 0, &rec, &rec_len);
    memory_db_commit_t c = {.session = s->name, .record = rec, .record_len = rec_len};
    if (!rc) rc = memory_db_commit(d->db, &c, err, sizeof err);
    if (!rc) rc = session_table_add(d, s);
    if (rc) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, rc, "cannot store the new session: %s", err);
        goto out;
    }
    s->disk_bytes = s->record_bytes = rec_len;
    session_info_fill(s, &info, &opts);
    cr.info = &info;
    cr.created = 1;
    resp.body_case = RECALL__RESPONSE__BODY_CREATE_SESSION;
    resp.create_session = &cr;
    send_ok(router, route, id, &resp);
    pthread_mutex_unlock(&d->mu);
    log_info("created session '%s' (window %d)", s->name, s->window);
    free(rec);
    return;
out:
    free(rec);
    session_free(s);
    send_reply(d, router, route, id, &r, &resp);
}

static void do_info(daemon_t *d, void *router, const route_t *route, uint64_t id,
                    const Recall__SessionInfoRequest *q)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    if (!name_ok(q->session, &r)) {
        send_reply(d, router, route, id, &r, &resp);
        return;
    }
    pthread_mutex_lock(&d->mu);
    session_t *s = session_find(d, q->session);
    if (!s) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_NOT_FOUND, "no session named '%s'", q->session);
        send_reply(d, router, route, id, &r, &resp);
        return;
    }
    Recall__SessionInfoResponse ir = RECALL__SESSION_INFO_RESPONSE__INIT;
    Recall__SessionInfo info;
    Recall__SessionOptions opts;
    session_info_fill(s, &info, &opts);
    ir.info = &info;
    resp.body_case = RECALL__RESPONSE__BODY_SESSION_INFO;
    resp.session_info = &ir;
    send_ok(router, route, id, &resp);
    pthread_mutex_unlock(&d->mu);
}

static int cmp_info(const void *a, const void *b)
{
    const Recall__SessionInfo *x = *(Recall__SessionInfo *const *)a;
    const Recall__SessionInfo *y = *(Recall__SessionInfo *const *)b;
    return strcmp(x->name, y->name);
}

static void do_list(daemon_t *d, void *router, const route_t *route, uint64_t id)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    pthread_mutex_lock(&d->mu);
    size_t n = d->n_sessions;
    Recall__SessionInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Recall__SessionOptions *opts = calloc(n ? n : 1, sizeof *opts);
    Recall__SessionInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!infos || !opts || !ptrs) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_NOMEM, "out of memory listing sessions");
        send_reply(d, router, route, id, &r, &resp);
    } else {
        for (size_t i = 0; i < n; i++) {
            session_info_fill(d->sessions[i], &infos[i], &opts[i]);
            ptrs[i] = &infos[i];
        }
        qsort(ptrs, n, sizeof *ptrs, cmp_info);
        Recall__ListSessionsResponse lr = RECALL__LIST_SESSIONS_RESPONSE__INIT;
        lr.n_sessions = n;
        lr.sessions = ptrs;
        resp.body_case = RECALL__RESPONSE__BODY_LIST_SESSIONS;
        resp.list_sessions = &lr;
        send_ok(router, route, id, &resp);
        pthread_mutex_unlock(&d->mu);
    }
    free(infos);
    free(opts);
    free(ptrs);
}

static void do_drop(daemon_t *d, void *router, const route_t *route, uint64_t id,
                    const Recall__DropSessionRequest *q)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__DropSessionResponse dr = RECALL__DROP_SESSION_RESPONSE__INIT;
    char err[512];
    session_t *to_free = NULL;
    if (!name_ok(q->session, &r)) goto out;
    pthread_mutex_lock(&d->mu);
    session_t *s = session_find(d, q->session);
    if (!s) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, RC_ERR_NOT_FOUND, "no session named '%s'", q->session);
        goto out;
    }
    /* Under mu, so a worker commit for this session is either already durable (and is
     * deleted here) or will see `dropped` and not write. */
    rc_t rc = memory_db_drop(d->db, s->name, err, sizeof err);
    if (rc && rc != RC_ERR_NOT_FOUND) {
        pthread_mutex_unlock(&d->mu);
        set_reply(&r, rc, "cannot drop session '%s': %s", q->session, err);
        goto out;
    }
    session_table_remove(d, s);
    s->dropped = 1;
    session_unref_locked(d, s, &to_free);
    /* The catalogue no longer names it, so its row files are garbage now; a job still
     * reading them keeps its mapping (the pages live until it unmaps). A failure here only
     * leaves files that the next start-up sweeps away. */
    if (session_memory_remove_files(d->rows_root, q->session, err, sizeof err))
        log_warn("dropped session '%s', but its row files stay until the next start: %s",
                 q->session, err);
    pthread_mutex_unlock(&d->mu);
    log_info("dropped session '%s'", q->session);
    session_free(to_free);
    resp.body_case = RECALL__RESPONSE__BODY_DROP_SESSION;
    resp.drop_session = &dr;
out:
    send_reply(d, router, route, id, &r, &resp);
}

static void do_stats(daemon_t *d, void *router, const route_t *route, uint64_t id)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__StatsResponse sr = RECALL__STATS_RESPONSE__INIT;
    pthread_mutex_lock(&d->mu);
    sr.uptime_s = clock_now_s() - d->start_time;
    sr.sessions = (uint32_t)d->n_sessions;
    sr.requests = d->requests;
    sr.errors = d->errors;
    sr.tokens_ingested = d->tokens_ingested;
    sr.tokens_generated = d->tokens_generated;
    for (size_t i = 0; i < d->n_sessions; i++) {
        const session_t *x = d->sessions[i];
        sr.memory_tokens += x->mem_tokens;
        sr.memory_bytes_host += x->mem_bytes_host;
        sr.memory_bytes_disk += x->disk_bytes;
        sr.memory_bytes_device += x->mem_bytes_device;
        const char *t = session_tier(x);
        if (!strcmp(t, "gpu")) sr.sessions_gpu++;
        else if (!strcmp(t, "host")) sr.sessions_host++;
        else if (!strcmp(t, "disk")) sr.sessions_disk++;
        else sr.sessions_unavailable++;
    }
    sr.host_budget = memory_tiers_host_budget(d->tiers);
    sr.gpu_budget = memory_tiers_gpu_budget(d->tiers);
    sr.loads = d->loads;
    sr.evictions = d->evictions;
    pthread_mutex_unlock(&d->mu);
    sr.device = (char *)model_backend_describe(d->backend);
    sr.model = (char *)model_describe(d->model);
    resp.body_case = RECALL__RESPONSE__BODY_STATS;
    resp.stats = &sr;
    send_reply(d, router, route, id, &r, &resp);
}

static void do_health(daemon_t *d, void *router, const route_t *route, uint64_t id)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__HealthResponse hr = RECALL__HEALTH_RESPONSE__INIT;
    hr.ok = 1;
    hr.version = (char *)RECALL_VERSION_STR;
    hr.model = (char *)model_describe(d->model);
    hr.device = (char *)model_backend_describe(d->backend);
    resp.body_case = RECALL__RESPONSE__BODY_HEALTH;
    resp.health = &hr;
    send_reply(d, router, route, id, &r, &resp);
}

/* Tokenize: the tokenizer is const and thread-safe after load, so this runs here rather
 * than behind model work in the queue; a client measuring prompt lengths (recall passkey)
 * gets its answer while the worker is busy. The text is bounded by --max-frame-bytes
 * only: nothing is stored, and a long prompt's exact length is the point. */
static void do_tokenize(daemon_t *d, void *router, const route_t *route, uint64_t id,
                        const Recall__TokenizeRequest *q)
{
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__TokenizeResponse tr = RECALL__TOKENIZE_RESPONSE__INIT;
    int32_t *ids = NULL;
    size_t n = 0, tl = strlen(q->text);
    if (tl && !utf8_valid(q->text, tl)) {
        set_reply(&r, RC_ERR_INVALID, "the text to tokenize is not valid UTF-8");
        goto out;
    }
    int bos = tokenizer_bos_id(d->tok);
    rc_t rc = tokenizer_encode(d->tok, q->text, tl, q->add_bos && bos >= 0, &ids, &n);
    if (rc) {
        set_reply(&r, rc, "cannot tokenize the text: %s", rc_strerror(rc));
        goto out;
    }
    tr.count = n;
    if (!q->count_only) {
        tr.tokens = ids;
        tr.n_tokens = n;
    }
    tr.bos_id = bos;
    tr.eos_id = tokenizer_eos_id(d->tok);
    resp.body_case = RECALL__RESPONSE__BODY_TOKENIZE;
    resp.tokenize = &tr;
out:
    send_reply(d, router, route, id, &r, &resp);
    free(ids);
}

/* ---- model work: checks that need no model, then the queue --------------------------- */

static rc_t check_tokens(daemon_t *d, const int32_t *t, size_t n, reply_t *r)
{
    for (size_t i = 0; i < n; i++)
        if (t[i] < 0 || t[i] >= d->mc->vocab_size) {
            set_reply(r, RC_ERR_INVALID, "token %d at index %zu is out of range [0, %d)", t[i], i,
                      d->mc->vocab_size);
            return RC_ERR_INVALID;
        }
    return RC_OK;
}

/* Queues req (taking ownership on success). Returns 0, or fills r. */
static int enqueue(daemon_t *d, const route_t *route, Recall__Request *req, const char *session,
                   int is_ingest, reply_t *r)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        set_reply(r, RC_ERR_NOMEM, "out of memory queueing the request");
        return -1;
    }
    j->route = *route;
    j->req = req;
    pthread_mutex_lock(&d->mu);
    if (d->stopping) {
        pthread_mutex_unlock(&d->mu);
        free(j);
        set_reply(r, RC_ERR_SHUTDOWN, "the daemon is stopping");
        return -1;
    }
    if (d->queued >= DAEMON_QUEUE_MAX) {
        pthread_mutex_unlock(&d->mu);
        free(j);
        set_reply(r, RC_ERR_BUSY, "the work queue is full (%d requests); retry later",
                  DAEMON_QUEUE_MAX);
        return -1;
    }
    if (session) {
        session_t *s = session_find(d, session);
        if (!s) {
            pthread_mutex_unlock(&d->mu);
            free(j);
            set_reply(r, RC_ERR_NOT_FOUND, "no session named '%s'", session);
            return -1;
        }
        if (s->problem[0] && req->body_case != RECALL__REQUEST__BODY_VERIFY_SESSION) {
            set_reply(r, RC_ERR_UNAVAILABLE,
                      "session '%s' is unavailable: %s (recall verify %s checks it again; "
                      "recall drop %s removes it)",
                      session, s->problem, session, session);
            pthread_mutex_unlock(&d->mu);
            free(j);
            return -1;
        }
        if (is_ingest && s->queued_ingest >= DAEMON_CREDIT) {
            pthread_mutex_unlock(&d->mu);
            free(j);
            set_reply(r, RC_ERR_BUSY,
                      "session '%s' already has %d unacknowledged Ingest chunks (the credit); "
                      "wait for acknowledgements",
                      session, DAEMON_CREDIT);
            return -1;
        }
        s->refs++;
        if (is_ingest) s->queued_ingest++;
        j->sess = s;
    }
    if (d->tail)
        d->tail->next = j;
    else
        d->head = j;
    d->tail = j;
    d->queued++;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    return 0;
}

/* Returns 1 if req was queued (ownership taken). */
static int handle_work(daemon_t *d, void *router, const route_t *route, Recall__Request *req)
{
    reply_t r = {0};
    const char *session = NULL;
    int is_ingest = 0;
    switch (req->body_case) {
    case RECALL__REQUEST__BODY_INGEST: {
        Recall__IngestRequest *q = req->ingest;
        if (!name_ok(q->session, &r)) break;
        session = q->session;
        is_ingest = 1;
        size_t tl = strlen(q->text);
        if (tl && q->n_tokens) {
            set_reply(&r, RC_ERR_INVALID, "an Ingest chunk carries text or tokens, not both");
            break;
        }
        if (tl > d->cfg.max_chunk_bytes || q->n_tokens * 4 > d->cfg.max_chunk_bytes) {
            set_reply(&r, RC_ERR_LIMIT,
                      "the chunk is %zu bytes, over the limit of %zu bytes (--max-chunk-bytes); "
                      "send smaller chunks",
                      tl ? tl : q->n_tokens * 4, d->cfg.max_chunk_bytes);
            break;
        }
        if (q->seq == 0) {
            set_reply(&r, RC_ERR_INVALID, "Ingest seq starts at 1 (got 0)");
            break;
        }
        /* protobuf-c stops a string at its first NUL: compare with the wire length is not
         * possible here, so NULs simply end the text; UTF-8 is checked on what remains. */
        if (tl && !utf8_valid(q->text, tl)) {
            set_reply(&r, RC_ERR_INVALID, "the chunk's text is not valid UTF-8");
            break;
        }
        check_tokens(d, q->tokens, q->n_tokens, &r);
        break;
    }
    case RECALL__REQUEST__BODY_ASK: {
        Recall__AskRequest *q = req->ask;
        if (!name_ok(q->session, &r)) break;
        session = q->session;
        size_t ql = strlen(q->question);
        if (ql && q->n_question_tokens) {
            set_reply(&r, RC_ERR_INVALID, "an Ask carries question text or tokens, not both");
            break;
        }
        if (ql > d->cfg.max_chunk_bytes || q->n_question_tokens * 4 > d->cfg.max_chunk_bytes) {
            set_reply(&r, RC_ERR_LIMIT, "the question is over the limit of %zu bytes",
                      d->cfg.max_chunk_bytes);
            break;
        }
        if (ql && !utf8_valid(q->question, ql)) {
            set_reply(&r, RC_ERR_INVALID, "the question is not valid UTF-8");
            break;
        }
        if (!(q->temperature >= 0) || !(q->top_p >= 0)) {
            set_reply(&r, RC_ERR_INVALID, "temperature and top_p must be >= 0");
            break;
        }
        check_tokens(d, q->question_tokens, q->n_question_tokens, &r);
        break;
    }
    case RECALL__REQUEST__BODY_SCORE: {
        Recall__ScoreRequest *q = req->score;
        size_t tl = strlen(q->text);
        if (q->session[0]) {
            if (!name_ok(q->session, &r)) break;
            if (tl || q->n_tokens) {
                set_reply(&r, RC_ERR_INVALID,
                          "Score takes a session, or a text, or tokens: only one of them");
                break;
            }
            session = q->session;
            break;
        }
        if (tl && q->n_tokens) {
            set_reply(&r, RC_ERR_INVALID, "Score takes a text or tokens, not both");
            break;
        }
        if (tl > d->cfg.max_chunk_bytes || q->n_tokens * 4 > d->cfg.max_chunk_bytes) {
            set_reply(&r, RC_ERR_LIMIT, "the text to score is over the limit of %zu bytes",
                      d->cfg.max_chunk_bytes);
            break;
        }
        if (tl && !utf8_valid(q->text, tl)) {
            set_reply(&r, RC_ERR_INVALID, "the text to score is not valid UTF-8");
            break;
        }
        if (check_tokens(d, q->tokens, q->n_tokens, &r)) break;
        model_stream_opts_t o;
        char err[512];
        Recall__SessionOptions want = session_opts_with_defaults(d, q->options);
        rc_t rc = session_opts_resolve(d, &want, &o, err, sizeof err);
        if (rc) set_reply(&r, rc, "score options: %s", err);
        break;
    }
    case RECALL__REQUEST__BODY_VERIFY_SESSION:
        if (!name_ok(req->verify_session->session, &r)) break;
        session = req->verify_session->session;
        break;
    default:
        set_reply(&r, RC_ERR_INTERNAL, "not model work");
    }
    if (!r.code && enqueue(d, route, req, session, is_ingest, &r) == 0) return 1;
    Recall__Response resp = RECALL__RESPONSE__INIT;
    send_reply(d, router, route, req->id, &r, &resp);
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------ */

/* Receives one whole multipart message from the ROUTER; frames past the identity go into
 * parts (at most 3 kept; *nparts counts all). Returns -1 if nothing was there. */
typedef struct inmsg {
    zmq_msg_t parts[3];
    int nparts;
    size_t total_bytes;
    route_t route;
} inmsg_t;

static void inmsg_close(inmsg_t *m)
{
    for (int i = 0; i < m->nparts && i < 3; i++)
        zmq_msg_close(&m->parts[i]);
}

static int recv_message(void *router, inmsg_t *m)
{
    memset(m, 0, sizeof *m);
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f);
        return -1;
    }
    size_t il = zmq_msg_size(&f);
    if (il > sizeof m->route.ident) il = sizeof m->route.ident; /* ZeroMQ caps it at 255 */
    memcpy(m->route.ident, zmq_msg_data(&f), il);
    m->route.ident_len = il;
    int more = zmq_msg_more(&f);
    zmq_msg_close(&f);
    while (more) {
        zmq_msg_t p;
        zmq_msg_init(&p);
        if (zmq_msg_recv(&p, router, 0) < 0) {
            zmq_msg_close(&p);
            break;
        }
        more = zmq_msg_more(&p);
        m->total_bytes += zmq_msg_size(&p);
        if (m->nparts < 3)
            m->parts[m->nparts] = p;
        else
            zmq_msg_close(&p);
        m->nparts++;
    }
    return 0;
}

static void handle_message(daemon_t *d, void *router, inmsg_t *m)
{
    pthread_mutex_lock(&d->mu);
    d->requests++;
    pthread_mutex_unlock(&d->mu);
    reply_t r = {0};
    Recall__Response resp = RECALL__RESPONSE__INIT;
    zmq_msg_t *payload = NULL;
    /* A REQ peer puts an empty delimiter frame before its message: answer in kind. */
    if (m->nparts >= 1 && zmq_msg_size(&m->parts[0]) == 0 && m->nparts == 2) {
        m->route.delim = 1;
        payload = &m->parts[1];
    } else if (m->nparts == 1) {
        payload = &m->parts[0];
    }
    if (!payload) {
        set_reply(&r, RC_ERR_FORMAT,
                  "a request is exactly one ZeroMQ frame holding a recall.Request; got %d frames",
                  m->nparts);
        send_reply(d, router, &m->route, 0, &r, &resp);
        return;
    }
    size_t n = zmq_msg_size(payload);
    if (n > d->cfg.max_frame_bytes) {
        set_reply(&r, RC_ERR_LIMIT,
                  "the request is %zu bytes, over the limit of %zu bytes (--max-frame-bytes)", n,
                  d->cfg.max_frame_bytes);
        send_reply(d, router, &m->route, 0, &r, &resp);
        return;
    }
    Recall__Request *req = recall__request__unpack(NULL, n, (const uint8_t *)zmq_msg_data(payload));
    if (!req) {
        set_reply(&r, RC_ERR_FORMAT,
                  "malformed request: %zu bytes that do not decode as a recall.Request protobuf",
                  n);
        send_reply(d, router, &m->route, 0, &r, &resp);
        return;
    }
    uint64_t id = req->id;
    int owned = 0;
    switch (req->body_case) {
    case RECALL__REQUEST__BODY_CREATE_SESSION:
        do_create(d, router, &m->route, id, req->create_session);
        break;
    case RECALL__REQUEST__BODY_SESSION_INFO:
        do_info(d, router, &m->route, id, req->session_info);
        break;
    case RECALL__REQUEST__BODY_LIST_SESSIONS:
        do_list(d, router, &m->route, id);
        break;
    case RECALL__REQUEST__BODY_DROP_SESSION:
        do_drop(d, router, &m->route, id, req->drop_session);
        break;
    case RECALL__REQUEST__BODY_STATS:
        do_stats(d, router, &m->route, id);
        break;
    case RECALL__REQUEST__BODY_HEALTH:
        do_health(d, router, &m->route, id);
        break;
    case RECALL__REQUEST__BODY_TOKENIZE:
        do_tokenize(d, router, &m->route, id, req->tokenize);
        break;
    case RECALL__REQUEST__BODY_INGEST:
    case RECALL__REQUEST__BODY_ASK:
    case RECALL__REQUEST__BODY_SCORE:
    case RECALL__REQUEST__BODY_VERIFY_SESSION:
        owned = handle_work(d, router, &m->route, req);
        break;
    default:
        set_reply(&r, RC_ERR_FORMAT,
                  "request %llu has no body (or one this daemon does not know); "
                  "set one of create_session, ingest, ask, score, list_sessions, "
                  "session_info, drop_session, stats, health, tokenize, verify_session",
                  (unsigned long long)id);
        send_reply(d, router, &m->route, id, &r, &resp);
    }
    if (!owned) recall__request__free_unpacked(req, NULL);
}

/* Forwards whatever the worker has produced. Returns 1 once the worker said it is done. */
static int forward_worker(void *pair, void *router)
{
    int done = 0;
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, pair, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            break;
        }
        int more = zmq_msg_more(&f);
        if (!more && zmq_msg_size(&f) == 0) { /* the worker's goodbye */
            zmq_msg_close(&f);
            done = 1;
            continue;
        }
        for (;;) {
            zmq_msg_send(&f, router, more ? ZMQ_SNDMORE : 0);
            zmq_msg_close(&f);
            if (!more) break;
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, pair, 0) < 0) {
                zmq_msg_close(&f);
                break;
            }
            more = zmq_msg_more(&f);
        }
    }
    return done;
}

rc_t server_run(daemon_t *d, void *router, volatile sig_atomic_t *stop_flag)
{
    int stopping = 0, worker_done = 0;
    double stop_deadline = 0;
    while (!worker_done) {
        if (*stop_flag && !stopping) {
            /* Stop accepting; the worker finishes or rolls back its job and answers the
             * queue with RC_ERR_SHUTDOWN, then says goodbye. */
            stopping = 1;
            stop_deadline = clock_now_s() + 60;
            log_info("stopping: finishing the current job");
            pthread_mutex_lock(&d->mu);
            d->stopping = 1;
            d->worker_stop_now = 1;
            pthread_cond_broadcast(&d->cv);
            pthread_mutex_unlock(&d->mu);
        }
        zmq_pollitem_t items[2] = {{d->pair_main, 0, ZMQ_POLLIN, 0}, {router, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, stopping ? 1 : 2, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ETERM) break;
            log_error("zmq_poll: %s", zmq_strerror(errno));
            return RC_ERR_IO;
        }
        if (items[0].revents & ZMQ_POLLIN) worker_done = forward_worker(d->pair_main, router);
        if (!stopping && (items[1].revents & ZMQ_POLLIN)) {
            for (int k = 0; k < 64; k++) {
                inmsg_t m;
                if (recv_message(router, &m) < 0) break;
                handle_message(d, router, &m);
                inmsg_close(&m);
            }
        }
        if (stopping && clock_now_s() > stop_deadline) {
            log_warn("the worker did not finish within 60 s; exiting anyway");
            return RC_ERR_SHUTDOWN;
        }
    }
    return RC_OK;
}
