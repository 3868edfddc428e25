/* backend_cuda.c — the CUDA backend: the forward pass of backend_cpu.c on one GPU.
 *
 * Weights: uploaded once at open as bf16 from the checkpoint's memory map (model/weights.h,
 * model_stored_t): bf16 tensors as they are, others widened to fp32 a chunk at a time and
 * rounded on the device, nearest-even like torch. No fp32 copy of the model is made.
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
 * re-mirrors from the host store. Exact mode spills the same way: a memory layer then
 * attends over the device rows with the local keys (keeping the log-sum-exp), and the
 * spilled rows go through the device SPILL_CHUNK_ROWS at a time, each chunk attended alone
 * by the tensor-core kernel (mem_only) and folded in by cuda_attn_merge: the same softmax,
 * at the cost of uploading the spilled rows every forward. The index is the session's
 * (memory/session_memory.h), borrowed through the stream. A measurement tool may watch each
 * knn layer through model/knn_observe.h (bench/knn_probe.c does).
 *
 * Files: this one (open, streams, flush, rewind), backend_cuda_forward.c (the forward
 * pass), backend_cuda_knn.c (knn memory); backend_cuda_internal.h is what they share.
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
#include "model/backend_cuda_internal.h"

#ifdef RECALL_HAVE_CUDA

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "memory/tiers.h"
#include "model/weights.h"

/* ---- open / close -------------------------------------------------------------------- */

/* Uploads a stored tensor (model/weights.h) as bf16 into dst (numel elements allocated).
 * bf16 goes up as stored; other dtypes are widened to fp32 on the host one chunk at a time
 * (into `chunk`, UPLOAD_CHUNK floats) and rounded on the device through the fp32 staging
 * buffer, nearest-even like torch. So the host never holds more than a chunk of fp32. */
static rc_t upload_into(uint16_t *dst, const model_tensor_t *t, float *staging, float *chunk)
{
    if (t->dtype == DTYPE_BF16) return cuda_upload(dst, t->data, t->numel * sizeof(uint16_t), NULL);
    const size_t es = dtype_size(t->dtype);
    for (size_t off = 0; off < t->numel; off += UPLOAD_CHUNK) {
        size_t cnt = t->numel - off < UPLOAD_CHUNK ? t->numel - off : UPLOAD_CHUNK;
        /* Also for F32: the map leaves no alignment promise. */
        dtype_to_f32(chunk, (const char *)t->data + off * es, t->dtype, cnt);
        /* cuda_upload waits for its copy, and the previous chunk's conversion ran before it
         * on the same (default) stream, so the staging buffer is free to overwrite. */
        TRY(cuda_upload(staging, chunk, cnt * sizeof(float), NULL));
        TRY(cuda_convert(dst + off, DTYPE_BF16, staging, DTYPE_F32, cnt, NULL));
    }
    return RC_OK;
}

static rc_t upload(uint16_t **dst, const model_tensor_t *t, float *staging, float *chunk)
{
    TRY(cuda_alloc((void **)dst, t->numel * sizeof(uint16_t)));
    return upload_into(*dst, t, staging, chunk);
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
    const model_stored_t *w = model_get_stored(m);
    if (!w) /* model_backend_open checks them first */
        return rc_errf(RC_ERR_INVALID, err, errlen, "cuda:%d: the model's weights are not checked",
                       device);
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
    const int tied = w->lm_head.data == w->tok_emb.data;
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
    float *staging = NULL, *chunk = NULL;
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
    if (!(chunk = malloc(UPLOAD_CHUNK * sizeof(float)))) {
        rc = RC_ERR_NOMEM;
        goto fail;
    }
    const size_t h = (size_t)c->hidden, qd = (size_t)c->n_heads * c->head_dim,
                 kvd = (size_t)c->n_kv_heads * c->head_dim, f = (size_t)c->ffn;
    if ((rc = upload(&b->tok_emb, &w->tok_emb, staging, chunk))) goto fail;
    if ((rc = upload(&b->norm, &w->norm, staging, chunk))) goto fail;
    if (tied)
        b->lm_head = b->tok_emb;
    else if ((rc = upload(&b->lm_head, &w->lm_head, staging, chunk)))
        goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        const model_stored_layer_t *S = &w->layers[l];
        cuda_layer_w_t *D = &b->layers[l];
        if ((rc = upload(&D->attn_norm, &S->attn_norm, staging, chunk)) ||
            (rc = cuda_alloc((void **)&D->wqkv, (qd + 2 * kvd) * h * sizeof(uint16_t))))
            goto fail;
        D->wq = D->wqkv;
        D->wk = D->wq + qd * h;
        D->wv = D->wk + kvd * h;
        if ((rc = upload_into(D->wq, &S->wq, staging, chunk)) ||
            (rc = upload_into(D->wk, &S->wk, staging, chunk)) ||
            (rc = upload_into(D->wv, &S->wv, staging, chunk)) ||
            (rc = upload(&D->wo, &S->wo, staging, chunk)) ||
            (rc = upload(&D->ffn_norm, &S->ffn_norm, staging, chunk)) ||
            (rc = cuda_alloc((void **)&D->w_gu, 2 * f * h * sizeof(uint16_t))))
            goto fail;
        D->w_gate = D->w_gu;
        D->w_up = D->w_gu + f * h;
        if ((rc = upload_into(D->w_gate, &S->w_gate, staging, chunk)) ||
            (rc = upload_into(D->w_up, &S->w_up, staging, chunk)) ||
            (rc = upload(&D->w_down, &S->w_down, staging, chunk)))
            goto fail;
    }
    if ((rc = cuda_stream_sync(NULL))) goto fail;
    cuda_free((void **)&staging);
    free(chunk);
    log_info("backend: %s: %.2f GB of bf16 weights uploaded", b->describe, need / 1e9);
    *ctx = b;
    return RC_OK;
