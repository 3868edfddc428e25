/* fused_ops.cu — fused kernels and CUDA-graph helpers for the model backend's fast paths
 * (model/backend_cuda.c): the q/k/v split with RoPE after one fused QKV GEMM, SwiGLU over a
 * fused gate/up GEMM's output, matrix-vector products for one-token decode (with the RMSNorm
 * of their input, the residual add or SwiGLU fused in), and stream capture into an
 * updatable graph.
 *
 * Every kernel computes what the unfused sequence of kernels/cuda.h ops computes, with the
 * same roundings at the same places (bf16 after each GEMM output, fp32 arithmetic), so the
 * backend's results stay those of the plain path up to the order of fp32 sums. */
#include "kernels/cuda/common.cuh"

/* ---- q/k/v split + RoPE -------------------------------------------------------------- */

/* One block row per token, blockIdx.y splits the heads: thread x is rotation pair p (cos/sin
 * computed once per pair, as rope_kernel does: fp32 angle, double sincos), thread y a head
 * of the block's share. q heads go to q_out rotated, kv heads to k_rot rotated and to k_raw
 * as they are; v is copied. */
__global__ void qkv_split_rope_kernel(const bf16_t *qkv, int n_heads, int n_kv, int hd,
                                      const int32_t *pos, const float *inv_freq, bf16_t *q_out,
                                      bf16_t *k_rot, bf16_t *k_raw, bf16_t *v_out)
{
    const int t = blockIdx.x, half = hd >> 1;
    const size_t q_dim = (size_t)n_heads * hd, kv_dim = (size_t)n_kv * hd;
    const bf16_t *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const int hstep = gridDim.y * blockDim.y, h0 = blockIdx.y * blockDim.y + threadIdx.y;
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
        float c = 1.0f, sn = 0.0f;
        if (pos) {
            const float ang = (float)pos[t] * inv_freq[p];
            double sd, cd;
            sincos((double)ang, &sd, &cd);
            c = (float)cd;
            sn = (float)sd;
        }
        for (int h = h0; h < n_heads + n_kv; h += hstep) {
            const bool is_q = h < n_heads;
            const size_t src = (size_t)h * hd; /* q heads, then k heads, in the fused row */
            const float a = __bfloat162float(row[src + p]), b = __bfloat162float(row[src + p + half]);
            bf16_t *dst = is_q ? q_out + (size_t)t * q_dim + src
                               : k_rot + (size_t)t * kv_dim + (src - q_dim);
            dst[p] = __float2bfloat16_rn(a * c - b * sn);
            dst[p + half] = __float2bfloat16_rn(b * c + a * sn);
            if (!is_q && k_raw) {
                bf16_t *r = k_raw + (size_t)t * kv_dim + (src - q_dim);
                r[p] = row[src + p];
                r[p + half] = row[src + p + half];
            }
        }
    }
    const int tid = (blockIdx.y * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const int nthr = gridDim.y * blockDim.y * blockDim.x;
    for (size_t i = tid; i < kv_dim; i += nthr)
        v_out[(size_t)t * kv_dim + i] = row[q_dim + kv_dim + i];
}

extern "C" rc_t cuda_qkv_split_rope(const uint16_t *qkv, int n_tok, int n_heads, int n_kv_heads,
                                    int head_dim, const int32_t *pos, const float *inv_freq,
                                    uint16_t *q_out, uint16_t *k_rot, uint16_t *k_raw,
                                    uint16_t *v_out, void *stream)
{
    if (!qkv || !q_out || !k_rot || !v_out || n_tok < 0 || n_heads <= 0 || n_kv_heads <= 0 ||
        head_dim <= 0 || head_dim % 2 || (pos && !inv_freq))
        return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    const int half = head_dim / 2;
    const dim3 block(half <= 32 ? 32 : 64, 4);
    /* Few tokens (decode) spread the heads over more blocks. */
    const int ysplit = n_tok >= 64 ? 1 : 8;
    qkv_split_rope_kernel<<<dim3(n_tok, ysplit), block, 0, CU_STREAM(stream)>>>(
        (const bf16_t *)qkv, n_heads, n_kv_heads, head_dim, pos, inv_freq, (bf16_t *)q_out,
        (bf16_t *)k_rot, (bf16_t *)k_raw, (bf16_t *)v_out);
    CU_LAUNCHED();
    return RC_OK;
}

/* ---- SwiGLU over a fused gate/up row ------------------------------------------------- */

/* out[t, j] = silu(gu[t, j]) · gu[t, ffn + j], two bf16 at a time (ffn even). */
__global__ void swiglu_pair_kernel(bf16_t *out, const bf16_t *gu, int ffn, size_t total2)
{
    const int h2 = ffn >> 1;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total2;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / h2, j = (i % h2) * 2;
        const __nv_bfloat162 g2 = *(const __nv_bfloat162 *)(gu + t * 2 * ffn + j);
        const __nv_bfloat162 u2 = *(const __nv_bfloat162 *)(gu + t * 2 * ffn + ffn + j);
        const float g0 = __low2float(g2), g1 = __high2float(g2);
        const float r0 = (g0 / (1.0f + expf(-g0))) * __low2float(u2);
        const float r1 = (g1 / (1.0f + expf(-g1))) * __high2float(u2);
        *(__nv_bfloat162 *)(out + t * ffn + j) = __floats2bfloat162_rn(r0, r1);
    }
}

