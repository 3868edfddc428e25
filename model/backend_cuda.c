/* backend_cuda.c — the CUDA backend: the forward pass of backend_cpu.c on one GPU.
 *
 * Weights: uploaded once at open as bf16 (the model holds fp32 host weights; each tensor goes
 * up in fp32 through a staging buffer and is rounded on the device, nearest-even like torch).
 * Projections are cuBLAS GEMMs with bf16 operands and fp32 accumulation (kernels/cuda.h).
 *
 * Activations (the choice this backend makes): the residual stream x is fp32 on the device,
 * and the o-proj and down-proj GEMMs add into it directly (beta = 1), so the residual sums
 * never round to bf16; everything that feeds a GEMM or attention is bf16 — the normalized
 * input, q, k, v, the attention output and the SwiGLU product — as in a bf16 PyTorch model.
 * The local cache (rotated keys, values, and the unrotated keys of memory layers) is bf16;
 * memory is in the stream's mem_dtype (f32 or bf16). Logits are fp32 and the log-softmax
 * normalizer is summed in double, as on the CPU.
 *
 * Memory: the host store (memory/store.h) is the durable copy. The device holds a mirror of
 * every memory layer's keys and values; before each forward any rows the host has beyond
 * the mirror are uploaded (a session restored from disk fills the host store first), a flush
 * writes the window's rows into the mirror (converted to mem_dtype on the device) and then
 * copies those same bytes to the host store, and a rewind only shortens the mirror.
 *
 * kNN memory (REFERENCE.md "kNN memory"): a memory layer of a knn stream computes its local
 * attention alone (n_mem = 0) with its log-sum-exp, finds each query's top-k memory rows,
 * and cuda_knn_attention adds those rows to the softmax. The rows come from two tiers. The
 * hot tier is the device mirror, searched exactly by cuda_topk. Under a device memory budget
 * (gpu_memory_budget) the mirror (memory/gpu_tier.h, which owns it) holds at most hot_cap
 * rows: past that the oldest rows spill (whole windows, about half the hot tier at a time:
 * memory_tiers_spill_rows, a function of the row count alone) and the mirror holds only rows
 * [spill, spill + rows).
 * The spilled rows are searched on the host by a Faiss index (memory/knn.h) over the host
 * store's first `spill` rows; per layer and chunk the queries come down, both lists are
 * merged per (query, head) (model/knn_tiers.c), and the spilled rows used are gathered from
 * the host store into a small device buffer for the kernel. A rewind below the split
 * re-mirrors from the host store. Exact mode needs every row on the device: past the budget
 * its flush fails with RC_ERR_NOMEM and changes nothing. RECALL_KNN_PROBE (model/knn_probe.h)
 * turns on a read-only measurement of knn against exact attention at chosen memory sizes.
 *
 * Positional schemes (model/positional.h), as backend_cpu.c computes them: plain RoPE with
 * any RoPE scaling (YaRN's cos/sin factor included), Self-Extend and DCA (ChunkLlama's
 * cos/sin scale included). Under Self-Extend the keys are cached rotated twice, at j and at
 * j // G (a second bf16 cache per layer, [window, kv_dim]), and each query is rotated every
 * way its scheme pairs it (Self-Extend 2, DCA 3, plus its position against memory keys);
 * the tensor-core attention (cuda_attention_fast's positional layouts) picks per pair which
 * score to use, in one online softmax. Caching the grouped keys rather than rotating them
 * inside the kernel keeps the kernel's inner loop exactly the plain one (a tile needs one
 * staged key buffer or two, never cos/sin work per key and tile) and gives the same bf16
 * keys a rotate-once cache would; the cost is window · kv_dim · 2 bytes per layer. All
 * positions depend only on the index inside the window, so they are computed once per
 * stream. Sessions with these schemes need the tensor-core path (bf16, sm_80 or later).
 *
 * Threads: each stream has its own CUDA stream and cuBLAS handle (cuBLAS's workspace cannot
 * be shared by concurrent streams), so streams of one backend may run on different threads;
 * the weights are read-only. Every call makes the backend's device current first. */
#ifdef RECALL_HAVE_CUDA

#define BACKEND_INTERNAL
#include "model/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cuda.h"
#include "memory/gpu_tier.h"
#include "memory/knn.h"
#include "memory/tiers.h"
#include "model/knn_probe.h"
#include "model/knn_tiers.h"
#include "model/positional.h"
#include "model/stream.h"
#include "model/weights.h"

/* The attention entry point: 0 the FMA kernel (cuda_attention), 1 the tensor-core kernel
 * (cuda_attention_fast, kernels/cuda/attention_mma.cu: same arguments, same result up to bf16
 * rounding). Switching is this one line (or -DBACKEND_CUDA_FAST_ATTENTION=1). */
#ifndef BACKEND_CUDA_FAST_ATTENTION
#define BACKEND_CUDA_FAST_ATTENTION 1
#endif
#if BACKEND_CUDA_FAST_ATTENTION
#define BACKEND_CUDA_ATTENTION cuda_attention_fast
#define BACKEND_CUDA_ATTENTION_WORKSPACE cuda_attention_fast_workspace
#else
#define BACKEND_CUDA_ATTENTION cuda_attention
#define BACKEND_CUDA_ATTENTION_WORKSPACE cuda_attention_workspace
#endif

/* Rows of logits computed at once: bounds the scratch to LOGIT_ROWS × vocab floats (65 MB at
 * a 32000 vocabulary) while keeping the lm_head GEMM large enough to run at full rate. */
#define LOGIT_ROWS 512

/* Queries per host round of the spilled tier (Faiss search, merge, gather): bounds the host
 * scratch to KNN_QBLOCK · n_heads · knn_k entries per buffer. */
#define KNN_QBLOCK 256
/* Bytes of each spilled-row gather buffer (keys; values the same), at least one query's
 * n_heads · knn_k rows: more distinct rows than fit split a block into several kernels. */
#define KNN_GATHER_BYTES ((size_t)32 << 20)

/* fp32 elements per staging step when uploading weights (64 MB). */
#define UPLOAD_CHUNK ((size_t)16 << 20)

#define TRY(expr) RC_TRY(expr) /* common/rc.h */

typedef struct cuda_layer_w {
    uint16_t *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down; /* bf16 */
    /* wq, wk, wv are views into wqkv [q_dim + 2·kv_dim, hidden] and w_gate, w_up into
     * w_gu [2·ffn, hidden]: one GEMM (or matrix-vector product) each instead of three and
     * two — larger GEMMs, fewer launches. The views are not freed on their own. */
    uint16_t *wqkv, *w_gu;
} cuda_layer_w_t;

typedef struct cuda_backend {
    const model_t *model;
    const model_config_t *c;
    int device;
    char describe[320];
    uint16_t *tok_emb;      /* [vocab, hidden] bf16 */
    uint16_t *norm;         /* [hidden] */
    uint16_t *lm_head;      /* [vocab, hidden]; == tok_emb when tied */
    cuda_layer_w_t *layers; /* [n_layers] */
} cuda_backend_t;

typedef struct cuda_layer_cache {
    uint16_t *k_rot; /* [window, kv_dim] bf16 keys rotated at their local position */
    uint16_t *k_raw; /* [window, kv_dim] bf16 unrotated keys (memory layers only, else NULL) */
    uint16_t *v;     /* [window, kv_dim] bf16 */
    int mem_layer;   /* index into the memory store, or -1 */
} cuda_layer_cache_t;

struct backend_stream {
    cuda_backend_t *b;
    const model_config_t *c;
    model_stream_opts_t o;
    memory_store_t *mem; /* borrowed from the stream: the durable copy of memory */
    cuda_ctx_t *cx;      /* this stream's cuBLAS handle */
    void *st;            /* this stream's cudaStream_t */
    int q_dim, kv_dim, W;
    float scale;
    cuda_layer_cache_t *layers; /* [n_layers] */

