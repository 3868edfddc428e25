/* test_cuda_knn_attention.c — kNN memory attention on the GPU (kernels/cuda.h):
 *
 * 1. The log-sum-exp output of cuda_attention and cuda_attention_fast (cuda_attn_args_t.lse)
 *    against a double-precision reference of the same softmax (scores clamped at −1e6,
 *    memory scores q_mem · K · mem_scale, Self-Extend and DCA variants chosen per pair), on
 *    every path: the FMA kernel, the mma kernel and its positional twin, each without a
 *    workspace, with the planned one (split key range, merge kernel) and with half of it;
 *    decode (n_q = 1) and prefill. Asking for lse must not move a bit of the output: each
 *    run is repeated with lse = NULL and the outputs compared bitwise. The output itself is
 *    held to the reference too (normalized error ≤ 5e-3, as tests/test_cuda_attention_mma.c).
 * 2. The whole kNN path: cuda_attention_fast(n_mem = 0, lse) then cuda_knn_attention, against
 *    cpu_attention_knn on the same bf16-rounded data (fp32 memory exact): random lists with
 *    −1 entries, lists naming every row (then also against exact cpu_attention_ext with the
 *    whole memory), rows split between the hot and spill buffers, grouped-query heads, head
 *    dims 64/100/128, fp32 and bf16 memory, a q_mem of its own with mem_scale ≠ scale,
 *    Self-Extend and DCA local parts. Normalized error ≤ 5e-3.
 * 3. Argument checks, k = 0 and all-(−1) lists (output untouched, bit for bit), a bad index
 *    (that row NaN, the others untouched).
 * 4. A larger kNN call (256 queries × 32 heads, k = 128, d = 100) checked on sampled rows
 *    against a host merge of the GPU's own local (out, lse). RECALL_KNN_BENCH=1 runs it at
 *    prefill size (2048 queries, 32768 memory rows) and prints timings and bandwidth.
 *
 * Inputs are fresh random numbers each run (seed printed; RECALL_SEED=N repeats a run);
 * outputs are poisoned (NaN) before every kernel. With no GPU it prints "skipped: no GPU"
 * and exits 77. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "tests/check.h"
#include "tests/gpu_ops.h"

#define TOL_BF16 5e-3     /* ‖out − ref‖ / ‖ref‖, bf16 outputs */
#define TOL_F32 5e-5      /* the same, fp32 activations on the FMA kernel */
#define TOL_LSE 5e-3      /* |lse − ref| in natural log units ... */
#define TOL_LSE_REL 3e-7  /* ... plus this much of |ref|: fp32 spacing near the −1e6 clamp */

static int rng_below(int n)
{
    return (int)(rng_next() % (uint64_t)n);
}

static void poison(void *dev, size_t bytes)
{
    if (dev && cuda_memset(dev, 0xFF, bytes, NULL)) /* NaN in bf16 and fp32 */
        gpu_setup_failed("poisoning an output");
}

static double dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ---- 1. lse ------------------------------------------------------------------------------ */

/* The inputs of one attention as the reference sees them (fp32, already rounded). */
typedef struct ref_in {
    int n_q, n_k, q_offset, n_heads, n_kv, hd;
    const float *q, *k, *v;          /* [n_q, H, hd], [n_k, KV, hd] x2 */
    const float *q_alt[2], *k_alt;   /* layout variants */
    const float *q_mem;              /* NULL: q */
    size_t n_mem;
    const float *mk, *mv;            /* [n_mem, KV, hd] */
    float scale, mem_scale;          /* mem_scale 0: scale */
    int layout, neighbor, chunk_len; /* cuda_attn_layout_t */
} ref_in_t;

/* out [n_q, H, hd] and lse [n_q, H] of the one softmax, in double. */
static void ref_attention(const ref_in_t *r, float *out, double *lse)
{
    const int hd = r->hd, H = r->n_heads, KV = r->n_kv, group = H / KV;
    const double ms = r->mem_scale != 0.0f ? r->mem_scale : r->scale;
    const size_t n_keys = r->n_mem + (size_t)r->n_k;
    double *s = gpu_xmalloc(n_keys * sizeof(double));
    const float **vrow = gpu_xmalloc(n_keys * sizeof(float *));
    for (int i = 0; i < r->n_q; i++) {
        const int il = r->q_offset + i;
        for (int h = 0; h < H; h++) {
            const int kh = h / group;
            const size_t qo = ((size_t)i * H + h) * hd;
            size_t n = 0;
            for (size_t m = 0; m < r->n_mem; m++, n++) {
                const size_t ko = (m * KV + kh) * hd;
                s[n] = fmax(dot((r->q_mem ? r->q_mem : r->q) + qo, r->mk + ko, hd) * ms, -1e6);
                vrow[n] = r->mv + ko;
            }
            for (int j = 0; j <= il; j++, n++) {
                const float *qv = r->q, *kv = r->k;
                if (r->layout == CUDA_ATTN_SELF_EXTEND && il - j >= r->neighbor) {
                    qv = r->q_alt[0];
                    kv = r->k_alt;
                } else if (r->layout == CUDA_ATTN_DCA) {
                    const int ci = il / r->chunk_len, cj = j / r->chunk_len;
                    qv = cj == ci ? r->q : cj == ci - 1 ? r->q_alt[0] : r->q_alt[1];
                }
                const size_t ko = ((size_t)j * KV + kh) * hd;
                s[n] = fmax(dot(qv + qo, kv + ko, hd) * r->scale, -1e6);
                vrow[n] = r->v + ko;
            }
            double mx = -INFINITY, sum = 0;
            for (size_t t = 0; t < n; t++) mx = fmax(mx, s[t]);
            for (size_t t = 0; t < n; t++) sum += exp(s[t] - mx);
            lse[(size_t)i * H + h] = mx + log(sum);
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (size_t t = 0; t < n; t++) o += exp(s[t] - mx) * vrow[t][d];
                out[qo + d] = (float)(o / sum);
            }
        }
    }
    free(s);
    free(vrow);
}

typedef struct lcase {
    int fma;           /* cuda_attention (the FMA kernel); else cuda_attention_fast */
    dtype_t act_t;     /* activations; F32 only with fma */
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    size_t n_mem;
    dtype_t mem_t;
    int layout, neighbor, chunk_len;
    int own_mem_q;     /* q_mem of its own and mem_scale = 0.7 · scale (fast path only) */
    int clamp;         /* every score far below −1e6 */
    int want_split;    /* the planned workspace must split this one */
} lcase_t;

