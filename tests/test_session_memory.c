/* The memory tiers' pieces, without a model: the files backing of the memory store, the
 * session-memory object (load, commit, evict, checksums, damage, migration, drop) and the
 * budgets' books (LRU order, pinning, GPU-before-host moves). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memory/db.h"
#include "memory/knn.h"
#include "memory/session_memory.h"
#include "memory/store.h"
#include "memory/tiers.h"
#include "tests/check.h"

enum { LAYERS = 2, DIM = 8, W = 4 }; /* 2 memory layers, rows of 8, windows of 4 rows */

static char g_tmp[256];

/* Row r of layer l: keys r + l/10 + i/100, values the negatives. */
static void rows_for(int l, size_t r0, size_t n, float *k, float *v)
{
    for (size_t r = 0; r < n; r++)
        for (int i = 0; i < DIM; i++) {
            k[r * DIM + i] = (float)(r0 + r) + l / 10.0f + i / 100.0f;
            v[r * DIM + i] = -k[r * DIM + i];
        }
}

static rc_t append_windows(memory_store_t *s, size_t first_window, size_t n)
{
    float k[W * DIM * 8], v[W * DIM * 8];
    for (int l = 0; l < LAYERS; l++) {
        rows_for(l, first_window * W, n * W, k, v);
        rc_t rc = memory_store_append_f32(s, l, k, v, n * W);
        if (rc) return rc;
    }
    return RC_OK;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_store_files(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/store", g_tmp);
    CHECK(mkdir(dir, 0755) == 0);
    memory_store_t *s = NULL;
    char err[512] = "";
    CHECK_RC(memory_store_open_files(LAYERS, DIM, DTYPE_F32, dir, 0, 0, &s, err, sizeof err),
             RC_ERR_NOT_FOUND);
    CHECK(strstr(err, "L0.keys") != NULL);
    CHECK_RC(memory_store_open_files(LAYERS, DIM, DTYPE_F32, dir, 0, 1, &s, err, sizeof err),
             RC_OK);
    CHECK(s && memory_store_is_files(s));
    CHECK_RC(append_windows(s, 0, 3), RC_OK);
    CHECK(memory_store_len(s) == 3 * W);
    /* The map shows what was written through the file. */
    CHECK(((const float *)memory_store_keys(s, 1))[5 * DIM + 2] == 5 + 0.1f + 0.02f);
    CHECK_RC(memory_store_sync(s, err, sizeof err), RC_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/L1.values", dir);
    CHECK(file_size(path) == 3 * W * DIM * 4);
    /* Truncate cuts the files too. */
    memory_store_truncate(s, 2 * W);
    CHECK(file_size(path) == 2 * W * DIM * 4);
    /* Growth far past the first map keeps the rows readable. */
    for (int i = 0; i < 300; i++) CHECK_RC(append_windows(s, 2 + (size_t)i, 1), RC_OK);
    CHECK(memory_store_len(s) == 302 * W);
    CHECK(((const float *)memory_store_values(s, 0))[(301 * W + 3) * DIM] == -(301.0f * W + 3));
    memory_store_destroy(&s);

    /* Reopening with fewer rows cuts the uncommitted tail; with more, refuses. */
    CHECK_RC(memory_store_open_files(LAYERS, DIM, DTYPE_F32, dir, 10, 0, &s, err, sizeof err),
             RC_OK);
    CHECK(memory_store_len(s) == 10 && file_size(path) == 10 * DIM * 4);
    CHECK(((const float *)memory_store_keys(s, 0))[9 * DIM] == 9.0f);
    memory_store_destroy(&s);
    CHECK_RC(memory_store_open_files(LAYERS, DIM, DTYPE_F32, dir, 11, 0, &s, err, sizeof err),
             RC_ERR_FORMAT);
    CHECK(strstr(err, "truncated") != NULL);
    CHECK(s == NULL);
}

static int bump_byte(const char *path, off_t off)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    unsigned char b;
    int ok = pread(fd, &b, 1, off) == 1;
    b ^= 0x40;
    ok = ok && pwrite(fd, &b, 1, off) == 1;
    close(fd);
    return ok ? 0 : -1;
}

static rc_t commit_n(session_memory_t *m, const char *name, uint64_t n)
{
    char err[512];
    static const char rec[] = "record";
    memory_db_commit_t c = {.session = name, .record = rec, .record_len = sizeof rec};
    return session_memory_commit(m, &c, n, err, sizeof err);
}

/* A session committed the old way, its rows as LMDB blobs: nw windows of rows_for's rows,
 * kept in kk / vv ([nw][LAYERS][W * DIM]) for the comparisons. */
static rc_t commit_blobs(memory_db_t *db, const char *name, int nw,
                         float (*kk)[LAYERS][W * DIM], float (*vv)[LAYERS][W * DIM])
{
    memory_db_window_t wins[3 * LAYERS];
    if (nw > 3) return RC_ERR_INVALID;
    for (int w = 0; w < nw; w++)
        for (int l = 0; l < LAYERS; l++) {
            rows_for(l, (size_t)w * W, W, kk[w][l], vv[w][l]);
            wins[w * LAYERS + l] = (memory_db_window_t){(uint32_t)l, (uint64_t)w, kk[w][l],
                                                        vv[w][l], W * DIM * 4};
        }
    static const char rec[] = "old record";
    char err[512];
    memory_db_commit_t old = {.session = name, .record = rec, .record_len = sizeof rec,
                              .windows = wins, .n_windows = (size_t)nw * LAYERS};
    return memory_db_commit(db, &old, err, sizeof err);
}

static rc_t never_called(void *ctx, const void *k, const void *v, size_t bytes)
{
    (void)ctx, (void)k, (void)v, (void)bytes;
    return RC_ERR_INTERNAL;
}

static void test_session_memory(void)
{
    char dbdir[512], root[512], err[512] = "";
    snprintf(dbdir, sizeof dbdir, "%s/db", g_tmp);
    snprintf(root, sizeof root, "%s/db/rows", g_tmp);
    CHECK(mkdir(dbdir, 0755) == 0);
    memory_db_t *db = NULL;
    CHECK_RC(memory_db_open(dbdir, NULL, &db, err, sizeof err), RC_OK);
    const session_memory_shape_t sh = {LAYERS, DIM, DTYPE_F32, W, 0, 0, {0}};

    /* A new session: open touches nothing, load creates its files. */
    session_memory_t *m = NULL;
    CHECK_RC(session_memory_open(db, root, "a", &sh, 0, &m), RC_OK);
    CHECK(!session_memory_loaded(m) && session_memory_host_bytes(m) == 0);
    CHECK(file_size(root) < 0);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    CHECK(session_memory_loaded(m));
    memory_store_t *s = session_memory_store(m);
    CHECK_RC(append_windows(s, 0, 5), RC_OK);
    /* Rows that do not make exactly the windows claimed are refused. */
    CHECK_RC(commit_n(m, "a", 4), RC_ERR_INTERNAL);
    CHECK_RC(commit_n(m, "a", 5), RC_OK);
    CHECK(session_memory_windows(m) == 5);
    CHECK(session_memory_disk_bytes(m) == 5 * W * 2 * DIM * 4 * LAYERS);
    /* Uncommitted rows block an eviction; rolled back, it goes. */
    CHECK_RC(append_windows(s, 5, 1), RC_OK);
    CHECK_RC(session_memory_evict(m), RC_ERR_BUSY);
    memory_store_truncate(s, 5 * W);
    CHECK_RC(session_memory_evict(m), RC_OK);
    CHECK(!session_memory_loaded(m) && session_memory_host_bytes(m) == 0);
    /* Back in: the same rows. */
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    s = session_memory_store(m);
    CHECK(memory_store_len(s) == 5 * W);
    CHECK(((const float *)memory_store_keys(s, 1))[(4 * W + 1) * DIM + 3] ==
          4 * W + 1 + 0.1f + 0.03f);
    session_memory_report_t rep;
    CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_OK);
    CHECK(rep.windows == 5 && rep.bad == 0 && rep.bytes == 5 * W * 2 * DIM * 4 * LAYERS);

    /* A crash after rows were written but before their commit: the next load cuts them. */
    CHECK_RC(append_windows(s, 5, 2), RC_OK);
    session_memory_close(&m);
    char kpath[700];
    snprintf(kpath, sizeof kpath, "%s/a/L0.keys", root);
    CHECK(file_size(kpath) == 7 * W * DIM * 4);
    CHECK_RC(session_memory_open(db, root, "a", &sh, 5, &m), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    CHECK(file_size(kpath) == 5 * W * DIM * 4);
    session_memory_close(&m);

    /* One flipped byte in window 3 of layer 1's values: load refuses, naming the window;
     * verify counts it; putting it back makes both pass again. */
    char vpath[700];
    snprintf(vpath, sizeof vpath, "%s/a/L1.values", root);
    const off_t off = (off_t)(3 * W + 2) * DIM * 4 + 5;
    CHECK(bump_byte(vpath, off) == 0);
    CHECK_RC(session_memory_open(db, root, "a", &sh, 5, &m), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(err, "window 3 of memory layer 1") != NULL, "load error: %s", err);
    CHECK(!session_memory_loaded(m));
    CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_ERR_UNAVAILABLE);
    CHECK(rep.bad == 1 && rep.first_bad == 3 && rep.first_bad_layer == 1);
    CHECK(bump_byte(vpath, off) == 0);
    CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    session_memory_close(&m);

    /* A truncated file, and missing files, make the session unavailable, not a crash. */
    CHECK(truncate(kpath, 3 * W * DIM * 4) == 0);
    CHECK_RC(session_memory_open(db, root, "a", &sh, 5, &m), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(err, "truncated") != NULL, "%s", err);
    CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_ERR_UNAVAILABLE);
    session_memory_close(&m);
    CHECK_RC(session_memory_remove_files(root, "a", err, sizeof err), RC_OK);
    CHECK(file_size(kpath) < 0);
    CHECK_RC(session_memory_remove_files(root, "a", err, sizeof err), RC_OK); /* gone is fine */
    CHECK_RC(session_memory_open(db, root, "a", &sh, 5, &m), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(err, "missing") != NULL, "%s", err);
    session_memory_close(&m);

    /* A session stored before row files (rows as LMDB blobs) moves into files on its first
     * load, with checksums; the blobs are gone afterwards. */
    float k[W * DIM], v[W * DIM];
    float kk[2][LAYERS][W * DIM], vv[2][LAYERS][W * DIM];
    CHECK_RC(commit_blobs(db, "legacy", 2, kk, vv), RC_OK);
    CHECK_RC(session_memory_open(db, root, "legacy", &sh, 2, &m), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    s = session_memory_store(m);
    CHECK(memory_store_len(s) == 2 * W);
    rows_for(1, W, W, k, v);
    CHECK(memcmp((const float *)memory_store_values(s, 1) + W * DIM, v, sizeof v) == 0);
    CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_OK);
    session_memory_close(&m);
    uint64_t sums[2 * LAYERS];
    CHECK_RC(memory_db_get_sums(db, "legacy", 0, 2, LAYERS, sums), RC_OK);
    CHECK(sums[3] == session_memory_window_sum(kk[1][1], vv[1][1], W * DIM * 4));
    CHECK_RC(memory_db_read_window(db, "legacy", 0, 0, never_called, NULL), RC_ERR_NOT_FOUND);

    /* Dropping the catalogue entry takes the checksums; sweep removes orphaned rows. */
    CHECK_RC(memory_db_drop(db, "legacy", err, sizeof err), RC_OK);
    CHECK_RC(memory_db_get_sums(db, "legacy", 0, 1, LAYERS, sums), RC_ERR_NOT_FOUND);
    snprintf(kpath, sizeof kpath, "%s/legacy/L0.keys", root);
    CHECK(file_size(kpath) > 0);
    CHECK_RC(session_memory_remove_files(root, "legacy", err, sizeof err), RC_OK);
    CHECK(file_size(kpath) < 0);
    memory_db_close(&db);
}