    float *inv_freq;  /* [head_dim / 2] device: RoPE frequencies after any scaling */
    int32_t *pos;     /* [window] device: 0, 1, …, window − 1 (a chunk's are pos + local) */
    int32_t *tok;     /* [window] device: the chunk's token ids */
    int32_t *tgt;     /* [window] device: the chunk's targets */
    float *x;         /* [window, hidden] fp32 residual stream */
    uint16_t *xn;     /* [window, hidden] bf16 normalized input of a GEMM */
    uint16_t *q;      /* [window, q_dim] bf16 */
    uint16_t *att;    /* [window, q_dim] bf16 attention output */
    uint16_t *gate;   /* [window, ffn] bf16: SwiGLU's output */
    uint16_t *gu;     /* [window, 2·ffn] bf16: the fused gate/up GEMM's output */
    uint16_t *qkv;    /* [window, q_dim + 2·kv_dim] bf16: the fused q/k/v GEMM's output */
    float *logits;    /* [LOGIT_ROWS, vocab] fp32 */
    float *lp;        /* [window] device: gathered log-probs */
    float *lp_host;   /* [window] page-locked */
    void *ws;         /* attention workspace (splits), grown on demand */
    size_t ws_bytes;

    /* The memory rows on the device (memory/gpu_tier.h): device row p of every memory
     * layer is host row mt.spill + p, for p in [0, mt.rows); mt.spill is 0 unless a knn
     * stream outgrew its budget (then rows below it are the spilled tier). */
    gpu_tier_t mt;             /* also the rows' dtype and row_bytes (kv_dim × its size) */
    void *flush_k, *flush_v;   /* [window, kv_dim] mt.dtype, page-locked: a flush's rows */
    /* Bumped whenever a buffer a captured step points to is replaced (workspace growth);
     * with mt.gen (growth, spills, re-mirrors) part of the graph key. */
    uint64_t gen;

    /* knn mode (memory layers present), else NULL. */
    memory_knn_t *knn;         /* the spilled tier's index: host rows [0, mt.spill) */
    float *k_lse;              /* [window, n_heads] device: the local attention's log-sum-exp */
    float *k_sc;               /* [window, n_heads, knn_k] device: hot tier scores (cuda_topk) */
    int32_t *k_idx;            /* [window, n_heads, knn_k] device: cuda_knn_attention's rows */
    void *tws;                 /* cuda_topk workspace, grown on demand */
    size_t tws_bytes;
    /* The spilled tier's scratch, made at the first spill (knn_spill_alloc). */
    int spill_ready;
    int32_t *k_hidx;           /* [window, n_heads, knn_k] device: hot tier rows when merged */
    uint16_t *h_q16;           /* [window, q_dim] page-locked: the memory queries, bf16 */
    float *h_q;                /* [window, q_dim] the same in fp32, for Faiss */
    float *h_hsc;              /* [KNN_QBLOCK, n_heads, knn_k] page-locked: hot scores */
    int32_t *h_hidx;           /* [KNN_QBLOCK, n_heads, knn_k] page-locked: hot rows */
    float *h_ssc;              /* [KNN_QBLOCK, n_heads, knn_k] spilled tier scores */
    int64_t *h_sidx;           /* [KNN_QBLOCK, n_heads, knn_k] spilled tier rows */
    int64_t *h_mrg;            /* [KNN_QBLOCK, n_heads, knn_k] merged rows (absolute) */
    int32_t *h_enc;            /* [KNN_QBLOCK, n_heads, knn_k] page-locked: encoded rows */
    knn_slots_t *slots;        /* spilled rows of one kernel call -> gather slots */
    void *h_gk, *h_gv;         /* [slot_cap, kv_dim] mt.dtype page-locked: gathered spilled rows */
    void *d_gk, *d_gv;         /* [slot_cap, kv_dim] mt.dtype device: the same, uploaded */
    /* The approximation probe (model/knn_probe.h, RECALL_KNN_PROBE), else NULL: measures, at
     * chosen memory sizes, knn's outputs and lists against exact ones; reads only. */
    knn_probe_t *probe;

    /* Extended positions (positional_setup): only when `ext`, else NULL. With ext the q/k/v
     * split leaves q and keys unrotated and positional_prepare rotates them. */
    int ext;                   /* self-extend, dca, or a cos/sin multiplier (YaRN, DCA) */
    float mscale;              /* cos/sin multiplier of every rotation */
    positional_params_t pp;
    int32_t *kpos;             /* [window] device: the cached key's position */
    int32_t *kpos_grp;         /* [window] device: self-extend j // G */
    int32_t *qpos[3];          /* [window] device each: query position per variant */
    int32_t *mpos;             /* [window] device: query position against memory keys */
    uint16_t *q_alt[2];        /* [window, q_dim] bf16 each: queries of variants 2, 3 */
    uint16_t *q_mem;           /* [window, q_dim] bf16: queries against memory */
    uint16_t **k_grp;          /* [n_layers] self-extend, each [window, kv_dim] bf16 at j // G */

    /* One-token steps (decode): matrix-vector kernels instead of GEMMs when the shapes
     * allow (gemv_ok), and the whole step replayed as a CUDA graph (graphs). Two graph
     * slots alternate: while one step runs, the next position's step is captured into the
     * other (same kernels, arguments one position on), so the host's capture work hides
     * behind the GPU's. A slot is valid for its key: the local length it was captured at,
     * the memory rows of both tiers and the buffers' generation (gen). Steps that need the
     * host (a non-empty spilled tier) never run as graphs. */
    int gemv_ok, graphs;
    void *cap_st;              /* capture stream (idle, so capture never meets pending work) */
    void *g_exec[2];
    struct graph_key {
        int local;
        size_t mem_rows, spill_rows;
        uint64_t gen;
    } g_key[2];
    int g_next;
    int32_t *tok_host;         /* [1] page-locked: the step's token, read by the graph */
    float *logits_host;        /* [vocab] page-locked: the step's logits, written by it */
};

/* ---- open / close -------------------------------------------------------------------- */

/* Uploads n fp32 host values as bf16 into dst (n elements allocated) through the fp32 device
 * staging buffer. */
static rc_t upload_bf16_into(uint16_t *dst, const float *src, size_t n, float *staging)
{
    for (size_t off = 0; off < n; off += UPLOAD_CHUNK) {
        size_t cnt = n - off < UPLOAD_CHUNK ? n - off : UPLOAD_CHUNK;
        /* cuda_upload waits for its copy, and the previous chunk's conversion ran before it
         * on the same (default) stream, so the staging buffer is free to overwrite. */
        TRY(cuda_upload(staging, src + off, cnt * sizeof(float), NULL));
        TRY(cuda_convert(dst + off, DTYPE_BF16, staging, DTYPE_F32, cnt, NULL));
    }
    return RC_OK;
}

static rc_t upload_bf16(uint16_t **dst, const float *src, size_t n, float *staging)
{
    TRY(cuda_alloc((void **)dst, n * sizeof(uint16_t)));
    return upload_bf16_into(*dst, src, n, staging);
}

static void gpu_close(void *ctx)
{
    cuda_backend_t *b = ctx;
    if (!b) return;
    (void)cuda_set_device(b->device);
    if (b->layers) {
        for (int l = 0; l < b->c->n_layers; l++) {
            cuda_layer_w_t *L = &b->layers[l];
            L->wq = L->wk = L->wv = L->w_gate = L->w_up = NULL; /* views */
            uint16_t **all[] = {&L->attn_norm, &L->wqkv, &L->wo,
                                &L->ffn_norm,  &L->w_gu, &L->w_down};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cuda_free((void **)all[i]);
        }
    }
    free(b->layers);
    if (b->lm_head == b->tok_emb) b->lm_head = NULL;
    cuda_free((void **)&b->lm_head);
    cuda_free((void **)&b->tok_emb);
    cuda_free((void **)&b->norm);
    free(b);
}

