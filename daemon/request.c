/* request.c — the request table and the one reply path.
 *
 * Every request kind is one row of `kinds` below: the checks that need no model (its
 * decoder), the function that answers it, the thread that runs that function, what the
 * worker must bring in first, and how its response body goes into a Response. The main
 * loop (server.c) and the worker (work.c) both dispatch through this table and answer
 * through request_reply / request_error, which is where an rc_t becomes the client's
 * Status. Adding a request kind is adding a row here and its handler. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "common/clock.h"
#include "daemon/daemon.h"

/* ---- the reply path ------------------------------------------------------------------ */

/* Packs resp and sends it to route over sock (the ROUTER, or the worker's PAIR, whose
 * messages the main loop forwards unchanged). On the ROUTER the send never blocks: a
 * client that is not reading, or gone, loses the reply (server_reply_dropped). The PAIR
 * blocks when full, which holds the worker back until the main loop drains it. */
static int send_frames(daemon_t *d, void *sock, const route_t *route, Recall__Response *resp)
{
    const int nb = sock == d->pair_worker ? 0 : ZMQ_DONTWAIT;
    size_t n = recall__response__get_packed_size(resp);
    uint8_t stackbuf[4096];
    uint8_t *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
    if (!buf) return -1;
    recall__response__pack(resp, buf);
    int rc = zmq_send(sock, route->ident, route->ident_len, ZMQ_SNDMORE | nb);
    if (rc < 0 && nb) server_reply_dropped(d, route, errno);
    if (rc >= 0 && route->delim) rc = zmq_send(sock, "", 0, ZMQ_SNDMORE | nb);
    if (rc >= 0) rc = zmq_send(sock, buf, n, nb);
    if (buf != stackbuf) free(buf);
    return rc < 0 ? -1 : 0;
}

/* The one place an outcome becomes a Status: RC_OK is "ok" with resp's body; any other
 * code travels as itself (the wire's Status.code is rc_t) with msg and no body, and counts
 * in the daemon's errors. The last reply to an Ingest gives its credit back first, so a
 * client that sends its next chunk on the acknowledgement finds the room it was promised.
 * Takes mu only for an error or a credit, so a success may be sent under mu. */
static void reply_send(request_t *q, rc_t code, const char *msg, Recall__Response *resp)
{
    daemon_t *d = q->d;
    Recall__Status st = RECALL__STATUS__INIT;
    st.code = code;
    st.message = code ? (char *)msg : (char *)"ok";
    resp->id = q->id;
    resp->status = &st;
    if (code) {
        resp->body_case = RECALL__RESPONSE__BODY__NOT_SET;
        resp->more = 0;
    }
    if (code || ((q->credit || q->in_flight) && !resp->more)) {
        pthread_mutex_lock(&d->mu);
        if (code) d->errors++;
        if (q->credit && !resp->more) {
            q->sess->queued_ingest--;
            q->credit = 0;
        }
        /* The same for the client's requests in flight (limits.h): counted out before the
         * client can see the answer and send its next request. */
        if (q->in_flight && !resp->more) {
            limits_job_end(q->route.client);
            q->in_flight = 0;
        }
        pthread_mutex_unlock(&d->mu);
    }
    if (!resp->more)
        http_metrics_observe(&d->metrics, q->kind ? q->kind->body : 0, code,
                             q->route.t0 > 0 ? clock_now_s() - q->route.t0 : -1);
    send_frames(d, q->sock, &q->route, resp);
}

void request_reply(request_t *q, void *body, int more)
{
    Recall__Response resp = RECALL__RESPONSE__INIT;
    if (body) q->kind->put(&resp, body);
    resp.more = more;
    reply_send(q, RC_OK, NULL, &resp);
}

void request_progress(request_t *q, uint64_t done, uint64_t total)
{
    Recall__Response resp = RECALL__RESPONSE__INIT;
    Recall__Progress p = RECALL__PROGRESS__INIT;
    p.done = done;
    p.total = total;
    resp.more = 1;
    resp.body_case = RECALL__RESPONSE__BODY_PROGRESS;
    resp.progress = &p;
    reply_send(q, RC_OK, NULL, &resp);
}

void request_error(request_t *q, rc_t code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Recall__Response resp = RECALL__RESPONSE__INIT;
    reply_send(q, code, msg, &resp);
}

/* ---- decoders: what can be refused before any model work ------------------------------ */

