/* session_memory.c — a session's rows on disk, in the page cache, and their checksums
 * (see session_memory.h for the contract). */
#include "memory/session_memory.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/crash.h"
#include "common/log.h"
#include "memory/knn.h"

struct session_memory {
    memory_db_t *db;
    char *name;
    char *dir; /* rows_root/<name> */
    char *root;
    session_memory_shape_t shape;
    size_t row_bytes;    /* one row of one layer's keys (values the same) */
    uint64_t windows;    /* committed */
    memory_store_t *mem; /* the host tier; NULL on disk */
    memory_knn_t *knn;   /* knn sessions, loaded: the index over mem's keys; else NULL */
    size_t *knn_saved;   /* [n_layers] rows each layer's index had when last saved/loaded */
};

uint64_t session_memory_window_sum(const void *keys, const void *values, size_t bytes)
{
    /* The state is opaque in the shared library's ABI, hence allocated; a window is tens
     * of kilobytes at the least, so the allocation costs little next to the hashing. */
    XXH3_state_t *st = XXH3_createState();
    ASSERT(st != NULL);
    XXH3_64bits_reset(st);
    XXH3_64bits_update(st, keys, bytes);
    XXH3_64bits_update(st, values, bytes);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static char *join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

rc_t session_memory_open(memory_db_t *db, const char *rows_root, const char *name,
                         const session_memory_shape_t *shape, uint64_t windows,
                         session_memory_t **out)
{
    *out = NULL;
    if (shape->n_layers < 0 || shape->row_dim <= 0 || shape->window <= 0 ||
        shape->head_dim < 0 || (shape->head_dim && shape->row_dim % shape->head_dim) ||
        (shape->knn && (shape->knn_opts.nlist < 0 || shape->knn_opts.nprobe < 0)))
        return RC_ERR_INVALID;
    session_memory_t *m = calloc(1, sizeof *m);
    if (!m) return RC_ERR_NOMEM;
    m->db = db;
    m->shape = *shape;
    if (!m->shape.head_dim) m->shape.head_dim = shape->row_dim; /* one head per row */
    m->row_bytes = dtype_row_bytes(shape->dtype, m->shape.row_dim / m->shape.head_dim,
                                   m->shape.head_dim);
    m->windows = windows;
    m->name = strdup(name);
    m->root = strdup(rows_root);
    m->dir = join(rows_root, name);
    if (!m->name || !m->root || !m->dir) {
        session_memory_close(&m);
        return RC_ERR_NOMEM;
    }
    *out = m;
    return RC_OK;
}

void session_memory_close(session_memory_t **pm)
{
    if (!pm || !*pm) return;
    session_memory_t *m = *pm;
    memory_knn_destroy(&m->knn);
    free(m->knn_saved);
    memory_store_destroy(&m->mem);
    free(m->name);
    free(m->dir);
    free(m->root);
    free(m);
    *pm = NULL;
}

int session_memory_loaded(const session_memory_t *m)
{
    return m->mem != NULL;
}

memory_store_t *session_memory_store(session_memory_t *m)
{
    return m->mem;
}

uint64_t session_memory_windows(const session_memory_t *m)
{
    return m->windows;
}

memory_knn_t *session_memory_index(session_memory_t *m)
{
    return m->knn;
}

size_t session_memory_host_bytes(const session_memory_t *m)
{
    return m->mem ? memory_store_bytes(m->mem) : 0;
}

size_t session_memory_index_bytes(const session_memory_t *m)
{
    return m->knn ? memory_knn_bytes(m->knn) : 0;
}

uint64_t session_memory_disk_bytes(const session_memory_t *m)
{
    return m->windows * (uint64_t)m->shape.window * 2 * m->row_bytes * (uint64_t)m->shape.n_layers;
}

/* A directory's entries reach the disk (a new file's name, not only its bytes). */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    if (fsync(fd) != 0) log_warn("cannot sync directory %s: %s", dir, strerror(errno));
    close(fd);
}

/* ---- checksums ----------------------------------------------------------------------- */

