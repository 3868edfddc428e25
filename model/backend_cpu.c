/* backend_cpu.c — the CPU backend: fp32 forward pass with the reference kernels.
 *
 * Per layer a stream keeps a local cache of at most `window` tokens: rotated keys and
 * values for local attention, and for memory layers also the unrotated keys, which is
 * what moves into memory when the window is complete. Positions inside the window start
 * at 0 because the whole cache is dropped at once, never shifted.
 *
 * Positional schemes (model/positional.h): a key has one position per scheme, except under
 * Self-Extend where it is cached rotated twice (at j and at j // G); each query is rotated
 * every way its scheme can pair it (Self-Extend 2, DCA 3, plus the position it takes against
 * memory keys), and cpu_attention_ext picks per (query, key) pair which score to use. All
 * positions depend only on the index inside the window, so grouping does not matter.
 *
 * CLEX is plain RoPE at the forward's row t of the checkpoint's frequency table (t from the
 * forward's local key count: positional.h). Every layer then also caches its unrotated keys
 * and remembers the row its rotated keys were made with; a forward whose t differs rotates
 * the whole cache again from the unrotated keys, one with the same t only its new keys
 * (the same numbers, since a key's rotation depends only on its index and the row). Queries
 * are multiplied by the log_scale factor after rotation.
 *
 * GALI cuts a forward into pieces (positional_gali_piece) and runs each as its own forward.
 * A piece whose window holds at most L tokens at its end is plain RoPE. Past L, every key
 * of the window is rotated again from the unrotated cache at ⌈p_k⌉ into k_rot, the keys
 * that may sit at fractional positions also at ⌊p_k⌋ into k_grp, the piece's queries at
 * ⌈p_q⌉, and cpu_attention_ext's GALI layout mixes the two scores per pair. */
#define BACKEND_INTERNAL
#include "model/backend.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu.h"
#include "memory/knn.h"
#include "model/positional.h"
#include "model/stream.h"
#include "model/weights.h"

/* Rows of logits computed at once: bounds the scratch to LOGIT_ROWS × vocab floats. */
#define LOGIT_ROWS 64

typedef struct cpu_ctx {
    const model_t *model;
} cpu_ctx_t;

typedef struct layer_cache {
    float *k_rot;  /* [window, kv_dim] keys rotated at their local position */
    float *k_raw;  /* [window, kv_dim] unrotated keys (memory layers only, else NULL) */
    float *k_grp;  /* [window, kv_dim] self-extend: keys rotated at j // G; gali: at ⌊p_k⌋ */
    float *v;      /* [window, kv_dim] */
    int mem_layer; /* index into the memory store, or -1 */
    int clex_t;    /* clex: the table row k_rot's cached keys are rotated with; 0 none */
} layer_cache_t;

struct backend_stream {
    const model_config_t *c;
    const model_weights_t *w;
    model_stream_opts_t o;
    memory_store_t *mem; /* borrowed from the stream */
    int q_dim, kv_dim;
    int local;             /* tokens in the local cache during a forward */
    layer_cache_t *layers; /* [n_layers] */
    float *inv_freq;       /* [head_dim / 2] RoPE frequencies after any scaling */
    float mscale;          /* cos/sin multiplier: YaRN's attention factor, DCA's chunk scale */
    positional_params_t pp;
    int need_qmem;         /* memory queries need their own rotation (not rope) */
    /* clex only: the table (the model's), this forward's row and query factor, and the
     * positions 0 … window − 1 for rotating a whole cache. */
    const float *clex_freq; /* [M, head_dim / 2] */
    const float *clex_row;  /* this forward's row of clex_freq */
    int clex_t;
    float clex_qscale; /* log_scale's ln(n) / ln(L), else 1 */
    int32_t *pos_all;  /* [window] j */
    /* gali only: whether this piece runs past L, the window's positions for it, their
     * ceilings and floors, the piece's ⌈p_q⌉ and how many keys may be fractional. */
    int gali_active;
    float *gali_pos;     /* [window] */
    int32_t *gali_ceil;  /* [window] */
    int32_t *gali_floor; /* [window] */
    float *gali_qpos;    /* [window] */
    int gali_n_frac;

