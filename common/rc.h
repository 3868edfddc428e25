/* rc.h — the one status type of the project.
 *
 * Fallible functions return rc_t and hand results back through out-parameters. Codes are
 * negative; RC_OK is zero so `if (rc)` reads as "if it failed". The same numbers travel on
 * the wire (proto/recall.proto mirrors them in Status.code), so never renumber. */
#ifndef RECALL_COMMON_RC_H
#define RECALL_COMMON_RC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rc {
    RC_OK = 0,
    RC_ERR_INVALID = -1,     /* bad argument or input from a caller */
    RC_ERR_NOMEM = -2,       /* allocation failed */
    RC_ERR_IO = -3,          /* file system or socket error */
    RC_ERR_NOT_FOUND = -4,   /* unknown session, missing file or tensor */
    RC_ERR_EXISTS = -5,      /* duplicate create */
    RC_ERR_FORMAT = -6,      /* malformed file, frame or message */
    RC_ERR_LIMIT = -7,       /* over a configured limit (chunk size, sessions, budget) */
    RC_ERR_UNSUPPORTED = -8, /* valid but not implemented here (dtype, device) */
    RC_ERR_BUSY = -9,        /* try again later (flow control, queue full) */
    RC_ERR_SEQUENCE = -10,   /* ingest chunk out of order */
    RC_ERR_SHUTDOWN = -11,   /* daemon is stopping */
    RC_ERR_DEVICE = -12,     /* GPU or backend failure */
    RC_ERR_INTERNAL = -13,   /* a bug: an invariant that should have held did not */
    RC_ERR_UNAVAILABLE = -14, /* a session whose stored data is damaged or unreadable */
} rc_t;

/* Static, human-readable name of a code ("invalid argument"); never NULL. */
const char *rc_strerror(rc_t rc);

/* Short stable identifier of a code ("INVALID"), as shown by --json output. */
const char *rc_name(rc_t rc);

/* Formats a message for a caller's error buffer (errlen bytes, always NUL-terminated;
 * nothing is written when err is NULL or errlen is 0) and returns rc, so a failure path
 * reads `return rc_errf(RC_ERR_FORMAT, err, errlen, "...", ...);`. */
rc_t rc_errf(rc_t rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Returns from the enclosing function (which returns rc_t) with expr's code when expr
 * fails: `RC_TRY(load_header(f, &h));`. For steps with nothing to clean up; a function
 * that must free on failure uses one `goto fail` instead. */
#define RC_TRY(expr)                                                                           \
    do {                                                                                       \
        rc_t rc_try_ = (expr);                                                                 \
        if (rc_try_) return rc_try_;                                                           \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