/* Checks windows [0, windows) of the store against the catalogue's checksums. Windows are
 * independent, so they are hashed in parallel (the whole session is read here: it is what
 * a restart waits for). Returns RC_OK, RC_ERR_UNAVAILABLE naming the first bad window, or
 * what reading the catalogue returned. */
static rc_t check_sums(session_memory_t *m, char *err, size_t errlen)
{
    const int L = m->shape.n_layers;
    const uint64_t nw = m->windows;
    if (!L || !nw) return RC_OK;
    uint64_t *want = malloc(nw * (size_t)L * sizeof *want);
    if (!want) return RC_ERR_NOMEM;
    rc_t rc = memory_db_get_sums(m->db, m->name, 0, (size_t)nw, (uint32_t)L, want);
    if (rc == RC_ERR_NOT_FOUND || rc == RC_ERR_FORMAT) {
        free(want);
        return rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                       "session '%s': the catalogue lacks the row checksums of some of its %llu "
                       "windows",
                       m->name, (unsigned long long)nw);
    }
    if (rc) {
        free(want);
        return rc_errf(rc, err, errlen, "session '%s': cannot read its row checksums: %s",
                       m->name, rc_strerror(rc));
    }
    const size_t wb = (size_t)m->shape.window * m->row_bytes;
    int64_t first_bad = -1;
    int bad_layer = 0;
#pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < (int64_t)(nw * (uint64_t)L); i++) {
        const uint64_t w = (uint64_t)i / (uint64_t)L;
        const int l = (int)((uint64_t)i % (uint64_t)L);
        const char *k = (const char *)memory_store_keys(m->mem, l) + w * wb;
        const char *v = (const char *)memory_store_values(m->mem, l) + w * wb;
        if (session_memory_window_sum(k, v, wb) != want[i]) {
#pragma omp critical(sm_bad)
            if (first_bad < 0 || i < first_bad * L + bad_layer) {
                first_bad = (int64_t)w;
                bad_layer = l;
            }
        }
    }
    free(want);
    if (first_bad >= 0)
        return rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                       "session '%s': memory window %lld of memory layer %d does not match its "
                       "checksum (the row files under %s were changed or damaged)",
                       m->name, (long long)first_bad, bad_layer, m->dir);
    return RC_OK;
}

/* ---- migration from rows stored as LMDB blobs ---------------------------------------- */

typedef struct migrate_ctx {
    memory_store_t *mem;
    int layer;
    size_t want_bytes;
    uint64_t sum;
} migrate_ctx_t;

static rc_t migrate_window(void *ctx, const void *keys, const void *values, size_t bytes)
{
    migrate_ctx_t *c = ctx;
    if (bytes != c->want_bytes) return RC_ERR_FORMAT;
    c->sum = session_memory_window_sum(keys, values, bytes);
    size_t rb = memory_store_row_bytes(c->mem);
    return memory_store_append_raw(c->mem, c->layer, keys, values, bytes / rb);
}

/* A session committed before row files keeps its rows as "memory" blobs in LMDB: copy them
 * into fresh files, sync them, then in one transaction record their checksums and delete
 * the blobs. A crash before that transaction leaves the blobs authoritative (the files are
 * started over next time); after it, the files are. */
