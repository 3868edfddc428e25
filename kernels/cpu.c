/* cpu.c — the CPU reference kernels (see cpu.h for what each computes). */
#include "kernels/cpu.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_matmul_nt(float *y, const float *x, const float *w, int m, int n, int k)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
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

/* Converts rows [from, from + n) of a memory block to fp32 [n, row] — the memory is read in
 * blocks so a bf16 memory is never expanded whole. */
static void mem_rows_f32(float *dst, const void *src, dtype_t t, size_t from, size_t n, int row)
{
    const char *p = (const char *)src + from * (size_t)row * dtype_size(t);
    dtype_to_f32(dst, p, t, n * (size_t)row);
}



void cpu_attention(const attn_args_t *a)
{
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads;
    const int group = nh / nkv;
    const int kv_row = nkv * hd;
    const size_t n_score = (size_t)a->n_k + a->n_mem;

    /* One task per (query, head); every task walks local keys then memory keys into one
     * score row, then softmax and the weighted sum. Memory is converted block by block. */
    float *memk = NULL, *memv = NULL;
    if (a->n_mem && a->mem_dtype != DTYPE_F32) {
        memk = malloc(a->n_mem * (size_t)kv_row * sizeof(float));
        memv = malloc(a->n_mem * (size_t)kv_row * sizeof(float));
        if (!memk || !memv) abort();
        mem_rows_f32(memk, a->mem_k, a->mem_dtype, 0, a->n_mem, kv_row);
        mem_rows_f32(memv, a->mem_v, a->mem_dtype, 0, a->n_mem, kv_row);
    }
    const float *mk = a->n_mem ? (memk ? memk : a->mem_k) : NULL;
    const float *mv = a->n_mem ? (memv ? memv : a->mem_v) : NULL;

#pragma omp parallel
    {
        float *score = malloc(n_score * sizeof(float));
        if (!score) abort();
#pragma omp for collapse(2) schedule(static)
        for (int i = 0; i < a->n_q; i++) {
            for (int h = 0; h < nh; h++) {
                const float *q = a->q + ((size_t)i * nh + h) * hd;
                const int kh = h / group;
                const int n_vis = a->q_offset + i + 1; /* causal: keys 0 .. q_offset + i */
                float mx = -INFINITY;
                for (int j = 0; j < n_vis; j++) {
                    const float *k = a->k + (size_t)j * kv_row + (size_t)kh * hd;
                    float d = 0;
                    for (int e = 0; e < hd; e++) d += q[e] * k[e];
                    d *= a->scale;
                    if (d < -1e6f) d = -1e6f;
                    score[j] = d;
                    if (d > mx) mx = d;
                }
                for (size_t m = 0; m < a->n_mem; m++) {
                    const float *k = mk + m * (size_t)kv_row + (size_t)kh * hd;
                    float d = 0;
                    for (int e = 0; e < hd; e++) d += q[e] * k[e];
                    d *= a->scale;
                    if (d < -1e6f) d = -1e6f;
                    score[n_vis + m] = d;
                    if (d > mx) mx = d;
                }
                const size_t n_tot = (size_t)n_vis + a->n_mem;
                double sum = 0;
                for (size_t j = 0; j < n_tot; j++) {
                    score[j] = expf(score[j] - mx);
                    sum += score[j];
                }
                const float inv = (float)(1.0 / sum);
                float *o = a->out + ((size_t)i * nh + h) * hd;
                float acc[512];
                for (int e = 0; e < hd; e++) acc[e] = 0;
                for (int j = 0; j < n_vis; j++) {
                    const float *v = a->v + (size_t)j * kv_row + (size_t)kh * hd;
                    const float p = score[j] * inv;
                    for (int e = 0; e < hd; e++) acc[e] += p * v[e];
                }
                for (size_t m = 0; m < a->n_mem; m++) {
                    const float *v = mv + m * (size_t)kv_row + (size_t)kh * hd;
                    const float p = score[n_vis + m] * inv;
                    for (int e = 0; e < hd; e++) acc[e] += p * v[e];
                }
                for (int e = 0; e < hd; e++) o[e] = acc[e];
            }
        }
        free(score);
    }
    free(memk);
    free(memv);
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
