/* store.c — growable per-layer arrays of key and value rows (see store.h). */
#include "memory/store.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL, which is harmless */
#endif

/* Row arrays live in their own anonymous mappings, grown with mremap (the kernel moves page
 * tables, nothing is copied) and populated ahead of use with huge pages: a session's memory
 * grows by gigabytes, and first-touch page faults on 4 KiB pages ran at 1-2 GB/s where
 * populated huge pages run at ~10 GB/s (measured on the dev machine; the GPU host's ingest
 * spent most of its host time there). Both madvise calls are hints; failures are ignored. */
#define REGION_ALIGN ((size_t)2 << 20)

static size_t region_round(size_t bytes)
{
    return (bytes + REGION_ALIGN - 1) & ~(REGION_ALIGN - 1);
}

static void region_prepare(char *base, size_t from, size_t to)
{
    if (to <= from) return;
    madvise(base + from, to - from, MADV_HUGEPAGE);
    madvise(base + from, to - from, MADV_POPULATE_WRITE);
}

/* Grows (or creates, when p is NULL) a region of old_bytes to new_bytes (both rounded). */
static char *region_grow(char *p, size_t old_bytes, size_t new_bytes)
{
    void *q;
    if (!p)
        q = mmap(NULL, new_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    else
        q = mremap(p, old_bytes, new_bytes, MREMAP_MAYMOVE);
    if (q == MAP_FAILED) return NULL;
    region_prepare(q, old_bytes, new_bytes);
    return q;
}

static void region_free(char *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

typedef struct layer_rows {
    char *k, *v;            /* [cap, row_dim] in dtype */
    size_t k_bytes, v_bytes; /* mapping sizes (whole regions; may exceed cap rows) */
    size_t n, cap;           /* rows used / allocated */
} layer_rows_t;

struct memory_store {
    int n_layers;
    int row_dim;
    dtype_t dtype;
    size_t row_bytes;
    layer_rows_t *layers; /* [n_layers] */
};

rc_t memory_store_create(int n_layers, int row_dim, dtype_t dtype, memory_store_t **out)
{
    *out = NULL;
    if (n_layers < 0 || row_dim <= 0) return RC_ERR_INVALID;
    memory_store_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
    s->n_layers = n_layers;
    s->row_dim = row_dim;
    s->dtype = dtype;
    s->row_bytes = (size_t)row_dim * dtype_size(dtype);
    if (n_layers) {
        s->layers = calloc((size_t)n_layers, sizeof *s->layers);
        if (!s->layers) {
            free(s);
            return RC_ERR_NOMEM;
        }
    }
    *out = s;
    return RC_OK;
}

void memory_store_destroy(memory_store_t **ps)
{
    if (!ps || !*ps) return;
    memory_store_t *s = *ps;
    for (int l = 0; l < s->n_layers; l++) {
        region_free(s->layers[l].k, s->layers[l].k_bytes);
        region_free(s->layers[l].v, s->layers[l].v_bytes);
    }
    free(s->layers);
    free(s);
    *ps = NULL;
}

int memory_store_layers(const memory_store_t *s)
{
    return s->n_layers;
}

int memory_store_row_dim(const memory_store_t *s)
{
    return s->row_dim;
}

dtype_t memory_store_dtype(const memory_store_t *s)
{
    return s->dtype;
}

size_t memory_store_rows(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].n;
}

size_t memory_store_len(const memory_store_t *s)
{
    if (!s->n_layers) return 0;
    size_t n = s->layers[0].n;
    for (int l = 1; l < s->n_layers; l++)
        if (s->layers[l].n < n) n = s->layers[l].n;
    return n;
}

size_t memory_store_bytes(const memory_store_t *s)
{
    size_t b = 0;
    for (int l = 0; l < s->n_layers; l++) b += 2 * s->layers[l].n * s->row_bytes;
    return b;
}

/* Makes room for n more rows, growing by half again so appends stay amortized O(1). The
 * capacity is whole 2 MiB regions' worth of rows. */
static rc_t reserve(memory_store_t *s, layer_rows_t *L, size_t n)
{
    if (L->n + n <= L->cap) return RC_OK;
    size_t want = L->cap ? L->cap + L->cap / 2 : 1024;
    if (want < L->n + n) want = L->n + n;
    size_t new_bytes = region_round(want * s->row_bytes);
    /* Keys may end up grown while values fail: harmless, the next call grows values only. */
    if (L->k_bytes < new_bytes) {
        char *k = region_grow(L->k, L->k_bytes, new_bytes);
        if (!k) return RC_ERR_NOMEM;
        L->k = k;
        L->k_bytes = new_bytes;
    }
    if (L->v_bytes < new_bytes) {
        char *v = region_grow(L->v, L->v_bytes, new_bytes);
        if (!v) return RC_ERR_NOMEM;
        L->v = v;
        L->v_bytes = new_bytes;
    }
    L->cap = new_bytes / s->row_bytes;
    return RC_OK;
}

rc_t memory_store_append_f32(memory_store_t *s, int layer, const float *k, const float *v,
                             size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    rc_t rc = reserve(s, L, n);
    if (rc) return rc;
    dtype_from_f32(L->k + L->n * s->row_bytes, s->dtype, k, n * (size_t)s->row_dim);
    dtype_from_f32(L->v + L->n * s->row_bytes, s->dtype, v, n * (size_t)s->row_dim);
    L->n += n;
    return RC_OK;
}

rc_t memory_store_append_raw(memory_store_t *s, int layer, const void *k, const void *v, size_t n)
{
    if (layer < 0 || layer >= s->n_layers) return RC_ERR_INVALID;
    layer_rows_t *L = &s->layers[layer];
    rc_t rc = reserve(s, L, n);
    if (rc) return rc;
    memcpy(L->k + L->n * s->row_bytes, k, n * s->row_bytes);
    memcpy(L->v + L->n * s->row_bytes, v, n * s->row_bytes);
    L->n += n;
    return RC_OK;
}

const void *memory_store_keys(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].k;
}

const void *memory_store_values(const memory_store_t *s, int layer)
{
    ASSERT(layer >= 0 && layer < s->n_layers);
    return s->layers[layer].v;
}

void memory_store_truncate(memory_store_t *s, size_t n)
{
    for (int l = 0; l < s->n_layers; l++)
        if (s->layers[l].n > n) s->layers[l].n = n;
}