static rc_t migrate(session_memory_t *m, char *err, size_t errlen)
{
    const int L = m->shape.n_layers;
    const uint64_t nw = m->windows;
    const size_t wb = (size_t)m->shape.window * m->row_bytes;
    memory_store_t *mem = NULL;
    uint64_t *sums = malloc(nw * (size_t)L * sizeof *sums);
    if (!sums) return RC_ERR_NOMEM;
    log_info("session '%s': moving %llu windows of memory rows from LMDB into row files",
             m->name, (unsigned long long)nw);
    rc_t rc = memory_store_open_heads(L, m->shape.row_dim / m->shape.head_dim, m->shape.head_dim,
                                      m->shape.dtype, m->dir, 0, 1, &mem, err, errlen);
    for (uint64_t w = 0; !rc && w < nw; w++)
        for (int l = 0; !rc && l < L; l++) {
            migrate_ctx_t c = {mem, l, wb, 0};
            rc = memory_db_read_window(m->db, m->name, (uint32_t)l, w, migrate_window, &c);
            if (rc == RC_ERR_NOT_FOUND || rc == RC_ERR_FORMAT)
                rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                             "session '%s': memory window %llu of memory layer %d is %s in the "
                             "database",
                             m->name, (unsigned long long)w, l,
                             rc == RC_ERR_NOT_FOUND ? "missing" : "of the wrong size");
            else if (rc)
                rc_errf(rc, err, errlen, "session '%s': cannot copy memory window %llu: %s",
                        m->name, (unsigned long long)w, rc_strerror(rc));
            sums[w * L + l] = c.sum;
        }
    if (!rc) crash_point("migrate-copied"); /* in the files, not synced */
    if (!rc) rc = memory_store_sync(mem, err, errlen);
    if (!rc) {
        sync_dir(m->dir);
        crash_point("migrate-synced"); /* synced; the blobs are still the catalogue's rows */
        memory_db_commit_t c = {.session = m->name,
                                .sums = sums,
                                .sum_first = 0,
                                .sum_windows = (size_t)nw,
                                .sum_layers = (uint32_t)L,
                                .drop_legacy_rows = 1};
        rc = memory_db_commit(m->db, &c, err, errlen);
    }
    free(sums);
    if (rc) {
        memory_store_destroy(&mem);
        return rc;
    }
    m->mem = mem;
    log_info("session '%s': memory rows moved into %s", m->name, m->dir);
    return RC_OK;
}

/* ---- the kNN index ------------------------------------------------------------------- */

/* The index of a knn session whose rows were just loaded: the copy saved at its last
 * eviction where it fits the rows, else empty (the stream that searches it first adds the
 * rows: the index is a function of the keys alone, memory/knn.h). A saved copy that does
 * not load costs only that rebuild. */
static rc_t index_open(session_memory_t *m)
{
    const int L = m->shape.n_layers, nkv = m->shape.row_dim / m->shape.head_dim;
    memory_knn_opts_t ko = m->shape.knn_opts;
    rc_t rc = memory_knn_create(L, nkv, m->shape.head_dim, &ko, &m->knn);
    if (rc) return rc;
    if (!(m->knn_saved = calloc(L ? (size_t)L : 1, sizeof *m->knn_saved))) {
        memory_knn_destroy(&m->knn);
        return RC_ERR_NOMEM;
    }
    for (int l = 0; l < L; l++) {
        void *buf = NULL;
        size_t len = 0;
        uint64_t rows = 0;
        rc = memory_db_get_index(m->db, m->name, (uint32_t)l, &rows, &buf, &len);
        /* A copy for more rows than are committed indexes rows that never were. */
        if (rc == RC_OK && rows > memory_store_rows(m->mem, l)) rc = RC_ERR_FORMAT;
        if (rc == RC_OK) rc = memory_knn_load(m->knn, l, buf, len, (size_t)rows);
        free(buf);
        if (rc == RC_OK) {
            m->knn_saved[l] = (size_t)rows;
        } else if (rc == RC_ERR_NOT_FOUND) {
            log_info("session '%s': no saved kNN index for memory layer %d; it is built from "
                     "the stored keys when first searched",
                     m->name, l);
        } else {
            log_warn("session '%s': the saved kNN index of memory layer %d failed to load (%s); "
                     "it is rebuilt from the stored keys",
                     m->name, l, rc_strerror(rc));
        }
    }
    return RC_OK;
}

/* Saves each layer's index that changed since it was loaded or saved, so that bringing the
 * session back does not rebuild it. A failure is logged and costs only that rebuild. */
