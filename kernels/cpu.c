/* cpu.c — the CPU reference kernels (see cpu.h for what each computes). */
#include "kernels/cpu.h"

#include <cblas.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "common/quant.h"

/* Products smaller than this (m·n·k multiply-adds) run on the calling thread alone. */
#define MATMUL_SPLIT_MIN (1 << 20)

int cpu_blas_threads_single(void)
{
    const int bt = openblas_get_num_threads();
    if (bt > 1) openblas_set_num_threads(1);
    return bt;
}

void cpu_blas_threads_restore(int prev)
{
    if (prev > 1) openblas_set_num_threads(prev);
}

void cpu_matmul_nt(float *y, const float *x, const float *w, int m, int n, int k)
{
    /* The CPU backend's threads are OpenMP's only: the product is split into row blocks
     * (columns for a single row), one per thread, each a single-threaded OpenBLAS call.
     * Letting OpenBLAS start its own threads between OpenMP regions made the two pools
     * spin against each other (on 2 cores, 40-60 % of the time in sched_yield and
     * libgomp's wait loop). Each output element is the same dot product over k either
     * way: the split is over m or n, never k. */
    if (omp_in_parallel()) { /* a thread of someone's region: BLAS threads are theirs to set */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f,
                    y, n);
        return;
    }
    const int nt = omp_get_max_threads();
    const int bt = cpu_blas_threads_single();
    if (nt < 2 || (double)m * n * k < MATMUL_SPLIT_MIN) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f,
                    y, n);
        cpu_blas_threads_restore(bt);
        return;
    }
    const int by_rows = m >= 2 * nt;
    const int len = by_rows ? m : n;
    /* Blocks of a multiple of 16 rows or columns keep OpenBLAS on its full micro-tiles. */
    int blk = (len + nt - 1) / nt;
    blk = (blk + 15) / 16 * 16;
    const int n_blk = (len + blk - 1) / blk;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int b = 0; b < n_blk; b++) {
        const int lo = b * blk, cnt = len - lo < blk ? len - lo : blk;
        if (by_rows)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cnt, n, k, 1.0f,
                        x + (size_t)lo * k, k, w, k, 0.0f, y + (size_t)lo * n, n);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, cnt, k, 1.0f, x, k,
                        w + (size_t)lo * k, k, 0.0f, y + lo, n);
    }
    cpu_blas_threads_restore(bt);
}

void cpu_rmsnorm(float *out, const float *x, const float *g, int n_tok, int dim, float eps)
{
#pragma omp parallel for if (n_tok > 16)
    for (int t = 0; t < n_tok; t++) {
        const float *xr = x + (size_t)t * dim;
        float *o = out + (size_t)t * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
        /* HF computes the mean in fp32 and multiplies by rsqrt; do the same in float. */
        float inv = 1.0f / sqrtf((float)(ss / dim) + eps);
        for (int i = 0; i < dim; i++) o[i] = (xr[i] * inv) * g[i];
    }
}

void cpu_rope_inv_freq(float *inv_freq, int head_dim, float theta)
{
    for (int p = 0; p < head_dim / 2; p++)
        inv_freq[p] = (float)(1.0 / pow((double)theta, (double)(2 * p) / head_dim));
}

void cpu_rope(float *x, int n_tok, int n_heads, int head_dim, const int32_t *pos,
              const float *inv_freq, float mscale)
{
    int half = head_dim / 2;
#pragma omp parallel for if (n_tok > 16)
    for (int t = 0; t < n_tok; t++) {
        float c[512], s[512];
        for (int p = 0; p < half; p++) {
            /* HF: freqs = pos (fp32) * inv_freq (fp32), rounded to fp32, then cos/sin. */
            float ang = (float)pos[t] * inv_freq[p];
            c[p] = (float)cos((double)ang) * mscale;
            s[p] = (float)sin((double)ang) * mscale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int p = 0; p < half; p++) {
                float a = v[p], b = v[p + half];
                v[p] = a * c[p] - b * s[p];
                v[p + half] = b * c[p] + a * s[p];
            }
        }
    }
}

void cpu_swiglu(float *out, const float *gate, const float *up, size_t n)
{
#pragma omp parallel for if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = (g / (1.0f + expf(-g))) * up[i];
    }
}

/* Query rows per block: the score block is QB × (n_k + n_mem) floats per head. */
#define QB 64
/* Score variants a layout can have (DCA: intra, successive, inter). */
#define MAX_VARIANTS 3

