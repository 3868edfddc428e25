/* topk.cuh — what the top-k sources share (private to kernels/cuda/): the candidate order
 * and the reselect that stage 1 of both paths uses, the limits, and the two paths' plans.
 *
 *   topk.cu         cuda_topk and cuda_topk_workspace: checks, the choice of path, stage 2
 *   topk_tiled.cu   stage 1 with tensor cores over tiles of rows (prefill, and decode shapes
 *                   the streaming path does not take)
 *   topk_decode.cu  stage 1 for decode: a streaming scan over whole rows
 *
 * topk.cu's opening comment describes the algorithm. */
#ifndef RECALL_KERNELS_CUDA_TOPK_CUH
#define RECALL_KERNELS_CUDA_TOPK_CUH

#include <cmath>

#include "kernels/cuda/common.cuh"

namespace topk_impl
{

typedef unsigned long long u64;

constexpr int MBK = 64; /* rows per tile */
constexpr int BUF = 96; /* candidate buffer per query: a reselect leaves room for one tile */
constexpr int MAX_SPLITS = 64;
constexpr int MIN_TILES_PER_SPLIT = 8; /* 512 rows: below that the merge costs more */
constexpr int MERGE_THREADS = 256;
constexpr int MERGE_MAX_KEYS = 18432; /* n_split * k: stage 2 holds 1.5x that, 216 KB */
constexpr unsigned FULL = 0xffffffffu;

/* ---- the candidate order --------------------------------------------------------------- */

__device__ __forceinline__ u64 make_key(float s, long long row)
{
    if (s == 0.0f || s != s) s = s == 0.0f ? 0.0f : -INFINITY; /* -0 -> +0, NaN -> -inf */
    const uint32_t u = __float_as_uint(s);
    const uint32_t o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)o << 32) | (uint32_t) ~(uint32_t)row;
}

__device__ __forceinline__ float key_score(u64 key)
{
    const uint32_t o = (uint32_t)(key >> 32);
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ int32_t key_row(u64 key)
{
    return (int32_t) ~(uint32_t)key;
}

/* How many of arr[0 .. n), sorted descending, are greater than x. */
__device__ __forceinline__ int count_gt(const u64 *arr, int n, u64 x)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) >> 1;
        if (arr[mid] > x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Sorts 128 keys descending across a warp: lane l holds elements l, 32 + l, 64 + l, 96 + l. */
__device__ __forceinline__ void bitonic128_desc(u64 v[4], int lane)
{
#pragma unroll
    for (int size = 2; size <= 128; size <<= 1) {
#pragma unroll
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            u64 o[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                o[j] = stride >= 32 ? v[j ^ (stride >> 5)] : __shfl_xor_sync(FULL, v[j], stride);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int i = j * 32 + lane;
                const bool take_max = ((i & stride) == 0) == ((i & size) == 0);
                v[j] = take_max ? (v[j] > o[j] ? v[j] : o[j]) : (v[j] < o[j] ? v[j] : o[j]);
            }
        }
    }
}

/* One query's reselect, by the whole warp: kept list (out[0 .. *n_kept), sorted) plus the
 * *cnt keys of buf -> the best k of both, sorted, in out; the k-th score goes to *thr once
 * the list is full. A is k keys of the warp's scratch. */
static __device__ __noinline__ void reselect(u64 *buf, int *cnt, int *n_kept, float *thr, u64 *A,
                                             u64 *out, int k, int lane)
{
    const int c = *cnt, n_a = *n_kept;
    u64 v[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int i = j * 32 + lane;
        v[j] = i < c ? buf[i] : 0ull;
    }
    bitonic128_desc(v, lane);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int i = j * 32 + lane;
        if (i < c) buf[i] = v[j];
    }
    for (int i = lane; i < n_a; i += 32)
        A[i] = out[i];
    __syncwarp();
    const int cb = min(c, k); /* keys of the buffer past k cannot make the list */
    for (int i = lane; i < n_a; i += 32) {
        const u64 x = A[i];
        const int pos = i + count_gt(buf, cb, x);
        if (pos < k) {
            out[pos] = x;
            if (pos == k - 1) *thr = key_score(x);
        }
    }
    for (int j = lane; j < cb; j += 32) {
        const u64 x = buf[j];
        const int pos = j + count_gt(A, n_a, x);
        if (pos < k) {
            out[pos] = x;
            if (pos == k - 1) *thr = key_score(x);
        }
    }
    __syncwarp();
    if (lane == 0) {
        *n_kept = min(k, n_a + cb);
        *cnt = 0;
    }
    __syncwarp();
}

/* ---- the paths' plans ------------------------------------------------------------------ */

struct tk_plan {
    int wq; /* warps (16 queries each) per stage-1 block: 1 or 4 */
    int n_split;
    long long rows_per_split; /* multiple of MBK */
};

struct dk_plan {
    int nqv_t; /* NQV: 1, 2 or 4 */
    int T, P, buf, n_split;
    long long rows_per_split;
    size_t smem;
};

/* Bytes of one split's lists in the workspace: [n_q, n_heads, k] keys. */
inline size_t tk_split_bytes(const cuda_topk_args_t *a)
{
    return (size_t)a->n_q * a->n_heads * a->k * sizeof(u64);
}

/* topk_tiled.cu: the plan (at most max_split splits) and stage 1's launch. */
rc_t tk_make_plan(const cuda_topk_args_t *a, long long max_split, tk_plan *pl);
rc_t launch_tiled(const cuda_topk_args_t *a, const tk_plan &pl, void *workspace, cudaStream_t st);

/* topk_decode.cu: whether the streaming kernel takes these shapes (*use), its plan, and
 * its launch. */
rc_t dec_plan(const cuda_topk_args_t *a, long long max_split, dk_plan *pl, bool *use);
rc_t launch_decode(const cuda_topk_args_t *a, const dk_plan &pl, void *workspace, cudaStream_t st);

} // namespace topk_impl

#endif
