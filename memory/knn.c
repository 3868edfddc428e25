/* knn.c — Faiss indexes over memory keys, one per (memory layer, kv head); knn.h says what
 * the index is as a function of the store's rows, which is what makes it rebuildable. */
#include "memory/knn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVFFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_io_c.h>

#include "common/log.h"

/* k-means for the coarse quantizer: Faiss's IVF default for inner product is spherical
 * k-means; 10 iterations on at most 64 points per centroid keep training at 1M keys to
 * seconds while the lists stay balanced enough (bench/README.md has the recall it gives). */
#define KMEANS_NITER 10
#define KMEANS_MAX_POINTS_PER_CENTROID 64
/* Rows widened per batch when adding: bounds scratch to ADD_BLOCK × head_dim floats. */
#define ADD_BLOCK 65536

#define KNN_MAGIC 0x4e4e4b52u /* "RKNN" */
#define KNN_VERSION 1u

typedef struct knn_layer {
    FaissIndex **heads; /* [n_kv_heads], NULL until built */
    size_t rows;        /* rows indexed (ids 0..rows-1) */
    size_t trained;     /* IVF: rows the quantizer was trained on; 0: flat */
    int nlist;          /* IVF lists; 0: flat */
} knn_layer_t;

struct memory_knn {
    int n_layers, n_kv, hd;
    memory_knn_opts_t o; /* defaults filled in */
    knn_layer_t *layers; /* [n_layers] */
};

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

void memory_knn_reset(memory_knn_t *x, int layer)
{
    knn_layer_t *L = &x->layers[layer];
    if (L->heads)
        for (int h = 0; h < x->n_kv; h++) faiss_Index_free(L->heads[h]);
    free(L->heads);
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

/* dst [n, hd] = head h's slice of store rows r0..r0+n of layer (widened to fp32). */
static void gather_head(const memory_knn_t *x, const memory_store_t *s, int layer, int h,
                        size_t r0, size_t n, size_t stride, float *dst)
{
    const dtype_t t = memory_store_dtype(s);
    const size_t es = dtype_size(t), row = (size_t)memory_store_row_dim(s) * es;
    const char *k = memory_store_keys(s, layer);
    for (size_t i = 0; i < n; i++)
        dtype_to_f32(dst + i * x->hd, k + (r0 + i * stride) * row + (size_t)h * x->hd * es, t,
                     (size_t)x->hd);
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
            int e = faiss_Index_add(L->heads[h], (idx_t)m, buf);
            if (e) {
                free(buf);
                /* Heads now disagree on their row count: drop them, the next sync rebuilds. */
                memory_knn_reset(x, layer);
                return faiss_failed("adding keys", e);
            }
        }
    }
    free(buf);
    L->rows = n;
    return RC_OK;
}

/* A trained, empty IVF-Flat index for head h on rows [0, trained). */
static rc_t new_ivf(memory_knn_t *x, const memory_store_t *s, int layer, int h, size_t trained,
                    int nlist, FaissIndex **out)
{
    *out = NULL;
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
    FaissIndexFlatIP *assign = NULL, *quant = NULL;
    FaissIndexIVFFlat *ivf = NULL;
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
    if ((e = faiss_IndexFlatIP_new_with(&quant, x->hd)) ||
        (e = faiss_Index_add(quant, (idx_t)(csz / x->hd), cent)) ||
        (e = faiss_IndexIVFFlat_new_with_metric(&ivf, quant, (size_t)x->hd, (size_t)nlist,
                                                METRIC_INNER_PRODUCT))) {
        rc = faiss_failed("creating an IVF-Flat index", e);
        goto out;
    }
    faiss_IndexIVF_set_own_fields(ivf, 1);
    quant = NULL;
    faiss_IndexIVF_set_nprobe(ivf, (size_t)(x->o.nprobe < nlist ? x->o.nprobe : nlist));
    if (!faiss_Index_is_trained(ivf)) {
        rc = RC_ERR_INTERNAL;
        log_warn("knn: the IVF index is not trained after adding %d centroids", nlist);
        goto out;
    }
    *out = ivf;
    ivf = NULL;
out:
    faiss_Index_free(ivf);
    faiss_Index_free(quant);
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
    if (!(L->heads = calloc((size_t)x->n_kv, sizeof *L->heads))) return RC_ERR_NOMEM;
    const size_t trained = target_trained(x, n);
    const int nlist = trained ? nlist_for(x, trained) : 0;
    for (int h = 0; h < x->n_kv; h++) {
        rc_t rc;
        if (trained) {
            rc = new_ivf(x, s, layer, h, trained, nlist, &L->heads[h]);
        } else {
            int e = faiss_IndexFlatIP_new_with(&L->heads[h], x->hd);
            rc = e ? faiss_failed("creating a flat index", e) : RC_OK;
        }
        if (rc) {
            memory_knn_reset(x, layer);
            return rc;
        }
    }
    L->trained = trained;
    L->nlist = nlist;
    return add_rows(x, L, s, layer, n);
}