static void index_save(session_memory_t *m)
{
    for (int l = 0; m->knn && l < m->shape.n_layers; l++) {
        const size_t rows = memory_knn_rows(m->knn, l);
        if (!rows || rows == m->knn_saved[l]) continue;
        void *buf = NULL;
        size_t len = 0;
        char err[256] = "";
        rc_t rc = memory_knn_save(m->knn, l, &buf, &len);
        if (rc == RC_OK)
            rc = memory_db_put_index(m->db, m->name, (uint32_t)l, rows, buf, len, err, sizeof err);
        else
            snprintf(err, sizeof err, "%s", rc_strerror(rc));
        free(buf);
        if (rc) {
            log_warn("session '%s': kNN index of memory layer %d not saved: %s", m->name, l, err);
        } else {
            m->knn_saved[l] = rows;
            log_info("session '%s': kNN index of memory layer %d saved (%zu rows, %zu bytes)",
                     m->name, l, rows, len);
        }
    }
}

/* ---- load / commit / evict ----------------------------------------------------------- */

/* The rows of session_memory_load: mapped and checked, or moved out of LMDB blobs. */
static rc_t load_rows(session_memory_t *m, char *err, size_t errlen)
{
    const int L = m->shape.n_layers;
    const size_t rows = (size_t)(m->windows * (uint64_t)m->shape.window);
    struct stat st;
    int have_dir = stat(m->dir, &st) == 0 && S_ISDIR(st.st_mode);
    if (!have_dir) {
        if (mkdir(m->root, 0755) != 0 && errno != EEXIST)
            return rc_errf(RC_ERR_IO, err, errlen, "cannot create %s: %s", m->root,
                           strerror(errno));
        if (mkdir(m->dir, 0755) != 0 && errno != EEXIST)
            return rc_errf(RC_ERR_IO, err, errlen, "cannot create %s: %s", m->dir,
                           strerror(errno));
        sync_dir(m->root);
    }
    if (L && m->windows) {
        /* Checksums decide the layout: none for window 0 means the rows are still blobs. */
        uint64_t *probe = malloc((size_t)L * sizeof *probe);
        if (!probe) return RC_ERR_NOMEM;
        rc_t prc = memory_db_get_sums(m->db, m->name, 0, 1, (uint32_t)L, probe);
        free(probe);
        /* The sums are computed from the blobs as they are copied: nothing to check after. */
        if (prc == RC_ERR_NOT_FOUND) return migrate(m, err, errlen);
        if (!have_dir)
            return rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                           "session '%s': its row files are missing (%s does not exist) though "
                           "the catalogue holds %llu committed windows",
                           m->name, m->dir, (unsigned long long)m->windows);
    }
    /* Missing files are created only for a session that has committed nothing. */
    rc_t rc = memory_store_open_heads(L, m->shape.row_dim / m->shape.head_dim, m->shape.head_dim,
                                      m->shape.dtype, m->dir, rows, rows == 0, &m->mem, err,
                                      errlen);
    if (rc == RC_ERR_NOT_FOUND || rc == RC_ERR_FORMAT) {
        char why[512];
        snprintf(why, sizeof why, "%s", err ? err : "");
        return rc_errf(RC_ERR_UNAVAILABLE, err, errlen, "session '%s': %s", m->name, why);
    }
    if (rc) return rc;
    if (!have_dir || rows == 0) sync_dir(m->dir);
    crash_point("reopen"); /* mapped, not yet checked */
    memory_store_prefetch(m->mem, 0, rows);
    return check_sums(m, err, errlen);
}

rc_t session_memory_load(session_memory_t *m, char *err, size_t errlen)
{
    if (m->mem) return RC_OK;
    rc_t rc = load_rows(m, err, errlen);
    if (!rc && m->shape.knn && m->shape.n_layers) rc = index_open(m);
    if (rc) memory_store_destroy(&m->mem); /* nothing loaded on failure */
    return rc;
}

