/* test_db.c — the LMDB layer: commit, reload, drop, prefix isolation, map growth, limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memory/db.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

typedef struct win_ctx {
    const uint8_t *want_k, *want_v;
    size_t want_bytes;
    int ok;
} win_ctx_t;

static rc_t check_win(void *ctx, const void *k, const void *v, size_t bytes)
{
    win_ctx_t *c = ctx;
    c->ok = bytes == c->want_bytes && memcmp(k, c->want_k, bytes) == 0 &&
            memcmp(v, c->want_v, bytes) == 0;
    return RC_OK;
}

static uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed * 7 + (i >> 8));
    return p;
}

int main(void)
{
    char dir[512];
    CHECK(rpc_tempdir(dir, sizeof dir) == 0);
    char err[512];
    memory_db_t *db = NULL;
    memory_db_opts_t tiny = {.map_size = 64 << 10, .max_map_size = 0};
    CHECK_RC(memory_db_open(dir, &tiny, &db, err, sizeof err), RC_OK);
    if (!db) {
        fprintf(stderr, "open: %s\n", err);
        return check_summary();
    }
    size_t map0 = memory_db_map_size(db);

    /* A second opener of the same data directory is refused. */
    memory_db_t *db2 = NULL;
    CHECK_RC(memory_db_open(dir, NULL, &db2, err, sizeof err), RC_ERR_BUSY);
    CHECK(db2 == NULL);
    CHECK(strstr(err, "in use") != NULL);

    /* Record-only commit, then a chunk with tokens and two layers' window rows that do not
     * fit in the 64 KiB map: the map must grow and the commit succeed. */
    const char *rec0 = "record-v0";
    memory_db_commit_t c0 = {.session = "alpha", .record = rec0, .record_len = strlen(rec0)};
    CHECK_RC(memory_db_commit(db, &c0, err, sizeof err), RC_OK);

    size_t wbytes = 256 << 10;
    uint8_t *k0 = pattern(wbytes, 1), *v0 = pattern(wbytes, 2);
    uint8_t *k1 = pattern(wbytes, 3), *v1 = pattern(wbytes, 4);
    memory_db_window_t wins[2] = {{0, 0, k0, v0, wbytes}, {1, 0, k1, v1, wbytes}};
    int32_t toks[100];
    for (int i = 0; i < 100; i++)
        toks[i] = i * 1000 - 7; /* negative too: raw int32 */
    const char *rec1 = "record-v1";
    memory_db_commit_t c1 = {.session = "alpha",
                             .record = rec1,
                             .record_len = strlen(rec1),
                             .chunk_index = 0,
                             .tokens = toks,
                             .n_tokens = 60,
                             .windows = wins,
                             .n_windows = 2};
    CHECK_RC(memory_db_commit(db, &c1, err, sizeof err), RC_OK);
    CHECK(memory_db_map_size(db) > map0);
    /* Chunks 1 and 256 (big-endian order must beat byte order of little-endian). */
    memory_db_commit_t c2 = {.session = "alpha",
                             .record = rec1,
                             .record_len = strlen(rec1),
                             .chunk_index = 1,
                             .tokens = toks + 60,
                             .n_tokens = 30};
    CHECK_RC(memory_db_commit(db, &c2, err, sizeof err), RC_OK);
    memory_db_commit_t c3 = {.session = "alpha",
                             .record = rec1,
                             .record_len = strlen(rec1),
                             .chunk_index = 256,
                             .tokens = toks + 90,
                             .n_tokens = 10};
    CHECK_RC(memory_db_commit(db, &c3, err, sizeof err), RC_OK);

    /* "alph" and "alpha2" share a byte prefix with "alpha" but not the "name\0" prefix. */
    memory_db_window_t w2 = {0, 0, k1, v1, 1024};
    memory_db_commit_t c4 = {.session = "alpha2",
                             .record = "x",
                             .record_len = 1,
                             .chunk_index = 0,
                             .tokens = toks,
                             .n_tokens = 5,
                             .windows = &w2,
                             .n_windows = 1};
    CHECK_RC(memory_db_commit(db, &c4, err, sizeof err), RC_OK);
    memory_db_commit_t c5 = {.session = "alph",
                             .record = "y",
                             .record_len = 1,
                             .chunk_index = 0,
                             .tokens = toks,
                             .n_tokens = 3};
    CHECK_RC(memory_db_commit(db, &c5, err, sizeof err), RC_OK);

    /* Reload from disk. */
    memory_db_close(&db);
    CHECK(db == NULL);
    memory_db_close(&db); /* NULL-safe */
    CHECK_RC(memory_db_open(dir, &tiny, &db, err, sizeof err), RC_OK);
    if (!db) return check_summary();
    memory_db_record_t *recs;
    size_t nrec;
    CHECK_RC(memory_db_list(db, &recs, &nrec), RC_OK);
    CHECK(nrec == 3);
    if (nrec == 3) {
        CHECK(strcmp(recs[0].name, "alph") == 0);
        CHECK(strcmp(recs[1].name, "alpha") == 0);
        CHECK(strcmp(recs[2].name, "alpha2") == 0);
        CHECK(recs[1].len == strlen(rec1) && memcmp(recs[1].data, rec1, recs[1].len) == 0);
    }
    memory_db_records_free(recs, nrec);

    int32_t *got;
    size_t ng;
    uint64_t chunks, next;
    CHECK_RC(memory_db_load_tokens(db, "alpha", &got, &ng, &chunks, &next), RC_OK);
    CHECK(ng == 100);
    CHECK(chunks == 3);
    CHECK(next == 257);
    CHECK(got && memcmp(got, toks, 100 * sizeof *toks) == 0);
    free(got);

    win_ctx_t wc = {k0, v0, wbytes, 0};
    CHECK_RC(memory_db_read_window(db, "alpha", 0, 0, check_win, &wc), RC_OK);
    CHECK(wc.ok);
    wc = (win_ctx_t){k1, v1, wbytes, 0};
    CHECK_RC(memory_db_read_window(db, "alpha", 1, 0, check_win, &wc), RC_OK);
    CHECK(wc.ok);
    CHECK_RC(memory_db_read_window(db, "alpha", 0, 1, check_win, &wc), RC_ERR_NOT_FOUND);
    uint64_t bytes;
    CHECK_RC(memory_db_session_bytes(db, "alpha", &bytes), RC_OK);
    CHECK(bytes == strlen(rec1) + 400 + 4 * wbytes);

    /* Drop "alpha": all its keys go, its neighbours by prefix stay. */
    CHECK_RC(memory_db_drop(db, "alpha", err, sizeof err), RC_OK);
    CHECK_RC(memory_db_drop(db, "alpha", err, sizeof err), RC_ERR_NOT_FOUND);
    CHECK_RC(memory_db_load_tokens(db, "alpha", &got, &ng, &chunks, &next), RC_OK);
    CHECK(ng == 0 && chunks == 0 && got == NULL);
    CHECK_RC(memory_db_read_window(db, "alpha", 1, 0, check_win, &wc), RC_ERR_NOT_FOUND);
    CHECK_RC(memory_db_session_bytes(db, "alpha", &bytes), RC_OK);
    CHECK(bytes == 0);
    CHECK_RC(memory_db_load_tokens(db, "alpha2", &got, &ng, &chunks, &next), RC_OK);
    CHECK(ng == 5);
    free(got);
    CHECK_RC(memory_db_load_tokens(db, "alph", &got, &ng, &chunks, &next), RC_OK);
    CHECK(ng == 3);
    free(got);
    wc = (win_ctx_t){k1, v1, 1024, 0};
    CHECK_RC(memory_db_read_window(db, "alpha2", 0, 0, check_win, &wc), RC_OK);
    CHECK(wc.ok);
    memory_db_close(&db);

    /* A map that may not grow past 1 MiB: a 4 MiB commit fails cleanly and changes
     * nothing; a small one afterwards still works. */
    memory_db_opts_t capped = {.map_size = 64 << 10, .max_map_size = 1 << 20};
    CHECK_RC(memory_db_open(dir, &capped, &db, err, sizeof err), RC_OK);
    if (!db) return check_summary();
    size_t big = 2 << 20;
    uint8_t *bk = pattern(big, 5), *bv = pattern(big, 6);
    memory_db_window_t bw = {0, 0, bk, bv, big};
    memory_db_commit_t cb = {.session = "big",
                             .record = "r",
                             .record_len = 1,
                             .chunk_index = 0,
                             .tokens = toks,
                             .n_tokens = 10,
                             .windows = &bw,
                             .n_windows = 1};
    CHECK_RC(memory_db_commit(db, &cb, err, sizeof err), RC_ERR_LIMIT);
    CHECK(strstr(err, "full") != NULL);
    CHECK_RC(memory_db_list(db, &recs, &nrec), RC_OK);
    CHECK(nrec == 2); /* alph, alpha2; no "big" */
    memory_db_records_free(recs, nrec);
    CHECK_RC(memory_db_load_tokens(db, "big", &got, &ng, &chunks, &next), RC_OK);
    CHECK(ng == 0);
    memory_db_commit_t cs = {.session = "small", .record = "s", .record_len = 1};
    CHECK_RC(memory_db_commit(db, &cs, err, sizeof err), RC_OK);
    memory_db_close(&db);

    /* A directory that is not there is an I/O error with a sentence, not a crash. */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/does/not/exist", dir);
    CHECK_RC(memory_db_open(missing, NULL, &db, err, sizeof err), RC_ERR_IO);
    CHECK(err[0] != 0);

    free(k0);
    free(v0);
    free(k1);
    free(v1);
    free(bk);
    free(bv);
    rpc_rmtree(dir);
    return check_summary();
}
