/* residency.c — the worker's side of the memory tiers: bringing a session in for a job and
 * moving others down when the daemon-wide budgets need room (memory/tiers.h decides who).
 *
 * A session's rows are on disk (nothing held), in host memory (its row files mapped: the
 * page cache holds them, and its tokens are loaded), or also on the GPU (its stream's
 * device mirror). Moving down a tier drops the upper copy after saving a knn session's
 * index; nothing is ever written to the rows themselves, so a move cannot lose data, and a
 * kill in the middle of one leaves the session as its last commit left it. Only the worker
 * moves rows, between jobs, so a session is never moved under a running forward (its slot
 * is pinned for the job as well, which the policy honours). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/crash.h"
#include "common/log.h"
#include "daemon/daemon.h"
#include "memory/knn.h"

/* On the CPU a knn session's index keeps IVF lists that hold the keys again as fp32:
 * about the rows' size once the index is IVF (memory/knn.h). An estimate of what bringing
 * the session in will take; once it is in, session_memory_index_bytes counts it. */
static size_t knn_lists_bytes(const daemon_t *d, const session_t *s)
{
    if (daemon_memory_on_device(d) || !s->opts.memory_knn ||
        s->windows * (uint64_t)s->window < MEMORY_KNN_DEFAULT_IVF_MIN_ROWS)
        return 0;
    return (size_t)session_memory_disk_bytes(s->mem);
}

/* The GPU and host bytes a session's job will hold, for the budgets: its committed rows
 * (both tiers hold all of them, the GPU one up to its stream's device budget: the session's
 * own or the daemon's, whichever is smaller), its tokens and its kNN lists. */
static void session_need(const daemon_t *d, const session_t *s, size_t *host, size_t *gpu)
{
    size_t rows = (size_t)session_memory_disk_bytes(s->mem);
    *host = rows + (size_t)s->n_tokens * sizeof(int32_t) + knn_lists_bytes(d, s);
    *gpu = 0;
    if (daemon_memory_on_device(d)) {
        size_t cap = daemon_stream_gpu_budget(d, &s->opts);
        *gpu = cap && rows > cap ? cap : rows;
    }
}

void session_account_locked(daemon_t *d, session_t *s)
{
    if (s->problem[0] || !s->mem) return;
    size_t host = session_memory_host_bytes(s->mem);
    size_t gpu = s->stream ? model_stream_device_bytes(s->stream) : 0;
    s->mem_bytes_host = host;
    s->mem_bytes_device = gpu;
    s->tier = gpu || (s->stream && daemon_memory_on_device(d)) ? "gpu"
              : session_memory_loaded(s->mem)                  ? "host"
                                                                : "disk";
    if (s->tokens_loaded) host += s->tokens_cap * sizeof(int32_t);
    host += session_memory_index_bytes(s->mem);
    memory_tiers_set(d->tiers, &s->slot, host, gpu);
}

/* Moves s down to `to`. Worker only, between jobs. Dropping the stream drops any device
 * copy; a kNN index stays with the rows, and the session-memory object saves it when the
 * rows go to disk. */
static void move_down(session_t *s, tiers_level_t to)
{
    model_stream_destroy(&s->stream);
    crash_point("evict"); /* the GPU copy and the stream are gone, the rows still mapped */
    if (to == TIERS_DISK && s->mem) {
        rc_t rc = session_memory_evict(s->mem);
        if (rc) /* uncommitted rows: a job left them behind, which is a bug */
            log_error("session '%s': cannot evict its rows: %s", s->name, rc_strerror(rc));
        free(s->tokens);
        s->tokens = NULL;
        s->tokens_cap = 0;
        s->tokens_loaded = 0;
    }
    log_info("session '%s': memory moved to the %s tier", s->name,
             to == TIERS_DISK ? "disk" : "host");
}

/* Makes room for s (which is pinned) to hold its whole size: moves least recently used
 * sessions down, outside the lock (unmapping and saving indexes take time). */
static void make_room(daemon_t *d, session_t *s)
{
    size_t host, gpu;
    session_need(d, s, &host, &gpu);
    pthread_mutex_lock(&d->mu);
    size_t cap = memory_tiers_count(d->tiers);
    tiers_move_t *moves = cap ? malloc(cap * sizeof *moves) : NULL;
    int fits = 1;
    size_t n = moves ? memory_tiers_plan(d->tiers, &s->slot, host, gpu, moves, cap, &fits) : 0;
    session_t **victims = n ? malloc(n * sizeof *victims) : NULL;
    if (n && !victims) n = 0;
    for (size_t i = 0; i < n; i++) {
        /* The slot is embedded in its session; a reference keeps the session alive while
         * its rows move, even if a Drop removes it from the table meanwhile. */
        victims[i] = (session_t *)((char *)moves[i].slot - offsetof(session_t, slot));
        victims[i]->refs++;
    }
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < n; i++) move_down(victims[i], moves[i].to);
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < n; i++) {
        session_account_locked(d, victims[i]);
        d->evictions++;
        /* Keeps, in place, the ones this was the last reference to (a Drop came). */
        session_unref_locked(d, victims[i], &victims[i]);
    }
    pthread_mutex_unlock(&d->mu);
    for (size_t i = 0; i < n; i++) session_free(victims[i]); /* NULL-safe */
    if (!fits)
        log_info("session '%s' (%.1f MiB of rows and tokens) does not fit the budgets beside "
                 "the pinned sessions; it runs from the lower tiers",
                 s->name, (double)host / 1048576.0);
    free(victims);
    free(moves);
}

