/* knn.c — the kNN indexes over memory keys, one per (memory layer, kv head); knn.h says what
 * the index is as a function of the store's rows, which is what makes it rebuildable.
 *
 * The flat tier is a Faiss IndexFlatIP. The IVF-Flat tier is trained by Faiss's spherical
 * k-means, but its inverted lists are kept and scanned here: Debian's libfaiss is built for
 * generic x86-64, where IndexIVFFlat scores every listed key with a scalar loop (≈ 1.4 G
 * multiply-adds/s a core; at 256k rows that was 80 % of a knn session's ingest). Here each
 * list's keys are fp32 rows side by side and a list is scored against all the queries that
 * probe it with one BLAS product. Lists, probes and results follow IVF-Flat exactly: a row
 * is in the list of its best centroid by inner product, a query scans the rows of its
 * nprobe best lists, and the k best scores win (ties: the lower row first).
 *
 * One departure from IVF-Flat: a row its best centroid represents badly (cosine below the
 * head's threshold, the OUTLIER_QUANTILE of the training points' cosines) goes to an extra
 * list that every query scans. The quantizer is trained on a prefix of the rows; a row unlike
 * everything in that prefix -- a pass key in a million tokens of repeated filler, a new
 * topic late in a long session -- would otherwise sit in the list of some filler centroid
 * that no query about it probes, and be lost to search. */
#include "memory/knn.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_io_c.h>

#include "common/log.h"
#include "common/quant.h"

/* k-means for the coarse quantizer: Faiss's IVF default for inner product is spherical
 * k-means; 10 iterations on at most 64 points per centroid keep training at 1M keys to
 * seconds while the lists stay balanced enough. bench_knn_cpu (d 64, k 128) measured
 * recall@k 0.923 / 0.995 at 64k / 128k keys; 32 points gave 0.921 / 0.996 in 2/3 of the
 * build time (kept at 64 so as not to move the default model's answers; 16: 0.896). */
#define KMEANS_NITER 10
#define KMEANS_MAX_POINTS_PER_CENTROID 64
/* Rows widened per batch when adding: bounds scratch to ADD_BLOCK × head_dim floats. */
#define ADD_BLOCK 65536
/* Rows of one list scored per product: bounds the search's score scratch to max_q × this,
 * whatever the size of a list (the exact list can grow long; see OUTLIER_QUANTILE). */
#define SEARCH_ROW_BLOCK 4096
/* The share of training points below the outlier threshold: rows like the training prefix
 * go to the exact list about this often, so it costs about this share of a flat scan. */
#define OUTLIER_QUANTILE 0.01

#define KNN_MAGIC 0x4e4e4b52u /* "RKNN" */
/* 3: IVF heads are saved as centroids, the outlier threshold and each row's list (nlist:
 * the exact list); 2 had no exact list and 1 held Faiss IndexIVFFlat: both are refused
 * (the caller rebuilds). */
#define KNN_VERSION 3u

/* s[i, j] = q[i] . y[j] for q [m, d] and y [n, d] (row-major); s is [m, n] row-major.
 * OpenBLAS, the same library Faiss links (the row-major call is the column-major
 * sgemm("T", "N", n, m, d, y, q) underneath). */
static void dot_rows(float *s, const float *q, int m, const float *y, int n, int d)
{
    if (m > 0 && n > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, d, 1.0f, q, d, y, d, 0.0f, s,
                    n);
}

typedef struct ivf_list {
    int64_t *ids; /* [n] row ids, ascending (rows are added in id order) */
    float *keys;  /* [n, hd] the rows' keys in fp32; NULL while not materialized */
    size_t n, cap;
} ivf_list_t;

typedef struct ivf_head {
    float *cent;       /* [nlist, hd] coarse centroids (unit length) */
    float thr;         /* rows whose best centroid's cosine is below this: the exact list */
    int32_t *list_of;  /* [cap_rows] the list of each indexed row (nlist: the exact list) */
    size_t cap_rows;
    ivf_list_t *lists; /* [nlist + 1]: one per centroid, then the exact list */
} ivf_head_t;

typedef struct knn_layer {
    FaissIndex **heads; /* flat: [n_kv_heads] IndexFlatIP; NULL when IVF or not built */
    ivf_head_t *ivf;    /* IVF: [n_kv_heads]; NULL when flat or not built */
    int keys_ready;     /* IVF: the lists hold their keys (a loaded layer gets them lazily) */
    size_t rows;        /* rows indexed (ids 0..rows-1) */
    size_t trained;     /* IVF: rows the quantizer was trained on; 0: flat */
    int nlist;          /* IVF lists; 0: flat */
} knn_layer_t;

struct memory_knn {
    int n_layers, n_kv, hd;
    memory_knn_opts_t o; /* defaults filled in */
    knn_layer_t *layers; /* [n_layers] */
};

#define BUILT(L) ((L)->heads || (L)->ivf)

static rc_t faiss_failed(const char *what, int err)
{
    const char *m = faiss_get_last_error();
    log_warn("knn: %s failed (faiss %d): %s", what, err, m ? m : "no message");
    return err == -4 && m && strstr(m, "bad_alloc") ? RC_ERR_NOMEM : RC_ERR_INTERNAL;
}

/* The training threshold in force at n rows (0: flat). */
static size_t target_trained(const memory_knn_t *x, size_t n)
{
    size_t t = x->o.ivf_min_rows;
    if (n < t) return 0;
    const size_t g = (size_t)x->o.retrain_growth;
    while (t <= n / g) t *= g;
    return t;
}

