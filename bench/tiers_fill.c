/* tiers_fill.c — writes large synthetic sessions straight into a recalld data directory, for
 * the memory-tiers benchmark (bench/tiers.py).
 *
 *   bench_tiers_fill DATA TEMPLATE PREFIX COUNT TOKENS [SEED]
 *
 * TEMPLATE is a session recalld made itself in DATA (one ingest of at least one window, so
 * its record, options and row files are real). COUNT new sessions PREFIX000, PREFIX001, ...
 * are written, each of TOKENS tokens (rounded down to whole windows), with the template's
 * options, model fingerprint and row shape: random token ids below 512 and random memory rows
 * (magnitudes in [1/256, 1)), committed through memory/session_memory.h in batches, exactly as
 * an ingest commits them (files synced, then checksums, tokens and record in one LMDB
 * transaction). Only what an ingest would compute from the model is synthetic: the daemon
 * opens, loads, verifies and answers over these sessions as over any other, so start-up,
 * bring-in and ask times are real; the answers themselves mean nothing.
 *
 * recalld must not be running on DATA (the catalogue is opened exclusively). Sessions that
 * already exist are left as they are (the benchmark grows one data directory step by step). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "memory/db.h"
#include "memory/session_memory.h"
#include "proto/recall.pb-c.h"

#define BATCH_ROWS_BYTES ((size_t)256 << 20) /* rows written between two commits */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* n random values of dtype t, bit-built: a random sign and mantissa, exponents from 2^-8
 * to 2^-1, so no value is a NaN, an infinity or a denormal. */
static void fill_random(void *dst, dtype_t t, size_t n, uint64_t *s)
{
    if (t == DTYPE_F32) {
        uint32_t *p = dst;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rng_next(s);
            p[i] = (uint32_t)(r & 0x807fffffu) | (uint32_t)(119 + (r >> 40) % 8) << 23;
        }
        return;
    }
    uint16_t *p = dst;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(s);
        if (t == DTYPE_BF16)
            p[i] = (uint16_t)((r & 0x807fu) | (119 + (r >> 40) % 8) << 7);
        else /* f16: bias 15 */
            p[i] = (uint16_t)((r & 0x83ffu) | (7 + (r >> 40) % 8) << 10);
    }
}

/* Memory layers of the template: its row files L0.keys, L1.keys, ... */
static int count_layers(const char *dir)
{
    int n = 0;
    char path[4200];
    for (;;) {
        if (snprintf(path, sizeof path, "%s/L%d.keys", dir, n) >= (int)sizeof path) return 0;
        FILE *f = fopen(path, "rb");
        if (!f) return n;
        fclose(f);
        n++;
    }
}

