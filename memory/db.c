/* db.c — LMDB persistence of sessions (see db.h for the layout and the commit rule). */
#include "memory/db.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/log.h"

#define DEFAULT_MAP ((size_t)256 << 20)
#define DEFAULT_MAX_MAP ((size_t)4 << 40)
#define LOCK_FILE "recalld.lock"

struct memory_db {
    MDB_env *env;
    MDB_dbi sessions, tokens, memory, index, rowsum;
    pthread_mutex_t mu; /* serializes every transaction and map resize */
    size_t map_size;
    size_t max_map_size;
    int lock_fd;
    char *dir; /* for reopening after MDB_PANIC, and for free-space messages */
};

/* Error text for the caller (common/rc.h formats it). */
#define set_err(...) ((void)rc_errf(RC_OK, __VA_ARGS__))

/* ---- keys ---------------------------------------------------------------------------- */

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

/* name \0 [extra bytes]; returns the length, or 0 if the name does not fit. */
static size_t make_key(uint8_t *buf, size_t cap, const char *name, size_t extra)
{
    size_t nl = strlen(name);
    if (nl + 1 + extra > cap) return 0;
    memcpy(buf, name, nl);
    buf[nl] = 0;
    return nl + 1 + extra;
}

/* LMDB keys are at most 511 bytes by default; names are at most 128 in the daemon. */
#define KEY_CAP 511

/* ---- open / close -------------------------------------------------------------------- */

