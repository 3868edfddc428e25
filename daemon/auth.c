/* auth.c — CURVE authentication for recalld: the allow-list and the ZAP handler (auth.h).
 *
 * The handler is the ZAP server of RFC 27: libzmq sends it one request per CURVE
 * handshake on the ROUTER (version, request id, domain, peer address, routing id,
 * mechanism, the client's 32-byte public key) and waits for the verdict (200 with a user
 * id, or 400). It answers from a sorted table of keys, so a verdict costs a Z85 encoding
 * and a binary search. The same thread reads the ROUTER's monitor, where handshakes that
 * never reached the handler show up. */
#include "daemon/auth.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/daemon.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MONITOR_ENDPOINT "inproc://recalld-auth-monitor"

typedef struct allowed {
    char key[RECALL_KEY_Z85_LEN + 1];
    char name[CLIENT_NAME_MAX + 1];
} allowed_t;

struct auth {
    recall_keypair server;       /* the daemon's keys */
    recall_client_curve gateway; /* the HTTP gateway's pair, and the server's public key */
    allowed_t *allowed;          /* [n_allowed] sorted by key; the gateway's among them */
    size_t n_allowed, n_listed;  /* n_listed: from the file (n_allowed less the gateway) */
    void *zap, *monitor;         /* REP on ZAP_ENDPOINT; PAIR on the ROUTER's monitor */
    pthread_t thread;
    int started;
    int stop;          /* atomic */
    uint64_t refused;  /* atomic */
    double logged_at;  /* handler thread only: the last refusal logged */
    uint64_t unlogged; /* refusals since then, not logged */
};

static int cmp_allowed(const void *a, const void *b)
{
    return strcmp(((const allowed_t *)a)->key, ((const allowed_t *)b)->key);
}

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > CLIENT_NAME_MAX) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-' || *p == '@'))
            return 0;
    return 1;
}

static rc_t read_allow(auth_t *a, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot read the --allow file %s: %s", path,
                       strerror(errno));
    char line[1024];
    int lineno = 0;
    size_t cap = 0;
    rc_t rc = RC_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        p[strcspn(p, "\r\n")] = 0;
        if (!*p || *p == '#') continue;
        /* KEY [NAME] [# comment]: split on blanks ('#' may be inside a key). */
        char *key = strtok(p, " \t");
        char *name = strtok(NULL, " \t");
        char *extra = strtok(NULL, " \t");
        if (name && name[0] == '#') name = extra = NULL;
        if (extra && extra[0] != '#') {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                         "--allow file %s, line %d: expected a public key and a name, got more",
                         path, lineno);
            break;
        }
        if (!recall_keys_valid(key)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                         "--allow file %s, line %d: '%.60s' is not a 40-character Z85 public key "
                         "(the one in a client's .pub file)",
                         path, lineno, key);
            break;
        }
        if (name && (!name_ok(name) || !strcmp(name, CLIENT_LOCAL) || !strcmp(name, CLIENT_HTTP))) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                         "--allow file %s, line %d: bad name '%.80s': up to %d letters, digits, "
                         "'.', '_', '-' or '@', and not '%s' or '%s' (kept for clients without "
                         "a key and the HTTP gateway)",
                         path, lineno, name, CLIENT_NAME_MAX, CLIENT_LOCAL, CLIENT_HTTP);
            break;
        }
        if (a->n_allowed + 2 > cap) {
            cap = cap ? cap * 2 : 16;
            allowed_t *na = realloc(a->allowed, cap * sizeof *na);
            if (!na) {
                rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory reading %s", path);
                break;
            }
            a->allowed = na;
        }
        allowed_t *e = &a->allowed[a->n_allowed++];
        snprintf(e->key, sizeof e->key, "%s", key);
        snprintf(e->name, sizeof e->name, "%s", name ? name : key);
    }
    fclose(f);
    a->n_listed = a->n_allowed;
    return rc;
}

