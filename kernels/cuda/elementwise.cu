/* elementwise.cu — the per-token ops of a layer: embedding gather, RMSNorm, RoPE, SwiGLU.
 *
 * All are memory-bound: one read and one write of each element. They are written plainly
 * (one element per thread, coalesced along the row); the arithmetic is fp32 throughout. */
#include "kernels/cuda/common.cuh"

/* ---- embedding ----------------------------------------------------------------------- */

template <typename O>
__global__ void embedding_kernel(O *out, const bf16_t *table, const int32_t *ids, int vocab,
                                 int dim)
{
    const int t = blockIdx.x;
    const int32_t id = ids[t];
    const bool ok = id >= 0 && id < vocab;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        st_f(out, (size_t)t * dim + i, ok ? __bfloat162float(table[(size_t)id * dim + i]) : NAN);
}

extern "C" rc_t cuda_embedding(void *out, dtype_t out_t, const uint16_t *table,
                               const int32_t *ids, int n_tok, int vocab, int dim, void *stream)
{
    if (!out || !table || !ids || n_tok < 0 || vocab <= 0 || dim <= 0)
        return RC_ERR_INVALID;
    if (!act_dtype_ok(out_t)) return RC_ERR_UNSUPPORTED;
    if (!n_tok) return RC_OK;
    const int threads = 256;
    const int grid = n_tok; /* one block per token row */
    cudaStream_t s = CU_STREAM(stream);
    if (out_t == DTYPE_F32)
        embedding_kernel<<<grid, threads, 0, s>>>((float *)out, (const bf16_t *)table, ids,
                                                  vocab, dim);
    else
        embedding_kernel<<<grid, threads, 0, s>>>((bf16_t *)out, (const bf16_t *)table, ids,
                                                  vocab, dim);
    CU_LAUNCHED();
    return RC_OK;
}

/* ---- RMSNorm ------------------------------------------------------------------------- */

/* One block per token row. Each thread reads its elements for the sum of squares, then
 * reads them again for the output: the row (a few KB) stays in L1/L2 between the passes.
 * In place is safe: the block-wide sum separates every read of pass one from every write. */
template <typename O, typename X>
__global__ void rmsnorm_kernel(O *out, const X *x, const bf16_t *g, int dim, float eps)
{
    __shared__ float scratch[32];
    const size_t row = (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = ld_f(x, row + i);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        st_f(out, row + i, (ld_f(x, row + i) * inv) * __bfloat162float(g[i]));
}

template <typename O, typename X>
static rc_t rmsnorm_launch(void *out, const void *x, const uint16_t *g, int n_tok, int dim,
                           float eps, cudaStream_t s)
{
    const int threads = dim >= 2048 ? 512 : dim >= 512 ? 256 : 128;
    rmsnorm_kernel<O, X><<<n_tok, threads, 0, s>>>((O *)out, (const X *)x, (const bf16_t *)g,
                                                    dim, eps);
    CU_LAUNCHED();
    return RC_OK;
}

extern "C" rc_t cuda_rmsnorm(void *out, dtype_t out_t, const void *x, dtype_t x_t,
                             const uint16_t *g, int n_tok, int dim, float eps, void *stream)
{
    if (!out || !x || !g || n_tok < 0 || dim <= 0 || !(eps >= 0)) return RC_ERR_INVALID;
    if (!act_dtype_ok(out_t) || !act_dtype_ok(x_t)) return RC_ERR_UNSUPPORTED;
    if (out == x && out_t != x_t) return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    cudaStream_t s = CU_STREAM(stream);
    if (out_t == DTYPE_F32)
        return x_t == DTYPE_F32 ? rmsnorm_launch<float, float>(out, x, g, n_tok, dim, eps, s)
                                : rmsnorm_launch<float, bf16_t>(out, x, g, n_tok, dim, eps, s);
    return x_t == DTYPE_F32 ? rmsnorm_launch<bf16_t, float>(out, x, g, n_tok, dim, eps, s)
                            : rmsnorm_launch<bf16_t, bf16_t>(out, x, g, n_tok, dim, eps, s);
}

/* ---- RoPE ---------------------------------------------------------------------------- */

/* One block per token; a thread per rotation pair p computes that pair's cos/sin once and
 * applies it to every head. The angle is the fp32 product pos · inv_freq (as HF rounds it);
 * cos and sin of it are taken in double and rounded, as the reference does: at positions in
 * the thousands an fp32 sin/cos of the same angle differs in the last bits only, but double
 * keeps fp32 activations within 1e-6 of the CPU. */
template <typename X>
__global__ void rope_kernel(X *x, int n_heads, int head_dim, const int32_t *pos,
                            const float *inv_freq, float mscale)
{
    const int t = blockIdx.x, half = head_dim >> 1;
    const float fpos = (float)pos[t];
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
        const float ang = fpos * inv_freq[p];
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        const float c = (float)cd * mscale, sn = (float)sd * mscale;
        for (int h = 0; h < n_heads; h++) {
            const size_t base = ((size_t)t * n_heads + h) * head_dim;
            const float a = ld_f(x, base + p), b = ld_f(x, base + p + half);
            st_f(x, base + p, a * c - b * sn);
            st_f(x, base + p + half, b * c + a * sn);
        }
    }
}