/* The session's committed tokens, from the catalogue; they must be what its record says. */
static rc_t load_tokens(daemon_t *d, session_t *s, char *err, size_t errlen)
{
    int32_t *toks = NULL;
    size_t n = 0;
    uint64_t chunks = 0, next = 0;
    rc_t rc = memory_db_load_tokens(d->db, s->name, &toks, &n, &chunks, &next);
    if (rc == RC_ERR_FORMAT || (!rc && n != s->n_tokens)) {
        free(toks);
        return rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                       "session '%s': the catalogue holds %zu of its tokens but its record says "
                       "%llu",
                       s->name, n, (unsigned long long)s->n_tokens);
    }
    if (rc) return rc_errf(rc, err, errlen, "session '%s': cannot read its tokens: %s", s->name,
                           rc_strerror(rc));
    s->tokens = toks;
    s->tokens_cap = n;
    s->tokens_loaded = 1;
    if (next > s->next_chunk) s->next_chunk = next;
    return RC_OK;
}

/* The stream a job runs on, over the session's host tier. Its device budget is the
 * session's own capped by the daemon's: a session larger than the GPU budget keeps its
 * newest rows there and the rest below (knn), rather than being refused for its size. */
static rc_t open_stream(daemon_t *d, session_t *s, char *err, size_t errlen)
{
    model_stream_opts_t o = s->opts;
    o.gpu_memory_budget = daemon_stream_gpu_budget(d, &s->opts);
    char why[256] = "";
    rc_t rc = model_stream_create_with(d->backend, &o, session_memory_store(s->mem),
                                       session_memory_index(s->mem), &s->stream, why, sizeof why);
    if (rc)
        return rc_errf(rc, err, errlen, "session '%s': cannot create its stream: %s", s->name,
                       why[0] ? why : rc_strerror(rc));
    return RC_OK;
}

rc_t session_bring_in(daemon_t *d, session_t *s, int rows, char *err, size_t errlen)
{
    pthread_mutex_lock(&d->mu);
    if (s->dropped) {
        pthread_mutex_unlock(&d->mu);
        return rc_errf(RC_ERR_NOT_FOUND, err, errlen, "session '%s' was dropped", s->name);
    }
    if (s->problem[0]) {
        rc_t rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen, "session '%s' is unavailable: %s",
                          s->name, s->problem);
        pthread_mutex_unlock(&d->mu);
        return rc;
    }
    memory_tiers_pin(&s->slot);
    memory_tiers_touch(d->tiers, &s->slot);
    pthread_mutex_unlock(&d->mu);

    int was_on_disk = !session_memory_loaded(s->mem) || !s->tokens_loaded;
    if (rows && (!s->stream || was_on_disk)) make_room(d, s);
    double t0 = clock_now_s();
    rc_t rc = RC_OK;
    if (!s->tokens_loaded) rc = load_tokens(d, s, err, errlen);
    if (!rc && rows && !session_memory_loaded(s->mem)) rc = session_memory_load(s->mem, err, errlen);
    if (!rc && rows && !s->stream) rc = open_stream(d, s, err, errlen);
    pthread_mutex_lock(&d->mu);
    /* A Drop that came meanwhile moved the row files away under the load: that is the
     * failure's cause, not damage. */
    if (rc && s->dropped)
        rc = rc_errf(RC_ERR_NOT_FOUND, err, errlen, "session '%s' was dropped", s->name);
    if (rc == RC_ERR_UNAVAILABLE) session_mark_unavailable(s, err);
    if (!rc && rows && was_on_disk) d->loads++;
    session_account_locked(d, s);
    if (rc) memory_tiers_unpin(&s->slot);
    pthread_mutex_unlock(&d->mu);
    if (rc == RC_ERR_UNAVAILABLE) {
        log_warn("%s; the session is now unavailable (the daemon serves the others)", err);
        session_move_to_disk(d, s);
    } else if (!rc && rows && was_on_disk) {
        log_info("session '%s': %llu windows brought in from disk in %.3f s", s->name,
                 (unsigned long long)s->windows, clock_now_s() - t0);
    }
    return rc;
}

void session_release(daemon_t *d, session_t *s)
{
    pthread_mutex_lock(&d->mu);
    session_account_locked(d, s);
    memory_tiers_touch(d->tiers, &s->slot);
    size_t host = 0, gpu = 0;
    memory_tiers_used(d->tiers, &host, &gpu);
    size_t hb = memory_tiers_host_budget(d->tiers), gb = memory_tiers_gpu_budget(d->tiers);
    int over = !s->problem[0] && ((hb && host > hb) || (gb && gpu > gb));
    if (!over) memory_tiers_unpin(&s->slot);
    pthread_mutex_unlock(&d->mu);
    if (!over) return;
    /* It grew past a budget (an Ingest): the others make room now, still with s pinned. */
    make_room(d, s);
    pthread_mutex_lock(&d->mu);
    memory_tiers_unpin(&s->slot);
    pthread_mutex_unlock(&d->mu);
}

void session_move_to_disk(daemon_t *d, session_t *s)
{
    (void)d; /* the moves need nothing of the daemon's now; callers keep the one signature */
    if (s->mem) move_down(s, TIERS_DISK);
}

void session_evict_all(daemon_t *d)
{
    for (size_t i = 0; i < d->n_sessions; i++) session_move_to_disk(d, d->sessions[i]);
}
