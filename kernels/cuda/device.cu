/* device.cu — devices, contexts, streams, device memory and dtype conversion. */
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/common.cuh"

/* cuBLAS's recommended workspace on Hopper; without one it allocates on its own. */
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20)

struct cuda_ctx {
    int device;
    cublasHandle_t blas;
    void *blas_ws; /* [BLAS_WORKSPACE_BYTES] */
};

/* Defined in matmul.cu: cuBLAS status codes to rc_t. */
extern "C" rc_t cuda_blas_check(int status, const char *what, const char *file, int line);

/* The handle lives in the context; matmul.cu reaches it through this. */
extern "C" void *cuda_ctx_blas(cuda_ctx_t *ctx)
{
    return ctx->blas;
}

extern "C" rc_t cuda_device_count(int *n)
{
    if (!n) return RC_ERR_INVALID;
    *n = 0;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        /* No driver / no device: a normal answer on CI and laptops. Clear the error so it does
         * not surface from a later cudaGetLastError. */
        log_debug("cuda: no usable GPU: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return RC_OK;
    }
    *n = count;
    return RC_OK;
}

extern "C" rc_t cuda_device_info(int device, cuda_device_info_t *info)
{
    if (!info || device < 0) return RC_ERR_INVALID;
    memset(info, 0, sizeof(*info));
    cudaDeviceProp p;
    CU_TRY(cudaGetDeviceProperties(&p, device));
    snprintf(info->name, sizeof(info->name), "%s", p.name);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->sm_count = p.multiProcessorCount;
    info->mem_total = p.totalGlobalMem;
    info->l2_bytes = (size_t)p.l2CacheSize;
    info->smem_per_block_optin = p.sharedMemPerBlockOptin;
    CU_TRY(cudaDriverGetVersion(&info->driver_version));
    CU_TRY(cudaRuntimeGetVersion(&info->runtime_version));
    int cur = 0;
    CU_TRY(cudaGetDevice(&cur));
    CU_TRY(cudaSetDevice(device));
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    CU_TRY(cudaSetDevice(cur));
    CU_TRY(e);
    info->mem_free = free_b;
    return RC_OK;
}

