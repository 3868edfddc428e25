/* model_ops.cu — small ops the CUDA model backend (model/backend_cuda.c) needs beyond the
 * per-layer kernels: selecting the device on the calling thread, page-locked host buffers
 * for the memory flush, and the gather of one log-prob per row for Score. */
#include "kernels/cuda/common.cuh"

extern "C" rc_t cuda_set_device(int device)
{
    if (device < 0) return RC_ERR_INVALID;
    CU_TRY(cudaSetDevice(device));
    return RC_OK;
}

extern "C" rc_t cuda_host_alloc(void **p, size_t bytes)
{
    if (!p) return RC_ERR_INVALID;
    *p = NULL;
    if (!bytes) return RC_OK;
    cudaError_t e = cudaMallocHost(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        log_error("cuda: cannot allocate %zu bytes of page-locked host memory: %s", bytes,
                  cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? RC_ERR_NOMEM : RC_ERR_DEVICE;
    }
    return RC_OK;
}

extern "C" void cuda_host_free(void **p)
{
    if (!p || !*p) return;
    cudaFreeHost(*p);
    *p = NULL;
}

extern "C" rc_t cuda_memory_used(size_t *used, size_t *total)
{
    if (!used || !total) return RC_ERR_INVALID;
    size_t f = 0, t = 0;
    CU_TRY(cudaMemGetInfo(&f, &t));
    *used = t - f;
    *total = t;
    return RC_OK;
}

/* One block per row: the row's maximum, the normalizer summed in double (as the CPU does
 * it), then out[t] = (logits[t, target] − max) − log(sum). Rows whose target is outside
 * [0, vocab) get NaN: the caller skips them (targets < 0 mean "no output"). */
__global__ void logprob_gather_kernel(float *out, const float *logits, const int32_t *targets,
                                      int vocab)
{
    __shared__ float scratch[32];
    __shared__ double scratch_d[32];
    const size_t row = (size_t)blockIdx.x * vocab;
    const int32_t tg = targets[blockIdx.x];
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, logits[row + i]);
    mx = block_max(mx, scratch);
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        sum += (double)expf(logits[row + i] - mx);
    sum = block_sum_d(sum, scratch_d);
    if (threadIdx.x == 0)
        out[blockIdx.x] = tg >= 0 && tg < vocab
                              ? (float)((double)(logits[row + tg] - mx) - log(sum))
                              : NAN;
}

extern "C" rc_t cuda_logprob_gather(float *out, const float *logits, const int32_t *targets,
                                    int n_tok, int vocab, void *stream)
{
    if (!out || !logits || !targets || n_tok < 0 || vocab <= 0) return RC_ERR_INVALID;
    if (!n_tok) return RC_OK;
    logprob_gather_kernel<<<n_tok, 512, 0, CU_STREAM(stream)>>>(out, logits, targets, vocab);
    CU_LAUNCHED();
    return RC_OK;
}
