/* backend_cuda_forward.c — the CUDA backend's forward pass: a chunk of tokens through every
 * layer (GEMMs, or matrix-vector kernels for one token), the positional schemes' extra
 * rotations, and one-token steps replayed as CUDA graphs. The design notes are at the top
 * of backend_cuda.c. */
#include "model/backend_cuda_internal.h"

#ifdef RECALL_HAVE_CUDA

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* ---- forward ------------------------------------------------------------------------- */

rc_t cuda_stream_grow(backend_stream_t *s, void **buf, size_t *bytes, size_t need)
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
    TRY(cuda_stream_grow(s, &s->ws, &s->ws_bytes, need));
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

/* The scratch of exact_spilled, made once. */
static rc_t exact_spill_alloc(backend_stream_t *s)
{
    if (s->x_ck) return RC_OK;
    const size_t rows = (size_t)s->W * (size_t)s->c->n_heads;
    TRY(cuda_alloc((void **)&s->x_lse, rows * sizeof(float)));
    TRY(cuda_alloc((void **)&s->x_clse, rows * sizeof(float)));
    TRY(cuda_alloc((void **)&s->x_cout, (size_t)s->W * s->q_dim * sizeof(uint16_t)));
    TRY(cuda_alloc(&s->x_cv, SPILL_CHUNK_ROWS * s->mt.row_bytes));
    return cuda_alloc(&s->x_ck, SPILL_CHUNK_ROWS * s->mt.row_bytes);
}

/* Exact memory below the device tier: `a` has run over the local keys and the device rows
 * with its log-sum-exp in x_lse; memory layer mi's host rows [0, mt.spill) are attended
 * now, a chunk at a time (memory alone, the same queries and score factor), and merged in.
 * One buffer pair: each chunk's upload is ordered on the stream after the previous chunk's
 * attention and merge. */
static rc_t exact_spilled(backend_stream_t *s, int mi, const cuda_attn_args_t *a)
{
    const size_t rb = s->mt.row_bytes, spill = s->mt.spill;
    const char *hk = memory_store_keys(s->mem, mi), *hv = memory_store_values(s->mem, mi);
    cuda_attn_args_t c = *a;
    c.mem_only = 1;
    c.mem_k = s->x_ck;
    c.mem_v = s->x_cv;
    c.out = s->x_cout;
    c.lse = s->x_clse;
    for (size_t r0 = 0; r0 < spill; r0 += SPILL_CHUNK_ROWS) {
        const size_t n = spill - r0 < SPILL_CHUNK_ROWS ? spill - r0 : SPILL_CHUNK_ROWS;
        TRY(cuda_upload(s->x_ck, hk + r0 * rb, n * rb, s->st));
        TRY(cuda_upload(s->x_cv, hv + r0 * rb, n * rb, s->st));
        c.n_mem = n;
        TRY(attention(s, &c));
        TRY(cuda_attn_merge(s->att, s->x_lse, s->x_cout, s->x_clse,
                            (size_t)a->n_q * (size_t)s->c->n_heads, s->c->head_dim, DTYPE_BF16,
                            s->st));
    }
    return RC_OK;
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
    const int spilled = mem && !knn && s->mt.spill > 0;
    if (mem && !knn) {
        a.n_mem = s->mt.rows;
        a.mem_k = s->mt.k[L->mem_layer];
        a.mem_v = s->mt.v[L->mem_layer];
    }
    if (spilled) {
        TRY(exact_spill_alloc(s));
        a.lse = s->x_lse;
    }
    if (s->ext) TRY(positional_prepare(s, l, n, local, mem, &a));
    /* knn: the local part alone, with its log-sum-exp; the memory rows join it after. The
     * memory queries and score factor are the exact path's. */
    const uint16_t *mem_q = a.q_mem ? a.q_mem : a.q;
    const float mem_scale = a.mem_scale != 0.0f ? a.mem_scale : a.scale;
    const cuda_attn_args_t exact_a = a; /* for an observer: the exact path's call, less memory */
    if (knn) {
        a.q_mem = NULL;
        a.mem_scale = 0.0f;
        a.lse = s->k_lse;
    }
    TRY(attention(s, &a));
    if (spilled) TRY(exact_spilled(s, L->mem_layer, &a));
    if (knn) TRY(cuda_stream_knn_memory(s, L->mem_layer, n, mem_q, mem_scale));
    if (knn) cuda_stream_knn_observe(s, l, L->mem_layer, n, &exact_a, mem_q, mem_scale);
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
    TRY(cuda_stream_grow(s, &s->ws, &s->ws_bytes, need));
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
    return cuda_stream_grow(s, &s->tws, &s->tws_bytes, need);
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

rc_t cuda_stream_forward(backend_stream_t *s, const int32_t *tok, int n, int local,
                         const int32_t *targets, float *logprobs, float *last_logits)
{
    const model_config_t *c = s->c;
    if (n <= 0) return n == 0 ? RC_OK : RC_ERR_INVALID;
    if (local < 0 || local + n > s->W) return RC_ERR_INVALID;
    TRY(cuda_set_device(s->b->device));
    TRY(gpu_tier_sync(&s->mt, s->mem));
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

#else
/* ISO C forbids an empty translation unit. */
typedef int backend_cuda_forward_unused_t;
#endif
