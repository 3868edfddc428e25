/* cpu.h — the CPU reference kernels (fp32).
 *
 * These define what every op computes; the CUDA kernels (kernels/cuda.h) are tested
 * against them. Buffers are row-major; shapes are written next to each argument. Matrix
 * products go through OpenBLAS; the rest is plain C, parallel over rows with OpenMP. */
#ifndef RECALL_KERNELS_CPU_H
#define RECALL_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"

/* y[m, n] = x[m, k] · w[n, k]ᵀ  (a Linear layer with HF's [out, in] weight layout). */
void cpu_matmul_nt(float *y, const float *x, const float *w, int m, int n, int k);

/* The CPU code's threads are OpenMP's; OpenBLAS's own pool, busy at the same time, fights
 * it for the cores. cpu_blas_threads_single() sets OpenBLAS to one thread and returns the
 * count it had; cpu_blas_threads_restore() gives that count back. */
int cpu_blas_threads_single(void);
void cpu_blas_threads_restore(int prev);

/* out[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) ⊙ g.  out may equal x. */
void cpu_rmsnorm(float *out, const float *x, const float *g, int n_tok, int dim, float eps);

/* In-place RoPE, rotate-half layout: for each token t, head h and pair (p, p + d/2),
 * angle = pos[t] · inv_freq[p]; (x_p, x_{p+d/2}) ← (x_p c − x_{p+d/2} s, x_{p+d/2} c + x_p s)
 * with c = cos(angle) · mscale, s = sin(angle) · mscale.
 * x [n_tok, n_heads, head_dim]; pos [n_tok]; inv_freq [head_dim / 2]. Angles are computed
 * in double and rounded to float, as HF does with fp32 cos/sin tables. */
void cpu_rope(float *x, int n_tok, int n_heads, int head_dim, const int32_t *pos,
              const float *inv_freq, float mscale);

/* inv_freq[p] = 1 / theta^(2p / head_dim), p < head_dim / 2. */
void cpu_rope_inv_freq(float *inv_freq, int head_dim, float theta);

/* out[i] = silu(gate[i]) · up[i].  out may equal gate or up. */
void cpu_swiglu(float *out, const float *gate, const float *up, size_t n);

/* Attention of a chunk of queries over the local keys and, for FoT memory layers, over
 * memory keys, in one softmax (fp32):
 *   s_local(i, j) = q_i · k_j · scale   for j ≤ q_offset + i (causal), else excluded
 *   s_mem(i, m)   = q_i · K_m · scale   for every memory row m
 *   out_i = Σ softmax(s)_j v_j + Σ softmax(s)_m V_m
 * Scores are clamped below at −1e6 (LongLLaMA). Query head h uses key head
 * h / (n_heads / n_kv_heads) (grouped-query attention). */
typedef struct attn_args {
    int n_q;               /* queries in this chunk */
    int n_k;               /* local keys visible to the chunk (cache + chunk) */
    int n_heads, n_kv_heads, head_dim;
    int q_offset;          /* local index of query 0: query i sees keys 0..q_offset+i */
    const float *q;        /* [n_q, n_heads, head_dim]    rotated at local positions */
    const float *k;        /* [n_k, n_kv_heads, head_dim] rotated at local positions */
    const float *v;        /* [n_k, n_kv_heads, head_dim] */
    size_t n_mem;          /* memory rows; 0 for non-memory layers */
    dtype_t mem_dtype;     /* f32, bf16, f16, or a row format (fp8, int8: common/quant.h) */
    const void *mem_k;     /* [n_mem, n_kv_heads, head_dim] unrotated, mem_dtype: n_mem rows
                            * of dtype_row_bytes(mem_dtype, n_kv_heads, head_dim) bytes */
    const void *mem_v;     /* [n_mem, n_kv_heads, head_dim] mem_dtype, rows as mem_k's */
    float scale;           /* 1 / sqrt(head_dim) */
    float *out;            /* [n_q, n_heads, head_dim] */
} attn_args_t;
/* Returns RC_OK, or RC_ERR_NOMEM when its scratch (a few score blocks of n_k columns per
 * thread) cannot be had; out is then unspecified. The same for the two variants below. */
rc_t cpu_attention(const attn_args_t *a);

