/* topk_decode.cu — stage 1 of cuda_topk for decode shapes (a query or two per kv head): a
 * streaming scan over whole rows with fp32 FMAs, the selection of the tiled path. */
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/topk.cuh"

namespace topk_impl
{

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
template <int D, bool F32K> struct dcfg {
    static constexpr int KB = F32K ? 4 : 2;           /* bytes per key element */
    static constexpr int UB = D * KB;                 /* bytes of one unit */
    static constexpr int CB = UB % 16 == 0 ? 16 : 8;  /* bytes per copy and load */
    static constexpr int CPU = UB / CB;               /* chunks per unit */
    static constexpr int US = CPU % 2 ? UB : UB + CB; /* shared unit stride */
    static constexpr int E = CB / KB;                 /* elements per chunk */
    static constexpr int T = US * 256 <= 53248 ? 256 : US * 128 <= 53248 ? 128 : 64;
    static constexpr int NW = T / 32;
    static constexpr int NSTAGE = 3;
    static constexpr size_t STAGE_BYTES = (size_t)T * US;
    static_assert(UB % CB == 0 && E % 2 == 0 && STAGE_BYTES % 16 == 0, "decode layout");
};

constexpr int DEC_MAX_P = 32;    /* rows per tile at most: a list takes <= P keys a tile */
constexpr int DEC_MIN_TILES = 8; /* tiles per split at least */
constexpr int DEC_MAX_NQV = 4;   /* queries per kv head (n_q · group) on this path */

struct dk_params {
    int n_q, n_heads, group, n_kv, k, nqv;
    int P;   /* rows per tile: P·n_kv <= T units */
    int buf; /* candidate buffer per list, <= 128 */
    long long row0, row1, rows_per_split;
    const bf16_t *q;  /* [n_q, n_heads, D] */
    const void *keys; /* [row1, n_kv, D] */
    u64 *lists;       /* [n_split, n_q, n_heads, k] */
};

/* floats per kv head of the shared fp32 queries [n_kv][KHS] (NQV > 1): NQV·D rounded so the
 * count of float4s is odd (bank-conflict free across kv heads). */
template <int D, int NQV> __host__ __device__ constexpr int dec_khs()
{
    return (NQV * D / 4) % 2 ? NQV * D : NQV * D + 4;
}

template <int D, bool F32K, int NQV> size_t dec_smem(int n_kv, int n_lists, int buf, int k)
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
    unsigned char *tiles = smem_raw;                               /* [NSTAGE][T·US] */
    float *q_s = (float *)(smem_raw + C::NSTAGE * C::STAGE_BYTES); /* [n_kv][KHS] */
    const size_t qs_bytes = NQV > 1 ? (size_t)p.n_kv * KHS * sizeof(float) : 0;
    const int NL = p.n_q * p.n_heads, BUFL = p.buf, k = p.k, ks = (k + 1) & ~1;
    u64 *buf = (u64 *)((unsigned char *)q_s + qs_bytes); /* [NL][BUFL] */
    u64 *scratch = buf + (size_t)NL * BUFL;              /* [NW][ks] */
    int *cnt_s = (int *)(scratch + C::NW * ks);          /* [NL] */
    int *kept_s = cnt_s + NL;                            /* [NL] */
    float *thr_s = (float *)(kept_s + NL);               /* [NL] */

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
        for (int d = 0; d < D; d++)
            qr[d] = __bfloat162float(qp[d]);
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
            for (int v = 0; v < NQV; v++)
                a0[v] = a1[v] = 0.0f;
#pragma unroll
            for (int j = 0; j < CPU; j++) {
                float x[E];
                load_chunk<E, F32K>(x, ku + j * CB);
#pragma unroll
                for (int v = 0; v < NQV; v++) {
                    float qv[E];
                    if constexpr (NQV == 1) {
#pragma unroll
                        for (int e = 0; e < E; e++)
                            qv[e] = qr[j * E + e];
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
                    reselect(buf + (size_t)L * BUFL, &cnt_s[L], &kept_s[L], &thr_s[L], warp_scratch,
                             slot0 + (size_t)L * k, k, lane);
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
        for (int i = kept_s[L] + lane; i < k; i += 32)
            out[i] = 0ull;
    }
}

/* ---- decode path: plan and launch ------------------------------------------------------ */

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
    CU_TRY(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl->smem));
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

rc_t launch_decode(const cuda_topk_args_t *a, const dk_plan &pl, void *workspace, cudaStream_t st)
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

} // namespace topk_impl