extern "C" rc_t cuda_swiglu_fused(uint16_t *out, const uint16_t *gu, int n_tok, int ffn,
                                  void *stream)
{
    if (!out || !gu || n_tok < 0 || ffn <= 0 || ffn % 2 || (const void *)out == (const void *)gu)
        return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    const size_t total2 = (size_t)n_tok * (ffn / 2);
    swiglu_pair_kernel<<<grid_for(total2, 256), 256, 0, CU_STREAM(stream)>>>(
        (bf16_t *)out, (const bf16_t *)gu, ffn, total2);
    CU_LAUNCHED();
    return RC_OK;
}

/* ---- matrix-vector products for one token -------------------------------------------- */

#define GEMV_WARPS 8
#define GEMV_UNROLL 4 /* 16-byte chunks a lane has in flight per row */

__device__ __forceinline__ float dot8(uint4 w, uint4 x)
{
    const uint32_t wa[4] = {w.x, w.y, w.z, w.w}, xa[4] = {x.x, x.y, x.z, x.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s = fmaf(__uint_as_float(wa[i] << 16), __uint_as_float(xa[i] << 16), s);
        s = fmaf(__uint_as_float(wa[i] & 0xffff0000u), __uint_as_float(xa[i] & 0xffff0000u), s);
    }
    return s;
}

/* Each warp computes two rows: r0 and r1 (r1 = r0 + 1, or the up row r0 + n_out for SwiGLU).
 * The block first stages the input vector in shared memory as bf16 — normalized there when
 * g is given (exactly rmsnorm_kernel's (x · inv) · g, rounded to bf16) — after issuing its
 * first weight loads, so the weights stream while the prologue runs. */
template <int MODE>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(void *y, const bf16_t *w, const void *x, const bf16_t *g, int n_out, int k,
                float eps)
{
    extern __shared__ uint4 xs4[];
    __shared__ float scratch[32];
    bf16_t *xs = (bf16_t *)xs4;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nc = k >> 3;
    const int pair = blockIdx.x * GEMV_WARPS + warp;
    int r0, r1;
    if (MODE == CUDA_GEMV_SWIGLU) {
        r0 = pair;
        r1 = pair + n_out;
    } else {
        r0 = 2 * pair;
        r1 = r0 + 1 < n_out ? r0 + 1 : r0;
    }
    const bool live = r0 < n_out;
    const uint4 *w0 = (const uint4 *)(w + (size_t)(live ? r0 : 0) * k);
    const uint4 *w1 = (const uint4 *)(w + (size_t)(live ? r1 : 0) * k);
    uint4 a[GEMV_UNROLL], b[GEMV_UNROLL];
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int c = lane + 32 * u;
        a[u] = live && c < nc ? __ldg(w0 + c) : zero;
        b[u] = live && c < nc ? __ldg(w1 + c) : zero;
    }
    if (g) {
        const float *xf = (const float *)x;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const float v = xf[i];
            ss += v * v;
        }
        ss = block_sum(ss, scratch);
        const float inv = 1.0f / sqrtf(ss / (float)k + eps);
        for (int i = threadIdx.x; i < k; i += blockDim.x)
            xs[i] = __float2bfloat16_rn((xf[i] * inv) * __bfloat162float(g[i]));
    } else {
        const uint4 *xv = (const uint4 *)x;
        for (int i = threadIdx.x; i < nc; i += blockDim.x) xs4[i] = xv[i];
    }
    __syncthreads();
    if (!live) return;
    float s0 = 0.0f, s1 = 0.0f;
    for (int c0 = lane; c0 < nc; c0 += 32 * GEMV_UNROLL) {
        uint4 na[GEMV_UNROLL], nb[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int c = c0 + 32 * (GEMV_UNROLL + u);
            na[u] = c < nc ? __ldg(w0 + c) : zero;
            nb[u] = c < nc ? __ldg(w1 + c) : zero;
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int c = c0 + 32 * u;
            if (c < nc) {
                const uint4 xv = xs4[c];
                s0 += dot8(a[u], xv);
                s1 += dot8(b[u], xv);
            }
            a[u] = na[u];
            b[u] = nb[u];
        }
    }
    s0 = warp_sum(s0);
    s1 = warp_sum(s1);
    if (lane) return;
    if (MODE == CUDA_GEMV_BF16) {
        bf16_t *o = (bf16_t *)y;
        o[r0] = __float2bfloat16_rn(s0);
        if (r1 != r0) o[r1] = __float2bfloat16_rn(s1);
    } else if (MODE == CUDA_GEMV_F32) {
        float *o = (float *)y;
        o[r0] = s0;
        if (r1 != r0) o[r1] = s1;
    } else if (MODE == CUDA_GEMV_ADD_F32) {
        float *o = (float *)y;
        o[r0] += s0;
        if (r1 != r0) o[r1] += s1;
    } else { /* SwiGLU of the bf16-rounded gate and up, as the unfused path rounds them */
        const float gv = __bfloat162float(__float2bfloat16_rn(s0));
        const float uv = __bfloat162float(__float2bfloat16_rn(s1));
        ((bf16_t *)y)[r0] = __float2bfloat16_rn((gv / (1.0f + expf(-gv))) * uv);
    }
}