static size_t weight_elems(const model_config_t *c, int tied)
{
    const size_t h = (size_t)c->hidden, qd = (size_t)c->n_heads * c->head_dim,
                 kvd = (size_t)c->n_kv_heads * c->head_dim, f = (size_t)c->ffn;
    size_t per_layer = 2 * h + qd * h + 2 * kvd * h + h * qd + 3 * f * h;
    return (size_t)c->vocab_size * h * (tied ? 1 : 2) + h + per_layer * c->n_layers;
}

static rc_t gpu_open(const model_t *m, int device, void **ctx, char *err, size_t errlen)
{
    *ctx = NULL;
    const model_config_t *c = model_get_config(m);
    const model_weights_t *w = model_get_weights(m);
    int n = 0;
    rc_t rc = cuda_device_count(&n);
    if (rc) {
        snprintf(err, errlen, "cuda:%d: cannot query CUDA devices (%s)", device,
                 rc_strerror(rc));
        return rc;
    }
    if (n == 0) {
        snprintf(err, errlen, "cuda:%d: no CUDA GPU found (no device or no driver)", device);
        return RC_ERR_UNSUPPORTED;
    }
    if (device < 0 || device >= n) {
        snprintf(err, errlen, "cuda:%d: no such GPU (%d present: cuda:0 .. cuda:%d)", device, n,
                 n - 1);
        return RC_ERR_INVALID;
    }
    if (c->head_dim != 64 && c->head_dim != 100 && c->head_dim != 128) {
        snprintf(err, errlen, "cuda:%d: head_dim %d is not supported by the GPU attention "
                 "(64, 100 and 128 are); use --device cpu", device, c->head_dim);
        return RC_ERR_UNSUPPORTED;
    }
    cuda_device_info_t info;
    if ((rc = cuda_device_info(device, &info))) {
        snprintf(err, errlen, "cuda:%d: cannot read the device's properties", device);
        return rc;
    }
    const int tied = w->lm_head == w->tok_emb;
    const size_t need = weight_elems(c, tied) * sizeof(uint16_t);
    if (need + (UPLOAD_CHUNK * sizeof(float)) > info.mem_free) {
        snprintf(err, errlen, "cuda:%d (%s): the weights need %.2f GB as bf16, %.2f GB free",
                 device, info.name, need / 1e9, info.mem_free / 1e9);
        return RC_ERR_NOMEM;
    }
    if ((rc = cuda_set_device(device))) {
        snprintf(err, errlen, "cuda:%d: cannot select the device", device);
        return rc;
    }

    cuda_backend_t *b = calloc(1, sizeof *b);
    float *staging = NULL;
    if (!b) return RC_ERR_NOMEM;
    b->model = m;
    b->c = c;
    b->device = device;
    snprintf(b->describe, sizeof b->describe, "cuda:%d (%s)", device, info.name);
    b->layers = calloc((size_t)c->n_layers, sizeof *b->layers);
    if (!b->layers) {
        rc = RC_ERR_NOMEM;
        goto fail;
    }
    if ((rc = cuda_alloc((void **)&staging, UPLOAD_CHUNK * sizeof(float)))) goto fail;
    const size_t h = (size_t)c->hidden, qd = (size_t)c->n_heads * c->head_dim,
                 kvd = (size_t)c->n_kv_heads * c->head_dim, f = (size_t)c->ffn;
    if ((rc = upload_bf16(&b->tok_emb, w->tok_emb, (size_t)c->vocab_size * h, staging)))
        goto fail;
    if ((rc = upload_bf16(&b->norm, w->norm, h, staging))) goto fail;
    if (tied)
        b->lm_head = b->tok_emb;
    else if ((rc = upload_bf16(&b->lm_head, w->lm_head, (size_t)c->vocab_size * h, staging)))
        goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer_t *S = &w->layers[l];
        cuda_layer_w_t *D = &b->layers[l];
        if ((rc = upload_bf16(&D->attn_norm, S->attn_norm, h, staging)) ||
            (rc = cuda_alloc((void **)&D->wqkv, (qd + 2 * kvd) * h * sizeof(uint16_t))))
            goto fail;
        D->wq = D->wqkv;
        D->wk = D->wq + qd * h;
        D->wv = D->wk + kvd * h;
        if ((rc = upload_bf16_into(D->wq, S->wq, qd * h, staging)) ||
            (rc = upload_bf16_into(D->wk, S->wk, kvd * h, staging)) ||
            (rc = upload_bf16_into(D->wv, S->wv, kvd * h, staging)) ||
            (rc = upload_bf16(&D->wo, S->wo, h * qd, staging)) ||
            (rc = upload_bf16(&D->ffn_norm, S->ffn_norm, h, staging)) ||
            (rc = cuda_alloc((void **)&D->w_gu, 2 * f * h * sizeof(uint16_t))))
            goto fail;
        D->w_gate = D->w_gu;
        D->w_up = D->w_gu + f * h;
        if ((rc = upload_bf16_into(D->w_gate, S->w_gate, f * h, staging)) ||
            (rc = upload_bf16_into(D->w_up, S->w_up, f * h, staging)) ||
            (rc = upload_bf16(&D->w_down, S->w_down, h * f, staging)))
            goto fail;
    }
    if ((rc = cuda_stream_sync(NULL))) goto fail;
    cuda_free((void **)&staging);
    log_info("backend: %s: %.2f GB of bf16 weights uploaded", b->describe, need / 1e9);
    *ctx = b;
    return RC_OK;
fail:
    snprintf(err, errlen, "cuda:%d (%s): uploading the weights failed: %s", device, info.name,
             rc_strerror(rc));
    cuda_free((void **)&staging);
    gpu_close(b);
    return rc;
}

static const char *gpu_describe(void *ctx)
{
    return ((cuda_backend_t *)ctx)->describe;
}

static rc_t gpu_device_memory(void *ctx, size_t *free_bytes, size_t *total)
{
    cuda_device_info_t info;
    rc_t rc = cuda_device_info(((cuda_backend_t *)ctx)->device, &info);
    if (rc) return rc;
    *free_bytes = info.mem_free;
    *total = info.mem_total;
    return RC_OK;
}

/* ---- streams ------------------------------------------------------------------------- */

/* Frees what positional_setup made. */
static void positional_free(backend_stream_t *s)
{
    if (s->k_grp)
        for (int l = 0; l < s->c->n_layers; l++) cuda_free((void **)&s->k_grp[l]);
    free(s->k_grp);
    s->k_grp = NULL;
    void **dev[] = {(void **)&s->kpos,    (void **)&s->kpos_grp, (void **)&s->qpos[0],
                    (void **)&s->qpos[1], (void **)&s->qpos[2],  (void **)&s->mpos,
                    (void **)&s->q_alt[0], (void **)&s->q_alt[1], (void **)&s->q_mem};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(dev[i]);
}

/* The position tables of an extended scheme, for every window index (backend_cpu.c's
 * cpu_forward computes the same per chunk), and the buffers of the extra rotations. */
