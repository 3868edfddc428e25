/* http_internal.h — what the gateway's files share (internal to daemon/http*.c).
 *
 *   http.c         the server: listening, routing, authentication, body limits, the pool
 *                  of daemon clients, the error shape and status mapping, HTTP metrics
 *   http_openai.c  /v1/completions, /v1/chat/completions (plain and streamed), /v1/models,
 *                  and the pure helpers they are built from (request parsing, the chat
 *                  template, stop strings, SSE framing)
 *   http_recall.c  /v1/sessions..., streamed ingest uploads, /health, /metrics
 *
 * Every handler runs on its connection's own thread (libmicrohttpd's thread per
 * connection), so it may block on the daemon; it answers exactly once, through
 * http_reply_json / http_reply_error / http_reply_rc or by queueing a streaming response
 * itself. */
#ifndef RECALL_DAEMON_HTTP_INTERNAL_H
#define RECALL_DAEMON_HTTP_INTERNAL_H

#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>

#include "clients/client.h"
#include "daemon/http.h"
#include "daemon/http_metrics.h"

struct MHD_Connection;
struct MHD_Response;

/* Routes, for the gateway's own metrics (recall_http_requests_total{route}). */
typedef enum http_route {
    HTTP_ROUTE_COMPLETIONS,
    HTTP_ROUTE_CHAT,
    HTTP_ROUTE_MODELS,
    HTTP_ROUTE_SESSIONS,
    HTTP_ROUTE_SESSION,
    HTTP_ROUTE_INGEST,
    HTTP_ROUTE_HEALTH,
    HTTP_ROUTE_METRICS,
    HTTP_ROUTE_OTHER,
    HTTP_ROUTE_COUNT
} http_route_t;
extern const char *const http_route_names[HTTP_ROUTE_COUNT];

/* Status codes counted per route; anything else goes to the last slot ("other"). */
#define HTTP_CODES 12
extern const int http_codes[HTTP_CODES];

struct http_gateway {
    struct MHD_Daemon *mhd;
    int listen_fd;
    int port;
    char *endpoint;
    char *token;
    size_t token_len;
    size_t max_body;
    int connect_timeout_ms;
    recall_client_curve curve; /* the gateway's CURVE keys (have_curve) */
    int have_curve;
    http_metrics_t *daemon_metrics;
    void (*extra_metrics)(http_buf_t *b, void *arg); /* http_gateway_opts_t's */
    void *extra_metrics_arg;
    volatile sig_atomic_t stopping; /* set by http_gateway_stop */

    pthread_mutex_t mu; /* the client pool */
    recall_client *idle[16];
    int n_idle;

    uint64_t requests[HTTP_ROUTE_COUNT][HTTP_CODES]; /* atomic adds */
    http_histogram_t latency[HTTP_ROUTE_COUNT];
};

typedef struct http_ingest http_ingest_t; /* http_recall.c */

/* One HTTP request, from its headers to the end of its response. */
typedef struct http_req {
    http_gateway_t *g;
    struct MHD_Connection *conn;
    http_route_t route;
    double t0;
    int status;   /* the status sent (0: none yet) */
    int answered; /* a response was queued */
    /* The body: buffered for JSON endpoints (up to max_body; past it too_large is set and
     * the rest discarded), or handed to the ingest as it arrives. */
    http_buf_t body;
    int too_large;
    int refuse; /* auth or method failed at the headers: the body is discarded */
    http_ingest_t *ingest;
    char session[160]; /* the {name} of /v1/sessions/{name}[/ingest] */
} http_req_t;

/* ---- replies (http.c) ---------------------------------------------------------------- */

