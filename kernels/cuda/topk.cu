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
#include <cmath>
#include <type_traits>

#include "kernels/cuda/common.cuh"

namespace {

typedef unsigned long long u64;

constexpr int MBK = 64;   /* rows per tile */
constexpr int BUF = 96;   /* candidate buffer per query: a reselect leaves room for one tile */
constexpr int MAX_SPLITS = 64;
constexpr int MIN_TILES_PER_SPLIT = 8; /* 512 rows: below that the merge costs more */
constexpr int MERGE_THREADS = 256;
constexpr int MERGE_MAX_KEYS = 18432;  /* n_split * k: stage 2 holds 1.5x that, 216 KB */
constexpr unsigned FULL = 0xffffffffu;

template <int D, int WQ, bool F32K>
struct tcfg {
    static constexpr int MBQ = 16 * WQ;                /* queries per block */
    static constexpr int THREADS = 32 * WQ;
    static constexpr int DP = (D + 15) / 16 * 16;      /* padded head dim */
    static constexpr int LD = DP + 8;                  /* shared row stride, elements */
    static constexpr int E = D % 8 == 0 ? 8 : 4;       /* elements per copy */
    static constexpr int CPR = D / E;                  /* copies per row */
    static constexpr int NSK = F32K ? 3 : 1;           /* bf16 parts per key */
    static constexpr int NSTAGE = F32K ? 2 : 3;        /* tiles in flight + the one in use */
    static constexpr int TILE = MBK * LD;              /* elements of one part of a tile */
    static constexpr int STAGE = NSK * TILE;
    static constexpr size_t BUF_BYTES = (size_t)MBQ * BUF * sizeof(u64);
    static constexpr size_t TILES_BYTES = (size_t)NSTAGE * STAGE * sizeof(bf16_t);
    /* The query tile is staged in the candidate buffers' space before they are used. */
    static_assert((size_t)MBQ * LD * sizeof(bf16_t) <= BUF_BYTES, "query tile fits");
    static_assert(D % E == 0 && DP % 16 == 0 && (LD * 2) % 16 == 0, "head_dim layout");
    static size_t smem(int k)
    {
        return BUF_BYTES + TILES_BYTES + (size_t)WQ * ((k + 1) & ~1) * sizeof(u64) +
               (size_t)MBQ * 3 * sizeof(int);
    }
};

struct tk_params {
    int n_q, n_heads, group, n_kv, k;
    long long row0, row1;
    long long rows_per_split; /* multiple of MBK */
    const bf16_t *q;          /* [n_q, n_heads, D] */
    const void *keys;         /* [row1, n_kv, D] bf16 or fp32 */
    u64 *lists;               /* [n_split, n_q, n_heads, k] */
};

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

template <int BYTES>
__device__ __forceinline__ void cp_async(uint32_t dst, const void *src, bool valid)
{
    const int n = valid ? BYTES : 0;
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                     "r"(n));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src),
                     "r"(n));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                        uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

/* c += a · b, m16n8k16, bf16 in, fp32 accumulate. */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ---- the candidate order --------------------------------------------------------------- */

__device__ __forceinline__ u64 make_key(float s, long long row)
{
    if (s == 0.0f || s != s) s = s == 0.0f ? 0.0f : -INFINITY; /* -0 -> +0, NaN -> -inf */
    const uint32_t u = __float_as_uint(s);
    const uint32_t o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((u64)o << 32) | (uint32_t)~(uint32_t)row;
}