/* Creates and opens db->env in db->dir with its named databases. */
static rc_t open_env(memory_db_t *db, char *err, size_t errlen)
{
    const char *dir = db->dir;
    MDB_txn *txn = NULL;
    int e = mdb_env_create(&db->env);
    if (!e) e = mdb_env_set_maxdbs(db->env, 8);
    if (!e) e = mdb_env_set_mapsize(db->env, db->map_size);
    if (e) {
        set_err(err, errlen, "LMDB: %s", mdb_strerror(e));
        return RC_ERR_IO;
    }
    /* MDB_NOTLS: read transactions are not tied to threads (calls come from the daemon's
     * main thread and its worker). Sync stays on: a commit is durable when it returns. */
    e = mdb_env_open(db->env, dir, MDB_NOTLS, 0644);
    if (e) {
        set_err(err, errlen, "cannot open the LMDB environment in %s: %s", dir, mdb_strerror(e));
        return (e == MDB_INVALID || e == MDB_VERSION_MISMATCH) ? RC_ERR_FORMAT : RC_ERR_IO;
    }
    /* A process killed with -9 leaves its reader slots behind; free them now. */
    int dead = 0;
    mdb_reader_check(db->env, &dead);
    if (dead) log_info("LMDB: cleared %d stale reader slots in %s", dead, dir);
    MDB_envinfo info;
    if (!mdb_env_info(db->env, &info) && info.me_mapsize > db->map_size)
        db->map_size = info.me_mapsize;
    if (db->max_map_size < db->map_size) db->max_map_size = db->map_size;

    e = mdb_txn_begin(db->env, NULL, 0, &txn);
    if (!e) e = mdb_dbi_open(txn, "sessions", MDB_CREATE, &db->sessions);
    if (!e) e = mdb_dbi_open(txn, "tokens", MDB_CREATE, &db->tokens);
    if (!e) e = mdb_dbi_open(txn, "memory", MDB_CREATE, &db->memory);
    if (!e) e = mdb_dbi_open(txn, "index", MDB_CREATE, &db->index);
    if (!e) e = mdb_dbi_open(txn, "rowsum", MDB_CREATE, &db->rowsum);
    if (!e) {
        e = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (e) {
        if (txn) mdb_txn_abort(txn);
        set_err(err, errlen, "cannot open the databases in %s: %s", dir, mdb_strerror(e));
        return RC_ERR_IO;
    }
    return RC_OK;
}

/* After a failed write LMDB may mark the environment unusable (MDB_PANIC) although the
 * data file still holds the last good commit: close and reopen it, so one bad write does
 * not fail every later request until a restart. Called under db->mu. */
static int reopen_env(memory_db_t *db)
{
    char err[256];
    mdb_env_close(db->env);
    db->env = NULL;
    rc_t rc = open_env(db, err, sizeof err);
    if (rc && db->env) {
        mdb_env_close(db->env); /* created but not opened: unusable */
        db->env = NULL;
    }
    if (rc) log_error("LMDB: reopening %s after a fatal write error failed: %s", db->dir, err);
    else log_warn("LMDB: reopened %s after a fatal write error; the last commit is intact", db->dir);
    return rc ? -1 : 0;
}

rc_t memory_db_open(const char *dir, const memory_db_opts_t *o, memory_db_t **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    memory_db_t *db = calloc(1, sizeof *db);
    if (!db) return RC_ERR_NOMEM;
    db->lock_fd = -1;
    pthread_mutex_init(&db->mu, NULL);
    db->map_size = o && o->map_size ? o->map_size : DEFAULT_MAP;
    db->max_map_size = o && o->max_map_size ? o->max_map_size : DEFAULT_MAX_MAP;
    if (db->max_map_size < db->map_size) db->max_map_size = db->map_size;
    rc_t rc = RC_ERR_IO;
    if (!(db->dir = strdup(dir))) {
        free(db);
        return RC_ERR_NOMEM;
    }

    /* LMDB allows several processes on one environment, but two daemons writing the same
     * sessions would interleave their windows: refuse a second one. */
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, LOCK_FILE);
    db->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (db->lock_fd < 0) {
        set_err(err, errlen, "cannot create %s: %s", path, strerror(errno));
        goto fail;
    }
    if (flock(db->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        set_err(err, errlen, "data directory %s is in use by another recalld (lock %s is held)",
                dir, path);
        rc = RC_ERR_BUSY;
        goto fail;
    }

    rc = open_env(db, err, errlen);
    if (rc) goto fail;
    *out = db;
    return RC_OK;
fail:
    memory_db_close(&db);
    return rc;
}

void memory_db_close(memory_db_t **pdb)
{
    if (!pdb || !*pdb) return;
    memory_db_t *db = *pdb;
    if (db->env) mdb_env_close(db->env);
    if (db->lock_fd >= 0) close(db->lock_fd); /* releases the flock */
    free(db->dir);
    pthread_mutex_destroy(&db->mu);
    free(db);
    *pdb = NULL;
}

size_t memory_db_map_size(memory_db_t *db)
{
    pthread_mutex_lock(&db->mu);
    size_t s = db->map_size;
    pthread_mutex_unlock(&db->mu);
    return s;
}

/* ---- commit -------------------------------------------------------------------------- */

static int put_tokens(MDB_txn *txn, memory_db_t *db, const memory_db_commit_t *c)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, c->session, 8);
    if (!kl) return EINVAL;
    put_be(kb + kl - 8, c->chunk_index, 8);
    MDB_val k = {kl, kb}, v = {c->n_tokens * 4, NULL};
    /* MDB_RESERVE: write straight into the page instead of building a copy first. */
    int e = mdb_put(txn, db->tokens, &k, &v, MDB_RESERVE);
    if (e) return e;
    uint8_t *p = v.mv_data;
    for (size_t i = 0; i < c->n_tokens; i++) {
        uint32_t t = (uint32_t)c->tokens[i];
        p[4 * i] = (uint8_t)t;
        p[4 * i + 1] = (uint8_t)(t >> 8);
        p[4 * i + 2] = (uint8_t)(t >> 16);
        p[4 * i + 3] = (uint8_t)(t >> 24);
    }
    return 0;
}

