/* matmul.cu — projections through cuBLAS: bf16 operands, fp32 accumulation. */
#include <cublas_v2.h>

#include "kernels/cuda/common.cuh"

extern "C" void *cuda_ctx_blas(cuda_ctx_t *ctx);

extern "C" rc_t cuda_blas_check(int status, const char *what, const char *file, int line)
{
    if (status == CUBLAS_STATUS_SUCCESS) return RC_OK;
    log_error("cublas: %s:%d: %s: %s (%d)", file, line, what,
              cublasGetStatusString((cublasStatus_t)status), status);
    if (status == CUBLAS_STATUS_ALLOC_FAILED) return RC_ERR_NOMEM;
    if (status == CUBLAS_STATUS_NOT_SUPPORTED) return RC_ERR_UNSUPPORTED;
    return RC_ERR_DEVICE;
}

#define BLAS_TRY(call)                                                                         \
    do {                                                                                       \
        rc_t rc_ = cuda_blas_check((int)(call), #call, __FILE__, __LINE__);                    \
        if (rc_) return rc_;                                                                   \
    } while (0)

extern "C" rc_t cuda_matmul_nt(cuda_ctx_t *ctx, void *y, dtype_t y_t, const uint16_t *x,
                               const uint16_t *w, int m, int n, int k, float beta, void *stream)
{
    if (!ctx || !y || !x || !w || m <= 0 || n <= 0 || k <= 0) return RC_ERR_INVALID;
    if (!act_dtype_ok(y_t)) return RC_ERR_UNSUPPORTED;
    cublasHandle_t h = (cublasHandle_t)cuda_ctx_blas(ctx);
    BLAS_TRY(cublasSetStream(h, CU_STREAM(stream)));
    /* cuBLAS is column-major. Row-major y[m, n] is column-major yᵀ (n × m, ld n); row-major
     * w[n, k] is column-major wᵀ (k × n, ld k) and x[m, k] is xᵀ (k × m, ld k). So
     * yᵀ = op_T(wᵀ) · xᵀ = w · xᵀ, which is (x · wᵀ)ᵀ: no copies, no transposes in memory. */
    const float alpha = 1.0f;
    const cudaDataType_t yt = y_t == DTYPE_F32 ? CUDA_R_32F : CUDA_R_16BF;
    BLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, x,
                          CUDA_R_16BF, k, &beta, y, yt, n, CUBLAS_COMPUTE_32F,
                          CUBLAS_GEMM_DEFAULT));
    CU_LAUNCHED();
    return RC_OK;
}