rc_t auth_create(const char *secret_path, const char *allow_path, auth_t **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    if (!zmq_has("curve"))
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "--curve-secret: this libzmq was built without CURVE (libsodium), so "
                       "recalld cannot authenticate clients; install a libzmq with CURVE");
    auth_t *a = calloc(1, sizeof *a);
    if (!a) return RC_ERR_NOMEM;
    char kerr[768];
    rc_t rc = recall_keys_read(secret_path, 1, &a->server, kerr, sizeof kerr);
    if (rc) {
        rc_errf(rc, err, errlen, "--curve-secret: %s", kerr);
        goto fail;
    }
    if ((rc = read_allow(a, allow_path, err, errlen))) goto fail;
    /* The gateway's pair: made here, never written anywhere. Room for it was kept. */
    if (!a->allowed && !(a->allowed = calloc(1, sizeof *a->allowed))) {
        rc = RC_ERR_NOMEM;
        goto fail;
    }
    if (zmq_curve_keypair(a->gateway.client.public_key, a->gateway.client.secret_key) != 0) {
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot make the HTTP gateway's key pair: %s",
                     zmq_strerror(zmq_errno()));
        goto fail;
    }
    memcpy(a->gateway.server_public, a->server.public_key, sizeof a->gateway.server_public);
    allowed_t *g = &a->allowed[a->n_allowed++];
    snprintf(g->key, sizeof g->key, "%s", a->gateway.client.public_key);
    snprintf(g->name, sizeof g->name, "%s", CLIENT_HTTP);
    qsort(a->allowed, a->n_allowed, sizeof *a->allowed, cmp_allowed);
    for (size_t i = 1; i < a->n_allowed; i++)
        if (!strcmp(a->allowed[i - 1].key, a->allowed[i].key)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen, "--allow file %s lists the key %s twice",
                         allow_path, a->allowed[i].key);
            goto fail;
        }
    *out = a;
    return RC_OK;
fail:
    auth_destroy(&a);
    return rc;
}

/* ---- the handler thread -------------------------------------------------------------- */

/* Counts a refusal and logs it, at most once a second (a client retrying every 100 ms
 * must not flood the log): what happened this time, and how many went unlogged. */
static void refused(auth_t *a, const char *what)
{
    uint64_t n = __atomic_add_fetch(&a->refused, 1, __ATOMIC_RELAXED);
    double now = clock_now_s();
    if (now - a->logged_at < 1.0) {
        a->unlogged++;
        return;
    }
    if (a->unlogged)
        log_warn("refused %s (%llu refused since start; %llu more since the last line)", what,
                 (unsigned long long)n, (unsigned long long)a->unlogged);
    else
        log_warn("refused %s (%llu refused since start)", what, (unsigned long long)n);
    a->logged_at = now;
    a->unlogged = 0;
}

/* Receives the frames of one message into f (up to nmax, each at most fmax-1 bytes kept,
 * NUL-terminated; lens[] the true sizes). Returns the frame count, or -1. */
static int recv_frames(void *s, char f[][256], size_t *lens, int nmax)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        if (n < nmax) {
            size_t l = zmq_msg_size(&m);
            lens[n] = l;
            if (l > 255) l = 255;
            memcpy(f[n], zmq_msg_data(&m), l);
            f[n][l] = 0;
        }
        n++;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return n;
}

