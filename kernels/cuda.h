/* cuda.h — the CUDA backend's kernels behind a C interface.
 *
 * Every op computes what its CPU twin in kernels/cpu.h computes (tests/test_cuda_kernels.c
 * holds each one against it): weights are stored in bf16, activations in bf16 or fp32 as the
 * caller chooses, and all arithmetic accumulates in fp32. No CUDA type appears here: device
 * buffers are plain pointers obtained from cuda_alloc, streams are `void *` (a cudaStream_t;
 * NULL is the legacy default stream).
 *
 * Errors: every entry point checks its arguments (RC_ERR_INVALID, or RC_ERR_UNSUPPORTED for a
 * valid but unimplemented dtype or head size), then every CUDA and cuBLAS call and the launch
 * itself (RC_ERR_DEVICE, with the CUDA error logged). Kernels run asynchronously on the given
 * stream, so a fault inside a kernel surfaces at the next synchronizing call
 * (cuda_stream_sync, cuda_download) as RC_ERR_DEVICE.
 *
 * Dtypes: "act" arguments take DTYPE_F32 or DTYPE_BF16; DTYPE_F16 is RC_ERR_UNSUPPORTED.
 * Weights (embedding table, norm gains, projection matrices) are bf16, passed as uint16_t *. */
#ifndef RECALL_KERNELS_CUDA_H
#define RECALL_KERNELS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- devices ------------------------------------------------------------------------- */

typedef struct cuda_device_info {
    char name[256];
    int cc_major, cc_minor; /* compute capability: 9.0 for H100/H200 */
    int sm_count;
    size_t mem_total, mem_free; /* bytes */
    size_t l2_bytes;
    size_t smem_per_block_optin; /* the most shared memory one block may ask for */
    int driver_version, runtime_version; /* 13000 = 13.0 */
} cuda_device_info_t;

/* Number of usable GPUs. No driver, no device or a driver too old all give *n = 0 and RC_OK:
 * "no GPU" is an answer, not an error (the reason is logged at debug level). */
rc_t cuda_device_count(int *n);

/* Properties of device `device` (0-based). */
rc_t cuda_device_info(int device, cuda_device_info_t *info);

/* Per-device state: the device index, a cuBLAS handle and its workspace. One context serves
 * one stream at a time (cuBLAS's workspace is not shared safely between concurrent streams);
 * make one per concurrently used stream. The context makes its device current on the calling
 * thread at creation; ops assume the current device is the context's. */
typedef struct cuda_ctx cuda_ctx_t;
rc_t cuda_ctx_create(cuda_ctx_t **out, int device);
void cuda_ctx_destroy(cuda_ctx_t **ctx); /* NULL-safe; nulls *ctx */
int cuda_ctx_device(const cuda_ctx_t *ctx);

rc_t cuda_stream_create(void **stream);
void cuda_stream_destroy(void **stream); /* NULL-safe; nulls *stream */
rc_t cuda_stream_sync(void *stream);     /* waits; reports errors of kernels run on it */

/* ---- memory -------------------------------------------------------------------------- */

/* Device memory (cudaMalloc). bytes == 0 gives *p = NULL and RC_OK. The caller owns the
 * buffer until cuda_free, which is NULL-safe and nulls *p. */
rc_t cuda_alloc(void **p, size_t bytes);
void cuda_free(void **p);

/* Host <-> device copies, ordered on `stream` and complete when they return. */
rc_t cuda_upload(void *dst_dev, const void *src_host, size_t bytes, void *stream);
rc_t cuda_download(void *dst_host, const void *src_dev, size_t bytes, void *stream);
/* Device -> device and byte fill, asynchronous on `stream`. */
rc_t cuda_copy(void *dst_dev, const void *src_dev, size_t bytes, void *stream);
rc_t cuda_memset(void *dst_dev, int byte, size_t bytes, void *stream);

/* dst[i] = src[i] converted (fp32 -> bf16 rounds to nearest even, like f32_to_bf16).
 * dst [n] dst_t; src [n] src_t; F32 and BF16 only. dst and src must not overlap unless
 * equal with equal dtypes. */
