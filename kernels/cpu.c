/* cpu.c — the CPU reference kernels (see cpu.h for what each computes). */
#include "kernels/cpu.h"

#include <cblas.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

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

/* Attention is computed per (head, block of queries) with matrix products: scores for
 * local and memory keys side by side in one row, a row-wise softmax, then the weighted
 * sums. Heads are slices of the interleaved [token, head, dim] rows, read with strides,
 * so nothing is copied except a bf16/f16 memory, which is widened to fp32 once per call.
 * A layout with several variants computes each over the union of the ranges the block's
 * rows take from it, the first straight into the score rows, the others into a side buffer
 * from which each row copies its own range; the plain layout is exactly one product. */
/* Everything one (head, block of queries) needs; shared read-only by the threads. */
typedef struct attn_job {
    const attn_ext_args_t *e;
    const float *vq[MAX_VARIANTS], *vk[MAX_VARIANTS];
    const float *mk, *mv, *q_mem;
    float mem_scale;
    size_t row_len;
} attn_job_t;

/* Head h, queries i0 .. i0 + QB: scores of every needed variant and of memory into one row
 * per query, a row-wise softmax, then the weighted sums. S [QB, row_len], O [QB, hd] and
 * T [QB, n_k] (extended layouts only) are the calling thread's scratch. */
static void attend_block(const attn_job_t *j, int h, int i0, float *S, float *O, float *T)
{
    const attn_ext_args_t *e = j->e;
    const attn_args_t *a = &e->a;
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads;
    const int group = nh / nkv;
    const int kv_row = nkv * hd, q_row = nh * hd;
    const size_t n_mem = a->n_mem, row_len = j->row_len;
    const float *const *vq = j->vq, *const *vk = j->vk;
    const float *mk = j->mk, *mv = j->mv, *q_mem = j->q_mem;
    const float mem_scale = j->mem_scale;
    const int kh = h / group;
    const float *vl = a->v + (size_t)kh * hd;
    const int nb = a->n_q - i0 < QB ? a->n_q - i0 : QB;
    /* Local keys visible to the block's last query; earlier rows mask the rest. */
    const int n_loc = a->q_offset + i0 + nb;

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
        const int ld = v == 0 ? (int)row_len : a->n_k;
        float *dst = (v == 0 ? S : T) + blo[v];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, bhi[v] - blo[v], hd,
                    a->scale, qb, q_row, kb, kv_row, 0.0f, dst, ld);
        if (v == 0) continue;
        for (int r = 0; r < nb; r++) {
            int lo[MAX_VARIANTS], hi[MAX_VARIANTS];
            row_segments(e, a->q_offset + i0 + r, lo, hi);
            if (lo[v] < hi[v])
                memcpy(S + (size_t)r * row_len + lo[v], T + (size_t)r * a->n_k + lo[v],
                       (size_t)(hi[v] - lo[v]) * sizeof(float));
        }
    }
    if (n_mem)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)n_mem, hd,
                    mem_scale, q_mem + (size_t)i0 * q_row + (size_t)h * hd, q_row,
                    mk + (size_t)kh * hd, kv_row, 0.0f, S + a->n_k, (int)row_len);
    for (int r = 0; r < nb; r++) {
        float *sr = S + (size_t)r * row_len;
        const int n_vis = a->q_offset + i0 + r + 1; /* causal */
        float mx = -INFINITY;
        for (int j = 0; j < n_vis; j++) {
            if (sr[j] < -1e6f) sr[j] = -1e6f;
            if (sr[j] > mx) mx = sr[j];
        }
        for (size_t m = 0; m < n_mem; m++) {
            float *x = sr + a->n_k + m;
            if (*x < -1e6f) *x = -1e6f;
            if (*x > mx) mx = *x;
        }
        double sum = 0;
        for (int j = 0; j < n_vis; j++) sum += (sr[j] = expf(sr[j] - mx));
        for (int j = n_vis; j < a->n_k; j++) sr[j] = 0.0f; /* masked */
        for (size_t m = 0; m < n_mem; m++) sum += (sr[a->n_k + m] = expf(sr[a->n_k + m] - mx));
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < row_len; j++) sr[j] *= inv;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, n_loc, 1.0f, S,
                (int)row_len, vl, kv_row, 0.0f, O, hd);
    if (n_mem)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, (int)n_mem, 1.0f,
                    S + a->n_k, (int)row_len, mv + (size_t)kh * hd, kv_row, 1.0f, O, hd);
    for (int r = 0; r < nb; r++)
        memcpy(a->out + (size_t)(i0 + r) * q_row + (size_t)h * hd, O + (size_t)r * hd,
               hd * sizeof(float));
}

