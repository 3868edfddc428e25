/* http.c — the gateway's server: listening, routing, authentication, body limits, the
 * pool of daemon clients and the one error shape. See http.h for why it is built this way.
 *
 * A request's life: libmicrohttpd calls on_request first with the headers (we route,
 * check the token and the method, and set up the request's state), then once per piece of
 * body (buffered up to --http-max-body, or fed to an ingest as it comes), then once more
 * with no body left, when the endpoint runs and answers. on_completed counts the request
 * in the gateway's metrics and frees its state. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/http_internal.h"

const char *const http_route_names[HTTP_ROUTE_COUNT] = {"completions", "chat_completions", "models",
                                                        "sessions",    "session",          "ingest",
                                                        "health",      "metrics",          "other"};
const int http_codes[HTTP_CODES] = {200, 400, 401, 404, 405, 409, 413, 429, 500, 503, 504, 0};

/* ---- replies ------------------------------------------------------------------------- */

void http_reply_queue(http_req_t *r, int status, struct MHD_Response *resp)
{
    if (r->answered) { /* a second answer is a bug in a handler; keep the first */
        MHD_destroy_response(resp);
        return;
    }
    r->answered = 1;
    r->status = status;
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
}

static void reply_text(http_req_t *r, int status, const char *type, const char *text, size_t n)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return; /* libmicrohttpd closes the connection */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 405)
        MHD_add_response_header(resp, "Allow",
                                r->route == HTTP_ROUTE_COMPLETIONS || r->route == HTTP_ROUTE_CHAT ||
                                        r->route == HTTP_ROUTE_INGEST
                                    ? "POST"
                                : r->route == HTTP_ROUTE_SESSION ? "GET, DELETE"
                                                                 : "GET");
    http_reply_queue(r, status, resp);
}

