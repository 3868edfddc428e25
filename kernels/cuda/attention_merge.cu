/* attention_merge.cu — cuda_attn_merge (kernels/cuda.h): two normalized attentions of the same
 * rows over disjoint key sets, with their log-sum-exps, into the attention over both. The
 * CUDA backend streams exact memory that its device tier does not hold through the
 * tensor-core kernel in chunks (cuda_attn_args_t.mem_only) and folds each chunk in here.
 *
 * One warp per (query, head) row: the two weights come from the row's two lse values (so
 * the larger exponent is 0: nothing overflows), then the lanes take the row's elements in
 * step (coalesced), and lane 0 writes the new lse after the warp has read the old one. */
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace {

constexpr int WARPS = 8;

__global__ void __launch_bounds__(WARPS * 32)
    merge_kernel(bf16_t *a, float *lse_a, const bf16_t *b, const float *lse_b, long long rows,
                 int d)
{
    const long long row = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    const float la = lse_a[row], lb = lse_b[row];
    const float m = fmaxf(la, lb);
    if (m == -INFINITY) return; /* neither part saw a key: a stays as it is */
    const float wa = expf(la - m), wb = expf(lb - m); /* 0 for a part of −inf */
    const float inv = 1.0f / (wa + wb);
    bf16_t *ar = a + (size_t)row * d;
    const bf16_t *br = b + (size_t)row * d;
    for (int i = lane; i < d; i += 32) {
        const float x = wa * __bfloat162float(ar[i]) + wb * __bfloat162float(br[i]);
        ar[i] = __float2bfloat16_rn(x * inv);
    }
    __syncwarp();
    if (lane == 0) lse_a[row] = m + logf(wa + wb);
}

} // namespace

extern "C" rc_t cuda_attn_merge(void *a, float *lse_a, const void *b, const float *lse_b,
                                size_t rows, int head_dim, dtype_t dtype, void *stream)
{
    if (dtype != DTYPE_BF16) return RC_ERR_UNSUPPORTED;
    if (head_dim < 1 || (rows && (!a || !lse_a || !b || !lse_b))) return RC_ERR_INVALID;
    if (!rows) return RC_OK;
    const long long blocks = ((long long)rows + WARPS - 1) / WARPS;
    merge_kernel<<<(unsigned)blocks, WARPS * 32, 0, CU_STREAM(stream)>>>(
        (bf16_t *)a, lse_a, (const bf16_t *)b, lse_b, (long long)rows, head_dim);
    CU_LAUNCHED();
    return RC_OK;
}
