/* cpu_knn.c — FoT memory attention over a per-(query, head) selection of memory rows.
 *
 * Each (query, head) has its own memory rows, so there is no shared score block to compute
 * with one matrix product. Instead every (query, head) is one call of cpu_attention_ext with
 * a single query, that head's local keys, and its gathered rows as the memory: the local
 * part, the positional layouts, the clamp, the memory scale and the single fp32 softmax are
 * then exactly the reference kernel's, whatever it becomes. Heads' local keys and values are
 * copied out contiguous once per kv head (the reference reads one head as a row slice).
 * The (head, query) pairs are split over OpenMP threads. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/quant.h"
#include "kernels/cpu.h"

/* dst [n, hd] = head kh of src [n, n_kv, hd]. */
static void head_slice(float *dst, const float *src, int n, int n_kv, int kh, int hd)
{
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * hd, src + ((size_t)j * n_kv + kh) * hd, (size_t)hd * sizeof(float));
}

/* dst [hd] = kv head kh of a memory row, widened (or decoded: common/quant.h) to fp32. bf16
 * is the common memory type: its widening (a shift) is inlined here, not a call per row. */
static void gather_row(float *dst, const char *row, dtype_t t, int n_kv, int kh, int hd)
{
    if (t == DTYPE_BF16) {
        const uint16_t *h = (const uint16_t *)row + (size_t)kh * hd;
        for (int d = 0; d < hd; d++) dst[d] = bf16_to_f32(h[d]);
    } else {
        quant_row_head_decode(dst, row, t, n_kv, hd, kh);
    }
}

rc_t cpu_attention_knn(const attn_knn_args_t *p)
{
    const attn_ext_args_t *e = &p->e;
    const attn_args_t *a = &e->a;
    const int hd = a->head_dim, nh = a->n_heads, nkv = a->n_kv_heads, group = nh / nkv;
    const size_t k = p->k > 0 ? (size_t)p->k : 0;
    const size_t mrow = dtype_row_bytes(a->mem_dtype, nkv, hd);
    const int self_extend = e->layout == CPU_ATTN_SELF_EXTEND;
    const size_t hsz = (size_t)a->n_k * hd; /* floats of one head's slice */

    /* Every kv head's local keys and values, contiguous: [n_kv, n_k, hd] each, and each
     * thread's k gathered rows. Their sizes come with the request (the window, knn_k), so
     * running short is the caller's to answer, before any thread starts. */
    const long tasks = (long)nh * a->n_q;
    const int nt = tasks > 1 ? omp_get_max_threads() : 1;
    const size_t hbytes = (nkv * hsz > 0 ? nkv * hsz : 1) * sizeof(float);
    const size_t kk = k ? k : 1;
    float *kh_rot = malloc(hbytes);
    float *kh_alt = self_extend ? malloc(hbytes) : NULL;
    float *vh = malloc(hbytes);
    float *gathered = malloc((size_t)nt * 2 * kk * hd * sizeof(float)); /* [nt, 2, k, hd] */
    int failed = !kh_rot || (self_extend && !kh_alt) || !vh || !gathered;
    if (failed) goto out;
    for (int kv = 0; kv < nkv; kv++) {
        head_slice(kh_rot + kv * hsz, a->k, a->n_k, nkv, kv, hd);
        head_slice(vh + kv * hsz, a->v, a->n_k, nkv, kv, hd);
        if (self_extend) head_slice(kh_alt + kv * hsz, e->k_alt, a->n_k, nkv, kv, hd);
    }

    /* (head, query) pairs are independent: threads split them, each with its own gathered
     * rows, and the single-query calls below run on one thread each (BLAS included). */
    const int blas_threads = cpu_blas_threads_single();
#pragma omp parallel num_threads(nt) if (tasks > 1)
    {
        float *mk = gathered + (size_t)omp_get_thread_num() * 2 * kk * hd; /* [k, hd] */
        float *mv = mk + kk * hd;                                           /* [k, hd] */
        /* A single-query call that found no scratch fails the whole: every thread still
         * takes part in the loop (all must), skipping what is left. */
#pragma omp for schedule(static)
        for (long t = 0; t < tasks; t++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            const int h = (int)(t / a->n_q), r = (int)(t % a->n_q), kv = h / group;
            const size_t qo = ((size_t)r * nh + h) * hd;
            const int64_t *ix = p->idx + ((size_t)r * nh + h) * k;
            size_t m = 0;
            int bad_row = 0;
            for (size_t j = 0; j < k && a->n_mem; j++) {
                if (ix[j] < 0) continue;
                if ((uint64_t)ix[j] >= a->n_mem) { /* a list from another memory */
                    bad_row = 1;
                    break;
                }
                const size_t off = (size_t)ix[j] * mrow;
                gather_row(mk + m * hd, (const char *)a->mem_k + off, a->mem_dtype, nkv, kv, hd);
                gather_row(mv + m * hd, (const char *)a->mem_v + off, a->mem_dtype, nkv, kv, hd);
                m++;
            }
            if (bad_row) {
#pragma omp atomic write
                failed = 2;
                continue;
            }
            attn_ext_args_t one = {
                .a = {.n_q = 1,
                      .n_k = a->q_offset + r + 1,
                      .n_heads = 1,
                      .n_kv_heads = 1,
                      .head_dim = hd,
                      .q_offset = a->q_offset + r,
                      .q = a->q + qo,
                      .k = kh_rot + kv * hsz,
                      .v = vh + kv * hsz,
                      .n_mem = m,
                      .mem_dtype = DTYPE_F32,
                      .mem_k = mk,
                      .mem_v = mv,
                      .scale = a->scale,
                      .out = a->out + qo},
                .layout = e->layout,
                .neighbor = e->neighbor,
                .chunk_len = e->chunk_len,
                .q_alt = {e->q_alt[0] ? e->q_alt[0] + qo : NULL,
                          e->q_alt[1] ? e->q_alt[1] + qo : NULL},
                .k_alt = kh_alt ? kh_alt + kv * hsz : NULL,
                .q_mem = e->q_mem ? e->q_mem + qo : NULL,
                .mem_scale = e->mem_scale,
            };
            if (cpu_attention_ext(&one)) {
#pragma omp atomic write
                failed = 1;
            }
        }
    }
    cpu_blas_threads_restore(blas_threads);
out:
    free(kh_rot);
    free(kh_alt);
    free(vh);
    free(gathered);
    return failed == 2 ? RC_ERR_INVALID : failed ? RC_ERR_NOMEM : RC_OK;
}
