/* backend_cuda_knn.c — knn memory layers on the GPU (REFERENCE.md "kNN memory"; the tiers
 * are described at the top of backend_cuda.c): the hot tier's exact top-k on the device,
 * the spilled tier's Faiss search on the host, their merge per (query, head), the gather
 * of the spilled rows used, cuda_knn_attention; and the observation point of
 * model/knn_observe.h. */
#include "model/backend_cuda_internal.h"

#ifdef RECALL_HAVE_CUDA

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "model/knn_observe.h"

/* ---- knn memory ---------------------------------------------------------------------- */

/* The hot tier's exact top-k over the mirror's rows [0, mt.rows) of memory layer mi:
 * scores and idx [n, n_heads, k], idx being device rows (cuda_knn_attention's hot range). */
static rc_t hot_topk(backend_stream_t *s, int mi, int n, const uint16_t *q, int k, float *scores,
                     int32_t *idx)
{
    const model_config_t *c = s->c;
    cuda_topk_args_t t = {
        .n_q = n,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .q = q,
        .keys = s->mt.k[mi],
        .key_dtype = s->mt.dtype,
        .row0 = 0,
        .row1 = (int64_t)s->mt.rows,
        .k = k,
        .scores = scores,
        .idx = idx,
    };
    size_t need = 0;
    TRY(cuda_topk_workspace(&t, &need));
    TRY(cuda_stream_grow(s, &s->tws, &s->tws_bytes, need));
    return cuda_topk(&t, s->tws, s->tws_bytes, s->st);
}

/* The rows of at most this many distinct spilled rows fit one gather buffer. */
static size_t knn_slot_cap(const backend_stream_t *s)
{
    const size_t one_query = (size_t)s->c->n_heads * (size_t)s->o.knn_k;
    const size_t fit = KNN_GATHER_BYTES / s->mt.row_bytes;
    return fit > one_query ? fit : one_query;
}

/* The spilled tier's scratch (knn_memory_spilled), made once, at the first spill. */
static rc_t knn_spill_alloc(backend_stream_t *s)
{
    if (s->spill_ready) return RC_OK;
    const size_t W = (size_t)s->W, nh = (size_t)s->c->n_heads, K = (size_t)s->o.knn_k;
    const size_t qb = W < KNN_QBLOCK ? W : KNN_QBLOCK, blk = qb * nh * K;
    const size_t cap = knn_slot_cap(s);
    if (!s->k_hidx) TRY(cuda_alloc((void **)&s->k_hidx, W * nh * K * sizeof(int32_t)));
    if (!s->h_q16) TRY(cuda_host_alloc((void **)&s->h_q16, W * s->q_dim * sizeof(uint16_t)));
    if (!s->h_hsc) TRY(cuda_host_alloc((void **)&s->h_hsc, blk * sizeof(float)));
    if (!s->h_hidx) TRY(cuda_host_alloc((void **)&s->h_hidx, blk * sizeof(int32_t)));
    if (!s->h_enc) TRY(cuda_host_alloc((void **)&s->h_enc, blk * sizeof(int32_t)));
    if (!s->h_gk) TRY(cuda_host_alloc(&s->h_gk, cap * s->mt.row_bytes));
    if (!s->h_gv) TRY(cuda_host_alloc(&s->h_gv, cap * s->mt.row_bytes));
    if (!s->d_gk) TRY(cuda_alloc(&s->d_gk, cap * s->mt.row_bytes));
    if (!s->d_gv) TRY(cuda_alloc(&s->d_gv, cap * s->mt.row_bytes));
    if (!s->slots) TRY(knn_slots_create(cap, &s->slots));
    if (!s->h_q && !(s->h_q = malloc(W * s->q_dim * sizeof(float)))) return RC_ERR_NOMEM;
    if (!s->h_ssc && !(s->h_ssc = malloc(blk * sizeof(float)))) return RC_ERR_NOMEM;
    if (!s->h_sidx && !(s->h_sidx = malloc(blk * sizeof(int64_t)))) return RC_ERR_NOMEM;
    if (!s->h_mrg && !(s->h_mrg = malloc(blk * sizeof(int64_t)))) return RC_ERR_NOMEM;
    s->spill_ready = 1;
    return RC_OK;
}

/* Runs cuda_knn_attention for queries [g0, g1) of the chunk (block b0's encoded rows in
 * h_enc, its spilled rows in the slot table): gathers the slots' key and value rows from
 * the host store, uploads them and the rows, and launches. */