/* The key ranges [lo[v], hi[v]) whose scores query i takes from variant v; together they
 * are exactly [0, i]. Returns the layout's number of variants. */
static int row_segments(const attn_ext_args_t *e, int i, int lo[MAX_VARIANTS],
                        int hi[MAX_VARIANTS])
{
    switch (e->layout) {
    case CPU_ATTN_SELF_EXTEND: {
        const int b = i - e->neighbor + 1 > 0 ? i - e->neighbor + 1 : 0;
        lo[0] = b, hi[0] = i + 1; /* neighbours: i − j < W */
        lo[1] = 0, hi[1] = b;     /* grouped */
        return 2;
    }
    case CPU_ATTN_DCA: {
        const int c = e->chunk_len, s0 = i / c * c, s1 = s0 - c > 0 ? s0 - c : 0;
        lo[0] = s0, hi[0] = i + 1; /* intra: i's own chunk */
        lo[1] = s1, hi[1] = s0;    /* successive: the chunk just before */
        lo[2] = 0, hi[2] = s1;     /* inter: older chunks */
        return 3;
    }
    case CPU_ATTN_PLAIN:
    default:
        lo[0] = 0, hi[0] = i + 1;
        return 1;
    }
}

/* Attention is computed per (head, block of queries) with matrix products. The local keys'
 * scores of every variant go into one row per query; the memory keys (FoT) follow in tiles
 * of MT rows, each folded into the rows' running maximum, sum and output (the online
 * softmax), so the scratch is the same few MiB whatever the memory holds: a 256k-row memory
 * is neither widened to fp32 nor scored all at once. Heads are slices of the interleaved
 * [token, head, dim] rows, read with strides; a bf16/f16 memory tile is widened to fp32 for
 * the one kv head it is read for, an fp8/int8 one (common/quant.h) decoded with that head's
 * scales into the same scratch. A layout with several variants computes each over the
 * union of the ranges the block's rows take from it, the first straight into the score
 * rows, the others into a side buffer from which each row copies its own range; the plain
 * layout is exactly one product. */
#define MT 2048 /* memory rows per tile */

/* Everything one (head, block of queries) needs; shared read-only by the threads. */
typedef struct attn_job {
    const attn_ext_args_t *e;
    const float *vq[MAX_VARIANTS], *vk[MAX_VARIANTS];
    const float *q_mem;
    float mem_scale;
} attn_job_t;

/* One thread's scratch: S [qb, n_k] local scores, T [qb, n_k] a second or third variant's
 * (extended layouts only), M [qb, mt] a memory tile's scores, Kt and Vt [mt, hd] a widened
 * memory tile, O [qb, hd] the output, mx and sum [qb] the running softmax. qb is QB or n_q
 * when that is less, and mt is MT or n_mem when that is less: a knn call attends to k rows per query, and a scratch of MT rows
 * for each of its thousands of calls cost an mmap and munmap apiece. */
typedef struct attn_scratch {
    float *S, *T, *M, *Kt, *Vt, *O, *mx;
    double *sum;
    size_t mt;
} attn_scratch_t;

static void scratch_free(attn_scratch_t *w)
{
    free(w->S), free(w->T), free(w->M), free(w->Kt), free(w->Vt), free(w->O), free(w->mx);
    free(w->sum);
}

static int scratch_alloc(attn_scratch_t *w, const attn_ext_args_t *e)
{
    const attn_args_t *a = &e->a;
    const size_t hd = (size_t)a->head_dim, nk = a->n_k > 0 ? (size_t)a->n_k : 1;
    const size_t qb = a->n_q > 0 && a->n_q < QB ? (size_t)a->n_q : QB; /* rows of a block */
    memset(w, 0, sizeof *w);
    w->S = malloc(qb * nk * sizeof(float));
    w->O = malloc(qb * hd * sizeof(float));
    w->mx = malloc(qb * sizeof(float));
    w->sum = malloc(qb * sizeof(double));
    int ok = w->S && w->O && w->mx && w->sum;
    if (e->layout != CPU_ATTN_PLAIN) ok = ok && (w->T = malloc(qb * nk * sizeof(float)));
    if (a->n_mem) {
        w->mt = (size_t)a->n_mem < MT ? (size_t)a->n_mem : MT;
        w->M = malloc(qb * w->mt * sizeof(float));
        ok = ok && w->M;
        if (a->mem_dtype != DTYPE_F32) {
            w->Kt = malloc(w->mt * hd * sizeof(float));
            w->Vt = malloc(w->mt * hd * sizeof(float));
            ok = ok && w->Kt && w->Vt;
        }
    }
    if (!ok) {
        scratch_free(w);
        memset(w, 0, sizeof *w); /* so that freeing it again is harmless */
    }
    return ok;
}

