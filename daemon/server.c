/* server.c — the ZeroMQ loop: receive, check, answer quick requests, queue model work.
 *
 * What each request kind is checked with and where it runs is the request table
 * (request.c); this file holds the main thread's side: the loop, the frame checks, the
 * handlers of the quick kinds (serve_*) and the queue the worker takes jobs from.
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
#include "common/crash.h"
#include "common/log.h"
#include "daemon/daemon.h"

#ifdef RECALL_VERSION
#define RECALL_VERSION_STR RECALL_VERSION
#else
#define RECALL_VERSION_STR "unknown"
#endif

/* ---- quick requests (main thread) ---------------------------------------------------- */

void serve_create(request_t *q)
{
    daemon_t *d = q->d;
    const Recall__CreateSessionRequest *c = q->req->create_session;
    Recall__CreateSessionResponse cr = RECALL__CREATE_SESSION_RESPONSE__INIT;
    Recall__SessionInfo info;
    Recall__SessionOptions opts;
    model_stream_opts_t o;
    session_t *s = NULL;
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    char err[512] = "";
    rc_t rc;
    /* An existing session keeps its options, so with if_not_exists the ones given are not
     * checked: they may only make sense with the options it has (--nlist on a knn session
     * when the daemon's default memory is exact). The client compares them with the answer. */
    pthread_mutex_lock(&d->mu);
    session_t *old = session_find(d, c->session);
    if (!(old && c->if_not_exists)) {
        pthread_mutex_unlock(&d->mu);
        Recall__SessionOptions want = session_opts_with_defaults(d, c->options);
        rc = session_opts_resolve(d, &want, &o, err, sizeof err);
        if (rc) {
            request_error(q, rc, "session options: %s", err);
            return;
        }
        pthread_mutex_lock(&d->mu);
        old = session_find(d, c->session);
    }
    if (old && c->if_not_exists && !old->problem[0] && c->options && c->options->mem_dtype &&
        c->options->mem_dtype[0]) {
        /* The one option that may never differ on reuse: the rows are stored in it. */
        dtype_t want;
        if (dtype_parse_mem(c->options->mem_dtype, &want) == 0 &&
            want != old->opts.mem_dtype) {
            const dtype_t have = old->opts.mem_dtype;
            pthread_mutex_unlock(&d->mu);
            request_error(q, RC_ERR_INVALID,
                          "session '%s' stores its memory rows as %s and cannot change to %s "
                          "(drop the session and ingest again to change it)",
                          c->session, dtype_name(have), dtype_name(want));
            return;
        }
    }
    if (old && c->if_not_exists) {
        session_info_fill(old, &info, &opts);
        cr.info = &info;
        cr.created = 0;
        request_reply(q, &cr, 0); /* packed under mu: info points at live counters */
        pthread_mutex_unlock(&d->mu);
        return;
    }
    if (old) {
        pthread_mutex_unlock(&d->mu);
        request_error(q, RC_ERR_EXISTS,
                      "session '%s' already exists (set if_not_exists to reuse it)", c->session);
        return;
    }
    if ((int)d->n_sessions >= d->cfg.max_sessions) {
        pthread_mutex_unlock(&d->mu);
        request_error(q, RC_ERR_LIMIT,
                      "there are already %d sessions, the --max-sessions limit; drop one first",
                      d->cfg.max_sessions);
        return;
    }
    /* The creator's quotas (limits.h); only this thread creates sessions, so the count
     * cannot change before the insert below. */
    if (q->route.client && (rc = limits_check_create(d, q->route.client, err, sizeof err))) {
        pthread_mutex_unlock(&d->mu);
        request_error(q, rc, "cannot create session '%s': %s", c->session, err);
        return;
    }
    pthread_mutex_unlock(&d->mu);
    rc = session_new(d, c->session, &o, 0, &s);
    if (rc) {
        request_error(q, rc, "cannot create the session: %s", rc_strerror(rc));
        return;
    }
    /* Its owner goes into its record, so the quotas still hold after a restart. */
    snprintf(s->owner, sizeof s->owner, "%s",
             q->route.client ? q->route.client->name : CLIENT_LOCAL);
    /* The record's synced commit runs without mu (the worker publishes its chunks
     * meanwhile). Only this thread creates and drops sessions, so the name stays free
     * between the check above and the table insert below. */
    rc = session_record_pack(d, s, 0, 0, 0, 0, 0, &rec, &rec_len);
    memory_db_commit_t commit = {.session = s->name, .record = rec, .record_len = rec_len};
    if (!rc) rc = memory_db_commit(d->db, &commit, err, sizeof err);
    if (!rc) crash_point("create-committed"); /* durable, not yet listed nor acknowledged */
    pthread_mutex_lock(&d->mu);
    if (!rc) rc = session_table_add(d, s);
    if (rc) {
        pthread_mutex_unlock(&d->mu);
        /* A record committed but not listed is found by the next start (it is whole). */
        request_error(q, rc, "cannot store the new session: %s", err[0] ? err : rc_strerror(rc));
        goto fail;
    }
    s->disk_bytes = s->record_bytes = rec_len;
    session_info_fill(s, &info, &opts);
    cr.info = &info;
    cr.created = 1;
    request_reply(q, &cr, 0);
    pthread_mutex_unlock(&d->mu);
    log_info("created session '%s' (window %d) for client '%s'", s->name, s->window, s->owner);
    free(rec);
    return;
fail:
    free(rec);
    session_free(s);
}