__device__ __forceinline__ float key_score(u64 key)
{
    const uint32_t o = (uint32_t)(key >> 32);
    return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

__device__ __forceinline__ int32_t key_row(u64 key) { return (int32_t)~(uint32_t)key; }

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
__device__ __noinline__ void reselect(u64 *buf, int *cnt, int *n_kept, float *thr, u64 *A,
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
    for (int i = lane; i < n_a; i += 32) A[i] = out[i];
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

/* ---- staging --------------------------------------------------------------------------- */

/* Rows r0 .. r0 + MBK - 1 of kv head kh into one stage (rows >= rend as zeros). The copy
 * index c = tid + i·THREADS walks (row, chunk) incrementally: no division and one 64-bit
 * address per tile, which matters for d100's 1600 eight-byte copies a tile. */
template <int D, int WQ>
__device__ __forceinline__ void stage_tile(bf16_t *dst, const bf16_t *keys, int n_kv,
                                           long long r0, long long rend, int kh, int tid)
{
    using C = tcfg<D, WQ, false>;
    constexpr int DR = C::THREADS / C::CPR, DC = C::THREADS % C::CPR;
    const bf16_t *base = keys + ((size_t)r0 * n_kv + kh) * D; /* row r0, head kh */
    const int rs = n_kv * D;                                  /* row stride, elements */
    const int lim = (int)min(rend - r0, (long long)MBK);
    int r = tid / C::CPR, cc = tid % C::CPR;
#pragma unroll 4
    for (int c = tid; c < MBK * C::CPR; c += C::THREADS) {
        const int col = cc * C::E;
        const bool ok = r < lim;
        cp_async<C::E * 2>(smem_u32(dst + r * C::LD + col), ok ? base + r * rs + col : keys, ok);
        r += DR;
        cc += DC;
        if (cc >= C::CPR) {
            cc -= C::CPR;
            r++;
        }
    }
}

/* fp32 keys: three bf16 parts whose sum is the key (see the top of the file). */
template <int D, int WQ>
__device__ __forceinline__ void stage_tile(bf16_t *dst, const float *keys, int n_kv,
                                           long long r0, long long rend, int kh, int tid)
{
    using C = tcfg<D, WQ, true>;
    constexpr int E = C::E;
#pragma unroll 2
    for (int c = tid; c < MBK * C::CPR; c += C::THREADS) {
        const int r = c / C::CPR, col = (c % C::CPR) * E;
        const long long row = r0 + r;
        float x[E];
        if (row < rend) {
            const float4 *src = (const float4 *)(keys + ((size_t)row * n_kv + kh) * D + col);
#pragma unroll
            for (int e = 0; e < E / 4; e++) {
                const float4 f = src[e];
                x[4 * e] = f.x;
                x[4 * e + 1] = f.y;
                x[4 * e + 2] = f.z;
                x[4 * e + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) x[e] = 0.0f;
        }
#pragma unroll
        for (int part = 0; part < 3; part++) {
            uint32_t w[E / 2];
#pragma unroll
            for (int e = 0; e < E; e += 2) {
                const bf16_t a = __float2bfloat16_rn(x[e]), b = __float2bfloat16_rn(x[e + 1]);
                x[e] -= __bfloat162float(a); /* exact: what the part leaves */
                x[e + 1] -= __bfloat162float(b);
                __nv_bfloat162 p2 = __halves2bfloat162(a, b); /* a: the lower column */
                w[e / 2] = *(uint32_t *)&p2;
            }
            bf16_t *d = dst + part * C::TILE + r * C::LD + col;
            if constexpr (E == 8)
                *(uint4 *)d = make_uint4(w[0], w[1], w[2], w[3]);
            else
                *(uint2 *)d = make_uint2(w[0], w[1]);
        }
    }
}

/* ---- stage 1 --------------------------------------------------------------------------- */

template <int D, int WQ, bool F32K>
__global__ void __launch_bounds__(32 * WQ) topk_scan_kernel(tk_params p)
{
    using C = tcfg<D, WQ, F32K>;
    using K = typename std::conditional<F32K, float, bf16_t>::type;
    constexpr int DP = C::DP, LD = C::LD, MBQ = C::MBQ;
    constexpr int KSTEPS = DP / 16;
    constexpr int NT_S = MBK / 8; /* 8-row column tiles of S */

    extern __shared__ __align__(16) unsigned char smem_raw[];
    u64 *buf = (u64 *)smem_raw;                               /* [MBQ][BUF] */
    bf16_t *q_s = (bf16_t *)smem_raw;                         /* [MBQ][LD], before buf */
    bf16_t *tiles = (bf16_t *)(smem_raw + C::BUF_BYTES);      /* [NSTAGE][NSK][MBK][LD] */
    const int k = p.k, ks = (k + 1) & ~1;
    u64 *scratch = (u64 *)(smem_raw + C::BUF_BYTES + C::TILES_BYTES); /* [WQ][ks] */
    int *cnt_s = (int *)(scratch + WQ * ks);                  /* [MBQ] buffer fill */
    int *kept_s = cnt_s + MBQ;                                /* [MBQ] kept list length */
    float *thr_s = (float *)(kept_s + MBQ);                   /* [MBQ] k-th kept score */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int q0 = blockIdx.x * MBQ, h = blockIdx.y, split = blockIdx.z;
    const int kh = h / p.group;
    const K *keys = (const K *)p.keys;

    const long long rbeg = p.row0 + (long long)split * p.rows_per_split;
    const long long rend = min(p.row1, rbeg + p.rows_per_split);
    const int n_tiles = rend > rbeg ? (int)((rend - rbeg + MBK - 1) / MBK) : 0;

    if constexpr (DP > D) { /* pad columns D .. DP - 1: zero, never written again */
        unsigned short *qr = (unsigned short *)q_s, *tr = (unsigned short *)tiles;
        for (int e = tid; e < MBQ * (DP - D); e += C::THREADS)
            qr[(e / (DP - D)) * LD + D + e % (DP - D)] = 0;
        for (int e = tid; e < C::NSTAGE * C::NSK * MBK * (DP - D); e += C::THREADS)
            tr[(e / (DP - D)) * LD + D + e % (DP - D)] = 0;
    }
    if (tid < MBQ) {
        cnt_s[tid] = 0;
        kept_s[tid] = 0;
        thr_s[tid] = -INFINITY;
    }
    for (int c = tid; c < MBQ * C::CPR; c += C::THREADS) {
        const int r = c / C::CPR, col = (c % C::CPR) * C::E, i = q0 + r;
        const bool ok = i < p.n_q;
        cp_async<C::E * 2>(smem_u32(q_s + r * LD + col),
                           ok ? p.q + ((size_t)i * p.n_heads + h) * D + col : p.q, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const int w0 = q0 + warp * 16;
    const bool warp_active = w0 < p.n_q;
    uint32_t qf[KSTEPS][4];
    if (warp_active) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
            const int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            const int col = kk * 16 + (lane >> 4) * 8;
            ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], smem_u32(q_s + row * LD + col));
        }
    }
    __syncthreads(); /* q_s is buf from here on */

    /* This thread's two queries (rows g and g + 8 of the warp's mma tile). A query past n_q
     * never passes the filter: closed, threshold +inf. */
    const int qa = warp * 16 + g, qb = qa + 8;
    const bool va = q0 + qa < p.n_q, vb = q0 + qb < p.n_q;
    bool open_a = va, open_b = vb;
    float th_a = va ? -INFINITY : INFINITY, th_b = vb ? -INFINITY : INFINITY;
    u64 *warp_scratch = scratch + warp * ks;
    const size_t slot_stride = (size_t)p.n_heads * k;
    u64 *slot0 = p.lists + (((size_t)split * p.n_q + (size_t)q0) * p.n_heads + h) * k;

#pragma unroll
    for (int s = 0; s < C::NSTAGE - 1; s++) {
        if (s < n_tiles)
            stage_tile<D, WQ>(tiles + s * C::STAGE, keys, p.n_kv, rbeg + (long long)s * MBK,
                              rend, kh, tid);
        cp_async_commit();
    }

    for (int j = 0; j < n_tiles; j++) {
        const long long t0 = rbeg + (long long)j * MBK;
        cp_async_wait<C::NSTAGE - 2>(); /* tile j has landed */
        __syncthreads(); /* ... for every thread; and every warp is done with tile j - 1 */
        {
            const int jn = j + C::NSTAGE - 1; /* into the stage tile j - 1 used */
            if (jn < n_tiles)
                stage_tile<D, WQ>(tiles + (jn % C::NSTAGE) * C::STAGE, keys, p.n_kv,
                                  rbeg + (long long)jn * MBK, rend, kh, tid);
            cp_async_commit();
        }
        if (!warp_active) continue;

        const bf16_t *kb = tiles + (j % C::NSTAGE) * C::STAGE;
        float s[NT_S][4];
#pragma unroll
        for (int n = 0; n < NT_S; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int np = 0; np < NT_S / 2; np++) {
                /* matrices: rows 16np + 0..7 / 8..15 x dims 16kk + 0..7 / 8..15 */
                const int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
                const int col = kk * 16 + ((lane >> 3) & 1) * 8;
#pragma unroll
                for (int part = 0; part < C::NSK; part++) {
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, smem_u32(kb + part * C::TILE + key * LD + col));
                    mma_bf16(s[2 * np], qf[kk], b0, b1);
                    mma_bf16(s[2 * np + 1], qf[kk], b2, b3);
                }
            }
        }

        /* The threshold filter: rows of this tile all come after every kept row. */
        const int lim = (int)min(rend - t0, (long long)MBK);
#pragma unroll
        for (int n = 0; n < NT_S; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = n * 8 + 2 * t4 + (e & 1);
                const bool hi = e >> 1;
                const float sv = s[n][e];
                const bool pass = hi ? (open_b || sv > th_b) : (open_a || sv > th_a);
                if (pass && col < lim) {
                    const int ql = hi ? qb : qa;
                    const int slot = atomicAdd(&cnt_s[ql], 1);
                    buf[ql * BUF + slot] = make_key(sv, t0 + col);
                }
            }
        }
        __syncwarp();
        unsigned need = __ballot_sync(FULL, lane < 16 && cnt_s[warp * 16 + (lane & 15)] > BUF - MBK);
        if (need) {
            while (need) {
                const int ql = warp * 16 + __ffs(need) - 1;
                need &= need - 1;
                reselect(buf + ql * BUF, &cnt_s[ql], &kept_s[ql], &thr_s[ql], warp_scratch,
                         slot0 + (size_t)(ql) * slot_stride, k, lane);
            }
            if (va) {
                open_a = kept_s[qa] < k;
                th_a = thr_s[qa];
            }
            if (vb) {
                open_b = kept_s[qb] < k;
                th_b = thr_s[qb];
            }
        }
    }
    cp_async_wait<0>();
    if (!warp_active) return;

    /* Flush what the buffers still hold, then mark the empty tail of each list. */
    __syncwarp();
    unsigned need = __ballot_sync(FULL, lane < 16 && cnt_s[warp * 16 + (lane & 15)] > 0);
    while (need) {
        const int ql = warp * 16 + __ffs(need) - 1;
        need &= need - 1;
        reselect(buf + ql * BUF, &cnt_s[ql], &kept_s[ql], &thr_s[ql], warp_scratch,
                 slot0 + (size_t)ql * slot_stride, k, lane);
    }
    for (int r = 0; r < 16; r++) {
        const int ql = warp * 16 + r;
        if (q0 + ql >= p.n_q) break;
        u64 *out = slot0 + (size_t)ql * slot_stride;
        for (int i = kept_s[ql] + lane; i < k; i += 32) out[i] = 0ull;
    }
}