    /* Scratch for one chunk of up to `window` tokens. */
    float *x;      /* [window, hidden] residual stream */
    float *xn;     /* [window, hidden] normalized / product outputs */
    float *q;      /* [window, q_dim] */
    float *k;      /* [window, kv_dim] */
    float *v;      /* [window, kv_dim] */
    float *att;    /* [window, q_dim] */
    float *gate;   /* [window, ffn] */
    float *up;     /* [window, ffn] */
    int32_t *pos;  /* [window] the chunk's window indices: rope's positions */
    /* Extended schemes only (else NULL): the chunk's other positions and query rotations. */
    int32_t *kpos;     /* [window] the cached key's position (dca: j mod c) */
    int32_t *kpos_grp; /* [window] self-extend: j // G */
    int32_t *qpos[3];  /* [window] each: query position per variant (cpu_attention_ext order) */
    int32_t *mpos;     /* [window] query position against memory keys */
    float *q_alt[2];   /* [window, q_dim] each: queries of variants 2 and 3 */
    float *q_mem;      /* [window, q_dim] queries against memory (FoT models) */
    float *logits; /* [LOGIT_ROWS, vocab] */
    /* knn memory mode only (else NULL): the index over the memory keys (borrowed from the
     * stream), kept in line with the host store (rows added lazily before a search, the
     * tail dropped on a rewind), and each query's memory rows. */
    memory_knn_t *knn;
    int64_t *knn_idx; /* [window, n_heads, knn_k] */
};

static rc_t cpu_open(const model_t *m, int device, void **ctx, char *err, size_t errlen)
{
    (void)device;
    if (!model_has_f32_weights(m)) /* model_backend_open converts them first */
        return rc_errf(RC_ERR_INVALID, err, errlen, "cpu: the model's weights are not loaded");
    cpu_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return RC_ERR_NOMEM;
    c->model = m;
    *ctx = c;
    return RC_OK;
}

static void cpu_close(void *ctx)
{
    free(ctx);
}

static const char *cpu_describe(void *ctx)
{
    (void)ctx;
    return "cpu";
}

static void cpu_stream_destroy(backend_stream_t *s)
{
    if (!s) return;
    if (s->layers) {
        for (int l = 0; l < s->c->n_layers; l++) {
            free(s->layers[l].k_rot);
            free(s->layers[l].k_raw);
            free(s->layers[l].k_grp);
            free(s->layers[l].v);
        }
    }
    free(s->layers);
    free(s->inv_freq);
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->gate);
    free(s->up);
    free(s->pos);
    free(s->pos_all);
    free(s->gali_pos);
    free(s->gali_ceil);
    free(s->gali_floor);
    free(s->gali_qpos);
    free(s->kpos);
    free(s->kpos_grp);
    for (int v = 0; v < 3; v++) free(s->qpos[v]);
    free(s->mpos);
    free(s->q_alt[0]);
    free(s->q_alt[1]);
    free(s->q_mem);
    free(s->logits);
    free(s->knn_idx);
    free(s);
}

