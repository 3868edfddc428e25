/* client.h — a small synchronous client for recalld's RPC (proto/recall.proto).
 *
 * One handle owns one ZeroMQ DEALER socket connected to one endpoint (tcp://HOST:PORT or
 * ipc://PATH). Requests are protobuf Request messages, one frame each; the client stamps a
 * fresh id on every request and only returns Responses that carry an id it is waiting for,
 * so a late answer to an abandoned request can never be mistaken for the current one.
 *
 * Two time limits, both in milliseconds:
 *   connect timeout  how long a send waits for the connection to the daemon to exist
 *                    (ZMQ_IMMEDIATE: nothing is queued for a peer that is not there, so a
 *                    dead endpoint fails in seconds instead of hanging);
 *   receive timeout  how long to wait for each next Response (default 600 s: a long ingest
 *                    chunk or answer is normal; streams send progress or tokens meanwhile).
 * Either failing returns RC_ERR_IO with a message naming the endpoint (recall_client_error).
 * The socket has ZMQ_LINGER 0, so destroying the handle never blocks on unsent messages.
 *
 * Status codes: the functions return the *transport* status (RC_OK when a well-formed
 * Response arrived). The daemon's own verdict is in response->status; recall_client_call
 * folds the two together for the common case.
 *
 * A handle is not thread-safe: use one per thread. */
#ifndef RECALL_CLIENTS_CLIENT_H
#define RECALL_CLIENTS_CLIENT_H

#include <stdint.h>

#include "clients/keys.h"
#include "common/rc.h"
#include "proto/recall.pb-c.h"

typedef struct recall_client recall_client;

#define RECALL_CLIENT_DEFAULT_TIMEOUT_MS (600 * 1000)
#define RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS (3 * 1000)

/* Connects to endpoint (copied). ZeroMQ connects in the background: an unreachable
 * endpoint is only noticed by the first send (after the connect timeout). Returns
 * RC_ERR_INVALID for a malformed endpoint (message in *err_out if err_out is not NULL:
 * a static or thread-local string valid until the next call), RC_ERR_NOMEM, RC_ERR_IO. */
rc_t recall_client_create(const char *endpoint, recall_client **out, const char **err_out);

/* CURVE for a client: its own key pair and the daemon's public key (recalld prints it at
 * start-up; recall keygen wrote it next to the daemon's secret key). */
typedef struct recall_client_curve {
    recall_keypair client;
    char server_public[RECALL_KEY_Z85_LEN + 1];
} recall_client_curve;

/* As recall_client_create, with CURVE when curve is not NULL (copied). A daemon that
 * refuses the key, or wants CURVE from a client without it, makes the first send fail
 * after the connect timeout with a message saying which (recall_client_error). */
rc_t recall_client_create_curve(const char *endpoint, const recall_client_curve *curve,
                                recall_client **out, const char **err_out);

/* The keys for a client: keys_path (a key file with a secret key, or a directory holding
 * client.key; NULL: $RECALL_CURVE_KEYS) and server_key_path (a file with the daemon's
 * public key; NULL: $RECALL_SERVER_KEY). Neither given: *have = 0 and RC_OK (no CURVE).
 * One without the other, or a file that cannot be read, is an error in err. */
rc_t recall_client_curve_load(const char *keys_path, const char *server_key_path,
                              recall_client_curve *out, int *have, char *err, size_t errlen);

/* Closes the socket (pending messages are dropped) and frees the handle; NULL-safe, sets
 * *c to NULL. */
void recall_client_destroy(recall_client **c);

/* Receive timeout per Response, in ms; <= 0 means wait forever. */
void recall_client_set_timeout(recall_client *c, int timeout_ms);
/* How long a send waits for the connection, in ms (> 0). */
void recall_client_set_connect_timeout(recall_client *c, int timeout_ms);

const char *recall_client_endpoint(const recall_client *c);

/* The last error's message, for a human ("no answer from tcp://... within 600 s (is recalld
 * running?)"). Owned by the handle; valid until the next call on it. Empty if none. */
const char *recall_client_error(const recall_client *c);

/* 1 when the last error was the daemon's answer (a Response with a non-zero status), 0 when
 * it was local or on the way (cannot connect, timeout, malformed frame). */
int recall_client_error_remote(const recall_client *c);

/* Sends req after setting req->id to a fresh id, which is also stored in *id_out (may be
 * NULL). req stays owned by the caller. RC_ERR_IO when the daemon cannot be reached within
 * the connect timeout. */
rc_t recall_client_send(recall_client *c, Recall__Request *req, uint64_t *id_out);

/* Receives the next Response whose id is one of ids[0..n_ids) (n_ids >= 1); Responses
 * with other ids are dropped (answers to requests abandoned earlier). On RC_OK *out is a
 * new message owned by the caller: free it with recall__response__free_unpacked(r, NULL).
 * RC_ERR_IO on timeout or socket error, RC_ERR_FORMAT for a frame that does not decode. */
rc_t recall_client_recv(recall_client *c, const uint64_t *ids, int n_ids, Recall__Response **out);

/* One request, one answer: send, then receive Responses for its id until one has
 * more = false (intermediate Progress messages are passed to on_more if it is not NULL,
 * else dropped). On RC_OK *out is the final Response (caller frees as above) and its
 * status code is 0. When the daemon answered with an error, returns that code (negative
 * rc_t), sets *out to NULL and makes the daemon's message the client error. Transport
 * failures return RC_ERR_IO / RC_ERR_FORMAT as recall_client_recv. */
typedef rc_t (*recall_client_cb)(const Recall__Response *r, void *arg);
rc_t recall_client_call(recall_client *c, Recall__Request *req, Recall__Response **out,
                        recall_client_cb on_more, void *arg);

/* A streaming call: sends req and invokes cb(response, arg) for every Response to it, the
 * last one (more = false) included; the Response is owned by the client and valid only
 * during the callback. Stops early with cb's status if cb returns non-zero. A Response
 * with a non-zero status code ends the stream: its code is returned and its message made
 * the client error (the callback is not called for it). */
rc_t recall_client_stream(recall_client *c, Recall__Request *req, recall_client_cb cb, void *arg);

/* Creates session `name` with `opts` (NULL: the daemon's defaults). if_not_exists: an
 * existing session of that name is answered with its info instead of RC_ERR_EXISTS.
 * recall_client_call's status and *out (the caller checks its body and frees it). */
rc_t recall_client_create_session(recall_client *c, const char *name,
                                  const Recall__SessionOptions *opts,
                                  int if_not_exists, Recall__Response **out);

/* Drops session `name` (recall_client_call's status: the daemon's code, its message the
 * client error, or a transport failure). */
rc_t recall_client_drop(recall_client *c, const char *name);

/* The daemon's verdict in r: RC_OK when r has no status or code 0; otherwise its code (a
 * code outside rc_t is RC_ERR_INTERNAL), with its message (or the code's strerror) made
 * the client error and recall_client_error_remote answering 1. r stays the caller's. */
rc_t recall_client_status(recall_client *c, const Recall__Response *r);

/* Sets the client error to a formatted message (used by callers that want one place for
 * the text shown to the user). */
void recall_client_set_error(recall_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