extern "C" rc_t cuda_ctx_create(cuda_ctx_t **out, int device)
{
    if (!out) return RC_ERR_INVALID;
    *out = NULL;
    int n = 0;
    rc_t rc = cuda_device_count(&n);
    if (rc) return rc;
    if (device < 0 || device >= n) {
        log_error("cuda: device %d requested, %d present", device, n);
        return n ? RC_ERR_INVALID : RC_ERR_UNSUPPORTED;
    }
    cuda_ctx_t *c = (cuda_ctx_t *)calloc(1, sizeof(*c));
    if (!c) return RC_ERR_NOMEM;
    c->device = device;
    cublasStatus_t bs;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        log_error("cuda: cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
        rc = RC_ERR_DEVICE;
        goto fail;
    }
    bs = cublasCreate(&c->blas);
    if ((rc = cuda_blas_check(bs, "cublasCreate", __FILE__, __LINE__))) {
        c->blas = NULL;
        goto fail;
    }
    /* bf16 outputs must not be summed in bf16 between split-k partial products. */
    bs = cublasSetMathMode(c->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                   CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
    if ((rc = cuda_blas_check(bs, "cublasSetMathMode", __FILE__, __LINE__))) goto fail;
    e = cudaMalloc(&c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (e != cudaSuccess) {
        log_error("cuda: cuBLAS workspace: %s", cudaGetErrorString(e));
        c->blas_ws = NULL;
        rc = RC_ERR_DEVICE;
        goto fail;
    }
    bs = cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE_BYTES);
    if ((rc = cuda_blas_check(bs, "cublasSetWorkspace", __FILE__, __LINE__))) goto fail;
    *out = c;
    return RC_OK;
fail:
    cuda_ctx_destroy(&c);
    return rc;
}

extern "C" void cuda_ctx_destroy(cuda_ctx_t **ctx)
{
    if (!ctx || !*ctx) return;
    cuda_ctx_t *c = *ctx;
    if (c->blas) cublasDestroy(c->blas);
    if (c->blas_ws) cudaFree(c->blas_ws);
    free(c);
    *ctx = NULL;
}

extern "C" int cuda_ctx_device(const cuda_ctx_t *ctx)
{
    return ctx ? ctx->device : -1;
}

extern "C" rc_t cuda_stream_create(void **stream)
{
    if (!stream) return RC_ERR_INVALID;
    cudaStream_t s = NULL;
    CU_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = s;
    return RC_OK;
}

extern "C" void cuda_stream_destroy(void **stream)
{
    if (!stream || !*stream) return;
    cudaStreamDestroy(CU_STREAM(*stream));
    *stream = NULL;
}

extern "C" rc_t cuda_stream_sync(void *stream)
{
    CU_TRY(cudaStreamSynchronize(CU_STREAM(stream)));
    return RC_OK;
}

extern "C" rc_t cuda_alloc(void **p, size_t bytes)
{
    if (!p) return RC_ERR_INVALID;
    *p = NULL;
    if (!bytes) return RC_OK;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        (void)cudaGetLastError();
        log_error("cuda: cannot allocate %zu bytes of device memory: %s", bytes,
                  cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? RC_ERR_NOMEM : RC_ERR_DEVICE;
    }
    return RC_OK;
}

extern "C" void cuda_free(void **p)
{
    if (!p || !*p) return;
    cudaFree(*p);
    *p = NULL;
}

extern "C" rc_t cuda_upload(void *dst_dev, const void *src_host, size_t bytes, void *stream)
{
    if (!bytes) return RC_OK;
    if (!dst_dev || !src_host) return RC_ERR_INVALID;
    CU_TRY(cudaMemcpyAsync(dst_dev, src_host, bytes, cudaMemcpyHostToDevice, CU_STREAM(stream)));
    CU_TRY(cudaStreamSynchronize(CU_STREAM(stream)));
    return RC_OK;
}

extern "C" rc_t cuda_download(void *dst_host, const void *src_dev, size_t bytes, void *stream)
{
    if (!bytes) return RC_OK;
    if (!dst_host || !src_dev) return RC_ERR_INVALID;
    CU_TRY(cudaMemcpyAsync(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost, CU_STREAM(stream)));
    CU_TRY(cudaStreamSynchronize(CU_STREAM(stream)));
    return RC_OK;
}

extern "C" rc_t cuda_copy(void *dst_dev, const void *src_dev, size_t bytes, void *stream)
{
    if (!bytes) return RC_OK;
    if (!dst_dev || !src_dev) return RC_ERR_INVALID;
    CU_TRY(cudaMemcpyAsync(dst_dev, src_dev, bytes, cudaMemcpyDeviceToDevice, CU_STREAM(stream)));
    return RC_OK;
}

extern "C" rc_t cuda_memset(void *dst_dev, int byte, size_t bytes, void *stream)
{
    if (!bytes) return RC_OK;
    if (!dst_dev) return RC_ERR_INVALID;
    CU_TRY(cudaMemsetAsync(dst_dev, byte, bytes, CU_STREAM(stream)));
    return RC_OK;
}

/* ---- conversion ---------------------------------------------------------------------- */

template <typename D, typename S>
__global__ void convert_kernel(D *dst, const S *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        st_f(dst, i, ld_f(src, i));
}

template <typename D, typename S>
static rc_t convert_launch(void *dst, const void *src, size_t n, cudaStream_t s)
{
    convert_kernel<D, S><<<grid_for(n, 256), 256, 0, s>>>((D *)dst, (const S *)src, n);
    CU_LAUNCHED();
    return RC_OK;
}

extern "C" rc_t cuda_convert(void *dst, dtype_t dst_t, const void *src, dtype_t src_t, size_t n,
                             void *stream)
{
    if (!n) return RC_OK;
    if (!dst || !src) return RC_ERR_INVALID;
    if (!act_dtype_ok(dst_t) || !act_dtype_ok(src_t)) return RC_ERR_UNSUPPORTED;
    cudaStream_t s = CU_STREAM(stream);
    if (dst_t == src_t) {
        if (dst == src) return RC_OK;
        return cuda_copy(dst, src, n * dtype_size(dst_t), stream);
    }
    if (dst_t == DTYPE_BF16) return convert_launch<bf16_t, float>(dst, src, n, s);
    return convert_launch<float, bf16_t>(dst, src, n, s);
}