static int put_window(MDB_txn *txn, memory_db_t *db, const char *name, const memory_db_window_t *w)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, name, 12);
    if (!kl) return EINVAL;
    put_be(kb + kl - 12, w->layer, 4);
    put_be(kb + kl - 8, w->window, 8);
    MDB_val k = {kl, kb}, v = {2 * w->bytes, NULL};
    int e = mdb_put(txn, db->memory, &k, &v, MDB_RESERVE);
    if (e) return e;
    memcpy(v.mv_data, w->keys, w->bytes);
    memcpy((uint8_t *)v.mv_data + w->bytes, w->values, w->bytes);
    return 0;
}

static int put_sums(MDB_txn *txn, memory_db_t *db, const memory_db_commit_t *c)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, c->session, 8);
    if (!kl) return EINVAL;
    for (size_t w = 0; w < c->sum_windows; w++) {
        put_be(kb + kl - 8, c->sum_first + w, 8);
        MDB_val k = {kl, kb}, v = {8 * (size_t)c->sum_layers, NULL};
        int e = mdb_put(txn, db->rowsum, &k, &v, MDB_RESERVE);
        if (e) return e;
        uint8_t *p = v.mv_data;
        for (uint32_t l = 0; l < c->sum_layers; l++) {
            uint64_t x = c->sums[w * c->sum_layers + l];
            for (int b = 0; b < 8; b++) p[8 * l + b] = (uint8_t)(x >> (8 * b));
        }
    }
    return 0;
}

static int del_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, size_t pl);

/* One attempt; the transaction is gone (committed or aborted) when it returns. */
static int try_commit(memory_db_t *db, const memory_db_commit_t *c)
{
    MDB_txn *txn;
    int e = mdb_txn_begin(db->env, NULL, 0, &txn);
    if (e) return e;
    if (c->n_tokens) e = put_tokens(txn, db, c);
    for (size_t i = 0; !e && i < c->n_windows; i++)
        e = put_window(txn, db, c->session, &c->windows[i]);
    if (!e && c->sum_windows) e = put_sums(txn, db, c);
    if (!e && c->drop_legacy_rows) {
        uint8_t kb[KEY_CAP];
        size_t pl = make_key(kb, sizeof kb, c->session, 0);
        e = pl ? del_prefix(txn, db->memory, kb, pl) : EINVAL;
    }
    if (!e && c->record) {
        MDB_val k = {strlen(c->session), (void *)c->session};
        MDB_val v = {c->record_len, (void *)c->record};
        e = mdb_put(txn, db->sessions, &k, &v, 0);
    }
    if (e) {
        mdb_txn_abort(txn);
        return e;
    }
    return mdb_txn_commit(txn); /* frees the txn whatever it returns */
}

/* Grows the map after MDB_MAP_FULL (the failed transaction is already gone, so none is
 * open in this process: the one moment LMDB lets the map change). need: bytes the
 * operation wants. Returns RC_OK to retry. Called under db->mu. */
static rc_t grow_map(memory_db_t *db, size_t need, char *err, size_t errlen)
{
    if (db->map_size >= db->max_map_size) {
        set_err(err, errlen, "the database is full: its map reached the limit of %zu bytes",
                db->max_map_size);
        return RC_ERR_LIMIT;
    }
    size_t grow = db->map_size * 2;
    if (grow < db->map_size + 2 * need) grow = db->map_size + 2 * need;
    if (grow > db->max_map_size) grow = db->max_map_size;
    int e = mdb_env_set_mapsize(db->env, grow);
    if (e) {
        set_err(err, errlen, "cannot grow the LMDB map to %zu bytes: %s", grow, mdb_strerror(e));
        return RC_ERR_IO;
    }
    log_info("LMDB map grown from %zu to %zu bytes", db->map_size, grow);
    db->map_size = grow;
    return RC_OK;
}