static rc_t cpu_stream_create(void *ctx, const model_stream_opts_t *o, memory_store_t *mem,
                              memory_knn_t *knn, backend_stream_t **out, char *err,
                              size_t errlen)
{
    const model_t *m = ((cpu_ctx_t *)ctx)->model;
    const model_config_t *c = model_get_config(m);
    *out = NULL;
    if (c->head_dim % 2)
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "head_dim %d is odd: RoPE rotates pairs of elements", c->head_dim);
    if (o->memory_knn && c->n_mem_layers > 0 && (o->knn_k < 1 || !knn))
        return rc_errf(RC_ERR_INVALID, err, errlen, "knn memory without k or an index");
    backend_stream_t *s = calloc(1, sizeof *s);
    if (!s) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    s->c = c;
    s->w = model_get_weights(m);
    s->o = *o;
    s->mem = mem;
    s->q_dim = c->n_heads * c->head_dim;
    s->kv_dim = c->n_kv_heads * c->head_dim;
    const size_t W = (size_t)o->window;

    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers) goto fail;
    for (int l = 0; l < c->n_layers; l++) {
        layer_cache_t *L = &s->layers[l];
        L->mem_layer = -1;
        for (int i = 0; i < c->n_mem_layers; i++)
            if (c->mem_layers[i] == l) L->mem_layer = i;
        L->k_rot = malloc(W * s->kv_dim * sizeof(float));
        L->v = malloc(W * s->kv_dim * sizeof(float));
        if (!L->k_rot || !L->v) goto fail;
        if ((L->mem_layer >= 0 || o->positional == POSITIONAL_CLEX ||
             o->positional == POSITIONAL_GALI) &&
            !(L->k_raw = malloc(W * s->kv_dim * sizeof(float))))
            goto fail;
        if ((o->positional == POSITIONAL_SELF_EXTEND || o->positional == POSITIONAL_GALI) &&
            !(L->k_grp = malloc(W * s->kv_dim * sizeof(float))))
            goto fail;
    }
    s->inv_freq = malloc((size_t)c->head_dim / 2 * sizeof(float));
    s->x = malloc(W * c->hidden * sizeof(float));
    s->xn = malloc(W * c->hidden * sizeof(float));
    s->q = malloc(W * s->q_dim * sizeof(float));
    s->k = malloc(W * s->kv_dim * sizeof(float));
    s->v = malloc(W * s->kv_dim * sizeof(float));
    s->att = malloc(W * s->q_dim * sizeof(float));
    s->gate = malloc(W * c->ffn * sizeof(float));
    s->up = malloc(W * c->ffn * sizeof(float));
    s->pos = malloc(W * sizeof(int32_t));
    s->logits = malloc((size_t)LOGIT_ROWS * c->vocab_size * sizeof(float));
    if (!s->inv_freq || !s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->gate ||
        !s->up || !s->pos || !s->logits)
        goto fail;

    /* Opts come resolved (model_stream_opts_resolve): scaling, factor and DCA sizes are set. */
    s->pp = positional_params(c, o);
    positional_rope_freqs(c, o->rope_scaling, o->rope_factor, o->window, s->inv_freq,
                          &s->mscale);
    if (o->positional == POSITIONAL_DCA && !o->dca_no_scale)
        s->mscale = positional_dca_scale(o->window, c->max_pos);
    if (o->positional == POSITIONAL_DCA && s->pp.chunk_len < 1) goto invalid; /* unresolved */
    if (o->positional == POSITIONAL_CLEX) {
        /* Opts that passed positional_resolve: a CLEX checkpoint, window ≤ M · L. */
        s->clex_freq = s->w->clex_freq;
        if (!c->clex || !s->clex_freq || o->window > (int64_t)c->clex_max_factor * c->max_pos)
            goto invalid;
        if (!(s->pos_all = malloc(W * sizeof(int32_t)))) goto fail;
        for (size_t j = 0; j < W; j++)
            s->pos_all[j] = (int32_t)j;
        s->mscale = 1.0f;
    }
    if (o->positional == POSITIONAL_SELF_EXTEND && (s->pp.group < 1 || s->pp.neighbor < 1))
        goto invalid;
    if (o->positional == POSITIONAL_GALI) {
        /* Opts that passed positional_resolve: 0 ≤ w < L, 1 ≤ c ≤ L, no knn memory. */
        if (o->local_window < 0 || o->local_window >= c->max_pos || o->chunk_size < 1 ||
            o->chunk_size > c->max_pos || o->memory_knn)
            goto invalid;
        s->gali_pos = malloc(W * sizeof(float));
        s->gali_ceil = malloc(W * sizeof(int32_t));
        s->gali_floor = malloc(W * sizeof(int32_t));
        s->gali_qpos = malloc(W * sizeof(float));
        if (!s->gali_pos || !s->gali_ceil || !s->gali_floor || !s->gali_qpos) goto fail;
    }
    if (o->memory_knn && c->n_mem_layers > 0) {
        s->knn = knn;
        if (!(s->knn_idx = malloc(W * c->n_heads * (size_t)o->knn_k * sizeof(int64_t))))
            goto fail;
    }
    if (o->positional == POSITIONAL_SELF_EXTEND || o->positional == POSITIONAL_DCA) {
        const int n_alt = o->positional == POSITIONAL_DCA ? 2 : 1;
        s->need_qmem = c->n_mem_layers > 0;
        s->kpos = malloc(W * sizeof(int32_t));
        s->mpos = malloc(W * sizeof(int32_t));
        if (!s->kpos || !s->mpos) goto fail;
        if (o->positional == POSITIONAL_SELF_EXTEND && !(s->kpos_grp = malloc(W * sizeof(int32_t))))
            goto fail;
        for (int v = 0; v <= n_alt; v++)
            if (!(s->qpos[v] = malloc(W * sizeof(int32_t)))) goto fail;
        for (int v = 0; v < n_alt; v++)
            if (!(s->q_alt[v] = malloc(W * s->q_dim * sizeof(float)))) goto fail;
        if (s->need_qmem && !(s->q_mem = malloc(W * s->q_dim * sizeof(float)))) goto fail;
    }
    *out = s;
    return RC_OK;
