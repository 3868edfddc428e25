/* topk.cu — exact top-k of memory rows by inner product: cuda_topk in kernels/cuda.h, the
 * GPU hot tier of kNN memory.
 *
 * Two kernels. Stage 1 (topk_scan_kernel) runs a grid of (query tile, head, row split): a
 * block scores its queries against its rows in tiles of MBK = 64 rows with tensor cores
 * (mma.sync m16n8k16, bf16 operands, fp32 accumulators, fragments loaded as in
 * attention_mma.cu) and keeps, per query, the best k rows of its range; it writes that list
 * (sorted, best first) to the workspace. Stage 2 (topk_merge_kernel) merges the splits'
 * lists of each (query, head) into the final top-k. No [n_q, rows] score matrix exists
 * anywhere: a score lives in registers until it either loses to the query's threshold or
 * enters a small candidate buffer.
 *
 * Order. Every candidate is one 64-bit key: the score's bits mapped to an unsigned integer
 * that orders like the float (sign flipped), then the row's complement. A larger key is a
 * better candidate, ties in score go to the lower row, and no two rows share a key, so
 * "the top k" is one well-defined set with one order everywhere (the key 0 marks an empty
 * slot: no real candidate maps to it). -0 is read as +0 and NaN as -inf, so that float
 * equality and integer equality agree.
 *
 * Selection in stage 1. Warp w owns queries 16w .. 16w+15 of the block. Each query has a
 * kept list (its best k so far, sorted, stored in its workspace slot, where stage 1's result
 * belongs anyway: it is read and written only when the list changes, mostly in L2) and a
 * candidate buffer of BUF keys in shared memory. A tile's score passes into the buffer only
 * if it beats the kept list's k-th score (rows arrive in increasing order, so a score equal
 * to the threshold belongs to a later row and loses the tie). When a query's buffer could
 * overflow with the next tile, the warp sorts the buffer (bitonic, 128 keys across 32 lanes)
 * and merges it with the kept list by ranks (each key's output position is its index in its
 * own list plus the number of keys of the other list above it: two binary searches, no
 * sequential merge). After the first few tiles the threshold rejects almost everything, so
 * the scan runs at the speed of the products.
 *
 * Keys: bf16 as they are. fp32 keys are read as they are too: each is split while staged
 * into three bf16 parts, hi + mid + lo (each part is what the previous ones leave, exactly
 * representable), whose sum is the fp32 value (24 significant bits = 3 x 8), and the score
 * is the sum of three products. bf16 x bf16 products are exact in fp32, so the score is an
 * fp32 sum of the exact products either way.
 *
 * Head dims 64 and 128 as they are; 100 is padded to 112 with zero columns in shared memory
 * (written once, never overwritten), as attention_mma.cu does.
 *
 * Splits: enough (query tile x head x split) blocks to fill the GPU a few times over; prefill
 * (thousands of queries) needs one split, decode (one query) a few dozen. Stage 1 writes
 * n_split x n_q x n_heads x k keys: against 1M rows, k = 128 is 1/8192 of the score matrix
 * per split. */
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/topk.cuh"

using namespace topk_impl;

namespace
{

/* ---- stage 2 --------------------------------------------------------------------------- */

/* One block per (query, head): a tree of pairwise merges in shared memory, log2(n_split)
 * rounds. Merging two sorted lists into their best k needs no sequential walk: a key's
 * position is its index in its own list plus how many keys of the other list beat it (one
 * binary search). Keys are distinct, so real keys land on distinct positions; empty slots
 * (key 0) may collide, but they all write 0. The last round writes the output. */
__global__ void __launch_bounds__(MERGE_THREADS)
    topk_merge_kernel(const u64 *lists, int n_split, int nqh, int k, float *scores, int32_t *idx)
{
    extern __shared__ __align__(16) unsigned char smem_raw[];
    u64 *cur = (u64 *)smem_raw;   /* [n_split][k] */
    u64 *nxt = cur + n_split * k; /* [(n_split + 1) / 2][k] */
    const int tid = threadIdx.x;
    const size_t qh = blockIdx.x;
    for (int c = tid; c < n_split * k; c += MERGE_THREADS) {
        const int s = c / k, i = c - s * k;
        cur[c] = lists[((size_t)s * nqh + qh) * k + i];
    }
    __syncthreads();
    int n = n_split;
    while (n > 1) {
        const int pairs = n / 2;
        for (int c = tid; c < pairs * 2 * k; c += MERGE_THREADS) {
            const int pr = c / (2 * k), w = c - pr * 2 * k, side = w >= k, i = w - side * k;
            const u64 *mine = cur + (2 * pr + side) * k, *other = cur + (2 * pr + 1 - side) * k;
            const u64 x = mine[i];
            const int pos = i + count_gt(other, k, x);
            if (pos < k) nxt[pr * k + pos] = x;
        }
        if (n & 1) /* the odd list out goes on as it is */
            for (int i = tid; i < k; i += MERGE_THREADS)
                nxt[pairs * k + i] = cur[(n - 1) * k + i];
        __syncthreads();
        u64 *t = cur;
        cur = nxt;
        nxt = t;
        n = pairs + (n & 1);
    }
    float *so = scores + qh * k;
    int32_t *io = idx + qh * k;
    for (int i = tid; i < k; i += MERGE_THREADS) {
        const u64 x = cur[i];
        so[i] = x ? key_score(x) : -INFINITY;
        io[i] = x ? key_row(x) : -1;
    }
}

/* ---- host side ------------------------------------------------------------------------- */

rc_t tk_check(const cuda_topk_args_t *a)
{
    if (!a) return RC_ERR_INVALID;
    if (a->n_q < 0 || a->n_heads < 1 || a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads) {
        log_error("cuda_topk: bad head counts (n_q %d, n_heads %d, n_kv_heads %d)", a->n_q,
                  a->n_heads, a->n_kv_heads);
        return RC_ERR_INVALID;
    }
    if (a->k < 1 || a->k > CUDA_TOPK_MAX_K) {
        log_error("cuda_topk: k = %d outside 1 .. %d", a->k, CUDA_TOPK_MAX_K);
        return RC_ERR_INVALID;
    }
    if (a->row0 < 0 || a->row1 < a->row0 || a->row1 > (int64_t)INT32_MAX) {
        log_error("cuda_topk: bad row range [%lld, %lld)", (long long)a->row0, (long long)a->row1);
        return RC_ERR_INVALID;
    }
    if (a->head_dim < 1) return RC_ERR_INVALID;
    if (a->head_dim != 64 && a->head_dim != 100 && a->head_dim != 128) {
        log_error("cuda_topk: head_dim %d not supported (64, 100, 128)", a->head_dim);
        return RC_ERR_UNSUPPORTED;
    }
    if (a->key_dtype != DTYPE_BF16 && a->key_dtype != DTYPE_F32) {
        log_error("cuda_topk: key dtype must be bf16 or fp32");
        return a->key_dtype == DTYPE_F16 ? RC_ERR_UNSUPPORTED : RC_ERR_INVALID;
    }
    return RC_OK;
}

} // namespace