static rc_t positional_setup(backend_stream_t *s)
{
    const model_config_t *c = s->c;
    const positional_params_t *p = &s->pp;
    const size_t W = (size_t)s->W, bf = sizeof(uint16_t);
    const int se = p->kind == POSITIONAL_SELF_EXTEND, dca = p->kind == POSITIONAL_DCA;
    const int n_alt = dca ? 2 : se ? 1 : 0;
    rc_t rc = RC_OK;
    int32_t *h = malloc(W * 6 * sizeof *h); /* kpos, kpos_grp, qpos[0..2], mpos */
    if (!h) return RC_ERR_NOMEM;
    int32_t *hk = h, *hg = h + W, *hq[3] = {h + 2 * W, h + 3 * W, h + 4 * W}, *hm = h + 5 * W;
    for (size_t t = 0; t < W; t++) {
        const int i = (int)t;
        hm[t] = positional_mem_query(p, i);
        hk[t] = hq[0][t] = hq[1][t] = hq[2][t] = hg[t] = i;
        if (se) {
            hg[t] = positional_se_key(i, p->group);
            hq[1][t] = positional_se_query(i, p->group, p->neighbor);
        } else if (dca) {
            hk[t] = i % p->chunk_len;
            hq[0][t] = positional_dca_intra(p, i);
            hq[1][t] = positional_dca_succ(p, i);
            hq[2][t] = p->chunk_size;
        }
    }
    const size_t tb = W * sizeof(int32_t);
    if ((rc = cuda_alloc((void **)&s->kpos, tb)) || (rc = cuda_alloc((void **)&s->mpos, tb)) ||
        (rc = cuda_alloc((void **)&s->qpos[0], tb)) ||
        (rc = cuda_upload(s->kpos, hk, tb, s->st)) || (rc = cuda_upload(s->mpos, hm, tb, s->st)) ||
        (rc = cuda_upload(s->qpos[0], hq[0], tb, s->st)))
        goto done;
    for (int v = 0; v < n_alt; v++)
        if ((rc = cuda_alloc((void **)&s->qpos[v + 1], tb)) ||
            (rc = cuda_upload(s->qpos[v + 1], hq[v + 1], tb, s->st)) ||
            (rc = cuda_alloc((void **)&s->q_alt[v], W * s->q_dim * bf)))
            goto done;
    if (c->n_mem_layers && (se || dca) &&
        (rc = cuda_alloc((void **)&s->q_mem, W * s->q_dim * bf)))
        goto done;
    if (se) {
        if ((rc = cuda_alloc((void **)&s->kpos_grp, tb)) ||
            (rc = cuda_upload(s->kpos_grp, hg, tb, s->st)))
            goto done;
        if (!(s->k_grp = calloc((size_t)c->n_layers, sizeof *s->k_grp))) {
            rc = RC_ERR_NOMEM;
            goto done;
        }
        for (int l = 0; l < c->n_layers; l++)
            if ((rc = cuda_alloc((void **)&s->k_grp[l], W * s->kv_dim * bf))) goto done;
    }
done:
    free(h);
    return rc;
}