rc_t session_memory_commit(session_memory_t *m, memory_db_commit_t *c, uint64_t n, char *err,
                           size_t errlen)
{
    if (!m->mem) return rc_errf(RC_ERR_INTERNAL, err, errlen, "commit of a session not loaded");
    const int L = m->shape.n_layers;
    const size_t W = (size_t)m->shape.window, wb = W * m->row_bytes;
    uint64_t *sums = NULL;
    if (L && n) {
        if (memory_store_len(m->mem) != (size_t)(m->windows + n) * W)
            return rc_errf(RC_ERR_INTERNAL, err, errlen,
                           "memory holds %zu rows, but %llu committed windows and %llu new ones "
                           "make %llu",
                           memory_store_len(m->mem), (unsigned long long)m->windows,
                           (unsigned long long)n, (unsigned long long)((m->windows + n) * W));
        rc_t rc = memory_store_sync(m->mem, err, errlen);
        if (rc) return rc;
        crash_point("commit-synced"); /* the rows are on disk, the catalogue knows nothing */
        if (!(sums = malloc(n * (size_t)L * sizeof *sums)))
            return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        for (uint64_t w = 0; w < n; w++)
            for (int l = 0; l < L; l++) {
                size_t off = (size_t)(m->windows + w) * wb;
                sums[w * L + l] = session_memory_window_sum(
                    (const char *)memory_store_keys(m->mem, l) + off,
                    (const char *)memory_store_values(m->mem, l) + off, wb);
            }
        c->sums = sums;
        c->sum_first = m->windows;
        c->sum_windows = (size_t)n;
        c->sum_layers = (uint32_t)L;
    }
    rc_t rc = memory_db_commit(m->db, c, err, errlen);
    c->sums = NULL;
    c->sum_windows = 0;
    free(sums);
    if (rc) return rc;
    crash_point("commit-done"); /* durable, not yet acknowledged */
    m->windows += n;
    return RC_OK;
}

rc_t session_memory_evict(session_memory_t *m)
{
    if (!m->mem) return RC_OK;
    if (memory_store_len(m->mem) != (size_t)(m->windows * (uint64_t)m->shape.window))
        return RC_ERR_BUSY;
    index_save(m);
    memory_knn_destroy(&m->knn);
    free(m->knn_saved);
    m->knn_saved = NULL;
    memory_store_destroy(&m->mem);
    return RC_OK;
}

/* ---- verify, remove, sweep ----------------------------------------------------------- */

static int read_at(int fd, void *buf, size_t n, off_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

rc_t session_memory_verify(session_memory_t *m, session_memory_report_t *rep, char *err,
                           size_t errlen)
{
    memset(rep, 0, sizeof *rep);
    const int L = m->shape.n_layers;
    const uint64_t nw = m->windows;
    rep->windows = nw;
    if (!L || !nw) return RC_OK;
    const size_t wb = (size_t)m->shape.window * m->row_bytes;
    uint64_t *want = malloc(nw * (size_t)L * sizeof *want);
    char *kb = malloc(wb), *vb = malloc(wb);
    uint8_t *badw = calloc((size_t)nw, 1);
    int *fds = malloc(2 * (size_t)L * sizeof *fds);
    rc_t rc = RC_OK;
    if (!want || !kb || !vb || !badw || !fds) {
        rc = RC_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < 2 * L; i++) fds[i] = -1;
    rc = memory_db_get_sums(m->db, m->name, 0, (size_t)nw, (uint32_t)L, want);
    if (rc == RC_ERR_NOT_FOUND || rc == RC_ERR_FORMAT) {
        rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                     "session '%s': the catalogue lacks row checksums for some of its %llu "
                     "windows (a session stored before row files: ask it once to move them)",
                     m->name, (unsigned long long)nw);
        goto out;
    }
    if (rc) goto out;
    for (int l = 0; l < L && !rc; l++)
        for (int kv = 0; kv < 2 && !rc; kv++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/L%d.%s", m->dir, l, kv ? "values" : "keys");
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) != 0) {
                rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen, "session '%s': cannot open %s: %s",
                             m->name, path, strerror(errno));
            } else if ((uint64_t)st.st_size < nw * wb) {
                rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                             "session '%s': %s is truncated: %lld bytes where %llu committed "
                             "windows need %llu",
                             m->name, path, (long long)st.st_size, (unsigned long long)nw,
                             (unsigned long long)(nw * wb));
            }
            fds[2 * l + kv] = fd;
        }
    for (uint64_t w = 0; w < nw && !rc; w++)
        for (int l = 0; l < L; l++) {
            if (read_at(fds[2 * l], kb, wb, (off_t)(w * wb)) ||
                read_at(fds[2 * l + 1], vb, wb, (off_t)(w * wb))) {
                rc = rc_errf(RC_ERR_IO, err, errlen, "session '%s': reading window %llu failed: %s",
                             m->name, (unsigned long long)w, strerror(errno));
                break;
            }
            rep->bytes += 2 * wb;
            if (session_memory_window_sum(kb, vb, wb) != want[w * L + l] && !badw[w]) {
                badw[w] = 1;
                if (!rep->bad++) {
                    rep->first_bad = w;
                    rep->first_bad_layer = l;
                }
            }
        }
    if (!rc && rep->bad)
        rc = rc_errf(RC_ERR_UNAVAILABLE, err, errlen,
                     "session '%s': %llu of %llu windows do not match their checksums; the first "
                     "is window %llu (memory layer %d)",
                     m->name, (unsigned long long)rep->bad, (unsigned long long)nw,
                     (unsigned long long)rep->first_bad, rep->first_bad_layer);