fail:
    cpu_stream_destroy(s);
    return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory for a stream of window %d",
                   o->window);
invalid:
    cpu_stream_destroy(s);
    return rc_errf(RC_ERR_INVALID, err, errlen,
                   "session options the stream cannot take (not resolved, or a positional "
                   "scheme with knn memory)");
}

/* Each query's top-k memory rows into s->knn_idx [n, n_heads, k]. The index is brought in
 * line with the store first (adding rows, training at a threshold: Faiss threads itself);
 * then the queries are searched in blocks, one per thread, each block a plain Faiss search
 * on one thread (its BLAS included: cpu_forward holds OpenBLAS at one thread). A query's list does not depend on its block: every
 * query is scored against the same rows, and blocks of at least KNN_BLOCK_MIN queries keep
 * Faiss's flat search on the same (BLAS) scoring path a whole window takes (below 20
 * queries it switches to another loop, whose last bits differ). */
#define KNN_BLOCK_MIN 32

static rc_t knn_search(backend_stream_t *s, int layer, const float *q, int n, int k)
{
    const model_config_t *c = s->c;
    rc_t rc = memory_knn_sync(s->knn, s->mem, layer);
    if (rc) return rc;
    int nb = omp_get_max_threads();
    if (nb > n / KNN_BLOCK_MIN) nb = n / KNN_BLOCK_MIN;
    if (nb > 64) nb = 64;
    if (nb < 2) return memory_knn_search(s->knn, s->mem, layer, q, n, c->n_heads, k, s->knn_idx);
    const int blk = (n + nb - 1) / nb;
    const size_t q_row = (size_t)c->n_heads * c->head_dim, i_row = (size_t)c->n_heads * k;
    rc_t rcs[64] = {0};
    /* Searches only read the synced index (memory/knn.c), so blocks may run at once. */
#pragma omp parallel for num_threads(nb) schedule(static)
    for (int b = 0; b < nb; b++) {
        const int lo = b * blk, cnt = n - lo < blk ? n - lo : blk;
        if (cnt > 0)
            rcs[b] = memory_knn_search(s->knn, s->mem, layer, q + (size_t)lo * q_row, cnt,
                                       c->n_heads, k, s->knn_idx + (size_t)lo * i_row);
    }
    for (int b = 0; b < nb; b++)
        if (rcs[b]) return rcs[b];
    return RC_OK;
}