static void lse_case(const lcase_t *c)
{
    const int hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    const size_t nq = (size_t)c->n_q * H * hd, nk = (size_t)c->n_k * KV * hd;
    const size_t nm = c->n_mem * KV * hd, nrow = (size_t)c->n_q * H;
    const int se = c->layout == CUDA_ATTN_SELF_EXTEND, dca = c->layout == CUDA_ATTN_DCA;
    float *q = gpu_rand(nq, 1.0f), *k = gpu_rand(nk, 1.0f), *v = gpu_rand(nk, 1.0f);
    float *qa0 = c->layout ? gpu_rand(nq, 1.0f) : NULL, *qa1 = dca ? gpu_rand(nq, 1.0f) : NULL;
    float *ka = se ? gpu_rand(nk, 1.0f) : NULL, *qm = c->own_mem_q ? gpu_rand(nq, 1.0f) : NULL;
    float *mk = gpu_rand(nm, 1.0f), *mv = gpu_rand(nm, 1.0f);
    if (c->clamp) {
        float *qs[] = {q, qa0, qa1, qm};
        for (int t = 0; t < 4; t++)
            for (size_t i = 0; qs[t] && i < nq; i++) qs[t][i] = -1e6f;
        for (size_t i = 0; i < nk; i++) k[i] = fabsf(k[i]) + 0.5f;
        for (size_t i = 0; ka && i < nk; i++) ka[i] = fabsf(ka[i]) + 0.5f;
        for (size_t i = 0; i < nm; i++) mk[i] = fabsf(mk[i]) + 0.5f;
    }
    float *rounded[] = {q, k, v, qa0, qa1, ka, qm};
    for (int t = 0; t < 7; t++) /* k, v and k_alt are [n_k, ...]; the rest [n_q, ...] */
        gpu_round(rounded[t], t == 1 || t == 2 || t == 5 ? nk : nq, c->act_t);
    gpu_round(mk, nm, c->mem_t);
    gpu_round(mv, nm, c->mem_t);

    const float scale = 1.0f / sqrtf((float)hd), ms = c->own_mem_q ? 0.7f * scale : 0.0f;
    ref_in_t ri = {.n_q = c->n_q, .n_k = c->n_k, .q_offset = c->q_offset, .n_heads = H,
                   .n_kv = KV, .hd = hd, .q = q, .k = k, .v = v, .q_alt = {qa0, qa1},
                   .k_alt = ka, .q_mem = qm, .n_mem = c->n_mem, .mk = mk, .mv = mv,
                   .scale = scale, .mem_scale = ms, .layout = c->layout,
                   .neighbor = c->neighbor, .chunk_len = c->chunk_len};
    float *ref = gpu_xmalloc(nq * sizeof(float));
    double *ref_lse = gpu_xmalloc(nrow * sizeof(double));
    ref_attention(&ri, ref, ref_lse);

    cuda_attn_args_t a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = H, .n_kv_heads = KV,
                          .head_dim = hd, .q_offset = c->q_offset, .dtype = c->act_t,
                          .n_mem = c->n_mem, .mem_dtype = c->mem_t, .scale = scale,
                          .layout = c->layout, .neighbor = c->neighbor,
                          .chunk_len = c->chunk_len, .mem_scale = ms};
    void *dq = gpu_upload(q, nq, c->act_t), *dk = gpu_upload(k, nk, c->act_t);
    void *dv = gpu_upload(v, nk, c->act_t), *dqa0 = gpu_upload(qa0, nq, c->act_t);
    void *dqa1 = gpu_upload(qa1, nq, c->act_t), *dka = gpu_upload(ka, nk, c->act_t);
    void *dqm = gpu_upload(qm, nq, c->act_t);
    void *dmk = gpu_upload(mk, nm, c->mem_t), *dmv = gpu_upload(mv, nm, c->mem_t);
    a.q = dq;
    a.k = dk;
    a.v = dv;
    a.q_alt[0] = dqa0;
    a.q_alt[1] = dqa1;
    a.k_alt = dka;
    a.q_mem = dqm;
    a.mem_k = dmk;
    a.mem_v = dmv;

    rc_t (*attn)(const cuda_attn_args_t *, void *) = c->fma ? cuda_attention : cuda_attention_fast;
    size_t ws_bytes = 0;
    CHECK_RC(c->fma ? cuda_attention_workspace(&a, &ws_bytes)
                    : cuda_attention_fast_workspace(&a, &ws_bytes),
             RC_OK);
    if (c->want_split)
        CHECK_MSG(ws_bytes > 0, "d%d q%d mem %zu: no split planned", hd, c->n_q, c->n_mem);
    void *ws = gpu_upload_raw(NULL, ws_bytes);
    const size_t es = dtype_size(c->act_t), ob = nq * es;
    void *o0 = gpu_upload_raw(NULL, ob), *o1 = gpu_upload_raw(NULL, ob);
    float *dl = gpu_upload_raw(NULL, nrow * sizeof(float));
    void *h0 = gpu_xmalloc(ob), *h1 = gpu_xmalloc(ob);
    float *hl = gpu_xmalloc(nrow * sizeof(float));

    for (int use_ws = 0; use_ws <= (ws_bytes ? 2 : 0) && !gpu_setup_failures(); use_ws++) {
        a.workspace = use_ws ? ws : NULL;
        a.workspace_bytes = use_ws == 1 ? ws_bytes : use_ws == 2 ? ws_bytes / 2 : 0;
        char desc[200];
        snprintf(desc, sizeof desc, "%s %s d%d q%d k%d off%d h%d/%d mem %zu%s%s%s%s%s%s",
                 c->fma ? "fma" : "mma", dtype_name(c->act_t), hd, c->n_q, c->n_k,
                 c->q_offset, H, KV, c->n_mem, c->n_mem ? " " : "",
                 c->n_mem ? dtype_name(c->mem_t) : "",
                 se ? " self-extend" : dca ? " dca" : "", c->own_mem_q ? " q_mem" : "",
                 c->clamp ? " clamp" : "",
                 use_ws == 1 ? " split" : use_ws == 2 ? " split/2" : "");
        poison(o0, ob);
        a.out = o0;
        a.lse = NULL;
        CHECK_RC(attn(&a, NULL), RC_OK);
        if (gpu_fetch(h0, o0, ob)) continue;
        poison(o1, ob);
        poison(dl, nrow * sizeof(float));
        a.out = o1;
        a.lse = dl;
        CHECK_RC(attn(&a, NULL), RC_OK);
        if (gpu_fetch(h1, o1, ob) || gpu_fetch(hl, dl, nrow * sizeof(float))) continue;
        a.lse = NULL;

        CHECK_MSG(!memcmp(h0, h1, ob), "%s: asking for lse changed the output's bits", desc);
        size_t bad = 0;
        const double err = gpu_rel_err(h1, c->act_t, ref, nq, &bad);
        const double tol = c->act_t == DTYPE_F32 ? TOL_F32 : TOL_BF16;
        size_t lbad = 0, worst_at = 0;
        double worst = 0; /* the largest |Δ| / its tolerance */
        for (size_t r = 0; r < nrow; r++) {
            if (!isfinite(hl[r])) {
                lbad++;
                continue;
            }
            const double x = fabs(hl[r] - ref_lse[r]) / (TOL_LSE + TOL_LSE_REL * fabs(ref_lse[r]));
            if (x > worst) {
                worst = x;
                worst_at = r;
            }
        }
        const int ok = !bad && err <= tol && !lbad && worst <= 1.0;
        printf("lse %-70s out %.2e  lse worst %.2e of tol (row %zu: %.6f vs %.6f)  %s\n", desc,
               err, worst, worst_at, hl[worst_at], ref_lse[worst_at], ok ? "ok" : "FAIL");
        CHECK_MSG(bad == 0, "%s: %zu of %zu outputs not finite", desc, bad, nq);
        CHECK_MSG(err <= tol, "%s: out rel_err %.3e over %.0e", desc, err, tol);
        CHECK_MSG(lbad == 0, "%s: %zu of %zu lse values not finite (unwritten?)", desc, lbad, nrow);
        CHECK_MSG(worst <= 1.0, "%s: lse row %zu (query %zu head %zu) = %.7g, reference %.7g",
                  desc, worst_at, worst_at / H, worst_at % H, hl[worst_at], ref_lse[worst_at]);
    }

    void *dev[] = {dq, dk, dv, dqa0, dqa1, dka, dqm, dmk, dmv, ws, o0, o1, dl};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(&dev[i]);
    float *host[] = {q, k, v, qa0, qa1, ka, qm, mk, mv, ref, hl};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(ref_lse);
    free(h0);
    free(h1);
}