static rc_t write_error(memory_db_t *db, int e, size_t need, char *err, size_t errlen)
{
    if (e == MDB_TXN_FULL) {
        set_err(err, errlen, "commit too large for one LMDB transaction (%zu bytes)", need);
        return RC_ERR_LIMIT;
    }
    /* LMDB reports a short write (disk full, file size limit) as EIO: say how much room
     * the file system has, which usually tells the reader what happened. */
    struct statvfs fs;
    if ((e == EIO || e == ENOSPC || e == EFBIG) && db->dir && statvfs(db->dir, &fs) == 0)
        set_err(err, errlen, "LMDB write failed: %s (%.1f MiB free in %s; this commit needs "
                "about %.1f MiB)", mdb_strerror(e),
                (double)fs.f_bavail * fs.f_frsize / 1048576.0, db->dir, need / 1048576.0);
    else
        set_err(err, errlen, "LMDB write failed: %s", mdb_strerror(e));
    return RC_ERR_IO;
}

/* One attempt at a write transaction (gone, committed or aborted, when it returns): an LMDB
 * error code, 0 when committed. */
typedef int (*write_attempt_fn)(memory_db_t *db, void *ctx);

/* Runs a write until it commits or fails for good: a full map is grown (by at least
 * grow_bytes) and the write tried again; an environment LMDB has declared unusable
 * (MDB_PANIC, after a failed write) is reopened once. need: the write's size, for messages.
 * Takes db->mu. */
static rc_t run_write(memory_db_t *db, write_attempt_fn attempt, void *ctx, size_t need,
                      size_t grow_bytes, char *err, size_t errlen)
{
    pthread_mutex_lock(&db->mu);
    rc_t rc = RC_OK;
    int reopened = 0;
    for (;;) {
        int e = db->env ? attempt(db, ctx) : MDB_PANIC;
        if (!e) break;
        if (e == MDB_PANIC && !reopened++ && !reopen_env(db)) continue;
        if (e != MDB_MAP_FULL) {
            rc = write_error(db, e, need, err, errlen);
            break;
        }
        rc = grow_map(db, grow_bytes, err, errlen);
        if (rc) break;
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

static int commit_attempt(memory_db_t *db, void *ctx)
{
    return try_commit(db, ctx);
}

rc_t memory_db_commit(memory_db_t *db, const memory_db_commit_t *c, char *err, size_t errlen)
{
    if (!c->session || !c->session[0] || strlen(c->session) + 13 > KEY_CAP ||
        (c->sum_windows && (!c->sums || !c->sum_layers))) {
        set_err(err, errlen, "invalid commit (session name missing or too long)");
        return RC_ERR_INVALID;
    }
    size_t need = c->record_len + c->n_tokens * 4 + 4096 + c->sum_windows * (64 + 8 * c->sum_layers);
    for (size_t i = 0; i < c->n_windows; i++)
        need += 2 * c->windows[i].bytes + 4096;

    return run_write(db, commit_attempt, (void *)c, need, need, err, errlen);
}

/* ---- drop ---------------------------------------------------------------------------- */

/* Deletes every key of dbi that starts with prefix. */
static int del_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, size_t pl)
{
    MDB_cursor *cur;
    int e = mdb_cursor_open(txn, dbi, &cur);
    if (e) return e;
    MDB_val k = {pl, (void *)prefix}, v;
    e = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!e) {
        if (k.mv_size < pl || memcmp(k.mv_data, prefix, pl) != 0) break;
        e = mdb_cursor_del(cur, 0);
        if (e) break;
        /* Seek again rather than trust the cursor's position after a delete. */
        k.mv_size = pl;
        k.mv_data = (void *)prefix;
        e = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    }
    mdb_cursor_close(cur);
    return e == MDB_NOTFOUND ? 0 : e;
}

/* One attempt at a drop; the transaction is gone when it returns. */
static int try_drop(memory_db_t *db, const char *session, const uint8_t *prefix, size_t pl,
                    int *found)
{
    MDB_txn *txn;
    int e = mdb_txn_begin(db->env, NULL, 0, &txn);
    if (e) return e;
    MDB_val k = {strlen(session), (void *)session};
    *found = 1;
    e = mdb_del(txn, db->sessions, &k, NULL);
    if (e == MDB_NOTFOUND) {
        *found = 0;
        e = 0;
    }
    if (!e) e = del_prefix(txn, db->tokens, prefix, pl);
    if (!e) e = del_prefix(txn, db->memory, prefix, pl);
    if (!e) e = del_prefix(txn, db->index, prefix, pl);
    if (!e) e = del_prefix(txn, db->rowsum, prefix, pl);
    if (e) {
        mdb_txn_abort(txn);
        return e;
    }
    return mdb_txn_commit(txn);
}

