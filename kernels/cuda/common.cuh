/* common.cuh — what every CUDA source of the backend shares: checked-call macros, dtype
 * loads and stores, warp and block reductions. Private to kernels/cuda/. */
#ifndef RECALL_KERNELS_CUDA_COMMON_CUH
#define RECALL_KERNELS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/log.h"
#include "kernels/cuda.h"

/* Runs a CUDA runtime call; on failure logs where and why and returns RC_ERR_DEVICE from
 * the enclosing function. */
#define CU_TRY(call)                                                                           \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            log_error("cuda: %s:%d: %s: %s", __FILE__, __LINE__, #call,                       \
                      cudaGetErrorString(e_));                                                 \
            return RC_ERR_DEVICE;                                                              \
        }                                                                                      \
    } while (0)

/* After every <<<>>>: a bad configuration fails here, not at some later call. */
#define CU_LAUNCHED() CU_TRY(cudaGetLastError())

#define CU_STREAM(s) ((cudaStream_t)(s))

typedef __nv_bfloat16 bf16_t;

/* Activations are fp32 or bf16 in memory and fp32 in registers. */
__device__ __forceinline__ float ld_f(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld_f(const bf16_t *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st_f(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st_f(bf16_t *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets
 * the total. `scratch` holds 32 floats of shared memory; safe to call repeatedly. */
__device__ __forceinline__ float block_sum(float v, float *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warp ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ double block_sum_d(double v, double *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warp ? scratch[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float block_max(float v, float *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warp ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

static inline bool act_dtype_ok(dtype_t t)
{
    return t == DTYPE_F32 || t == DTYPE_BF16;
}

/* Grid size for a grid-stride loop over n elements: enough blocks to fill the GPU, never
 * more than the elements need. */
static inline unsigned grid_for(size_t n, int threads)
{
    size_t b = (n + threads - 1) / threads;
    if (b > 65535u * 8) b = 65535u * 8;
    return b ? (unsigned)b : 1u;
}

#endif