/* ---- 2. the kNN path ----------------------------------------------------------------------- */

typedef struct kcase {
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    int rows;      /* memory rows */
    int n_hot;     /* rows [0, n_hot) in the hot buffer, the rest in the spill buffer */
    int k;         /* list length; k ≥ rows: every row listed once, the rest −1 */
    int n_neg;     /* −1 entries per list when k < rows */
    dtype_t mem_t;
    int own_mem_q; /* q_mem of its own, mem_scale = 1.3 · scale */
    int layout, neighbor, chunk_len;
} kcase_t;

static void shuffle64(int64_t *x, int n)
{
    for (int i = n - 1; i > 0; i--) {
        const int j = rng_below(i + 1);
        const int64_t t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}

/* [n_lists, k] lists of distinct rows of [0, rows), −1 padded, in random order. */
static int64_t *make_lists(size_t n_lists, int k, int rows, int n_neg)
{
    int64_t *idx = gpu_xmalloc(n_lists * k * sizeof(int64_t));
    int64_t *pool = gpu_xmalloc((size_t)rows * sizeof(int64_t));
    for (int r = 0; r < rows; r++) pool[r] = r;
    const int n_valid = k >= rows ? rows : k - n_neg;
    for (size_t l = 0; l < n_lists; l++) {
        int64_t *x = idx + l * k;
        for (int j = 0; j < n_valid; j++) { /* partial Fisher-Yates over the pool */
            const int t = j + rng_below(rows - j);
            const int64_t s = pool[j];
            pool[j] = pool[t];
            pool[t] = s;
            x[j] = pool[j];
        }
        for (int j = n_valid; j < k; j++) x[j] = -1;
        shuffle64(x, k);
    }
    free(pool);
    return idx;
}

static void knn_case(const kcase_t *c)
{
    const int hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    const size_t nq = (size_t)c->n_q * H * hd, nk = (size_t)c->n_k * KV * hd;
    const size_t nm = (size_t)c->rows * KV * hd, nrow = (size_t)c->n_q * H;
    const size_t hot_el = (size_t)c->n_hot * KV * hd;
    const int se = c->layout == CUDA_ATTN_SELF_EXTEND, dca = c->layout == CUDA_ATTN_DCA;
    const int full = c->k >= c->rows;
    float *q = gpu_rand(nq, 1.0f), *k = gpu_rand(nk, 1.0f), *v = gpu_rand(nk, 1.0f);
    float *qa0 = c->layout ? gpu_rand(nq, 1.0f) : NULL, *qa1 = dca ? gpu_rand(nq, 1.0f) : NULL;
    float *kalt = se ? gpu_rand(nk, 1.0f) : NULL, *qm = c->own_mem_q ? gpu_rand(nq, 1.0f) : NULL;
    float *mk = gpu_rand(nm, 1.0f), *mv = gpu_rand(nm, 1.0f);
    float *rounded[] = {q, k, v, qa0, qa1, kalt, qm};
    for (int t = 0; t < 7; t++)
        gpu_round(rounded[t], t == 1 || t == 2 || t == 5 ? nk : nq, DTYPE_BF16);
    gpu_round(mk, nm, c->mem_t);
    gpu_round(mv, nm, c->mem_t);
    int64_t *idx = make_lists(nrow, c->k, c->rows, c->n_neg);
    int32_t *idx32 = gpu_xmalloc(nrow * c->k * sizeof(int32_t));
    for (size_t i = 0; i < nrow * c->k; i++) idx32[i] = (int32_t)idx[i];

    /* The CPU's kNN attention, and with every row listed the exact one. */
    const float scale = 1.0f / sqrtf((float)hd), ms = c->own_mem_q ? 1.3f * scale : 0.0f;
    void *h_mk = gpu_xmalloc(nm * dtype_size(c->mem_t)), *h_mv = gpu_xmalloc(nm * dtype_size(c->mem_t));
    dtype_from_f32(h_mk, c->mem_t, mk, nm);
    dtype_from_f32(h_mv, c->mem_t, mv, nm);
    float *ref = gpu_xmalloc(nq * sizeof(float)), *ref_exact = gpu_xmalloc(nq * sizeof(float));
    attn_knn_args_t cka = {
        .e = {.a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = H, .n_kv_heads = KV,
                    .head_dim = hd, .q_offset = c->q_offset, .q = q, .k = k, .v = v,
                    .n_mem = (size_t)c->rows, .mem_dtype = c->mem_t, .mem_k = h_mk,
                    .mem_v = h_mv, .scale = scale, .out = ref},
              .layout = (cpu_attn_layout_t)c->layout, .neighbor = c->neighbor,
              .chunk_len = c->chunk_len, .q_alt = {qa0, qa1}, .k_alt = kalt, .q_mem = qm,
              .mem_scale = ms},
        .k = c->k,
        .idx = idx};
    cpu_attention_knn(&cka);
    if (full) {
        attn_ext_args_t e = cka.e;
        e.a.out = ref_exact;
        cpu_attention_ext(&e);
    }

    /* The GPU: local part with lse, then the memory part. */
    const dtype_t B = DTYPE_BF16;
    void *dq = gpu_upload(q, nq, B), *dk = gpu_upload(k, nk, B), *dv = gpu_upload(v, nk, B);
    void *dqa0 = gpu_upload(qa0, nq, B), *dqa1 = gpu_upload(qa1, nq, B);
    void *dka = gpu_upload(kalt, nk, B), *dqm = gpu_upload(qm, nq, B);
    const size_t mes = dtype_size(c->mem_t);
    void *dhk = gpu_upload_raw(h_mk, hot_el * mes), *dhv = gpu_upload_raw(h_mv, hot_el * mes);
    void *dsk = gpu_upload_raw((char *)h_mk + hot_el * mes, (nm - hot_el) * mes);
    void *dsv = gpu_upload_raw((char *)h_mv + hot_el * mes, (nm - hot_el) * mes);
    void *didx = gpu_upload_raw(idx32, nrow * c->k * sizeof(int32_t));
    void *out = gpu_upload_raw(NULL, nq * 2);
    float *dl = gpu_upload_raw(NULL, nrow * sizeof(float));
    cuda_attn_args_t la = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = H, .n_kv_heads = KV,
                           .head_dim = hd, .q_offset = c->q_offset, .dtype = B, .q = dq,
                           .k = dk, .v = dv, .scale = scale, .out = out,
                           .layout = c->layout, .neighbor = c->neighbor,
                           .chunk_len = c->chunk_len, .q_alt = {dqa0, dqa1}, .k_alt = dka,
                           .q_mem = dqm, .mem_scale = ms, .lse = dl};
    cuda_knn_attn_args_t ka = {.n_q = c->n_q, .n_heads = H, .n_kv_heads = KV, .head_dim = hd,
                               .q_mem = dqm ? dqm : dq, .mem_scale = ms != 0.0f ? ms : scale,
                               .k = c->k, .idx = didx, .mem_dtype = c->mem_t, .hot_k = dhk,
                               .hot_v = dhv, .n_hot = c->n_hot, .sp_k = dsk, .sp_v = dsv,
                               .n_sp = c->rows - c->n_hot, .lse = dl, .out = out};
    size_t ws_bytes = 0;
    CHECK_RC(cuda_attention_fast_workspace(&la, &ws_bytes), RC_OK);
    void *ws = gpu_upload_raw(NULL, ws_bytes);
    uint16_t *raw = gpu_xmalloc(nq * 2);

    for (int use_ws = 0; use_ws <= (ws_bytes ? 1 : 0) && !gpu_setup_failures(); use_ws++) {
        la.workspace = use_ws ? ws : NULL;
        la.workspace_bytes = use_ws ? ws_bytes : 0;
        char desc[200];
        snprintf(desc, sizeof desc, "d%d q%d k%d off%d h%d/%d rows %d (hot %d) k %d%s %s%s%s%s",
                 hd, c->n_q, c->n_k, c->q_offset, H, KV, c->rows, c->n_hot, c->k,
                 full ? " all" : "", dtype_name(c->mem_t), c->own_mem_q ? " q_mem" : "",
                 se ? " self-extend" : dca ? " dca" : "", use_ws ? " split" : "");
        poison(out, nq * 2);
        poison(dl, nrow * sizeof(float));
        CHECK_RC(cuda_attention_fast(&la, NULL), RC_OK);
        CHECK_RC(cuda_knn_attention(&ka, NULL), RC_OK);
        if (gpu_fetch(raw, out, nq * 2)) continue;
        size_t bad = 0, bad2 = 0;
        const double err = gpu_rel_err(raw, B, ref, nq, &bad);
        const double err2 = full ? gpu_rel_err(raw, B, ref_exact, nq, &bad2) : 0.0;
        const int ok = !bad && err <= TOL_BF16 && err2 <= TOL_BF16;
        if (full)
            printf("knn %-72s vs knn %.2e  vs exact %.2e  %s\n", desc, err, err2,
                   ok ? "ok" : "FAIL");
        else
            printf("knn %-72s vs knn %.2e  %s\n", desc, err, ok ? "ok" : "FAIL");
        CHECK_MSG(bad == 0, "%s: %zu of %zu outputs not finite", desc, bad, nq);
        CHECK_MSG(err <= TOL_BF16, "%s: rel_err %.3e against cpu_attention_knn", desc, err);
        CHECK_MSG(err2 <= TOL_BF16, "%s: rel_err %.3e against exact cpu_attention_ext", desc, err2);
        if (err > TOL_BF16) { /* where: the first (query, head) far off */
            for (size_t r = 0; r < nrow; r++) {
                size_t b;
                const double e = gpu_rel_err(raw + r * hd, B, ref + r * hd, hd, &b);
                if (e > 10 * TOL_BF16 || b) {
                    fprintf(stderr, "  first bad row: query %zu head %zu: rel_err %.3e, "
                            "out[0] %g vs %g\n", r / H, r % H, e,
                            bf16_to_f32(raw[r * hd]), ref[r * hd]);
                    break;
                }
            }
        }
    }

    void *dev[] = {dq, dk, dv, dqa0, dqa1, dka, dqm, dhk, dhv, dsk, dsv, didx, out, dl, ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(&dev[i]);
    float *host[] = {q, k, v, qa0, qa1, kalt, qm, mk, mv, ref, ref_exact};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(h_mk);
    free(h_mv);
    free(idx);
    free(idx32);
    free(raw);
}

