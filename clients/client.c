/* client.c — the DEALER side of recall's RPC: see client.h for the contract. */
#include "clients/client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "common/clock.h"

struct recall_client {
    void *ctx;
    void *sock;
    void *monitor; /* handshake failures of sock, read when a send times out (PAIR) */
    int curve;     /* connecting with CURVE keys */
    char *endpoint;
    uint64_t next_id;
    int timeout_ms;
    int connect_timeout_ms;
    char err[512];
    int err_remote;
};

static _Thread_local char create_err[512];

void recall_client_set_error(recall_client *c, const char *fmt, ...)
{
    va_list ap;
    c->err_remote = 0;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

/* Ids start at a random point so that two clients sharing nothing (or one client run
 * twice against a daemon that still holds an old answer) never reuse each other's ids. */
static uint64_t first_id(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    /* splitmix64 finaliser; keep it well below 2^53 so JSON tools show it exactly. */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (x & ((1ull << 48) - 1)) + 1;
}

rc_t recall_client_create(const char *endpoint, recall_client **out, const char **err_out)
{
    return recall_client_create_curve(endpoint, NULL, out, err_out);
}

rc_t recall_client_curve_load(const char *keys_path, const char *server_key_path,
                              recall_client_curve *out, int *have, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    *have = 0;
    if (!keys_path || !*keys_path) keys_path = getenv("RECALL_CURVE_KEYS");
    if (!server_key_path || !*server_key_path) server_key_path = getenv("RECALL_SERVER_KEY");
    if (keys_path && !*keys_path) keys_path = NULL;
    if (server_key_path && !*server_key_path) server_key_path = NULL;
    if (!keys_path && !server_key_path) return RC_OK;
    if (!keys_path || !server_key_path)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "CURVE needs both this client's keys (--curve-keys or RECALL_CURVE_KEYS) "
                       "and the daemon's public key (--server-key or RECALL_SERVER_KEY)");
    recall_keypair server;
    RC_TRY(recall_keys_read(keys_path, 1, &out->client, err, errlen));
    RC_TRY(recall_keys_read(server_key_path, 0, &server, err, errlen));
    memcpy(out->server_public, server.public_key, sizeof out->server_public);
    *have = 1;
    return RC_OK;
}

rc_t recall_client_create_curve(const char *endpoint, const recall_client_curve *curve,
                                recall_client **out, const char **err_out)
{
    *out = NULL;
    create_err[0] = 0;
    if (err_out) *err_out = create_err;
    if (!endpoint || (strncmp(endpoint, "tcp://", 6) && strncmp(endpoint, "ipc://", 6))) {
        snprintf(create_err, sizeof create_err,
                 "bad endpoint '%s': expected tcp://HOST:PORT or ipc://PATH",
                 endpoint ? endpoint : "(null)");
        return RC_ERR_INVALID;
    }
    if (curve && !zmq_has("curve")) {
        snprintf(create_err, sizeof create_err,
                 "CURVE keys were given but this libzmq was built without CURVE");
        return RC_ERR_UNSUPPORTED;
    }
    recall_client *c = calloc(1, sizeof *c);
    if (!c) return RC_ERR_NOMEM;
    rc_t rc = RC_ERR_IO;
    c->endpoint = strdup(endpoint);
    if (!c->endpoint) {
        rc = RC_ERR_NOMEM;
        goto fail;
    }
    c->timeout_ms = RECALL_CLIENT_DEFAULT_TIMEOUT_MS;
    c->connect_timeout_ms = RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS;
    c->next_id = first_id();
    c->ctx = zmq_ctx_new();
    if (!c->ctx) goto fail;
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock) goto fail;
    int zero = 0, one = 1;
    /* LINGER 0: a CLI killed by a timeout must exit at once, not flush to a dead peer.
     * IMMEDIATE: queue only to a completed connection, so a send to a dead endpoint
     * times out (ZMQ_SNDTIMEO) instead of sitting in a queue forever. */
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &one, sizeof one);
    int max_ivl = 1000;
    zmq_setsockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, &max_ivl, sizeof max_ivl);
    if (curve) {
        /* Z85 keys are set as 41 bytes (40 characters and the NUL). */
        c->curve = 1;
        if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, curve->server_public, 41) ||
            zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, curve->client.public_key, 41) ||
            zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, curve->client.secret_key, 41)) {
            snprintf(create_err, sizeof create_err, "cannot set the CURVE keys: %s",
                     zmq_strerror(zmq_errno()));
            rc = RC_ERR_INVALID;
            goto fail;
        }
    }
    /* A refused handshake looks like a dead endpoint to a send (nothing connects); the
     * monitor says which it was. Its PAIR is connected before the socket connects, so no
     * event is lost. */
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://recall-client-monitor-%p", (void *)c);
    if (zmq_socket_monitor(c->sock, mon,
                           ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0 &&
        (c->monitor = zmq_socket(c->ctx, ZMQ_PAIR)) != NULL) {
        zmq_setsockopt(c->monitor, ZMQ_LINGER, &zero, sizeof zero);
        if (zmq_connect(c->monitor, mon) != 0) {
            zmq_close(c->monitor);
            c->monitor = NULL;
        }
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        snprintf(create_err, sizeof create_err, "cannot connect to '%s': %s", endpoint,
                 zmq_strerror(zmq_errno()));
        rc = RC_ERR_INVALID; /* zmq_connect only fails synchronously on a bad address */
        goto fail;
    }
    *out = c;
    return RC_OK;
fail:
    if (rc == RC_ERR_IO && !create_err[0])
        snprintf(create_err, sizeof create_err, "cannot create a ZeroMQ socket: %s",
                 zmq_strerror(zmq_errno()));
    recall_client_destroy(&c);
    return rc;
}