static int known_keep(void *ctx, const char *name)
{
    (void)ctx;
    return strcmp(name, "keep") == 0;
}

static void test_sweep(void)
{
    char root[512], d1[600], d2[600];
    snprintf(root, sizeof root, "%s/sweep", g_tmp);
    snprintf(d1, sizeof d1, "%s/keep", root);
    snprintf(d2, sizeof d2, "%s/orphan", root);
    CHECK(mkdir(root, 0755) == 0 && mkdir(d1, 0755) == 0 && mkdir(d2, 0755) == 0);
    char f[700];
    snprintf(f, sizeof f, "%s/L0.keys", d2);
    FILE *fp = fopen(f, "w");
    if (fp) fclose(fp);
    CHECK(session_memory_sweep(root, known_keep, NULL) == 1);
    CHECK(file_size(d1) >= 0 && file_size(d2) < 0);

    /* A drop moves the files aside first; the name is free at once, and a detached copy
     * left by an interrupted drop is swept even though its session is "known". */
    char *det = NULL, err[256] = "";
    CHECK_RC(session_memory_detach_files(root, "keep", &det, err, sizeof err), RC_OK);
    CHECK(det && strstr(det, "/.dropped-keep-") && file_size(d1) < 0 && file_size(det) >= 0);
    CHECK(mkdir(d1, 0755) == 0); /* a new session of the same name */
    CHECK(session_memory_sweep(root, known_keep, NULL) == 1);
    CHECK(file_size(det) < 0 && file_size(d1) >= 0);
    free(det);
    CHECK_RC(session_memory_detach_files(root, "keep", &det, err, sizeof err), RC_OK);
    CHECK_RC(session_memory_remove_dir(det, err, sizeof err), RC_OK);
    CHECK(file_size(det) < 0 && file_size(d1) < 0);
    free(det);
    /* Nothing to move: no path, no error. */
    CHECK_RC(session_memory_detach_files(root, "never", &det, err, sizeof err), RC_OK);
    CHECK(det == NULL);
}

