/* gpu_ops.c — the GPU op test harness (gpu_ops.h). */
#include "tests/gpu_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda.h"
#include "tests/check.h"

static int setup_failed;

int gpu_ops_device(const char *name)
{
    int n_dev = 0;
    if (cuda_device_count(&n_dev) != RC_OK || n_dev == 0) {
        printf("skipped: no GPU\n");
        return CHECK_SKIP;
    }
    cuda_device_info_t info;
    if (cuda_device_info(0, &info) == RC_OK)
        printf("%s: device 0: %s, sm_%d%d, %d SMs, %.1f GiB, driver %d, runtime %d\n", name,
               info.name, info.cc_major, info.cc_minor, info.sm_count,
               info.mem_total / 1073741824.0, info.driver_version, info.runtime_version);
    return 0;
}

void *gpu_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

void gpu_round(float *x, size_t n, dtype_t t)
{
    if (t != DTYPE_BF16 || !x) return;
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

int gpu_setup_failures(void)
{
    return setup_failed;
}

void gpu_setup_failed(const char *what)
{
    setup_failed++;
    CHECK_MSG(0, "setting up the case failed: %s", what);
}

void *gpu_upload_raw(const void *host, size_t bytes)
{
    void *d = NULL;
    if (!bytes) return NULL;
    rc_t rc = cuda_alloc(&d, bytes);
    if (!rc && host) rc = cuda_upload(d, host, bytes, NULL);
    if (rc) {
        setup_failed++;
        CHECK_MSG(0, "device buffer of %zu bytes: %s", bytes, rc_strerror(rc));
        cuda_free(&d);
    }
    return d;
}

void *gpu_upload(const float *x, size_t n, dtype_t t)
{
    if (!x || !n) return NULL;
    void *host = gpu_xmalloc(n * dtype_size(t));
    dtype_from_f32(host, t, x, n);
    void *d = gpu_upload_raw(host, n * dtype_size(t));
    free(host);
    return d;
}

void *gpu_poisoned(size_t n, dtype_t t)
{
    void *d = gpu_upload_raw(NULL, n * dtype_size(t));
    if (d && cuda_memset(d, 0xFF, n * dtype_size(t), NULL)) {
        setup_failed++;
        CHECK_MSG(0, "poisoning a device buffer failed");
    }
    return d;
}

int gpu_fetch(void *host, const void *d, size_t bytes)
{
    rc_t rc = cuda_stream_sync(NULL);
    if (!rc && bytes) rc = cuda_download(host, d, bytes, NULL);
    CHECK_MSG(rc == RC_OK, "device error after the op: %s", rc_strerror(rc));
    return rc ? -1 : 0;
}

float *gpu_download(const void *d, size_t n, dtype_t t)
{
    void *raw = gpu_xmalloc(n * dtype_size(t));
    float *x = gpu_xmalloc(n * sizeof(float));
    if (gpu_fetch(raw, d, n * dtype_size(t))) {
        free(raw);
        free(x);
        return NULL;
    }
    dtype_to_f32(x, raw, t, n);
    free(raw);
    return x;
}

double gpu_rel_err(const void *out, dtype_t t, const float *ref, size_t n, size_t *nonfinite)
{
    double num = 0, den = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        const float o = t == DTYPE_BF16 ? bf16_to_f32(((const uint16_t *)out)[i])
                                        : ((const float *)out)[i];
        if (!isfinite(o)) {
            (*nonfinite)++;
            continue;
        }
        const double d = (double)o - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double gpu_compare_raw(const char *op, const char *desc, const void *out, dtype_t t,
                       const float *ref, size_t n, double tol)
{
    if (!out) {
        CHECK_MSG(0, "%s %s: no output", op, desc);
        return INFINITY;
    }
    size_t bad = 0;
    const double err = gpu_rel_err(out, t, ref, n, &bad);
    printf("%-13s %-58s rel_err %.2e  tol %.0e  %s\n", op, desc, err, tol,
           !bad && err <= tol ? "ok" : "FAIL");
    CHECK_MSG(bad == 0, "%s %s: %zu of %zu outputs not finite (unwritten or NaN)", op, desc, bad,
              n);
    CHECK_MSG(err <= tol, "%s %s: rel_err %.3e over tolerance %.0e", op, desc, err, tol);
    return err;
}

double gpu_compare(const char *op, const char *desc, const float *out, const float *ref,
                   size_t n, double tol)
{
    return gpu_compare_raw(op, desc, out, DTYPE_F32, ref, n, tol);
}