fail:
    snprintf(err, errlen, "cuda:%d (%s): uploading the weights failed: %s", device, info.name,
             rc_strerror(rc));
    cuda_free((void **)&staging);
    free(chunk);
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
    void **kdev[] = {(void **)&s->k_lse, (void **)&s->k_sc,   (void **)&s->k_idx,
                     &s->tws,            (void **)&s->k_hidx, &s->d_gk,
                     &s->d_gv,           (void **)&s->x_lse,  (void **)&s->x_clse,
                     (void **)&s->x_cout, &s->x_ck,           &s->x_cv};
    for (size_t i = 0; i < sizeof kdev / sizeof kdev[0]; i++) cuda_free(kdev[i]);
    void **kpin[] = {(void **)&s->h_q16, (void **)&s->h_hsc, (void **)&s->h_hidx,
                     (void **)&s->h_enc, &s->h_gk, &s->h_gv};
    for (size_t i = 0; i < sizeof kpin / sizeof kpin[0]; i++) cuda_host_free(kpin[i]);
    free(s->h_q);
    free(s->h_ssc);
    free(s->h_sidx);
    free(s->h_mrg);
    knn_slots_destroy(&s->slots);
    cuda_stream_destroy(&s->st);
    cuda_ctx_destroy(&s->cx);
    free(s);
}

static rc_t gpu_stream_create(void *ctx, const model_stream_opts_t *o, memory_store_t *mem,
                               memory_knn_t *knn_index, backend_stream_t **out, char *err,
                               size_t errlen)
{
    cuda_backend_t *b = ctx;
    const model_config_t *c = b->c;
    *out = NULL;
    if (c->n_mem_layers && o->mem_dtype != DTYPE_F32 && o->mem_dtype != DTYPE_BF16)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "memory dtype %s is not supported on %s (f32 and bf16 are; or use "
                       "--device cpu)",
                       dtype_name(o->mem_dtype), b->describe);
    const int knn = c->n_mem_layers && o->memory_knn;
    if (knn && (o->knn_k < 1 || !knn_index))
        return rc_errf(RC_ERR_INVALID, err, errlen, "knn memory without k or an index");
    if (knn && o->knn_k > CUDA_TOPK_MAX_K)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "knn k %d is more than the GPU top-k takes (%d); use a smaller --k or "
                       "--device cpu",
                       o->knn_k, CUDA_TOPK_MAX_K);
    if (o->window <= 0) return rc_errf(RC_ERR_INVALID, err, errlen, "window not resolved");
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
    if (!rc && ext && dev_info.cc_major < 8) /* only the tensor-core attention computes
                                               * the per-pair scores */
        rc = rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                     "positional scheme '%s' (RoPE scaling '%s') needs an sm_80 or later GPU; "
                     "use --device cpu",
                     positional_name(pp.kind), positional_scaling_name(o->rope_scaling));
    else if (rc)
        rc_errf(rc, err, errlen, "cannot query %s: %s", b->describe, rc_strerror(rc));
    if (!rc && (rc = cuda_set_device(b->device)))
        rc_errf(rc, err, errlen, "cannot select %s: %s", b->describe, rc_strerror(rc));
    if (rc) {
        free(inv_freq);
        return rc;
    }

    backend_stream_t *s = calloc(1, sizeof *s);
    if (!s) {
        free(inv_freq);
        return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
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
        s->knn = knn_index;
        if ((rc = cuda_alloc((void **)&s->k_lse, lists * sizeof(float))) ||
            (rc = cuda_alloc((void **)&s->k_sc, lists * (size_t)o->knn_k * sizeof(float))) ||
            (rc = cuda_alloc((void **)&s->k_idx, lists * (size_t)o->knn_k * sizeof(int32_t))))
            goto fail;
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
    return rc_errf(rc, err, errlen, "cannot set up a stream of window %d on %s: %s%s", o->window,
                   b->describe, rc_strerror(rc),
                   rc == RC_ERR_NOMEM ? " (device memory: a smaller --window, or fewer sessions "
                                        "on the GPU)"
                                      : "");
}

/* ---- flush / rewind ------------------------------------------------------------------ */

static rc_t gpu_flush(backend_stream_t *s, int local)
{
    const model_config_t *c = s->c;
    if (!c->n_mem_layers || local <= 0) return RC_OK;
    if (local > s->W) return RC_ERR_INVALID;
    TRY(cuda_set_device(s->b->device));
    TRY(gpu_tier_sync(&s->mt, s->mem));
    const size_t before = memory_store_len(s->mem), n = (size_t)local;
    /* Spill first where the budget asks, but not the new rows themselves (not written yet):
     * the next sync moves the split to its place if that was short of it. */
    TRY(gpu_tier_place(&s->mt, before + n, before));
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

static size_t gpu_device_bytes(backend_stream_t *s)
{
    return gpu_tier_bytes(&s->mt);
}

const backend_ops_t backend_cuda_ops = {
    .name = "cuda",
    .open = gpu_open,
    .close = gpu_close,
    .describe = gpu_describe,
    .stream_create = gpu_stream_create,
    .stream_destroy = gpu_stream_destroy,
    .forward = cuda_stream_forward,
    .flush = gpu_flush,
    .memory_truncated = gpu_memory_truncated,
    .device_bytes = gpu_device_bytes,
    .device_memory = gpu_device_memory,
};

#else
/* ISO C forbids an empty translation unit. */
typedef int backend_cuda_unused_t;
#endif