/* Rows [m0, m0 + n) of kv head kh of a memory matrix as fp32: a pointer into it (fp32
 * memory, leading dimension kv_row) or the rows widened — or, for a quantized row format,
 * decoded with their head's scale — into buf (leading dimension hd). */
static const float *mem_tile(const void *mat, dtype_t dt, size_t m0, int n, int kh, int hd,
                             int n_kv, float *buf, int *ld)
{
    const int kv_row = n_kv * hd;
    if (dt == DTYPE_F32) {
        *ld = kv_row;
        return (const float *)mat + m0 * (size_t)kv_row + (size_t)kh * hd;
    }
    const size_t rb = dtype_row_bytes(dt, n_kv, hd);
    const char *src = (const char *)mat + m0 * rb;
    if (dt == DTYPE_BF16) { /* the common case: a shift per element, inlined */
        for (int t = 0; t < n; t++) {
            const uint16_t *h = (const uint16_t *)(src + (size_t)t * rb) + (size_t)kh * hd;
            float *d = buf + (size_t)t * hd;
            for (int i = 0; i < hd; i++) d[i] = bf16_to_f32(h[i]);
        }
    } else {
        for (int t = 0; t < n; t++)
            quant_row_head_decode(buf + (size_t)t * hd, src + (size_t)t * rb, dt, n_kv, hd, kh);
    }
    *ld = hd;
    return buf;
}

/* Folds scores x[0..n) into a row's running softmax: the row's output o [hd] and sum are
 * rescaled when the maximum rises; x becomes the weights exp(x − max). */
static void softmax_fold(float *x, int n, float *mx, double *sum, float *o, int hd)
{
    float m = *mx;
    for (int t = 0; t < n; t++) {
        if (x[t] < -1e6f) x[t] = -1e6f;
        if (x[t] > m) m = x[t];
    }
    if (m > *mx) {
        const float alpha = expf(*mx - m);
        *sum *= alpha;
        for (int d = 0; d < hd; d++) o[d] *= alpha;
        *mx = m;
    }
    double s = 0;
    for (int t = 0; t < n; t++) s += (x[t] = expf(x[t] - m));
    *sum += s;
}

float cpu_gali_coef(float qceil, float pk, int bf16)
{
    volatile float d; /* keep each rounding */
    if (bf16)
        d = bf16_to_f32(
            f32_to_bf16(bf16_to_f32(f32_to_bf16(qceil)) - bf16_to_f32(f32_to_bf16(pk))));
    else
        d = qceil - pk;
    return d - floorf(d);
}

/* A standard normal drawn from a hash of (seed, layer, head, i, j): the same number
 * whichever thread scores the pair. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static float gali_normal(uint64_t seed, int layer, int head, int i, int j)
{
    uint64_t h = mix64(seed ^ mix64(((uint64_t)(uint32_t)layer << 32) | (uint32_t)head));
    h = mix64(h ^ (((uint64_t)(uint32_t)i << 32) | (uint32_t)j));
    const uint64_t h2 = mix64(h);
    const double u1 = ((double)(h >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    const double u2 = (double)(h2 >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

/* GALI: rows r of the block take, for keys j < n_frac they see, A + c·(B − A) with A their
 * score in S (keys at ⌈p_k⌉) and B in T (keys at ⌊p_k⌋). */
static void gali_mix(const attn_ext_args_t *e, int h, int i0, int nb, float *S, const float *T,
                     int n_frac)
{
    const attn_args_t *a = &e->a;
    const int nk = a->n_k;
    for (int r = 0; r < nb; r++) {
        const int i = a->q_offset + i0 + r;
        const int nj = n_frac < i + 1 ? n_frac : i + 1;
        const float qc = e->gali_qpos[i0 + r];
        float *sr = S + (size_t)r * nk;
        const float *tr = T + (size_t)r * nk;
        for (int j = 0; j < nj; j++) {
            const float c = cpu_gali_coef(qc, e->gali_kpos[j], e->gali_mode);
            if (c == 0.0f) continue;
            sr[j] = sr[j] + c * (tr[j] - sr[j]);
            if (e->gali_noise > 0.0f)
                sr[j] += e->gali_noise * (float)(i - j) / (float)nk *
                         gali_normal(e->gali_seed, e->gali_layer, h, i, j);
        }
    }
}