rc_t cuda_convert(void *dst, dtype_t dst_t, const void *src, dtype_t src_t, size_t n,
                  void *stream);

/* ---- ops ----------------------------------------------------------------------------- */

/* out[t, :] = table[ids[t], :].  out [n_tok, dim] out_t; table [vocab, dim] bf16;
 * ids [n_tok] int32 on the device. An id outside [0, vocab) cannot be reported from the
 * kernel, so its row is written as NaN: the bug shows up downstream instead of reading out
 * of bounds. Callers check ids on the host (the tokenizer's ids are in range). */
rc_t cuda_embedding(void *out, dtype_t out_t, const uint16_t *table, const int32_t *ids,
                    int n_tok, int vocab, int dim, void *stream);

/* cpu_rmsnorm: out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * g.
 * out [n_tok, dim] out_t; x [n_tok, dim] x_t; g [dim] bf16. out may equal x (same dtype). */
rc_t cuda_rmsnorm(void *out, dtype_t out_t, const void *x, dtype_t x_t, const uint16_t *g,
                  int n_tok, int dim, float eps, void *stream);

/* cpu_rope, in place, rotate-half layout, any even head_dim up to 1024.
 * x [n_tok, n_heads, head_dim] x_t; pos [n_tok] int32; inv_freq [head_dim / 2] fp32 (from
 * cpu_rope_inv_freq), both on the device. Angles are rounded to fp32 as HF does; cos/sin are
 * taken in double and rounded to fp32, matching the reference. */
rc_t cuda_rope(void *x, dtype_t x_t, int n_tok, int n_heads, int head_dim, const int32_t *pos,
               const float *inv_freq, float mscale, void *stream);

/* cpu_swiglu: out[i] = silu(gate[i]) * up[i].  gate, up [n] in_t; out [n] out_t; out may
 * equal gate or up when out_t == in_t. */
rc_t cuda_swiglu(void *out, dtype_t out_t, const void *gate, const void *up, dtype_t in_t,
                 size_t n, void *stream);

/* cpu_matmul_nt through cuBLAS, bf16 operands, fp32 accumulation:
 *   y[m, n] = x[m, k] * w[n, k]^T + beta * y[m, n]
 * x [m, k] bf16; w [n, k] bf16 (HF's [out, in] layout); y [m, n] y_t. beta = 1 adds the
 * product to y (a residual connection); beta = 0 ignores y's old contents (NaN included). */
rc_t cuda_matmul_nt(cuda_ctx_t *ctx, void *y, dtype_t y_t, const uint16_t *x,
                    const uint16_t *w, int m, int n, int k, float beta, void *stream);

/* cpu_attention on the GPU: local causal keys and FoT memory keys in one softmax, scores
 * clamped below at -1e6, grouped-query heads; flash-style (online softmax over key tiles, no
 * [n_q, n_k] matrix). head_dim 64, 100 or 128. q, k, v and out share `dtype` (F32 or BF16);
 * memory is F32 or BF16. All pointers are device pointers.
 *
 * With a workspace the key range (memory rows, then local keys) is split across blocks,
 * each writing a partial output and its log-sum-exp, merged by a second kernel: that keeps
 * the GPU busy when there are few queries (decode) or many memory rows. Without one (NULL or
 * too small for two splits) each block walks every key itself; the result is the same up to
 * fp32 rounding. */