static void test_tiers(void)
{
    memory_tiers_t *t = NULL;
    CHECK_RC(memory_tiers_create(1000, 100, &t), RC_OK);
    tiers_slot_t a = {0}, b = {0}, c = {0};
    CHECK_RC(memory_tiers_track(t, &a), RC_OK);
    CHECK_RC(memory_tiers_track(t, &b), RC_OK);
    CHECK_RC(memory_tiers_track(t, &c), RC_OK);
    memory_tiers_set(t, &a, 400, 40);
    memory_tiers_set(t, &b, 400, 40);
    memory_tiers_set(t, &c, 0, 0);
    size_t h, g;
    memory_tiers_used(t, &h, &g);
    CHECK(h == 800 && g == 80);
    memory_tiers_touch(t, &a); /* b is now the least recently used */
    tiers_move_t mv[4];
    int fits = 0;
    /* c wants 300 host and 30 GPU: b's GPU copy goes (100 > 80 + 30), and b goes to disk
     * for the host budget (800 + 300 > 1000): one move, to disk. */
    size_t n = memory_tiers_plan(t, &c, 300, 30, mv, 4, &fits);
    CHECK(n == 1 && mv[0].slot == &b && mv[0].to == TIERS_DISK && fits);
    /* Only the GPU short: b's device copy alone. */
    n = memory_tiers_plan(t, &c, 100, 30, mv, 4, &fits);
    CHECK(n == 1 && mv[0].slot == &b && mv[0].to == TIERS_HOST && fits);
    /* Everything fits: nothing moves. */
    n = memory_tiers_plan(t, &c, 100, 10, mv, 4, &fits);
    CHECK(n == 0 && fits);
    /* A pinned slot is never moved; then the older of the rest goes, and a session bigger
     * than the budget gets everything else moved and is told it does not fit. */
    memory_tiers_pin(&b);
    n = memory_tiers_plan(t, &c, 300, 0, mv, 4, &fits);
    CHECK(n == 1 && mv[0].slot == &a && mv[0].to == TIERS_DISK && fits);
    n = memory_tiers_plan(t, &c, 5000, 0, mv, 4, &fits);
    CHECK(n == 1 && mv[0].slot == &a && !fits);
    memory_tiers_unpin(&b);
    /* Its own bytes count once: a slot re-planning for its current size moves nothing. */
    n = memory_tiers_plan(t, &a, 400, 40, mv, 4, &fits);
    CHECK(n == 0 && fits);
    memory_tiers_untrack(t, &b);
    memory_tiers_used(t, &h, &g);
    CHECK(h == 400 && g == 40 && memory_tiers_count(t) == 2);
    memory_tiers_destroy(&t);
    CHECK(t == NULL);
    /* No budgets: never a move. */
    CHECK_RC(memory_tiers_create(0, 0, &t), RC_OK);
    CHECK_RC(memory_tiers_track(t, &a), RC_OK);
    CHECK_RC(memory_tiers_track(t, &b), RC_OK);
    memory_tiers_set(t, &b, (size_t)1 << 40, (size_t)1 << 40);
    CHECK(memory_tiers_plan(t, &a, (size_t)1 << 40, 0, mv, 4, &fits) == 0 && fits);
    memory_tiers_destroy(&t);
}