/* The record named `name` among recs, or NULL. */
static const memory_db_record_t *find_record(const memory_db_record_t *recs, size_t n,
                                             const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(recs[i].name, name) == 0) return &recs[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s DATA TEMPLATE PREFIX COUNT TOKENS [SEED]\n", argv[0]);
        return 2;
    }
    const char *data = argv[1], *tmpl = argv[2], *prefix = argv[3];
    const long count = strtol(argv[4], NULL, 10);
    const unsigned long long tokens = strtoull(argv[5], NULL, 10);
    uint64_t seed = argc > 6 ? strtoull(argv[6], NULL, 10) : 1;
    if (!seed) seed = 1;
    char err[1024] = "", rows_root[4096], tdir[4096];
    if (snprintf(rows_root, sizeof rows_root, "%s/rows", data) >= (int)sizeof rows_root ||
        snprintf(tdir, sizeof tdir, "%s/%s", rows_root, tmpl) >= (int)sizeof tdir) {
        fprintf(stderr, "tiers_fill: path too long\n");
        return 2;
    }

    memory_db_t *db = NULL;
    if (memory_db_open(data, NULL, &db, err, sizeof err)) {
        fprintf(stderr, "tiers_fill: %s\n", err);
        return 1;
    }
    /* The catalogue as it was before this run: the template, and the sessions to skip. */
    memory_db_record_t *recs = NULL;
    size_t n_recs = 0;
    if (memory_db_list(db, &recs, &n_recs)) {
        fprintf(stderr, "tiers_fill: cannot list the sessions in %s\n", data);
        return 1;
    }
    const memory_db_record_t *tr = find_record(recs, n_recs, tmpl);
    Recall__SessionRecord *rec =
        tr ? recall__session_record__unpack(NULL, tr->len, tr->data) : NULL;
    if (!rec || !rec->info || !rec->info->options) {
        fprintf(stderr, "tiers_fill: no session '%s' in %s\n", tmpl, data);
        return 1;
    }
    Recall__SessionInfo *info = rec->info;
    char *template_name = info->name; /* given back before the record is freed */
    dtype_t dt;
    if (dtype_parse(info->options->mem_dtype, &dt) != 0) {
        fprintf(stderr, "tiers_fill: unknown mem_dtype '%s'\n", info->options->mem_dtype);
        return 1;
    }
    if (dt != DTYPE_BF16 && dt != DTYPE_F32 && dt != DTYPE_F16) {
        /* A quantized row's size depends on the kv heads, which the record does not keep. */
        fprintf(stderr, "tiers_fill: the template's memory dtype is %s; fill copies bf16, f16 "
                        "or f32 rows only\n",
                dtype_name(dt));
        return 1;
    }
    session_memory_shape_t shape = {.n_layers = count_layers(tdir),
                                    .row_dim = (int)rec->row_dim,
                                    .dtype = dt,
                                    .window = (int)info->options->window};
    if (!shape.n_layers || !shape.window) {
        fprintf(stderr, "tiers_fill: the template has no row files in %s (ingest a window)\n",
                tdir);
        return 1;
    }
    const uint64_t W = (uint64_t)shape.window, total_windows = tokens / W;
    const size_t wbytes = W * (size_t)shape.row_dim * dtype_size(dt); /* one window, one kind */
    uint64_t batch = BATCH_ROWS_BYTES / (2 * wbytes * (size_t)shape.n_layers);
    if (batch < 1) batch = 1;
    void *keys = malloc(wbytes * batch), *vals = malloc(wbytes * batch);
    int32_t *toks = malloc(sizeof(int32_t) * W * batch);
    if (!keys || !vals || !toks) {
        fprintf(stderr, "tiers_fill: out of memory\n");
        return 1;
    }
    fprintf(stderr,
            "tiers_fill: %ld sessions of %llu windows (%d layers, row_dim %d, %s), %.1f MiB of "
            "rows each\n",
            count, (unsigned long long)total_windows, shape.n_layers, shape.row_dim,
            dtype_name(dt), 2.0 * (double)wbytes * shape.n_layers * total_windows / 1048576.0);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int made = 0;
    for (long i = 0; i < count; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s%03ld", prefix, i);
        if (find_record(recs, n_recs, name)) continue;
        session_memory_t *m = NULL;
        if (session_memory_open(db, rows_root, name, &shape, 0, &m) ||
            session_memory_load(m, err, sizeof err)) {
            fprintf(stderr, "tiers_fill: %s: %s\n", name, err);
            return 1;
        }
        uint64_t done = 0;
        while (done < total_windows) {
            uint64_t n = total_windows - done < batch ? total_windows - done : batch;
            for (int l = 0; l < shape.n_layers; l++) {
                fill_random(keys, dt, n * wbytes / dtype_size(dt), &seed);
                fill_random(vals, dt, n * wbytes / dtype_size(dt), &seed);
                if (memory_store_append_raw(session_memory_store(m), l, keys, vals, n * W)) {
                    fprintf(stderr, "tiers_fill: %s: writing rows failed (disk full?)\n", name);
                    return 1;
                }
            }
            for (uint64_t t = 0; t < n * W; t++) toks[t] = (int32_t)(rng_next(&seed) % 512);
            uint64_t chunk = done / batch;
            info->name = name;
            info->tokens = (done + n) * W;
            info->windows = done + n;
            info->pending_tokens = 0;
            info->last_seq = 0;
            info->ingest_chunks = chunk + 1;
            info->created_unix = (int64_t)time(NULL);
            rec->next_chunk = chunk + 1;
            size_t len = recall__session_record__get_packed_size(rec);
            uint8_t *buf = malloc(len ? len : 1);
            if (!buf) return 1;
            recall__session_record__pack(rec, buf);
            memory_db_commit_t c = {.session = name,
                                    .record = buf,
                                    .record_len = len,
                                    .chunk_index = chunk,
                                    .tokens = toks,
                                    .n_tokens = (size_t)(n * W)};
            rc_t rc = session_memory_commit(m, &c, n, err, sizeof err);
            free(buf);
            if (rc) {
                fprintf(stderr, "tiers_fill: %s: commit failed: %s\n", name, err);
                return 1;
            }
            done += n;
        }
        session_memory_close(&m);
        made++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("filled %d sessions (%ld asked, the rest existed) in %.1f s\n", made, count, s);
    info->name = template_name;
    memory_db_records_free(recs, n_recs);
    recall__session_record__free_unpacked(rec, NULL);
    free(keys);
    free(vals);
    free(toks);
    memory_db_close(&db);
    return 0;
}