/* ---- decode: a streaming scan over whole rows ------------------------------------------ */

/* Decode (a query or two per kv head) is bound by the key reads, not by arithmetic, so this
 * kernel streams: each block owns a contiguous row range and reads whole rows (all kv heads:
 * n_kv·D contiguous elements) into shared memory with cp.async, NSTAGE tiles of P rows in
 * flight, so that every byte of a DRAM sector is used and the loads are perfectly coalesced.
 * A thread owns one (row, kv head) unit of a tile — a fixed kv head, so its queries and
 * thresholds stay in registers — and scores it with fp32 FMAs (bf16 products are exact in
 * fp32; fp32 keys are multiplied as they are). The selection is stage 1's: per (query, head)
 * a candidate buffer in shared memory, the kept list in the workspace, the same filter and
 * reselect; stage 2 merges the blocks as before. One block per SM (the smem of the
 * pipeline), so there are ~SM-count splits.
 *
 * Shared layout of a tile: unit u (= row·n_kv + kv head within the tile, the order of global
 * memory) at u·US bytes; US is the unit's bytes, padded by one chunk where that count of
 * chunks would be even, so that a warp's loads (consecutive units, chunk j each) fall on
 * distinct banks. */
template <int D, bool F32K>
struct dcfg {
    static constexpr int KB = F32K ? 4 : 2;                   /* bytes per key element */
    static constexpr int UB = D * KB;                         /* bytes of one unit */
    static constexpr int CB = UB % 16 == 0 ? 16 : 8;          /* bytes per copy and load */
    static constexpr int CPU = UB / CB;                       /* chunks per unit */
    static constexpr int US = CPU % 2 ? UB : UB + CB;         /* shared unit stride */
    static constexpr int E = CB / KB;                         /* elements per chunk */
    static constexpr int T = US * 256 <= 53248 ? 256 : US * 128 <= 53248 ? 128 : 64;
    static constexpr int NW = T / 32;
    static constexpr int NSTAGE = 3;
    static constexpr size_t STAGE_BYTES = (size_t)T * US;
    static_assert(UB % CB == 0 && E % 2 == 0 && STAGE_BYTES % 16 == 0, "decode layout");
};