/* A knn session's index lives with its rows: made at load, saved at eviction when it
 * changed, loaded back instead of rebuilt; a damaged copy, or one for rows that were never
 * committed, is dropped and rebuilt with the same results. */
static void search3(memory_knn_t *x, const memory_store_t *s, int l, int64_t *idx)
{
    const float q[DIM] = {1, 0.5f, 0.25f, 0, 0, 0, 0, 1};
    CHECK_RC(memory_knn_search(x, s, l, q, 1, 1, 3, idx), RC_OK);
}

static void test_index(void)
{
    char dbdir[512], root[512], err[512] = "";
    snprintf(dbdir, sizeof dbdir, "%s/dbx", g_tmp);
    snprintf(root, sizeof root, "%s/dbx/rows", g_tmp);
    CHECK(mkdir(dbdir, 0755) == 0);
    memory_db_t *db = NULL;
    CHECK_RC(memory_db_open(dbdir, NULL, &db, err, sizeof err), RC_OK);
    const session_memory_shape_t sh = {LAYERS, DIM, DTYPE_F32, W, 0, 1, {0}};
    const session_memory_shape_t ex = {LAYERS, DIM, DTYPE_F32, W, 0, 0, {0}};

    session_memory_t *m = NULL, *e = NULL;
    CHECK_RC(session_memory_open(db, root, "k", &sh, 0, &m), RC_OK);
    CHECK(session_memory_index(m) == NULL); /* on disk */
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    memory_knn_t *x = session_memory_index(m);
    CHECK(x && memory_knn_rows(x, 0) == 0 && memory_knn_fits(x, LAYERS, 1, DIM));
    CHECK_RC(append_windows(session_memory_store(m), 0, 3), RC_OK);
    CHECK_RC(commit_n(m, "k", 3), RC_OK);
    int64_t want[LAYERS][3], got[3];
    for (int l = 0; l < LAYERS; l++) {
        CHECK_RC(memory_knn_sync(x, session_memory_store(m), l), RC_OK);
        search3(x, session_memory_store(m), l, want[l]);
    }
    CHECK(memory_knn_rows(x, 1) == 3 * W && session_memory_index_bytes(m) > 0);

    /* Evicted: saved, freed. */
    CHECK_RC(session_memory_evict(m), RC_OK);
    CHECK(session_memory_index(m) == NULL && session_memory_index_bytes(m) == 0);
    uint64_t rows = 0;
    void *blob = NULL;
    size_t len = 0;
    CHECK_RC(memory_db_get_index(db, "k", 1, &rows, &blob, &len), RC_OK);
    CHECK(rows == 3 * W && len > 0);

    /* Back in: the saved copy, no rebuild (the rows are indexed before any sync). */
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    x = session_memory_index(m);
    CHECK(x && memory_knn_rows(x, 0) == 3 * W && memory_knn_rows(x, 1) == 3 * W);
    for (int l = 0; x && l < LAYERS; l++) {
        search3(x, session_memory_store(m), l, got);
        CHECK(memcmp(got, want[l], sizeof got) == 0);
    }

    /* A damaged copy of layer 0 (not rewritten at eviction: the index did not change) and a
     * copy of layer 1 that claims rows never committed: both dropped, both rebuilt. */
    CHECK_RC(session_memory_evict(m), RC_OK);
    CHECK_RC(memory_db_put_index(db, "k", 0, 3 * W, "junk", 4, err, sizeof err), RC_OK);
    CHECK_RC(memory_db_put_index(db, "k", 1, 5 * W, blob, len, err, sizeof err), RC_OK);
    CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
    x = session_memory_index(m);
    CHECK(x && memory_knn_rows(x, 0) == 0 && memory_knn_rows(x, 1) == 0);
    for (int l = 0; x && l < LAYERS; l++) {
        search3(x, session_memory_store(m), l, got); /* syncs: rebuilt from the keys */
        CHECK(memcmp(got, want[l], sizeof got) == 0);
    }
    /* Rebuilt means changed: saved again at eviction, over the bad copies. */
    CHECK_RC(session_memory_evict(m), RC_OK);
    free(blob);
    blob = NULL;
    CHECK_RC(memory_db_get_index(db, "k", 0, &rows, &blob, &len), RC_OK);
    CHECK(rows == 3 * W && len > 4);
    free(blob);
    session_memory_close(&m);

    /* An exact session has none. */
    CHECK_RC(session_memory_open(db, root, "e", &ex, 0, &e), RC_OK);
    CHECK_RC(session_memory_load(e, err, sizeof err), RC_OK);
    CHECK(session_memory_index(e) == NULL && session_memory_index_bytes(e) == 0);
    session_memory_close(&e);
    memory_db_close(&db);
}