static rc_t knn_run_group(backend_stream_t *s, int mi, const cuda_knn_attn_args_t *base,
                          int b0, int g0, int g1)
{
    if (g1 <= g0) return RC_OK;
    const size_t rb = s->mt.row_bytes, per_q = (size_t)s->c->n_heads * (size_t)base->k;
    const size_t cnt = knn_slots_count(s->slots);
    const int64_t *rows = knn_slots_rows(s->slots);
    const char *hk = memory_store_keys(s->mem, mi), *hv = memory_store_values(s->mem, mi);
    for (size_t j = 0; j < cnt; j++) {
        memcpy((char *)s->h_gk + j * rb, hk + (size_t)rows[j] * rb, rb);
        memcpy((char *)s->h_gv + j * rb, hv + (size_t)rows[j] * rb, rb);
    }
    /* Uploads are ordered after the previous group's kernel on the stream, so reusing the
     * gather buffers is safe; each group's rows go to their own part of k_idx. */
    if (cnt) {
        TRY(cuda_upload(s->d_gk, s->h_gk, cnt * rb, s->st));
        TRY(cuda_upload(s->d_gv, s->h_gv, cnt * rb, s->st));
    }
    int32_t *idx = s->k_idx + (size_t)g0 * per_q;
    TRY(cuda_upload(idx, s->h_enc + (size_t)(g0 - b0) * per_q,
                    (size_t)(g1 - g0) * per_q * sizeof(int32_t), s->st));
    cuda_knn_attn_args_t a = *base;
    a.n_q = g1 - g0;
    a.q_mem = (const uint16_t *)base->q_mem + (size_t)g0 * s->q_dim;
    a.idx = idx;
    a.sp_k = cnt ? s->d_gk : NULL;
    a.sp_v = cnt ? s->d_gv : NULL;
    a.n_sp = (int64_t)cnt;
    a.lse = base->lse + (size_t)g0 * s->c->n_heads;
    a.out = (uint16_t *)base->out + (size_t)g0 * s->q_dim;
    return cuda_knn_attention(&a, s->st);
}

/* knn memory with a non-empty spilled tier: both tiers' top-k, merged on the host, per
 * block of queries (base: the kernel's arguments for the whole chunk, k the merged k). */
static rc_t knn_memory_spilled(backend_stream_t *s, int mi, int n, const uint16_t *mem_q,
                               const cuda_knn_attn_args_t *base)
{
    TRY(knn_spill_alloc(s));
    const model_config_t *c = s->c;
    const int nh = c->n_heads, k = base->k;
    const size_t sp = s->mt.spill, hot = s->mt.rows, q_dim = (size_t)s->q_dim;
    const int k_sp = (size_t)k < sp ? k : (int)sp;
    const int k_hot = (size_t)k < hot ? k : (int)hot;
    const size_t per_q = (size_t)nh * (size_t)k;
    /* The queries come down first (Faiss searches them on the host); the hot tier's top-k
     * then runs on the GPU while the first block's Faiss search runs here. */
    TRY(cuda_download(s->h_q16, mem_q, (size_t)n * q_dim * sizeof(uint16_t), s->st));
    for (size_t i = 0; i < (size_t)n * q_dim; i++) s->h_q[i] = bf16_to_f32(s->h_q16[i]);
    if (k_hot > 0) TRY(hot_topk(s, mi, n, mem_q, k_hot, s->k_sc, s->k_hidx));
    for (int b0 = 0; b0 < n; b0 += KNN_QBLOCK) {
        const int qb = n - b0 < KNN_QBLOCK ? n - b0 : KNN_QBLOCK;
        const size_t lists = (size_t)qb * (size_t)nh;
        rc_t rc = memory_knn_search_rows(s->knn, s->mem, mi, sp, s->h_q + (size_t)b0 * q_dim, qb,
                                         nh, k_sp, s->h_sidx, s->h_ssc);
        if (rc) {
            log_warn("backend %s: searching the spilled knn tier (%zu rows, memory layer %d) "
                     "failed: %s", s->b->describe, sp, mi, rc_strerror(rc));
            return rc;
        }
        if (k_hot > 0) {
            const size_t off = (size_t)b0 * (size_t)nh * (size_t)k_hot;
            TRY(cuda_download(s->h_hsc, s->k_sc + off, lists * (size_t)k_hot * sizeof(float),
                              s->st));
            TRY(cuda_download(s->h_hidx, s->k_hidx + off,
                              lists * (size_t)k_hot * sizeof(int32_t), s->st));
        }
        TRY(knn_tiers_merge(lists, k, s->h_sidx, s->h_ssc, k_sp, s->h_hidx, s->h_hsc, k_hot,
                            (int64_t)sp, s->h_mrg, NULL));
        /* Queries join the current kernel call while their spilled rows fit the gather
         * buffer; a query that does not fit starts the next call. */
        knn_slots_clear(s->slots);
        int g0 = b0;
        for (int i = b0; i < b0 + qb; i++) {
            const size_t o = (size_t)(i - b0) * per_q;
            if (!knn_slots_encode(s->slots, s->h_mrg + o, per_q, (int64_t)sp, (int64_t)hot,
                                  s->h_enc + o))
                continue;
            TRY(knn_run_group(s, mi, base, b0, g0, i));
            knn_slots_clear(s->slots);
            g0 = i;
            /* One query's rows always fit an empty table (knn_slot_cap). */
            const int again = knn_slots_encode(s->slots, s->h_mrg + o, per_q, (int64_t)sp,
                                               (int64_t)hot, s->h_enc + o);
            ASSERT(again == 0);
        }
        TRY(knn_run_group(s, mi, base, b0, g0, b0 + qb));
    }
    return RC_OK;
}