constexpr int DEC_MAX_P = 32;      /* rows per tile at most: a list takes <= P keys a tile */
constexpr int DEC_MIN_TILES = 8;   /* tiles per split at least */
constexpr int DEC_MAX_NQV = 4;     /* queries per kv head (n_q · group) on this path */

struct dk_params {
    int n_q, n_heads, group, n_kv, k, nqv;
    int P;                    /* rows per tile: P·n_kv <= T units */
    int buf;                  /* candidate buffer per list, <= 128 */
    long long row0, row1, rows_per_split;
    const bf16_t *q;          /* [n_q, n_heads, D] */
    const void *keys;         /* [row1, n_kv, D] */
    u64 *lists;               /* [n_split, n_q, n_heads, k] */
};

/* floats per kv head of the shared fp32 queries [n_kv][KHS] (NQV > 1): NQV·D rounded so the
 * count of float4s is odd (bank-conflict free across kv heads). */
template <int D, int NQV>
__host__ __device__ constexpr int dec_khs()
{
    return (NQV * D / 4) % 2 ? NQV * D : NQV * D + 4;
}

template <int D, bool F32K, int NQV>
size_t dec_smem(int n_kv, int n_lists, int buf, int k)
{
    using C = dcfg<D, F32K>;
    const size_t qs = NQV > 1 ? (size_t)n_kv * dec_khs<D, NQV>() * sizeof(float) : 0;
    return C::NSTAGE * C::STAGE_BYTES + qs + (size_t)n_lists * buf * sizeof(u64) +
           (size_t)C::NW * ((k + 1) & ~1) * sizeof(u64) + (size_t)n_lists * 3 * sizeof(int);
}

/* Chunk j of a key unit as E fp32 values. */
template <int E, bool F32K>
__device__ __forceinline__ void load_chunk(float *x, const unsigned char *src)
{
    if constexpr (F32K) {
#pragma unroll
        for (int e = 0; e < E; e += 4) {
            const float4 f = *(const float4 *)(src + e * 4);
            x[e] = f.x;
            x[e + 1] = f.y;
            x[e + 2] = f.z;
            x[e + 3] = f.w;
        }
    } else if constexpr (E == 4) {
        const uint2 w = *(const uint2 *)src;
        x[0] = __uint_as_float(w.x << 16); /* the lower half is the lower column */
        x[1] = __uint_as_float(w.x & 0xffff0000u);
        x[2] = __uint_as_float(w.y << 16);
        x[3] = __uint_as_float(w.y & 0xffff0000u);
    } else {
        const uint4 w = *(const uint4 *)src;
        const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            x[2 * i] = __uint_as_float(ws[i] << 16);
            x[2 * i + 1] = __uint_as_float(ws[i] & 0xffff0000u);
        }
    }
}