/* ---- 3. arguments and edge cases ----------------------------------------------------------- */

static void knn_edges(void)
{
    const int nq = 2, H = 2, hd = 64, rows = 8, k = 4;
    const size_t n = (size_t)nq * H * hd, nm = (size_t)rows * H * hd;
    float *x = gpu_rand(n, 1.0f), *m = gpu_rand(nm, 1.0f), lse[4] = {0.5f, -1.0f, 2.0f, 0.0f};
    int32_t idx[16];
    for (int i = 0; i < 16; i++) idx[i] = -1;
    void *dq = gpu_upload(x, n, DTYPE_BF16), *out = gpu_upload(x, n, DTYPE_BF16);
    void *dm = gpu_upload(m, nm, DTYPE_BF16), *dl = gpu_upload_raw(lse, sizeof lse);
    void *di = gpu_upload_raw(idx, sizeof idx);
    uint16_t *before = gpu_xmalloc(n * 2), *after = gpu_xmalloc(n * 2);
    if (gpu_setup_failures() || gpu_fetch(before, out, n * 2)) goto done;

    const cuda_knn_attn_args_t good = {.n_q = nq, .n_heads = H, .n_kv_heads = H, .head_dim = hd,
                                       .q_mem = dq, .mem_scale = 0.125f, .k = k, .idx = di,
                                       .mem_dtype = DTYPE_BF16, .hot_k = dm, .hot_v = dm,
                                       .n_hot = rows, .lse = dl, .out = out};
    cuda_knn_attn_args_t a = good;
    CHECK_RC(cuda_knn_attention(NULL, NULL), RC_ERR_INVALID);
    a.head_dim = 96;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_UNSUPPORTED);
    a = good;
    a.mem_dtype = DTYPE_F16;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_UNSUPPORTED);
    a = good;
    a.n_kv_heads = 3;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.k = -1;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.lse = NULL;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.hot_v = NULL;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.n_sp = 3; /* spill rows but no spill buffers */
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.out = (char *)out + 2; /* one bf16 in: pieces of 8 bytes no longer line up */
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.mem_dtype = DTYPE_F32;
    a.hot_k = (char *)dm + 8; /* fp32 pieces are 16 bytes */
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);
    a = good;
    a.mem_scale = NAN;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_ERR_INVALID);

    /* k = 0, and lists of −1 only: out_local is the answer, bit for bit. */
    a = good;
    a.k = 0;
    CHECK_RC(cuda_knn_attention(&a, NULL), RC_OK);
    CHECK_RC(cuda_knn_attention(&good, NULL), RC_OK);
    if (!gpu_fetch(after, out, n * 2))
        CHECK_MSG(!memcmp(before, after, n * 2), "k = 0 or lists of -1 changed the output");

    /* An index past the memory: that row NaN, every other row untouched. */
    idx[1] = rows + 5; /* query 0, head 0 */
    if (cuda_upload(di, idx, sizeof idx, NULL)) gpu_setup_failed("uploading the lists");
    CHECK_RC(cuda_knn_attention(&good, NULL), RC_OK);
    if (!gpu_fetch(after, out, n * 2)) {
        int nan_row = 1;
        for (int d = 0; d < hd; d++) nan_row &= isnan(bf16_to_f32(after[d]));
        CHECK_MSG(nan_row, "a bad index did not make its row NaN");
        CHECK_MSG(!memcmp(before + hd, after + hd, (n - hd) * 2),
                  "a bad index in one row changed other rows");
    }
    printf("knn arguments and edge cases checked\n");