out:
    for (int i = 0; fds && i < 2 * L; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    free(want);
    free(kb);
    free(vb);
    free(badw);
    return rc;
}

rc_t session_memory_remove_dir(const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return RC_OK;
        return rc_errf(RC_ERR_IO, err, errlen, "cannot open %s: %s", dir, strerror(errno));
    }
    rc_t rc = RC_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (unlinkat(dirfd(d), de->d_name, 0) != 0 && errno != ENOENT)
            rc = rc_errf(RC_ERR_IO, err, errlen, "cannot remove %s/%s: %s", dir, de->d_name,
                         strerror(errno));
    }
    closedir(d);
    if (!rc && rmdir(dir) != 0 && errno != ENOENT)
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot remove %s: %s", dir, strerror(errno));
    return rc;
}

rc_t session_memory_remove_files(const char *rows_root, const char *name, char *err,
                                 size_t errlen)
{
    char *dir = join(rows_root, name);
    if (!dir) return RC_ERR_NOMEM;
    rc_t rc = session_memory_remove_dir(dir, err, errlen);
    free(dir);
    return rc;
}

#define DETACHED_PREFIX ".dropped-"

rc_t session_memory_detach_files(const char *rows_root, const char *name, char **detached,
                                 char *err, size_t errlen)
{
    static unsigned long counter;
    *detached = NULL;
    char *dir = join(rows_root, name);
    if (!dir) return RC_ERR_NOMEM;
    const size_t cap = strlen(rows_root) + strlen(name) + 64;
    char *to = malloc(cap);
    if (!to) {
        free(dir);
        return RC_ERR_NOMEM;
    }
    snprintf(to, cap, "%s/" DETACHED_PREFIX "%s-%ld-%lu", rows_root, name, (long)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    rc_t rc = RC_OK;
    if (rename(dir, to) != 0) {
        if (errno != ENOENT)
            rc = rc_errf(RC_ERR_IO, err, errlen, "cannot move %s aside: %s", dir,
                         strerror(errno));
        free(to);
        to = NULL;
    } else {
        sync_dir(rows_root); /* the old name is gone for good once the drop returns */
        crash_point("drop-renamed"); /* moved aside, not yet deleted: the next start sweeps */
    }
    free(dir);
    *detached = to;
    return rc;
}

int session_memory_sweep(const char *rows_root, int (*known)(void *ctx, const char *name),
                         void *ctx)
{
    DIR *d = opendir(rows_root);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const int detached = !strncmp(de->d_name, DETACHED_PREFIX, strlen(DETACHED_PREFIX));
        if ((de->d_name[0] == '.' && !detached) || (!detached && known(ctx, de->d_name)))
            continue;
        char err[256];
        if (session_memory_remove_files(rows_root, de->d_name, err, sizeof err) == RC_OK) {
            log_info("removed the rows of '%s', a session no longer in the catalogue",
                     de->d_name);
            n++;
        } else {
            log_warn("%s", err);
        }
    }
    closedir(d);
    return n;
}