void recall_client_destroy(recall_client **cp)
{
    if (!cp || !*cp) return;
    recall_client *c = *cp;
    if (c->monitor) zmq_close(c->monitor);
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    free(c->endpoint);
    free(c);
    *cp = NULL;
}

void recall_client_set_timeout(recall_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

void recall_client_set_connect_timeout(recall_client *c, int timeout_ms)
{
    c->connect_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

const char *recall_client_endpoint(const recall_client *c)
{
    return c->endpoint;
}
const char *recall_client_error(const recall_client *c)
{
    return c->err;
}
int recall_client_error_remote(const recall_client *c)
{
    return c->err_remote;
}

static void fmt_seconds(char *buf, size_t n, int ms)
{
    if (ms % 1000 == 0)
        snprintf(buf, n, "%d s", ms / 1000);
    else
        snprintf(buf, n, "%.1f s", ms / 1000.0);
}

/* After a send timed out: if the monitor saw a handshake fail, sets the client error to
 * what it means and returns 1; else 0 (nobody answered at all). */
static int handshake_error(recall_client *c)
{
    int event = 0, best = 0;
    uint32_t value = 0;
    while (c->monitor) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        /* Frame 1: uint16 event, uint32 value; frame 2: the endpoint. The one that says
         * most counts: a refused key, then a mechanism mismatch, then any other (a refused
         * peer's retries also end in resets that say nothing). */
        if (zmq_msg_size(&m) == 6) {
            uint16_t ev;
            uint32_t v;
            memcpy(&ev, zmq_msg_data(&m), 2);
            memcpy(&v, (uint8_t *)zmq_msg_data(&m) + 2, 4);
            int rank = ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? 3
                       : ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                               v == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                           ? 2
                           : 1;
            if (rank >= best) {
                best = rank;
                event = ev;
                value = v;
            }
        }
        zmq_msg_close(&m);
    }
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        recall_client_set_error(c,
                                "recalld at %s refused this client's CURVE key (code %u): its "
                                "public key is not in the daemon's --allow file",
                                c->endpoint, value);
    } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
               value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
        if (c->curve)
            recall_client_set_error(c,
                                    "recalld at %s does not use CURVE authentication: connect "
                                    "without --curve-keys / --server-key",
                                    c->endpoint);
        else
            recall_client_set_error(c,
                                    "recalld at %s requires CURVE authentication: give "
                                    "--curve-keys FILE and --server-key FILE (or set "
                                    "RECALL_CURVE_KEYS and RECALL_SERVER_KEY); recall keygen "
                                    "DIR makes a key pair",
                                    c->endpoint);
    } else if (event && c->curve) {
        recall_client_set_error(c,
                                "the CURVE handshake with %s failed (is --server-key the "
                                "daemon's public key?)",
                                c->endpoint);
    } else if (event) {
        /* The daemon's side of a mismatch may close before this side has read its greeting:
         * then all that is seen here is a reset. Without keys, CURVE is the likely cause. */
        recall_client_set_error(c,
                                "recalld at %s dropped the connection in its handshake: it "
                                "likely requires CURVE authentication (give --curve-keys FILE "
                                "and --server-key FILE, or set RECALL_CURVE_KEYS and "
                                "RECALL_SERVER_KEY)",
                                c->endpoint);
    } else {
        return 0;
    }
    return 1;
}

rc_t recall_client_send(recall_client *c, Recall__Request *req, uint64_t *id_out)
{
    c->err[0] = 0;
    c->err_remote = 0;
    req->id = c->next_id++;
    if (id_out) *id_out = req->id;
    size_t n = recall__request__get_packed_size(req);
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, n) != 0) return RC_ERR_NOMEM;
    recall__request__pack(req, zmq_msg_data(&msg));
    zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &c->connect_timeout_ms, sizeof c->connect_timeout_ms);
    for (;;) {
        if (zmq_msg_send(&msg, c->sock, 0) >= 0) return RC_OK;
        if (zmq_errno() == EINTR) continue;
        int e = zmq_errno();
        zmq_msg_close(&msg);
        if (e == EAGAIN) {
            char t[32];
            fmt_seconds(t, sizeof t, c->connect_timeout_ms);
            if (!handshake_error(c))
                recall_client_set_error(c, "cannot connect to %s within %s (is recalld running?)",
                                        c->endpoint, t);
        } else {
            recall_client_set_error(c, "cannot send to %s: %s", c->endpoint, zmq_strerror(e));
        }
        return RC_ERR_IO;
    }
}

