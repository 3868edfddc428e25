/* http.h — recalld's HTTP gateway: an OpenAI-compatible API, recall's own session API and
 * Prometheus /metrics, for tools that speak HTTP rather than recall's ZeroMQ RPC.
 *
 * The gateway is a client of the daemon, not a second front door: every HTTP request
 * becomes one or more protobuf Requests sent over a ZeroMQ DEALER (clients/client.h) to the
 * daemon's own ROUTER endpoint, so the request table, its checks, the limits and the one
 * reply path (request.c) apply to HTTP exactly as to `recall`. Nothing here touches the
 * session table or the model.
 *
 * libmicrohttpd serves HTTP because it brings what this needs and nothing else: a thread
 * per connection (a completion or an ingest may block for minutes waiting on the daemon
 * without stalling other clients), content-reader callbacks for streaming server-sent
 * events token by token, streamed request bodies (an ingest upload is fed to the daemon
 * while it arrives), and a maintained HTTP parser so recall does not carry its own.
 *
 * Endpoints, JSON shapes and status codes: daemon/openapi.yaml; README "HTTP API". */
#ifndef RECALL_DAEMON_HTTP_H
#define RECALL_DAEMON_HTTP_H

#include <stddef.h>

#include "clients/client.h"
#include "common/rc.h"
#include "daemon/http_metrics.h"

#define HTTP_MAX_BODY_DEFAULT (8u << 20) /* bytes of a JSON request body (--http-max-body) */
#define HTTP_CONNECTIONS_MAX 64          /* connections served at once (a thread each) */

typedef struct http_gateway http_gateway_t;

typedef struct http_gateway_opts {
    const char *address;  /* "HOST:PORT" to listen on (numeric or a name; IPv6 in []) */
    const char *endpoint; /* the daemon's ZeroMQ endpoint to connect to (tcp:// or ipc://) */
    size_t max_body;      /* largest JSON body in bytes (0: HTTP_MAX_BODY_DEFAULT); ingest
                             uploads are streamed and not bounded by it */
    const char *token;    /* NULL: no authentication; else every request needs
                             "Authorization: Bearer <token>" (copied) */
    http_metrics_t *daemon_metrics; /* the daemon's request counters for /metrics; may be NULL */
    /* More families for /metrics, written by the daemon at each scrape (NULL: none): figures
     * only the daemon's state has (the queue, the device, the worker's timings). Called on a
     * connection thread; it does its own locking. */
    void (*extra_metrics)(http_buf_t *b, void *arg);
    void *extra_metrics_arg;
    int connect_timeout_ms;         /* how long a request waits for the daemon (0: 3 s) */
    /* The keys to connect with when the daemon runs with CURVE (auth.h; copied), or NULL. */
    const recall_client_curve *curve;
} http_gateway_opts_t;

/* Binds opts->address and starts serving on libmicrohttpd's threads; returns at once.
 * RC_ERR_INVALID for a malformed address, RC_ERR_IO when it cannot be bound (in use,
 * permission), with a sentence in err. *out is owned by the caller (http_gateway_stop). */
rc_t http_gateway_start(const http_gateway_opts_t *opts, http_gateway_t **out, char *err,
                        size_t errlen);

/* The port actually bound (useful with port 0). */
int http_gateway_port(const http_gateway_t *g);

/* Stops accepting, makes requests waiting on the daemon give up within about half a second
 * (they answer 503), joins the connection threads and frees everything. NULL-safe; sets
 * *g to NULL. Blocks until every connection thread has finished. */
void http_gateway_stop(http_gateway_t **g);

/* Reads a bearer token from path: the file's first line without surrounding white space.
 * RC_ERR_IO / RC_ERR_INVALID (empty) with err set. *out is malloc'ed (free it). */
rc_t http_token_read(const char *path, char **out, char *err, size_t errlen);

/* The endpoint a local client should connect to for a ZeroMQ endpoint bound as `bound`
 * (ZMQ_LAST_ENDPOINT): a wildcard host (0.0.0.0, *) becomes 127.0.0.1; the rest is kept.
 * RC_ERR_LIMIT when out (n bytes) is too small. */
rc_t http_endpoint_local(const char *bound, char *out, size_t n);

#endif