/* One layer over a chunk of n tokens already in s->x. Fails only in knn mode (search). */
static rc_t layer_forward(backend_stream_t *s, int l, int n)
{
    const model_config_t *c = s->c;
    const model_layer_t *W = &s->w->layers[l];
    layer_cache_t *L = &s->layers[l];
    const int hd = c->head_dim;
    const size_t kvb = (size_t)s->kv_dim * sizeof(float);

    cpu_rmsnorm(s->xn, s->x, W->attn_norm, n, c->hidden, c->rms_eps);
    cpu_matmul_nt(s->q, s->xn, W->wq, n, s->q_dim, c->hidden);
    cpu_matmul_nt(s->k, s->xn, W->wk, n, s->kv_dim, c->hidden);
    cpu_matmul_nt(s->v, s->xn, W->wv, n, s->kv_dim, c->hidden);
    if (L->k_raw) memcpy(L->k_raw + (size_t)s->local * s->kv_dim, s->k, n * kvb);
    const int use_mem = L->mem_layer >= 0 && !s->o.disable_memory &&
                        memory_store_rows(s->mem, L->mem_layer) > 0;
    const size_t qb = (size_t)n * s->q_dim * sizeof(float);
    attn_ext_args_t e = {.layout = CPU_ATTN_PLAIN};
    if (s->pp.kind == POSITIONAL_ROPE || (s->pp.kind == POSITIONAL_GALI && !s->gali_active)) {
        cpu_rope(s->q, n, c->n_heads, hd, s->pos, s->inv_freq, s->mscale);
        cpu_rope(s->k, n, c->n_kv_heads, hd, s->pos, s->inv_freq, s->mscale);
    } else if (s->pp.kind == POSITIONAL_CLEX) {
        cpu_rope(s->q, n, c->n_heads, hd, s->pos, s->clex_row, 1.0f);
        if (s->clex_qscale != 1.0f)
            for (size_t i = 0; i < (size_t)n * s->q_dim; i++)
                s->q[i] *= s->clex_qscale;
        if (L->clex_t != s->clex_t && s->local > 0) {
            /* The cached keys were rotated with another row: rotate them all again. */
            memcpy(L->k_rot, L->k_raw, (size_t)s->local * kvb);
            cpu_rope(L->k_rot, s->local, c->n_kv_heads, hd, s->pos_all, s->clex_row, 1.0f);
        }
        L->clex_t = s->clex_t;
        cpu_rope(s->k, n, c->n_kv_heads, hd, s->pos, s->clex_row, 1.0f);
    } else if (s->pp.kind == POSITIONAL_GALI) {
        /* Past L: every key moves with the table, so all are rotated again. */
        const int nf = s->gali_n_frac;
        cpu_rope(s->q, n, c->n_heads, hd, s->gali_ceil + s->local, s->inv_freq, 1.0f);
        cpu_rope(s->k, n, c->n_kv_heads, hd, s->gali_ceil + s->local, s->inv_freq, 1.0f);
        if (s->local > 0) {
            memcpy(L->k_rot, L->k_raw, (size_t)s->local * kvb);
            cpu_rope(L->k_rot, s->local, c->n_kv_heads, hd, s->gali_ceil, s->inv_freq, 1.0f);
        }
        if (nf > 0) {
            memcpy(L->k_grp, L->k_raw, (size_t)nf * kvb);
            cpu_rope(L->k_grp, nf, c->n_kv_heads, hd, s->gali_floor, s->inv_freq, 1.0f);
        }
        e.layout = CPU_ATTN_GALI;
        e.k_alt = L->k_grp;
        e.gali_n_frac = nf;
        e.gali_kpos = s->gali_pos;
        e.gali_qpos = s->gali_qpos;
        e.gali_mode = s->pp.gali_mode == GALI_MODE_REFERENCE;
        e.gali_noise = s->o.gali_noise;
        e.gali_seed = s->o.gali_seed;
        e.gali_layer = l;
    } else {
        /* Every extra rotation starts from the unrotated projections. */
        const int n_alt = s->pp.kind == POSITIONAL_DCA ? 2 : 1;
        for (int v = 0; v < n_alt; v++) {
            memcpy(s->q_alt[v], s->q, qb);
            cpu_rope(s->q_alt[v], n, c->n_heads, hd, s->qpos[v + 1], s->inv_freq, s->mscale);
            e.q_alt[v] = s->q_alt[v];
        }
        if (use_mem) {
            memcpy(s->q_mem, s->q, qb);
            cpu_rope(s->q_mem, n, c->n_heads, hd, s->mpos, s->inv_freq, s->mscale);
            e.q_mem = s->q_mem;
        }
        if (L->k_grp) {
            float *kg = L->k_grp + (size_t)s->local * s->kv_dim;
            memcpy(kg, s->k, n * kvb);
            cpu_rope(kg, n, c->n_kv_heads, hd, s->kpos_grp, s->inv_freq, s->mscale);
            e.k_alt = L->k_grp;
        }
        cpu_rope(s->q, n, c->n_heads, hd, s->qpos[0], s->inv_freq, s->mscale);
        cpu_rope(s->k, n, c->n_kv_heads, hd, s->kpos, s->inv_freq, s->mscale);
        e.layout = s->pp.kind == POSITIONAL_DCA ? CPU_ATTN_DCA : CPU_ATTN_SELF_EXTEND;
        e.neighbor = s->pp.neighbor;
        e.chunk_len = s->pp.chunk_len;
    }
    memcpy(L->k_rot + (size_t)s->local * s->kv_dim, s->k, n * kvb);
    memcpy(L->v + (size_t)s->local * s->kv_dim, s->v, n * kvb);

    e.a = (attn_args_t){
        .n_q = n,
        .n_k = s->local + n,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = hd,
        .q_offset = s->local,
        .q = s->q,
        .k = L->k_rot,
        .v = L->v,
        .scale = 1.0f / sqrtf((float)hd),
        .out = s->att,
    };
    if (use_mem) {
        e.a.n_mem = memory_store_rows(s->mem, L->mem_layer);
        e.a.mem_dtype = memory_store_dtype(s->mem);
        e.a.mem_k = memory_store_keys(s->mem, L->mem_layer);
        e.a.mem_v = memory_store_values(s->mem, L->mem_layer);
        /* A memory key is scored as a local key at index 0 would be: position 0, but with
         * the scheme's cos/sin multiplier, which the query's rotation carries only once. */
        if (s->mscale != 1.0f) e.mem_scale = e.a.scale * s->mscale;
    }
    rc_t rc;
    if (use_mem && s->knn) {
        /* The same rotated queries as exact memory scores; the score's positive factor does
         * not change the order. With k ≥ rows the lists hold every row: exact attention. */
        const size_t rows = e.a.n_mem;
        const int k = (size_t)s->o.knn_k < rows ? s->o.knn_k : (int)rows;
        rc = knn_search(s, L->mem_layer, e.q_mem ? e.q_mem : s->q, n, k);
        if (rc) return rc;
        rc = cpu_attention_knn(&(attn_knn_args_t){.e = e, .k = k, .idx = s->knn_idx});
    } else {
        rc = cpu_attention_ext(&e);
    }
    if (rc) return rc;
    /* x += att · Woᵀ, through xn as the product's output. */
    cpu_matmul_nt(s->xn, s->att, W->wo, n, c->hidden, s->q_dim);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];

    cpu_rmsnorm(s->xn, s->x, W->ffn_norm, n, c->hidden, c->rms_eps);
    cpu_matmul_nt(s->gate, s->xn, W->w_gate, n, c->ffn, c->hidden);
    cpu_matmul_nt(s->up, s->xn, W->w_up, n, c->ffn, c->hidden);
    cpu_swiglu(s->gate, s->gate, s->up, (size_t)n * c->ffn);
    cpu_matmul_nt(s->xn, s->gate, W->w_down, n, c->hidden, c->ffn);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];
    return RC_OK;
}