extern "C" rc_t cuda_rope(void *x, dtype_t x_t, int n_tok, int n_heads, int head_dim,
                          const int32_t *pos, const float *inv_freq, float mscale, void *stream)
{
    if (!x || !pos || !inv_freq || n_tok < 0 || n_heads <= 0 || head_dim <= 0 ||
        head_dim % 2 || head_dim > 1024)
        return RC_ERR_INVALID;
    if (!act_dtype_ok(x_t)) return RC_ERR_UNSUPPORTED;
    if (!n_tok) return RC_OK;
    const int half = head_dim / 2;
    const int threads = half <= 32 ? 32 : half <= 64 ? 64 : half <= 128 ? 128 : 256;
    cudaStream_t s = CU_STREAM(stream);
    if (x_t == DTYPE_F32)
        rope_kernel<<<n_tok, threads, 0, s>>>((float *)x, n_heads, head_dim, pos, inv_freq,
                                              mscale);
    else
        rope_kernel<<<n_tok, threads, 0, s>>>((bf16_t *)x, n_heads, head_dim, pos, inv_freq,
                                              mscale);
    CU_LAUNCHED();
    return RC_OK;
}

/* ---- SwiGLU -------------------------------------------------------------------------- */

template <typename O, typename I>
__global__ void swiglu_kernel(O *out, const I *gate, const I *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = ld_f(gate, i);
        st_f(out, i, (g / (1.0f + expf(-g))) * ld_f(up, i));
    }
}

template <typename O, typename I>
static rc_t swiglu_launch(void *out, const void *gate, const void *up, size_t n, cudaStream_t s)
{
    swiglu_kernel<O, I><<<grid_for(n, 256), 256, 0, s>>>((O *)out, (const I *)gate,
                                                          (const I *)up, n);
    CU_LAUNCHED();
    return RC_OK;
}

extern "C" rc_t cuda_swiglu(void *out, dtype_t out_t, const void *gate, const void *up,
                            dtype_t in_t, size_t n, void *stream)
{
    if (!out || !gate || !up) return RC_ERR_INVALID;
    if (!act_dtype_ok(out_t) || !act_dtype_ok(in_t)) return RC_ERR_UNSUPPORTED;
    if ((out == gate || out == up) && out_t != in_t) return RC_ERR_INVALID;
    if (!n) return RC_OK;
    cudaStream_t s = CU_STREAM(stream);
    if (out_t == DTYPE_F32)
        return in_t == DTYPE_F32 ? swiglu_launch<float, float>(out, gate, up, n, s)
                                 : swiglu_launch<float, bf16_t>(out, gate, up, n, s);
    return in_t == DTYPE_F32 ? swiglu_launch<bf16_t, float>(out, gate, up, n, s)
                             : swiglu_launch<bf16_t, bf16_t>(out, gate, up, n, s);
}
