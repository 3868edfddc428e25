/* topk_tiled.cu — stage 1 of cuda_topk with tensor cores: a grid of (query tile, head, row
 * split) blocks, each scoring its queries against tiles of MBK rows with mma.sync and keeping
 * each query's best k of its range (topk.cu's opening comment has the whole algorithm). */
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/topk.cuh"

namespace topk_impl
{

template <int D, int WQ, bool F32K> struct tcfg {
    static constexpr int MBQ = 16 * WQ; /* queries per block */
    static constexpr int THREADS = 32 * WQ;
    static constexpr int DP = (D + 15) / 16 * 16; /* padded head dim */
    static constexpr int LD = DP + 8;             /* shared row stride, elements */
    static constexpr int E = D % 8 == 0 ? 8 : 4;  /* elements per copy */
    static constexpr int CPR = D / E;             /* copies per row */
    static constexpr int NSK = F32K ? 3 : 1;      /* bf16 parts per key */
    static constexpr int NSTAGE = F32K ? 2 : 3;   /* tiles in flight + the one in use */
    static constexpr int TILE = MBK * LD;         /* elements of one part of a tile */
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

/* ---- staging --------------------------------------------------------------------------- */

/* Rows r0 .. r0 + MBK - 1 of kv head kh into one stage (rows >= rend as zeros). The copy
 * index c = tid + i·THREADS walks (row, chunk) incrementally: no division and one 64-bit
 * address per tile, which matters for d100's 1600 eight-byte copies a tile. */
template <int D, int WQ>
__device__ __forceinline__ void stage_tile(bf16_t *dst, const bf16_t *keys, int n_kv, long long r0,
                                           long long rend, int kh, int tid)
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
__device__ __forceinline__ void stage_tile(bf16_t *dst, const float *keys, int n_kv, long long r0,
                                           long long rend, int kh, int tid)
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
            for (int e = 0; e < E; e++)
                x[e] = 0.0f;
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
    u64 *buf = (u64 *)smem_raw;                          /* [MBQ][BUF] */
    bf16_t *q_s = (bf16_t *)smem_raw;                    /* [MBQ][LD], before buf */
    bf16_t *tiles = (bf16_t *)(smem_raw + C::BUF_BYTES); /* [NSTAGE][NSK][MBK][LD] */
    const int k = p.k, ks = (k + 1) & ~1;
    u64 *scratch = (u64 *)(smem_raw + C::BUF_BYTES + C::TILES_BYTES); /* [WQ][ks] */
    int *cnt_s = (int *)(scratch + WQ * ks);                          /* [MBQ] buffer fill */
    int *kept_s = cnt_s + MBQ;                                        /* [MBQ] kept list length */
    float *thr_s = (float *)(kept_s + MBQ);                           /* [MBQ] k-th kept score */

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
            stage_tile<D, WQ>(tiles + s * C::STAGE, keys, p.n_kv, rbeg + (long long)s * MBK, rend,
                              kh, tid);
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
        for (int n = 0; n < NT_S; n++)
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
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
        unsigned need =
            __ballot_sync(FULL, lane < 16 && cnt_s[warp * 16 + (lane & 15)] > BUF - MBK);
        if (need) {
            while (need) {
                const int ql = warp * 16 + __ffs(need) - 1;
                need &= need - 1;
                reselect(buf + ql * BUF, &cnt_s[ql], &kept_s[ql], &thr_s[ql], warp_scratch,
                         slot0 + (size_t)(ql)*slot_stride, k, lane);
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
        for (int i = kept_s[ql] + lane; i < k; i += 32)
            out[i] = 0ull;
    }
}

/* ---- plan and launch ------------------------------------------------------------------- */

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
    if (wq == 1)
        return f32k ? launch_scan<D, 1, true>(p, n_split, st)
                    : launch_scan<D, 1, false>(p, n_split, st);
    return f32k ? launch_scan<D, 4, true>(p, n_split, st)
                : launch_scan<D, 4, false>(p, n_split, st);
}

/* The tiled (tensor-core) stage 1: prefill, and decode shapes the streaming kernel does not
 * take. */
rc_t launch_tiled(const cuda_topk_args_t *a, const tk_plan &pl, void *workspace, cudaStream_t st)
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
    case 64:
        RC_TRY(launch_scan_d<64>(p, pl.wq, f32k, pl.n_split, st));
        break;
    case 100:
        RC_TRY(launch_scan_d<100>(p, pl.wq, f32k, pl.n_split, st));
        break;
    default:
        RC_TRY(launch_scan_d<128>(p, pl.wq, f32k, pl.n_split, st));
        break;
    }
    return RC_OK;
}

} // namespace topk_impl
