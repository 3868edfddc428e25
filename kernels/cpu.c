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

/* Query rows per block: the score block is QB × (n_k + n_mem) floats per head. */
#define QB 64

/* Attention is computed per (head, block of queries) with matrix products: scores for
 * local and memory keys side by side in one row, a row-wise softmax, then the weighted
 * sums. Heads are slices of the interleaved [token, head, dim] rows, read with strides,
 * so nothing is copied except a bf16/f16 memory, which is widened to fp32 once per call. */
void cpu_attention(const attn_args_t *a)
{
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads;
    const int group = nh / nkv;
    const int kv_row = nkv * hd, q_row = nh * hd;
    const size_t n_mem = a->n_mem;

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

    const size_t row_len = (size_t)a->n_k + n_mem;
    float *S = malloc((size_t)QB * row_len * sizeof(float)); /* [QB, n_k + n_mem] */
    float *O = malloc((size_t)QB * hd * sizeof(float));      /* [QB, hd] */
    if (!S || !O) abort();

    for (int h = 0; h < nh; h++) {
        const int kh = h / group;
        const float *kl = a->k + (size_t)kh * hd, *vl = a->v + (size_t)kh * hd;
        for (int i0 = 0; i0 < a->n_q; i0 += QB) {
            const int nb = a->n_q - i0 < QB ? a->n_q - i0 : QB;
            const float *qb = a->q + (size_t)i0 * q_row + (size_t)h * hd;
            /* Local keys visible to the block's last query; earlier rows mask the rest. */
            const int n_loc = a->q_offset + i0 + nb;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n_loc, hd, a->scale, qb,
                        q_row, kl, kv_row, 0.0f, S, (int)row_len);
            if (n_mem)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)n_mem, hd,
                            a->scale, qb, q_row, mk + (size_t)kh * hd, kv_row, 0.0f,
                            S + a->n_k, (int)row_len);
#pragma omp parallel for if ((size_t)nb * row_len > 65536)
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
    }
    free(S);
    free(O);
    free(wide_k);
    free(wide_v);
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