/* Sends body (consumed, freed) with status; adds Content-Type: application/json. */
void http_reply_json(http_req_t *r, int status, cJSON *body);
/* {"error": {"message", "type", "code"}} with status. */
void http_reply_error(http_req_t *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A daemon or transport failure (rc from recall_client_*, message from the client) mapped
 * to a status: invalid/format 400, not found 404, exists 409, limit 413 for sizes and 429
 * for counts, busy 429, unavailable or shutdown or transport 503, the rest 500. */
void http_reply_rc(http_req_t *r, rc_t rc, const char *msg);
/* Queues a response built by the caller (streams); records status for the metrics. */
void http_reply_queue(http_req_t *r, int status, struct MHD_Response *resp);
/* The status, type and code string a daemon rc maps to (see http_reply_rc). */
int http_status_of_rc(rc_t rc, const char *msg, const char **type, const char **code);
/* The OpenAI error "type" for a status ("invalid_request_error", ...). */
const char *http_error_type(int status);

/* ---- talking to the daemon (http.c) -------------------------------------------------- */

/* A client connected to the daemon, from the pool or new. NULL on failure (message in
 * err). Hand it back with http_client_put: ok = 1 when no answer is outstanding on it (it
 * goes back to the pool), 0 to destroy it (an abandoned stream's tokens may still come). */
recall_client *http_client_get(http_gateway_t *g, char *err, size_t errlen);
void http_client_put(http_gateway_t *g, recall_client *c, int ok);
/* The next Response to id, waiting at most timeout_ms (<= 0: forever) in short slices so a
 * stopping gateway gives up at once (RC_ERR_SHUTDOWN). The daemon's error status becomes
 * the return code with its message as the client error. *out: free with
 * recall__response__free_unpacked. */
rc_t http_client_next(http_gateway_t *g, recall_client *c, uint64_t id, int timeout_ms,
                      Recall__Response **out);
/* One request, its final answer in *out (progress messages are skipped). */
rc_t http_client_call(http_gateway_t *g, recall_client *c, Recall__Request *req, int timeout_ms,
                      Recall__Response **out);

/* Any protobuf message as a JSON object (field names as in the .proto; 64-bit integers as
 * numbers, repeated fields as arrays). NULL on allocation failure. */
cJSON *http_proto_to_json(const ProtobufCMessage *m);

/* ---- endpoints ----------------------------------------------------------------------- */
void http_openai_completions(http_req_t *r, int chat);
void http_openai_models(http_req_t *r);

void http_recall_sessions(http_req_t *r);
void http_recall_session(http_req_t *r, const char *method);
void http_recall_health(http_req_t *r);
void http_recall_metrics(http_req_t *r);
/* The streamed upload of POST /v1/sessions/{name}/ingest: begin at the headers (creates
 * the session if needed and starts feeding the daemon), data for each piece of the body
 * (blocks while the daemon catches up), end once the body is complete (answers). */
void http_recall_ingest_begin(http_req_t *r);
void http_recall_ingest_data(http_req_t *r, const char *data, size_t n);
void http_recall_ingest_end(http_req_t *r);
/* cut: the connection ended before the body did; the ingest stops at its next wait, and
 * chunks acknowledged by then stay in the session (as with an interrupted recall ingest). */
void http_recall_ingest_free(http_req_t *r, int cut);

/* ---- pure helpers (http_openai.c; unit-tested in tests/test_http.c) ------------------ */

#define HTTP_STOP_MAX 4 /* stop strings per request, as OpenAI allows */

/* A completion request as the gateway understands it. */
typedef struct http_ask {
    char *session; /* the "session" field, else "model" */
    char *prompt;  /* completions: the prompt (chat: NULL) */
    /* chat: the messages, each content's text parts joined; the daemon formats them with
     * the checkpoint's chat template (daemon/chat.h) */
    char **roles, **contents;
    int n_messages;
    uint32_t max_tokens;
    float temperature, top_p;
    uint64_t seed;
    char *stop[HTTP_STOP_MAX];
    int n_stop;
    int stream, include_usage;
} http_ask_t;

/* Parses a request body of /v1/completions (chat = 0) or /v1/chat/completions (chat = 1).
 * RC_ERR_INVALID with a sentence in err and *field naming the offending field (static) for
 * bad JSON, a missing or mistyped field, or an unsupported one (n > 1). Free with
 * http_ask_free (also after a failure). */
rc_t http_ask_parse(const char *json, size_t len, int chat, http_ask_t *a, const char **field,
                    char *err, size_t errlen);
void http_ask_free(http_ask_t *a);

/* A chat's messages into a->roles / a->contents: each needs a role string; content is a
 * string, null, or an array of {"type": "text", "text": ...} parts (joined). The template
 * is applied by the daemon. RC_ERR_INVALID (or RC_ERR_NOMEM) with err set. */
rc_t http_chat_messages(const cJSON *messages, http_ask_t *a, char *err, size_t errlen);

/* chat_stop_scan (daemon/chat.h). The daemon ends the answer at a stop string itself; the
 * gateway scans too, so a daemon that predates stop strings in Ask still gets them applied. */
int http_stop_scan(const char *text, size_t len, char *const *stops, int n_stops, size_t *cut);

/* One server-sent event: "data: <data>\n\n" (data must hold no newline: JSON from cJSON's
 * unformatted printer never does). */
void http_sse_event(http_buf_t *b, const char *data);

/* 1 when a and b are equal, in time that depends on their lengths only. */
int http_token_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif
