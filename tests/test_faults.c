/* test_faults.c — LMDB write failures: the failing commit says so, nothing is half-written,
 * and what was acknowledged survives.
 *
 * No hook in the daemon or in memory/db.c is needed:
 *   1. map limit: memory_db_opts.max_map_size stops growth, so a large commit fails with
 *      RC_ERR_LIMIT and the database is as it was;
 *   2. I/O faults: this executable defines pwrite, writev, write, fdatasync, fsync and
 *      msync itself. liblmdb is a shared library, so its calls bind to these definitions
 *      (symbol interposition), which pass through to the real ones (dlsym RTLD_NEXT) until
 *      armed, then fail the N-th call with EIO. The test sweeps N over every write and sync
 *      a commit makes;
 *   3. disk full at the daemon: recalld runs under RLIMIT_FSIZE (inherited across fork and
 *      exec, with SIGXFSZ ignored, also inherited), so growing data.mdb past the limit fails
 *      with EFBIG exactly as a full disk fails with ENOSPC. No mount, no root. */
#include <dlfcn.h> /* RTLD_NEXT: _GNU_SOURCE comes from the build */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "memory/db.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

/* ---- the I/O wrapper ------------------------------------------------------------------ */

static int g_armed;       /* count calls and fail the g_fail_at-th */
static long g_calls;      /* calls seen while armed */
static long g_fail_at;    /* 1-based */
static int g_fired;       /* the fault was injected */
static char g_fired_in[16];

/* Returns 1 if this call must fail (sets errno). */
static int fault(const char *fn)
{
    if (!g_armed) return 0;
    if (++g_calls != g_fail_at) return 0;
    g_fired = 1;
    snprintf(g_fired_in, sizeof g_fired_in, "%s", fn);
    errno = EIO;
    return 1;
}

#define REAL(fn) ((__typeof__(&fn))dlsym(RTLD_NEXT, #fn))

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    if (fault("pwrite")) return -1;
    return REAL(pwrite)(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (fault("writev")) return -1;
    return REAL(writev)(fd, iov, cnt);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    if (fd > 2 && fault("write")) return -1; /* never our own output */
    return REAL(write)(fd, buf, n);
}

int fdatasync(int fd)
{
    if (fault("fdatasync")) return -1;
    return REAL(fdatasync)(fd);
}

int fsync(int fd)
{
    if (fault("fsync")) return -1;
    return REAL(fsync)(fd);
}

int msync(void *addr, size_t len, int flags)
{
    if (fault("msync")) return -1;
    return REAL(msync)(addr, len, flags);
}

/* ---- a tiny model of a session in the database ----------------------------------------- */

#define TOKS 100
#define WBYTES 8192

/* Commit number k (1-based) of session "s": record "rec k", chunk k-1 of TOKS tokens, and
 * memory window k-1 of layer 0. */
static rc_t commit_k(memory_db_t *db, int k, char *err, size_t errlen)
{
    char rec[32];
    snprintf(rec, sizeof rec, "rec %d", k);
    static int32_t toks[TOKS];
    static uint8_t keys[WBYTES], vals[WBYTES];
    for (int i = 0; i < TOKS; i++)
        toks[i] = k * 1000 + i;
    memset(keys, k, sizeof keys);
    memset(vals, 255 - k, sizeof vals);
    memory_db_window_t w = {.layer = 0, .window = (uint64_t)(k - 1), .keys = keys,
                            .values = vals, .bytes = WBYTES};
    memory_db_commit_t c = {.session = "s", .record = rec, .record_len = strlen(rec),
                            .chunk_index = (uint64_t)(k - 1), .tokens = toks, .n_tokens = TOKS,
                            .windows = &w, .n_windows = 1};
    return memory_db_commit(db, &c, err, errlen);
}

static rc_t count_window(void *ctx, const void *k, const void *v, size_t bytes)
{
    (void)k;
    (void)v;
    *(size_t *)ctx = bytes;
    return RC_OK;
}

/* Which commit the database holds: k when record, tokens and windows all say k; -1 when
 * they disagree (half-written) or cannot be read. */