/* Local attention whose (query, key) pairs take positions by distance (Self-Extend, Dual
 * Chunk Attention; model/positional.h says what the positions are). The caller rotates the
 * queries and keys each way the layout needs; every pair takes its score from exactly one
 * variant, chosen by the query's local index i = q_offset + row and the key's index j:
 *   CPU_ATTN_PLAIN        (q, k) for all j ≤ i: cpu_attention itself
 *   CPU_ATTN_SELF_EXTEND  i − j < neighbor: (q, k);  else (q_alt[0], k_alt)
 *   CPU_ATTN_DCA          j // chunk_len == i // chunk_len: (q, k); one chunk before:
 *                         (q_alt[0], k); older chunks: (q_alt[1], k)
 *   CPU_ATTN_GALI         every j ≤ i: A = (q, k); for j < gali_n_frac also B = (q, k_alt)
 *                         and the score A + c·(B − A), c = positional_gali_coef(
 *                         gali_qpos[row], gali_kpos[j], gali_mode) (model/positional.h;
 *                         computed here the same way), plus Gaussian noise where c ≠ 0
 *                         when gali_noise > 0
 * and all chosen scores, with the memory scores s_mem(i, m) = q_mem_i · K_m · mem_scale, go
 * through one fp32 softmax as in cpu_attention (same clamp, same grouped-query heads). Scores
 * of each variant are computed with matrix products over the key range some row of a query
 * block needs, so the cost stays near one product per key, whatever the layout. */
typedef enum cpu_attn_layout {
    CPU_ATTN_PLAIN = 0,
    CPU_ATTN_SELF_EXTEND = 1,
    CPU_ATTN_DCA = 2,
    CPU_ATTN_GALI = 3,
} cpu_attn_layout_t;

typedef struct attn_ext_args {
    attn_args_t a;         /* as for cpu_attention; a.q and a.k form the first variant */
    cpu_attn_layout_t layout;
    int neighbor;          /* self-extend: W (≥ 1) */
    int chunk_len;         /* dca: c (≥ 1) */
    const float *q_alt[2]; /* [n_q, n_heads, head_dim] each: the queries of variants 2, 3 */
    const float *k_alt;    /* [n_k, n_kv_heads, head_dim] self-extend: keys of variant 2;
                            * gali: keys at ⌊p_k⌋ (the first gali_n_frac rows are read) */
    const float *q_mem;    /* [n_q, n_heads, head_dim] queries for memory scores; NULL: a.q */
    float mem_scale;       /* factor of memory scores; 0: a.scale */
    /* gali only. */
    int gali_n_frac;         /* keys 0 … gali_n_frac − 1 may sit at fractional positions */
    const float *gali_kpos;  /* [n_k] key positions p_k */
    const float *gali_qpos;  /* [n_q] ⌈p_q⌉ of each query */
    int gali_mode;           /* 0 paper (fp32 c), 1 reference (bf16 c) */
    float gali_noise;        /* 0: none; else σ = gali_noise · (i − j) / n_k */
    uint64_t gali_seed;      /* with gali_layer, what the noise is drawn from */
    int gali_layer;
} attn_ext_args_t;
rc_t cpu_attention_ext(const attn_ext_args_t *e);

/* GALI's interpolation coefficient (model/positional.h): (qceil − pk) mod 1 with the
 * subtraction in float32, or with bf16 set as frac(bf16(bf16(qceil) − bf16(pk))). */
float cpu_gali_coef(float qceil, float pk, int bf16);

/* out[t, :] = log_softmax(logits[t, :]), computed in double for the normalizer. */
void cpu_log_softmax(float *out, const float *logits, int n_tok, int vocab);

/* Index of the largest element (the first one on ties). */
int cpu_argmax(const float *x, int n);

/* ---- kNN memory attention (kernels/cpu_knn.c; REFERENCE.md "kNN memory") ---------------- */

/* Attention as cpu_attention_ext, except that query i and head h see, of the memory, only
 * the rows idx[i, h, 0..k) (any order; −1 entries are skipped), in the same single fp32
 * softmax with the local keys. The lists come from memory_knn_search (memory/knn.h) or any
 * exact top-k (a GPU's) in the same layout. With every memory row listed once the result
 * is cpu_attention_ext's up to fp32 rounding of the sums' order.
 *   e:   as for cpu_attention_ext; e->a.n_mem / mem_k / mem_v are the whole memory;
 *   idx: [n_q, n_heads, k] memory row indices. */
typedef struct attn_knn_args {
    attn_ext_args_t e;
    int k;              /* memory rows per (query, head) */
    const int64_t *idx; /* [n_q, n_heads, k] */
} attn_knn_args_t;
/* RC_ERR_NOMEM when the heads' local keys ([n_kv_heads, n_k, head_dim] copies) or a
 * thread's k gathered rows cannot be allocated; RC_ERR_INVALID when a list names a row
 * at or past n_mem (out is then partly written). */
rc_t cpu_attention_knn(const attn_knn_args_t *a);

#endif