template <int D, bool F32K, int NQV>
__global__ void __launch_bounds__(dcfg<D, F32K>::T) topk_decode_kernel(dk_params p)
{
    using C = dcfg<D, F32K>;
    constexpr int US = C::US, CB = C::CB, CPU = C::CPU, E = C::E, T = C::T;
    constexpr int KHS = dec_khs<D, NQV>();

    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char *tiles = smem_raw;                                   /* [NSTAGE][T·US] */
    float *q_s = (float *)(smem_raw + C::NSTAGE * C::STAGE_BYTES);     /* [n_kv][KHS] */
    const size_t qs_bytes = NQV > 1 ? (size_t)p.n_kv * KHS * sizeof(float) : 0;
    const int NL = p.n_q * p.n_heads, BUFL = p.buf, k = p.k, ks = (k + 1) & ~1;
    u64 *buf = (u64 *)((unsigned char *)q_s + qs_bytes);             /* [NL][BUFL] */
    u64 *scratch = buf + (size_t)NL * BUFL;                            /* [NW][ks] */
    int *cnt_s = (int *)(scratch + C::NW * ks);                        /* [NL] */
    int *kept_s = cnt_s + NL;                                          /* [NL] */
    float *thr_s = (float *)(kept_s + NL);                             /* [NL] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int split = blockIdx.x;
    const int P = p.P, TP = P * p.n_kv;
    const bool active = tid < TP;
    const int kh = active ? tid % p.n_kv : 0, rl = active ? tid / p.n_kv : 0;

    const long long rbeg = p.row0 + (long long)split * p.rows_per_split;
    const long long rend = min(p.row1, rbeg + p.rows_per_split);
    const int n_tiles = rend > rbeg ? (int)((rend - rbeg + P - 1) / P) : 0;
    const unsigned char *keys = (const unsigned char *)p.keys;

    /* The tile copy: units of rows t0 .. min(t0 + P, rend) - 1, contiguous in global memory
     * (chunk c of the tile at byte c·CB from the tile's first row), unit u to u·US. */
    auto stage = [&](int jt) {
        const long long t0 = rbeg + (long long)jt * P;
        const int nrow = (int)min((long long)P, rend - t0);
        const int nc = nrow * p.n_kv * CPU;
        const unsigned char *src = keys + (size_t)t0 * p.n_kv * C::UB;
        unsigned char *dst = tiles + (size_t)(jt % C::NSTAGE) * C::STAGE_BYTES;
        for (int c = tid; c < nc; c += T) {
            const int u = c / CPU, j = c - u * CPU;
            cp_async<CB>(smem_u32(dst + u * US + j * CB), src + (size_t)c * CB, true);
        }
    };

#pragma unroll
    for (int s = 0; s < C::NSTAGE - 1; s++) {
        if (s < n_tiles) stage(s);
        cp_async_commit();
    }

    for (int L = tid; L < NL; L += T) {
        cnt_s[L] = 0;
        kept_s[L] = 0;
        thr_s[L] = -INFINITY;
    }
    /* Queries: this thread's (NQV == 1: in registers) or all, fp32, in q_s. Query vector v of
     * kv head kh is query v / group, head kh·group + v % group; v >= nqv is zero (unused). */
    float qr[NQV == 1 ? D : 1];
    if constexpr (NQV == 1) {
        const bf16_t *qp = p.q + (size_t)kh * D; /* n_q = group = 1: head kh */
#pragma unroll
        for (int d = 0; d < D; d++) qr[d] = __bfloat162float(qp[d]);
    } else {
        for (int e = tid; e < p.n_kv * NQV * D; e += T) {
            const int h_kv = e / (NQV * D), r = e - h_kv * (NQV * D), v = r / D, d = r - v * D;
            float x = 0.0f;
            if (v < p.nqv) {
                const int i = v / p.group, h = h_kv * p.group + v % p.group;
                x = __bfloat162float(p.q[((size_t)i * p.n_heads + h) * D + d]);
            }
            q_s[h_kv * KHS + v * D + d] = x;
        }
    }
    /* This thread's lists: query vector v -> list (v / group)·n_heads + kh·group + v % group. */
    int lst[NQV];
    bool open[NQV];
    float th[NQV];
#pragma unroll
    for (int v = 0; v < NQV; v++) {
        lst[v] = (v / p.group) * p.n_heads + kh * p.group + v % p.group;
        open[v] = active && v < p.nqv;
        th[v] = open[v] ? -INFINITY : INFINITY;
    }
    __syncthreads();

    u64 *warp_scratch = scratch + warp * ks;
    u64 *slot0 = p.lists + (size_t)split * NL * k; /* list L at slot0 + L·k */
    const int limit = BUFL - P; /* a list over this after a tile could overflow in the next */

    for (int jt = 0; jt < n_tiles; jt++) {
        cp_async_wait<C::NSTAGE - 2>(); /* tile jt has landed (this thread's copies) */
        __syncthreads();                /* everyone's; and everyone is done with tile jt - 1 */
        if (jt + C::NSTAGE - 1 < n_tiles) stage(jt + C::NSTAGE - 1);
        cp_async_commit();

        const long long t0 = rbeg + (long long)jt * P;
        const long long row = t0 + rl;
        bool need = false;
        if (active && row < rend) {
            const unsigned char *ku =
                tiles + (size_t)(jt % C::NSTAGE) * C::STAGE_BYTES + (size_t)tid * US;
            float a0[NQV], a1[NQV];
#pragma unroll
            for (int v = 0; v < NQV; v++) a0[v] = a1[v] = 0.0f;
#pragma unroll
            for (int j = 0; j < CPU; j++) {
                float x[E];
                load_chunk<E, F32K>(x, ku + j * CB);
#pragma unroll
                for (int v = 0; v < NQV; v++) {
                    float qv[E];
                    if constexpr (NQV == 1) {
#pragma unroll
                        for (int e = 0; e < E; e++) qv[e] = qr[j * E + e];
                    } else {
                        const float *qp = q_s + kh * KHS + v * D + j * E;
#pragma unroll
                        for (int e = 0; e < E; e += 4) {
                            const float4 f = *(const float4 *)(qp + e);
                            qv[e] = f.x;
                            qv[e + 1] = f.y;
                            qv[e + 2] = f.z;
                            qv[e + 3] = f.w;
                        }
                    }
#pragma unroll
                    for (int e = 0; e < E; e += 2) {
                        a0[v] = fmaf(qv[e], x[e], a0[v]);
                        a1[v] = fmaf(qv[e + 1], x[e + 1], a1[v]);
                    }
                }
            }
            /* Rows of this tile all come after every kept row: a score equal to the
             * threshold loses the tie. */
#pragma unroll
            for (int v = 0; v < NQV; v++) {
                const float s = a0[v] + a1[v];
                if (open[v] || s > th[v]) {
                    const int slot = atomicAdd(&cnt_s[lst[v]], 1);
                    buf[(size_t)lst[v] * BUFL + slot] = make_key(s, row);
                    need |= slot + 1 > limit;
                }
            }
        }
        if (__syncthreads_or(need)) {
            for (int L = warp; L < NL; L += C::NW)
                if (cnt_s[L] > limit)
                    reselect(buf + (size_t)L * BUFL, &cnt_s[L], &kept_s[L], &thr_s[L],
                             warp_scratch, slot0 + (size_t)L * k, k, lane);
            __syncthreads();
#pragma unroll
            for (int v = 0; v < NQV; v++)
                if (active && v < p.nqv) {
                    open[v] = kept_s[lst[v]] < k;
                    th[v] = thr_s[lst[v]];
                }
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    /* Flush what the buffers still hold, then mark the empty tail of each list. */
    for (int L = warp; L < NL; L += C::NW) {
        if (cnt_s[L] > 0)
            reselect(buf + (size_t)L * BUFL, &cnt_s[L], &kept_s[L], &thr_s[L], warp_scratch,
                     slot0 + (size_t)L * k, k, lane);
        u64 *out = slot0 + (size_t)L * k;
        for (int i = kept_s[L] + lane; i < k; i += 32) out[i] = 0ull;
    }
}

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
    u64 *cur = (u64 *)smem_raw;      /* [n_split][k] */
    u64 *nxt = cur + n_split * k;    /* [(n_split + 1) / 2][k] */
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
            for (int i = tid; i < k; i += MERGE_THREADS) nxt[pairs * k + i] = cur[(n - 1) * k + i];
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

#define TRY_RC(expr) RC_TRY(expr) /* common/rc.h */

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
        log_error("cuda_topk: bad row range [%lld, %lld)", (long long)a->row0,
                  (long long)a->row1);
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

struct tk_plan {
    int wq;                   /* warps (16 queries each) per stage-1 block: 1 or 4 */
    int n_split;
    long long rows_per_split; /* multiple of MBK */
};

/* Enough blocks for a few waves (decode: one-warp blocks, several per SM), each split at
 * least MIN_TILES_PER_SPLIT tiles; no more splits than stage 2 can hold. max_split bounds
 * the count further (the workspace the caller gave). */
rc_t tk_make_plan(const cuda_topk_args_t *a, long long max_split, tk_plan *pl)
{
    int dev = 0, sm = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, dev));
    pl->wq = a->n_q <= 16 ? 1 : 4;
    const long long mbq = 16LL * pl->wq;
    const long long base = (a->n_q + mbq - 1) / mbq * a->n_heads;
    const long long tiles = (a->row1 - a->row0 + MBK - 1) / MBK;
    const long long blocks = (pl->wq == 1 ? 12LL : 4LL) * sm;
    long long want = (blocks + base - 1) / base;
    want = min(want, tiles / MIN_TILES_PER_SPLIT);
    want = min(want, (long long)MAX_SPLITS);
    want = min(want, (long long)(MERGE_MAX_KEYS / a->k));
    want = min(want, max_split);
    if (want < 1) want = 1;
    const long long per = tiles > 0 ? (tiles + want - 1) / want : 1;
    pl->rows_per_split = per * MBK;
    pl->n_split = tiles > 0 ? (int)((tiles + per - 1) / per) : 1;
    return RC_OK;
}