/* Takes mu and finds the session; if there is none, lets go of mu, answers NOT_FOUND and
 * returns NULL. Otherwise returns it with mu held. */
static session_t *find_locked(request_t *q, const char *name)
{
    pthread_mutex_lock(&q->d->mu);
    session_t *s = session_find(q->d, name);
    if (!s) {
        pthread_mutex_unlock(&q->d->mu);
        request_error(q, RC_ERR_NOT_FOUND, "no session named '%s'", name);
    }
    return s;
}

void serve_info(request_t *q)
{
    daemon_t *d = q->d;
    session_t *s = find_locked(q, q->req->session_info->session);
    if (!s) return;
    Recall__SessionInfoResponse ir = RECALL__SESSION_INFO_RESPONSE__INIT;
    Recall__SessionInfo info;
    Recall__SessionOptions opts;
    session_info_fill(s, &info, &opts);
    ir.info = &info;
    request_reply(q, &ir, 0);
    pthread_mutex_unlock(&d->mu);
}

static int cmp_info(const void *a, const void *b)
{
    const Recall__SessionInfo *x = *(Recall__SessionInfo *const *)a;
    const Recall__SessionInfo *y = *(Recall__SessionInfo *const *)b;
    return strcmp(x->name, y->name);
}

void serve_list(request_t *q)
{
    daemon_t *d = q->d;
    pthread_mutex_lock(&d->mu);
    size_t n = d->n_sessions;
    Recall__SessionInfo *infos = calloc(n ? n : 1, sizeof *infos);
    Recall__SessionOptions *opts = calloc(n ? n : 1, sizeof *opts);
    Recall__SessionInfo **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (!infos || !opts || !ptrs) {
        pthread_mutex_unlock(&d->mu);
        request_error(q, RC_ERR_NOMEM, "out of memory listing sessions");
    } else {
        for (size_t i = 0; i < n; i++) {
            session_info_fill(d->sessions[i], &infos[i], &opts[i]);
            ptrs[i] = &infos[i];
        }
        qsort(ptrs, n, sizeof *ptrs, cmp_info);
        Recall__ListSessionsResponse lr = RECALL__LIST_SESSIONS_RESPONSE__INIT;
        lr.n_sessions = n;
        lr.sessions = ptrs;
        request_reply(q, &lr, 0);
        pthread_mutex_unlock(&d->mu);
    }
    free(infos);
    free(opts);
    free(ptrs);
}

/* Unlinks a dropped session's detached row files (dir, malloc'ed; taken) on a thread of
 * its own, so that the main loop answers the others meanwhile: for a large session that
 * takes seconds. Nothing waits for it; a daemon that stops first leaves the directory to
 * the next start-up's sweep (session_memory_sweep removes every detached one). When no
 * thread can be started it is done here. */
static void *remove_detached_main(void *arg)
{
    char *dir = arg, err[512];
    if (session_memory_remove_dir(dir, err, sizeof err))
        log_warn("the row files of a dropped session stay until the next start: %s", err);
    free(dir);
    return NULL;
}

static void remove_detached(char *dir)
{
    pthread_t t;
    if (pthread_create(&t, NULL, remove_detached_main, dir) == 0)
        pthread_detach(t);
    else
        remove_detached_main(dir);
}