static int state_of(memory_db_t *db)
{
    memory_db_record_t *recs = NULL;
    size_t n = 0;
    if (memory_db_list(db, &recs, &n)) return -1;
    int k = 0;
    if (n == 1 && strcmp(recs[0].name, "s") == 0 && recs[0].len < 31) {
        char r[32];
        memcpy(r, recs[0].data, recs[0].len);
        r[recs[0].len] = 0;
        if (sscanf(r, "rec %d", &k) != 1) k = -1;
    } else if (n != 0) {
        k = -1;
    }
    memory_db_records_free(recs, n);
    if (k < 0) return -1;
    int32_t *t = NULL;
    size_t nt = 0;
    uint64_t chunks = 0, next = 0;
    if (memory_db_load_tokens(db, "s", &t, &nt, &chunks, &next)) return -1;
    int ok = nt == (size_t)k * TOKS && chunks == (uint64_t)k;
    for (size_t i = 0; ok && i < nt; i++)
        ok = t[i] == (int32_t)((i / TOKS + 1) * 1000 + i % TOKS);
    free(t);
    for (int w = 0; ok && w <= k; w++) {
        size_t bytes = 0;
        rc_t rc = memory_db_read_window(db, "s", 0, (uint64_t)w, count_window, &bytes);
        ok = w < k ? (rc == RC_OK && bytes == WBYTES) : rc == RC_ERR_NOT_FOUND;
    }
    return ok ? k : -1;
}

/* ---- 1: the map limit --------------------------------------------------------------- */

static void map_limit(const char *dir)
{
    char err[512] = "";
    memory_db_t *db = NULL;
    memory_db_opts_t o = {.map_size = 256 << 10, .max_map_size = 512 << 10};
    CHECK_RC(memory_db_open(dir, &o, &db, err, sizeof err), RC_OK);
    if (!db) return;
    CHECK_RC(commit_k(db, 1, err, sizeof err), RC_OK);
    /* A commit far larger than the map may grow to. */
    size_t big = 2 << 20;
    uint8_t *kv = calloc(1, big);
    memory_db_window_t w = {.layer = 0, .window = 1, .keys = kv, .values = kv, .bytes = big};
    memory_db_commit_t c = {.session = "s", .record = "rec 2", .record_len = 5,
                            .chunk_index = 1, .tokens = (const int32_t *)kv, .n_tokens = TOKS,
                            .windows = &w, .n_windows = 1};
    err[0] = 0;
    CHECK_RC(memory_db_commit(db, &c, err, sizeof err), RC_ERR_LIMIT);
    CHECK_MSG(strstr(err, "full") != NULL && strstr(err, "524288") != NULL,
              "the message should say the database is full and give the limit: '%s'", err);
    free(kv);
    CHECK_RC(state_of(db), 1); /* nothing of commit 2 */
    /* Still usable: the next commit that fits goes in. */
    CHECK_RC(commit_k(db, 2, err, sizeof err), RC_OK);
    CHECK_RC(state_of(db), 2);
    memory_db_close(&db);
    CHECK_RC(memory_db_open(dir, &o, &db, err, sizeof err), RC_OK);
    if (db) CHECK_RC(state_of(db), 2);
    memory_db_close(&db);
}

/* ---- 2: a failing write or sync at every point of a commit ---------------------------- */

static void io_sweep(const char *base)
{
    int points = 0, durable_anyway = 0, unusable_after = 0;
    for (long n = 1; n <= 200; n++) {
        char dir[700], err[512] = "";
        snprintf(dir, sizeof dir, "%s/io-%ld", base, n);
        mkdir(dir, 0755);
        memory_db_t *db = NULL;
        CHECK_RC(memory_db_open(dir, NULL, &db, err, sizeof err), RC_OK);
        if (!db) return;
        CHECK_RC(commit_k(db, 1, err, sizeof err), RC_OK);
        g_calls = 0;
        g_fired = 0;
        g_fail_at = n;
        g_armed = 1;
        err[0] = 0;
        rc_t rc = commit_k(db, 2, err, sizeof err);
        g_armed = 0;
        if (!g_fired) { /* every write and sync of a commit has had its turn */
            CHECK_RC(rc, RC_OK);
            memory_db_close(&db);
            rpc_rmtree(dir);
            break;
        }
        points++;
        CHECK_MSG(rc != RC_OK, "failing %s (call %ld) went unnoticed", g_fired_in, n);
        CHECK_MSG(rc == RC_ERR_IO && strstr(err, "LMDB") != NULL,
                  "failing %s: rc %d, message '%s'", g_fired_in, rc, err);
        /* The handle after the failure: either as before, or refusing everything (LMDB
         * marks its environment unusable when a meta page write fails). */
        int now = state_of(db);
        if (now < 0) unusable_after++;
        CHECK_MSG(now == 1 || now == -1, "after failing %s the open handle shows state %d",
                  g_fired_in, now);
        memory_db_close(&db);
        /* What a restart sees: commit 1 for sure; commit 2 only if the fault hit the sync
         * after its meta page was written (the data reached the file, the sync "failed"). */
        CHECK_RC(memory_db_open(dir, NULL, &db, err, sizeof err), RC_OK);
        if (!db) return;
        int after = state_of(db);
        CHECK_MSG(after == 1 || after == 2, "failing %s (call %ld) left state %d on disk",
                  g_fired_in, n, after);
        CHECK_MSG(after == 1 || strstr(g_fired_in, "sync") != NULL,
                  "failing %s (call %ld) still made the commit durable", g_fired_in, n);
        durable_anyway += after == 2;
        /* And the database takes the next commit. */
        CHECK_RC(commit_k(db, after + 1, err, sizeof err), RC_OK);
        CHECK_RC(state_of(db), after + 1);
        memory_db_close(&db);
        rpc_rmtree(dir);
    }
    CHECK_MSG(points >= 3, "only %d fault points in a commit", points);
    printf("io faults: %d points in one commit; %d left the open handle unusable until "
           "reopened; %d failed commits were durable anyway (fault on the last sync)\n",
           points, unusable_after, durable_anyway);
}