size_t tk_split_bytes(const cuda_topk_args_t *a)
{
    return (size_t)a->n_q * a->n_heads * a->k * sizeof(u64);
}

template <int D, int WQ, bool F32K>
rc_t launch_scan(const tk_params &p, int n_split, cudaStream_t st)
{
    using C = tcfg<D, WQ, F32K>;
    const size_t smem = C::smem(p.k);
    auto kernel = topk_scan_kernel<D, WQ, F32K>;
    CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((p.n_q + C::MBQ - 1) / C::MBQ), (unsigned)p.n_heads,
                    (unsigned)n_split);
    kernel<<<grid, C::THREADS, smem, st>>>(p);
    CU_LAUNCHED();
    return RC_OK;
}

template <int D>
rc_t launch_scan_d(const tk_params &p, int wq, bool f32k, int n_split, cudaStream_t st)
{
    if (wq == 1) return f32k ? launch_scan<D, 1, true>(p, n_split, st)
                             : launch_scan<D, 1, false>(p, n_split, st);
    return f32k ? launch_scan<D, 4, true>(p, n_split, st) : launch_scan<D, 4, false>(p, n_split, st);
}


/* ---- decode path: plan and launch ------------------------------------------------------ */

struct dk_plan {
    int nqv_t;                /* NQV: 1, 2 or 4 */
    int T, P, buf, n_split;
    long long rows_per_split;
    size_t smem;
};

