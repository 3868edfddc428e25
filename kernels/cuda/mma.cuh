/* mma.cuh — the PTX that the tensor-core kernels share (attention_mma.cu, topk.cu): async
 * copies from global to shared memory, ldmatrix fragment loads, and the bf16 mma.sync
 * m16n8k16 with fp32 accumulators. sm_80 and later. Private to kernels/cuda/.
 *
 * Fragment layout (PTX ISA, "mma.m16n8k16" for .bf16): a lane holds four 32-bit registers of
 * A (two bf16 each), two of B and four fp32 of C; ldsm_x4 loads exactly A's four registers
 * (or two B fragments) from a 16x16 bf16 tile in shared memory whose row addresses the lanes
 * supply, and ldsm_x4_t does the same transposed (for V in P·V). */
#ifndef RECALL_KERNELS_CUDA_MMA_CUH
#define RECALL_KERNELS_CUDA_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

/* A generic pointer into shared memory as the 32-bit address PTX wants. */
__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Copies BYTES (16 or 8) from global to shared, or writes zeros there when !valid (src-size
 * 0: no global read happens, src need only be a valid address). */
template <int BYTES>
__device__ __forceinline__ void cp_async(uint32_t dst, const void *src, bool valid)
{
    static_assert(BYTES == 16 || BYTES == 8, "cp.async copies 16 or 8 bytes here");
    const int n = valid ? BYTES : 0;
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(n));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

/* Closes the group of copies issued since the last commit. */
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n");
}

/* Waits until at most N committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                        uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                          uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

/* c += a · b, m16n8k16, bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two floats as one register of bf16 (round to nearest even); lo goes to the low half, which
 * is the lower column of a fragment. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

#endif