void serve_drop(request_t *q)
{
    daemon_t *d = q->d;
    const char *name = q->req->drop_session->session;
    Recall__DropSessionResponse dr = RECALL__DROP_SESSION_RESPONSE__INIT;
    char err[512];
    session_t *to_free = NULL;
    session_t *s = find_locked(q, name);
    if (!s) return;
    /* No commit of s starts once `dropped` is set; one already on its way is waited for
     * (cv is broadcast when it ends), so the catalogue's delete below comes after it and
     * nothing of s is written after the delete. The wait is one commit at most, and only
     * when a Drop meets an Ingest of the same session. */
    s->dropped = 1;
    while (s->committing)
        pthread_cond_wait(&d->cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
    /* The catalogue's synced delete, without mu. */
    rc_t rc = memory_db_drop(d->db, s->name, err, sizeof err);
    if (!rc) crash_point("drop-committed"); /* gone from the catalogue, rows still in place */
    pthread_mutex_lock(&d->mu);
    if (rc && rc != RC_ERR_NOT_FOUND) {
        /* Still whole in the catalogue: it stays (jobs refused meanwhile said "dropped"). */
        s->dropped = 0;
        pthread_mutex_unlock(&d->mu);
        request_error(q, rc, "cannot drop session '%s': %s", name, err);
        return;
    }
    session_table_remove(d, s);
    session_unref_locked(d, s, &to_free);
    pthread_mutex_unlock(&d->mu);
    /* The catalogue no longer names it, so its row files are garbage now; a job still
     * reading them keeps its mapping (the pages live until it unmaps). They are moved
     * aside (one rename) before this handler returns, so a new session of the same name
     * (created by this thread only) starts clean; unlinking them takes a while for a large
     * session. Neither holds mu. A failure only leaves files that the next start-up sweeps
     * away. */
    char *detached = NULL;
    if (session_memory_detach_files(d->rows_root, name, &detached, err, sizeof err))
        log_warn("dropped session '%s', but its row files stay until the next start: %s", name,
                 err);
    if (detached) remove_detached(detached);
    log_info("dropped session '%s'", name);
    session_free(to_free);
    request_reply(q, &dr, 0);
}

void serve_stats(request_t *q)
{
    daemon_t *d = q->d;
    Recall__StatsResponse sr = RECALL__STATS_RESPONSE__INIT;
    sr.replies_dropped = __atomic_load_n(&d->replies_dropped, __ATOMIC_RELAXED);
    sr.auth_refused = auth_refused(d->auth);
    sr.limit_refused = __atomic_load_n(&d->limit_refused, __ATOMIC_RELAXED);
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
    sr.device = (char *)daemon_device_describe(d);
    sr.model = (char *)model_describe(d->model);
    request_reply(q, &sr, 0);
}

void serve_health(request_t *q)
{
    daemon_t *d = q->d;
    Recall__HealthResponse hr = RECALL__HEALTH_RESPONSE__INIT;
    hr.ok = 1;
    hr.version = (char *)RECALL_VERSION_STR;
    hr.model = (char *)model_describe(d->model);
    hr.device = (char *)daemon_device_describe(d);
    hr.ready = daemon_ready(d);
    request_reply(q, &hr, 0);
}

void serve_tokenize(request_t *q)
{
    daemon_t *d = q->d;
    const Recall__TokenizeRequest *t = q->req->tokenize;
    Recall__TokenizeResponse tr = RECALL__TOKENIZE_RESPONSE__INIT;
    int32_t *ids = NULL;
    size_t n = 0;
    int bos = tokenizer_bos_id(d->tok);
    rc_t rc = tokenizer_encode(d->tok, t->text, strlen(t->text), t->add_bos && bos >= 0, &ids, &n);
    if (rc) {
        request_error(q, rc, "cannot tokenize the text: %s", rc_strerror(rc));
        return;
    }
    tr.count = n;
    if (!t->count_only) {
        tr.tokens = ids;
        tr.n_tokens = n;
    }
    tr.bos_id = bos;
    tr.eos_id = tokenizer_eos_id(d->tok);
    request_reply(q, &tr, 0);
    free(ids);
}

/* ---- model work: the queue ----------------------------------------------------------- */

/* Queues q's request for the worker (taking ownership of req on success), with a reference
 * to its session and, for an Ingest, one of the session's credits. Returns 0, or fills err
 * and returns the code to answer with. */
static rc_t enqueue(daemon_t *d, request_t *q, Recall__Request *req, const char *session, char *err,
                    size_t errlen)
{
    const request_kind_t *k = q->kind;
    job_t *j = calloc(1, sizeof *j);
    if (!j) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory queueing the request");
    j->route = q->route;
    j->req = req;
    rc_t rc = RC_OK;
    pthread_mutex_lock(&d->mu);
    if (d->stopping) {
        rc = rc_errf(RC_ERR_SHUTDOWN, err, errlen, "the daemon is stopping");
        goto refuse;
    }
    if (d->queued >= DAEMON_QUEUE_MAX) {
        rc = rc_errf(RC_ERR_BUSY, err, errlen, "the work queue is full (%d requests); retry later",
                     DAEMON_QUEUE_MAX);
        goto refuse;
    }
    session_t *s = NULL;
    if (session) {
        s = session_find(d, session);
        if (!s) {
            rc = rc_errf(RC_ERR_NOT_FOUND, err, errlen, "no session named '%s'", session);
            goto refuse;
        }
        if (s->problem[0] && !k->unavailable_ok) {
            rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                         "session '%s' is unavailable: %s (recall verify %s checks it again; "
                         "recall drop %s removes it)",
                         session, s->problem, session, session);
            goto refuse;
        }
        if (k->credit && s->queued_ingest >= DAEMON_CREDIT) {
            rc = rc_errf(RC_ERR_BUSY, err, errlen,
                         "session '%s' already has %d unacknowledged Ingest chunks (the credit); "
                         "wait for acknowledgements",
                         session, DAEMON_CREDIT);
            goto refuse;
        }
    }
    /* Last, so that nothing after it can refuse: the client's requests in flight (counted
     * out by its final reply, request.c). */
    if (q->route.client && (rc = limits_job_begin(d, q->route.client, err, errlen))) goto refuse;
    if (s) {
        s->refs++;
        if (k->credit) s->queued_ingest++;
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
    return RC_OK;
refuse:
    pthread_mutex_unlock(&d->mu);
    free(j);
    return rc;
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

static int recv_message(daemon_t *d, void *router, inmsg_t *m)
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
    m->route.t0 = clock_now_s();
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
        /* Who sent it: the name the ZAP handler gave the connection's CURVE key (auth.h),
         * carried on every frame; none without CURVE ("local"). */
        if (m->nparts == 0) m->route.client = limits_client(d->limits, zmq_msg_gets(&p, "User-Id"));
        m->total_bytes += zmq_msg_size(&p);
        if (m->nparts < 3)
            m->parts[m->nparts] = p;
        else
            zmq_msg_close(&p);
        m->nparts++;
    }
    return 0;
}