typedef struct cuda_attn_args {
    int n_q, n_k;               /* as attn_args_t; requires q_offset + n_q <= n_k */
    int n_heads, n_kv_heads, head_dim;
    int q_offset;               /* query i sees local keys 0 .. q_offset + i */
    dtype_t dtype;              /* of q, k, v, out */
    const void *q;              /* [n_q, n_heads, head_dim]    rotated at local positions */
    const void *k;              /* [n_k, n_kv_heads, head_dim] rotated at local positions */
    const void *v;              /* [n_k, n_kv_heads, head_dim] */
    size_t n_mem;               /* memory rows; 0 for non-memory layers */
    dtype_t mem_dtype;          /* F32 or BF16: the fp8/int8 row formats (common/quant.h) are
                                 * refused (RC_ERR_UNSUPPORTED), and never reach here from a
                                 * stream (model/stream.c refuses them on GPU backends) */
    const void *mem_k;          /* [n_mem, n_kv_heads, head_dim] unrotated */
    const void *mem_v;          /* [n_mem, n_kv_heads, head_dim] */
    float scale;                /* 1 / sqrt(head_dim) */
    void *out;                  /* [n_q, n_heads, head_dim]; must not overlap q, k, v */
    void *workspace;            /* optional device scratch, see cuda_attention_workspace */
    size_t workspace_bytes;

    /* Positional layout (cpu_attention_ext's, kernels/cpu.h), appended so that callers that
     * zero-initialize the struct get plain RoPE. Taken by cuda_attention_fast on its
     * tensor-core path only: there every pair takes its score from exactly one variant,
     * chosen by the query's local index i = q_offset + row and the key's index j:
     *   CUDA_ATTN_PLAIN        (q, k) for all j <= i
     *   CUDA_ATTN_SELF_EXTEND  i - j < neighbor: (q, k);  else (q_alt[0], k_alt)
     *   CUDA_ATTN_DCA          j / chunk_len == i / chunk_len: (q, k); one chunk before:
     *                          (q_alt[0], k); older chunks: (q_alt[1], k)
     * and memory scores are q_mem_i . K_m . mem_scale, all in one softmax. cuda_attention
     * (the FMA kernel) ignores these fields: with any of them set, cuda_attention_fast
     * refuses (RC_ERR_UNSUPPORTED) the inputs its tensor-core path cannot take instead of
     * handing them to it. q_alt, k_alt and q_mem share q's dtype (BF16) and alignment. */
    int layout;                 /* cuda_attn_layout_t; 0: plain */
    int neighbor;               /* self-extend: W >= 1 */
    int chunk_len;              /* dca: c >= 1 */
    const void *q_alt[2];       /* [n_q, n_heads, head_dim] each: queries of variants 2, 3 */
    const void *k_alt;          /* [n_k, n_kv_heads, head_dim] self-extend: keys at j // G */
    const void *q_mem;          /* [n_q, n_heads, head_dim] queries for memory; NULL: q */
    float mem_scale;            /* factor of memory scores; 0: scale */
    /* Optional [n_q, n_heads] fp32 output: each row's log-sum-exp (natural log) of its
     * scaled scores, memory included, as the softmax normalized them (for merging further
     * keys later: cuda_knn_attention, cuda_attn_merge). NULL: not written. */
    float *lse;
    /* 1: the memory rows alone, no local keys: every query's softmax over its n_mem memory
     * scores (q_mem · K_m · mem_scale), as one part of a larger attention that
     * cuda_attn_merge puts together (memory streamed through the device in chunks). n_k,
     * q_offset, k, v and the layout's alternates are ignored (n_mem >= 1). Tensor-core path
     * only: cuda_attention_fast on an sm_80+ GPU with bf16 activations; cuda_attention
     * refuses it (RC_ERR_UNSUPPORTED). */
    int mem_only;
} cuda_attn_args_t;

typedef enum cuda_attn_layout {
    CUDA_ATTN_PLAIN = 0,
    CUDA_ATTN_SELF_EXTEND = 1,
    CUDA_ATTN_DCA = 2,
} cuda_attn_layout_t;

/* Bytes of workspace for which cuda_attention splits the key range as far as it would like
 * on this device (0 when splitting would not help). Any smaller workspace also works. Reads
 * only the shapes and dtypes of *a: its buffers may still be NULL. */
rc_t cuda_attention_workspace(const cuda_attn_args_t *a, size_t *bytes);
rc_t cuda_attention(const cuda_attn_args_t *a, void *stream);