static void gpu_stream_destroy(backend_stream_t *s)
{
    if (!s) return;
    (void)cuda_set_device(s->b->device);
    if (s->st) (void)cuda_stream_sync(s->st);
    if (s->layers) {
        for (int l = 0; l < s->c->n_layers; l++) {
            cuda_free((void **)&s->layers[l].k_rot);
            cuda_free((void **)&s->layers[l].k_raw);
            cuda_free((void **)&s->layers[l].v);
        }
    }
    free(s->layers);
    gpu_tier_free(&s->mt);
    void **dev[] = {(void **)&s->inv_freq, (void **)&s->pos, (void **)&s->tok,
                    (void **)&s->tgt,      (void **)&s->x,   (void **)&s->xn,
                    (void **)&s->q,        (void **)&s->att, (void **)&s->gate,
                    (void **)&s->gu,       (void **)&s->qkv, (void **)&s->logits,
                    (void **)&s->lp,       &s->ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(dev[i]);
    cuda_graph_destroy(&s->g_exec[0]);
    cuda_graph_destroy(&s->g_exec[1]);
    cuda_stream_destroy(&s->cap_st);
    cuda_host_free((void **)&s->tok_host);
    cuda_host_free((void **)&s->logits_host);
    positional_free(s);
    cuda_host_free((void **)&s->lp_host);
    cuda_host_free(&s->flush_k);
    cuda_host_free(&s->flush_v);
    memory_knn_destroy(&s->knn);
    void **kdev[] = {(void **)&s->k_lse, (void **)&s->k_sc, (void **)&s->k_idx, &s->tws,
                     (void **)&s->k_hidx, &s->d_gk, &s->d_gv};
    for (size_t i = 0; i < sizeof kdev / sizeof kdev[0]; i++) cuda_free(kdev[i]);
    void **kpin[] = {(void **)&s->h_q16, (void **)&s->h_hsc, (void **)&s->h_hidx,
                     (void **)&s->h_enc, &s->h_gk, &s->h_gv};
    for (size_t i = 0; i < sizeof kpin / sizeof kpin[0]; i++) cuda_host_free(kpin[i]);
    free(s->h_q);
    free(s->h_ssc);
    free(s->h_sidx);
    free(s->h_mrg);
    knn_slots_destroy(&s->slots);
    knn_probe_destroy(&s->probe);
    cuda_stream_destroy(&s->st);
    cuda_ctx_destroy(&s->cx);
    free(s);
}

static rc_t gpu_stream_create(void *ctx, const model_stream_opts_t *o, memory_store_t *mem,
                               backend_stream_t **out)
{
    cuda_backend_t *b = ctx;
    const model_config_t *c = b->c;
    *out = NULL;
    if (c->n_mem_layers && o->mem_dtype != DTYPE_F32 && o->mem_dtype != DTYPE_BF16) {
        log_warn("backend %s: memory dtype %s is not supported on the GPU (f32, bf16 are)",
                 b->describe, dtype_name(o->mem_dtype));
        return RC_ERR_UNSUPPORTED;
    }
    const int knn = c->n_mem_layers && o->memory_knn;
    if (knn && o->knn_k < 1) return RC_ERR_INVALID; /* opts not resolved */
    if (knn && o->knn_k > CUDA_TOPK_MAX_K) {
        log_warn("backend %s: knn k %d is more than the GPU top-k takes (%d); use a smaller "
                 "--k or --device cpu", b->describe, o->knn_k, CUDA_TOPK_MAX_K);
        return RC_ERR_UNSUPPORTED;
    }
    if (o->window <= 0) return RC_ERR_INVALID;
    const int hd = c->head_dim;
    float *inv_freq = malloc((size_t)hd / 2 * sizeof(float));
    if (!inv_freq) return RC_ERR_NOMEM;
    float mscale = 1.0f;
    /* Opts come resolved (model_stream_opts_resolve): scaling and factor are set. */
    positional_rope_freqs(c, o->rope_scaling, o->rope_factor, o->window, inv_freq, &mscale);
    if (o->positional == POSITIONAL_DCA && !o->dca_no_scale)
        mscale = positional_dca_scale(o->window, c->max_pos);
    const positional_params_t pp = positional_params(c, o);
    if ((pp.kind == POSITIONAL_DCA && pp.chunk_len < 1) ||
        (pp.kind == POSITIONAL_SELF_EXTEND && (pp.group < 1 || pp.neighbor < 1))) {
        free(inv_freq); /* opts not resolved */
        return RC_ERR_INVALID;
    }
    const int ext = pp.kind != POSITIONAL_ROPE || mscale != 1.0f;
    cuda_device_info_t dev_info;
    rc_t rc = cuda_device_info(b->device, &dev_info);
    if (!rc && ext && dev_info.cc_major < 8) {
        /* Only the tensor-core attention computes the per-pair scores. */
        log_warn("backend %s: positional scheme '%s' (RoPE scaling '%s') needs an sm_80 or "
                 "later GPU; use --device cpu", b->describe, positional_name(pp.kind),
                 positional_scaling_name(o->rope_scaling));
        rc = RC_ERR_UNSUPPORTED;
    }
    if (!rc) rc = cuda_set_device(b->device);
    if (rc) {
        free(inv_freq);
        return rc;
    }

    backend_stream_t *s = calloc(1, sizeof *s);
    if (!s) {
        free(inv_freq);
        return RC_ERR_NOMEM;
    }
    s->b = b;
    s->c = c;
    s->o = *o;
    s->mem = mem;
    s->q_dim = c->n_heads * hd;
    s->kv_dim = c->n_kv_heads * hd;
    s->W = o->window;
    s->scale = 1.0f / sqrtf((float)hd);
    s->ext = ext;
    s->mscale = mscale;
    s->pp = pp;
    const size_t W = (size_t)o->window, bf = sizeof(uint16_t);
    int32_t *iota = NULL;

    if ((rc = cuda_ctx_create(&s->cx, b->device)) || (rc = cuda_stream_create(&s->st))) goto fail;
    /* The memory rows' device tier (no buffers without memory layers); the budget covers
     * every memory layer's keys and values. */
    if ((rc = gpu_tier_init(&s->mt, c->n_mem_layers, s->kv_dim, o->mem_dtype, W,
                            o->gpu_memory_budget, s->st, b->describe)))
        goto fail;
    rc = RC_ERR_NOMEM;
    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        cuda_layer_cache_t *L = &s->layers[l];
        L->mem_layer = -1;
        for (int i = 0; i < c->n_mem_layers; i++)
            if (c->mem_layers[i] == l) L->mem_layer = i;
        if ((rc = cuda_alloc((void **)&L->k_rot, W * s->kv_dim * bf)) ||
            (rc = cuda_alloc((void **)&L->v, W * s->kv_dim * bf)))
            goto fail;
        if (L->mem_layer >= 0 && (rc = cuda_alloc((void **)&L->k_raw, W * s->kv_dim * bf)))
            goto fail;
    }
    if ((rc = cuda_alloc((void **)&s->inv_freq, (size_t)hd / 2 * sizeof(float))) ||
        (rc = cuda_alloc((void **)&s->pos, W * sizeof(int32_t))) ||
        (rc = cuda_alloc((void **)&s->tok, W * sizeof(int32_t))) ||
        (rc = cuda_alloc((void **)&s->tgt, W * sizeof(int32_t))) ||
        (rc = cuda_alloc((void **)&s->x, W * c->hidden * sizeof(float))) ||
        (rc = cuda_alloc((void **)&s->xn, W * c->hidden * bf)) ||
        (rc = cuda_alloc((void **)&s->q, W * s->q_dim * bf)) ||
        (rc = cuda_alloc((void **)&s->att, W * s->q_dim * bf)) ||
        (rc = cuda_alloc((void **)&s->gate, W * c->ffn * bf)) ||
        (rc = cuda_alloc((void **)&s->gu, W * 2 * c->ffn * bf)) ||
        (rc = cuda_alloc((void **)&s->qkv, W * (s->q_dim + 2 * s->kv_dim) * bf)) ||
        (rc = cuda_alloc((void **)&s->logits, (size_t)LOGIT_ROWS * c->vocab_size * sizeof(float))) ||
        (rc = cuda_alloc((void **)&s->lp, W * sizeof(float))) ||
        (rc = cuda_host_alloc((void **)&s->lp_host, W * sizeof(float))))
        goto fail;
    if (c->n_mem_layers) {
        if ((rc = cuda_host_alloc(&s->flush_k, W * s->mt.row_bytes)) ||
            (rc = cuda_host_alloc(&s->flush_v, W * s->mt.row_bytes)))
            goto fail;
    }
    if (knn) {
        const size_t lists = W * (size_t)c->n_heads;
        memory_knn_opts_t ko = {.nlist = o->knn_nlist, .nprobe = o->knn_nprobe};
        if ((rc = memory_knn_create(c->n_mem_layers, c->n_kv_heads, hd, &ko, &s->knn)) ||
            (rc = cuda_alloc((void **)&s->k_lse, lists * sizeof(float))) ||
            (rc = cuda_alloc((void **)&s->k_sc, lists * (size_t)o->knn_k * sizeof(float))) ||
            (rc = cuda_alloc((void **)&s->k_idx, lists * (size_t)o->knn_k * sizeof(int32_t))))
            goto fail;
    }
    {
        const char *spec = getenv(KNN_PROBE_ENV), *heads = getenv(KNN_PROBE_HEADS_ENV);
        const int ivf_heads = heads && atoi(heads) > 0 ? atoi(heads) : 0;
        if (spec && *spec && !knn) {
            log_debug("backend %s: %s is ignored: the stream's memory is not knn", b->describe,
                      KNN_PROBE_ENV);
        } else if (spec && *spec && knn_probe_create(spec, ivf_heads, c->n_mem_layers, &s->probe)) {
            log_warn("backend %s: %s='%s' is not a list of memory row counts (e.g. "
                     "65536,262144,1048576 or 64k,256k,1m); the knn probe is off", b->describe,
                     KNN_PROBE_ENV, spec);
        } else if (s->probe) {
            log_info("backend %s: knn probe on (%s=%s, IVF over %d kv heads): prefill chunks "
                     "measure knn against exact attention at those memory sizes", b->describe,
                     KNN_PROBE_ENV, spec,
                     ivf_heads && ivf_heads < c->n_kv_heads ? ivf_heads : c->n_kv_heads);
        }
    }
    iota = malloc(W * sizeof *iota);
    if (!iota) {
        rc = RC_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < W; i++) iota[i] = (int32_t)i;
    if (s->ext && (rc = positional_setup(s))) goto fail;
    s->gemv_ok = cuda_gemv_supported(c->hidden) && cuda_gemv_supported(s->q_dim) &&
                 cuda_gemv_supported(c->ffn);
    {
        /* RECALL_CUDA_GRAPHS=0 turns the decode graphs off (for comparisons). */
        const char *env = getenv("RECALL_CUDA_GRAPHS");
        /* Extended positions (s->ext) prepare per-layer state on the host: not captured. */
        s->graphs = s->gemv_ok && !s->ext && o->positional == POSITIONAL_ROPE &&
                    !(env && !strcmp(env, "0"));
    }
    s->g_key[0].local = s->g_key[1].local = -1;
    if (s->graphs &&
        ((rc = cuda_stream_create(&s->cap_st)) ||
         (rc = cuda_host_alloc((void **)&s->tok_host, sizeof(int32_t))) ||
         (rc = cuda_host_alloc((void **)&s->logits_host, (size_t)c->vocab_size * sizeof(float)))))
        goto fail;
    if ((rc = cuda_upload(s->pos, iota, W * sizeof *iota, s->st)) ||
        (rc = cuda_upload(s->inv_freq, inv_freq, (size_t)hd / 2 * sizeof(float), s->st)))
        goto fail;
    free(iota);
    free(inv_freq);
    *out = s;
    return RC_OK;
fail:
    free(iota);
    free(inv_freq);
    gpu_stream_destroy(s);
    return rc;
}

/* ---- forward ------------------------------------------------------------------------- */

/* A device scratch buffer of at least `need` bytes. Growing waits for the stream (work
 * queued on it may still read the old buffer) and invalidates captured steps. */
static rc_t grow(backend_stream_t *s, void **buf, size_t *bytes, size_t need)
{
    if (need <= *bytes) return RC_OK;
    TRY(cuda_stream_sync(s->st));
    cuda_free(buf);
    *bytes = 0;
    s->gen++;
    TRY(cuda_alloc(buf, need));
    *bytes = need;
    return RC_OK;
}