/* One ZAP request, one reply: 200 and the key's name for a listed key, 400 otherwise. */
static void zap_answer(auth_t *a)
{
    char f[8][256];
    size_t lens[8] = {0};
    int n = recv_frames(a->zap, f, lens, 8);
    if (n < 0) return;
    /* version, request id, domain, address, routing id, mechanism, credentials... */
    const char *status = "400", *text = "not allowed", *user = "";
    char key[RECALL_KEY_Z85_LEN + 1] = "", what[512];
    if (n >= 7 && !strcmp(f[0], "1.0") && !strcmp(f[5], "CURVE") && lens[6] == 32 &&
        zmq_z85_encode(key, (const uint8_t *)f[6], 32)) {
        allowed_t want, *hit;
        memcpy(want.key, key, sizeof want.key);
        hit = bsearch(&want, a->allowed, a->n_allowed, sizeof *a->allowed, cmp_allowed);
        if (hit) {
            status = "200";
            text = "OK";
            user = hit->name;
        }
    }
    /* The reply echoes the version and request id; an empty metadata frame ends it. */
    zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(a->zap, n >= 2 ? f[1] : "", n >= 2 ? (lens[1] < 255 ? lens[1] : 255) : 0, ZMQ_SNDMORE);
    zmq_send(a->zap, status, 3, ZMQ_SNDMORE);
    zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(a->zap, "", 0, 0);
    if (status[0] != '2') {
        snprintf(what, sizeof what, "a client from %s: %s%s%s", n >= 4 && f[3][0] ? f[3] : "?",
                 key[0] ? "its key " : "not a CURVE handshake", key,
                 key[0] ? " is not in --allow" : "");
        refused(a, what);
    }
}

/* One monitor event. Refusals by the handler (HANDSHAKE_FAILED_AUTH) were counted there;
 * the rest never reached it. */
static void monitor_event(auth_t *a)
{
    char f[2][256];
    size_t lens[2] = {0};
    int n = recv_frames(a->monitor, f, lens, 2);
    if (n < 1 || lens[0] != 6) return;
    uint16_t ev;
    uint32_t value;
    memcpy(&ev, f[0], 2);
    memcpy(&value, f[0] + 2, 4);
    if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
        value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        refused(a, "a client without CURVE (recalld requires CURVE keys)");
    else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ||
             ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        refused(a, "a client whose handshake failed (a wrong --server-key, or not ZeroMQ)");
}

static void *auth_main(void *arg)
{
    auth_t *a = arg;
    while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
        zmq_pollitem_t items[2] = {{a->zap, 0, ZMQ_POLLIN, 0}, {a->monitor, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, a->monitor ? 2 : 1, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            break; /* ETERM: the context is going */
        }
        if (items[0].revents & ZMQ_POLLIN) zap_answer(a);
        if (a->monitor && (items[1].revents & ZMQ_POLLIN)) monitor_event(a);
    }
    return NULL;
}

rc_t auth_start(auth_t *a, void *zctx, void *router, char *err, size_t errlen)
{
    int one = 1, zero = 0;
    /* The handler first: a CURVE socket with no ZAP handler lets every key in. */
    a->zap = zmq_socket(zctx, ZMQ_REP);
    if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(a->zap, ZAP_ENDPOINT) != 0)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot start the ZAP handler on %s: %s",
                       ZAP_ENDPOINT, zmq_strerror(zmq_errno()));
    if (zmq_setsockopt(router, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, a->server.secret_key, 41) ||
        zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, "recall", 6))
        return rc_errf(RC_ERR_IO, err, errlen, "cannot make the socket a CURVE server: %s",
                       zmq_strerror(zmq_errno()));
    /* Best effort: without the monitor, refusals before ZAP are not counted. */
    if (zmq_socket_monitor(router, MONITOR_ENDPOINT,
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) == 0 &&
        (a->monitor = zmq_socket(zctx, ZMQ_PAIR)) != NULL) {
        zmq_setsockopt(a->monitor, ZMQ_LINGER, &zero, sizeof zero);
        if (zmq_connect(a->monitor, MONITOR_ENDPOINT) != 0) {
            zmq_close(a->monitor);
            a->monitor = NULL;
        }
    }
    if (!a->monitor) log_warn("no monitor on the socket: peers without CURVE are not counted");
    /* The sockets move to the handler thread here (pthread_create is a full barrier). */
    if (pthread_create(&a->thread, NULL, auth_main, a) != 0)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot start the ZAP handler thread");
    a->started = 1;
    return RC_OK;
}

const char *auth_server_public(const auth_t *a)
{
    return a->server.public_key;
}