static int nlist_for(const memory_knn_t *x, size_t trained)
{
    if (x->o.nlist > 0) return (size_t)x->o.nlist < trained ? x->o.nlist : (int)trained;
    int nl = (int)lround(4.0 * sqrt((double)trained));
    return nl < 1 ? 1 : nl;
}

rc_t memory_knn_create(int n_layers, int n_kv_heads, int head_dim, const memory_knn_opts_t *o,
                       memory_knn_t **out)
{
    *out = NULL;
    if (n_layers < 0 || n_kv_heads < 1 || head_dim < 1) return RC_ERR_INVALID;
    memory_knn_t *x = calloc(1, sizeof *x);
    if (!x) return RC_ERR_NOMEM;
    x->n_layers = n_layers;
    x->n_kv = n_kv_heads;
    x->hd = head_dim;
    if (o) x->o = *o;
    if (x->o.nlist < 0 || x->o.nprobe < 0 || x->o.retrain_growth < 0 || x->o.retrain_growth == 1)
        goto invalid;
    if (!x->o.nprobe) x->o.nprobe = MEMORY_KNN_DEFAULT_NPROBE;
    if (!x->o.ivf_min_rows) x->o.ivf_min_rows = MEMORY_KNN_DEFAULT_IVF_MIN_ROWS;
    if (!x->o.retrain_growth) x->o.retrain_growth = MEMORY_KNN_DEFAULT_GROWTH;
    if (!x->o.seed) x->o.seed = MEMORY_KNN_DEFAULT_SEED;
    x->layers = calloc(n_layers > 0 ? (size_t)n_layers : 1, sizeof *x->layers);
    if (!x->layers) {
        free(x);
        return RC_ERR_NOMEM;
    }
    *out = x;
    return RC_OK;
invalid:
    free(x);
    return RC_ERR_INVALID;
}

int memory_knn_fits(const memory_knn_t *x, int n_layers, int n_kv_heads, int head_dim)
{
    return x && x->n_layers == n_layers && x->n_kv == n_kv_heads && x->hd == head_dim;
}

static void ivf_free(ivf_head_t *v, int n_kv, int nlist)
{
    if (!v) return;
    for (int h = 0; h < n_kv; h++) {
        for (int l = 0; v[h].lists && l <= nlist; l++) {
            free(v[h].lists[l].ids);
            free(v[h].lists[l].keys);
        }
        free(v[h].lists);
        free(v[h].cent);
        free(v[h].list_of);
    }
    free(v);
}

void memory_knn_reset(memory_knn_t *x, int layer)
{
    knn_layer_t *L = &x->layers[layer];
    if (L->heads)
        for (int h = 0; h < x->n_kv; h++) faiss_Index_free(L->heads[h]);
    free(L->heads);
    ivf_free(L->ivf, x->n_kv, L->nlist);
    memset(L, 0, sizeof *L);
}

void memory_knn_destroy(memory_knn_t **px)
{
    memory_knn_t *x = *px;
    if (!x) return;
    for (int l = 0; l < x->n_layers; l++) memory_knn_reset(x, l);
    free(x->layers);
    free(x);
    *px = NULL;
}

/* dst [n, hd] = head h's slice of store rows r0..r0+n of layer, as fp32 (widened, or
 * dequantized for an fp8/int8 store: the index is built and searched on those values). */
static void gather_head(const memory_knn_t *x, const memory_store_t *s, int layer, int h,
                        size_t r0, size_t n, size_t stride, float *dst)
{
    const dtype_t t = memory_store_dtype(s);
    const size_t row = memory_store_row_bytes(s);
    const int n_kv = memory_store_row_dim(s) / x->hd;
    ASSERT(!dtype_is_quant(t) || memory_store_head_dim(s) == x->hd); /* scales per head */
    const char *k = memory_store_keys(s, layer);
    for (size_t i = 0; i < n; i++)
        quant_row_head_decode(dst + i * x->hd, k + (r0 + i * stride) * row, t, n_kv, x->hd, h);
}

/* Appends row id (key in fp32 when the keys are materialized) to list l. */
static rc_t list_push(ivf_list_t *li, int64_t id, const float *key, int hd, int with_keys)
{
    if (li->n == li->cap) {
        size_t cap = li->cap ? li->cap * 2 : 16;
        int64_t *ids = realloc(li->ids, cap * sizeof *ids);
        if (!ids) return RC_ERR_NOMEM;
        li->ids = ids;
        if (with_keys) {
            float *k = realloc(li->keys, cap * (size_t)hd * sizeof *k);
            if (!k) return RC_ERR_NOMEM;
            li->keys = k;
        }
        li->cap = cap;
    }
    if (with_keys) memcpy(li->keys + li->n * hd, key, (size_t)hd * sizeof *key);
    li->ids[li->n++] = id;
    return RC_OK;
}

/* The cosine of key r [hd] with the centroid whose inner product with it is ip. */
static float cosine_of(const float *r, int hd, float ip)
{
    double n2 = 0;
    for (int d = 0; d < hd; d++) n2 += (double)r[d] * r[d];
    return n2 > 0 ? (float)(ip / sqrt(n2)) : 1.0f; /* a zero key scores 0 everywhere */
}

/* For each of the m keys [m, hd]: best[i] its best centroid by inner product (ties: the
 * lower list) and cos[i] its cosine with it. Scored in blocks of ≤ 1024 keys, which bounds
 * the scratch to 1024 × nlist. */