done:
    cuda_free(&dq);
    cuda_free(&out);
    cuda_free(&dm);
    cuda_free(&dl);
    cuda_free(&di);
    free(x);
    free(m);
    free(before);
    free(after);
}

/* ---- 4. at scale ----------------------------------------------------------------------------- */

/* Mean seconds of `iters` calls of cuda_knn_attention (or of the attention when la). */
static double time_calls(const cuda_knn_attn_args_t *ka, const cuda_attn_args_t *la, int iters)
{
    rc_t rc = la ? cuda_attention_fast(la, NULL) : cuda_knn_attention(ka, NULL); /* warm up */
    if (!rc) rc = cuda_stream_sync(NULL);
    const double t0 = clock_now_s();
    for (int i = 0; i < iters && !rc; i++)
        rc = la ? cuda_attention_fast(la, NULL) : cuda_knn_attention(ka, NULL);
    if (!rc) rc = cuda_stream_sync(NULL);
    CHECK_MSG(rc == RC_OK, "timed calls: %s", rc_strerror(rc));
    return (clock_now_s() - t0) / iters;
}

/* Uniform in [−1, 1), bf16: cheap enough for hundreds of millions. */
static uint16_t *rand_bf16_raw(size_t n)
{
    uint16_t *x = gpu_xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        x[i] = f32_to_bf16((float)((int32_t)(rng_next() >> 32)) * (1.0f / 2147483648.0f));
    return x;
}