/* GALI's table for the piece of n tokens after `local` (see the top). */
static void gali_prepare(backend_stream_t *s, int local, int n)
{
    const int T = local + n, L = s->c->max_pos;
    s->gali_active = T > L;
    if (!s->gali_active) return;
    positional_gali_positions(T, L, s->pp.local_window, s->gali_pos);
    int nf = 0;
    for (int j = 0; j < T; j++) {
        const float p = s->gali_pos[j], fl = floorf(p);
        s->gali_floor[j] = (int32_t)fl;
        s->gali_ceil[j] = (int32_t)ceilf(p);
        if (p != fl) nf = j + 1;
    }
    s->gali_n_frac = nf;
    for (int t = 0; t < n; t++)
        s->gali_qpos[t] = (float)s->gali_ceil[local + t];
}

static rc_t forward_piece(backend_stream_t *s, const int32_t *tok, int n, int local,
                          const int32_t *targets, float *logprobs, float *last_logits)
{
    const model_config_t *c = s->c;
    s->local = local;
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->hidden, s->w->tok_emb + (size_t)tok[t] * c->hidden,
               c->hidden * sizeof(float));
        s->pos[t] = local + t;
    }
    if (s->pp.kind == POSITIONAL_GALI) {
        gali_prepare(s, local, n);
    } else if (s->pp.kind == POSITIONAL_CLEX) {
        /* One row for the whole forward: t of the local keys it attends to. */
        const int n_keys = local + n;
        s->clex_t = positional_clex_t(n_keys, c->max_pos, s->pp.clex_max);
        s->clex_row = s->clex_freq + (size_t)(s->clex_t - 1) * (c->head_dim / 2);
        s->clex_qscale = c->log_scale ? positional_clex_log_scale(n_keys, c->max_pos) : 1.0f;
    } else if (s->pp.kind != POSITIONAL_ROPE) {
        const positional_params_t *p = &s->pp;
        for (int t = 0; t < n; t++) {
            const int i = local + t;
            s->mpos[t] = positional_mem_query(p, i);
            if (p->kind == POSITIONAL_SELF_EXTEND) {
                s->kpos[t] = i;
                s->kpos_grp[t] = positional_se_key(i, p->group);
                s->qpos[0][t] = i;
                s->qpos[1][t] = positional_se_query(i, p->group, p->neighbor);
            } else {
                s->kpos[t] = i % p->chunk_len;
                s->qpos[0][t] = positional_dca_intra(p, i);
                s->qpos[1][t] = positional_dca_succ(p, i);
                s->qpos[2][t] = p->chunk_size;
            }
        }
    }
    /* OpenMP threads are the backend's only ones for the whole pass: any BLAS call left
     * multi-threaded (the kNN index's list assignment, k-means) woke OpenBLAS's worker,
     * which then spun in sched_yield for its timeout (~10 % of a knn ingest's time). */
    const int blas_threads = cpu_blas_threads_single();
    rc_t rc = RC_OK;
    for (int l = 0; l < c->n_layers && !rc; l++) rc = layer_forward(s, l, n);
    cpu_blas_threads_restore(blas_threads);
    if (rc) return rc;

    if (!logprobs && !last_logits) return RC_OK;
    /* Only the rows whose outputs are wanted go through the final norm and lm_head. */
    int first = logprobs ? 0 : n - 1;
    for (int r0 = first; r0 < n; r0 += LOGIT_ROWS) {
        int rows = n - r0 < LOGIT_ROWS ? n - r0 : LOGIT_ROWS;
        float *xr = s->xn + (size_t)r0 * c->hidden;
        cpu_rmsnorm(xr, s->x + (size_t)r0 * c->hidden, s->w->norm, rows, c->hidden, c->rms_eps);
        cpu_matmul_nt(s->logits, xr, s->w->lm_head, rows, c->vocab_size, c->hidden);
        for (int r = 0; r < rows; r++) {
            const float *lg = s->logits + (size_t)r * c->vocab_size;
            int i = r0 + r;
            if (logprobs && targets && targets[i] >= 0) {
                float mx = -INFINITY;
                for (int j = 0; j < c->vocab_size; j++)
                    if (lg[j] > mx) mx = lg[j];
                double sum = 0;
                for (int j = 0; j < c->vocab_size; j++) sum += exp((double)(lg[j] - mx));
                logprobs[i] = (float)((double)(lg[targets[i]] - mx) - log(sum));
            }
            if (last_logits && i == n - 1) memcpy(last_logits, lg, c->vocab_size * sizeof(float));
        }
    }
    return RC_OK;
}