static rc_t nearest_centroids(const float *keys, size_t m, const float *cent, int nlist, int hd,
                              int32_t *best, float *cos)
{
    enum { B = 1024 };
    float *sc = malloc((size_t)B * nlist * sizeof(float)); /* [B, nlist] */
    if (!sc) return RC_ERR_NOMEM;
    for (size_t b0 = 0; b0 < m; b0 += B) {
        const int nb = (int)(m - b0 < B ? m - b0 : B);
        dot_rows(sc, keys + b0 * hd, nb, cent, nlist, hd);
        for (int i = 0; i < nb; i++) {
            const float *r = sc + (size_t)i * nlist;
            int b = 0;
            for (int l = 1; l < nlist; l++)
                if (r[l] > r[b]) b = l;
            best[b0 + i] = b;
            cos[b0 + i] = cosine_of(keys + (b0 + i) * hd, hd, r[b]);
        }
    }
    free(sc);
    return RC_OK;
}

/* IVF: rows [r0, r0 + m) of head h, keys in buf [m, hd], into their lists. */
static rc_t ivf_add(memory_knn_t *x, knn_layer_t *L, int h, size_t r0, size_t m,
                    const float *buf)
{
    ivf_head_t *v = &L->ivf[h];
    const int hd = x->hd;
    if (r0 + m > v->cap_rows) {
        size_t cap = v->cap_rows ? v->cap_rows : 1024;
        while (cap < r0 + m) cap *= 2;
        int32_t *lo = realloc(v->list_of, cap * sizeof *lo);
        if (!lo) return RC_ERR_NOMEM;
        v->list_of = lo;
        v->cap_rows = cap;
    }
    /* Each row's list is written straight into list_of, then the badly represented ones are
     * moved to the exact list. */
    int32_t *best = v->list_of + r0;
    float *cos = malloc((m ? m : 1) * sizeof *cos);
    rc_t rc = cos ? nearest_centroids(buf, m, v->cent, L->nlist, hd, best, cos) : RC_ERR_NOMEM;
    for (size_t i = 0; i < m && !rc; i++) {
        if (cos[i] < v->thr) best[i] = L->nlist;
        rc = list_push(&v->lists[best[i]], (int64_t)(r0 + i), buf + i * hd, hd, L->keys_ready);
    }
    free(cos);
    return rc;
}

