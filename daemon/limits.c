/* limits.c — per-client quotas and request size limits (limits.h).
 *
 * Nothing here keeps a second book of what sessions hold: a client's sessions and disk
 * bytes are summed from the session table (its sessions' owner and disk_bytes) when a
 * request needs them, so the quotas cannot drift from the catalogue, and a restart
 * (which rebuilds the table from the records) restores them. The table is at most
 * --max-sessions long, and the sums run only for creates and commits. */
#include "daemon/limits.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/log.h"
#include "daemon/daemon.h"

/* Identities come from the allow-list (fixed at start-up), plus "local" and "http", so
 * the table stays small; a linear search over a few names per message is cheaper than
 * keeping anything sorted. The bound only guards against a bug. */
#define LIMITS_CLIENTS_MAX 65536

struct limits {
    limits_client_t **clients; /* [n] owned */
    size_t n, cap;
};

rc_t limits_create(limits_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? RC_OK : RC_ERR_NOMEM;
}

void limits_destroy(limits_t **lp)
{
    if (!lp || !*lp) return;
    limits_t *l = *lp;
    for (size_t i = 0; i < l->n; i++)
        free(l->clients[i]);
    free(l->clients);
    free(l);
    *lp = NULL;
}

limits_client_t *limits_client(limits_t *l, const char *user_id)
{
    const char *name = user_id && user_id[0] ? user_id : CLIENT_LOCAL;
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->clients[i]->name, name)) return l->clients[i];
    if (l->n >= LIMITS_CLIENTS_MAX) return NULL;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        limits_client_t **nc = realloc(l->clients, cap * sizeof *nc);
        if (!nc) return NULL;
        l->clients = nc;
        l->cap = cap;
    }
    limits_client_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    snprintf(c->name, sizeof c->name, "%s", name);
    l->clients[l->n++] = c;
    return c;
}

/* Under mu: how many sessions name owns and their bytes on disk. */
static void owned(const daemon_t *d, const char *name, uint64_t *sessions, uint64_t *bytes)
{
    *sessions = *bytes = 0;
    for (size_t i = 0; i < d->n_sessions; i++) {
        const session_t *s = d->sessions[i];
        const char *o = s->owner[0] ? s->owner : CLIENT_LOCAL;
        if (strcmp(o, name) != 0) continue;
        (*sessions)++;
        *bytes += s->disk_bytes;
    }
}

/* "1.5 GiB", "12.0 MiB", "800 B": what a person reads in an error. */
static void fmt_bytes(uint64_t b, char *out, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 5) {
        v /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(out, n, "%llu B", (unsigned long long)b);
    else
        snprintf(out, n, "%.1f %s", v, u[i]);
}

static void count_refusal(daemon_t *d)
{
    __atomic_add_fetch(&d->limit_refused, 1, __ATOMIC_RELAXED);
}

rc_t limits_check_create(daemon_t *d, const limits_client_t *c, char *err, size_t errlen)
{
    const daemon_config_t *cfg = &d->cfg;
    uint64_t n, bytes;
    owned(d, c->name, &n, &bytes);
    if (cfg->max_sessions_per_client && n >= cfg->max_sessions_per_client) {
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "client '%s' already has %llu sessions, its limit "
                       "(--max-sessions-per-client %u); drop one first",
                       c->name, (unsigned long long)n, cfg->max_sessions_per_client);
    }
    if (cfg->max_disk_per_client && bytes >= cfg->max_disk_per_client) {
        char have[32], lim[32];
        fmt_bytes(bytes, have, sizeof have);
        fmt_bytes(cfg->max_disk_per_client, lim, sizeof lim);
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "client '%s' has %s on disk, its limit (--max-disk-per-client %s); drop "
                       "a session first",
                       c->name, have, lim);
    }
    return RC_OK;
}

rc_t limits_job_begin(daemon_t *d, limits_client_t *c, char *err, size_t errlen)
{
    unsigned max = d->cfg.max_requests_per_client;
    if (max && c->in_flight >= max) {
        count_refusal(d);
        return rc_errf(RC_ERR_BUSY, err, errlen,
                       "client '%s' already has %u requests queued or running, its limit "
                       "(--max-requests-per-client %u); wait for their answers",
                       c->name, c->in_flight, max);
    }
    c->in_flight++;
    return RC_OK;
}

void limits_job_end(limits_client_t *c)
{
    if (c && c->in_flight) c->in_flight--;
}

rc_t limits_check_ask(daemon_t *d, const Recall__AskRequest *a, char *err, size_t errlen)
{
    const uint32_t max = d->cfg.max_ask_tokens;
    if (a->max_tokens > max) {
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "max_tokens %u is over the limit of %u tokens an answer may have "
                       "(--max-ask-tokens)",
                       a->max_tokens, max);
    }
    size_t nq = a->n_question_tokens;
    size_t ql = strlen(a->question);
    /* A SentencePiece token covers at least one byte, and BOS and the dummy prefix add at
     * most two: a text of max - 2 bytes or fewer cannot be over, and is not tokenized
     * here (the worker does that anyway). */
    if (ql + 2 > max) {
        int32_t *ids = NULL;
        rc_t rc = tokenizer_encode(d->tok, a->question, ql, 0, &ids, &nq);
        free(ids);
        if (rc)
            return rc_errf(rc, err, errlen, "cannot tokenize the question: %s", rc_strerror(rc));
    }
    if (nq > max) {
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "the question is %zu tokens, over the limit of %u (--max-ask-tokens); "
                       "ingest long text into the session and ask about it",
                       nq, max);
    }
    return RC_OK;
}

rc_t limits_check_append(daemon_t *d, const session_t *s, uint64_t n_old, size_t nn, char *err,
                         size_t errlen)
{
    const daemon_config_t *cfg = &d->cfg;
    if (cfg->max_tokens_per_session && n_old + nn > cfg->max_tokens_per_session) {
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "the session would hold %llu tokens, over the limit of %llu "
                       "(--max-tokens-per-session); it has %llu",
                       (unsigned long long)(n_old + nn),
                       (unsigned long long)cfg->max_tokens_per_session, (unsigned long long)n_old);
    }
    if (!cfg->max_disk_per_client) return RC_OK;
    /* What the commit would add: the rows of every window it completes (keys and values
     * of each memory layer) and 4 bytes a token. */
    const uint64_t W = (uint64_t)s->window;
    const uint64_t new_windows = d->mc->n_mem_layers ? (n_old + nn) / W - n_old / W : 0;
    const uint64_t row = dtype_row_bytes(s->opts.mem_dtype, d->mc->n_kv_heads, d->mc->head_dim);
    const uint64_t add = new_windows * W * row * 2 * (uint64_t)d->mc->n_mem_layers + 4 * nn;
    uint64_t n, bytes;
    pthread_mutex_lock(&d->mu);
    const char *owner = s->owner[0] ? s->owner : CLIENT_LOCAL;
    owned(d, owner, &n, &bytes);
    pthread_mutex_unlock(&d->mu);
    if (bytes + add > cfg->max_disk_per_client) {
        char have[32], more[32], lim[32];
        fmt_bytes(bytes, have, sizeof have);
        fmt_bytes(add, more, sizeof more);
        fmt_bytes(cfg->max_disk_per_client, lim, sizeof lim);
        count_refusal(d);
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "client '%s' has %s on disk and this would add about %s, over its limit "
                       "(--max-disk-per-client %s)",
                       owner, have, more, lim);
    }
    return RC_OK;
}
