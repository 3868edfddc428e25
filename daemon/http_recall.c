/* http_recall.c — recall's own endpoints: sessions, streamed ingest, health and metrics.
 *
 * Ingest is fed while the upload arrives: the body goes through a socket pair into the
 * same Ingest protocol `recall ingest` speaks (clients/ingest.h: chunks cut at line ends,
 * credit, resends), run on a thread of its own, so a text of any size passes through
 * without being held here. The upload's pieces block while the daemon is behind, which
 * holds the sender back through TCP. The answer is one JSON object once every chunk is
 * acknowledged (durable): chunks, tokens added, the session's totals. A session that does
 * not exist is created with the daemon's defaults, as `recall ingest` does. An upload cut
 * off midway stops the ingest at its next wait; the chunks acknowledged by then stay, as
 * when `recall ingest` is interrupted. */
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clients/ingest.h"
#include "daemon/http_internal.h"

#define QUICK_TIMEOUT_MS (30 * 1000) /* requests the daemon's main thread answers at once */

/* One quick call: a client from the pool, the request, its final answer. On failure the
 * error is answered here and NULL returned. */
static Recall__Response *quick(http_req_t *r, Recall__Request *req)
{
    char err[512];
    recall_client *c = http_client_get(r->g, err, sizeof err);
    if (!c) {
        http_reply_error(r, 503, "daemon_unavailable", "%s", err);
        return NULL;
    }
    Recall__Response *resp;
    rc_t rc = http_client_call(r->g, c, req, QUICK_TIMEOUT_MS, &resp);
    if (rc) {
        http_reply_rc(r, rc, recall_client_error(c));
        http_client_put(r->g, c, recall_client_error_remote(c));
        return NULL;
    }
    http_client_put(r->g, c, 1);
    return resp;
}

/* ---- sessions ------------------------------------------------------------------------ */

void http_recall_sessions(http_req_t *r)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__ListSessionsRequest lr = RECALL__LIST_SESSIONS_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_LIST_SESSIONS;
    req.list_sessions = &lr;
    Recall__Response *resp = quick(r, &req);
    if (!resp) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *a = cJSON_AddArrayToObject(o, "sessions");
    if (resp->body_case == RECALL__RESPONSE__BODY_LIST_SESSIONS)
        for (size_t i = 0; i < resp->list_sessions->n_sessions; i++)
            cJSON_AddItemToArray(a, http_proto_to_json(&resp->list_sessions->sessions[i]->base));
    recall__response__free_unpacked(resp, NULL);
    http_reply_json(r, 200, o);
}

void http_recall_session(http_req_t *r, const char *method)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__SessionInfoRequest ir = RECALL__SESSION_INFO_REQUEST__INIT;
    Recall__DropSessionRequest dr = RECALL__DROP_SESSION_REQUEST__INIT;
    int drop = !strcmp(method, "DELETE");
    if (drop) {
        dr.session = r->session;
        req.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
        req.drop_session = &dr;
    } else {
        ir.session = r->session;
        req.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
        req.session_info = &ir;
    }
    Recall__Response *resp = quick(r, &req);
    if (!resp) return;
    cJSON *o;
    if (drop) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", r->session);
        cJSON_AddBoolToObject(o, "deleted", 1);
    } else if (resp->body_case == RECALL__RESPONSE__BODY_SESSION_INFO && resp->session_info->info) {
        o = http_proto_to_json(&resp->session_info->info->base);
    } else {
        o = NULL;
    }
    recall__response__free_unpacked(resp, NULL);
    if (!o)
        http_reply_error(r, 500, "internal", "the daemon's answer has no session info");
    else
        http_reply_json(r, 200, o);
}

void http_recall_health(http_req_t *r)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__HealthRequest hr = RECALL__HEALTH_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_HEALTH;
    req.health = &hr;
    Recall__Response *resp = quick(r, &req);
    if (!resp) return;
    cJSON *o = resp->body_case == RECALL__RESPONSE__BODY_HEALTH
                   ? http_proto_to_json(&resp->health->base)
                   : NULL;
    recall__response__free_unpacked(resp, NULL);
    if (!o)
        http_reply_error(r, 500, "internal", "the daemon's answer is not a health report");
    else
        http_reply_json(r, 200, o);
}

/* ---- /metrics ------------------------------------------------------------------------ */