typedef struct drop_ctx {
    const char *session;
    const uint8_t *prefix;
    size_t pl;
    int found;
} drop_ctx_t;

static int drop_attempt(memory_db_t *db, void *ctx)
{
    drop_ctx_t *d = ctx;
    return try_drop(db, d->session, d->prefix, d->pl, &d->found);
}

rc_t memory_db_drop(memory_db_t *db, const char *session, char *err, size_t errlen)
{
    uint8_t kb[KEY_CAP];
    size_t pl = make_key(kb, sizeof kb, session, 0);
    if (!pl) {
        set_err(err, errlen, "session name too long");
        return RC_ERR_INVALID;
    }
    drop_ctx_t dc = {session, kb, pl, 0};
    /* Deleting copies the pages it touches, so even a drop can fill the map. */
    rc_t rc = run_write(db, drop_attempt, &dc, 0, 1 << 20, err, errlen);
    if (!rc && !dc.found) {
        set_err(err, errlen, "no session '%s' in the database", session);
        rc = RC_ERR_NOT_FOUND;
    }
    return rc;
}

/* ---- reading ------------------------------------------------------------------------- */

void memory_db_records_free(memory_db_record_t *recs, size_t n)
{
    if (!recs) return;
    for (size_t i = 0; i < n; i++) {
        free(recs[i].name);
        free(recs[i].data);
    }
    free(recs);
}

rc_t memory_db_list(memory_db_t *db, memory_db_record_t **recs, size_t *n)
{
    *recs = NULL;
    *n = 0;
    pthread_mutex_lock(&db->mu);
    rc_t rc = RC_OK;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    memory_db_record_t *r = NULL;
    size_t cnt = 0, cap = 0;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (!e) e = mdb_cursor_open(txn, db->sessions, &cur);
    MDB_val k, v;
    if (!e) e = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (!e) {
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            memory_db_record_t *nr = realloc(r, cap * sizeof *r);
            if (!nr) {
                rc = RC_ERR_NOMEM;
                break;
            }
            r = nr;
        }
        memory_db_record_t *x = &r[cnt];
        x->name = malloc(k.mv_size + 1);
        x->data = malloc(v.mv_size ? v.mv_size : 1);
        if (!x->name || !x->data) {
            free(x->name);
            free(x->data);
            rc = RC_ERR_NOMEM;
            break;
        }
        memcpy(x->name, k.mv_data, k.mv_size);
        x->name[k.mv_size] = 0;
        memcpy(x->data, v.mv_data, v.mv_size);
        x->len = v.mv_size;
        cnt++;
        e = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!rc && e && e != MDB_NOTFOUND) rc = RC_ERR_IO;
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    pthread_mutex_unlock(&db->mu);
    if (rc) {
        memory_db_records_free(r, cnt);
        return rc;
    }
    *recs = r;
    *n = cnt;
    return RC_OK;
}

