/* backend_cpu.c — the CPU backend: fp32 forward pass with the reference kernels.
 *
 * Per layer a stream keeps a local cache of at most `window` tokens: rotated keys and
 * values for local attention, and for memory layers also the unrotated keys, which is
 * what moves into memory when the window is complete. Positions inside the window start
 * at 0 because the whole cache is dropped at once, never shifted. */
#define BACKEND_INTERNAL
#include "model/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu.h"
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
    float *v;      /* [window, kv_dim] */
    int mem_layer; /* index into the memory store, or -1 */
} layer_cache_t;

struct backend_stream {
    const model_config_t *c;
    const model_weights_t *w;
    model_stream_opts_t o;
    memory_store_t *mem; /* borrowed from the stream */
    int q_dim, kv_dim;
    int local;             /* tokens in the local cache during a forward */
    layer_cache_t *layers; /* [n_layers] */
    float *inv_freq;       /* [head_dim / 2] */

    /* Scratch for one chunk of up to `window` tokens. */
    float *x;      /* [window, hidden] residual stream */
    float *xn;     /* [window, hidden] normalized / product outputs */
    float *q;      /* [window, q_dim] */
    float *k;      /* [window, kv_dim] */
    float *v;      /* [window, kv_dim] */
    float *att;    /* [window, q_dim] */
    float *gate;   /* [window, ffn] */
    float *up;     /* [window, ffn] */
    int32_t *pos;  /* [window] */
    float *logits; /* [LOGIT_ROWS, vocab] */
};

static rc_t cpu_open(const model_t *m, int device, void **ctx, char *err, size_t errlen)
{
    (void)device;
    (void)err;
    (void)errlen;
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
    free(s->logits);
    free(s);
}

static rc_t cpu_stream_create(void *ctx, const model_stream_opts_t *o, memory_store_t *mem,
                              backend_stream_t **out)
{
    const model_t *m = ((cpu_ctx_t *)ctx)->model;
    const model_config_t *c = model_get_config(m);
    *out = NULL;
    if (c->head_dim % 2) return RC_ERR_UNSUPPORTED;
    backend_stream_t *s = calloc(1, sizeof *s);
    if (!s) return RC_ERR_NOMEM;
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
        if (L->mem_layer >= 0 && !(L->k_raw = malloc(W * s->kv_dim * sizeof(float)))) goto fail;
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
    cpu_rope_inv_freq(s->inv_freq, c->head_dim, c->rope_theta);
    *out = s;
    return RC_OK;
fail:
    cpu_stream_destroy(s);
    return RC_ERR_NOMEM;
}

/* One layer over a chunk of n tokens already in s->x. */
static void layer_forward(backend_stream_t *s, int l, int n)
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
    cpu_rope(s->q, n, c->n_heads, hd, s->pos, s->inv_freq, 1.0f);
    cpu_rope(s->k, n, c->n_kv_heads, hd, s->pos, s->inv_freq, 1.0f);
    memcpy(L->k_rot + (size_t)s->local * s->kv_dim, s->k, n * kvb);
    memcpy(L->v + (size_t)s->local * s->kv_dim, s->v, n * kvb);

    attn_args_t a = {
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
    if (L->mem_layer >= 0 && !s->o.disable_memory) {
        a.n_mem = memory_store_rows(s->mem, L->mem_layer);
        a.mem_dtype = memory_store_dtype(s->mem);
        a.mem_k = memory_store_keys(s->mem, L->mem_layer);
        a.mem_v = memory_store_values(s->mem, L->mem_layer);
    }
    cpu_attention(&a);
    /* x += att · Woᵀ, through xn as the product's output. */
    cpu_matmul_nt(s->xn, s->att, W->wo, n, c->hidden, s->q_dim);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];

    cpu_rmsnorm(s->xn, s->x, W->ffn_norm, n, c->hidden, c->rms_eps);
    cpu_matmul_nt(s->gate, s->xn, W->w_gate, n, c->ffn, c->hidden);
    cpu_matmul_nt(s->up, s->xn, W->w_up, n, c->ffn, c->hidden);
    cpu_swiglu(s->gate, s->gate, s->up, (size_t)n * c->ffn);
    cpu_matmul_nt(s->xn, s->gate, W->w_down, n, c->hidden, c->ffn);
    for (size_t i = 0; i < (size_t)n * c->hidden; i++) s->x[i] += s->xn[i];
}

static rc_t cpu_forward(backend_stream_t *s, const int32_t *tok, int n, int local,
                        const int32_t *targets, float *logprobs, float *last_logits)
{
    const model_config_t *c = s->c;
    s->local = local;
    for (int t = 0; t < n; t++) {
        memcpy(s->x + (size_t)t * c->hidden, s->w->tok_emb + (size_t)tok[t] * c->hidden,
               c->hidden * sizeof(float));
        s->pos[t] = local + t;
    }
    for (int l = 0; l < c->n_layers; l++) layer_forward(s, l, n);

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

static rc_t cpu_flush(backend_stream_t *s, int local)
{
    size_t before = memory_store_len(s->mem);
    for (int l = 0; l < s->c->n_layers; l++) {
        layer_cache_t *L = &s->layers[l];
        if (L->mem_layer < 0) continue;
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
    (void)s;
    (void)rows; /* the CPU reads the host store directly: nothing mirrored */
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
