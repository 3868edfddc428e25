/* knn_probe.c — the knn approximation probe (knn_probe.h says what it measures and prints).
 *
 * Cost: two attention calls over the probe's queries (one over every memory row), one
 * cuda_knn_attention, a few small downloads, and on the host an IVF index over every row
 * of the layer (k-means training and adding, the bulk of probe_s at large memories) plus its
 * search of the probe's queries. Everything lives in scratch allocated here and freed before
 * returning, so a probe leaves no state behind but its "done" marks. */
#ifdef RECALL_HAVE_CUDA

#include "bench/knn_probe.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/dtype.h"
#include "common/log.h"
#include "memory/knn.h"

struct knn_probe {
    int n_thr;
    size_t thr[KNN_PROBE_MAX_THRESHOLDS]; /* ascending, distinct */
    int n_mem_layers;
    int ivf_heads;                        /* kv heads the IVF part indexes; 0: all */
    unsigned char *done;                  /* [n_thr, n_mem_layers] */
    double total_s;                       /* seconds spent in this stream's probes */
};

static int cmp_size(const void *a, const void *b)
{
    const size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

rc_t knn_probe_create(const char *spec, int ivf_heads, int n_mem_layers, knn_probe_t **out)
{
    *out = NULL;
    if (!spec || n_mem_layers < 1 || ivf_heads < 0) return RC_ERR_INVALID;
    knn_probe_t *p = calloc(1, sizeof *p);
    if (!p) return RC_ERR_NOMEM;
    const char *c = spec;
    while (*c) {
        while (isspace((unsigned char)*c) || *c == ',') c++;
        if (!*c) break;
        if (!isdigit((unsigned char)*c) || p->n_thr == KNN_PROBE_MAX_THRESHOLDS) goto bad;
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(c, &end, 10);
        if (errno || end == c) goto bad;
        if (*end == 'k' || *end == 'K') {
            v <<= 10;
            end++;
        } else if (*end == 'm' || *end == 'M') {
            v <<= 20;
            end++;
        }
        if (v == 0 || (*end && *end != ',' && !isspace((unsigned char)*end))) goto bad;
        p->thr[p->n_thr++] = (size_t)v;
        c = end;
    }
    if (!p->n_thr) goto bad;
    qsort(p->thr, (size_t)p->n_thr, sizeof p->thr[0], cmp_size);
    int m = 1;
    for (int i = 1; i < p->n_thr; i++)
        if (p->thr[i] != p->thr[m - 1]) p->thr[m++] = p->thr[i];
    p->n_thr = m;
    p->n_mem_layers = n_mem_layers;
    p->ivf_heads = ivf_heads;
    p->done = calloc((size_t)p->n_thr * (size_t)n_mem_layers, 1);
    if (!p->done) {
        free(p);
        return RC_ERR_NOMEM;
    }
    *out = p;
    return RC_OK;
bad:
    free(p);
    return RC_ERR_INVALID;
}

void knn_probe_destroy(knn_probe_t **p)
{
    if (!p || !*p) return;
    free((*p)->done);
    free(*p);
    *p = NULL;
}

int knn_probe_due(const knn_probe_t *p, int mem_layer, size_t rows)
{
    if (!p || mem_layer < 0 || mem_layer >= p->n_mem_layers) return 0;
    for (int t = 0; t < p->n_thr && p->thr[t] <= rows; t++)
        if (!p->done[(size_t)t * p->n_mem_layers + mem_layer]) return 1;
    return 0;
}

/* Marks every threshold <= rows done for mem_layer; returns the largest one not done before
 * (the one this probe answers for; 0 if none). */
static size_t mark_done(knn_probe_t *p, int mem_layer, size_t rows)
{
    size_t newest = 0;
    for (int t = 0; t < p->n_thr && p->thr[t] <= rows; t++) {
        unsigned char *d = &p->done[(size_t)t * p->n_mem_layers + mem_layer];
        if (!*d) newest = p->thr[t];
        *d = 1;
    }
    return newest;
}

static int cmp_i64(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* |a ∩ b| / (valid entries of exact) for one list pair of k rows each (-1: no row); a, b
 * are sorted in place. */
static double list_recall(int64_t *exact, int64_t *ivf, int k)
{
    qsort(exact, (size_t)k, sizeof *exact, cmp_i64);
    qsort(ivf, (size_t)k, sizeof *ivf, cmp_i64);
    int i = 0, j = 0, hit = 0, valid = 0;
    for (int t = 0; t < k; t++) valid += exact[t] >= 0;
    while (i < k && j < k) {
        if (exact[i] < 0 || exact[i] < ivf[j]) {
            i++;
        } else if (ivf[j] < 0 || ivf[j] < exact[i]) {
            j++;
        } else {
            hit++;
            i++;
            j++;
        }
    }
    return valid ? (double)hit / valid : 1.0;
}

/* ‖a − ref‖ / ‖ref‖ over n bf16 values [.., n_heads, head_dim]; heads (optional, [n_heads])
 * keeps only the heads marked. */
static double rel_err(const uint16_t *a, const uint16_t *ref, size_t n, int head_dim,
                      const unsigned char *heads, int n_heads)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (heads && !heads[(i / (size_t)head_dim) % (size_t)n_heads]) continue;
        const double r = bf16_to_f32(ref[i]), d = (double)bf16_to_f32(a[i]) - r;
        num += d * d;
        den += r * r;
    }
    return den > 0 ? sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

/* A one-layer store of the kv heads sel[0..h_sub) of `layer`'s first `rows` keys (values: the
 * same bytes; the index reads keys only), for an index over those heads alone. */
static rc_t sub_store(const memory_store_t *src, int layer, size_t rows, const int *sel,
                      int h_sub, int head_dim, memory_store_t **out)
{
    const dtype_t dt = memory_store_dtype(src);
    const size_t hb = (size_t)head_dim * dtype_size(dt);
    const size_t row_in = (size_t)memory_store_row_dim(src) * dtype_size(dt);
    const size_t row_out = (size_t)h_sub * hb, blk = 16384;
    char *buf = malloc(blk * row_out);
    rc_t rc = buf ? memory_store_create(1, h_sub * head_dim, dt, out) : RC_ERR_NOMEM;
    const char *keys = memory_store_keys(src, layer);
    for (size_t r0 = 0; !rc && r0 < rows; r0 += blk) {
        const size_t cnt = rows - r0 < blk ? rows - r0 : blk;
        for (size_t r = 0; r < cnt; r++)
            for (int j = 0; j < h_sub; j++)
                memcpy(buf + r * row_out + (size_t)j * hb,
                       keys + (r0 + r) * row_in + (size_t)sel[j] * hb, hb);
        rc = memory_store_append_raw(*out, 0, buf, buf, cnt);
    }
    free(buf);
    if (rc) memory_store_destroy(out);
    return rc;
}

static rc_t attn(const cuda_attn_args_t *a, int fast, void *st)
{
    return fast ? cuda_attention_fast(a, st) : cuda_attention(a, st);
}

static rc_t attn_ws(const cuda_attn_args_t *a, int fast, size_t *bytes)
{
    return fast ? cuda_attention_fast_workspace(a, bytes) : cuda_attention_workspace(a, bytes);
}

rc_t knn_probe_run(knn_probe_t *p, const knn_probe_in_t *in)
{
    if (!p || !in || !in->attn || in->mem_layer < 0 || in->mem_layer >= p->n_mem_layers ||
        in->n < 1 || in->k < 1)
        return RC_ERR_INVALID;
    const double t0 = clock_now_s();
    const size_t thr = mark_done(p, in->mem_layer, in->rows);
    if (in->spilled) {
        log_info("knn-probe rows=%zu threshold=%zu layer=%d mem_layer=%d skipped: %zu rows are "
                 "in the host tier and the exact output needs every row on the device (probe "
                 "without a gpu memory budget)", in->rows, thr, in->layer, in->mem_layer,
                 in->spilled);
        return RC_OK;
    }
    const cuda_attn_args_t *A = in->attn;
    const int nq = in->n < KNN_PROBE_MAX_Q ? in->n : KNN_PROBE_MAX_Q;
    const int nh = A->n_heads, hd = A->head_dim, k = in->k;
    const size_t q_dim = (size_t)nh * hd, outs = (size_t)nq * q_dim;
    const size_t lists = (size_t)nq * nh, ents = lists * (size_t)k;
    void *st = in->stream;

    /* Device scratch: the exact output, the IVF-list output, its local lse, the IVF lists. */
    uint16_t *d_ex = NULL, *d_iv = NULL;
    float *d_lse = NULL;
    int32_t *d_idx = NULL;
    void *d_ws = NULL;
    /* Host scratch. */
    uint16_t *h_knn = malloc(outs * sizeof *h_knn), *h_ex = malloc(outs * sizeof *h_ex);
    uint16_t *h_iv = malloc(outs * sizeof *h_iv), *h_q16 = malloc(outs * sizeof *h_q16);
    float *h_q = malloc(outs * sizeof *h_q);
    int32_t *h_eidx = malloc(ents * sizeof *h_eidx), *h_iidx32 = malloc(ents * sizeof *h_iidx32);
    int64_t *h_iidx = malloc(ents * sizeof *h_iidx), *h_a = malloc((size_t)k * sizeof *h_a),
            *h_b = malloc((size_t)k * sizeof *h_b);
    memory_knn_t *ix = NULL;
    memory_store_t *sub = NULL;
    int *sel = NULL;
    unsigned char *qh = NULL; /* [n_heads] query heads whose kv head the IVF part indexes */
    int64_t *sub_idx = NULL;
    float *sub_q = NULL;
    rc_t rc = RC_OK;
    if (!h_knn || !h_ex || !h_iv || !h_q16 || !h_q || !h_eidx || !h_iidx32 || !h_iidx || !h_a ||
        !h_b) {
        rc = RC_ERR_NOMEM;
        goto done;
    }

    /* The exact path's call over the first nq queries, every memory row in one softmax. */
    cuda_attn_args_t ex = *A;
    ex.n_q = nq;
    ex.n_mem = in->rows;
    ex.mem_dtype = in->mem_dtype;
    ex.mem_k = in->mem_k;
    ex.mem_v = in->mem_v;
    ex.lse = NULL;
    /* The knn path's local part (n_mem = 0, with its log-sum-exp), for the IVF lists. */
    cuda_attn_args_t lo = *A;
    lo.n_q = nq;
    lo.n_mem = 0;
    lo.mem_k = lo.mem_v = NULL;
    lo.q_mem = NULL;
    lo.mem_scale = 0.0f;
    size_t ws_ex = 0, ws_lo = 0;
    if ((rc = attn_ws(&ex, in->fast, &ws_ex)) || (rc = attn_ws(&lo, in->fast, &ws_lo))) goto done;
    const size_t ws = ws_ex > ws_lo ? ws_ex : ws_lo;
    if ((rc = cuda_alloc((void **)&d_ex, outs * sizeof *d_ex)) ||
        (rc = cuda_alloc((void **)&d_iv, outs * sizeof *d_iv)) ||
        (rc = cuda_alloc((void **)&d_lse, lists * sizeof *d_lse)) ||
        (rc = cuda_alloc((void **)&d_idx, ents * sizeof *d_idx)) || (rc = cuda_alloc(&d_ws, ws)))
        goto done;
    ex.out = d_ex;
    ex.workspace = d_ws;
    ex.workspace_bytes = ws;
    lo.out = d_iv;
    lo.lse = d_lse;
    lo.workspace = d_ws;
    lo.workspace_bytes = ws;
    /* The stream's knn results first (its queue is ordered: they are final here), then the
     * exact output; the local part goes last since the workspace is shared (same stream). */
    if ((rc = cuda_download(h_knn, in->o_knn, outs * sizeof *h_knn, st)) ||
        (rc = cuda_download(h_eidx, in->knn_idx, ents * sizeof *h_eidx, st)) ||
        (rc = cuda_download(h_q16, in->mem_q, outs * sizeof *h_q16, st)) ||
        (rc = attn(&ex, in->fast, st)) ||
        (rc = cuda_download(h_ex, d_ex, outs * sizeof *h_ex, st)) ||
        (rc = attn(&lo, in->fast, st)) || (rc = cuda_stream_sync(st)))
        goto done;
    for (size_t i = 0; i < outs; i++) h_q[i] = bf16_to_f32(h_q16[i]);

    /* The IVF tier over every row of this layer, as the spilled tier would build it: over
     * all kv heads, or (--heads) over h_sub evenly spaced ones, whose query
     * heads alone then count in recall and in the IVF error (each head's index is separate,
     * so a head's lists do not depend on which others are built). The other heads keep their
     * exact lists in o_ivf. */
    const double ti = clock_now_s();
    const int n_kv = A->n_kv_heads, group = nh / n_kv;
    const int h_sub = p->ivf_heads > 0 && p->ivf_heads < n_kv ? p->ivf_heads : n_kv;
    const int nh_sub = h_sub * group;
    const size_t ents_sub = (size_t)nq * nh_sub * k;
    sel = malloc((size_t)n_kv * sizeof *sel);
    qh = malloc((size_t)nh * sizeof *qh);
    sub_idx = h_sub < n_kv ? malloc(ents_sub * sizeof *sub_idx) : NULL;
    sub_q = h_sub < n_kv ? malloc((size_t)nq * nh_sub * hd * sizeof *sub_q) : NULL;
    if (!sel || !qh || (h_sub < n_kv && (!sub_idx || !sub_q))) {
        rc = RC_ERR_NOMEM;
        goto done;
    }
    for (int h = 0; h < nh; h++) qh[h] = 0;
    for (int j = 0; j < h_sub; j++) {
        sel[j] = (int)((long long)j * n_kv / h_sub);
        for (int g = 0; g < group; g++) qh[sel[j] * group + g] = 1;
    }
    memory_knn_opts_t ko = {.nlist = in->nlist, .nprobe = in->nprobe};
    if (h_sub == n_kv) {
        if ((rc = memory_knn_create(in->n_mem_layers, n_kv, hd, &ko, &ix)) ||
            (rc = memory_knn_search_rows(ix, in->store, in->mem_layer, in->rows, h_q, nq, nh, k,
                                         h_iidx, NULL)))
            goto done;
    } else {
        for (int i = 0; i < nq; i++)
            for (int j = 0; j < h_sub; j++)
                memcpy(sub_q + ((size_t)i * nh_sub + (size_t)j * group) * hd,
                       h_q + ((size_t)i * nh + (size_t)sel[j] * group) * hd,
                       (size_t)group * hd * sizeof *sub_q);
        if ((rc = sub_store(in->store, in->mem_layer, in->rows, sel, h_sub, hd, &sub)) ||
            (rc = memory_knn_create(1, h_sub, hd, &ko, &ix)) ||
            (rc = memory_knn_search_rows(ix, sub, 0, in->rows, sub_q, nq, nh_sub, k, sub_idx,
                                         NULL)))
            goto done;
        /* Sampled heads take the IVF lists, the others their exact ones. */
        for (int i = 0; i < nq; i++)
            for (int h = 0; h < nh; h++)
                for (int j = 0; j < k; j++)
                    h_iidx[((size_t)i * nh + h) * k + j] = h_eidx[((size_t)i * nh + h) * k + j];
        for (int i = 0; i < nq; i++)
            for (int j = 0; j < h_sub; j++)
                memcpy(h_iidx + ((size_t)i * nh + (size_t)sel[j] * group) * k,
                       sub_idx + ((size_t)i * nh_sub + (size_t)j * group) * k,
                       (size_t)group * k * sizeof *h_iidx);
    }
    const double index_s = clock_now_s() - ti;
    const int ixl = h_sub == n_kv ? in->mem_layer : 0;
    const int is_ivf = memory_knn_is_ivf(ix, ixl);
    const int nlist = memory_knn_nlist(ix, ixl);
    int nprobe = in->nprobe > 0 ? in->nprobe : MEMORY_KNN_DEFAULT_NPROBE;
    if (!is_ivf) nprobe = 0;
    else if (nprobe > nlist) nprobe = nlist;
    memory_knn_destroy(&ix);
    memory_store_destroy(&sub);

    /* o_ivf: the knn kernel over the IVF lists (rows are device rows: nothing is spilled). */
    for (size_t i = 0; i < ents; i++) {
        const int64_t r = h_iidx[i];
        if (r < -1 || r >= (int64_t)in->rows) { /* the index broke its contract */
            rc = RC_ERR_INTERNAL;
            goto done;
        }
        h_iidx32[i] = (int32_t)r;
    }
    cuda_knn_attn_args_t ka = {
        .n_q = nq,
        .n_heads = nh,
        .n_kv_heads = A->n_kv_heads,
        .head_dim = hd,
        .q_mem = in->mem_q,
        .mem_scale = in->mem_scale,
        .k = k,
        .idx = d_idx,
        .mem_dtype = in->mem_dtype,
        .hot_k = in->mem_k,
        .hot_v = in->mem_v,
        .n_hot = (int64_t)in->rows,
        .lse = d_lse,
        .out = d_iv,
    };
    if ((rc = cuda_upload(d_idx, h_iidx32, ents * sizeof *h_iidx32, st)) ||
        (rc = cuda_knn_attention(&ka, st)) ||
        (rc = cuda_download(h_iv, d_iv, outs * sizeof *h_iv, st)))
        goto done;

    double recall = 0;
    for (size_t l = 0; l < lists; l++) {
        if (!qh[l % nh]) continue;
        for (int j = 0; j < k; j++) {
            h_a[j] = h_eidx[l * k + j];
            h_b[j] = h_iidx[l * k + j];
        }
        recall += list_recall(h_a, h_b, k);
    }
    recall /= (double)nq * nh_sub;
    const double e_knn = rel_err(h_knn, h_ex, outs, hd, NULL, nh);
    const double e_knn_sub = rel_err(h_knn, h_ex, outs, hd, qh, nh);
    const double e_ivf = rel_err(h_iv, h_ex, outs, hd, qh, nh);
    const double probe_s = clock_now_s() - t0;
    p->total_s += probe_s;
    log_info("knn-probe rows=%zu threshold=%zu layer=%d mem_layer=%d queries=%d k=%d "
             "rel_err_exact_topk=%.6f rel_err_ivf=%.6f recall_at_k=%.6f ivf_heads=%d/%d "
             "rel_err_exact_topk_ivf_heads=%.6f ivf=%d nlist=%d nprobe=%d index_s=%.3f "
             "probe_s=%.3f probe_total_s=%.3f",
             in->rows, thr, in->layer, in->mem_layer, nq, k, e_knn, e_ivf, recall, h_sub, n_kv,
             e_knn_sub, is_ivf, nlist, nprobe, index_s, probe_s, p->total_s);
done:
    if (rc) {
        (void)cuda_stream_sync(st);
        p->total_s += clock_now_s() - t0;
        log_warn("knn-probe rows=%zu threshold=%zu layer=%d mem_layer=%d failed: %s (%s)",
                 in->rows, thr, in->layer, in->mem_layer, rc_strerror(rc), in->describe);
    }
    memory_knn_destroy(&ix);
    memory_store_destroy(&sub);
    free(sel);
    free(qh);
    free(sub_idx);
    free(sub_q);
    /* cudaFree waits for the device: nothing of the probe is in flight after this. */
    cuda_free((void **)&d_ex);
    cuda_free((void **)&d_iv);
    cuda_free((void **)&d_lse);
    cuda_free((void **)&d_idx);
    cuda_free(&d_ws);
    free(h_knn);
    free(h_ex);
    free(h_iv);
    free(h_q16);
    free(h_q);
    free(h_eidx);
    free(h_iidx32);
    free(h_iidx);
    free(h_a);
    free(h_b);
    return rc;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int knn_probe_unused_t;
#endif