static void knn_scale(int n_q, int rows, int bench)
{
    const int H = 32, hd = 100, k = 128, samples = 96;
    const size_t nq = (size_t)n_q * H * hd, nrow = (size_t)n_q * H, nm = (size_t)rows * H * hd;
    const float scale = 0.1f;
    uint16_t *hq = rand_bf16_raw(nq), *hk = rand_bf16_raw(nq), *hv = rand_bf16_raw(nq);
    uint16_t *mk = rand_bf16_raw(nm), *mv = rand_bf16_raw(nm);
    for (size_t i = 0; i < nq; i++) /* larger queries: scores of a few units, as in a model */
        hq[i] = f32_to_bf16(bf16_to_f32(hq[i]) * 4.0f);
    int32_t *idx = gpu_xmalloc(nrow * k * sizeof(int32_t));
    for (size_t i = 0; i < nrow * k; i++) idx[i] = (int32_t)rng_below(rows);
    void *dq = gpu_upload_raw(hq, nq * 2), *dk = gpu_upload_raw(hk, nq * 2), *dv = gpu_upload_raw(hv, nq * 2);
    void *dmk = gpu_upload_raw(mk, nm * 2), *dmv = gpu_upload_raw(mv, nm * 2);
    void *didx = gpu_upload_raw(idx, nrow * k * sizeof(int32_t)), *out = gpu_upload_raw(NULL, nq * 2);
    float *dl = gpu_upload_raw(NULL, nrow * sizeof(float));
    uint16_t *local = gpu_xmalloc(nq * 2), *res = gpu_xmalloc(nq * 2);
    float *lse = gpu_xmalloc(nrow * sizeof(float));
    cuda_attn_args_t la = {.n_q = n_q, .n_k = n_q, .n_heads = H, .n_kv_heads = H,
                           .head_dim = hd, .dtype = DTYPE_BF16, .q = dq, .k = dk, .v = dv,
                           .scale = scale, .out = out, .lse = dl};
    cuda_knn_attn_args_t ka = {.n_q = n_q, .n_heads = H, .n_kv_heads = H, .head_dim = hd,
                               .q_mem = dq, .mem_scale = scale, .k = k, .idx = didx,
                               .mem_dtype = DTYPE_BF16, .hot_k = dmk, .hot_v = dmv,
                               .n_hot = rows, .lse = dl, .out = out};
    if (gpu_setup_failures()) goto done;
    poison(out, nq * 2);
    poison(dl, nrow * sizeof(float));
    CHECK_RC(cuda_attention_fast(&la, NULL), RC_OK);
    if (gpu_fetch(local, out, nq * 2) || gpu_fetch(lse, dl, nrow * sizeof(float))) goto done;
    CHECK_RC(cuda_knn_attention(&ka, NULL), RC_OK);
    if (gpu_fetch(res, out, nq * 2)) goto done;

    /* Sampled rows against the host merge of the GPU's own local part. */
    double num = 0, den = 0;
    size_t bad = 0;
    for (int t = 0; t < samples; t++) {
        const size_t r = t == 0 ? 0 : t == 1 ? nrow - 1 : (size_t)rng_next() % nrow;
        const int h = (int)(r % H);
        const uint16_t *qr = hq + r * hd;
        double s[128], mx = lse[r], sum = 0, o[100];
        for (int j = 0; j < k; j++) {
            const uint16_t *kr = mk + ((size_t)idx[r * k + j] * H + h) * hd;
            double d = 0;
            for (int e = 0; e < hd; e++) d += (double)bf16_to_f32(qr[e]) * bf16_to_f32(kr[e]);
            s[j] = fmax(d * scale, -1e6);
            mx = fmax(mx, s[j]);
        }
        sum = exp(lse[r] - mx);
        for (int e = 0; e < hd; e++) o[e] = sum * bf16_to_f32(local[r * hd + e]);
        for (int j = 0; j < k; j++) {
            const double p = exp(s[j] - mx);
            const uint16_t *vr = mv + ((size_t)idx[r * k + j] * H + h) * hd;
            sum += p;
            for (int e = 0; e < hd; e++) o[e] += p * bf16_to_f32(vr[e]);
        }
        for (int e = 0; e < hd; e++) {
            const float g = bf16_to_f32(res[r * hd + e]);
            if (!isfinite(g)) bad++;
            const double want = o[e] / sum;
            num += (g - want) * (g - want);
            den += want * want;
        }
    }
    const double err = sqrt(num / den);
    printf("knn at scale: %d queries x %d heads, k %d, d %d, %d memory rows: %d sampled rows "
           "rel_err %.2e  %s\n", n_q, H, k, hd, rows, samples, err,
           !bad && err <= TOL_BF16 ? "ok" : "FAIL");
    CHECK_MSG(bad == 0, "at scale: %zu sampled outputs not finite", bad);
    CHECK_MSG(err <= TOL_BF16, "at scale: sampled rel_err %.3e", err);

    if (bench) {
        const int iters = 20;
        const double bytes = (double)nrow * k * 2 * hd * 2; /* K and V rows, bf16 */
        const double t_rand = time_calls(&ka, NULL, iters);
        /* Lists with locality, as neighbouring queries' top-k have: query i draws from a
         * window of 4096 rows that slides by 8 rows per query. */
        for (size_t r = 0; r < nrow; r++)
            for (int j = 0; j < k; j++)
                idx[r * k + j] = (int32_t)(((r / H) * 8 + (size_t)rng_below(4096)) % rows);
        if (cuda_upload(didx, idx, nrow * k * sizeof(int32_t), NULL))
            gpu_setup_failed("uploading the lists");
        const double t_loc = time_calls(&ka, NULL, iters);
        la.lse = NULL;
        const double t_attn = time_calls(NULL, &la, iters);
        la.lse = dl;
        const double t_attn_lse = time_calls(NULL, &la, iters);
        printf("bench knn: random lists %.3f ms (%.0f GB/s of K+V rows), sliding-window "
               "lists %.3f ms (%.0f GB/s)\n", t_rand * 1e3, bytes / t_rand * 1e-9,
               t_loc * 1e3, bytes / t_loc * 1e-9);
        printf("bench local attention (mma, %d x %d, %d heads, d %d): lse NULL %.3f ms, "
               "lse %.3f ms\n", n_q, n_q, H, hd, t_attn * 1e3, t_attn_lse * 1e3);
    }
done:
    cuda_free(&dq);
    cuda_free(&dk);
    cuda_free(&dv);
    cuda_free(&dmk);
    cuda_free(&dmv);
    cuda_free(&didx);
    cuda_free(&out);
    {
        void *p = dl;
        cuda_free(&p);
    }
    free(hq);
    free(hk);
    free(hv);
    free(mk);
    free(mv);
    free(idx);
    free(local);
    free(res);
    free(lse);
}

/* ---- 1b. memory streamed in chunks (mem_only + cuda_attn_merge) ---------------------- */

/* What the CUDA backend does with exact memory past its device tier: the local keys and
 * the newest n_mem - split memory rows in one call with its lse, then memory rows [0, split)
 * alone in chunks of `chunk`, each folded in by cuda_attn_merge. Against the one softmax
 * over everything (the CPU reference), and a memory-only call against its own reference. */
typedef struct scase {
    int head_dim, n_q, n_k, q_offset, n_heads, n_kv_heads;
    size_t n_mem, split, chunk;
    dtype_t mem_t;
    int layout, neighbor, chunk_len, own_mem_q;
} scase_t;