static rc_t cpu_forward(backend_stream_t *s, const int32_t *tok, int n, int local,
                        const int32_t *targets, float *logprobs, float *last_logits)
{
    if (s->pp.kind != POSITIONAL_GALI)
        return forward_piece(s, tok, n, local, targets, logprobs, last_logits);
    /* GALI: pieces, each a forward over the window so far (see the top). */
    for (int off = 0; off < n;) {
        const int k = positional_gali_piece(local + off, n - off, s->c->max_pos, s->pp.chunk_size);
        const int last = off + k == n;
        rc_t rc = forward_piece(s, tok + off, k, local + off, targets ? targets + off : NULL,
                                logprobs ? logprobs + off : NULL, last ? last_logits : NULL);
        if (rc) return rc;
        off += k;
    }
    return RC_OK;
}

static rc_t cpu_flush(backend_stream_t *s, int local)
{
    size_t before = memory_store_len(s->mem);
    for (int l = 0; l < s->c->n_layers; l++) {
        layer_cache_t *L = &s->layers[l];
        if (L->mem_layer < 0) continue;
        /* The store converts once, here: to fp8/int8 codes and scales for a quantized
         * session (common/quant.h); no fp32 copy of the window outlives the flush. */
        rc_t rc = memory_store_append_f32(s->mem, L->mem_layer, L->k_raw, L->v, (size_t)local);
        if (rc) {
            memory_store_truncate(s->mem, before);
            return rc;
        }
    }
    return RC_OK;
}

static void cpu_memory_truncated(backend_stream_t *s, size_t rows)
{
    (void)rows; /* the CPU reads the host store directly: nothing mirrored */
    /* The kNN index must drop the rewound rows now: new rows of the same count would
     * otherwise look already indexed. A failed sync leaves the layer empty, to be rebuilt. */
    for (int l = 0; s->knn && l < memory_store_layers(s->mem); l++)
        if (memory_knn_sync(s->knn, s->mem, l)) memory_knn_reset(s->knn, l);
}

const backend_ops_t backend_cpu_ops = {
    .name = "cpu",
    .open = cpu_open,
    .close = cpu_close,
    .describe = cpu_describe,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .forward = cpu_forward,
    .flush = cpu_flush,
    .memory_truncated = cpu_memory_truncated,
};