void cpu_attention_ext(const attn_ext_args_t *e)
{
    const attn_args_t *a = &e->a;
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads;
    const int kv_row = nkv * hd;
    const size_t n_mem = a->n_mem;
    const float mem_scale = e->mem_scale != 0.0f ? e->mem_scale : a->scale;
    const float *q_mem = e->q_mem ? e->q_mem : a->q;

    /* Each variant's queries and keys (layout order of row_segments). */
    const float *vq[MAX_VARIANTS] = {a->q, e->q_alt[0], e->q_alt[1]};
    const float *vk[MAX_VARIANTS] = {a->k, e->layout == CPU_ATTN_SELF_EXTEND ? e->k_alt : a->k,
                                     a->k};

    float *wide_k = NULL, *wide_v = NULL;
    const float *mk = a->mem_k, *mv = a->mem_v;
    if (n_mem && a->mem_dtype != DTYPE_F32) {
        wide_k = malloc(n_mem * (size_t)kv_row * sizeof(float));
        wide_v = malloc(n_mem * (size_t)kv_row * sizeof(float));
        if (!wide_k || !wide_v) abort();
        dtype_to_f32(wide_k, a->mem_k, a->mem_dtype, n_mem * (size_t)kv_row);
        dtype_to_f32(wide_v, a->mem_v, a->mem_dtype, n_mem * (size_t)kv_row);
        mk = wide_k;
        mv = wide_v;
    }

    attn_job_t job = {.e = e,
                      .vq = {vq[0], vq[1], vq[2]},
                      .vk = {vk[0], vk[1], vk[2]},
                      .mk = mk,
                      .mv = mv,
                      .q_mem = q_mem,
                      .mem_scale = mem_scale,
                      .row_len = (size_t)a->n_k + n_mem};
    const int n_blocks = (a->n_q + QB - 1) / QB, tasks = nh * n_blocks;
    /* Threads split the (head, block) tasks and each calls single-threaded BLAS: OpenBLAS's
     * own threads and OpenMP's, both busy at once, fought over the cores (2-4x slower on
     * 2 cores at 1k-16k memory rows). */
    const int blas_threads = tasks > 1 ? cpu_blas_threads_single() : 1;
#pragma omp parallel if (tasks > 1)
    {
        float *S = malloc((size_t)QB * job.row_len * sizeof(float)); /* [QB, n_k + n_mem] */
        float *O = malloc((size_t)QB * hd * sizeof(float));          /* [QB, hd] */
        float *T = NULL; /* [QB, n_k] scores of a second or third variant */
        if (e->layout != CPU_ATTN_PLAIN && !(T = malloc((size_t)QB * a->n_k * sizeof(float))))
            abort();
        if (!S || !O) abort();
#pragma omp for schedule(dynamic)
        for (int t = 0; t < tasks; t++) attend_block(&job, t / n_blocks, (t % n_blocks) * QB, S, O, T);
        free(S);
        free(O);
        free(T);
    }
    cpu_blas_threads_restore(blas_threads);
    free(wide_k);
    free(wide_v);
}

void cpu_attention(const attn_args_t *a)
{
    attn_ext_args_t e = {.a = *a, .layout = CPU_ATTN_PLAIN};
    cpu_attention_ext(&e);
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