/* Attention workspace for these shapes, grown on demand (growing waits for the stream). */
static rc_t attention(backend_stream_t *s, cuda_attn_args_t *a)
{
    /* Positional layouts and memory factors are the tensor-core kernel's alone. */
    const int fast = BACKEND_CUDA_FAST_ATTENTION || s->ext;
    size_t need = 0;
    TRY(fast ? cuda_attention_fast_workspace(a, &need) : BACKEND_CUDA_ATTENTION_WORKSPACE(a, &need));
    TRY(grow(s, &s->ws, &s->ws_bytes, need));
    a->workspace = s->ws;
    a->workspace_bytes = s->ws_bytes;
    return fast ? cuda_attention_fast(a, s->st) : BACKEND_CUDA_ATTENTION(a, s->st);
}

/* Extended schemes: rotates the chunk's unrotated queries and keys (the q/k/v split left
 * them so) every way the scheme needs, as backend_cpu.c's layer_forward does, and fills the
 * positional tail of the attention arguments. Keys: k_rot at kpos (j, or j mod c), under
 * Self-Extend also k_grp at j // G; queries: q at qpos[0], q_alt[v] at qpos[v + 1], q_mem at
 * mpos when memory is attended (`mem`: exact, or knn, which takes q_mem and mem_scale). Every rotation carries mscale; memory scores get it once
 * more (a local key at index 0 would carry it): mem_scale = scale · mscale. */