/* A kill -9 inside the move of blob rows into files (crash points migrate-copied: copied,
 * not synced; migrate-synced: synced, not in the catalogue) leaves the blobs authoritative:
 * the next load moves them again and gets every row. The load runs in a child started with
 * RECALL_CRASH_AT (the variable is read once per process). */
static int migrate_child(const char *dbdir, const char *root)
{
    char err[512] = "";
    memory_db_t *db = NULL;
    session_memory_t *m = NULL;
    const session_memory_shape_t sh = {LAYERS, DIM, DTYPE_F32, W, 0, 0, {0}};
    if (memory_db_open(dbdir, NULL, &db, err, sizeof err) ||
        session_memory_open(db, root, "legacy", &sh, 3, &m))
        return 2;
    rc_t rc = session_memory_load(m, err, sizeof err);
    fprintf(stderr, "migrate child: load returned %d (%s); it should have been killed\n", rc, err);
    return 3;
}

static void test_migrate_kill(void)
{
    static const char *const points[] = {"migrate-copied", "migrate-synced"};
    for (int pi = 0; pi < 2; pi++) {
        char dbdir[300], root[320], err[512] = "";
        snprintf(dbdir, sizeof dbdir, "%s/dbm%d", g_tmp, pi);
        snprintf(root, sizeof root, "%s/rows", dbdir);
        CHECK(mkdir(dbdir, 0755) == 0);
        memory_db_t *db = NULL;
        CHECK_RC(memory_db_open(dbdir, NULL, &db, err, sizeof err), RC_OK);
        if (!db) return;
        float kk[3][LAYERS][W * DIM], vv[3][LAYERS][W * DIM];
        CHECK_RC(commit_blobs(db, "legacy", 3, kk, vv), RC_OK);
        memory_db_close(&db);

        char at[64];
        snprintf(at, sizeof at, "%s:1", points[pi]);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("RECALL_CRASH_AT", at, 1);
            execl("/proc/self/exe", "test_session_memory", "--migrate-child", dbdir, root,
                  (char *)NULL);
            _exit(4);
        }
        int st = 0;
        CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
        CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s: the child was not killed "
                  "there (status %d)", points[pi], st);

        CHECK_RC(memory_db_open(dbdir, NULL, &db, err, sizeof err), RC_OK);
        const session_memory_shape_t sh = {LAYERS, DIM, DTYPE_F32, W, 0, 0, {0}};
        session_memory_t *m = NULL;
        CHECK_RC(session_memory_open(db, root, "legacy", &sh, 3, &m), RC_OK);
        CHECK_RC(session_memory_load(m, err, sizeof err), RC_OK);
        const memory_store_t *s = session_memory_store(m);
        CHECK(s && memory_store_len(s) == 3 * W);
        for (int w = 0; s && w < 3; w++)
            for (int l = 0; l < LAYERS; l++)
                CHECK_MSG(memcmp((const float *)memory_store_keys(s, l) + (size_t)w * W * DIM,
                                 kk[w][l], sizeof kk[w][l]) == 0 &&
                              memcmp((const float *)memory_store_values(s, l) +
                                         (size_t)w * W * DIM,
                                     vv[w][l], sizeof vv[w][l]) == 0,
                          "%s: window %d layer %d differs after the restart", points[pi], w, l);
        session_memory_report_t rep;
        CHECK_RC(session_memory_verify(m, &rep, err, sizeof err), RC_OK);
        CHECK_RC(memory_db_read_window(db, "legacy", 0, 0, never_called, NULL), RC_ERR_NOT_FOUND);
        printf("killed at %s: the next load moved all %d windows, verify ok\n", points[pi], 3);
        session_memory_close(&m);
        memory_db_close(&db);
    }
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--migrate-child")) return migrate_child(argv[2], argv[3]);
    const char *base = getenv("TMPDIR");
    snprintf(g_tmp, sizeof g_tmp, "%s/recall-sm-XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_store_files();
    test_session_memory();
    test_sweep();
    test_index();
    test_migrate_kill();
    test_tiers();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    return check_summary();
}
