/* auth.h — who may connect to recalld: CURVE keys, an allow-list and a ZAP handler.
 *
 * With --curve-secret FILE --allow FILE the ROUTER is a CURVE server: every connection
 * does a CURVE handshake with the daemon's key, and libzmq asks this module's ZAP handler
 * (ZeroMQ's authentication protocol, RFC 27, on inproc://zeromq.zap.01 of the daemon's
 * context) whether the client's public key may come in. Keys in the allow-list are
 * accepted under their name, which libzmq then attaches to every message of that
 * connection as its "User-Id" (server.c reads it: the client identity of limits.h);
 * other keys are refused. Peers that fail before the ZAP step (no CURVE at all, or a
 * handshake with the wrong server key) are seen through a monitor of the ROUTER. Both are
 * counted (auth_refused, in Stats) and logged at most once a second.
 *
 * The allow-list file: one client a line, its Z85 public key (40 characters), then
 * optionally a name (letters, digits, '.', '_', '-', '@'; at most 64), the client's
 * identity in logs and quotas (without one the key itself is its name). Blank lines and
 * lines starting with '#' are ignored. Two keys may share a name: they share its quotas.
 *
 * The HTTP gateway is a client of the same socket: it gets a key pair made at start-up,
 * held in memory only and always accepted, under the name "http" (auth_gateway_curve).
 * That keeps one socket with one mechanism and one path through the request table for
 * every client, whatever --listen is (a second, unauthenticated inproc endpoint on the
 * ROUTER would need a socket option set between binds and would bypass the handshake).
 *
 * Threads: auth_create and auth_start on the main thread; the handler runs on a thread of
 * its own from auth_start to auth_destroy; auth_refused from any thread. */
#ifndef RECALL_DAEMON_AUTH_H
#define RECALL_DAEMON_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "clients/client.h"
#include "common/rc.h"

typedef struct auth auth_t;
struct daemon_config;

/* recalld's start-up policy, from its flags: with --curve-secret and --allow, *out gets
 * the keys (auth_create); without them *out is NULL, and a --listen that is not local
 * (auth_endpoint_is_local) is refused unless cfg->insecure. An --http address that is not
 * local is refused without an HTTP token (have_http_token) unless cfg->insecure: CURVE
 * guards the ZeroMQ socket only. A malformed --http address (no ':') is left to the
 * gateway's own message. err says why and what to do. */
rc_t auth_configure(const struct daemon_config *cfg, int have_http_token, auth_t **out, char *err,
                    size_t errlen);

/* Reads the daemon's secret key (a key file, keys.h, with no group or other permissions)
 * and the allow-list; starts nothing. Fails with err naming the file (and line) when
 * this libzmq has no CURVE, a file cannot be read, a key is not Z85, a name is bad or a
 * key is listed twice. *out is owned by the caller: auth_destroy. */
rc_t auth_create(const char *secret_path, const char *allow_path, auth_t **out, char *err,
                 size_t errlen);

/* Starts the ZAP handler in zctx (a libzmq context) and makes router a CURVE server with
 * the daemon's key, refusing whatever the handler refuses. Call before router binds. */
rc_t auth_start(auth_t *a, void *zctx, void *router, char *err, size_t errlen);

/* The daemon's public key (Z85), for clients' --server-key; owned by a. */
const char *auth_server_public(const auth_t *a);
/* Keys in the allow-list. */
size_t auth_n_allowed(const auth_t *a);
/* The gateway's keys (its own pair and the server's public key); owned by a. */
const recall_client_curve *auth_gateway_curve(const auth_t *a);
/* Connections refused so far (any thread). */
uint64_t auth_refused(const auth_t *a);

/* Stops the handler thread and closes its sockets (before the context is terminated);
 * NULL-safe, nulls *a. */
void auth_destroy(auth_t **a);

/* Non-zero when a ZeroMQ endpoint only accepts peers on this machine: ipc://, inproc://,
 * and tcp:// on 127.0.0.0/8, [::1] or localhost. Anything else (a wildcard, an interface
 * name, another address) can be reached from the network. */
int auth_endpoint_is_local(const char *endpoint);

#endif