/* Request.id from the start of an encoded Request (field 1, varint: tag 0x08), or 0. */
static uint64_t peek_id(const uint8_t *p, size_t n)
{
    if (n < 2 || p[0] != 0x08) return 0;
    uint64_t v = 0;
    for (size_t i = 1; i < n && i <= 10; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * (i - 1));
        if (!(p[i] & 0x80)) return v;
    }
    return 0;
}

/* Checks the frame, decodes the request, runs its kind's decoder, then answers it here or
 * queues it for the worker, as its row of the request table says. */
static void handle_message(daemon_t *d, void *router, inmsg_t *m)
{
    pthread_mutex_lock(&d->mu);
    d->requests++;
    pthread_mutex_unlock(&d->mu);
    request_t q = {.d = d, .sock = router, .id = 0};
    zmq_msg_t *payload = NULL;
    /* A REQ peer puts an empty delimiter frame before its message: answer in kind. */
    if (m->nparts >= 1 && zmq_msg_size(&m->parts[0]) == 0 && m->nparts == 2) {
        m->route.delim = 1;
        payload = &m->parts[1];
    } else if (m->nparts == 1) {
        payload = &m->parts[0];
    }
    q.route = m->route;
    if (!payload) {
        request_error(&q, RC_ERR_FORMAT,
                      "a request is exactly one ZeroMQ frame holding a recall.Request; got %d "
                      "frames",
                      m->nparts);
        return;
    }
    size_t n = zmq_msg_size(payload);
    if (n > d->cfg.max_frame_bytes) {
        /* Not decoded (that is the point of the limit), but the answer carries the request's
         * id when it is where every protobuf encoder puts it, first: clients wait for
         * answers by id, and would otherwise wait out their timeout. */
        q.id = peek_id((const uint8_t *)zmq_msg_data(payload), n);
        __atomic_add_fetch(&d->limit_refused, 1, __ATOMIC_RELAXED);
        request_error(&q, RC_ERR_LIMIT,
                      "the request is %zu bytes, over the limit of %zu bytes "
                      "(--max-message-bytes)",
                      n, d->cfg.max_frame_bytes);
        return;
    }
    Recall__Request *req = recall__request__unpack(NULL, n, (const uint8_t *)zmq_msg_data(payload));
    if (!req) {
        request_error(&q, RC_ERR_FORMAT,
                      "malformed request: %zu bytes that do not decode as a recall.Request "
                      "protobuf",
                      n);
        return;
    }
    q.id = req->id;
    q.req = req;
    q.kind = request_kind_find((int)req->body_case);
    char err[1024];
    const char *session = NULL;
    rc_t rc = RC_OK;
    if (!q.kind) {
        char names[256];
        request_kind_names(names, sizeof names);
        request_error(&q, RC_ERR_FORMAT,
                      "request %llu has no body (or one this daemon does not know); set one of %s",
                      (unsigned long long)q.id, names);
    } else if (q.kind->decode && (rc = q.kind->decode(d, req, &session, err, sizeof err))) {
        request_error(&q, rc, "%s", err);
    } else if (q.kind->thread == REQUEST_MAIN) {
        q.kind->handle(&q);
    } else if ((rc = enqueue(d, &q, req, session, err, sizeof err))) {
        request_error(&q, rc, "%s", err);
    } else {
        return; /* the job owns req now */
    }
    recall__request__free_unpacked(req, NULL);
}

