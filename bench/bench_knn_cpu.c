/* bench_knn_cpu.c — quality and persistence figures of the kNN memory tier on the CPU.
 *
 *   bench_knn_cpu [--sizes 65536,262144,1048576] [--dim 100] [--kv-heads 1] [--k 128]
 *                 [--queries 64] [--persist] [--lmdb DIR]
 *
 * Keys are synthetic "documents": per kv head, NCLUST topic centres (N(0,1) per dimension)
 * and keys scattered around them (σ 0.6); values N(0,1). Queries are a stored key's
 * direction plus as much noise (so each query has a topic but no exact twin), scored with
 * 1/sqrt(d) as attention does. For each memory size the table gives:
 *   recall@k   of the IVF-Flat tier (memory/knn.c defaults: nlist ≈ 4·sqrt(T), nprobe 32)
 *              against exact top-k (a flat index);
 *   rel.err    ‖o_knn − o_exact‖ / ‖o_exact‖ of memory-layer attention outputs
 *              (cpu_attention_knn with the IVF lists vs cpu_attention over all rows), and
 *              the same with exact top-k lists (the error of keeping k keys at all);
 *   build      seconds to index the keys (training included).
 * --persist also measures, at the largest size, (a) serializing the indexes and writing them
 * into LMDB (one synced transaction), reading and deserializing them, against (b) rebuilding
 * from the stored keys. */
#include <lmdb.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kernels/cpu.h"
#include "memory/knn.h"
#include "memory/store.h"

#define NCLUST 1024

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double urand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (rng >> 11) * (1.0 / 9007199254740992.0);
}
static float nrand(void)
{
    double u = urand() + 1e-300, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct cfg {
    size_t sizes[8];
    int n_sizes, dim, kv, k, nq, persist;
    const char *lmdb_dir;
} cfg_t;

static void run_size(const cfg_t *c, size_t n, int last)
{
    const int d = c->dim, kv = c->kv, row = kv * d, nq = c->nq, nh = kv, k = c->k;
    float *cent = malloc(sizeof(float) * NCLUST * row);
    for (size_t i = 0; i < (size_t)NCLUST * row; i++) cent[i] = nrand();
    float *keys = malloc(sizeof(float) * n * row), *vals = malloc(sizeof(float) * n * row);
    for (size_t i = 0; i < n; i++)
        for (int h = 0; h < kv; h++) {
            const float *ce = cent + ((size_t)(urand() * NCLUST) * kv + h) * d;
            for (int t = 0; t < d; t++) {
                keys[(i * kv + h) * d + t] = ce[t] + 0.6f * nrand();
                vals[(i * kv + h) * d + t] = nrand();
            }
        }
    float *q = malloc(sizeof(float) * nq * nh * d);
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < nh; h++) {
            size_t r = (size_t)(urand() * n);
            for (int t = 0; t < d; t++)
                q[((size_t)i * nh + h) * d + t] = keys[(r * kv + h) * d + t] + nrand();
        }
    memory_store_t *s = NULL;
    memory_store_create(1, row, DTYPE_F32, &s);
    memory_store_append_f32(s, 0, keys, vals, n);

    memory_knn_t *ivf = NULL, *flat = NULL;
    memory_knn_create(1, kv, d, NULL, &ivf);
    memory_knn_opts_t fo = {.ivf_min_rows = (size_t)1 << 40};
    memory_knn_create(1, kv, d, &fo, &flat);
    double t0 = now();
    if (memory_knn_sync(ivf, s, 0)) {
        fprintf(stderr, "indexing failed\n");
        exit(1);
    }
    double t_build = now() - t0;
    int64_t *ia = malloc(sizeof(int64_t) * nq * nh * k), *ie = malloc(sizeof(int64_t) * nq * nh * k);
    t0 = now();
    memory_knn_search(ivf, s, 0, q, nq, nh, k, ia);
    double t_search = now() - t0;
    memory_knn_search(flat, s, 0, q, nq, nh, k, ie);
    size_t hit = 0;
    for (int i = 0; i < nq * nh; i++)
        for (int j = 0; j < k; j++)
            for (int t = 0; t < k; t++) hit += ia[(size_t)i * k + j] == ie[(size_t)i * k + t];
    double recall = (double)hit / ((double)nq * nh * k);

    /* Memory-layer attention: one local key (the query's own position), all memory. */
    float *lk = malloc(sizeof(float) * nq * row), *lv = malloc(sizeof(float) * nq * row);
    for (size_t i = 0; i < (size_t)nq * row; i++) lk[i] = nrand(), lv[i] = nrand();
    float *oe = malloc(sizeof(float) * nq * nh * d), *oa = malloc(sizeof(float) * nq * nh * d),
          *ox = malloc(sizeof(float) * nq * nh * d);
    attn_args_t a = {.n_q = nq, .n_k = nq, .n_heads = nh, .n_kv_heads = kv, .head_dim = d,
                     .q_offset = 0, .q = q, .k = lk, .v = lv, .n_mem = n,
                     .mem_dtype = DTYPE_F32, .mem_k = keys, .mem_v = vals,
                     .scale = 1.0f / sqrtf((float)d), .out = oe};
    cpu_attention(&a);
    attn_knn_args_t ka = {.e = {.a = a, .layout = CPU_ATTN_PLAIN}, .k = k, .idx = ia};
    ka.e.a.out = oa;
    cpu_attention_knn(&ka);
    ka.idx = ie;
    ka.e.a.out = ox;
    cpu_attention_knn(&ka);
    double num_a = 0, num_x = 0, den = 0;
    for (size_t i = 0; i < (size_t)nq * nh * d; i++) {
        num_a += (double)(oa[i] - oe[i]) * (oa[i] - oe[i]);
        num_x += (double)(ox[i] - oe[i]) * (ox[i] - oe[i]);
        den += (double)oe[i] * oe[i];
    }
    printf("| %8zu | %3d | %d×%d | %5d | %6.3f | %9.2e | %9.2e | %7.1f | %8.2f |\n", n, k, kv, d,
           memory_knn_nlist(ivf, 0), recall, sqrt(num_a / den), sqrt(num_x / den), t_build,
           1e3 * t_search / nq);
    fflush(stdout);

    if (c->persist && last) {
        /* (a) serialize into LMDB and back; (b) rebuild from the stored keys. */
        void *buf;
        size_t len;
        t0 = now();
        memory_knn_save(ivf, 0, &buf, &len);
        double t_ser = now() - t0;
        mkdir(c->lmdb_dir, 0700);
        MDB_env *env;
        MDB_dbi dbi;
        MDB_txn *txn;
        mdb_env_create(&env);
        mdb_env_set_mapsize(env, (size_t)16 << 30);
        if (mdb_env_open(env, c->lmdb_dir, 0, 0600)) {
            fprintf(stderr, "cannot open LMDB in %s\n", c->lmdb_dir);
            exit(1);
        }
        t0 = now();
        mdb_txn_begin(env, NULL, 0, &txn);
        mdb_dbi_open(txn, NULL, 0, &dbi);
        MDB_val key = {5, "index"}, val = {len, buf};
        int e = mdb_put(txn, dbi, &key, &val, 0);
        e = e ? e : mdb_txn_commit(txn);
        double t_write = now() - t0;
        if (e) fprintf(stderr, "LMDB write: %s\n", mdb_strerror(e));
        free(buf);
        t0 = now();
        mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
        MDB_val got;
        e = mdb_get(txn, dbi, &key, &got);
        memory_knn_t *back = NULL;
        memory_knn_create(1, kv, d, NULL, &back);
        int lr = e ? -1 : memory_knn_load(back, 0, got.mv_data, got.mv_size, n);
        mdb_txn_abort(txn);
        double t_load = now() - t0;
        int64_t *ib = malloc(sizeof(int64_t) * nq * nh * k);
        memory_knn_search(back, s, 0, q, nq, nh, k, ib);
        int same = lr == 0 && !memcmp(ia, ib, sizeof(int64_t) * nq * nh * k);
        memory_knn_reset(back, 0);
        t0 = now();
        memory_knn_sync(back, s, 0);
        double t_rebuild = now() - t0;
        memory_knn_search(back, s, 0, q, nq, nh, k, ib);
        int same_rb = !memcmp(ia, ib, sizeof(int64_t) * nq * nh * k);
        printf("\npersistence at %zu keys (%d kv heads × %d dims, fp32 rows %.1f MiB):\n", n, kv, d,
               n * row * 4.0 / 1048576);
        printf("  (a) serialize %.2f s, %.1f MiB, LMDB write+sync %.2f s; LMDB read + load %.2f s"
               " (same results: %s)\n",
               t_ser, len / 1048576.0, t_write, t_load, same ? "yes" : "NO");
        printf("  (b) rebuild from the stored keys %.2f s (same results: %s)\n", t_rebuild,
               same_rb ? "yes" : "NO");
        free(ib);
        memory_knn_destroy(&back);
        mdb_env_close(env);
    }
    memory_knn_destroy(&ivf);
    memory_knn_destroy(&flat);
    memory_store_destroy(&s);
    free(cent), free(keys), free(vals), free(q), free(ia), free(ie), free(lk), free(lv);
    free(oe), free(oa), free(ox);
}