rc_t memory_db_load_tokens(memory_db_t *db, const char *session, int32_t **tokens, size_t *n,
                           uint64_t *chunks, uint64_t *next_chunk)
{
    *tokens = NULL;
    *n = 0;
    if (chunks) *chunks = 0;
    if (next_chunk) *next_chunk = 0;
    uint8_t kb[KEY_CAP];
    size_t pl = make_key(kb, sizeof kb, session, 0);
    if (!pl) return RC_ERR_INVALID;
    pthread_mutex_lock(&db->mu);
    rc_t rc = RC_OK;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    int32_t *t = NULL;
    size_t cnt = 0, cap = 0;
    uint64_t nch = 0, next = 0;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (!e) e = mdb_cursor_open(txn, db->tokens, &cur);
    MDB_val k = {pl, kb}, v;
    if (!e) e = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!e) {
        if (k.mv_size != pl + 8 || memcmp(k.mv_data, kb, pl) != 0) break;
        if (v.mv_size % 4) {
            rc = RC_ERR_FORMAT;
            break;
        }
        size_t m = v.mv_size / 4;
        if (cnt + m > cap) {
            size_t nc = cap ? cap : 1024;
            while (nc < cnt + m)
                nc *= 2;
            int32_t *nt = realloc(t, nc * sizeof *t);
            if (!nt) {
                rc = RC_ERR_NOMEM;
                break;
            }
            t = nt;
            cap = nc;
        }
        const uint8_t *p = v.mv_data;
        for (size_t i = 0; i < m; i++)
            t[cnt + i] = (int32_t)((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                                   (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24);
        cnt += m;
        nch++;
        next = get_be((const uint8_t *)k.mv_data + pl, 8) + 1;
        e = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!rc && e && e != MDB_NOTFOUND) rc = RC_ERR_IO;
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    pthread_mutex_unlock(&db->mu);
    if (rc) {
        free(t);
        return rc;
    }
    *tokens = t;
    *n = cnt;
    if (chunks) *chunks = nch;
    if (next_chunk) *next_chunk = next;
    return RC_OK;
}

rc_t memory_db_read_window(memory_db_t *db, const char *session, uint32_t layer, uint64_t window,
                           memory_db_window_fn fn, void *ctx)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, session, 12);
    if (!kl) return RC_ERR_INVALID;
    put_be(kb + kl - 12, layer, 4);
    put_be(kb + kl - 8, window, 8);
    pthread_mutex_lock(&db->mu);
    MDB_txn *txn;
    rc_t rc;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (e) {
        rc = RC_ERR_IO;
    } else {
        MDB_val k = {kl, kb}, v;
        e = mdb_get(txn, db->memory, &k, &v);
        if (e == MDB_NOTFOUND)
            rc = RC_ERR_NOT_FOUND;
        else if (e)
            rc = RC_ERR_IO;
        else if (v.mv_size % 2)
            rc = RC_ERR_FORMAT;
        else
            rc = fn(ctx, v.mv_data, (const uint8_t *)v.mv_data + v.mv_size / 2, v.mv_size / 2);
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

rc_t memory_db_get_sums(memory_db_t *db, const char *session, uint64_t first, size_t n,
                        uint32_t layers, uint64_t *out)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, session, 8);
    if (!kl) return RC_ERR_INVALID;
    pthread_mutex_lock(&db->mu);
    MDB_txn *txn;
    rc_t rc = RC_OK;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (e) {
        rc = RC_ERR_IO;
    } else {
        for (size_t w = 0; w < n && !rc; w++) {
            put_be(kb + kl - 8, first + w, 8);
            MDB_val k = {kl, kb}, v;
            e = mdb_get(txn, db->rowsum, &k, &v);
            if (e)
                rc = e == MDB_NOTFOUND ? RC_ERR_NOT_FOUND : RC_ERR_IO;
            else if (v.mv_size != 8 * (size_t)layers)
                rc = RC_ERR_FORMAT;
            else
                for (uint32_t l = 0; l < layers; l++) {
                    uint64_t x = 0;
                    for (int b = 7; b >= 0; b--) x = x << 8 | ((const uint8_t *)v.mv_data)[8 * l + b];
                    out[w * layers + l] = x;
                }
        }
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

static int sum_prefix(MDB_txn *txn, MDB_dbi dbi, const uint8_t *prefix, size_t pl, uint64_t *sum)
{
    MDB_cursor *cur;
    int e = mdb_cursor_open(txn, dbi, &cur);
    if (e) return e;
    MDB_val k = {pl, (void *)prefix}, v;
    e = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!e) {
        if (k.mv_size < pl || memcmp(k.mv_data, prefix, pl) != 0) break;
        *sum += v.mv_size;
        e = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return e == MDB_NOTFOUND ? 0 : e;
}

rc_t memory_db_session_bytes(memory_db_t *db, const char *session, uint64_t *bytes)
{
    *bytes = 0;
    uint8_t kb[KEY_CAP];
    size_t pl = make_key(kb, sizeof kb, session, 0);
    if (!pl) return RC_ERR_INVALID;
    pthread_mutex_lock(&db->mu);
    MDB_txn *txn;
    uint64_t sum = 0;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (!e) {
        MDB_val k = {strlen(session), (void *)session}, v;
        int g = mdb_get(txn, db->sessions, &k, &v);
        if (!g) sum += v.mv_size;
        e = sum_prefix(txn, db->tokens, kb, pl, &sum);
        if (!e) e = sum_prefix(txn, db->memory, kb, pl, &sum);
        mdb_txn_abort(txn);
    }
    pthread_mutex_unlock(&db->mu);
    if (e) return RC_ERR_IO;
    *bytes = sum;
    return RC_OK;
}

/* ---- derived index blobs ------------------------------------------------------------- */

static int try_put_index(memory_db_t *db, const uint8_t *kb, size_t kl, uint64_t rows,
                         const void *data, size_t len)
{
    MDB_txn *txn;
    int e = mdb_txn_begin(db->env, NULL, 0, &txn);
    if (e) return e;
    MDB_val k = {kl, (void *)kb}, v = {8 + len, NULL};
    e = mdb_put(txn, db->index, &k, &v, MDB_RESERVE);
    if (e) {
        mdb_txn_abort(txn);
        return e;
    }
    put_be(v.mv_data, rows, 8);
    memcpy((uint8_t *)v.mv_data + 8, data, len);
    return mdb_txn_commit(txn);
}

typedef struct index_ctx {
    const uint8_t *kb;
    size_t kl;
    uint64_t rows;
    const void *data;
    size_t len;
} index_ctx_t;

static int index_attempt(memory_db_t *db, void *ctx)
{
    const index_ctx_t *i = ctx;
    return try_put_index(db, i->kb, i->kl, i->rows, i->data, i->len);
}

rc_t memory_db_put_index(memory_db_t *db, const char *session, uint32_t layer, uint64_t rows,
                         const void *data, size_t len, char *err, size_t errlen)
{
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, session, 4);
    if (!kl) {
        set_err(err, errlen, "session name too long for a key");
        return RC_ERR_INVALID;
    }
    put_be(kb + kl - 4, layer, 4);
    index_ctx_t ic = {kb, kl, rows, data, len};
    return run_write(db, index_attempt, &ic, len, len + 4096, err, errlen);
}