/* A transient fault must not leave the daemon's handle failing every later commit: after
 * each single write or sync failure, the same open handle takes the retried commit (LMDB's
 * MDB_PANIC is answered by reopening the environment), and a reopen shows it. */
static void io_recover(const char *base)
{
    int points = 0;
    for (long n = 1; n <= 200; n++) {
        char dir[700], err[512] = "";
        snprintf(dir, sizeof dir, "%s/rec-%ld", base, n);
        mkdir(dir, 0755);
        memory_db_t *db = NULL;
        CHECK_RC(memory_db_open(dir, NULL, &db, err, sizeof err), RC_OK);
        if (!db) return;
        CHECK_RC(commit_k(db, 1, err, sizeof err), RC_OK);
        g_calls = 0;
        g_fired = 0;
        g_fail_at = n;
        g_armed = 1;
        rc_t rc = commit_k(db, 2, err, sizeof err);
        g_armed = 0;
        int fired = g_fired;
        if (fired) {
            points++;
            CHECK(rc != RC_OK);
            rc = commit_k(db, 2, err, sizeof err); /* the client's resend */
            CHECK_MSG(rc == RC_OK, "after failing %s (call %ld) the handle refused the retry: %s",
                      g_fired_in, n, err);
        }
        CHECK_RC(state_of(db), 2);
        memory_db_close(&db);
        CHECK_RC(memory_db_open(dir, NULL, &db, err, sizeof err), RC_OK);
        if (db) CHECK_RC(state_of(db), 2);
        memory_db_close(&db);
        rpc_rmtree(dir);
        if (!fired) break;
    }
    CHECK(points >= 3);
    printf("io recovery: after each of %d fault points the same handle took the retried "
           "commit\n", points);
}

/* ---- 3: disk full under a live recalld ----------------------------------------------- */

static int code_of(Recall__Response *r)
{
    return r && r->status ? r->status->code : -999;
}

static Recall__Response *ingest_tokens(rpc_client_t *c, uint64_t seq, size_t n)
{
    int32_t *t = malloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++)
        t[i] = (int32_t)(3 + (seq * 131 + i * 7) % 500);
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
    in.session = (char *)"s";
    in.seq = seq;
    in.tokens = t;
    in.n_tokens = n;
    q.body_case = RECALL__REQUEST__BODY_INGEST;
    q.ingest = &in;
    Recall__Response *r = rpc_call(c, &q, 60000);
    free(t);
    return r;
}

typedef struct snap {
    uint64_t tokens, windows, last_seq;
} snap_t;