static void stats_families(http_buf_t *b, const Recall__StatsResponse *s)
{
    char labels[600], model[256], device[128];
    http_metrics_escape(s->model, model, sizeof model);
    http_metrics_escape(s->device, device, sizeof device);
    http_metrics_head(b, "recall_info", "gauge", "The loaded checkpoint and device (always 1).");
    snprintf(labels, sizeof labels, "model=\"%s\",device=\"%s\"", model, device);
    http_metrics_sample(b, "recall_info", labels, 1);
    http_metrics_head(b, "recall_uptime_seconds", "gauge", "Seconds since recalld started.");
    http_metrics_sample(b, "recall_uptime_seconds", "", s->uptime_s);
    http_metrics_head(b, "recall_sessions", "gauge",
                      "Sessions by the tier their memory rows are in now.");
    const struct {
        const char *tier;
        uint64_t v;
    } tiers[] = {{"gpu", s->sessions_gpu},
                 {"host", s->sessions_host},
                 {"disk", s->sessions_disk},
                 {"unavailable", s->sessions_unavailable}};
    for (size_t i = 0; i < sizeof tiers / sizeof tiers[0]; i++) {
        snprintf(labels, sizeof labels, "tier=\"%s\"", tiers[i].tier);
        http_metrics_sample(b, "recall_sessions", labels, (double)tiers[i].v);
    }
    http_metrics_head(b, "recall_errors_total", "counter",
                      "Requests the daemon answered with an error (any kind).");
    http_metrics_sample(b, "recall_errors_total", "", (double)s->errors);
    http_metrics_head(b, "recall_ingest_tokens_total", "counter",
                      "Tokens committed to sessions by Ingest.");
    http_metrics_sample(b, "recall_ingest_tokens_total", "", (double)s->tokens_ingested);
    http_metrics_head(b, "recall_generated_tokens_total", "counter", "Tokens generated by Ask.");
    http_metrics_sample(b, "recall_generated_tokens_total", "", (double)s->tokens_generated);
    http_metrics_head(b, "recall_memory_tokens", "gauge",
                      "Tokens whose keys and values are in the sessions' memory.");
    http_metrics_sample(b, "recall_memory_tokens", "", (double)s->memory_tokens);
    http_metrics_head(b, "recall_memory_bytes", "gauge",
                      "Bytes of the sessions' memory rows, by tier (device: GPU, host: mapped "
                      "host memory, disk: files).");
    http_metrics_sample(b, "recall_memory_bytes", "tier=\"device\"",
                        (double)s->memory_bytes_device);
    http_metrics_sample(b, "recall_memory_bytes", "tier=\"host\"", (double)s->memory_bytes_host);
    http_metrics_sample(b, "recall_memory_bytes", "tier=\"disk\"", (double)s->memory_bytes_disk);
    http_metrics_head(b, "recall_gpu_memory_used_bytes", "gauge",
                      "GPU memory held by the sessions' memory rows.");
    http_metrics_sample(b, "recall_gpu_memory_used_bytes", "", (double)s->memory_bytes_device);
    http_metrics_head(b, "recall_gpu_memory_budget_bytes", "gauge",
                      "The daemon's GPU memory budget for sessions' rows (0: none or no GPU).");
    http_metrics_sample(b, "recall_gpu_memory_budget_bytes", "", (double)s->gpu_budget);
    http_metrics_head(b, "recall_host_memory_budget_bytes", "gauge",
                      "The daemon's host memory budget for sessions' rows and tokens (0: none).");
    http_metrics_sample(b, "recall_host_memory_budget_bytes", "", (double)s->host_budget);
    http_metrics_head(b, "recall_session_loads_total", "counter",
                      "Times a session's rows came in from disk.");
    http_metrics_sample(b, "recall_session_loads_total", "", (double)s->loads);
    http_metrics_head(b, "recall_evictions_total", "counter",
                      "Times a session's rows moved down a tier to make room.");
    http_metrics_sample(b, "recall_evictions_total", "", (double)s->evictions);
    http_metrics_head(b, "recall_replies_dropped_total", "counter",
                      "Replies discarded because their client was not reading or was gone.");
    http_metrics_sample(b, "recall_replies_dropped_total", "", (double)s->replies_dropped);
    http_metrics_head(b, "recall_auth_refused_total", "counter",
                      "Connections refused by CURVE authentication (a key not allowed, or no "
                      "CURVE).");
    http_metrics_sample(b, "recall_auth_refused_total", "", (double)s->auth_refused);
    http_metrics_head(b, "recall_limit_refused_total", "counter",
                      "Requests refused by a per-client quota or a request size limit.");
    http_metrics_sample(b, "recall_limit_refused_total", "", (double)s->limit_refused);
}