extern "C" rc_t cuda_topk_workspace(const cuda_topk_args_t *a, size_t *bytes)
{
    if (!bytes) return RC_ERR_INVALID;
    *bytes = 0;
    RC_TRY(tk_check(a));
    if (!a->n_q) return RC_OK;
    dk_plan dp;
    bool dec = false;
    RC_TRY(dec_plan(a, MERGE_MAX_KEYS, &dp, &dec));
    if (dec) {
        *bytes = (size_t)dp.n_split * tk_split_bytes(a);
        return RC_OK;
    }
    tk_plan pl;
    RC_TRY(tk_make_plan(a, MAX_SPLITS, &pl));
    *bytes = (size_t)pl.n_split * tk_split_bytes(a);
    return RC_OK;
}

extern "C" rc_t cuda_topk(const cuda_topk_args_t *a, void *workspace, size_t workspace_bytes,
                          void *stream)
{
    RC_TRY(tk_check(a));
    if (!a->n_q) return RC_OK;
    if (!a->q || !a->scores || !a->idx || (a->row1 > a->row0 && !a->keys)) {
        log_error("cuda_topk: NULL buffer");
        return RC_ERR_INVALID;
    }
    /* cp.async copies 16 bytes (d64, d128) or 8 (d100); fp32 keys are read as float4. */
    const uintptr_t al = a->head_dim % 8 == 0 ? 16 : 8;
    const uintptr_t kal = a->key_dtype == DTYPE_F32 ? 16 : al;
    if ((uintptr_t)a->q % al || (uintptr_t)a->keys % kal || (uintptr_t)a->scores % 4 ||
        (uintptr_t)a->idx % 4) {
        log_error("cuda_topk: misaligned buffer (queries and bf16 keys need %u bytes, fp32 "
                  "keys 16)",
                  (unsigned)al);
        return RC_ERR_UNSUPPORTED;
    }
    const size_t per = tk_split_bytes(a);
    const size_t fit = workspace ? workspace_bytes / per : 0;
    if (fit < 1 || (uintptr_t)workspace % 8) {
        log_error("cuda_topk: workspace of %zu bytes, at least %zu needed (see "
                  "cuda_topk_workspace)",
                  workspace_bytes, per);
        return RC_ERR_INVALID;
    }
    const cudaStream_t st = CU_STREAM(stream);
    int n_split = 0;
    dk_plan dp;
    bool dec = false;
    RC_TRY(dec_plan(a, (long long)min(fit, (size_t)MERGE_MAX_KEYS), &dp, &dec));
    if (dec) {
        RC_TRY(launch_decode(a, dp, workspace, st));
        n_split = dp.n_split;
    } else {
        tk_plan pl;
        RC_TRY(tk_make_plan(a, (long long)min(fit, (size_t)MAX_SPLITS), &pl));
        RC_TRY(launch_tiled(a, pl, workspace, st));
        n_split = pl.n_split;
    }

    const size_t msmem = (size_t)(n_split + (n_split + 1) / 2) * a->k * sizeof(u64);
    CU_TRY(cudaFuncSetAttribute(topk_merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)msmem));
    const int nqh = a->n_q * a->n_heads;
    topk_merge_kernel<<<(unsigned)nqh, MERGE_THREADS, msmem, st>>>((const u64 *)workspace, n_split,
                                                                   nqh, a->k, a->scores, a->idx);
    CU_LAUNCHED();
    return RC_OK;
}