extern "C" int cuda_gemv_supported(int k)
{
    return k > 0 && k % 8 == 0 && (size_t)k * sizeof(uint16_t) <= 48 * 1024;
}

extern "C" rc_t cuda_gemv(int mode, void *y, const uint16_t *w, const void *x,
                          const uint16_t *norm_g, int n_out, int k, float eps, void *stream)
{
    if (!y || !w || !x || n_out <= 0 || mode < CUDA_GEMV_BF16 || mode > CUDA_GEMV_SWIGLU)
        return RC_ERR_INVALID;
    if (!cuda_gemv_supported(k) || (uintptr_t)w % 16 || (!norm_g && (uintptr_t)x % 16))
        return RC_ERR_UNSUPPORTED;
    const int rows_per_block = mode == CUDA_GEMV_SWIGLU ? GEMV_WARPS : 2 * GEMV_WARPS;
    const unsigned grid = (unsigned)((n_out + rows_per_block - 1) / rows_per_block);
    const size_t smem = (size_t)k * sizeof(uint16_t);
    cudaStream_t s = CU_STREAM(stream);
    const bf16_t *wb = (const bf16_t *)w, *gb = (const bf16_t *)norm_g;
    switch (mode) {
    case CUDA_GEMV_BF16:
        gemv_kernel<CUDA_GEMV_BF16><<<grid, GEMV_WARPS * 32, smem, s>>>(y, wb, x, gb, n_out, k, eps);
        break;
    case CUDA_GEMV_F32:
        gemv_kernel<CUDA_GEMV_F32><<<grid, GEMV_WARPS * 32, smem, s>>>(y, wb, x, gb, n_out, k, eps);
        break;
    case CUDA_GEMV_ADD_F32:
        gemv_kernel<CUDA_GEMV_ADD_F32><<<grid, GEMV_WARPS * 32, smem, s>>>(y, wb, x, gb, n_out, k,
                                                                           eps);
        break;
    default:
        gemv_kernel<CUDA_GEMV_SWIGLU><<<grid, GEMV_WARPS * 32, smem, s>>>(y, wb, x, gb, n_out, k,
                                                                          eps);
        break;
    }
    CU_LAUNCHED();
    return RC_OK;
}

/* ---- graphs -------------------------------------------------------------------------- */

extern "C" rc_t cuda_copy_async(void *dst, const void *src, size_t bytes, void *stream)
{
    if (!bytes) return RC_OK;
    if (!dst || !src) return RC_ERR_INVALID;
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, CU_STREAM(stream)));
    return RC_OK;
}

extern "C" rc_t cuda_capture_begin(void *stream)
{
    if (!stream) return RC_ERR_INVALID; /* the legacy stream cannot be captured */
    /* Thread-local: other threads' streams (other sessions) may allocate meanwhile. */
    CU_TRY(cudaStreamBeginCapture(CU_STREAM(stream), cudaStreamCaptureModeThreadLocal));
    return RC_OK;
}

extern "C" rc_t cuda_capture_end(void *stream, int ok, void **exec)
{
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(CU_STREAM(stream), &graph);
    if (!ok || e != cudaSuccess || !graph) {
        (void)cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        if (ok) log_warn("cuda: stream capture failed: %s", cudaGetErrorString(e));
        return RC_ERR_DEVICE;
    }
    rc_t rc = RC_OK;
    if (*exec) {
        /* Same topology (the usual case: only kernel arguments changed): update in place. */
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate((cudaGraphExec_t)*exec, graph, &info) != cudaSuccess) {
            (void)cudaGetLastError();
            cudaGraphExecDestroy((cudaGraphExec_t)*exec);
            *exec = NULL;
        }
    }
    if (!*exec) {
        cudaGraphExec_t ge = NULL;
        e = cudaGraphInstantiate(&ge, graph, 0);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            log_warn("cuda: graph instantiation failed: %s", cudaGetErrorString(e));
            rc = RC_ERR_DEVICE;
        } else {
            *exec = ge;
        }
    }
    cudaGraphDestroy(graph);
    return rc;
}

extern "C" rc_t cuda_graph_launch(void *exec, void *stream)
{
    if (!exec) return RC_ERR_INVALID;
    CU_TRY(cudaGraphLaunch((cudaGraphExec_t)exec, CU_STREAM(stream)));
    return RC_OK;
}

extern "C" void cuda_graph_destroy(void **exec)
{
    if (!exec || !*exec) return;
    cudaGraphExecDestroy((cudaGraphExec_t)*exec);
    *exec = NULL;
}