void http_reply_json(http_req_t *r, int status, cJSON *body)
{
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (!s) {
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":"
            "\"internal\"}}";
        reply_text(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    size_t n = strlen(s);
    s[n] = 0;
    char *line = malloc(n + 2); /* a trailing newline reads better in a terminal (curl) */
    if (line) {
        memcpy(line, s, n);
        line[n] = '\n';
        reply_text(r, status, "application/json", line, n + 1);
        free(line);
    } else {
        reply_text(r, status, "application/json", s, n);
    }
    cJSON_free(s);
}

const char *http_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void http_reply_error(http_req_t *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", http_error_type(status));
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    http_reply_json(r, status, root);
}

int http_status_of_rc(rc_t rc, const char *msg, const char **type, const char **code)
{
    int st;
    *code = "internal";
    switch (rc) {
    case RC_ERR_INVALID:
        st = 400, *code = "invalid_request";
        break;
    case RC_ERR_FORMAT:
        st = 400, *code = "malformed";
        break;
    case RC_ERR_NOT_FOUND:
        st = 404, *code = msg && strstr(msg, "session") ? "session_not_found" : "not_found";
        break;
    case RC_ERR_EXISTS:
        st = 409, *code = "exists";
        break;
    /* LIMIT is a size (a question over --max-chunk-bytes) or a count (--max-sessions). */
    case RC_ERR_LIMIT:
        st = msg && strstr(msg, "bytes") ? 413 : 429;
        *code = "limit_exceeded";
        break;
    case RC_ERR_BUSY:
        st = 429, *code = "busy";
        break;
    case RC_ERR_SEQUENCE:
        st = 409, *code = "sequence";
        break;
    case RC_ERR_UNSUPPORTED:
        st = 400, *code = "unsupported";
        break;
    case RC_ERR_UNAVAILABLE:
        st = 503, *code = "session_unavailable";
        break;
    case RC_ERR_SHUTDOWN:
        st = 503, *code = "daemon_stopping";
        break;
    case RC_ERR_IO:
        st = 503, *code = "daemon_unavailable";
        break;
    default:
        st = 500;
        break;
    }
    *type = http_error_type(st);
    return st;
}

void http_reply_rc(http_req_t *r, rc_t rc, const char *msg)
{
    const char *type, *code;
    int st = http_status_of_rc(rc, msg, &type, &code);
    http_reply_error(r, st, code, "%s", msg && msg[0] ? msg : rc_strerror(rc));
}

/* ---- the daemon clients -------------------------------------------------------------- */

recall_client *http_client_get(http_gateway_t *g, char *err, size_t errlen)
{
    recall_client *c = NULL;
    pthread_mutex_lock(&g->mu);
    if (g->n_idle) c = g->idle[--g->n_idle];
    pthread_mutex_unlock(&g->mu);
    if (c) {
        recall_client_set_timeout(c, RECALL_CLIENT_DEFAULT_TIMEOUT_MS);
        return c;
    }
    const char *e = "";
    if (recall_client_create_curve(g->endpoint, g->have_curve ? &g->curve : NULL, &c, &e)) {
        snprintf(err, errlen, "cannot reach recalld at %s: %s", g->endpoint, e);
        return NULL;
    }
    recall_client_set_connect_timeout(c, g->connect_timeout_ms);
    return c;
}

void http_client_put(http_gateway_t *g, recall_client *c, int ok)
{
    if (!c) return;
    if (ok) {
        pthread_mutex_lock(&g->mu);
        if (g->n_idle < (int)(sizeof g->idle / sizeof g->idle[0])) {
            g->idle[g->n_idle++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&g->mu);
    }
    recall_client_destroy(&c);
}

#define SLICE_MS 500

rc_t http_client_next(http_gateway_t *g, recall_client *c, uint64_t id, int timeout_ms,
                      Recall__Response **out)
{
    *out = NULL;
    double deadline = timeout_ms > 0 ? clock_now_s() + timeout_ms / 1e3 : 0;
    rc_t rc;
    recall_client_set_timeout(c, SLICE_MS);
    for (;;) {
        if (g->stopping) {
            recall_client_set_error(c, "the HTTP gateway is stopping");
            rc = RC_ERR_SHUTDOWN;
            break;
        }
        Recall__Response *resp;
        rc = recall_client_recv(c, &id, 1, &resp);
        if (rc == RC_ERR_IO && (!deadline || clock_now_s() < deadline)) continue; /* a slice */
        if (rc == RC_ERR_IO)
            recall_client_set_error(c, "no answer from recalld at %s within %d s", g->endpoint,
                                    timeout_ms / 1000);
        if (rc) break;
        rc = recall_client_status(c, resp);
        if (rc)
            recall__response__free_unpacked(resp, NULL);
        else
            *out = resp;
        break;
    }
    /* The client's own calls (the Ingest protocol) keep their usual patience. */
    recall_client_set_timeout(c, RECALL_CLIENT_DEFAULT_TIMEOUT_MS);
    return rc;
}

rc_t http_client_call(http_gateway_t *g, recall_client *c, Recall__Request *req, int timeout_ms,
                      Recall__Response **out)
{
    uint64_t id;
    *out = NULL;
    RC_TRY(recall_client_send(c, req, &id));
    for (;;) {
        Recall__Response *resp;
        RC_TRY(http_client_next(g, c, id, timeout_ms, &resp));
        if (!resp->more) {
            *out = resp;
            return RC_OK;
        }
        recall__response__free_unpacked(resp, NULL);
    }
}

/* ---- protobuf to JSON ---------------------------------------------------------------- */

static cJSON *field_value(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return cJSON_CreateNumber(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return cJSON_CreateNumber(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return cJSON_CreateNumber((double)*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return cJSON_CreateNumber((double)*(const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT:
        return cJSON_CreateNumber(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return cJSON_CreateNumber(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM:
        return cJSON_CreateNumber(*(const int *)p);
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return cJSON_CreateString(s ? s : "");
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
        return m ? http_proto_to_json(m) : cJSON_CreateNull();
    }
    default:
        return cJSON_CreateNull(); /* bytes: none in the messages shown */
    }
}

static size_t field_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

cJSON *http_proto_to_json(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m + f->offset;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            /* Only the oneof member that is set: its case sits at quantifier_offset. */
            if (*(const uint32_t *)((const char *)m + f->quantifier_offset) != f->id) continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
            const char *arr = *(char *const *)base;
            cJSON *a = cJSON_AddArrayToObject(o, f->name);
            for (size_t k = 0; a && k < n; k++)
                cJSON_AddItemToArray(a, field_value(f, arr + k * field_size(f)));
            continue;
        }
        cJSON_AddItemToObject(o, f->name, field_value(f, base));
    }
    return o;
}

/* ---- routing ------------------------------------------------------------------------- */

int http_token_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Every byte of b is compared whatever a holds, so the time says nothing about where
     * a wrong token first differs. */
    unsigned char diff = alen != blen;
    for (size_t i = 0; i < blen; i++)
        diff |= (unsigned char)((i < alen ? a[i] : 0) ^ b[i]);
    return diff == 0;
}

static int authorized(http_req_t *r)
{
    http_gateway_t *g = r->g;
    if (!g->token) return 1;
    const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ')
        h++;
    return http_token_equal(h, strlen(h), g->token, g->token_len);
}

/* Which route a path is, with {name} copied into r->session. */
static http_route_t route_of(const char *url, http_req_t *r)
{
    if (!strcmp(url, "/v1/completions")) return HTTP_ROUTE_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions")) return HTTP_ROUTE_CHAT;
    if (!strcmp(url, "/v1/models")) return HTTP_ROUTE_MODELS;
    if (!strcmp(url, "/v1/sessions") || !strcmp(url, "/v1/sessions/")) return HTTP_ROUTE_SESSIONS;
    if (!strcmp(url, "/health")) return HTTP_ROUTE_HEALTH;
    if (!strcmp(url, "/metrics")) return HTTP_ROUTE_METRICS;
    static const char pre[] = "/v1/sessions/";
    if (strncmp(url, pre, sizeof pre - 1)) return HTTP_ROUTE_OTHER;
    const char *name = url + sizeof pre - 1, *slash = strchr(name, '/');
    size_t n = slash ? (size_t)(slash - name) : strlen(name);
    if (!n || n >= sizeof r->session) return HTTP_ROUTE_OTHER;
    memcpy(r->session, name, n);
    r->session[n] = 0;
    if (!slash) return HTTP_ROUTE_SESSION;
    return !strcmp(slash, "/ingest") ? HTTP_ROUTE_INGEST : HTTP_ROUTE_OTHER;
}

static int method_ok(http_route_t route, const char *m)
{
    switch (route) {
    case HTTP_ROUTE_COMPLETIONS:
    case HTTP_ROUTE_CHAT:
    case HTTP_ROUTE_INGEST:
        return !strcmp(m, "POST");
    case HTTP_ROUTE_SESSION:
        return !strcmp(m, "GET") || !strcmp(m, "DELETE");
    case HTTP_ROUTE_OTHER:
        return 1;
    default:
        return !strcmp(m, "GET") || !strcmp(m, "HEAD");
    }
}

/* The endpoint, once the body is complete (and within the limit). */
static void dispatch(http_req_t *r, const char *method)
{
    switch (r->route) {
    case HTTP_ROUTE_COMPLETIONS:
        http_openai_completions(r, 0);
        break;
    case HTTP_ROUTE_CHAT:
        http_openai_completions(r, 1);
        break;
    case HTTP_ROUTE_MODELS:
        http_openai_models(r);
        break;
    case HTTP_ROUTE_SESSIONS:
        http_recall_sessions(r);
        break;
    case HTTP_ROUTE_SESSION:
        http_recall_session(r, method);
        break;
    case HTTP_ROUTE_INGEST:
        http_recall_ingest_end(r);
        break;
    case HTTP_ROUTE_HEALTH:
        http_recall_health(r);
        break;
    case HTTP_ROUTE_METRICS:
        http_recall_metrics(r);
        break;
    default:
        http_reply_error(r, 404, "not_found", "no such endpoint (see daemon/openapi.yaml)");
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **con_cls)
{
    (void)version;
    http_gateway_t *g = cls;
    http_req_t *r = *con_cls;
    if (!r) { /* the headers */
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        *con_cls = r;
        r->g = g;
        r->conn = conn;
        r->t0 = clock_now_s();
        r->route = route_of(url, r);
        if (!authorized(r)) {
            r->refuse = 401;
        } else if (!method_ok(r->route, method)) {
            r->refuse = 405;
        } else if (r->route == HTTP_ROUTE_INGEST) {
            http_recall_ingest_begin(r); /* may answer at once (bad name, no daemon) */
        }
        return MHD_YES;
    }
    if (*data_size) { /* a piece of the body */
        size_t n = *data_size;
        *data_size = 0;
        if (r->refuse || r->answered) return MHD_YES; /* discarded */
        if (r->route == HTTP_ROUTE_INGEST) {
            http_recall_ingest_data(r, data, n);
        } else if (!r->too_large) {
            if (r->body.len + n > g->max_body) {
                r->too_large = 1;
                http_buf_free(&r->body);
            } else {
                http_buf_append(&r->body, data, n);
            }
        }
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->refuse == 401)
        http_reply_error(r, 401, "invalid_api_key",
                         "missing or wrong bearer token (send Authorization: Bearer <token>, "
                         "the token in recalld's --http-token file)");
    else if (r->refuse == 405)
        http_reply_error(r, 405, "method_not_allowed", "%s is not allowed on %s", method, url);
    else if (r->too_large)
        http_reply_error(r, 413, "body_too_large",
                         "the request body is over the limit of %zu bytes (recalld "
                         "--http-max-body)",
                         g->max_body);
    else if (r->body.oom)
        http_reply_error(r, 500, "internal", "out of memory reading the request body");
    else
        dispatch(r, method);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    (void)conn;
    http_gateway_t *g = cls;
    http_req_t *r = *con_cls;
    if (!r) return;
    int slot = HTTP_CODES - 1;
    for (int i = 0; i < HTTP_CODES - 1; i++)
        if (http_codes[i] == r->status) slot = i;
    __atomic_fetch_add(&g->requests[r->route][slot], 1, __ATOMIC_RELAXED);
    http_histogram_observe(&g->latency[r->route], clock_now_s() - r->t0);
    http_recall_ingest_free(r, why != MHD_REQUEST_TERMINATED_COMPLETED_OK);
    http_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

/* ---- start and stop ------------------------------------------------------------------ */

/* Splits "HOST:PORT" / "[V6]:PORT" and binds a listening socket; fd or -1 with err. */
static int listen_on(const char *address, rc_t *rc, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(address, ':');
    *rc = RC_ERR_INVALID;
    if (!colon || colon == address || !colon[1] || (size_t)(colon - address) >= sizeof host) {
        snprintf(err, errlen, "bad --http address '%s': expected HOST:PORT, e.g. 127.0.0.1:8080",
                 address);
        return -1;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = 0;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(err, errlen, "bad --http address '%s': the port must be 0..65535", address);
        return -1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    int e = getaddrinfo(host, colon + 1, &hints, &ai);
    if (e) {
        snprintf(err, errlen, "bad --http address '%s': %s", address, gai_strerror(e));
        return -1;
    }
    *rc = RC_ERR_IO;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 64)) {
        e = errno;
        snprintf(err, errlen, "cannot listen for HTTP on %s: %s%s", address, strerror(e),
                 e == EADDRINUSE ? " (another recalld, or another server on that port?)" : "");
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    *rc = RC_OK;
    return fd;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = 0;
    log_warn("http: %s", msg);
}

rc_t http_gateway_start(const http_gateway_opts_t *o, http_gateway_t **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    rc_t rc = RC_ERR_NOMEM;
    http_gateway_t *g = calloc(1, sizeof *g);
    if (!g) return RC_ERR_NOMEM;
    pthread_mutex_init(&g->mu, NULL);
    g->listen_fd = -1;
    g->max_body = o->max_body ? o->max_body : HTTP_MAX_BODY_DEFAULT;
    g->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 3000;
    g->daemon_metrics = o->daemon_metrics;
    g->extra_metrics = o->extra_metrics;
    g->extra_metrics_arg = o->extra_metrics_arg;
    if (o->curve) {
        g->curve = *o->curve;
        g->have_curve = 1;
    }
    if (!(g->endpoint = strdup(o->endpoint))) goto fail;
    if (o->token) {
        if (!(g->token = strdup(o->token))) goto fail;
        g->token_len = strlen(g->token);
    }
    g->listen_fd = listen_on(o->address, &rc, err, errlen);
    if (g->listen_fd < 0) goto fail;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(g->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        g->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    g->mhd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                  MHD_USE_ITC | MHD_USE_ERROR_LOG,
                              0, NULL, NULL, on_request, g, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                              NULL, MHD_OPTION_LISTEN_SOCKET, g->listen_fd,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS_MAX,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!g->mhd) {
        rc = RC_ERR_IO;
        snprintf(err, errlen, "cannot start the HTTP server on %s", o->address);
        goto fail;
    }
    *out = g;
    return RC_OK;
fail:
    http_gateway_stop(&g);
    return rc;
}

int http_gateway_port(const http_gateway_t *g)
{
    return g->port;
}

void http_gateway_stop(http_gateway_t **gp)
{
    if (!gp || !*gp) return;
    http_gateway_t *g = *gp;
    g->stopping = 1; /* waits on the daemon give up within SLICE_MS */
    if (g->mhd) {
        /* Quiescing hands the listening socket back (closed below); without that,
         * libmicrohttpd closes it itself. */
        if (MHD_quiesce_daemon(g->mhd) == MHD_INVALID_SOCKET) g->listen_fd = -1;
        MHD_stop_daemon(g->mhd);
    }
    if (g->listen_fd >= 0) close(g->listen_fd);
    for (int i = 0; i < g->n_idle; i++)
        recall_client_destroy(&g->idle[i]);
    pthread_mutex_destroy(&g->mu);
    free(g->endpoint);
    free(g->token);
    free(g);
    *gp = NULL;
}

rc_t http_token_read(const char *path, char **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot read --http-token %s: %s", path,
                       strerror(errno));
    char line[4096];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    char *s = line, *e = line + strlen(line);
    while (*s == ' ' || *s == '\t')
        s++;
    while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
        *--e = 0;
    if (!*s)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "--http-token %s is empty: put the bearer token on its first line", path);
    if (!(*out = strdup(s))) return RC_ERR_NOMEM;
    return RC_OK;
}

rc_t http_endpoint_local(const char *bound, char *out, size_t n)
{
    static const char *const wild[] = {"tcp://0.0.0.0:", "tcp://*:"};
    for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
        size_t l = strlen(wild[i]);
        if (!strncmp(bound, wild[i], l)) {
            int w = snprintf(out, n, "tcp://127.0.0.1:%s", bound + l);
            return w < 0 || (size_t)w >= n ? RC_ERR_LIMIT : RC_OK;
        }
    }
    int w = snprintf(out, n, "%s", bound);
    return w < 0 || (size_t)w >= n ? RC_ERR_LIMIT : RC_OK;
}