static rc_t name_ok(const char *name, char *err, size_t errlen)
{
    const char *bad = session_name_problem(name);
    if (!bad[0]) return RC_OK;
    return rc_errf(RC_ERR_INVALID, err, errlen, "%s; %s", bad, SESSION_NAME_RULE);
}

static rc_t tokens_ok(const daemon_t *d, const int32_t *t, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++)
        if (t[i] < 0 || t[i] >= d->mc->vocab_size)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "token %d at index %zu is out of range [0, %d)", t[i], i,
                           d->mc->vocab_size);
    return RC_OK;
}

/* CreateSession, SessionInfo and DropSession: a session name is all there is to check
 * before their handlers look the session up. */
static rc_t decode_named(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                         size_t errlen)
{
    (void)d, (void)session;
    const char *name =
        req->body_case == RECALL__REQUEST__BODY_CREATE_SESSION ? req->create_session->session
        : req->body_case == RECALL__REQUEST__BODY_SESSION_INFO ? req->session_info->session
                                                               : req->drop_session->session;
    return name_ok(name, err, errlen);
}

/* The text is bounded by --max-frame-bytes only: nothing is stored, and a long prompt's
 * exact length is the point. */
static rc_t decode_tokenize(daemon_t *d, const Recall__Request *req, const char **session,
                            char *err, size_t errlen)
{
    (void)d, (void)session;
    const char *text = req->tokenize->text;
    size_t tl = strlen(text);
    if (tl && !utf8_valid(text, tl))
        return rc_errf(RC_ERR_INVALID, err, errlen, "the text to tokenize is not valid UTF-8");
    return RC_OK;
}

static rc_t decode_ingest(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                          size_t errlen)
{
    const Recall__IngestRequest *q = req->ingest;
    RC_TRY(name_ok(q->session, err, errlen));
    *session = q->session;
    size_t tl = strlen(q->text);
    if (tl && q->n_tokens)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "an Ingest chunk carries text or tokens, not both");
    if (tl > d->cfg.max_chunk_bytes || q->n_tokens * 4 > d->cfg.max_chunk_bytes)
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "the chunk is %zu bytes, over the limit of %zu bytes (--max-chunk-bytes); "
                       "send smaller chunks",
                       tl ? tl : q->n_tokens * 4, d->cfg.max_chunk_bytes);
    if (q->seq == 0) return rc_errf(RC_ERR_INVALID, err, errlen, "Ingest seq starts at 1 (got 0)");
    /* protobuf-c stops a string at its first NUL: compare with the wire length is not
     * possible here, so NULs simply end the text; UTF-8 is checked on what remains. */
    if (tl && !utf8_valid(q->text, tl))
        return rc_errf(RC_ERR_INVALID, err, errlen, "the chunk's text is not valid UTF-8");
    return tokens_ok(d, q->tokens, q->n_tokens, err, errlen);
}

static rc_t decode_ask(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                       size_t errlen)
{
    const Recall__AskRequest *q = req->ask;
    RC_TRY(name_ok(q->session, err, errlen));
    *session = q->session;
    size_t ql = strlen(q->question);
    if (ql && q->n_question_tokens)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "an Ask carries question text or tokens, not both");
    if (ql > d->cfg.max_chunk_bytes || q->n_question_tokens * 4 > d->cfg.max_chunk_bytes)
        return rc_errf(RC_ERR_LIMIT, err, errlen, "the question is over the limit of %zu bytes",
                       d->cfg.max_chunk_bytes);
    if (ql && !utf8_valid(q->question, ql))
        return rc_errf(RC_ERR_INVALID, err, errlen, "the question is not valid UTF-8");
    if (!(q->temperature >= 0) || !(q->top_p >= 0))
        return rc_errf(RC_ERR_INVALID, err, errlen, "temperature and top_p must be >= 0");
    RC_TRY(chat_ask_check(q, d->cfg.max_chunk_bytes, err, errlen)); /* stop strings, chat */
    RC_TRY(tokens_ok(d, q->question_tokens, q->n_question_tokens, err, errlen));
    return limits_check_ask(d, q, err, errlen);
}