/* A knn memory layer's memory part (the local attention is in s->att with its log-sum-exp
 * in k_lse): each query's and head's top-k memory rows by q_mem · key, joined into its
 * softmax by cuda_knn_attention. k is knn_k, or every row when memory has fewer (then the
 * result is exact attention's, as on the CPU). */
rc_t cuda_stream_knn_memory(backend_stream_t *s, int mi, int n, const uint16_t *mem_q,
                            float mem_scale)
{
    const model_config_t *c = s->c;
    const size_t hot = s->mt.rows, total = s->mt.spill + hot;
    const int k = (size_t)s->o.knn_k < total ? s->o.knn_k : (int)total;
    cuda_knn_attn_args_t a = {
        .n_q = n,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .q_mem = mem_q,
        .mem_scale = mem_scale,
        .k = k,
        .idx = s->k_idx,
        .mem_dtype = s->mt.dtype,
        .hot_k = s->mt.k[mi],
        .hot_v = s->mt.v[mi],
        .n_hot = (int64_t)hot,
        .lse = s->k_lse,
        .out = s->att,
    };
    if (s->mt.spill) return knn_memory_spilled(s, mi, n, mem_q, &a);
    /* Hot tier only: the top-k's rows are already in the kernel's encoding; nothing leaves
     * the device (so a decode step can be a graph). */
    TRY(hot_topk(s, mi, n, mem_q, k, s->k_sc, s->k_idx));
    return cuda_knn_attention(&a, s->st);
}

/* The installed observer (model/knn_observe.h): none in the product. */
static knn_observer_t g_observer;

void backend_cuda_observe_knn(const knn_observer_t *o)
{
    if (o)
        g_observer = *o;
    else
        memset(&g_observer, 0, sizeof g_observer);
}

void cuda_stream_knn_observe(backend_stream_t *s, int l, int mi, int n,
                             const cuda_attn_args_t *exact, const uint16_t *mem_q, float mem_scale)
{
    if (!g_observer.observe) return;
    const size_t total = s->mt.spill + s->mt.rows;
    if (g_observer.due && !g_observer.due(g_observer.ctx, mi, total, n)) return;
    const knn_observe_in_t in = {
        .layer = l,
        .mem_layer = mi,
        .n = n,
        .attn = exact,
        .fast = BACKEND_CUDA_FAST_ATTENTION || s->ext,
        .rows = total,
        .spilled = s->mt.spill,
        .mem_k = s->mt.k[mi],
        .mem_v = s->mt.v[mi],
        .mem_dtype = s->mt.dtype,
        .mem_q = mem_q,
        .mem_scale = mem_scale,
        .o_knn = s->att,
        .knn_idx = s->k_idx,
        .k = (size_t)s->o.knn_k < total ? s->o.knn_k : (int)total,
        .store = s->mem,
        .n_mem_layers = s->c->n_mem_layers,
        .nlist = s->o.knn_nlist,
        .nprobe = s->o.knn_nprobe,
        .stream = s->st,
        .describe = s->b->describe,
    };
    g_observer.observe(g_observer.ctx, &in);
}

#else
/* ISO C forbids an empty translation unit. */
typedef int backend_cuda_knn_unused_t;
#endif