rc_t memory_knn_sync(memory_knn_t *x, const memory_store_t *s, int layer)
{
    if (layer < 0 || layer >= x->n_layers || layer >= memory_store_layers(s) ||
        memory_store_row_dim(s) != x->n_kv * x->hd)
        return RC_ERR_INVALID;
    knn_layer_t *L = &x->layers[layer];
    const size_t n = memory_store_rows(s, layer);
    if (L->heads && n == L->rows) return RC_OK;
    /* A new threshold (either way) or no index yet: train anew on the rows it names. */
    if (!L->heads || target_trained(x, n) != L->trained) return build_layer(x, s, layer, n);
    if (n > L->rows) return add_rows(x, L, s, layer, n);

    /* A rewind above the training rows: ids are row numbers, so the tail is one range. */
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
    if (k < 1 || n_q < 0 || n_heads < x->n_kv || n_heads % x->n_kv) return RC_ERR_INVALID;
    rc_t rc = memory_knn_sync(x, s, layer);
    if (rc) return rc;
    const knn_layer_t *L = &x->layers[layer];
    const size_t rows = L->rows, nq = (size_t)n_q, kk = (size_t)k;
    if (kk >= rows) {
        /* Every row: the exact memory, with no search to round anything differently. */
        for (size_t i = 0; i < nq * n_heads; i++)
            for (size_t j = 0; j < kk; j++) idx[i * kk + j] = j < rows ? (int64_t)j : -1;
        return RC_OK;
    }
    const int group = n_heads / x->n_kv, hd = x->hd;
    const size_t nb = nq * group;
    float *qb = malloc(nb * hd * sizeof(float)); /* [n_q, group, hd] */
    float *dist = malloc(nb * kk * sizeof(float)); /* [n_q, group, k] */
    idx_t *lab = malloc(nb * kk * sizeof(idx_t)); /* [n_q, group, k] */
    if (!qb || !dist || !lab) {
        rc = RC_ERR_NOMEM;
        goto out;
    }
    for (int kh = 0; kh < x->n_kv; kh++) {
        for (size_t i = 0; i < nq; i++)
            memcpy(qb + i * group * hd, q + (i * n_heads + (size_t)kh * group) * hd,
                   (size_t)group * hd * sizeof(float));
        int e = faiss_Index_search(L->heads[kh], (idx_t)nb, qb, (idx_t)kk, dist, lab);
        if (e) {
            rc = faiss_failed("searching", e);
            goto out;
        }
        for (size_t i = 0; i < nq; i++)
            for (int g = 0; g < group; g++)
                for (size_t j = 0; j < kk; j++)
                    idx[((i * n_heads) + (size_t)kh * group + g) * kk + j] =
                        lab[(i * group + g) * kk + j];
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

/* ---- persistence ----------------------------------------------------------------------- */

typedef struct knn_header {
    uint32_t magic, version;
    uint32_t n_kv, hd;
    uint64_t rows, trained;
    int32_t nlist, seed;
} knn_header_t;

rc_t memory_knn_save(const memory_knn_t *x, int layer, void **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    const knn_layer_t *L = &x->layers[layer];
    if (!L->heads) return RC_ERR_INVALID;
    char *mem = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&mem, &sz);
    if (!f) return RC_ERR_NOMEM;
    knn_header_t hdr = {KNN_MAGIC, KNN_VERSION, (uint32_t)x->n_kv, (uint32_t)x->hd,
                        L->rows, L->trained, L->nlist, x->o.seed};
    int e = fwrite(&hdr, sizeof hdr, 1, f) == 1 ? 0 : -1;
    for (int h = 0; !e && h < x->n_kv; h++) e = faiss_write_index(L->heads[h], f);
    if (fclose(f) || e) {
        free(mem);
        return e ? faiss_failed("writing an index", e) : RC_ERR_NOMEM;
    }
    *buf = mem;
    *len = sz;
    return RC_OK;
}

rc_t memory_knn_load(memory_knn_t *x, int layer, const void *buf, size_t len, size_t rows)
{
    knn_header_t hdr;
    if (len < sizeof hdr) return RC_ERR_FORMAT;
    memcpy(&hdr, buf, sizeof hdr);
    const size_t trained = target_trained(x, rows);
    if (hdr.magic != KNN_MAGIC || hdr.version != KNN_VERSION || hdr.n_kv != (uint32_t)x->n_kv ||
        hdr.hd != (uint32_t)x->hd || hdr.rows != rows || hdr.trained != trained ||
        hdr.nlist != (trained ? nlist_for(x, trained) : 0) || hdr.seed != x->o.seed)
        return RC_ERR_FORMAT; /* another shape, other rows or other options */
    FaissIndex **heads = calloc((size_t)x->n_kv, sizeof *heads);
    if (!heads) return RC_ERR_NOMEM;
    FILE *f = fmemopen((void *)((const char *)buf + sizeof hdr), len - sizeof hdr, "rb");
    rc_t rc = f ? RC_OK : RC_ERR_NOMEM;
    for (int h = 0; !rc && h < x->n_kv; h++) {
        if (faiss_read_index(f, 0, &heads[h]) || faiss_Index_d(heads[h]) != x->hd ||
            (size_t)faiss_Index_ntotal(heads[h]) != rows ||
            (trained != 0) != (faiss_IndexIVF_cast(heads[h]) != NULL))
            rc = RC_ERR_FORMAT;
        else if (trained)
            faiss_IndexIVF_set_nprobe(faiss_IndexIVF_cast(heads[h]),
                                      (size_t)(x->o.nprobe < hdr.nlist ? x->o.nprobe : hdr.nlist));
    }
    if (f) fclose(f);
    if (rc) {
        for (int h = 0; h < x->n_kv; h++) faiss_Index_free(heads[h]);
        free(heads);
        return rc;
    }
    memory_knn_reset(x, layer);
    knn_layer_t *L = &x->layers[layer];
    L->heads = heads;
    L->rows = rows;
    L->trained = trained;
    L->nlist = hdr.nlist;
    return RC_OK;
}