/* Score takes a session (its stored tokens) or a text or tokens with options. */
static rc_t decode_score(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                         size_t errlen)
{
    const Recall__ScoreRequest *q = req->score;
    size_t tl = strlen(q->text);
    if (q->session[0]) {
        RC_TRY(name_ok(q->session, err, errlen));
        if (tl || q->n_tokens)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "Score takes a session, or a text, or tokens: only one of them");
        *session = q->session;
        return RC_OK;
    }
    if (tl && q->n_tokens)
        return rc_errf(RC_ERR_INVALID, err, errlen, "Score takes a text or tokens, not both");
    if (tl > d->cfg.max_chunk_bytes || q->n_tokens * 4 > d->cfg.max_chunk_bytes)
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "the text to score is over the limit of %zu bytes", d->cfg.max_chunk_bytes);
    if (tl && !utf8_valid(q->text, tl))
        return rc_errf(RC_ERR_INVALID, err, errlen, "the text to score is not valid UTF-8");
    RC_TRY(tokens_ok(d, q->tokens, q->n_tokens, err, errlen));
    model_stream_opts_t o;
    char oerr[512];
    Recall__SessionOptions want = session_opts_with_defaults(d, q->options);
    rc_t rc = session_opts_resolve(d, &want, &o, oerr, sizeof oerr);
    if (rc) return rc_errf(rc, err, errlen, "score options: %s", oerr);
    return RC_OK;
}

static rc_t decode_verify(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                          size_t errlen)
{
    (void)d;
    RC_TRY(name_ok(req->verify_session->session, err, errlen));
    *session = req->verify_session->session;
    return RC_OK;
}

/* ---- reply builders: a kind's body into the Response's oneof -------------------------- */

#define REPLY_BUILDER(field, CASE)                                                                 \
    static void put_##field(Recall__Response *r, void *body)                                       \
    {                                                                                              \
        r->body_case = RECALL__RESPONSE__BODY_##CASE;                                              \
        r->field = body;                                                                           \
    }
REPLY_BUILDER(create_session, CREATE_SESSION)
REPLY_BUILDER(ingest, INGEST)
REPLY_BUILDER(ask, ASK)
REPLY_BUILDER(score, SCORE)
REPLY_BUILDER(list_sessions, LIST_SESSIONS)
REPLY_BUILDER(session_info, SESSION_INFO)
REPLY_BUILDER(drop_session, DROP_SESSION)
REPLY_BUILDER(stats, STATS)
REPLY_BUILDER(health, HEALTH)
REPLY_BUILDER(tokenize, TOKENIZE)
REPLY_BUILDER(verify_session, VERIFY_SESSION)

/* ---- the table ----------------------------------------------------------------------- */

/* In the wire's field order (the unknown-body message lists them in this order). Tokenize
 * runs on the main thread: the tokenizer is const and thread-safe after load, so a client
 * measuring prompt lengths (recall passkey) gets its answer while the worker is busy. */
/* A row: the oneof field (its case in capitals and its wire name), the thread, the decoder,
 * the handler, then what a worker kind needs; the reply builder is the field's put_. */
#define KIND(CASE, field, THREAD, decode_fn, handle_fn, ...)                                       \
    {                                                                                              \
        .body = RECALL__REQUEST__BODY_##CASE, .name = #field, .thread = REQUEST_##THREAD,          \
        .decode = decode_fn, .handle = handle_fn, .put = put_##field, __VA_ARGS__                  \
    }

/* clang-format off */
static const request_kind_t kinds[] = {
    KIND(CREATE_SESSION, create_session, MAIN,   decode_named,    serve_create),
    KIND(INGEST,         ingest,         WORKER, decode_ingest,   work_ingest,
         .bring = BRING_ROWS, .credit = 1),
    KIND(ASK,            ask,            WORKER, decode_ask,      work_ask,   .bring = BRING_ROWS),
    KIND(SCORE,          score,          WORKER, decode_score,    work_score, .bring = BRING_TOKENS),
    KIND(LIST_SESSIONS,  list_sessions,  MAIN,   NULL,            serve_list),
    KIND(SESSION_INFO,   session_info,   MAIN,   decode_named,    serve_info),
    KIND(DROP_SESSION,   drop_session,   MAIN,   decode_named,    serve_drop),
    KIND(STATS,          stats,          MAIN,   NULL,            serve_stats),
    KIND(HEALTH,         health,         MAIN,   NULL,            serve_health),
    KIND(TOKENIZE,       tokenize,       MAIN,   decode_tokenize, serve_tokenize),
    /* Verify is wanted most on an unavailable session, and reads what it checks itself. */
    KIND(VERIFY_SESSION, verify_session, WORKER, decode_verify,   work_verify,
         .bring = BRING_NONE, .unavailable_ok = 1),
};
/* clang-format on */

const request_kind_t *request_kind_find(int body_case)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if ((int)kinds[i].body == body_case) return &kinds[i];
    return NULL;
}

void request_kind_names(char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? ", " : "", kinds[i].name);
}
