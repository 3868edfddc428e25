/* gpu_ops.h — the GPU op test harness: what every CUDA kernel test shares, as llama.cpp's
 * test-backend-ops gives its op tests one frame.
 *
 * A kernel test (tests/test_cuda_*.c) draws its inputs with tests/test_rng.h, rounds the
 * ones that live in bf16 on the host (gpu_round) so that its CPU reference (kernels/cpu.h)
 * reads exactly what the kernel reads, uploads them (gpu_upload), gives the kernel outputs
 * filled with NaN (gpu_poisoned: an element the kernel fails to write fails the finite
 * check), reads them back (gpu_download) and compares (gpu_compare): one line per case,
 * "op  shape and dtypes  rel_err  tol  ok|FAIL", the normalized error ‖out − ref‖ / ‖ref‖
 * against one of the tolerances below, chosen by what the output is.
 *
 * gpu_ops_begin opens the frame: with no GPU it prints "skipped: no GPU" and returns
 * CHECK_SKIP (77, which ctest counts as skipped, never as a pass); otherwise it seeds the
 * generator (RECALL_SEED=N repeats a run) and prints the device
 * and the seed. Allocation failures on the host abort (a test has no one to answer);
 * device failures are counted (gpu_setup_failures) and make the case fail. */
#ifndef RECALL_TESTS_GPU_OPS_H
#define RECALL_TESTS_GPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"

/* Tolerances on the normalized error. */
#define GPU_TOL_EXACT 0.0   /* gathers and conversions move bits; nothing may change */
#define GPU_TOL_F32 1e-5    /* fp32 outputs: only summation order differs from the CPU */
#define GPU_TOL_BF16 5e-3   /* bf16 outputs: rounding (≤ 1.95e-3) plus fp32 differences */
/* fp32 outputs of sums over thousands of terms (attention, matrix products): each side's
 * fp32 running sums err by ~sqrt(n)·6e-8 relative, and the tensor cores' fp32 accumulation
 * is not IEEE-exact; a wrong index or mask shows as 1e-2 or worse. */
#define GPU_TOL_F32_SUM 5e-5

/* 0 when a GPU is there (its line printed, headed by name); CHECK_SKIP after printing
 * "skipped: no GPU". gpu_ops_begin below also seeds the test's generator. */
int gpu_ops_device(const char *name);

/* Host buffers (abort on failure). */
void *gpu_xmalloc(size_t bytes);
/* Rounds host values to what a buffer of t holds (bf16: nearest even; others unchanged). */
void gpu_round(float *x, size_t n, dtype_t t);

/* Device buffers (cuda_free them). NULL on failure (counted) or for 0 elements. */
void *gpu_upload(const float *x, size_t n, dtype_t t); /* x converted to t */
void *gpu_upload_raw(const void *host, size_t bytes);  /* host NULL: allocated only */
void *gpu_poisoned(size_t n, dtype_t t);               /* every byte 0xFF: NaN in f32, bf16 */
int gpu_setup_failures(void);
/* Counts and reports a setup step of the test's own that failed (what: which). */
void gpu_setup_failed(const char *what);

/* Waits for the device, then reads n elements of t back as fp32 (NULL on failure, which
 * fails the test). gpu_fetch is the same for raw bytes (0 on success). */
float *gpu_download(const void *d, size_t n, dtype_t t);
int gpu_fetch(void *host, const void *d, size_t bytes);

/* ‖out − ref‖ / ‖ref‖ over the finite outputs (‖out − ref‖ when ref is all zero);
 * *nonfinite counts the others. out is raw elements of t (f32 or bf16). */
double gpu_rel_err(const void *out, dtype_t t, const float *ref, size_t n, size_t *nonfinite);

/* Prints the case's line and checks: every output finite, the error within tol. out is
 * fp32 (a gpu_download); NULL fails the case. Returns the error (INFINITY for NULL). */
double gpu_compare(const char *op, const char *desc, const float *out, const float *ref,
                   size_t n, double tol);
/* The same for raw outputs of t (what a test keeps to compare runs bitwise). */
double gpu_compare_raw(const char *op, const char *desc, const void *out, dtype_t t,
                       const float *ref, size_t n, double tol);

/* The generator is tests/test_rng.h's, one per test program (so a test draws the same
 * sequence as before it used the harness): these two are inline for that reason. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tests/test_rng.h"

/* gpu_ops_device, then the seed: RECALL_SEED=N if set, else a fresh one from the clock
 * when `fresh`, else the generator's fixed start. Prints it. */
static inline int gpu_ops_begin(const char *name, int fresh)
{
    int rc = gpu_ops_device(name);
    if (rc) return rc;
    const char *env = getenv("RECALL_SEED");
    const uint64_t seed = env ? strtoull(env, NULL, 10) : fresh ? (uint64_t)time(NULL) : 0;
    if (seed) rng ^= seed * 0x9E3779B97F4A7C15ull;
    if (!rng) rng = 1;
    printf("%s: seed %llu%s\n", name, (unsigned long long)seed,
           seed ? " (RECALL_SEED=N repeats a run)" : " (the fixed start)");
    return 0;
}

/* n normal values times scale (abort on failure). */
static inline float *gpu_rand(size_t n, float scale)
{
    float *x = gpu_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = rng_normal() * scale;
    return x;
}

#endif