template <int D, bool F32K, int NQV>
rc_t dec_plan_t(const cuda_topk_args_t *a, long long max_split, dk_plan *pl, bool *use)
{
    using C = dcfg<D, F32K>;
    *use = false;
    const int P = min(C::T / a->n_kv_heads, DEC_MAX_P);
    if (P < 1) return RC_OK;
    int dev = 0, sm = 0, optin = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, dev));
    CU_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    const int nl = a->n_q * a->n_heads;
    const size_t fixed = dec_smem<D, F32K, NQV>(a->n_kv_heads, nl, 0, a->k);
    if (fixed >= (size_t)optin) return RC_OK;
    const int buf = (int)min((size_t)128, ((size_t)optin - fixed) / ((size_t)nl * sizeof(u64)));
    if (buf < max(2 * P, 16)) return RC_OK; /* the buffers do not fit: the tiled path */
    pl->nqv_t = NQV;
    pl->T = C::T;
    pl->P = P;
    pl->buf = buf;
    pl->smem = dec_smem<D, F32K, NQV>(a->n_kv_heads, nl, buf, a->k);
    auto kernel = topk_decode_kernel<D, F32K, NQV>;
    CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)pl->smem));
    int occ = 0;
    CU_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, C::T, pl->smem));
    if (occ < 1) return RC_OK;
    const long long rows = a->row1 - a->row0;
    long long n = (long long)sm * occ;
    long long per = max((rows + n - 1) / n, (long long)DEC_MIN_TILES * P);
    n = (rows + per - 1) / per;
    n = min(n, max_split);
    n = min(n, (long long)(MERGE_MAX_KEYS / a->k));
    if (n < 1) n = 1;
    per = max((rows + n - 1) / n, 1LL);
    pl->rows_per_split = per;
    pl->n_split = rows > 0 ? (int)((rows + per - 1) / per) : 1;
    *use = true;
    return RC_OK;
}

template <int D, bool F32K>
rc_t dec_plan_d(const cuda_topk_args_t *a, int nqv, long long max_split, dk_plan *pl, bool *use)
{
    if (nqv == 1) return dec_plan_t<D, F32K, 1>(a, max_split, pl, use);
    if (nqv == 2) return dec_plan_t<D, F32K, 2>(a, max_split, pl, use);
    return dec_plan_t<D, F32K, 4>(a, max_split, pl, use);
}

/* Whether the streaming decode kernel takes these shapes (n_q · group <= DEC_MAX_NQV and its
 * shared memory fits), and its plan. */
rc_t dec_plan(const cuda_topk_args_t *a, long long max_split, dk_plan *pl, bool *use)
{
    *use = false;
    const int nqv = a->n_q * (a->n_heads / a->n_kv_heads);
    if (a->n_q < 1 || nqv > DEC_MAX_NQV) return RC_OK;
    const bool f32k = a->key_dtype == DTYPE_F32;
    switch (a->head_dim) {
    case 64:
        return f32k ? dec_plan_d<64, true>(a, nqv, max_split, pl, use)
                    : dec_plan_d<64, false>(a, nqv, max_split, pl, use);
    case 100:
        return f32k ? dec_plan_d<100, true>(a, nqv, max_split, pl, use)
                    : dec_plan_d<100, false>(a, nqv, max_split, pl, use);
    default:
        return f32k ? dec_plan_d<128, true>(a, nqv, max_split, pl, use)
                    : dec_plan_d<128, false>(a, nqv, max_split, pl, use);
    }
}

template <int D, bool F32K>
void launch_decode_d(const dk_params &p, const dk_plan &pl, cudaStream_t st)
{
    if (pl.nqv_t == 1)
        topk_decode_kernel<D, F32K, 1><<<pl.n_split, pl.T, pl.smem, st>>>(p);
    else if (pl.nqv_t == 2)
        topk_decode_kernel<D, F32K, 2><<<pl.n_split, pl.T, pl.smem, st>>>(p);
    else
        topk_decode_kernel<D, F32K, 4><<<pl.n_split, pl.T, pl.smem, st>>>(p);
}