static void spill_case(const scase_t *c)
{
    const int hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads;
    const dtype_t B = DTYPE_BF16;
    const size_t nq = (size_t)c->n_q * H * hd, nk = (size_t)c->n_k * KV * hd;
    const size_t row = (size_t)KV * hd, nm = c->n_mem * row, nrow = (size_t)c->n_q * H;
    const int se = c->layout == CUDA_ATTN_SELF_EXTEND, dca = c->layout == CUDA_ATTN_DCA;
    float *q = gpu_rand(nq, 1.0f), *k = gpu_rand(nk, 1.0f), *v = gpu_rand(nk, 1.0f);
    float *qa0 = c->layout ? gpu_rand(nq, 1.0f) : NULL, *qa1 = dca ? gpu_rand(nq, 1.0f) : NULL;
    float *ka = se ? gpu_rand(nk, 1.0f) : NULL, *qm = c->own_mem_q ? gpu_rand(nq, 1.0f) : NULL;
    float *mk = gpu_rand(nm, 1.0f), *mv = gpu_rand(nm, 1.0f);
    float *rounded[] = {q, k, v, qa0, qa1, ka, qm};
    for (int t = 0; t < 7; t++)
        gpu_round(rounded[t], t == 1 || t == 2 || t == 5 ? nk : nq, B);
    gpu_round(mk, nm, c->mem_t);
    gpu_round(mv, nm, c->mem_t);
    const float scale = 1.0f / sqrtf((float)hd), ms = c->own_mem_q ? 0.7f * scale : 0.0f;
    ref_in_t ri = {.n_q = c->n_q, .n_k = c->n_k, .q_offset = c->q_offset, .n_heads = H,
                   .n_kv = KV, .hd = hd, .q = q, .k = k, .v = v, .q_alt = {qa0, qa1},
                   .k_alt = ka, .q_mem = qm, .n_mem = c->n_mem, .mk = mk, .mv = mv,
                   .scale = scale, .mem_scale = ms, .layout = c->layout,
                   .neighbor = c->neighbor, .chunk_len = c->chunk_len};
    float *ref = gpu_xmalloc(nq * sizeof(float)), *ref_m = gpu_xmalloc(nq * sizeof(float));
    double *ref_lse = gpu_xmalloc(nrow * sizeof(double)), *ref_lm = gpu_xmalloc(nrow * sizeof(double));
    ref_attention(&ri, ref, ref_lse);
    ref_in_t rm = ri; /* memory rows [0, split) alone: no query index reaches a local key */
    rm.q_offset = -c->n_q - 1;
    rm.n_mem = c->split;
    ref_attention(&rm, ref_m, ref_lm);

    void *dq = gpu_upload(q, nq, B), *dk = gpu_upload(k, nk, B), *dv = gpu_upload(v, nk, B);
    void *dqa0 = gpu_upload(qa0, nq, B), *dqa1 = gpu_upload(qa1, nq, B);
    void *dka = gpu_upload(ka, nk, B), *dqm = gpu_upload(qm, nq, B);
    char *dmk = gpu_upload(mk, nm, c->mem_t), *dmv = gpu_upload(mv, nm, c->mem_t);
    const size_t rb = row * dtype_size(c->mem_t);
    void *o = gpu_poisoned(nq, B), *oc = gpu_poisoned(nq, B);
    float *dl = gpu_poisoned(nrow, DTYPE_F32), *dlc = gpu_poisoned(nrow, DTYPE_F32);
    char desc[200];
    snprintf(desc, sizeof desc, "d%d q%d k%d off%d h%d/%d mem %zu (split %zu, chunk %zu) %s%s%s",
             hd, c->n_q, c->n_k, c->q_offset, H, KV, c->n_mem, c->split, c->chunk,
             dtype_name(c->mem_t), se ? " self-extend" : dca ? " dca" : "",
             c->own_mem_q ? " q_mem" : "");
    if (gpu_setup_failures()) goto done;

    cuda_attn_args_t a = {.n_q = c->n_q, .n_k = c->n_k, .n_heads = H, .n_kv_heads = KV,
                          .head_dim = hd, .q_offset = c->q_offset, .dtype = B,
                          .n_mem = c->n_mem - c->split, .mem_dtype = c->mem_t,
                          .mem_k = dmk + c->split * rb, .mem_v = dmv + c->split * rb,
                          .scale = scale, .out = o, .layout = c->layout,
                          .neighbor = c->neighbor, .chunk_len = c->chunk_len, .mem_scale = ms,
                          .q = dq, .k = dk, .v = dv, .q_alt = {dqa0, dqa1}, .k_alt = dka,
                          .q_mem = dqm, .lse = dl};
    CHECK_RC(cuda_attention_fast(&a, NULL), RC_OK);
    /* Memory alone, first as one call against its own reference, then chunk by chunk. */
    cuda_attn_args_t m = a;
    m.mem_only = 1;
    m.k = m.v = NULL; /* not read */
    m.n_k = 0;
    m.mem_k = dmk;
    m.mem_v = dmv;
    m.n_mem = c->split;
    m.out = oc;
    m.lse = dlc;
    CHECK_RC(cuda_attention(&m, NULL), RC_ERR_UNSUPPORTED); /* the FMA kernel refuses it */
    CHECK_RC(cuda_attention_fast(&m, NULL), RC_OK);
    float *hm = gpu_download(oc, nq, B), *hml = gpu_download(dlc, nrow, DTYPE_F32);
    gpu_compare("mem_only", desc, hm, ref_m, nq, GPU_TOL_BF16);
    double lw = 0;
    for (size_t r = 0; hml && r < nrow; r++)
        lw = fmax(lw, fabs(hml[r] - ref_lm[r]) / (TOL_LSE + TOL_LSE_REL * fabs(ref_lm[r])));
    CHECK_MSG(hml && lw <= 1.0, "%s: mem_only lse off by %.2f of its tolerance", desc, lw);
    for (size_t r0 = 0; r0 < c->split; r0 += c->chunk) {
        m.n_mem = c->split - r0 < c->chunk ? c->split - r0 : c->chunk;
        m.mem_k = dmk + r0 * rb;
        m.mem_v = dmv + r0 * rb;
        CHECK_RC(cuda_attention_fast(&m, NULL), RC_OK);
        CHECK_RC(cuda_attn_merge(o, dl, oc, dlc, nrow, hd, B, NULL), RC_OK);
    }
    float *ho = gpu_download(o, nq, B), *hl = gpu_download(dl, nrow, DTYPE_F32);
    gpu_compare("spill_merge", desc, ho, ref, nq, GPU_TOL_BF16);
    lw = 0;
    for (size_t r = 0; hl && r < nrow; r++)
        lw = fmax(lw, fabs(hl[r] - ref_lse[r]) / (TOL_LSE + TOL_LSE_REL * fabs(ref_lse[r])));
    CHECK_MSG(hl && lw <= 1.0, "%s: merged lse off by %.2f of its tolerance", desc, lw);
    CHECK_RC(cuda_attn_merge(o, dl, oc, dlc, nrow, hd, DTYPE_F32, NULL), RC_ERR_UNSUPPORTED);
    free(hm), free(hml), free(ho), free(hl);
done:;
    void *dev[] = {dq, dk, dv, dqa0, dqa1, dka, dqm, dmk, dmv, o, oc, dl, dlc};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cuda_free(&dev[i]);
    float *host[] = {q, k, v, qa0, qa1, ka, qm, mk, mv, ref, ref_m};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(ref_lse);
    free(ref_lm);
}