/* Head h, queries i0 .. i0 + QB: scores of every needed variant into one row per query, a
 * softmax over them, the weighted sum of the local values; then the memory in tiles, each
 * folded in; finally the division by the sum. */
static void attend_block(const attn_job_t *j, int h, int i0, attn_scratch_t *w)
{
    const attn_ext_args_t *e = j->e;
    const attn_args_t *a = &e->a;
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads;
    const int group = nh / nkv;
    const int kv_row = nkv * hd, q_row = nh * hd;
    const size_t n_mem = a->n_mem;
    const int nk = a->n_k;
    const float *const *vq = j->vq, *const *vk = j->vk;
    const int kh = h / group;
    const float *vl = a->v + (size_t)kh * hd;
    const int nb = a->n_q - i0 < QB ? a->n_q - i0 : QB;
    /* Local keys visible to the block's last query; earlier rows mask the rest. */
    const int n_loc = a->q_offset + i0 + nb;
    float *S = w->S, *O = w->O;

    /* Per variant, the union of the block's row ranges. */
    int blo[MAX_VARIANTS], bhi[MAX_VARIANTS], n_var = 1;
    for (int v = 0; v < MAX_VARIANTS; v++) blo[v] = INT_MAX, bhi[v] = 0;
    for (int r = 0; r < nb; r++) {
        int lo[MAX_VARIANTS], hi[MAX_VARIANTS];
        n_var = row_segments(e, a->q_offset + i0 + r, lo, hi);
        for (int v = 0; v < n_var; v++) {
            if (lo[v] >= hi[v]) continue;
            if (lo[v] < blo[v]) blo[v] = lo[v];
            if (hi[v] > bhi[v]) bhi[v] = hi[v];
        }
    }
    for (int v = 0; v < n_var; v++) {
        if (blo[v] >= bhi[v]) continue;
        const float *qb = vq[v] + (size_t)i0 * q_row + (size_t)h * hd;
        const float *kb = vk[v] + (size_t)blo[v] * kv_row + (size_t)kh * hd;
        float *dst = (v == 0 ? S : w->T) + blo[v];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, bhi[v] - blo[v], hd,
                    a->scale, qb, q_row, kb, kv_row, 0.0f, dst, nk);
        if (v == 0) continue;
        for (int r = 0; r < nb; r++) {
            int lo[MAX_VARIANTS], hi[MAX_VARIANTS];
            row_segments(e, a->q_offset + i0 + r, lo, hi);
            if (lo[v] < hi[v])
                memcpy(S + (size_t)r * nk + lo[v], w->T + (size_t)r * nk + lo[v],
                       (size_t)(hi[v] - lo[v]) * sizeof(float));
        }
    }
    if (e->layout == CPU_ATTN_GALI) {
        const int nf = e->gali_n_frac < n_loc ? e->gali_n_frac : n_loc;
        if (nf > 0) {
            const float *qb = vq[0] + (size_t)i0 * q_row + (size_t)h * hd;
            const float *kb = e->k_alt + (size_t)kh * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nf, hd, a->scale, qb, q_row,
                        kb, kv_row, 0.0f, w->T, nk);
            gali_mix(e, h, i0, nb, S, w->T, nf);
        }
    }
    /* The local keys: every query sees at least itself, so the maximum is finite. */
    for (int r = 0; r < nb; r++) {
        float *sr = S + (size_t)r * nk;
        const int n_vis = a->q_offset + i0 + r + 1; /* causal */
        w->mx[r] = -INFINITY;
        w->sum[r] = 0;
        softmax_fold(sr, n_vis, &w->mx[r], &w->sum[r], O, 0);
        for (int t = n_vis; t < n_loc; t++) sr[t] = 0.0f; /* masked */
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, n_loc, 1.0f, S, nk, vl,
                kv_row, 0.0f, O, hd);
    /* The memory, tile by tile. */
    const float *qm = j->q_mem + (size_t)i0 * q_row + (size_t)h * hd;
    const size_t mt = w->mt;
    for (size_t m0 = 0; m0 < n_mem; m0 += mt) {
        const int n = n_mem - m0 < mt ? (int)(n_mem - m0) : (int)mt;
        int ldk, ldv;
        const float *kt = mem_tile(a->mem_k, a->mem_dtype, m0, n, kh, hd, nkv, w->Kt, &ldk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, hd, j->mem_scale, qm, q_row,
                    kt, ldk, 0.0f, w->M, (int)mt);
        for (int r = 0; r < nb; r++)
            softmax_fold(w->M + (size_t)r * mt, n, &w->mx[r], &w->sum[r], O + (size_t)r * hd,
                         hd);
        const float *vt = mem_tile(a->mem_v, a->mem_dtype, m0, n, kh, hd, nkv, w->Vt, &ldv);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, n, 1.0f, w->M, (int)mt, vt,
                    ldv, 1.0f, O, hd);
    }
    for (int r = 0; r < nb; r++) {
        const float inv = (float)(1.0 / w->sum[r]);
        float *dst = a->out + (size_t)(i0 + r) * q_row + (size_t)h * hd;
        for (int d = 0; d < hd; d++) dst[d] = O[(size_t)r * hd + d] * inv;
    }
}

