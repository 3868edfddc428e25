/* gpu_tier.c — a stream's memory rows on the GPU (see gpu_tier.h). */
#include "memory/gpu_tier.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "kernels/cuda.h"
#include "memory/tiers.h"

static double mib(size_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

rc_t gpu_tier_init(gpu_tier_t *t, int n_layers, int row_dim, dtype_t dtype, size_t window,
                   size_t budget, void *stream, const char *who)
{
    memset(t, 0, sizeof *t);
    /* The GPU kernels read f32/bf16 rows; the quantized row formats (common/quant.h) would
     * be misread, so no tier holds them until the device dequantizes. */
    if (dtype_is_quant(dtype)) return RC_ERR_UNSUPPORTED;
    t->n_layers = n_layers;
    t->dtype = dtype;
    t->row_bytes = (size_t)row_dim * dtype_size(dtype);
    t->window = window ? window : 1;
    /* The budget covers every layer's keys and values. */
    const size_t per_row = (size_t)n_layers * 2 * t->row_bytes;
    t->hot_cap = budget && per_row ? budget / per_row : SIZE_MAX;
    t->stream = stream;
    t->who = who;
    if (!n_layers) return RC_OK;
    t->k = calloc((size_t)n_layers, sizeof *t->k);
    t->v = calloc((size_t)n_layers, sizeof *t->v);
    if (!t->k || !t->v) {
        gpu_tier_free(t);
        return RC_ERR_NOMEM;
    }
    return RC_OK;
}

void gpu_tier_free(gpu_tier_t *t)
{
    if (t->stream && (t->k || t->v)) (void)cuda_stream_sync(t->stream);
    for (int i = 0; i < t->n_layers; i++) {
        if (t->k) cuda_free(&t->k[i]);
        if (t->v) cuda_free(&t->v[i]);
    }
    free(t->k);
    free(t->v);
    t->k = t->v = NULL;
    t->rows = t->cap = 0;
}

size_t gpu_tier_bytes(const gpu_tier_t *t)
{
    return t->rows * t->row_bytes * 2 * (size_t)t->n_layers;
}

/* Moves the rows into buffers of `cap` rows (every layer or none: a failure leaves the old
 * buffers in place). */
static rc_t move_to(gpu_tier_t *t, size_t cap)
{
    const int nm = t->n_layers;
    void **nk = calloc((size_t)nm, sizeof *nk), **nv = calloc((size_t)nm, sizeof *nv);
    rc_t rc = nk && nv ? RC_OK : RC_ERR_NOMEM;
    for (int i = 0; i < nm && !rc; i++) {
        if ((rc = cuda_alloc(&nk[i], cap * t->row_bytes)) ||
            (rc = cuda_alloc(&nv[i], cap * t->row_bytes)))
            break;
        if ((rc = cuda_copy(nk[i], t->k[i], t->rows * t->row_bytes, t->stream)) ||
            (rc = cuda_copy(nv[i], t->v[i], t->rows * t->row_bytes, t->stream)))
            break;
    }
    if (!rc) rc = cuda_stream_sync(t->stream); /* the copies are done before the old go */
    void **drop_k = rc ? nk : t->k, **drop_v = rc ? nv : t->v;
    for (int i = 0; i < nm; i++) {
        if (drop_k) cuda_free(&drop_k[i]);
        if (drop_v) cuda_free(&drop_v[i]);
    }
    if (rc) {
        free(nk);
        free(nv);
        return rc;
    }
    free(t->k);
    free(t->v);
    t->k = nk;
    t->v = nv;
    t->cap = cap;
    t->gen++;
    return RC_OK;
}

/* Old and new buffers coexist while growing: a 1M-row tier of a 3B-shaped model is 38 GB,
 * and doubling it would need 116 GB at once, hence the quarter steps past this size. */
#define DOUBLE_ROWS (256u * 1024u)

rc_t gpu_tier_reserve(gpu_tier_t *t, size_t rows)
{
    if (rows <= t->cap) return RC_OK;
    const size_t W = t->window;
    size_t cap = t->cap < DOUBLE_ROWS ? t->cap * 2 : t->cap + t->cap / 4;
    if (cap < W) cap = W;
    if (cap > t->hot_cap) cap = t->hot_cap;
    if (cap < rows) cap = rows;
    rc_t rc = move_to(t, cap);
    const size_t tight = (rows + W - 1) / W * W;
    if (rc == RC_ERR_NOMEM && tight < cap) rc = move_to(t, tight);
    if (rc == RC_ERR_NOMEM)
        log_warn("%s: the device cannot hold %zu memory rows (%.1f GiB of keys and values, "
                 "plus a copy while growing): give the session (or recalld) a smaller gpu "
                 "memory budget (its oldest windows then stay in host memory) or use a GPU "
                 "with more memory",
                 t->who, rows, (double)rows * t->row_bytes * 2 * t->n_layers / (1u << 30));
    return rc;
}

/* Moves the split up to `spill` (> t->spill): the device rows below it leave (the host
 * keeps them); the rest move to the front of the buffers. */
static rc_t spill_to(gpu_tier_t *t, size_t spill)
{
    const size_t d = spill - t->spill; /* device rows that leave */
    const size_t keep = t->rows > d ? t->rows - d : 0;
    const size_t rb = t->row_bytes;
    /* Rows [d, d + keep) move to [0, keep) in pieces of at most d rows, so no copy's source
     * and destination overlap; the stream runs them in order, and each piece's destination
     * is a source already read. */
    for (int i = 0; i < t->n_layers; i++)
        for (size_t p = 0; p < keep; p += d) {
            const size_t cnt = keep - p < d ? keep - p : d;
            RC_TRY(cuda_copy((char *)t->k[i] + p * rb, (char *)t->k[i] + (p + d) * rb, cnt * rb,
                             t->stream));
            RC_TRY(cuda_copy((char *)t->v[i] + p * rb, (char *)t->v[i] + (p + d) * rb, cnt * rb,
                             t->stream));
        }
    log_info("%s: memory rows [%zu, %zu) spilled to the host tier (%zu stay on the device)",
             t->who, t->spill, spill, keep);
    t->spill = spill;
    t->rows = keep;
    t->gen++;
    return RC_OK;
}

rc_t gpu_tier_place(gpu_tier_t *t, size_t rows, size_t limit)
{
    size_t want = memory_tiers_spill_rows(rows, t->hot_cap, t->window);
    if (want > limit) want = limit;
    if (want > t->spill) return spill_to(t, want);
    if (want < t->spill) {
        t->spill = want;
        t->rows = 0;
        t->gen++;
    }
    return RC_OK;
}

/* Uploads of a bringing-in (a whole session's rows, gigabytes at the 3B shape) read the
 * host tier's map: straight from pageable memory the driver stages them itself at a few
 * GB/s. Larger ones go through two page-locked buffers instead, filled by all threads while
 * the bus copies the other one. */
#define STAGE_MIN ((size_t)1 << 20)
#define STAGE_MAX ((size_t)64 << 20)

typedef struct stage {
    void *buf[2];
    size_t bytes;
} stage_t;

static void copy_parallel(void *dst, const void *src, size_t n)
{
    const size_t piece = (size_t)1 << 20;
    const long pieces = (long)((n + piece - 1) / piece);
#pragma omp parallel for schedule(static) if (pieces > 1)
    for (long p = 0; p < pieces; p++) {
        const size_t o = (size_t)p * piece;
        memcpy((char *)dst + o, (const char *)src + o, n - o < piece ? n - o : piece);
    }
}

/* bytes from host src to device dst, complete on return. */
static rc_t upload(gpu_tier_t *t, stage_t *st, char *dst, const char *src, size_t bytes)
{
    if (!st->bytes) return cuda_upload(dst, src, bytes, t->stream);
    for (size_t off = 0, i = 0; off < bytes; off += st->bytes, i++) {
        const size_t n = bytes - off < st->bytes ? bytes - off : st->bytes;
        void *b = st->buf[i % 2];
        /* b's last copy (two pieces ago) finished at the previous piece's sync. */
        copy_parallel(b, src + off, n);
        RC_TRY(cuda_stream_sync(t->stream)); /* the previous piece is done: its buffer is free */
        RC_TRY(cuda_copy_async(dst + off, b, n, t->stream));
    }
    return cuda_stream_sync(t->stream);
}

rc_t gpu_tier_sync(gpu_tier_t *t, const memory_store_t *store)
{
    if (!t->n_layers) return RC_OK;
    const size_t host = memory_store_len(store);
    RC_TRY(gpu_tier_place(t, host, host));
    const size_t have = t->spill + t->rows;
    if (host <= have) {
        t->rows = host - t->spill; /* spill <= host: gpu_tier_place */
        return RC_OK;
    }
    RC_TRY(gpu_tier_reserve(t, host - t->spill));
    const size_t n = host - have, rb = t->row_bytes;
    const size_t src = have * rb, dst = t->rows * rb;
    stage_t st = {{NULL, NULL}, 0};
    if (n * rb >= STAGE_MIN) {
        const size_t want = n * rb < STAGE_MAX ? n * rb : STAGE_MAX;
        if (!cuda_host_alloc(&st.buf[0], want) && !cuda_host_alloc(&st.buf[1], want))
            st.bytes = want; /* else: straight copies, slower but the same */
    }
    const double t0 = clock_now_s();
    rc_t rc = RC_OK;
    for (int i = 0; i < t->n_layers && !rc; i++) {
        const char *hk = memory_store_keys(store, i), *hv = memory_store_values(store, i);
        if (!(rc = upload(t, &st, (char *)t->k[i] + dst, hk + src, n * rb)))
            rc = upload(t, &st, (char *)t->v[i] + dst, hv + src, n * rb);
    }
    cuda_host_free(&st.buf[0]);
    cuda_host_free(&st.buf[1]);
    if (rc) return rc; /* t->rows unchanged: the next sync uploads them again */
    t->rows = host - t->spill;
    const size_t total = 2 * n * rb * (size_t)t->n_layers;
    if (total >= STAGE_MAX) {
        const double sec = clock_now_s() - t0;
        log_info("%s: %zu memory rows (%.1f MiB) uploaded to the device in %.3f s (%.1f GB/s%s)",
                 t->who, n, mib(total), sec, sec > 0 ? (double)total / sec / 1e9 : 0.0,
                 st.bytes ? ", staged" : "");
    }
    return RC_OK;
}

void gpu_tier_written(gpu_tier_t *t, size_t host_rows)
{
    t->rows = host_rows - t->spill;
}

void gpu_tier_truncated(gpu_tier_t *t, size_t rows)
{
    if (rows < t->spill) {
        /* Below the split every device row is gone: the next sync uploads again from the
         * split these rows call for. */
        t->spill = memory_tiers_spill_rows(rows, t->hot_cap, t->window);
        t->rows = 0;
        t->gen++;
    } else if (t->spill + t->rows > rows) {
        t->rows = rows - t->spill;
    }
}