int main(void)
{
    const int skip = gpu_ops_begin("test_cuda_knn_attention", 1);
    if (skip) return skip;

    const dtype_t B = DTYPE_BF16, F = DTYPE_F32;
    const int P = CUDA_ATTN_PLAIN, SE = CUDA_ATTN_SELF_EXTEND, DCA = CUDA_ATTN_DCA;
    static const lcase_t lcases[] = {
        /* fma act dim  n_q   n_k   off  h  kv  mem   mem_t layout W   c  qm clamp split */
        {1, B, 64, 70, 70, 0, 4, 4, 0, B, P, 0, 0, 0, 0, 0},
        {1, B, 100, 17, 100, 83, 8, 2, 300, F, P, 0, 0, 0, 0, 0},
        {1, B, 128, 1, 2048, 2047, 8, 8, 1000, B, P, 0, 0, 0, 0, 1},   /* decode */
        {1, F, 64, 40, 300, 260, 4, 2, 500, F, P, 0, 0, 0, 0, 0},
        {1, B, 100, 48, 48, 0, 4, 4, 64, B, P, 0, 0, 0, 1, 0},         /* clamp */
        {0, B, 100, 256, 256, 0, 4, 4, 0, B, P, 0, 0, 0, 0, 0},        /* prefill */
        {0, B, 128, 64, 192, 128, 8, 4, 555, B, P, 0, 0, 0, 0, 0},
        {0, B, 100, 1, 2048, 2047, 32, 32, 0, B, P, 0, 0, 0, 0, 1},    /* decode */
        {0, B, 100, 33, 33, 0, 4, 4, 1000, F, P, 0, 0, 0, 0, 1},       /* long memory */
        {0, B, 64, 90, 200, 110, 4, 2, 150, F, P, 0, 0, 1, 0, 0},      /* q_mem, mem_scale */
        {0, B, 128, 150, 400, 250, 4, 2, 100, B, SE, 64, 0, 1, 0, 0},  /* Self-Extend */
        {0, B, 64, 1, 1500, 1499, 8, 2, 0, B, SE, 100, 0, 0, 0, 1},    /* decode */
        {0, B, 100, 130, 500, 370, 4, 4, 0, B, DCA, 0, 128, 0, 0, 0},  /* DCA */
        {0, B, 128, 1, 1500, 1499, 4, 1, 300, F, DCA, 0, 256, 1, 0, 1}, /* decode */
        {0, B, 100, 96, 96, 0, 4, 4, 200, B, P, 0, 0, 0, 1, 0},        /* clamp */
    };
    for (size_t i = 0; i < sizeof lcases / sizeof lcases[0]; i++) lse_case(&lcases[i]);

    static const scase_t scases[] = {
        /* dim n_q  n_k  off  h kv  mem  split chunk mem_t layout W c qm */
        {64, 70, 70, 0, 4, 4, 300, 200, 64, B, P, 0, 0, 0},
        {100, 33, 60, 27, 8, 2, 1000, 700, 256, F, P, 0, 0, 0},          /* GQA, fp32 rows */
        {128, 1, 513, 512, 8, 8, 600, 600, 200, B, P, 0, 0, 0},          /* decode, all spilled */
        {100, 256, 256, 0, 4, 4, 5000, 4000, 1500, B, P, 0, 0, 0},       /* prefill, splits */
        {64, 90, 200, 110, 4, 2, 400, 150, 100, F, P, 0, 0, 1},          /* q_mem, mem_scale */
        {128, 150, 400, 250, 4, 2, 300, 200, 128, B, SE, 64, 0, 1},      /* Self-Extend */
        {100, 130, 500, 370, 4, 4, 250, 100, 100, B, DCA, 0, 128, 1},    /* DCA */
    };
    for (size_t i = 0; i < sizeof scases / sizeof scases[0]; i++) spill_case(&scases[i]);

    static const kcase_t kcases[] = {
        /* dim n_q n_k off  h kv rows hot  k  neg mem_t qm layout W c */
        {64, 40, 40, 0, 4, 4, 300, 300, 32, 0, B, 0, P, 0, 0},
        {100, 33, 60, 27, 8, 2, 500, 350, 64, 5, B, 0, P, 0, 0},       /* hot + spill, GQA */
        {128, 20, 20, 0, 4, 1, 200, 120, 48, 3, F, 0, P, 0, 0},
        {100, 50, 50, 0, 4, 4, 70, 40, 96, 0, B, 0, P, 0, 0},          /* all rows, k > rows */
        {64, 17, 100, 83, 4, 2, 64, 0, 64, 0, F, 1, P, 0, 0},          /* all rows, spill only */
        {128, 30, 90, 60, 8, 4, 100, 100, 100, 0, F, 1, P, 0, 0},      /* all rows, k = rows */
        {100, 1, 2048, 2047, 32, 32, 1000, 700, 128, 0, B, 1, P, 0, 0}, /* decode, split local */
        {100, 40, 300, 260, 4, 2, 400, 250, 37, 2, B, 1, SE, 64, 0},   /* Self-Extend */
        {64, 60, 400, 340, 4, 4, 150, 150, 150, 0, F, 1, DCA, 0, 128}, /* DCA, all rows */
        {128, 1, 700, 699, 8, 2, 300, 100, 5, 0, B, 0, P, 0, 0},       /* decode, small k */
    };
    for (size_t i = 0; i < sizeof kcases / sizeof kcases[0]; i++) knn_case(&kcases[i]);

    knn_edges();

    const int bench = getenv("RECALL_KNN_BENCH") && atoi(getenv("RECALL_KNN_BENCH"));
    if (bench)
        knn_scale(2048, 32768, 1);
    else
        knn_scale(256, 8192, 0);

    CHECK_MSG(gpu_setup_failures() == 0, "%d device buffers could not be set up",
              gpu_setup_failures());
    return check_summary();
}