static void gateway_families(http_buf_t *b, const http_gateway_t *g)
{
    char labels[128];
    http_metrics_head(b, "recall_http_requests_total", "counter",
                      "HTTP requests the gateway answered, by route and status code.");
    for (int rt = 0; rt < HTTP_ROUTE_COUNT; rt++)
        for (int c = 0; c < HTTP_CODES; c++) {
            uint64_t v = __atomic_load_n(&g->requests[rt][c], __ATOMIC_RELAXED);
            if (!v && !(c == 0 && rt != HTTP_ROUTE_OTHER)) continue;
            if (http_codes[c])
                snprintf(labels, sizeof labels, "route=\"%s\",code=\"%d\"", http_route_names[rt],
                         http_codes[c]);
            else
                snprintf(labels, sizeof labels, "route=\"%s\",code=\"other\"",
                         http_route_names[rt]);
            http_metrics_sample(b, "recall_http_requests_total", labels, (double)v);
        }
    http_metrics_head(b, "recall_http_request_duration_seconds", "histogram",
                      "Time from an HTTP request's headers to the end of its response "
                      "(streams included), by route.");
    for (int rt = 0; rt < HTTP_ROUTE_COUNT; rt++) {
        snprintf(labels, sizeof labels, "route=\"%s\"", http_route_names[rt]);
        http_metrics_histogram(b, "recall_http_request_duration_seconds", labels, &g->latency[rt]);
    }
}

void http_recall_metrics(http_req_t *r)
{
    http_gateway_t *g = r->g;
    http_buf_t b = {0};
    char err[512];
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__StatsRequest sr = RECALL__STATS_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_STATS;
    req.stats = &sr;
    Recall__Response *resp = NULL;
    /* A daemon that does not answer still leaves the gateway's own figures worth a scrape:
     * recall_up says which it is. */
    recall_client *c = http_client_get(g, err, sizeof err);
    int up = c && !http_client_call(g, c, &req, QUICK_TIMEOUT_MS, &resp) &&
             resp->body_case == RECALL__RESPONSE__BODY_STATS;
    http_client_put(g, c, up);
    http_metrics_head(&b, "recall_up", "gauge", "1 when the daemon answered this scrape's Stats.");
    http_metrics_sample(&b, "recall_up", "", up);
    if (up) stats_families(&b, resp->stats);
    if (resp) recall__response__free_unpacked(resp, NULL);
    if (g->daemon_metrics) http_metrics_write_requests(&b, g->daemon_metrics);
    if (g->extra_metrics) g->extra_metrics(&b, g->extra_metrics_arg);
    gateway_families(&b, g);
    if (b.oom) {
        http_buf_free(&b);
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    struct MHD_Response *mr =
        MHD_create_response_from_buffer(b.len, b.p ? b.p : (char *)"", MHD_RESPMEM_MUST_COPY);
    http_buf_free(&b);
    if (!mr) return;
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    http_reply_queue(r, 200, mr);
}

/* ---- ingest -------------------------------------------------------------------------- */

struct http_ingest {
    http_gateway_t *g;
    recall_client *c;
    int fds[2]; /* [0]: the ingest thread reads the body; [1]: the upload writes it */
    FILE *in;
    pthread_t thread;
    int started;
    int broken;                 /* the thread stopped reading: the rest of the body is discarded */
    volatile sig_atomic_t stop; /* the upload was cut, or the gateway is stopping */
    uint64_t bytes;
    recall_ingest_state st;
    recall_ingest_error e;
    rc_t rc;
    /* A failure before the thread started (answered once the body is read). */
    int fail_status;
    char fail_code[32];
    char fail_msg[1024];
};

static void *ingest_main(void *arg)
{
    http_ingest_t *in = arg;
    recall_ingest_src src = {.name = "the request body", .f = in->in};
    recall_ingest_opts o = {.stop = &in->stop};
    in->rc = recall_ingest_text(in->c, &src, 1, &o, &in->st, &in->e);
    /* Closing the read end makes the upload's next write fail instead of blocking. */
    fclose(in->in);
    in->in = NULL;
    return NULL;
}

static void ingest_fail(http_ingest_t *in, int status, const char *code, const char *msg)
{
    in->fail_status = status;
    snprintf(in->fail_code, sizeof in->fail_code, "%s", code);
    snprintf(in->fail_msg, sizeof in->fail_msg, "%s", msg);
}

void http_recall_ingest_begin(http_req_t *r)
{
    http_ingest_t *in = calloc(1, sizeof *in);
    if (!in) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    r->ingest = in;
    in->g = r->g;
    in->fds[0] = in->fds[1] = -1;
    char err[512];
    if (!(in->c = http_client_get(r->g, err, sizeof err))) {
        ingest_fail(in, 503, "daemon_unavailable", err);
        return;
    }
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
    cs.session = r->session;
    cs.if_not_exists = 1;
    req.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
    req.create_session = &cs;
    Recall__Response *resp;
    rc_t rc = http_client_call(r->g, in->c, &req, QUICK_TIMEOUT_MS, &resp);
    if (rc) {
        const char *type, *code;
        int st = http_status_of_rc(rc, recall_client_error(in->c), &type, &code);
        ingest_fail(in, st, code, recall_client_error(in->c));
        return;
    }
    const Recall__SessionInfo *info =
        resp->body_case == RECALL__RESPONSE__BODY_CREATE_SESSION && resp->create_session->info
            ? resp->create_session->info
            : NULL;
    if (info) {
        in->st.last_seq = info->last_seq;
        in->st.tokens = info->tokens;
        in->st.windows = info->windows;
    }
    recall__response__free_unpacked(resp, NULL);
    in->st.session = r->session; /* lives in r, which outlives the thread */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in->fds) ||
        !(in->in = fdopen(in->fds[0], "r"))) {
        ingest_fail(in, 500, "internal", "cannot set up the ingest stream");
        return;
    }
    in->fds[0] = -1; /* in->in owns it */
    if (pthread_create(&in->thread, NULL, ingest_main, in)) {
        ingest_fail(in, 500, "internal", "cannot start the ingest thread");
        return;
    }
    in->started = 1;
}

