/* limits.h — per-client quotas and the size limits of a request (internal to daemon/).
 *
 * A client identity is the name its CURVE key has in --allow (auth.h), "http" for the
 * HTTP gateway under CURVE, and "local" for every client without a key (loopback, or
 * --insecure): all of them one identity. What an identity may hold:
 *
 *   --max-sessions-per-client N   sessions it created (its sessions' `owner`)
 *   --max-disk-per-client SIZE    bytes on disk of those sessions (rows, tokens, record)
 *   --max-requests-per-client N   model jobs (Ingest, Ask, Score, Verify) queued or running
 *   --max-tokens-per-session N    tokens in any one session
 *   --max-ask-tokens N            an Ask's question tokens, and its max_tokens
 *   --max-message-bytes SIZE      a request frame (the same as --max-frame-bytes)
 *
 * 0 means no limit for the first four. A request over a limit fails before anything is
 * written, with RC_ERR_LIMIT (RC_ERR_BUSY for requests in flight: it passes) and a
 * message naming the limit, its value and the flag. Sessions record their owner, so
 * the session and disk quotas hold across restarts; requests in flight are counted from
 * the moment a job is queued to its final reply. */
#ifndef RECALL_DAEMON_LIMITS_H
#define RECALL_DAEMON_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "recall.pb-c.h"

struct daemon;
struct session;

#define LIMITS_DEFAULT_SESSIONS_PER_CLIENT 128
#define LIMITS_DEFAULT_TOKENS_PER_SESSION (16ull << 20)
#define LIMITS_DEFAULT_REQUESTS_PER_CLIENT 64
#define LIMITS_DEFAULT_ASK_TOKENS 8192
#define LIMITS_ASK_TOKENS_MAX (1 << 20)

/* One client identity. Made on the main thread, never freed before the daemon: jobs and
 * replies point at it. */
typedef struct limits_client {
    char name[65];
    unsigned in_flight; /* jobs queued or running (under the daemon's mu) */
} limits_client_t;

typedef struct limits limits_t;

rc_t limits_create(limits_t **out);
void limits_destroy(limits_t **l);

/* Main thread: the identity for a message's User-Id (NULL or "": "local"), made on first
 * sight. NULL only when out of memory. */
limits_client_t *limits_client(limits_t *l, const char *user_id);

/* Main thread, under mu: may c create a session now (its sessions and its disk bytes)? */
rc_t limits_check_create(struct daemon *d, const limits_client_t *c, char *err, size_t errlen);
/* Main thread, under mu: may c queue another job? Counts it in when so. */
rc_t limits_job_begin(struct daemon *d, limits_client_t *c, char *err, size_t errlen);
/* Under mu: the job's final reply went out (or it ended without one). */
void limits_job_end(limits_client_t *c);
/* Main thread: an Ask's length (question tokens, tokenizing a long text; max_tokens). */
rc_t limits_check_ask(struct daemon *d, const Recall__AskRequest *a, char *err, size_t errlen);
/* Worker, before a commit: nn more tokens into s, which has n_old. Tokens per session and
 * its owner's disk bytes (rows of the windows they complete, and the tokens). */
rc_t limits_check_append(struct daemon *d, const struct session *s, uint64_t n_old, size_t nn,
                         char *err, size_t errlen);

#endif