/* Adds store rows [L->rows, n) to every head's index. */
static rc_t add_rows(memory_knn_t *x, knn_layer_t *L, const memory_store_t *s, int layer,
                     size_t n)
{
    if (n <= L->rows) return RC_OK;
    size_t blk = n - L->rows < ADD_BLOCK ? n - L->rows : ADD_BLOCK;
    float *buf = malloc(blk * (size_t)x->hd * sizeof(float)); /* [blk, hd] */
    if (!buf) return RC_ERR_NOMEM;
    for (size_t r0 = L->rows; r0 < n; r0 += blk) {
        size_t m = n - r0 < blk ? n - r0 : blk;
        for (int h = 0; h < x->n_kv; h++) {
            gather_head(x, s, layer, h, r0, m, 1, buf);
            rc_t rc;
            if (L->ivf) {
                rc = ivf_add(x, L, h, r0, m, buf);
            } else {
                int e = faiss_Index_add(L->heads[h], (idx_t)m, buf);
                rc = e ? faiss_failed("adding keys", e) : RC_OK;
            }
            if (rc) {
                free(buf);
                /* Heads now disagree on their row count: drop them, the next sync rebuilds. */
                memory_knn_reset(x, layer);
                return rc;
            }
        }
    }
    free(buf);
    L->rows = n;
    return RC_OK;
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* v->thr: the OUTLIER_QUANTILE of the m training points' cosines with their best centroid. */
static rc_t outlier_threshold(const float *tr, size_t m, int nlist, int hd, ivf_head_t *v)
{
    int32_t *best = malloc(m * sizeof *best);
    float *cs = malloc(m * sizeof *cs);
    rc_t rc = best && cs ? nearest_centroids(tr, m, v->cent, nlist, hd, best, cs) : RC_ERR_NOMEM;
    if (!rc) {
        qsort(cs, m, sizeof *cs, cmp_float);
        v->thr = cs[(size_t)(OUTLIER_QUANTILE * (double)(m - 1))];
    }
    free(best);
    free(cs);
    return rc;
}

/* The centroids of head h, trained on rows [0, trained), into v (lists empty). */
static rc_t new_ivf(memory_knn_t *x, const memory_store_t *s, int layer, int h, size_t trained,
                    int nlist, ivf_head_t *v)
{
    /* The training set: an even stride over [0, trained), as many points as k-means uses. */
    size_t m = (size_t)nlist * KMEANS_MAX_POINTS_PER_CENTROID;
    if (m > trained) m = trained;
    const size_t stride = trained / m;
    float *tr = malloc(m * (size_t)x->hd * sizeof(float)); /* [m, hd] */
    if (!tr) return RC_ERR_NOMEM;
    gather_head(x, s, layer, h, 0, m, stride, tr);

    FaissClusteringParameters cp;
    faiss_ClusteringParameters_init(&cp);
    cp.niter = KMEANS_NITER;
    cp.spherical = 1;
    cp.seed = x->o.seed;
    cp.max_points_per_centroid = KMEANS_MAX_POINTS_PER_CENTROID;
    cp.min_points_per_centroid = 1; /* no warning spam for small test memories */
    FaissClustering *cl = NULL;
    FaissIndexFlatIP *assign = NULL;
    rc_t rc = RC_OK;
    int e;
    if ((e = faiss_Clustering_new_with_params(&cl, x->hd, nlist, &cp)) ||
        (e = faiss_IndexFlatIP_new_with(&assign, x->hd)) ||
        (e = faiss_Clustering_train(cl, (idx_t)m, tr, assign))) {
        rc = faiss_failed("training the coarse quantizer", e);
        goto out;
    }
    float *cent;
    size_t csz;
    faiss_Clustering_centroids(cl, &cent, &csz);
    if (csz != (size_t)nlist * x->hd) {
        log_warn("knn: k-means gave %zu centroid values, not %d x %d", csz, nlist, x->hd);
        rc = RC_ERR_INTERNAL;
        goto out;
    }
    v->cent = malloc(csz * sizeof(float));
    v->lists = calloc((size_t)nlist + 1, sizeof *v->lists);
    if (!v->cent || !v->lists) {
        rc = RC_ERR_NOMEM;
        goto out;
    }
    memcpy(v->cent, cent, csz * sizeof(float));
    rc = outlier_threshold(tr, m, nlist, x->hd, v);
out:
    faiss_Index_free(assign);
    if (cl) faiss_Clustering_free(cl);
    free(tr);
    return rc;
}

/* Rebuilds layer from the store's first n rows. */
static rc_t build_layer(memory_knn_t *x, const memory_store_t *s, int layer, size_t n)
{
    memory_knn_reset(x, layer);
    knn_layer_t *L = &x->layers[layer];
    const size_t trained = target_trained(x, n);
    const int nlist = trained ? nlist_for(x, trained) : 0;
    rc_t rc = RC_OK;
    if (trained) {
        if (!(L->ivf = calloc((size_t)x->n_kv, sizeof *L->ivf))) return RC_ERR_NOMEM;
        L->nlist = nlist;
        L->keys_ready = 1;
        for (int h = 0; h < x->n_kv && !rc; h++)
            rc = new_ivf(x, s, layer, h, trained, nlist, &L->ivf[h]);
    } else {
        if (!(L->heads = calloc((size_t)x->n_kv, sizeof *L->heads))) return RC_ERR_NOMEM;
        for (int h = 0; h < x->n_kv && !rc; h++) {
            int e = faiss_IndexFlatIP_new_with(&L->heads[h], x->hd);
            rc = e ? faiss_failed("creating a flat index", e) : RC_OK;
        }
    }
    if (rc) {
        memory_knn_reset(x, layer);
        return rc;
    }
    L->trained = trained;
    return add_rows(x, L, s, layer, n);
}

/* A loaded IVF layer's lists get their keys from the store (rows [0, L->rows)). */
static rc_t materialize_keys(memory_knn_t *x, knn_layer_t *L, const memory_store_t *s, int layer)
{
    const int hd = x->hd;
    for (int h = 0; h < x->n_kv; h++)
        for (int l = 0; l <= L->nlist; l++) {
            ivf_list_t *li = &L->ivf[h].lists[l];
            free(li->keys);
            li->keys = malloc((li->cap ? li->cap : 1) * (size_t)hd * sizeof(float));
            if (!li->keys) return RC_ERR_NOMEM;
            for (size_t j = 0; j < li->n; j++)
                gather_head(x, s, layer, h, (size_t)li->ids[j], 1, 1, li->keys + j * hd);
        }
    L->keys_ready = 1;
    return RC_OK;
}

rc_t memory_knn_sync(memory_knn_t *x, const memory_store_t *s, int layer)
{
    if (layer < 0 || layer >= x->n_layers || layer >= memory_store_layers(s)) return RC_ERR_INVALID;
    return memory_knn_sync_rows(x, s, layer, memory_store_rows(s, layer));
}

static rc_t sync_structure(memory_knn_t *x, const memory_store_t *s, int layer, size_t n);

rc_t memory_knn_sync_rows(memory_knn_t *x, const memory_store_t *s, int layer, size_t n)
{
    if (layer < 0 || layer >= x->n_layers || layer >= memory_store_layers(s) ||
        memory_store_row_dim(s) != x->n_kv * x->hd || n > memory_store_rows(s, layer))
        return RC_ERR_INVALID;
    knn_layer_t *L = &x->layers[layer];
    /* With nothing to change this only reads: concurrent searches after a sync are safe. */
    if (BUILT(L) && n == L->rows && (!L->ivf || L->keys_ready)) return RC_OK;
    rc_t rc = sync_structure(x, s, layer, n);
    if (!rc && L->ivf && !L->keys_ready && (rc = materialize_keys(x, L, s, layer)))
        memory_knn_reset(x, layer);
    return rc;
}

/* The rows of the layer's lists or flat indexes in line with the store's first n. */
static rc_t sync_structure(memory_knn_t *x, const memory_store_t *s, int layer, size_t n)
{
    knn_layer_t *L = &x->layers[layer];
    if (BUILT(L) && n == L->rows) return RC_OK;
    /* A new threshold (either way) or no index yet: train anew on the rows it names. */
    if (!BUILT(L) || target_trained(x, n) != L->trained) return build_layer(x, s, layer, n);
    if (n > L->rows) return add_rows(x, L, s, layer, n);

    if (L->ivf) {
        /* A rewind above the training rows: ids ascend in every list, so each list's rows
         * past n are its tail. */
        for (int h = 0; h < x->n_kv; h++)
            for (int l = 0; l <= L->nlist; l++) {
                ivf_list_t *li = &L->ivf[h].lists[l];
                while (li->n && (size_t)li->ids[li->n - 1] >= n) li->n--;
            }
        L->rows = n;
        return RC_OK;
    }
    /* A rewind of a flat layer: ids are row numbers, so the tail is one range. */
    FaissIDSelectorRange *sel = NULL;
    int e = faiss_IDSelectorRange_new(&sel, (idx_t)n, (idx_t)L->rows);
    for (int h = 0; !e && h < x->n_kv; h++) {
        size_t removed = 0;
        e = faiss_Index_remove_ids(L->heads[h], (const FaissIDSelector *)sel, &removed);
        if (!e && removed != L->rows - n) e = -1;
    }
    if (sel) faiss_IDSelectorRange_free(sel);
    if (e) {
        log_warn("knn: removing rows past %zu of memory layer %d failed; rebuilding", n, layer);
        return build_layer(x, s, layer, n);
    }
    L->rows = n;
    return RC_OK;
}

rc_t memory_knn_search(memory_knn_t *x, const memory_store_t *s, int layer, const float *q,
                       int n_q, int n_heads, int k, int64_t *idx)
{
    if (layer < 0 || layer >= x->n_layers || layer >= memory_store_layers(s)) return RC_ERR_INVALID;
    return memory_knn_search_rows(x, s, layer, memory_store_rows(s, layer), q, n_q, n_heads, k,
                                  idx, NULL);
}

/* scores[i, h, j] = q[i, h] . key(idx[i, h, j]) from the store (-INFINITY where idx is -1). */
static void exact_scores(const memory_knn_t *x, const memory_store_t *s, int layer,
                         const float *q, size_t nq, int n_heads, size_t kk, const int64_t *idx,
                         float *scores)
{
    const int group = n_heads / x->n_kv, hd = x->hd;
    float *key = malloc((size_t)hd * sizeof(float));
    for (size_t i = 0; i < nq; i++)
        for (int h = 0; h < n_heads; h++)
            for (size_t j = 0; j < kk; j++) {
                const size_t o = (i * n_heads + (size_t)h) * kk + j;
                if (idx[o] < 0 || !key) {
                    scores[o] = -INFINITY;
                    continue;
                }
                gather_head(x, s, layer, h / group, (size_t)idx[o], 1, 1, key);
                const float *qq = q + (i * n_heads + (size_t)h) * hd;
                float acc = 0.0f;
                for (int d = 0; d < hd; d++) acc += qq[d] * key[d];
                scores[o] = acc;
            }
    free(key);
}

/* The k best (score, row) of a query: a heap whose root is the worst kept. Order: a higher
 * score is better; equal scores, the lower row. */
static int worse(float sa, int64_t ia, float sb, int64_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

static void heap_push(float *hs, int64_t *hi, size_t *n, size_t k, float sc, int64_t id)
{
    size_t i;
    if (*n < k) {
        i = (*n)++;
        while (i > 0) { /* sift up: the worst goes to the root */
            size_t p = (i - 1) / 2;
            if (!worse(sc, id, hs[p], hi[p])) break;
            hs[i] = hs[p], hi[i] = hi[p];
            i = p;
        }
        hs[i] = sc, hi[i] = id;
        return;
    }
    if (!worse(hs[0], hi[0], sc, id)) return; /* not better than the worst kept */
    i = 0;
    for (;;) { /* sift down from the root */
        size_t c = 2 * i + 1;
        if (c >= k) break;
        if (c + 1 < k && worse(hs[c + 1], hi[c + 1], hs[c], hi[c])) c++;
        if (!worse(hs[c], hi[c], sc, id)) break;
        hs[i] = hs[c], hi[i] = hi[c];
        i = c;
    }
    hs[i] = sc, hi[i] = id;
}

/* Heap contents best first into idx / scores [k], padded with -1 / -INFINITY. */
static void heap_out(float *hs, int64_t *hi, size_t n, size_t k, int64_t *idx, float *dist)
{
    /* Pop the worst to the back: the heap sort of the kept entries. */
    for (size_t m = n; m > 1; m--) {
        float ts = hs[0];
        int64_t ti = hi[0];
        hs[0] = hs[m - 1], hi[0] = hi[m - 1];
        hs[m - 1] = ts, hi[m - 1] = ti;
        size_t i = 0;
        for (;;) {
            size_t c = 2 * i + 1;
            if (c >= m - 1) break;
            if (c + 1 < m - 1 && worse(hs[c + 1], hi[c + 1], hs[c], hi[c])) c++;
            if (!worse(hs[c], hi[c], hs[i], hi[i])) break;
            float s2 = hs[i];
            int64_t i2 = hi[i];
            hs[i] = hs[c], hi[i] = hi[c];
            hs[c] = s2, hi[c] = i2;
            i = c;
        }
    }
    /* Now ascending by worseness from the back: index 0 is the best. */
    for (size_t j = 0; j < k; j++) {
        idx[j] = j < n ? hi[j] : -1;
        dist[j] = j < n ? hs[j] : -INFINITY;
    }
}

/* The IVF search's scratch, kept per thread between calls: fresh buffers of this size are
 * mmap'ed by malloc, and faulting their pages in on every window cost more time (in the
 * kernel) than the search itself. Freed when the thread exits. */
enum { SCR_CS, SCR_PROBE, SCR_PBEST, SCR_CNT, SCR_BYL, SCR_HS, SCR_HI, SCR_HN, SCR_QL, SCR_SL, SCR_N };
typedef struct scratch {
    void *p[SCR_N];
    size_t cap[SCR_N];
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *arg)
{
    scratch_t *sc = arg;
    for (int i = 0; i < SCR_N; i++) free(sc->p[i]);
    free(sc);
}

static void scratch_key_init(void) { (void)pthread_key_create(&scratch_key, scratch_free); }

/* This thread's buffer slot of at least n bytes (contents undefined), or NULL. */
static void *scratch_get(int slot, size_t n)
{
    pthread_once(&scratch_once, scratch_key_init);
    scratch_t *sc = pthread_getspecific(scratch_key);
    if (!sc) {
        if (!(sc = calloc(1, sizeof *sc))) return NULL;
        if (pthread_setspecific(scratch_key, sc)) {
            free(sc);
            return NULL;
        }
    }
    if (n == 0) n = 1;
    if (sc->cap[slot] < n) {
        free(sc->p[slot]);
        sc->cap[slot] = 0;
        if (!(sc->p[slot] = malloc(n))) return NULL;
        sc->cap[slot] = n;
    }
    return sc->p[slot];
}

/* IVF search of head kh: qb [nb, hd] queries; out lab/dist [nb, kk]. Each query scans its
 * nprobe best lists and the exact list (list nlist). */
static rc_t ivf_search(const memory_knn_t *x, const knn_layer_t *L, int kh, const float *qb,
                       size_t nb, size_t kk, int64_t *lab, float *dist)
{
    const ivf_head_t *v = &L->ivf[kh];
    const int hd = x->hd, nl = L->nlist, nla = nl + 1;
    const int np = x->o.nprobe < nl ? x->o.nprobe : nl, npa = np + 1;
    float *cs = scratch_get(SCR_CS, nb * (size_t)nl * sizeof(float)); /* [nb, nlist] */
    int32_t *probe = scratch_get(SCR_PROBE, nb * (size_t)npa * sizeof(int32_t)); /* [nb, npa] */
    float *pbest = scratch_get(SCR_PBEST, (size_t)np * sizeof(float));           /* [np] */
    size_t *cnt = scratch_get(SCR_CNT, ((size_t)nla + 1) * sizeof(size_t)); /* counts, offsets */
    int32_t *byl = scratch_get(SCR_BYL, nb * (size_t)npa * sizeof(int32_t)); /* queries by list */
    float *hs = scratch_get(SCR_HS, nb * kk * sizeof(float));     /* [nb, kk] heaps */
    int64_t *hi = scratch_get(SCR_HI, nb * kk * sizeof(int64_t)); /* [nb, kk] */
    size_t *hn = scratch_get(SCR_HN, nb * sizeof(size_t));        /* [nb] */
    size_t max_q = 0, max_n = 0;
    float *ql = NULL, *sl = NULL;
    if (!cs || !probe || !pbest || !cnt || !byl || !hs || !hi || !hn) return RC_ERR_NOMEM;
    memset(cnt, 0, ((size_t)nla + 1) * sizeof(size_t));
    memset(hn, 0, nb * sizeof(size_t));
    /* The nprobe best lists of each query (ties: the lower list), as IVF's quantizer. */
    dot_rows(cs, qb, (int)nb, v->cent, nl, hd);
    for (size_t i = 0; i < nb; i++) {
        const float *r = cs + i * nl;
        int32_t *p = probe + i * npa;
        int m = 0;
        for (int l = 0; l < nl; l++) {
            if (m == np && !(r[l] > pbest[m - 1])) continue;
            int j = m < np ? m++ : np - 1; /* insertion into the sorted best */
            while (j > 0 && r[l] > pbest[j - 1]) {
                pbest[j] = pbest[j - 1], p[j] = p[j - 1];
                j--;
            }
            pbest[j] = r[l], p[j] = l;
        }
        for (int j = m; j < np; j++) p[j] = -1;
        p[np] = nl; /* the exact list */
        for (int j = 0; j < npa; j++)
            if (p[j] >= 0) cnt[p[j] + 1]++;
    }
    for (int l = 0; l < nla; l++) {
        if (cnt[l + 1] > max_q) max_q = cnt[l + 1];
        if (v->lists[l].n > max_n) max_n = v->lists[l].n;
        cnt[l + 1] += cnt[l];
    }
    if (max_n > SEARCH_ROW_BLOCK) max_n = SEARCH_ROW_BLOCK; /* lists are scored in blocks */
    /* Queries into their lists' slots; cnt[l] walks to list l's end, then back below. */
    for (size_t i = 0; i < nb; i++)
        for (int j = 0; j < npa; j++)
            if (probe[i * npa + j] >= 0) byl[cnt[probe[i * npa + j]]++] = (int32_t)i;
    for (int l = nla; l > 0; l--) cnt[l] = cnt[l - 1];
    cnt[0] = 0;
    ql = scratch_get(SCR_QL, (max_q ? max_q : 1) * (size_t)hd * sizeof(float)); /* [max_q, hd] */
    sl = scratch_get(SCR_SL, (max_q ? max_q : 1) * (max_n ? max_n : 1) * sizeof(float));
    if (!ql || !sl) return RC_ERR_NOMEM; /* sl: [max_q, max_n] */
    /* Each list once: the queries probing it against all its keys in one product. */
    for (int l = 0; l < nla; l++) {
        const ivf_list_t *li = &v->lists[l];
        const size_t q0 = cnt[l], nq = cnt[l + 1] - q0;
        if (!nq || !li->n) continue;
        for (size_t a = 0; a < nq; a++)
            memcpy(ql + a * hd, qb + (size_t)byl[q0 + a] * hd, (size_t)hd * sizeof(float));
        for (size_t b0 = 0; b0 < li->n; b0 += SEARCH_ROW_BLOCK) {
            const size_t nr = li->n - b0 < SEARCH_ROW_BLOCK ? li->n - b0 : SEARCH_ROW_BLOCK;
            const int64_t *ids = li->ids + b0;
            dot_rows(sl, ql, (int)nq, li->keys + b0 * hd, (int)nr, hd);
            for (size_t a = 0; a < nq; a++) {
                const size_t i = (size_t)byl[q0 + a];
                const float *r = sl + a * nr;
                float *qs = hs + i * kk;
                int64_t *qi = hi + i * kk;
                size_t j = 0;
                while (j < nr && hn[i] < kk) heap_push(qs, qi, &hn[i], kk, r[j], ids[j]), j++;
                /* Full: most scores are below the worst kept, a test without a call. */
                for (; j < nr; j++)
                    if (r[j] >= qs[0]) heap_push(qs, qi, &hn[i], kk, r[j], ids[j]);
            }
        }
    }
    for (size_t i = 0; i < nb; i++)
        heap_out(hs + i * kk, hi + i * kk, hn[i], kk, lab + i * kk, dist + i * kk);
    return RC_OK;
}

rc_t memory_knn_search_rows(memory_knn_t *x, const memory_store_t *s, int layer, size_t n_rows,
                            const float *q, int n_q, int n_heads, int k, int64_t *idx,
                            float *scores)
{
    if (k < 1 || n_q < 0 || n_heads < x->n_kv || n_heads % x->n_kv) return RC_ERR_INVALID;
    rc_t rc = memory_knn_sync_rows(x, s, layer, n_rows);
    if (rc) return rc;
    const knn_layer_t *L = &x->layers[layer];
    const size_t rows = L->rows, nq = (size_t)n_q, kk = (size_t)k;
    if (kk >= rows) {
        /* Every row: the exact memory, with no search to round anything differently. */
        for (size_t i = 0; i < nq * n_heads; i++)
            for (size_t j = 0; j < kk; j++) idx[i * kk + j] = j < rows ? (int64_t)j : -1;
        if (scores) exact_scores(x, s, layer, q, nq, n_heads, kk, idx, scores);
        return RC_OK;
    }
    const int group = n_heads / x->n_kv, hd = x->hd;
    const size_t nb = nq * group;
    float *qb = malloc((nb ? nb : 1) * hd * sizeof(float));   /* [n_q, group, hd] */
    float *dist = malloc((nb ? nb : 1) * kk * sizeof(float)); /* [n_q, group, k] */
    idx_t *lab = malloc((nb ? nb : 1) * kk * sizeof(idx_t));  /* [n_q, group, k] */
    if (!qb || !dist || !lab) {
        rc = RC_ERR_NOMEM;
        goto out;
    }
    for (int kh = 0; kh < x->n_kv && nb; kh++) {
        for (size_t i = 0; i < nq; i++)
            memcpy(qb + i * group * hd, q + (i * n_heads + (size_t)kh * group) * hd,
                   (size_t)group * hd * sizeof(float));
        if (L->ivf) {
            rc = ivf_search(x, L, kh, qb, nb, kk, lab, dist);
            if (rc) goto out;
        } else {
            int e = faiss_Index_search(L->heads[kh], (idx_t)nb, qb, (idx_t)kk, dist, lab);
            if (e) {
                rc = faiss_failed("searching", e);
                goto out;
            }
        }
        for (size_t i = 0; i < nq; i++)
            for (int g = 0; g < group; g++)
                for (size_t j = 0; j < kk; j++) {
                    const size_t o = ((i * n_heads) + (size_t)kh * group + g) * kk + j;
                    const idx_t r = lab[(i * group + g) * kk + j];
                    idx[o] = r;
                    if (scores) scores[o] = r < 0 ? -INFINITY : dist[(i * group + g) * kk + j];
                }
    }
out:
    free(qb);
    free(dist);
    free(lab);
    return rc;
}

size_t memory_knn_rows(const memory_knn_t *x, int layer) { return x->layers[layer].rows; }
int memory_knn_is_ivf(const memory_knn_t *x, int layer) { return x->layers[layer].trained > 0; }
int memory_knn_nlist(const memory_knn_t *x, int layer) { return x->layers[layer].nlist; }

size_t memory_knn_bytes(const memory_knn_t *x)
{
    if (!x) return 0;
    const size_t hd = (size_t)x->hd;
    size_t total = 0;
    for (int l = 0; l < x->n_layers; l++) {
        const knn_layer_t *L = &x->layers[l];
        for (int h = 0; h < x->n_kv; h++) {
            if (L->heads && L->heads[h]) /* IndexFlatIP keeps every vector in fp32 */
                total += (size_t)faiss_Index_ntotal(L->heads[h]) * hd * sizeof(float);
            if (!L->ivf) continue;
            const ivf_head_t *H = &L->ivf[h];
            total += (size_t)L->nlist * hd * sizeof(float) + H->cap_rows * sizeof(int32_t);
            for (int i = 0; H->lists && i <= L->nlist; i++) {
                const ivf_list_t *li = &H->lists[i];
                total += li->cap * sizeof(int64_t);
                if (li->keys) total += li->cap * hd * sizeof(float);
            }
        }
    }
    return total;
}

/* ---- persistence -----------------------------------------------------------------------
 * A header, then per head either Faiss's format of the flat index, or (IVF) the centroids
 * [nlist, hd] fp32, the outlier threshold (fp32) and each row's list [rows] int32. The
 * lists' keys are not saved: the store has them, and the first sync after a load copies them
 * in. check is FNV-1a over everything after the header, so a damaged copy is refused rather
 * than searched. */

typedef struct knn_header {
    uint32_t magic, version;
    uint32_t n_kv, hd;
    uint64_t rows, trained;
    int32_t nlist, seed;
    uint64_t check;
} knn_header_t;

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

rc_t memory_knn_save(const memory_knn_t *x, int layer, void **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    if (layer < 0 || layer >= x->n_layers) return RC_ERR_INVALID;
    const knn_layer_t *L = &x->layers[layer];
    if (!BUILT(L)) return RC_ERR_INVALID;
    char *mem = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&mem, &sz);
    if (!f) return RC_ERR_NOMEM;
    knn_header_t hdr = {KNN_MAGIC, KNN_VERSION, (uint32_t)x->n_kv, (uint32_t)x->hd,
                        L->rows, L->trained, L->nlist, x->o.seed, 0};
    int e = fwrite(&hdr, sizeof hdr, 1, f) == 1 ? 0 : -1, faiss_e = 0;
    for (int h = 0; !e && h < x->n_kv; h++) {
        if (L->ivf) {
            const ivf_head_t *v = &L->ivf[h];
            if (fwrite(v->cent, sizeof(float) * x->hd, (size_t)L->nlist, f) != (size_t)L->nlist ||
                fwrite(&v->thr, sizeof v->thr, 1, f) != 1 ||
                (L->rows && fwrite(v->list_of, sizeof(int32_t), L->rows, f) != L->rows))
                e = -1;
        } else {
            e = faiss_e = faiss_write_index(L->heads[h], f);
        }
    }
    if (fclose(f) || e) {
        free(mem);
        return faiss_e ? faiss_failed("writing an index", faiss_e) : RC_ERR_NOMEM;
    }
    hdr.check = fnv1a(mem + sizeof hdr, sz - sizeof hdr);
    memcpy(mem, &hdr, sizeof hdr);
    *buf = mem;
    *len = sz;
    return RC_OK;
}

rc_t memory_knn_load(memory_knn_t *x, int layer, const void *buf, size_t len, size_t rows)
{
    knn_header_t hdr;
    if (layer < 0 || layer >= x->n_layers) return RC_ERR_INVALID;
    if (len < sizeof hdr) return RC_ERR_FORMAT;
    memcpy(&hdr, buf, sizeof hdr);
    const size_t trained = target_trained(x, rows);
    const int nlist = trained ? nlist_for(x, trained) : 0;
    if (hdr.magic != KNN_MAGIC || hdr.version != KNN_VERSION || hdr.n_kv != (uint32_t)x->n_kv ||
        hdr.hd != (uint32_t)x->hd || hdr.rows != rows || hdr.trained != trained ||
        hdr.nlist != nlist || hdr.seed != x->o.seed)
        return RC_ERR_FORMAT; /* another shape, other rows or other options */
    const char *body = (const char *)buf + sizeof hdr;
    const size_t blen = len - sizeof hdr;
    if (fnv1a(body, blen) != hdr.check) return RC_ERR_FORMAT;
    knn_layer_t N = {.rows = rows, .trained = trained, .nlist = nlist};
    rc_t rc = RC_OK;
    if (trained) {
        const size_t cb = (size_t)nlist * x->hd * sizeof(float); /* centroids, then thr */
        const size_t per = cb + sizeof(float) + rows * sizeof(int32_t);
        if (blen != per * x->n_kv) return RC_ERR_FORMAT;
        if (!(N.ivf = calloc((size_t)x->n_kv, sizeof *N.ivf))) return RC_ERR_NOMEM;
        for (int h = 0; h < x->n_kv && !rc; h++) {
            ivf_head_t *v = &N.ivf[h];
            const char *p = body + per * h;
            v->cent = malloc((size_t)nlist * x->hd * sizeof(float));
            v->list_of = malloc((rows ? rows : 1) * sizeof(int32_t));
            v->lists = calloc((size_t)nlist + 1, sizeof *v->lists);
            v->cap_rows = rows ? rows : 1;
            if (!v->cent || !v->list_of || !v->lists) {
                rc = RC_ERR_NOMEM;
                break;
            }
            memcpy(v->cent, p, cb);
            memcpy(&v->thr, p + cb, sizeof v->thr);
            memcpy(v->list_of, p + cb + sizeof(float), rows * sizeof(int32_t));
            for (size_t r = 0; r < rows && !rc; r++) {
                if (v->list_of[r] < 0 || v->list_of[r] > nlist)
                    rc = RC_ERR_FORMAT;
                else
                    rc = list_push(&v->lists[v->list_of[r]], (int64_t)r, NULL, x->hd, 0);
            }
        }
        if (rc) {
            ivf_free(N.ivf, x->n_kv, nlist);
            return rc;
        }
    } else {
        if (!(N.heads = calloc((size_t)x->n_kv, sizeof *N.heads))) return RC_ERR_NOMEM;
        FILE *f = fmemopen((void *)body, blen, "rb");
        rc = f ? RC_OK : RC_ERR_NOMEM;
        for (int h = 0; !rc && h < x->n_kv; h++)
            if (faiss_read_index(f, 0, &N.heads[h]) || faiss_Index_d(N.heads[h]) != x->hd ||
                (size_t)faiss_Index_ntotal(N.heads[h]) != rows)
                rc = RC_ERR_FORMAT;
        if (f) fclose(f);
        if (rc) {
            for (int h = 0; h < x->n_kv; h++) faiss_Index_free(N.heads[h]);
            free(N.heads);
            return rc;
        }
    }
    memory_knn_reset(x, layer);
    x->layers[layer] = N; /* IVF keys come from the store at the next sync */
    return RC_OK;
}