/* The tensor-core attention (kernels/cuda/attention_mma.cu): same arguments, same result as
 * cuda_attention up to bf16 rounding, many times faster on prefill. A drop-in replacement:
 * switch both calls together,
 *     cuda_attention_workspace -> cuda_attention_fast_workspace
 *     cuda_attention           -> cuda_attention_fast
 * It takes the mma path (mma.sync bf16, sm_80 and later) when dtype is BF16 and q, k, v (and
 * bf16 memory) are 16-byte aligned for head_dim 64/128, 8-byte for 100 (fp32 memory:
 * 16-byte); cudaMalloc'd buffers and whole-row offsets into them always are. Otherwise
 * (F32 activations, an older GPU, a misaligned view) it calls cuda_attention, with the same
 * workspace. Differences from cuda_attention on the mma path: the probabilities are rounded
 * to bf16 before the value product and fp32 memory rows are rounded to bf16 as they are
 * read, each 2^-9 relative per element, of the order of the bf16 output's own rounding
 * (tests/test_cuda_attention_mma.c bounds the whole at 5e-3 normalized error). The
 * workspace works as cuda_attention's does: optional, any size, bigger allows more splits
 * of the key range (decode, long memories); size it with cuda_attention_fast_workspace. */
rc_t cuda_attention_fast_workspace(const cuda_attn_args_t *a, size_t *bytes);
rc_t cuda_attention_fast(const cuda_attn_args_t *a, void *stream);

/* cpu_log_softmax: out[t, :] = logits[t, :] - logsumexp(logits[t, :]) (normalizer summed
 * in double).  out, logits [n_tok, vocab] fp32; out may equal logits. */
rc_t cuda_log_softmax(float *out, const float *logits, int n_tok, int vocab, void *stream);

/* cpu_argmax per row: out[t] = index of the largest logits[t, :], the first one on ties.
 * out [n_tok] int32 on the device; logits [n_tok, vocab] fp32. */
rc_t cuda_argmax(int32_t *out, const float *logits, int n_tok, int vocab, void *stream);

/* ---- model backend helpers (model/backend_cuda.c) ------------------------------------ */

/* Makes `device` current on the calling thread (a stream may be driven from any thread). */
rc_t cuda_set_device(int device);

/* Page-locked host memory (cudaMallocHost): copies from it run at full bus speed. The caller
 * owns it until cuda_host_free, which is NULL-safe and nulls *p. */
rc_t cuda_host_alloc(void **p, size_t bytes);
void cuda_host_free(void **p);

/* Device memory in use (total − free, all processes) and the device's total, in bytes, of
 * the current device. */
rc_t cuda_memory_used(size_t *used, size_t *total);

/* Score's gather: out[t] = log_softmax(logits[t, :])[targets[t]] (normalizer summed in
 * double, as the CPU backend does), NaN where targets[t] is outside [0, vocab).
 * out [n_tok] fp32; logits [n_tok, vocab] fp32; targets [n_tok] int32; all on the device. */
rc_t cuda_logprob_gather(float *out, const float *logits, const int32_t *targets, int n_tok,
                         int vocab, void *stream);

/* ---- fused ops and graphs for the model backend's fast paths (kernels/cuda/fused_ops.cu) */

/* After one GEMM against the concatenated [wq; wk; wv]: splits each row of
 * qkv [n_tok, (n_heads + 2·n_kv_heads)·head_dim] bf16 into q_out [n_tok, n_heads·hd] and
 * k_rot [n_tok, n_kv·hd] (both rotated as cuda_rope does at pos[t], mscale 1), k_raw (the
 * keys unrotated; NULL: not wanted) and v_out [n_tok, n_kv·hd], all bf16. pos NULL: no
 * rotation (a plain split). Same bits as the GEMMs into separate buffers plus cuda_rope. */
rc_t cuda_qkv_split_rope(const uint16_t *qkv, int n_tok, int n_heads, int n_kv_heads,
                         int head_dim, const int32_t *pos, const float *inv_freq,
                         uint16_t *q_out, uint16_t *k_rot, uint16_t *k_raw, uint16_t *v_out,
                         void *stream);

/* After one GEMM against the concatenated [w_gate; w_up]: out[t, j] = silu(gu[t, j]) ·
 * gu[t, ffn + j].  out [n_tok, ffn] bf16; gu [n_tok, 2·ffn] bf16; ffn even; no overlap. */
