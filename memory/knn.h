/* knn.h — the kNN tier of a session's FoT memory: per memory layer and kv head, a Faiss
 * index over the memory keys, searched by inner product (REFERENCE.md, "kNN memory").
 *
 * The index mirrors a memory_store (store.h): row r of the store is id r of every head's
 * index. It is a function of the store's rows alone, so it can always be rebuilt from them
 * (which is how a restarted daemon gets it back):
 *   - below ivf_min_rows rows a head's index is exact (IndexFlatIP, the "hot" tier);
 *   - from T0 = ivf_min_rows rows it is IVF-Flat whose coarse quantizer is trained by
 *     spherical k-means (fixed seed) on rows [0, T) only, where T is the largest of
 *     T0, T0·g, T0·g², … (g = retrain_growth) that is ≤ the row count, with
 *     nlist = opts.nlist or ≈ 4·sqrt(T). Rows are added in id order. A row whose cosine
 *     with its best centroid is below the 1 % quantile of the training rows' (a row unlike
 *     the training prefix: a pass key in filler, a new topic late in a session) goes to an
 *     extra exact list that every query scans as well as its nprobe best lists; the
 *     quantizer would otherwise put it in a list that queries about it never probe. A
 *     session whose content drifts far from its prefix pays for it with a longer exact
 *     list (search time) until the next retraining, never with lost rows.
 * So however the rows arrive (window by window, or all at once on load), the same rows give
 * the same index and the same search results.
 *
 * Search results are plain row indices [n_q, n_heads, k] (−1 where fewer than k were found),
 * which is all cpu_attention_knn (kernels/cpu.h) needs; a GPU exact top-k can produce the
 * same lists. With k ≥ rows the list is every row, so knn attention equals exact.
 *
 * Not thread-safe: one stream uses it at a time. */
#ifndef RECALL_MEMORY_KNN_H
#define RECALL_MEMORY_KNN_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "memory/store.h"

typedef struct memory_knn memory_knn_t;

typedef struct memory_knn_opts {
    int nlist;           /* IVF lists; 0: about 4 · sqrt(training rows) */
    int nprobe;          /* lists probed per query; 0: 32 (capped at nlist) */
    size_t ivf_min_rows; /* rows from which a head's index is IVF-Flat; 0: 32768 */
    int retrain_growth;  /* retrain the quantizer when rows reach this multiple; 0: 4 */
    int seed;            /* k-means seed; 0: 1234 */
} memory_knn_opts_t;

#define MEMORY_KNN_DEFAULT_NPROBE 32
#define MEMORY_KNN_DEFAULT_IVF_MIN_ROWS 32768
#define MEMORY_KNN_DEFAULT_GROWTH 4
#define MEMORY_KNN_DEFAULT_SEED 1234

/* n_layers memory layers of n_kv_heads heads of head_dim; o may be NULL (defaults). */
rc_t memory_knn_create(int n_layers, int n_kv_heads, int head_dim, const memory_knn_opts_t *o,
                       memory_knn_t **out);
void memory_knn_destroy(memory_knn_t **x);

/* Brings layer's indexes in line with the store: rows past those indexed are added
 * (retraining when a threshold is crossed); if the store has fewer rows than indexed (a
 * rewind), the tail is removed, or the layer rebuilt when the rewind went below its
 * training rows. RC_ERR_INVALID if the store's shape does not match; RC_ERR_NOMEM;
 * RC_ERR_INTERNAL when Faiss fails (logged with its message). */
rc_t memory_knn_sync(memory_knn_t *x, const memory_store_t *s, int layer);

/* Top-k memory rows by inner product for each query and head, after syncing layer with s:
 *   q   [n_q, n_heads, head_dim] fp32, head h searching kv head h / (n_heads / n_kv_heads);
 *   idx [n_q, n_heads, k] row indices, best first; −1 pads where fewer were found.
 * k ≥ rows: every row in order (exact attention); no search. */
rc_t memory_knn_search(memory_knn_t *x, const memory_store_t *s, int layer, const float *q,
                       int n_q, int n_heads, int k, int64_t *idx);

/* The same over the store's first n_rows rows only (a GPU stream's spilled tier: the rows
 * past it live on the device). RC_ERR_INVALID when n_rows exceeds the store. scores
 * (optional, [n_q, n_heads, k]) receives each listed row's inner product q . key as Faiss
 * computed it (fp32; -INFINITY where idx is -1), so lists from two tiers can be merged. */
rc_t memory_knn_sync_rows(memory_knn_t *x, const memory_store_t *s, int layer, size_t n_rows);
rc_t memory_knn_search_rows(memory_knn_t *x, const memory_store_t *s, int layer, size_t n_rows,
                            const float *q, int n_q, int n_heads, int k, int64_t *idx,
                            float *scores);

/* 1 when x indexes n_layers memory layers of n_kv_heads heads of head_dim (what a stream
 * handed x checks before using it), else 0. */
int memory_knn_fits(const memory_knn_t *x, int n_layers, int n_kv_heads, int head_dim);

/* Rows indexed in layer; 1 when the layer's heads are IVF-Flat (0 flat); its nlist (0 flat). */
size_t memory_knn_rows(const memory_knn_t *x, int layer);
int memory_knn_is_ivf(const memory_knn_t *x, int layer);
int memory_knn_nlist(const memory_knn_t *x, int layer);
/* Host bytes the indexes hold now, all layers and heads: a flat head's fp32 copy of the
 * keys; an IVF head's centroids, row-to-list map and lists (ids, and the keys in fp32 once
 * materialized). Allocated capacity, not just what is in use. */
size_t memory_knn_bytes(const memory_knn_t *x);

/* Serializes layer's indexes (all heads; a small header then Faiss's own format) into a
 * malloc'ed buffer the caller frees. RC_ERR_INVALID for a layer out of range or not built
 * yet (no rows indexed). */
rc_t memory_knn_save(const memory_knn_t *x, int layer, void **buf, size_t *len);
/* Replaces layer's indexes by a saved copy. RC_ERR_FORMAT (layer unchanged) if the buffer
 * is damaged or does not describe `rows` rows of this shape and options (the caller then
 * rebuilds with memory_knn_sync); RC_ERR_INVALID for a layer out of range. */
rc_t memory_knn_load(memory_knn_t *x, int layer, const void *buf, size_t len, size_t rows);

/* Drops layer's indexes (the next sync rebuilds them from the store). */
void memory_knn_reset(memory_knn_t *x, int layer);

#endif
