/* http_metrics.h — the counters behind GET /metrics, and the Prometheus text writer.
 *
 * Two sets of figures end up in /metrics:
 *   the daemon's requests   counted where every request ends, in request.c's reply path
 *                           (http_metrics_observe): final replies by request kind and
 *                           outcome, and the time from the frame's arrival to that reply;
 *   the gateway's requests  counted by the HTTP gateway itself (http.c): by route and
 *                           status code, with their latency.
 * Everything else (sessions, tokens, memory per tier, evictions, budgets) is read at scrape
 * time from the daemon's Stats answer, so it is never counted twice.
 *
 * The counters are plain uint64_t updated with relaxed atomic adds: the reply path may run
 * under daemon.mu on either thread and must not take another lock; a scrape reads each one
 * atomically (a scrape may see a count without its latency sum yet, which Prometheus
 * tolerates). Nothing here allocates; the struct is zero-initialized by its owner. */
#ifndef RECALL_DAEMON_HTTP_METRICS_H
#define RECALL_DAEMON_HTTP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

/* Kinds are indexed by the Request oneof's field number (10..20 today, room up to 31);
 * index 0 holds frames that did not decode into a known kind. */
#define HTTP_METRICS_KINDS 32
/* Outcomes: 0 is success, i (1..14) is rc_t -i, the last slot anything else. */
#define HTTP_METRICS_OUTCOMES 16
/* Latency histogram upper bounds in seconds (the +Inf bucket is the count): from a
 * tokenize (well under a millisecond) to a long ingest chunk or answer (minutes). */
#define HTTP_METRICS_BUCKETS 12
static const double http_metrics_bounds[HTTP_METRICS_BUCKETS] = {
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300};

typedef struct http_histogram {
    uint64_t bucket[HTTP_METRICS_BUCKETS]; /* observations <= bound, not cumulative */
    uint64_t count;
    uint64_t sum_us; /* microseconds, so the sum is an integer counter too */
} http_histogram_t;

typedef struct http_metrics {
    uint64_t replies[HTTP_METRICS_KINDS][HTTP_METRICS_OUTCOMES];
    http_histogram_t latency[HTTP_METRICS_KINDS];
    /* The worker's own timings (work.c): an Ask's prefill (the prompt's forward pass, the
     * wait for its first token), and each durable append (an Ingest chunk's windows and
     * commit). */
    http_histogram_t ask_prefill, ingest_append;
} http_metrics_t;

/* The two observers are inline so the daemon's reply path (and whatever links request.c,
 * such as the fuzz harness) needs nothing more than this header. */

/* Adds one observation (thread-safe, lock-free; seconds < 0 counts no latency). */
static inline void http_histogram_observe(http_histogram_t *h, double seconds)
{
    if (!(seconds >= 0)) return;
    for (int i = 0; i < HTTP_METRICS_BUCKETS; i++)
        if (seconds <= http_metrics_bounds[i]) {
            __atomic_fetch_add(&h->bucket[i], 1, __ATOMIC_RELAXED);
            break;
        }
    __atomic_fetch_add(&h->sum_us, (uint64_t)(seconds * 1e6 + 0.5), __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);
}

/* Counts one final reply of request kind `body_case` (0 or out of range: "unknown") with
 * status code, and its latency (seconds < 0: not known). Thread-safe, lock-free. */
static inline void http_metrics_observe(http_metrics_t *m, int body_case, rc_t code, double seconds)
{
    int k = body_case > 0 && body_case < HTTP_METRICS_KINDS ? body_case : 0;
    int o = code == RC_OK                                   ? 0
            : code < 0 && -code < HTTP_METRICS_OUTCOMES - 1 ? -code
                                                            : HTTP_METRICS_OUTCOMES - 1;
    __atomic_fetch_add(&m->replies[k][o], 1, __ATOMIC_RELAXED);
    http_histogram_observe(&m->latency[k], seconds);
}

/* The outcome label of a code: "ok", or rc_name lowercased ("not_found"); static. */
const char *http_metrics_outcome(int outcome_index);

/* ---- the text exposition format ------------------------------------------------------ */

/* A growable text buffer. On allocation failure `oom` is set and appends do nothing, so a
 * writer checks once at the end. p is NUL-terminated whenever len > 0; free(p) when done. */
typedef struct http_buf {
    char *p;
    size_t len, cap;
    int oom;
} http_buf_t;

void http_buf_printf(http_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void http_buf_append(http_buf_t *b, const char *s, size_t n);
void http_buf_free(http_buf_t *b);

/* "# HELP name help\n# TYPE name type\n" (type: counter, gauge, histogram). */
void http_metrics_head(http_buf_t *b, const char *name, const char *type, const char *help);
/* One sample: name{labels} value. labels is "" or already formatted as k="v",... */
void http_metrics_sample(http_buf_t *b, const char *name, const char *labels, double value);
/* A label value with \, " and newline escaped as the format asks, into out (truncated to
 * n bytes, NUL-terminated). */
void http_metrics_escape(const char *v, char *out, size_t n);
/* The _bucket{le=...}, _sum and _count lines of one histogram; labels as for sample. */
void http_metrics_histogram(http_buf_t *b, const char *name, const char *labels,
                            const http_histogram_t *h);
/* The daemon's request families: recall_requests_total{kind,outcome} and
 * recall_request_duration_seconds{kind}. Kind names come from the Request message's
 * descriptor, so a new kind needs no edit here. */
void http_metrics_write_requests(http_buf_t *b, const http_metrics_t *m);

#endif