static snap_t snap(rpc_client_t *c)
{
    snap_t s = {0, 0, 0};
    Recall__Response *r = rpc_info(c, "s");
    if (code_of(r) == 0 && r->session_info && r->session_info->info) {
        s.tokens = r->session_info->info->tokens;
        s.windows = r->session_info->info->windows;
        s.last_seq = r->session_info->info->last_seq;
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return s;
}

static void disk_full(const char *model, const char *tmp)
{
    char data[700], ep[700], log[700];
    snprintf(data, sizeof data, "%s/daemon-data", tmp);
    snprintf(ep, sizeof ep, "ipc://%s/recalld.sock", tmp);
    snprintf(log, sizeof log, "%s/recalld.log", tmp);

    /* The child inherits both; ours are put back right after the start. */
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    /* Each memory layer's keys and values are files of their own (about 250 KB a chunk
     * each), so 1 MiB stops an Ingest within the ten chunks below. */
    struct rlimit lim = {1u << 20, old.rlim_max};
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    rpc_daemon_t dm;
    const char *extra[] = {"--db-map-size", "1M", NULL};
    int started = rpc_daemon_start(&dm, model, data, ep, log, extra) == 0;
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_sig);
    CHECK(started);
    if (!started) return;

    rpc_client_t c;
    CHECK(rpc_client_open(&c, ep) == 0);
    Recall__Response *r = rpc_create(&c, "s", 0, 0);
    CHECK_RC(code_of(r), 0);
    if (r) recall__response__free_unpacked(r, NULL);

    /* Chunks of 1000 tokens (15 windows, about 1 MB of memory rows each) until the file
     * limit stops one. */
    uint64_t seq = 1;
    int failed_code = 0;
    char failed_msg[1024] = "";
    snap_t before = {0, 0, 0};
    for (; seq <= 10; seq++) {
        before = snap(&c);
        r = ingest_tokens(&c, seq, 1000);
        int code = code_of(r);
        if (code != 0) {
            failed_code = code;
            if (r && r->status && r->status->message)
                snprintf(failed_msg, sizeof failed_msg, "%s", r->status->message);
            if (r) recall__response__free_unpacked(r, NULL);
            break;
        }
        if (r) recall__response__free_unpacked(r, NULL);
    }
    CHECK_MSG(seq > 1 && seq <= 10, "the file size limit never stopped an Ingest (seq %llu)",
              (unsigned long long)seq);
    CHECK_MSG(failed_code == -3, "disk full gave code %d ('%s'), want RC_ERR_IO (-3)",
              failed_code, failed_msg);
    CHECK_MSG(strstr(failed_msg, "nothing changed") &&
                  (strstr(failed_msg, "LMDB") || strstr(failed_msg, "memory rows")),
              "the message should say what failed and that nothing changed: '%s'", failed_msg);
    printf("disk full at seq %llu: %s\n", (unsigned long long)seq, failed_msg);

    /* Nothing of the failed chunk shows, and the daemon goes on serving. */
    snap_t after = snap(&c);
    CHECK(after.tokens == before.tokens && after.windows == before.windows &&
          after.last_seq == before.last_seq && after.last_seq == seq - 1);
    Recall__Response *h = rpc_health(&c);
    CHECK(h && code_of(h) == 0 && h->health && h->health->ok);
    if (h) recall__response__free_unpacked(h, NULL);
    rpc_answer_t *a = calloc(1, sizeof *a);
    CHECK(rpc_ask(&c, "s", "hello", 2, 0, a) == 0);
    CHECK_MSG(a->status == 0, "Ask after the failed commit: %d %s", a->status, a->message);
    free(a);
    /* A retry of the same chunk fails the same clean way (the disk is still full). */
    r = ingest_tokens(&c, seq, 1000);
    CHECK_RC(code_of(r), -3);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(snap(&c).last_seq == seq - 1);
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);

    /* Restart with room: exactly the acknowledged chunks, and the failed seq goes in now. */
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, NULL) == 0);
    if (dm.pid <= 0) return;
    CHECK(rpc_client_open(&c, ep) == 0);
    snap_t again = snap(&c);
    CHECK_MSG(again.tokens == before.tokens && again.windows == before.windows &&
                  again.last_seq == seq - 1,
              "after restart: %llu tokens, %llu windows, seq %llu; before the failure %llu, "
              "%llu, %llu",
              (unsigned long long)again.tokens, (unsigned long long)again.windows,
              (unsigned long long)again.last_seq, (unsigned long long)before.tokens,
              (unsigned long long)before.windows, (unsigned long long)before.last_seq);
    r = ingest_tokens(&c, seq, 1000);
    CHECK_RC(code_of(r), 0);
    CHECK(r && r->ingest && !r->ingest->duplicate);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(snap(&c).last_seq == seq);
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);
    if (check_failed_) rpc_print_file(log);
}

int main(void)
{
    char tmp[512], dir[700];
    CHECK(rpc_tempdir(tmp, sizeof tmp) == 0);
    snprintf(dir, sizeof dir, "%s/map-limit", tmp);
    mkdir(dir, 0755);
    map_limit(dir);
    io_sweep(tmp);
    io_recover(tmp);

    const char *td = getenv("RECALL_TEST_DATA");
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny-fot", td ? td : "tests/data");
    struct stat st;
    if (stat(model, &st) == 0)
        disk_full(model, tmp);
    else
        printf("no tiny model at %s: the live disk-full case is not run\n", model);
    rpc_rmtree(tmp);
    return check_summary();
}