rc_t launch_decode(const cuda_topk_args_t *a, const dk_plan &pl, void *workspace,
                   cudaStream_t st)
{
    dk_params p;
    p.n_q = a->n_q;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / a->n_kv_heads;
    p.n_kv = a->n_kv_heads;
    p.k = a->k;
    p.nqv = p.n_q * p.group;
    p.P = pl.P;
    p.buf = pl.buf;
    p.row0 = a->row0;
    p.row1 = a->row1;
    p.rows_per_split = pl.rows_per_split;
    p.q = (const bf16_t *)a->q;
    p.keys = a->keys ? a->keys : a->q; /* an empty range reads nothing */
    p.lists = (u64 *)workspace;
    const bool f32k = a->key_dtype == DTYPE_F32;
    switch (a->head_dim) {
    case 64:
        f32k ? launch_decode_d<64, true>(p, pl, st) : launch_decode_d<64, false>(p, pl, st);
        break;
    case 100:
        f32k ? launch_decode_d<100, true>(p, pl, st) : launch_decode_d<100, false>(p, pl, st);
        break;
    default:
        f32k ? launch_decode_d<128, true>(p, pl, st) : launch_decode_d<128, false>(p, pl, st);
        break;
    }
    CU_LAUNCHED();
    return RC_OK;
}


/* The tiled (tensor-core) stage 1: prefill, and decode shapes the streaming kernel does not
 * take. */
rc_t launch_tiled(const cuda_topk_args_t *a, const tk_plan &pl, void *workspace,
                  cudaStream_t st)
{
    tk_params p;
    p.n_q = a->n_q;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / a->n_kv_heads;
    p.n_kv = a->n_kv_heads;
    p.k = a->k;
    p.row0 = a->row0;
    p.row1 = a->row1;
    p.rows_per_split = pl.rows_per_split;
    p.q = (const bf16_t *)a->q;
    p.keys = a->keys ? a->keys : a->q; /* an empty range reads nothing */
    p.lists = (u64 *)workspace;
    const bool f32k = a->key_dtype == DTYPE_F32;
    switch (a->head_dim) {
    case 64: TRY_RC(launch_scan_d<64>(p, pl.wq, f32k, pl.n_split, st)); break;
    case 100: TRY_RC(launch_scan_d<100>(p, pl.wq, f32k, pl.n_split, st)); break;
    default: TRY_RC(launch_scan_d<128>(p, pl.wq, f32k, pl.n_split, st)); break;
    }
    return RC_OK;
}

} // namespace

extern "C" rc_t cuda_topk_workspace(const cuda_topk_args_t *a, size_t *bytes)
{
    if (!bytes) return RC_ERR_INVALID;
    *bytes = 0;
    TRY_RC(tk_check(a));
    if (!a->n_q) return RC_OK;
    dk_plan dp;
    bool dec = false;
    TRY_RC(dec_plan(a, MERGE_MAX_KEYS, &dp, &dec));
    if (dec) {
        *bytes = (size_t)dp.n_split * tk_split_bytes(a);
        return RC_OK;
    }
    tk_plan pl;
    TRY_RC(tk_make_plan(a, MAX_SPLITS, &pl));
    *bytes = (size_t)pl.n_split * tk_split_bytes(a);
    return RC_OK;
}

extern "C" rc_t cuda_topk(const cuda_topk_args_t *a, void *workspace, size_t workspace_bytes,
                          void *stream)
{
    TRY_RC(tk_check(a));
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
                  "keys 16)", (unsigned)al);
        return RC_ERR_UNSUPPORTED;
    }
    const size_t per = tk_split_bytes(a);
    const size_t fit = workspace ? workspace_bytes / per : 0;
    if (fit < 1 || (uintptr_t)workspace % 8) {
        log_error("cuda_topk: workspace of %zu bytes, at least %zu needed (see "
                  "cuda_topk_workspace)", workspace_bytes, per);
        return RC_ERR_INVALID;
    }
    const cudaStream_t st = CU_STREAM(stream);
    int n_split = 0;
    dk_plan dp;
    bool dec = false;
    TRY_RC(dec_plan(a, (long long)min(fit, (size_t)MERGE_MAX_KEYS), &dp, &dec));
    if (dec) {
        TRY_RC(launch_decode(a, dp, workspace, st));
        n_split = dp.n_split;
    } else {
        tk_plan pl;
        TRY_RC(tk_make_plan(a, (long long)min(fit, (size_t)MAX_SPLITS), &pl));
        TRY_RC(launch_tiled(a, pl, workspace, st));
        n_split = pl.n_split;
    }

    const size_t msmem = (size_t)(n_split + (n_split + 1) / 2) * a->k * sizeof(u64);
    CU_TRY(cudaFuncSetAttribute(topk_merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)msmem));
    const int nqh = a->n_q * a->n_heads;
    topk_merge_kernel<<<(unsigned)nqh, MERGE_THREADS, msmem, st>>>(
        (const u64 *)workspace, n_split, nqh, a->k, a->scores, a->idx);
    CU_LAUNCHED();
    return RC_OK;
}
