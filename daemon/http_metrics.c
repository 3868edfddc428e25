/* http_metrics.c — request counters and the Prometheus text format: see http_metrics.h. */
#include "daemon/http_metrics.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/recall.pb-c.h"

const char *http_metrics_outcome(int i)
{
    static char names[HTTP_METRICS_OUTCOMES][32];
    static int ready;
    if (i <= 0) return "ok";
    if (i >= HTTP_METRICS_OUTCOMES - 1) return "other";
    /* Built once from rc_name; the table is the same for every caller, so a race only
     * writes the same bytes twice. */
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (int j = 1; j < HTTP_METRICS_OUTCOMES - 1; j++) {
            const char *n = rc_name((rc_t)-j);
            size_t l = 0;
            for (; n[l] && l + 1 < sizeof names[j]; l++)
                names[j][l] = (char)tolower((unsigned char)n[l]);
            names[j][l] = 0;
        }
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    return names[i];
}

/* ---- the buffer ---------------------------------------------------------------------- */

static int buf_reserve(http_buf_t *b, size_t extra)
{
    if (b->oom) return -1;
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void http_buf_append(http_buf_t *b, const char *s, size_t n)
{
    if (buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void http_buf_printf(http_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void http_buf_free(http_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- the exposition format ----------------------------------------------------------- */

void http_metrics_head(http_buf_t *b, const char *name, const char *type, const char *help)
{
    http_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_value(http_buf_t *b, double v)
{
    if (isnan(v))
        http_buf_printf(b, "NaN\n");
    else if (isinf(v))
        http_buf_printf(b, "%s\n", v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9.007199254740992e15)
        http_buf_printf(b, "%.0f\n", v);
    else
        http_buf_printf(b, "%.17g\n", v);
}

void http_metrics_sample(http_buf_t *b, const char *name, const char *labels, double value)
{
    if (labels && labels[0])
        http_buf_printf(b, "%s{%s} ", name, labels);
    else
        http_buf_printf(b, "%s ", name);
    put_value(b, value);
}

void http_metrics_escape(const char *v, char *out, size_t n)
{
    size_t o = 0;
    if (!n) return;
    for (; *v && o + 2 < n; v++) {
        if (*v == '\\' || *v == '"') {
            out[o++] = '\\';
            out[o++] = *v;
        } else if (*v == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *v;
        }
    }
    out[o] = 0;
}

void http_metrics_histogram(http_buf_t *b, const char *name, const char *labels,
                            const http_histogram_t *h)
{
    const char *sep = labels && labels[0] ? "," : "";
    if (!labels) labels = "";
    uint64_t cum = 0;
    for (int i = 0; i < HTTP_METRICS_BUCKETS; i++) {
        cum += __atomic_load_n(&h->bucket[i], __ATOMIC_RELAXED);
        http_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
                        http_metrics_bounds[i], (unsigned long long)cum);
    }
    uint64_t count = __atomic_load_n(&h->count, __ATOMIC_RELAXED);
    if (count < cum) count = cum; /* a scrape between an observation's two adds */
    http_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                    (unsigned long long)count);
    char sum[64];
    snprintf(sum, sizeof sum, "%s_sum", name);
    http_metrics_sample(b, sum, labels,
                        (double)__atomic_load_n(&h->sum_us, __ATOMIC_RELAXED) / 1e6);
    http_buf_printf(b, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels,
                    labels[0] ? "}" : "", (unsigned long long)count);
}

/* The oneof field with this number in Request ("ask", "ingest", ...), or "unknown". */
static const char *kind_name(int k)
{
    if (k <= 0) return "unknown";
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&recall__request__descriptor, (unsigned)k);
    return f && f->name ? f->name : "unknown";
}

static int kind_known(int k)
{
    return k > 0 &&
           protobuf_c_message_descriptor_get_field(&recall__request__descriptor, (unsigned)k) !=
               NULL &&
           k != 1; /* field 1 is the id */
}

void http_metrics_write_requests(http_buf_t *b, const http_metrics_t *m)
{
    char labels[128];
    http_metrics_head(b, "recall_requests_total", "counter",
                      "Requests the daemon answered, by request kind and outcome (ok or the "
                      "error code's name).");
    for (int k = 0; k < HTTP_METRICS_KINDS; k++) {
        int known = kind_known(k);
        for (int o = 0; o < HTTP_METRICS_OUTCOMES; o++) {
            uint64_t v = __atomic_load_n(&m->replies[k][o], __ATOMIC_RELAXED);
            /* Every known kind's ok series exists from the start, so rate() sees its 0. */
            if (!v && !(known && o == 0)) continue;
            snprintf(labels, sizeof labels, "kind=\"%s\",outcome=\"%s\"", kind_name(k),
                     http_metrics_outcome(o));
            http_metrics_sample(b, "recall_requests_total", labels, (double)v);
        }
    }
    http_metrics_head(b, "recall_request_duration_seconds", "histogram",
                      "Time from a request's arrival at the daemon to its final reply, by "
                      "request kind.");
    for (int k = 0; k < HTTP_METRICS_KINDS; k++) {
        if (!kind_known(k) && !__atomic_load_n(&m->latency[k].count, __ATOMIC_RELAXED)) continue;
        snprintf(labels, sizeof labels, "kind=\"%s\"", kind_name(k));
        http_metrics_histogram(b, "recall_request_duration_seconds", labels, &m->latency[k]);
    }
}