size_t auth_n_allowed(const auth_t *a)
{
    return a->n_listed;
}

const recall_client_curve *auth_gateway_curve(const auth_t *a)
{
    return &a->gateway;
}

uint64_t auth_refused(const auth_t *a)
{
    return a ? __atomic_load_n(&a->refused, __ATOMIC_RELAXED) : 0;
}

void auth_destroy(auth_t **ap)
{
    if (!ap || !*ap) return;
    auth_t *a = *ap;
    if (a->started) {
        __atomic_store_n(&a->stop, 1, __ATOMIC_RELEASE);
        pthread_join(a->thread, NULL);
    }
    if (a->zap) zmq_close(a->zap);
    if (a->monitor) zmq_close(a->monitor);
    free(a->allowed);
    memset(a, 0, sizeof *a); /* the keys */
    free(a);
    *ap = NULL;
}

/* ---- start-up policy ----------------------------------------------------------------- */

rc_t auth_configure(const daemon_config_t *cfg, int have_http_token, auth_t **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (cfg->curve_secret || cfg->allow) {
        if (!cfg->curve_secret || !cfg->allow)
            return rc_errf(RC_ERR_INVALID, err, errlen, "%s",
                           cfg->allow ? "--allow needs --curve-secret FILE (the daemon's key pair)"
                                      : "--curve-secret needs --allow FILE (the client keys let "
                                        "in)");
        RC_TRY(auth_create(cfg->curve_secret, cfg->allow, out, err, errlen));
    } else if (!auth_endpoint_is_local(cfg->listen)) {
        if (!cfg->insecure)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "refusing to listen on %s without authentication: every client that "
                           "can reach it could read, change and drop every session. Use CURVE "
                           "(recall keygen DIR --name server; --curve-secret DIR/server.key "
                           "--allow FILE), or listen on tcp://127.0.0.1:PORT or ipc://PATH, or "
                           "give --insecure if the network is trusted",
                           cfg->listen);
        log_warn("listening on %s without authentication (--insecure): anyone who can reach "
                 "it can use every session",
                 cfg->listen);
    }
    /* The gateway is a door of its own, and a client of the socket with a key that is
     * always let in. */
    if (cfg->http && strchr(cfg->http, ':') && !have_http_token && !cfg->insecure) {
        char ep[300];
        snprintf(ep, sizeof ep, "tcp://%s", cfg->http);
        if (!auth_endpoint_is_local(ep)) {
            auth_destroy(out);
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "refusing to serve HTTP on %s without --http-token: every client "
                           "that can reach it could read, change and drop every session (CURVE "
                           "guards only --listen). Give --http-token FILE, or --http "
                           "127.0.0.1:PORT, or --insecure if the network is trusted",
                           cfg->http);
        }
    }
    return RC_OK;
}

/* ---- endpoints ----------------------------------------------------------------------- */

int auth_endpoint_is_local(const char *ep)
{
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9)) return 1;
    if (strncmp(ep, "tcp://", 6) != 0) return 0; /* pgm, udp, ws...: not on this machine */
    const char *h = ep + 6;
    char host[256];
    size_t n;
    if (*h == '[') {
        const char *e = strchr(h, ']');
        if (!e) return 0;
        n = (size_t)(e - h - 1);
        if (n >= sizeof host) return 0;
        memcpy(host, h + 1, n);
    } else {
        const char *e = strrchr(h, ':');
        n = e ? (size_t)(e - h) : strlen(h);
        if (n >= sizeof host) return 0;
        memcpy(host, h, n);
    }
    host[n] = 0;
    if (!strcmp(host, "::1") || !strcmp(host, "localhost")) return 1;
    /* 127.0.0.0/8: four dotted numbers, the first 127. */
    unsigned b[4];
    char tail;
    return sscanf(host, "%u.%u.%u.%u%c", &b[0], &b[1], &b[2], &b[3], &tail) == 4 && b[0] == 127 &&
           b[1] < 256 && b[2] < 256 && b[3] < 256;
}