rc_t cpu_attention_ext(const attn_ext_args_t *e)
{
    const attn_args_t *a = &e->a;
    const int nh = a->n_heads;
    const float mem_scale = e->mem_scale != 0.0f ? e->mem_scale : a->scale;
    const float *q_mem = e->q_mem ? e->q_mem : a->q;

    /* Each variant's queries and keys (layout order of row_segments). */
    const float *vq[MAX_VARIANTS] = {a->q, e->q_alt[0], e->q_alt[1]};
    const float *vk[MAX_VARIANTS] = {a->k, e->layout == CPU_ATTN_SELF_EXTEND ? e->k_alt : a->k,
                                     a->k};
    attn_job_t job = {.e = e,
                      .vq = {vq[0], vq[1], vq[2]},
                      .vk = {vk[0], vk[1], vk[2]},
                      .q_mem = q_mem,
                      .mem_scale = mem_scale};
    const int n_blocks = (a->n_q + QB - 1) / QB, tasks = nh * n_blocks;
    /* Threads split the (head, block) tasks and each calls single-threaded BLAS: OpenBLAS's
     * own threads and OpenMP's, both busy at once, fought over the cores (2-4x slower on
     * 2 cores at 1k-16k memory rows). */
    /* One scratch per thread: QB rows of n_k scores and more, a few MiB at the usual
     * windows, but the window comes with the request, so running short is the caller's to
     * answer. Allocated before the parallel region, so that no thread has to find out. */
    const int nt = tasks > 1 ? omp_get_max_threads() : 1;
    attn_scratch_t *ws = calloc((size_t)nt, sizeof *ws);
    int ok = ws != NULL;
    for (int i = 0; ok && i < nt; i++) ok = scratch_alloc(&ws[i], e);
    if (ok) {
        const int blas_threads = tasks > 1 ? cpu_blas_threads_single() : 1;
#pragma omp parallel num_threads(nt) if (tasks > 1)
        {
            attn_scratch_t *w = &ws[omp_get_thread_num()];
#pragma omp for schedule(dynamic)
            for (int t = 0; t < tasks; t++)
                attend_block(&job, t / n_blocks, (t % n_blocks) * QB, w);
        }
        cpu_blas_threads_restore(blas_threads);
    }
    for (int i = 0; ws && i < nt; i++) scratch_free(&ws[i]);
    free(ws);
    return ok ? RC_OK : RC_ERR_NOMEM;
}

rc_t cpu_attention(const attn_args_t *a)
{
    attn_ext_args_t e = {.a = *a, .layout = CPU_ATTN_PLAIN};
    return cpu_attention_ext(&e);
}

void cpu_log_softmax(float *out, const float *logits, int n_tok, int vocab)
{
#pragma omp parallel for if (n_tok > 4)
    for (int t = 0; t < n_tok; t++) {
        const float *l = logits + (size_t)t * vocab;
        float *o = out + (size_t)t * vocab;
        float mx = -INFINITY;
        for (int i = 0; i < vocab; i++)
            if (l[i] > mx) mx = l[i];
        double sum = 0;
        for (int i = 0; i < vocab; i++) sum += exp((double)(l[i] - mx));
        const float lse = mx + (float)log(sum);
        for (int i = 0; i < vocab; i++) o[i] = l[i] - lse;
    }
}

int cpu_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}