rc_t recall_client_recv(recall_client *c, const uint64_t *ids, int n_ids, Recall__Response **out)
{
    *out = NULL;
    c->err[0] = 0;
    c->err_remote = 0;
    /* The timeout is for the next *matching* response: stale answers must not extend it. */
    double deadline = c->timeout_ms > 0 ? clock_now_s() * 1e3 + c->timeout_ms : 0;
    for (;;) {
        int wait = -1;
        if (c->timeout_ms > 0) {
            double left = deadline - clock_now_s() * 1e3;
            wait = left > 0 ? (int)left + 1 : 0;
        }
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        int n = zmq_poll(&item, 1, wait);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            recall_client_set_error(c, "cannot receive from %s: %s", c->endpoint,
                                    zmq_strerror(zmq_errno()));
            return RC_ERR_IO;
        }
        if (n == 0) {
            char t[32];
            fmt_seconds(t, sizeof t, c->timeout_ms);
            recall_client_set_error(c, "no answer from %s within %s (is recalld running?)",
                                    c->endpoint, t);
            return RC_ERR_IO;
        }
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            if (zmq_errno() == EAGAIN || zmq_errno() == EINTR) continue;
            recall_client_set_error(c, "cannot receive from %s: %s", c->endpoint,
                                    zmq_strerror(zmq_errno()));
            return RC_ERR_IO;
        }
        int more_frames = zmq_msg_more(&msg);
        Recall__Response *r =
            recall__response__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
        zmq_msg_close(&msg);
        /* The protocol is one frame per message; drain any extra frames of a bad peer. */
        while (more_frames) {
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, c->sock, 0) < 0)
                more_frames = 0;
            else
                more_frames = zmq_msg_more(&msg);
            zmq_msg_close(&msg);
        }
        if (!r) {
            recall_client_set_error(c, "malformed response from %s (not a recall.Response)",
                                    c->endpoint);
            return RC_ERR_FORMAT;
        }
        for (int i = 0; i < n_ids; i++) {
            if (r->id == ids[i]) {
                *out = r;
                return RC_OK;
            }
        }
        recall__response__free_unpacked(r, NULL); /* stale: an abandoned request's answer */
    }
}

/* A code outside rc_t's range would confuse callers that map codes to exit statuses, so it
 * is reported as an internal error with the daemon's message kept. */
rc_t recall_client_status(recall_client *c, const Recall__Response *r)
{
    if (!r->status || r->status->code == 0) return RC_OK;
    int code = r->status->code;
    const char *msg =
        r->status->message && r->status->message[0] ? r->status->message : rc_strerror((rc_t)code);
    recall_client_set_error(c, "%s", msg);
    c->err_remote = 1;
    if (code > 0 || code < RC_ERR_UNAVAILABLE) return RC_ERR_INTERNAL;
    return (rc_t)code;
}

rc_t recall_client_call(recall_client *c, Recall__Request *req, Recall__Response **out,
                        recall_client_cb on_more, void *arg)
{
    *out = NULL;
    uint64_t id;
    rc_t rc = recall_client_send(c, req, &id);
    if (rc) return rc;
    for (;;) {
        Recall__Response *r;
        rc = recall_client_recv(c, &id, 1, &r);
        if (rc) return rc;
        rc = recall_client_status(c, r);
        if (rc) {
            recall__response__free_unpacked(r, NULL);
            return rc;
        }
        if (!r->more) {
            *out = r;
            return RC_OK;
        }
        if (on_more) rc = on_more(r, arg);
        recall__response__free_unpacked(r, NULL);
        if (rc) return rc;
    }
}

rc_t recall_client_stream(recall_client *c, Recall__Request *req, recall_client_cb cb, void *arg)
{
    uint64_t id;
    rc_t rc = recall_client_send(c, req, &id);
    if (rc) return rc;
    for (;;) {
        Recall__Response *r;
        rc = recall_client_recv(c, &id, 1, &r);
        if (rc) return rc;
        rc = recall_client_status(c, r);
        int more = r->more;
        if (!rc) rc = cb(r, arg);
        recall__response__free_unpacked(r, NULL);
        if (rc || !more) return rc;
    }
}

rc_t recall_client_create_session(recall_client *c, const char *name,
                                  const Recall__SessionOptions *opts,
                                  int if_not_exists, Recall__Response **out)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
    cs.session = (char *)name;
    cs.options = (Recall__SessionOptions *)opts;
    cs.if_not_exists = if_not_exists != 0;
    req.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
    req.create_session = &cs;
    return recall_client_call(c, &req, out, NULL, NULL);
}

rc_t recall_client_drop(recall_client *c, const char *name)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__DropSessionRequest dr = RECALL__DROP_SESSION_REQUEST__INIT;
    dr.session = (char *)name;
    req.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
    req.drop_session = &dr;
    Recall__Response *r;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (!rc) recall__response__free_unpacked(r, NULL);
    return rc;
}