rc_t cuda_swiglu_fused(uint16_t *out, const uint16_t *gu, int n_tok, int ffn, void *stream);

/* One token's projection, a matrix-vector product streaming bf16 weights w [rows, k]
 * (fp32 accumulation). The input is x [k] bf16, or with norm_g given, x [k] fp32 normalized
 * on the fly exactly as cuda_rmsnorm(bf16 out, eps) would (so the norm needs no launch).
 *   CUDA_GEMV_BF16     y [n_out] bf16  = w · x            (rows = n_out)
 *   CUDA_GEMV_F32      y [n_out] fp32  = w · x
 *   CUDA_GEMV_ADD_F32  y [n_out] fp32 += w · x            (the residual add, beta = 1)
 *   CUDA_GEMV_SWIGLU   y [n_out] bf16  = silu(g) · u with g = bf16(w[j] · x) and
 *                      u = bf16(w[n_out + j] · x)        (rows = 2·n_out: [w_gate; w_up])
 * Needs k % 8 == 0, 2·k bytes ≤ 48 KB (cuda_gemv_supported) and 16-byte aligned w (and x
 * when bf16): otherwise RC_ERR_UNSUPPORTED, and the caller uses cuda_matmul_nt. */
enum { CUDA_GEMV_BF16 = 0, CUDA_GEMV_F32 = 1, CUDA_GEMV_ADD_F32 = 2, CUDA_GEMV_SWIGLU = 3 };
int cuda_gemv_supported(int k);
rc_t cuda_gemv(int mode, void *y, const uint16_t *w, const void *x, const uint16_t *norm_g,
               int n_out, int k, float eps, void *stream);

/* Asynchronous copy in any direction (cudaMemcpyDefault); with page-locked host memory it can
 * be captured into a graph, where it reads or writes the host buffer when the graph runs. */
rc_t cuda_copy_async(void *dst, const void *src, size_t bytes, void *stream);

/* Stream capture into an executable graph (CUDA graphs): everything issued on `stream`
 * between begin and end is recorded, not run (thread-local capture mode, so other threads
 * keep allocating). cuda_capture_end(ok = 0) abandons a capture after an error. With *exec
 * already a graph, end updates it in place when the topology is unchanged (only kernel
 * arguments differ) and re-instantiates it otherwise. An exec may be updated while an
 * earlier launch of another exec runs; launches are ordered on the stream as usual. */
rc_t cuda_capture_begin(void *stream);
rc_t cuda_capture_end(void *stream, int ok, void **exec);
rc_t cuda_graph_launch(void *exec, void *stream);
void cuda_graph_destroy(void **exec); /* NULL-safe; nulls *exec */

/* ---- kNN memory on the GPU (REFERENCE.md "kNN memory") ------------------------------- */

/* Exact top-k of memory rows by inner product (kernels/cuda/topk.cu): the GPU hot tier of
 * knn memory. A fused tiled score-and-select: blocks score tiles of (queries x rows) and keep
 * only each query's best k of their row range; a second pass merges the blocks' lists. The
 * full [n_q, rows] score matrix is never written.
 *   q      [n_q, n_heads, head_dim] bf16 (the queries against memory: q_mem, or q);
 *   keys   [n_rows, n_kv_heads, head_dim] in key_dtype (BF16 or F32), unrotated memory keys;
 *          head h searches kv head h / (n_heads / n_kv_heads);
 *   rows   [row0, row1) are searched; returned indices are absolute row numbers;
 *   scores [n_q, n_heads, k] fp32 q . key (no scale), best first;
 *   idx    [n_q, n_heads, k] int32 rows, best first; ties go to the lower row; where the
 *          range has fewer than k rows the tail is padded with idx -1 and score -INFINITY.
 * Order: (score descending, row ascending), a strict total order, so results are
 * deterministic; -0 counts as +0 and NaN as -INFINITY.
 * 1 <= k <= CUDA_TOPK_MAX_K; head_dim 64, 100 or 128. Scores are fp32 sums of bf16 products
 * (fp32 keys are read as they are), so the order can differ from a CPU's only between rows
 * whose scores differ by fp32 rounding. */
