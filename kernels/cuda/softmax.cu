/* softmax.cu — row reductions over the vocabulary: log-softmax (Score) and argmax (greedy
 * decoding). One block per token row; a row of 32k logits is 128 KB, read two or three
 * times from L2. */
#include "kernels/cuda/common.cuh"

/* exp in fp32 like the reference, summed in double like its normalizer: with 32k terms an
 * fp32 sum would drift by ~1e-6 relative, visible next to an fp32 reference. */
__global__ void log_softmax_kernel(float *out, const float *logits, int vocab)
{
    __shared__ float scratch[32];
    __shared__ double scratch_d[32];
    const size_t row = (size_t)blockIdx.x * vocab;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, logits[row + i]);
    mx = block_max(mx, scratch);
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) sum += (double)expf(logits[row + i] - mx);
    sum = block_sum_d(sum, scratch_d);
    const float lse = mx + (float)log(sum);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) out[row + i] = logits[row + i] - lse;
}

extern "C" rc_t cuda_log_softmax(float *out, const float *logits, int n_tok, int vocab,
                                 void *stream)
{
    if (!out || !logits || n_tok < 0 || vocab <= 0) return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    log_softmax_kernel<<<n_tok, 512, 0, CU_STREAM(stream)>>>(out, logits, vocab);
    CU_LAUNCHED();
    return RC_OK;
}

/* (value, index) pairs: the larger value wins, the smaller index on ties; index `vocab`
 * marks "nothing seen yet" and always loses. */
__device__ __forceinline__ void arg_better(float &v, int &i, float v2, int i2, int none)
{
    if (i2 == none) return;
    if (i == none || v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

__global__ void argmax_kernel(int32_t *out, const float *logits, int vocab)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const size_t row = (size_t)blockIdx.x * vocab;
    float v = -INFINITY;
    int idx = vocab;
    /* Each thread walks its indices in increasing order and keeps the first maximum. */
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float x = logits[row + i];
        if (idx == vocab || x > v) {
            v = x;
            idx = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
        const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
        arg_better(v, idx, v2, i2, vocab);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warp = blockDim.x >> 5;
        v = lane < n_warp ? sv[lane] : -INFINITY;
        idx = lane < n_warp ? si[lane] : vocab;
        for (int o = 16; o > 0; o >>= 1) {
            const float v2 = __shfl_xor_sync(0xffffffffu, v, o);
            const int i2 = __shfl_xor_sync(0xffffffffu, idx, o);
            arg_better(v, idx, v2, i2, vocab);
        }
        if (lane == 0) out[blockIdx.x] = idx;
    }
}

extern "C" rc_t cuda_argmax(int32_t *out, const float *logits, int n_tok, int vocab,
                            void *stream)
{
    if (!out || !logits || n_tok < 0 || vocab <= 0) return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    argmax_kernel<<<n_tok, 512, 0, CU_STREAM(stream)>>>(out, logits, vocab);
    CU_LAUNCHED();
    return RC_OK;
}