int main(int argc, char **argv)
{
    cfg_t c = {.sizes = {65536, 262144, 1048576}, .n_sizes = 3, .dim = 100, .kv = 1, .k = 128,
               .nq = 64, .lmdb_dir = "/tmp/bench_knn_lmdb"};
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--sizes")) {
            c.n_sizes = 0;
            for (char *p = (char *)v; *p && c.n_sizes < 8;) {
                c.sizes[c.n_sizes++] = strtoull(p, &p, 10);
                if (*p == ',') p++;
            }
            i++;
        } else if (!strcmp(argv[i], "--dim")) c.dim = atoi(v), i++;
        else if (!strcmp(argv[i], "--kv-heads")) c.kv = atoi(v), i++;
        else if (!strcmp(argv[i], "--k")) c.k = atoi(v), i++;
        else if (!strcmp(argv[i], "--queries")) c.nq = atoi(v), i++;
        else if (!strcmp(argv[i], "--lmdb")) c.lmdb_dir = v, i++;
        else if (!strcmp(argv[i], "--persist")) c.persist = 1;
        else {
            fprintf(stderr, "usage: %s [--sizes N,N..] [--dim D] [--kv-heads H] [--k K] "
                            "[--queries Q] [--persist] [--lmdb DIR]\n", argv[0]);
            return 2;
        }
    }
    printf("| keys     | k   | heads×d | nlist | recall@k | rel.err IVF | rel.err top-k | build s | search ms/query |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (int i = 0; i < c.n_sizes; i++) run_size(&c, c.sizes[i], i == c.n_sizes - 1);
    return 0;
}