#define CUDA_TOPK_MAX_K 256
typedef struct cuda_topk_args {
    int n_q, n_heads, n_kv_heads, head_dim;
    const void *q;
    const void *keys;
    dtype_t key_dtype;
    int64_t row0, row1;
    int k;
    float *scores;
    int32_t *idx;
} cuda_topk_args_t;
/* Device scratch cuda_topk needs for these shapes (reads only shapes, k and the row range). */
rc_t cuda_topk_workspace(const cuda_topk_args_t *a, size_t *bytes);
rc_t cuda_topk(const cuda_topk_args_t *a, void *workspace, size_t workspace_bytes, void *stream);

/* kNN attention's memory part, merged into a local attention already computed
 * (kernels/cuda/knn_attention.cu). cuda_attention / cuda_attention_fast run with n_mem = 0
 * and a non-NULL lse give out_local and its log-sum-exp; this kernel then adds, for query i
 * and head h, the memory rows listed in idx[i, h, 0..k) to that softmax:
 *   score(i, h, m) = q_mem[i, h] . K_m . mem_scale   (clamped below at -1e6, as every score)
 * and rewrites out[i, h] = (e^lse · out_local + Σ_m e^score · V_m) / (e^lse + Σ_m e^score),
 * which is cpu_attention_knn's result (kernels/cpu.h) up to rounding.
 * Rows come from two places, so that a spilled tier's rows can join the device's:
 *   idx in [0, n_hot):            row idx of hot_k / hot_v [n_hot, n_kv_heads, head_dim];
 *   idx in [n_hot, n_hot + n_sp): row idx - n_hot of sp_k / sp_v (same layout);
 *   idx -1:                       skipped.
 * Key/value dtype mem_dtype (BF16 or F32, not the fp8/int8 row formats) for both; q_mem, out
 * bf16; lse fp32 [n_q, n_heads]
 * (natural log, of the scaled scores). Memory rows must be 8-byte (bf16) or 16-byte (f32)
 * aligned, q_mem and out 8-byte (whole-row views of cudaMalloc'd buffers are); otherwise
 * RC_ERR_UNSUPPORTED. An index outside both buffers makes that (query, head)'s output NaN,
 * so a bad list shows downstream instead of reading out of bounds. */
/* Two attentions of the same rows over disjoint sets of keys, each normalized, with its
 * log-sum-exp, into the attention over both sets:
 *     out = (e^la · a + e^lb · b) / (e^la + e^lb),   lse = log(e^la + e^lb)
 * per (query, head) row, in fp32; a and lse_a are updated in place (a row of −inf lse had
 * no keys and weighs nothing). rows = n_q · n_heads; a, b: [rows, head_dim] bf16 (dtype
 * must be BF16); lse_a, lse_b: [rows] fp32 natural log. */
rc_t cuda_attn_merge(void *a, float *lse_a, const void *b, const float *lse_b, size_t rows,
                     int head_dim, dtype_t dtype, void *stream);

typedef struct cuda_knn_attn_args {
    int n_q, n_heads, n_kv_heads, head_dim;
    const void *q_mem;          /* [n_q, n_heads, head_dim] bf16 */
    float mem_scale;            /* scale (times YaRN's mscale where it applies) */
    int k;
    const int32_t *idx;         /* [n_q, n_heads, k] */
    dtype_t mem_dtype;
    const void *hot_k, *hot_v;  /* [n_hot, n_kv_heads, head_dim] */
    int64_t n_hot;
    const void *sp_k, *sp_v;    /* [n_sp, n_kv_heads, head_dim]; NULL when n_sp is 0 */
    int64_t n_sp;
    const float *lse;           /* [n_q, n_heads] of the local attention */
    void *out;                  /* [n_q, n_heads, head_dim] bf16: out_local in, result out */
} cuda_knn_attn_args_t;
rc_t cuda_knn_attention(const cuda_knn_attn_args_t *a, void *stream);

#ifdef __cplusplus
}
#endif

#endif