void http_recall_ingest_data(http_req_t *r, const char *data, size_t n)
{
    http_ingest_t *in = r->ingest;
    if (!in || !in->started || in->broken) return;
    in->bytes += n;
    while (n) {
        ssize_t w = send(in->fds[1], data, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { /* the thread is done reading: it failed; its error is the answer */
            in->broken = 1;
            return;
        }
        data += w;
        n -= (size_t)w;
    }
}

/* Ends the upload (EOF for the thread) and waits for the last acknowledgement. */
static void ingest_join(http_ingest_t *in)
{
    if (in->fds[1] >= 0) close(in->fds[1]);
    in->fds[1] = -1;
    if (in->started) pthread_join(in->thread, NULL);
    in->started = 0;
}

void http_recall_ingest_end(http_req_t *r)
{
    http_ingest_t *in = r->ingest;
    if (!in) return; /* answered at begin */
    int was_started = in->started;
    ingest_join(in);
    if (in->fail_status) {
        http_reply_error(r, in->fail_status, in->fail_code, "%s", in->fail_msg);
        return;
    }
    if (!was_started) return;
    if (in->rc) {
        const char *type, *code = "internal";
        int st;
        switch (in->e.fault) {
        case RECALL_INGEST_INPUT:
            st = 400, code = "invalid_text";
            break;
        case RECALL_INGEST_DAEMON:
            st = http_status_of_rc((rc_t)in->e.code, in->e.message, &type, &code);
            break;
        case RECALL_INGEST_TRANSPORT:
        case RECALL_INGEST_STOPPED:
            st = 503, code = "daemon_unavailable";
            break;
        case RECALL_INGEST_PROTOCOL:
            st = 409, code = "conflict";
            break;
        default:
            st = 500;
            break;
        }
        http_reply_error(r, st, code,
                         "%s (%llu chunks were acknowledged before; the session has %llu "
                         "tokens, last_seq %llu)",
                         in->e.message, (unsigned long long)in->st.chunks_acked,
                         (unsigned long long)in->st.tokens, (unsigned long long)in->st.last_seq);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "session", r->session);
    cJSON_AddNumberToObject(o, "bytes", (double)in->bytes);
    cJSON_AddNumberToObject(o, "chunks", (double)in->st.chunks_acked);
    cJSON_AddNumberToObject(o, "tokens_added", (double)in->st.tokens_added);
    cJSON_AddNumberToObject(o, "tokens", (double)in->st.tokens);
    cJSON_AddNumberToObject(o, "windows", (double)in->st.windows);
    cJSON_AddNumberToObject(o, "last_seq", (double)in->st.last_seq);
    http_reply_json(r, 200, o);
}

void http_recall_ingest_free(http_req_t *r, int cut)
{
    http_ingest_t *in = r->ingest;
    if (!in) return;
    if (cut || r->g->stopping) in->stop = 1;
    ingest_join(in);
    if (in->in) fclose(in->in);
    if (in->fds[0] >= 0) close(in->fds[0]);
    /* The client is reusable only when the protocol ended cleanly (nothing in flight). */
    http_client_put(in->g, in->c, !in->rc && !in->fail_status);
    free(in);
    r->ingest = NULL;
}