/* ---- slow clients -------------------------------------------------------------------- */

/* Every send to the ROUTER is non-blocking with ZMQ_ROUTER_MANDATORY on: a client whose
 * queue in the daemon is full (SERVER_CLIENT_QUEUE replies, its ZMQ_SNDHWM, after the
 * kernel's socket buffers filled: it stopped reading) or that is gone fails the send at
 * once instead of blocking the loop, and the reply is discarded here. Without MANDATORY
 * ZeroMQ would discard it silently; blocking would stall every other client behind one.
 * What a stalled client costs the daemon is bounded: SERVER_CLIENT_QUEUE replies plus the
 * socket's kernel send buffer (net.ipv4.tcp_wmem's maximum, 4 MiB by default). */
void server_reply_dropped(daemon_t *d, const route_t *route, int errno_val)
{
    uint64_t n = __atomic_add_fetch(&d->replies_dropped, 1, __ATOMIC_RELAXED);
    double now = clock_now_s();
    if (now - d->stalled_logged >= 1.0) {
        d->stalled_logged = now;
        log_warn("a reply was discarded: %s (%llu discarded so far)",
                 errno_val == EAGAIN ? "the client is not reading (its queue is full)"
                                     : "the client is gone",
                 (unsigned long long)n);
    }
    d->stalled = *route;
    d->stalled_pending = 1;
}

/* After the loop's turn, with no lock held: a discarded reply that belonged to the
 * worker's running job aborts it (work.c checks job_abort between tokens). */
static void abort_stalled_job(daemon_t *d)
{
    if (!d->stalled_pending) return;
    d->stalled_pending = 0;
    pthread_mutex_lock(&d->mu);
    const route_t *a = &d->stalled, *b = &d->job_route;
    if (d->job_running && a->ident_len == b->ident_len &&
        memcmp(a->ident, b->ident, a->ident_len) == 0)
        d->job_abort = 1;
    pthread_mutex_unlock(&d->mu);
}

/* Forwards whatever the worker has produced. A message the ROUTER refuses is read to its
 * end from the pipe and discarded. Returns 1 once the worker said it is done. */
static int forward_worker(daemon_t *d, void *pair, void *router)
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
        /* The first frame is the client's identity: the send that can fail. */
        route_t r = {.ident_len = zmq_msg_size(&f) < sizeof r.ident ? zmq_msg_size(&f) : 0};
        memcpy(r.ident, zmq_msg_data(&f), r.ident_len);
        int dropping = 0;
        for (;;) {
            if (!dropping &&
                zmq_msg_send(&f, router, (more ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
                dropping = 1;
                server_reply_dropped(d, &r, errno);
            }
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
    /* Slow clients (above); main.c set the queue's length (SNDHWM) before binding. */
    int mandatory = 1;
    if (zmq_setsockopt(router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) != 0) {
        log_error("cannot set the ROUTER's send options: %s", zmq_strerror(errno));
        return RC_ERR_IO;
    }
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
        if (items[0].revents & ZMQ_POLLIN) worker_done = forward_worker(d, d->pair_main, router);
        if (!stopping && (items[1].revents & ZMQ_POLLIN)) {
            for (int k = 0; k < 64; k++) {
                inmsg_t m;
                if (recv_message(d, router, &m) < 0) break;
                handle_message(d, router, &m);
                inmsg_close(&m);
            }
        }
        abort_stalled_job(d);
        if (stopping && clock_now_s() > stop_deadline) {
            log_warn("the worker did not finish within 60 s; exiting anyway");
            return RC_ERR_SHUTDOWN;
        }
    }
    pthread_mutex_lock(&d->mu);
    if (d->commits)
        log_info("%llu durable appends: %.2f s committing (fsync and LMDB) of %.2f s appending",
                 (unsigned long long)d->commits, d->commit_seconds, d->append_seconds);
    pthread_mutex_unlock(&d->mu);
    return RC_OK;
}