rc_t memory_db_get_index(memory_db_t *db, const char *session, uint32_t layer, uint64_t *rows,
                         void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    *rows = 0;
    uint8_t kb[KEY_CAP];
    size_t kl = make_key(kb, sizeof kb, session, 4);
    if (!kl) return RC_ERR_INVALID;
    put_be(kb + kl - 4, layer, 4);
    pthread_mutex_lock(&db->mu);
    MDB_txn *txn;
    rc_t rc = RC_OK;
    int e = (db->env ? mdb_txn_begin(db->env, NULL, MDB_RDONLY, &txn) : MDB_PANIC);
    if (!e) {
        MDB_val k = {kl, kb}, v;
        e = mdb_get(txn, db->index, &k, &v);
        if (e == MDB_NOTFOUND) {
            rc = RC_ERR_NOT_FOUND;
        } else if (e || v.mv_size < 8) {
            rc = e ? RC_ERR_IO : RC_ERR_FORMAT;
        } else if (!(*data = malloc(v.mv_size - 8 ? v.mv_size - 8 : 1))) {
            rc = RC_ERR_NOMEM;
        } else {
            *rows = get_be(v.mv_data, 8);
            *len = v.mv_size - 8;
            memcpy(*data, (const uint8_t *)v.mv_data + 8, *len);
        }
        mdb_txn_abort(txn);
    } else {
        rc = RC_ERR_IO;
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}