static rc_t positional_prepare(backend_stream_t *s, int l, int n, int local, int mem,
                               cuda_attn_args_t *a)
{
    const model_config_t *c = s->c;
    const cuda_layer_cache_t *L = &s->layers[l];
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const size_t kv_off = (size_t)local * s->kv_dim, qb = (size_t)n * s->q_dim * sizeof(uint16_t);
    const float ms = s->mscale;
    uint16_t *k_rot = L->k_rot + kv_off;
    void *st = s->st;
    const int n_alt = s->pp.kind == POSITIONAL_DCA ? 2 : s->pp.kind == POSITIONAL_SELF_EXTEND;
    for (int v = 0; v < n_alt; v++) {
        TRY(cuda_copy(s->q_alt[v], s->q, qb, st));
        TRY(cuda_rope(s->q_alt[v], DTYPE_BF16, n, nh, hd, s->qpos[v + 1] + local, s->inv_freq, ms,
                      st));
        a->q_alt[v] = s->q_alt[v];
    }
    if (mem && s->q_mem) { /* rope (YaRN): memory queries are q itself */
        TRY(cuda_copy(s->q_mem, s->q, qb, st));
        TRY(cuda_rope(s->q_mem, DTYPE_BF16, n, nh, hd, s->mpos + local, s->inv_freq, ms, st));
        a->q_mem = s->q_mem;
    }
    if (s->k_grp) {
        uint16_t *kg = s->k_grp[l] + kv_off;
        TRY(cuda_copy(kg, k_rot, (size_t)n * s->kv_dim * sizeof(uint16_t), st));
        TRY(cuda_rope(kg, DTYPE_BF16, n, nkv, hd, s->kpos_grp + local, s->inv_freq, ms, st));
        a->k_alt = s->k_grp[l];
    }
    TRY(cuda_rope(s->q, DTYPE_BF16, n, nh, hd, s->qpos[0] + local, s->inv_freq, ms, st));
    TRY(cuda_rope(k_rot, DTYPE_BF16, n, nkv, hd, s->kpos + local, s->inv_freq, ms, st));
    a->layout = s->pp.kind == POSITIONAL_DCA           ? CUDA_ATTN_DCA
                : s->pp.kind == POSITIONAL_SELF_EXTEND ? CUDA_ATTN_SELF_EXTEND
                                                       : CUDA_ATTN_PLAIN;
    a->neighbor = s->pp.neighbor;
    a->chunk_len = s->pp.chunk_len;
    if (mem && ms != 1.0f) a->mem_scale = s->scale * ms;
    return RC_OK;
}

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
    TRY(grow(s, &s->tws, &s->tws_bytes, need));
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
static rc_t knn_memory(backend_stream_t *s, int mi, int n, const uint16_t *mem_q,
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

/* The knn probe of memory layer mi (model/knn_probe.h) right after its knn memory part:
 * `exact` holds the layer's attention arguments as the exact path would pass them (memory
 * fields aside). Only reads the stream's buffers; a failure is logged and dropped, since a
 * measurement must not fail the forward it watches. */
static void knn_probe_layer(backend_stream_t *s, int l, int mi, int n,
                            const cuda_attn_args_t *exact, const uint16_t *mem_q, float mem_scale)
{
    const size_t total = s->mt.spill + s->mt.rows;
    if (n < 2 || !knn_probe_due(s->probe, mi, total)) return; /* prefill chunks only */
    const knn_probe_in_t in = {
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
    (void)knn_probe_run(s->probe, &in);
}

/* One layer over a chunk of n tokens already in s->x; the cache holds `local` before them. */
static rc_t layer_forward(backend_stream_t *s, int l, int n, int local)
{
    const model_config_t *c = s->c;
    const cuda_layer_w_t *W = &s->b->layers[l];
    cuda_layer_cache_t *L = &s->layers[l];
    const int hd = c->head_dim, hid = c->hidden;
    const size_t kv_off = (size_t)local * s->kv_dim;
    const int32_t *pos = s->pos + local;
    void *st = s->st;

    /* One token (decode): matrix-vector kernels with the RMSNorm, the residual add and
     * SwiGLU fused in; otherwise GEMMs. */
    const int one = n == 1 && s->gemv_ok;
    const int qkv_dim = s->q_dim + 2 * s->kv_dim;
    if (one) {
        TRY(cuda_gemv(CUDA_GEMV_BF16, s->qkv, W->wqkv, s->x, W->attn_norm, qkv_dim, hid,
                      c->rms_eps, st));
    } else {
        TRY(cuda_rmsnorm(s->xn, DTYPE_BF16, s->x, DTYPE_F32, W->attn_norm, n, hid, c->rms_eps,
                         st));
        TRY(cuda_matmul_nt(s->cx, s->qkv, DTYPE_BF16, s->xn, W->wqkv, n, qkv_dim, hid, 0.0f, st));
    }
    /* q rotated into s->q; keys and values land in the cache directly (rotated, and for
     * memory layers also unrotated). */
    uint16_t *k_rot = L->k_rot + kv_off;
    TRY(cuda_qkv_split_rope(s->qkv, n, c->n_heads, c->n_kv_heads, hd, s->ext ? NULL : pos,
                            s->inv_freq, s->q,
                            k_rot, L->k_raw ? L->k_raw + kv_off : NULL, L->v + kv_off, st));

    cuda_attn_args_t a = {
        .n_q = n,
        .n_k = local + n,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = hd,
        .q_offset = local,
        .dtype = DTYPE_BF16,
        .q = s->q,
        .k = L->k_rot,
        .v = L->v,
        .mem_dtype = s->mt.dtype,
        .scale = s->scale,
        .out = s->att,
    };
    const int mem = L->mem_layer >= 0 && !s->o.disable_memory &&
                    s->mt.spill + s->mt.rows > 0;
    const int knn = mem && s->knn;
    if (mem && !knn) {
        a.n_mem = s->mt.rows;
        a.mem_k = s->mt.k[L->mem_layer];
        a.mem_v = s->mt.v[L->mem_layer];
    }
    if (s->ext) TRY(positional_prepare(s, l, n, local, mem, &a));
    /* knn: the local part alone, with its log-sum-exp; the memory rows join it after. The
     * memory queries and score factor are the exact path's. */
    const uint16_t *mem_q = a.q_mem ? a.q_mem : a.q;
    const float mem_scale = a.mem_scale != 0.0f ? a.mem_scale : a.scale;
    const cuda_attn_args_t exact_a = a; /* for the probe: the exact path's call, less memory */
    if (knn) {
        a.q_mem = NULL;
        a.mem_scale = 0.0f;
        a.lse = s->k_lse;
    }
    TRY(attention(s, &a));
    if (knn) TRY(knn_memory(s, L->mem_layer, n, mem_q, mem_scale));
    if (knn && s->probe) knn_probe_layer(s, l, L->mem_layer, n, &exact_a, mem_q, mem_scale);
    if (one) {
        TRY(cuda_gemv(CUDA_GEMV_ADD_F32, s->x, W->wo, s->att, NULL, hid, s->q_dim, 0.0f, st));
        TRY(cuda_gemv(CUDA_GEMV_SWIGLU, s->gate, W->w_gu, s->x, W->ffn_norm, c->ffn, hid,
                      c->rms_eps, st));
        return cuda_gemv(CUDA_GEMV_ADD_F32, s->x, W->w_down, s->gate, NULL, hid, c->ffn, 0.0f,
                         st);
    }
    /* x += att · Woᵀ: the GEMM accumulates into the fp32 residual (beta = 1). */
    TRY(cuda_matmul_nt(s->cx, s->x, DTYPE_F32, s->att, W->wo, n, hid, s->q_dim, 1.0f, st));

    TRY(cuda_rmsnorm(s->xn, DTYPE_BF16, s->x, DTYPE_F32, W->ffn_norm, n, hid, c->rms_eps, st));
    TRY(cuda_matmul_nt(s->cx, s->gu, DTYPE_BF16, s->xn, W->w_gu, n, 2 * c->ffn, hid, 0.0f, st));
    TRY(cuda_swiglu_fused(s->gate, s->gu, n, c->ffn, st));
    TRY(cuda_matmul_nt(s->cx, s->x, DTYPE_F32, s->gate, W->w_down, n, hid, c->ffn, 1.0f, st));
    return RC_OK;
}

/* ---- one-token steps as CUDA graphs ------------------------------------------------- */

/* The attention workspace for a step at any local length (the split plan grows with the key
 * count, so the window's end needs the most), and in knn mode the top-k's: reserved before
 * capture, where the helpers could not grow them (that waits for the stream). */
static rc_t step_ws_reserve(backend_stream_t *s)
{
    const model_config_t *c = s->c;
    const int mem = c->n_mem_layers && !s->o.disable_memory && s->mt.rows > 0;
    cuda_attn_args_t a = {
        .n_q = 1,
        .n_k = s->W,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .q_offset = s->W - 1,
        .dtype = DTYPE_BF16,
        .n_mem = mem && !s->knn ? s->mt.rows : 0,
        .mem_dtype = s->mt.dtype,
        .scale = s->scale,
        .lse = mem && s->knn ? s->k_lse : NULL,
    };
    size_t need = 0;
    TRY(BACKEND_CUDA_ATTENTION_WORKSPACE(&a, &need));
    TRY(grow(s, &s->ws, &s->ws_bytes, need));
    if (!mem || !s->knn) return RC_OK;
    /* Graph steps have an empty spilled tier: k over the hot rows alone. */
    const int k = (size_t)s->o.knn_k < s->mt.rows ? s->o.knn_k : (int)s->mt.rows;
    cuda_topk_args_t t = {
        .n_q = 1,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .key_dtype = s->mt.dtype,
        .row0 = 0,
        .row1 = (int64_t)s->mt.rows,
        .k = k,
    };
    TRY(cuda_topk_workspace(&t, &need));
    return grow(s, &s->tws, &s->tws_bytes, need);
}

static struct graph_key step_key(const backend_stream_t *s, int local)
{
    struct graph_key k = {local, s->mt.rows, s->mt.spill, s->gen + s->mt.gen};
    return k;
}

/* Records one step at `local` (token from tok_host, logits to logits_host) into slot's
 * graph, unless the slot already holds exactly that step. */
static rc_t step_prepare(backend_stream_t *s, int slot, int local)
{
    const model_config_t *c = s->c;
    TRY(step_ws_reserve(s));
    const struct graph_key k = step_key(s, local);
    const struct graph_key *h = &s->g_key[slot];
    if (s->g_exec[slot] && h->local == k.local && h->mem_rows == k.mem_rows &&
        h->spill_rows == k.spill_rows && h->gen == k.gen)
        return RC_OK;
    s->g_key[slot].local = -1;
    void *run_st = s->st;
    TRY(cuda_capture_begin(s->cap_st));
    s->st = s->cap_st; /* everything below is recorded on the capture stream */
    rc_t rc = cuda_copy_async(s->tok, s->tok_host, sizeof(int32_t), s->st);
    if (!rc)
        rc = cuda_embedding(s->x, DTYPE_F32, s->b->tok_emb, s->tok, 1, c->vocab_size, c->hidden,
                            s->st);
    for (int l = 0; l < c->n_layers && !rc; l++) rc = layer_forward(s, l, 1, local);
    if (!rc)
        rc = cuda_gemv(CUDA_GEMV_F32, s->logits, s->b->lm_head, s->x, s->b->norm,
                       c->vocab_size, c->hidden, c->rms_eps, s->st);
    if (!rc)
        rc = cuda_copy_async(s->logits_host, s->logits, (size_t)c->vocab_size * sizeof(float),
                             s->st);
    s->st = run_st;
    rc_t rc2 = cuda_capture_end(s->cap_st, rc == RC_OK, &s->g_exec[slot]);
    if (rc || rc2) return rc ? rc : rc2;
    s->g_key[slot] = k;
    return RC_OK;
}

/* One decode step through a graph. RC_ERR_UNSUPPORTED: graphs do not work here (turned off
 * for this stream); the caller runs the step the ordinary way. */
static rc_t step_graph(backend_stream_t *s, int32_t tok, int local, float *last_logits)
{
    const int slot = s->g_next;
    if (step_prepare(s, slot, local)) {
        log_warn("backend %s: capturing a decode step failed; CUDA graphs are off for this "
                 "stream", s->b->describe);
        s->graphs = 0;
        return RC_ERR_UNSUPPORTED;
    }
    *s->tok_host = tok; /* the previous step has finished: nothing reads it now */
    TRY(cuda_graph_launch(s->g_exec[slot], s->st));
    s->g_next = slot ^ 1;
    /* While this step runs: the next position's step, the usual next call. A failure only
     * means the next call captures it itself. */
    if (local + 1 < s->W && step_prepare(s, slot ^ 1, local + 1)) s->g_key[slot ^ 1].local = -1;
    TRY(cuda_stream_sync(s->st));
    memcpy(last_logits, s->logits_host, (size_t)s->c->vocab_size * sizeof(float));
    return RC_OK;
}

static rc_t gpu_forward(backend_stream_t *s, const int32_t *tok, int n, int local,
                         const int32_t *targets, float *logprobs, float *last_logits)
{
    const model_config_t *c = s->c;
    if (n <= 0) return n == 0 ? RC_OK : RC_ERR_INVALID;
    if (local < 0 || local + n > s->W) return RC_ERR_INVALID;
    TRY(cuda_set_device(s->b->device));
    TRY(gpu_tier_sync(&s->mt, s->mem, s->knn != NULL));
    /* A spilled tier is searched on the host inside the step: not capturable. */
    if (n == 1 && s->graphs && !s->mt.spill && last_logits && !(logprobs && targets)) {
        rc_t rc = step_graph(s, tok[0], local, last_logits);
        if (rc != RC_ERR_UNSUPPORTED) return rc;
    }
    TRY(cuda_upload(s->tok, tok, (size_t)n * sizeof(int32_t), s->st));
    TRY(cuda_embedding(s->x, DTYPE_F32, s->b->tok_emb, s->tok, n, c->vocab_size, c->hidden,
                       s->st));
    for (int l = 0; l < c->n_layers; l++) TRY(layer_forward(s, l, n, local));

    const int want_lp = logprobs && targets;
    if (!want_lp && !last_logits) return cuda_stream_sync(s->st);
    if (want_lp) TRY(cuda_upload(s->tgt, targets, (size_t)n * sizeof(int32_t), s->st));
    /* Only the rows whose outputs are wanted go through the final norm and lm_head. */
    const int first = want_lp ? 0 : n - 1;
    for (int r0 = first; r0 < n; r0 += LOGIT_ROWS) {
        const int rows = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
        uint16_t *xr = s->xn + (size_t)r0 * c->hidden;
        if (rows == 1 && s->gemv_ok) {
            TRY(cuda_gemv(CUDA_GEMV_F32, s->logits, s->b->lm_head, s->x + (size_t)r0 * c->hidden,
                          s->b->norm, c->vocab_size, c->hidden, c->rms_eps, s->st));
        } else {
            TRY(cuda_rmsnorm(xr, DTYPE_BF16, s->x + (size_t)r0 * c->hidden, DTYPE_F32,
                             s->b->norm, rows, c->hidden, c->rms_eps, s->st));
            TRY(cuda_matmul_nt(s->cx, s->logits, DTYPE_F32, xr, s->b->lm_head, rows,
                               c->vocab_size, c->hidden, 0.0f, s->st));
        }
        if (want_lp)
            TRY(cuda_logprob_gather(s->lp + r0, s->logits, s->tgt + r0, rows, c->vocab_size,
                                    s->st));
        if (last_logits && r0 + rows == n)
            TRY(cuda_download(last_logits, s->logits + (size_t)(rows - 1) * c->vocab_size,
                              (size_t)c->vocab_size * sizeof(float), s->st));
    }
    if (want_lp) {
        TRY(cuda_download(s->lp_host, s->lp, (size_t)n * sizeof(float), s->st));
        for (int i = 0; i < n; i++)
            if (targets[i] >= 0) logprobs[i] = s->lp_host[i];
    }
    return cuda_stream_sync(s->st);
}

/* ---- flush / rewind ------------------------------------------------------------------ */

static rc_t gpu_flush(backend_stream_t *s, int local)
{
    const model_config_t *c = s->c;
    if (!c->n_mem_layers || local <= 0) return RC_OK;
    if (local > s->W) return RC_ERR_INVALID;
    TRY(cuda_set_device(s->b->device));
    TRY(gpu_tier_sync(&s->mt, s->mem, s->knn != NULL));
    const size_t before = memory_store_len(s->mem), n = (size_t)local;
    /* Exact: the budget must hold the new rows too (else nothing changes). knn: spill first
     * where the budget asks, but not the new rows themselves (not written yet): the next
     * sync moves the split to its place if that was short of it. */
    if (s->knn)
        TRY(gpu_tier_place(&s->mt, before + n, before));
    else
        TRY(gpu_tier_exact_fits(&s->mt, before + n));
    TRY(gpu_tier_reserve(&s->mt, before + n - s->mt.spill));
    /* The rows go into the mirror in mem_dtype first; the host store then gets those exact
     * bytes, so the two copies agree bit for bit. Device row of host row `before`: after the
     * sync and any spill the mirror holds exactly [mt.spill, before). */
    const size_t off = (before - s->mt.spill) * s->mt.row_bytes, bytes = n * s->mt.row_bytes;
    rc_t rc = RC_OK;
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const cuda_layer_cache_t *L = &s->layers[l];
        const int i = L->mem_layer;
        if (i < 0) continue;
        char *dk = (char *)s->mt.k[i] + off, *dv = (char *)s->mt.v[i] + off;
        const size_t elems = n * s->kv_dim;
        if ((rc = cuda_convert(dk, s->mt.dtype, L->k_raw, DTYPE_BF16, elems, s->st)) ||
            (rc = cuda_convert(dv, s->mt.dtype, L->v, DTYPE_BF16, elems, s->st)) ||
            (rc = cuda_download(s->flush_k, dk, bytes, s->st)) ||
            (rc = cuda_download(s->flush_v, dv, bytes, s->st)))
            break;
        rc = memory_store_append_raw(s->mem, i, s->flush_k, s->flush_v, n);
    }
    if (rc) {
        memory_store_truncate(s->mem, before); /* all layers or none */
        gpu_tier_written(&s->mt, before);
        return rc;
    }
    gpu_tier_written(&s->mt, before + n);
    return RC_OK;
}

static void gpu_memory_truncated(backend_stream_t *s, size_t rows)
{
    gpu_tier_truncated(&s->mt, rows);
    /* The spilled tier's index must drop rewound rows now: new rows of the same count would
     * otherwise look indexed already. A failed sync leaves the layer to be rebuilt. */
    for (int l = 0; s->knn && l < s->c->n_mem_layers; l++)
        if (memory_knn_rows(s->knn, l) > rows &&
            memory_knn_sync_rows(s->knn, s->mem, l, s->mt.spill))
            memory_knn_reset(s->knn, l);
}

/* ---- the spilled tier's index, persisted -------------------------------------------- */

/* The index of memory layer `layer`'s spilled rows. It is brought up to the split the
 * store's rows call for first (memory_tiers_spill_rows, a function of the row count), which is
 * where a restarted stream over the same rows splits: loaded there, it needs no adds. The
 * hot tier is searched exactly and has no index. */
static rc_t gpu_index_save(backend_stream_t *s, int layer, void **buf, size_t *len, size_t *rows)
{
    *buf = NULL;
    *len = 0;
    *rows = 0;
    if (!s->knn) return RC_ERR_UNSUPPORTED;
    if (layer < 0 || layer >= s->c->n_mem_layers) return RC_ERR_INVALID;
    const size_t split =
        memory_tiers_spill_rows(memory_store_rows(s->mem, layer), s->mt.hot_cap, (size_t)s->W);
    rc_t rc = memory_knn_sync_rows(s->knn, s->mem, layer, split);
    if (rc) return rc;
    *rows = memory_knn_rows(s->knn, layer);
    return memory_knn_save(s->knn, layer, buf, len);
}

static size_t gpu_device_bytes(backend_stream_t *s)
{
    return gpu_tier_bytes(&s->mt);
}

static rc_t gpu_index_load(backend_stream_t *s, int layer, const void *buf, size_t len,
                           size_t rows)
{
    if (!s->knn) return RC_ERR_UNSUPPORTED;
    if (layer < 0 || layer >= s->c->n_mem_layers) return RC_ERR_INVALID;
    /* A blob for more rows than the store holds cannot be right (rows never committed). A
     * blob past the split is fine: the next search trims it to the split. */
    if (rows > memory_store_rows(s->mem, layer)) return RC_ERR_FORMAT;
    return memory_knn_load(s->knn, layer, buf, len, rows);
}

static size_t gpu_index_bytes(backend_stream_t *s)
{
    return memory_knn_bytes(s->knn);
}

const backend_ops_t backend_cuda_ops = {
    .name = "cuda",
    .open = gpu_open,
    .close = gpu_close,
    .describe = gpu_describe,
    .stream_create = gpu_stream_create,
    .stream_destroy = gpu_stream_destroy,
    .forward = gpu_forward,
    .flush = gpu_flush,
    .memory_truncated = gpu_memory_truncated,
    .index_save = gpu_index_save,
    .index_load = gpu_index_load,
    .device_bytes = gpu_device_bytes,
    .device_memory = gpu_device_memory,
    .index_bytes = gpu_index_bytes,
};

#else
/* ISO C forbids an empty translation unit. */
typedef int backend_cuda_unused_t;
#endif
