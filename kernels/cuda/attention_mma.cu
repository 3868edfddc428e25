/* attention_mma.cu — tensor-core flash attention with FoT memory keys (cpu_attention's
 * semantics) for bf16 activations: cuda_attention_fast in kernels/cuda.h.
 *
 * Same virtual key sequence as attention.cu: the n_mem memory rows (unrotated, seen by every
 * query) followed by the n_k local keys (causal: query i sees local keys 0 .. q_offset + i),
 * one softmax over all of it, scores clamped below at −1e6. What changes is the arithmetic:
 * FlashAttention-2 on mma.sync.m16n8k16 (bf16 operands, fp32 accumulators), which sm_80 and
 * later run, Hopper included.
 *
 * A block of 4 warps takes MBQ = 64 queries of one head; warp w owns rows 16w .. 16w+15 and
 * keeps their Q fragments in registers for the whole key walk. Keys and values come in tiles
 * of MBK = 64 rows, staged in shared memory by cp.async into two buffers (tile j+1 loads
 * while tile j is computed). Per tile each warp computes S = Q·Kᵀ (16×64, fp32), applies the
 * scale, clamp and mask, updates the running row maximum and sum (online softmax, in the
 * log2 domain so that exp is one ex2), rounds P to bf16 (FA-2: the S accumulator layout is
 * the A-operand layout of the next product, no shuffle) and accumulates O += P·V.
 *
 * Head dims: 64 and 128 as they are; 100 is padded to DP = 112 (a multiple of the k step 16)
 * with zero columns in shared memory, written once and never overwritten, which changes no
 * dot product. Global rows of 100 bf16 are 200 bytes, 8-byte aligned only, so d100 copies 8
 * bytes per cp.async (16 for d64/d128).
 *
 * Memory rows in fp32 are converted to bf16 while staged (plain loads, not cp.async): the
 * tensor cores take bf16. That rounding (2^-9 relative per element) is of the order of the
 * bf16 output's own rounding; tests/test_cuda_attention_mma.c measures it.
 *
 * Splitting: with a workspace the virtual key range is cut into n_split pieces (blockIdx.z);
 * each block writes its partial output normalized by its own sum plus its log2-sum-exp, and
 * mma_merge_kernel combines them per row, as attention.cu does. Few queries (decode) or
 * long memories then still fill the GPU. The rows' log-sum-exp a caller may ask for
 * (cuda_attn_args_t.lse) comes from the block or the merge, converted from log2 to natural
 * log: (m + log2 l) · ln 2, the normalizer the output was divided by.
 *
 * Shared memory per block: (MBQ + 4·MBK) rows of DP + 8 bf16 (the 8-element pad puts the 8
 * rows of each ldmatrix phase on distinct banks: the row stride in 16-byte units, DP/8 + 1,
 * is odd for DP = 64, 112, 128): 46 KB (d64), 77 KB (d100), 87 KB (d128). Two blocks fit
 * an SM.
 *
 * Positional layouts (Self-Extend, DCA, memory queries and factors of their own: the tail
 * of cuda_attn_args_t) run ext_attn_kernel, the same loop with a per-pair choice of score;
 * its comment below says how. Plain RoPE, with or without a memory factor, stays here. */
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"

namespace {

constexpr int MWARPS = 4;
constexpr int MTHREADS = MWARPS * 32;
constexpr int MBQ = MWARPS * 16; /* queries per block: 16 per warp (the mma's M) */
constexpr int MBK = 64;          /* keys per tile */
constexpr int M_MAX_SPLITS = 128;
constexpr int M_MIN_TILES_PER_SPLIT = 4; /* 256 keys: below that the merge costs more */
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

#define TRY_RC(expr) RC_TRY(expr) /* common/rc.h */

template <int D>
struct mcfg {
    static constexpr int DP = (D + 15) / 16 * 16;      /* padded head dim */
    static constexpr int LD = DP + 8;                  /* shared row stride, elements */
    static constexpr int E = D % 8 == 0 ? 8 : 4;       /* elements per copy: 16 or 8 bytes */
    static constexpr int CPR = D / E;                  /* copies per row */
    static constexpr int TILE = MBK * LD;              /* elements of one K or V buffer */
    static constexpr int ROWS = MBQ + 4 * MBK;         /* q, 2 K buffers, 2 V buffers */
    static constexpr size_t SMEM = (size_t)ROWS * LD * sizeof(bf16_t);
    static_assert(D % E == 0 && DP % 16 == 0 && (DP / 8) % 2 == 0, "head_dim layout");
};

struct mma_params {
    int n_q, n_k, n_heads, group, n_kv, q_offset;
    long long n_mem;
    long long keys_per_split; /* multiple of MBK */
    const bf16_t *q;          /* [n_q, n_heads, D] */
    const bf16_t *k, *v;      /* [n_k, n_kv, D] */
    const void *mk, *mv;      /* [n_mem, n_kv, D] bf16 or fp32 */
    bf16_t *out;              /* [n_q, n_heads, D], when part_o == NULL */
    float *part_o;            /* [n_split, n_q, n_heads, D] */
    float *part_lse;          /* [n_split, n_q, n_heads], log2 domain */
    float *lse;               /* [n_q, n_heads] natural log-sum-exp; NULL: not wanted */
    float scale_log2;         /* scale · log2(e) */
    float mem_scale_log2;     /* mem_scale · log2(e): memory scores' factor */
    /* Positional layouts (ext_attn_kernel only; cuda.h's cuda_attn_args_t tail). */
    int layout;               /* cuda_attn_layout_t */
    int neighbor, chunk_len;  /* self-extend W, dca c */
    const bf16_t *qv[4];      /* [n_q, n_heads, D] each: variant 0 (q), 1, 2 (q_alt), 3 (q_mem) */
    const bf16_t *kg;         /* [n_k, n_kv, D] self-extend: keys rotated at j // G */
};

/* One copy of E elements of a K or V row into shared memory. bf16 sources go through
 * cp.async; fp32 sources (memory rows only) are loaded, rounded and stored here. */
template <int E>
__device__ __forceinline__ void stage(bf16_t *dst, const bf16_t *src, const bf16_t *any, bool ok)
{
    cp_async<E * 2>(smem_u32(dst), ok ? src : any, ok);
}

template <int E>
__device__ __forceinline__ void stage(bf16_t *dst, const float *src, const bf16_t *, bool ok)
{
    if constexpr (E == 8) {
        uint4 w = make_uint4(0, 0, 0, 0);
        if (ok) {
            const float4 a = *(const float4 *)src, b = *(const float4 *)(src + 4);
            w = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(b.x, b.y),
                           pack_bf16(b.z, b.w));
        }
        *(uint4 *)dst = w;
    } else {
        uint2 w = make_uint2(0, 0);
        if (ok) {
            const float4 a = *(const float4 *)src;
            w = make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
        }
        *(uint2 *)dst = w;
    }
}

/* Stages virtual keys t0 .. t0 + MBK − 1 of kv head kh (keys ≥ kend as zeros: a masked
 * key's value must be finite, since its probability 0 still multiplies it). */
template <int D, typename M>
__device__ __forceinline__ void load_kv(bf16_t *ks, bf16_t *vs, const mma_params &p,
                                        long long t0, long long kend, int kh, int tid)
{
    using C = mcfg<D>;
    const M *mk = (const M *)p.mk, *mv = (const M *)p.mv;
#pragma unroll 4
    for (int c = tid; c < MBK * C::CPR; c += MTHREADS) {
        const int r = c / C::CPR, col = (c % C::CPR) * C::E;
        const long long vk = t0 + r;
        bf16_t *kd = ks + r * C::LD + col, *vd = vs + r * C::LD + col;
        if (vk < kend && vk < p.n_mem) {
            const size_t off = ((size_t)vk * p.n_kv + kh) * D + col;
            stage<C::E>(kd, mk + off, p.k, true);
            stage<C::E>(vd, mv + off, p.k, true);
        } else {
            const bool ok = vk < kend;
            const size_t off = ok ? ((size_t)(vk - p.n_mem) * p.n_kv + kh) * D + col : 0;
            stage<C::E>(kd, p.k + off, p.k, ok);
            stage<C::E>(vd, p.v + off, p.k, ok);
        }
    }
}

template <int D, typename M>
__global__ void __launch_bounds__(MTHREADS, 2) mma_attn_kernel(mma_params p)
{
    using C = mcfg<D>;
    constexpr int DP = C::DP, LD = C::LD;
    constexpr int KSTEPS = DP / 16; /* k steps of Q·Kᵀ */
    constexpr int NT_S = MBK / 8;   /* 8-key column tiles of S */
    constexpr int NT_O = DP / 8;    /* 8-dim column tiles of O */
    constexpr float CLAMP2 = -1e6f * LOG2E;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16_t *q_s = (bf16_t *)smem_raw;  /* [MBQ][LD] */
    bf16_t *k_s = q_s + MBQ * LD;      /* [2][MBK][LD] */
    bf16_t *v_s = k_s + 2 * C::TILE;   /* [2][MBK][LD] */

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3; /* the mma fragments' row group and column pair */
    /* Causal blocks of later queries walk more keys: launch them first. */
    const int q0 = (gridDim.x - 1 - blockIdx.x) * MBQ, h = blockIdx.y, split = blockIdx.z;
    const int kh = h / p.group;

    /* The pad columns D .. DP − 1 of every row: zero, and cp.async never writes them. */
    if constexpr (DP > D) {
        unsigned short *raw = (unsigned short *)smem_raw;
        for (int e = tid; e < C::ROWS * (DP - D); e += MTHREADS)
            raw[(e / (DP - D)) * LD + D + e % (DP - D)] = 0;
    }

    for (int c = tid; c < MBQ * C::CPR; c += MTHREADS) {
        const int r = c / C::CPR, col = (c % C::CPR) * C::E, i = q0 + r;
        const bool ok = i < p.n_q;
        cp_async<C::E * 2>(smem_u32(q_s + r * LD + col),
                           ok ? p.q + ((size_t)i * p.n_heads + h) * D + col : p.q, ok);
    }

    /* This split's keys, cut at the last key any of the block's queries can see. */
    const long long total = p.n_mem + p.n_k;
    const long long kbeg = (long long)split * p.keys_per_split;
    const int q_last = min(q0 + MBQ, p.n_q) - 1;
    const long long vis = p.n_mem + p.q_offset; /* query i sees virtual keys < vis + i + 1 */
    const long long kend = min(min(total, kbeg + p.keys_per_split), vis + q_last + 1);
    const int n_tiles = kend > kbeg ? (int)((kend - kbeg + MBK - 1) / MBK) : 0;
    if (n_tiles > 0) load_kv<D, M>(k_s, v_s, p, kbeg, kend, kh, tid);
    cp_async_commit(); /* group: Q and tile 0 */

    const int w0 = q0 + warp * 16; /* the warp's first query */
    const bool warp_active = w0 < p.n_q;
    /* Keys every row of the warp sees (no mask below this), and keys none sees (≥ this). */
    const long long warp_full = min(kend, vis + w0 + 1);
    const long long warp_end = min(kend, vis + min(w0 + 15, p.n_q - 1) + 1);
    /* This thread's rows w0 + g and w0 + g + 8: keys < lim are visible. */
    const long long lim0 = min(kend, vis + w0 + g + 1), lim1 = min(kend, vis + w0 + g + 9);

    uint32_t qf[KSTEPS][4];
    float o[NT_O][4];
#pragma unroll
    for (int n = 0; n < NT_O; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY; /* running maxima, log2 domain */
    float l0 = 0.0f, l1 = 0.0f;           /* this thread's share of the running sums */

    for (int j = 0; j < n_tiles; j++) {
        const long long t0 = kbeg + (long long)j * MBK;
        const int buf = j & 1;
        if (j + 1 < n_tiles) {
            /* Buffer buf ^ 1 was last read in iteration j − 1, before its closing barrier. */
            load_kv<D, M>(k_s + (buf ^ 1) * C::TILE, v_s + (buf ^ 1) * C::TILE, p, t0 + MBK,
                          kend, kh, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (warp_active && j == 0) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                const int row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int col = kk * 16 + (lane >> 4) * 8;
                ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], smem_u32(q_s + row * LD + col));
            }
        }

        if (warp_active && t0 < warp_end) {
            const bf16_t *kb = k_s + buf * C::TILE, *vb = v_s + buf * C::TILE;
            float s[NT_S][4];
#pragma unroll
            for (int n = 0; n < NT_S; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
                for (int np = 0; np < NT_S / 2; np++) {
                    /* matrices: keys 16np + 0..7 / 8..15 × dims 16kk + 0..7 / 8..15 */
                    const int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
                    const int col = kk * 16 + ((lane >> 3) & 1) * 8;
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, smem_u32(kb + key * LD + col));
                    mma_bf16(s[2 * np], qf[kk], b0, b1);
                    mma_bf16(s[2 * np + 1], qf[kk], b2, b3);
                }
            }

            /* Scale, clamp, mask; the tile's row maxima. Memory scores may have their own
             * factor (YaRN's attention factor once more, as a local key at index 0 has). */
            const bool masked = t0 + MBK > warp_full;
            const float sc = t0 < p.n_mem ? p.mem_scale_log2 : p.scale_log2;
            const bool two_sc = t0 < p.n_mem && t0 + MBK > p.n_mem;
            const int r0 = (int)max(min(lim0 - t0, (long long)MBK), -1LL);
            const int r1 = (int)max(min(lim1 - t0, (long long)MBK), -1LL);
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int n = 0; n < NT_S; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = n * 8 + 2 * t4 + (e & 1);
                    const float f = two_sc && t0 + col >= p.n_mem ? p.scale_log2 : sc;
                    float x = fmaxf(s[n][e] * f, CLAMP2);
                    if (masked && col >= (e < 2 ? r0 : r1)) x = -INFINITY;
                    s[n][e] = x;
                }
                mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
                mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            /* A row that has seen nothing yet keeps p = 0 (exp2(−inf − 0)). */
            const float mu0 = mn0 == -INFINITY ? 0.0f : mn0;
            const float mu1 = mn1 == -INFINITY ? 0.0f : mn1;
            const float a0 = exp2f(m0 - mu0), a1 = exp2f(m1 - mu1); /* 0 when m was −inf */
            m0 = mn0;
            m1 = mn1;
            float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
            for (int n = 0; n < NT_S; n++) {
                s[n][0] = exp2f(s[n][0] - mu0);
                s[n][1] = exp2f(s[n][1] - mu0);
                s[n][2] = exp2f(s[n][2] - mu1);
                s[n][3] = exp2f(s[n][3] - mu1);
                ps0 += s[n][0] + s[n][1];
                ps1 += s[n][2] + s[n][3];
            }
            l0 = l0 * a0 + ps0;
            l1 = l1 * a1 + ps1;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                o[n][0] *= a0;
                o[n][1] *= a0;
                o[n][2] *= a1;
                o[n][3] *= a1;
            }

            /* O += P·V: S's accumulator layout is P's A-operand layout. */
#pragma unroll
            for (int kk = 0; kk < MBK / 16; kk++) {
                uint32_t pa[4];
                pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int np = 0; np < NT_O / 2; np++) {
                    /* matrices: keys 16kk + 0..7 / 8..15 × dims 16np + 0..7 / 8..15 */
                    const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    const int col = np * 16 + (lane >> 4) * 8;
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, smem_u32(vb + key * LD + col));
                    mma_bf16(o[2 * np], pa, b0, b1);
                    mma_bf16(o[2 * np + 1], pa, b2, b3);
                }
            }
        }
        __syncthreads(); /* everyone is done with buffer buf before it is refilled */
    }
    cp_async_wait<0>(); /* with no tile, the Q copies are still in flight */

    if (!warp_active) return;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int i = w0 + g + half * 8;
        if (i >= p.n_q) continue;
        const float l = half ? l1 : l0, m = half ? m1 : m0;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const size_t qh = (size_t)i * p.n_heads + h;
        if (p.part_o) {
            const size_t sq = (size_t)split * p.n_q * p.n_heads + qh;
            float *po = p.part_o + sq * D;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                const int col = n * 8 + 2 * t4;
                if (col < D)
                    *(float2 *)(po + col) =
                        make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
            }
            if (t4 == 0) p.part_lse[sq] = l > 0.0f ? m + log2f(l) : -INFINITY;
        } else {
            bf16_t *out = p.out + qh * D;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                const int col = n * 8 + 2 * t4;
                if (col < D)
                    *(__nv_bfloat162 *)(out + col) =
                        __floats2bfloat162_rn(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
            }
            if (p.lse && t4 == 0) p.lse[qh] = l > 0.0f ? (m + log2f(l)) * LN2 : -INFINITY;
        }
    }
}

/* ---- positional layouts: Self-Extend, DCA, memory queries of their own ------------------
 *
 * ext_attn_kernel is mma_attn_kernel with a score that depends on the (query, key) pair:
 * every pair takes its score from one of up to four variants (cuda.h, cpu_attention_ext):
 *   0  (q, k)              plain; Self-Extend neighbours; DCA same chunk
 *   1  (q_alt[0], k | kg)  Self-Extend grouped (keys rotated at j // G); DCA previous chunk
 *   2  (q_alt[1], k)       DCA older chunks
 *   3  (q_mem, memory)     memory rows, with mem_scale
 * Which variants a tile needs follows from the ranges of its rows and keys alone, and along
 * the key walk they come in runs (memory, then far, then near keys), so most tiles need one:
 * that tile is exactly mma_attn_kernel's, with the warp's Q fragments of that variant in
 * registers (reloaded from global memory, L2-resident, only when the run changes: a few
 * times per warp). A tile on a boundary (Self-Extend's band of width W along the diagonal,
 * a chunk boundary, the memory/local seam) computes its first variant the same way and each
 * other one per 16-key slice with fragments read from global memory through L1, then keeps
 * per element the score its variant rule picks: two products for those tiles only, never a
 * [n_q, n_k] matrix. Self-Extend stages the grouped keys beside the plain ones (only where
 * some pair of the block needs them), which is why its shared memory is 6 tiles instead of
 * 4; without a Q tile in shared memory both fit two blocks an SM at every head dim. */

/* Bits of the variants some visible pair (i, j ≤ i) with local query index in [ilo, ihi]
 * and virtual key in [t0, t1) takes. Exact for Self-Extend and memory, a superset for DCA
 * (computing a variant no pair uses is only wasted work); monotone in both ranges, so a
 * warp's mask is inside its block's. */
__device__ __forceinline__ unsigned tile_mask(const mma_params &p, int ilo, int ihi,
                                              long long t0, long long t1)
{
    unsigned m = t0 < p.n_mem ? 8u : 0u;
    if (t1 <= p.n_mem) return m;
    const int jlo = (int)(max(t0, p.n_mem) - p.n_mem);
    if (jlo > ihi) return m; /* every local key of the range is after every query */
    const int jhi = (int)min(t1 - 1 - p.n_mem, (long long)ihi);
    switch (p.layout) {
    case CUDA_ATTN_SELF_EXTEND:
        if (max(0, ilo - jhi) < p.neighbor) m |= 1u; /* nearest visible pair */
        if (ihi - jlo >= p.neighbor) m |= 2u;        /* farthest */
        return m;
    case CUDA_ATTN_DCA: {
        const int c = p.chunk_len, cil = ilo / c, cih = ihi / c, cjl = jlo / c, cjh = jhi / c;
        if (cih >= cjl && cil <= cjh) m |= 1u;
        if (cil - 1 <= cjh && cih - 1 >= cjl) m |= 2u;
        if (cih - 2 >= cjl) m |= 4u;
        return m;
    }
    default:
        return m | 1u;
    }
}

/* The variant of the pair (query with thresholds th0/th1, virtual key vk): Self-Extend
 * th0 = i − W + 1 (keys below are grouped); DCA th0 = i's chunk start, th1 = th0 − c. */
__device__ __forceinline__ int pair_variant(const mma_params &p, int th0, int th1, long long vk)
{
    if (vk < p.n_mem) return 3;
    const int j = (int)(vk - p.n_mem);
    switch (p.layout) {
    case CUDA_ATTN_SELF_EXTEND: return j < th0 ? 1 : 0;
    case CUDA_ATTN_DCA: return j >= th0 ? 0 : j >= th1 ? 1 : 2;
    default: return 0;
    }
}

/* Variant v's queries (a select, not a run-time index into the parameter space, which
 * would copy the parameters to local memory). */
__device__ __forceinline__ const bf16_t *qvar(const mma_params &p, int v)
{
    return v == 0 ? p.qv[0] : v == 1 ? p.qv[1] : v == 2 ? p.qv[2] : p.qv[3];
}

/* The A fragment (m16n8k16) of rows w0 + g, w0 + g + 8 and dims 16kk + 2t4 (+1, +8, +9) of
 * query variant q, straight from global memory; rows ≥ n_q and dims ≥ D are zeros. */
template <int D>
__device__ __forceinline__ void q_frag(uint32_t a[4], const bf16_t *q, const mma_params &p,
                                       int h, int w0, int g, int t4, int kk)
{
    const int ra = w0 + g, rb = ra + 8, c0 = kk * 16 + 2 * t4, c1 = c0 + 8;
    const unsigned *pa = (const unsigned *)(q + ((size_t)ra * p.n_heads + h) * D);
    const unsigned *pb = (const unsigned *)(q + ((size_t)rb * p.n_heads + h) * D);
    const bool oka = ra < p.n_q, okb = rb < p.n_q;
    a[0] = oka && c0 < D ? __ldg(pa + c0 / 2) : 0u;
    a[1] = okb && c0 < D ? __ldg(pb + c0 / 2) : 0u;
    a[2] = oka && c1 < D ? __ldg(pa + c1 / 2) : 0u;
    a[3] = okb && c1 < D ? __ldg(pb + c1 / 2) : 0u;
}

/* Stages virtual keys t0 .. t0 + MBK − 1 as load_kv does; `need` (a block's tile_mask) says
 * which key buffers some warp reads: ks (variants 0, 2, 3; 1 except under Self-Extend) and
 * kgs (Self-Extend's grouped keys, variant 1). */
template <int D, typename M>
__device__ __forceinline__ void load_kv_ext(bf16_t *ks, bf16_t *kgs, bf16_t *vs,
                                            const mma_params &p, long long t0, long long kend,
                                            int kh, int tid, unsigned need)
{
    using C = mcfg<D>;
    const M *mk = (const M *)p.mk, *mv = (const M *)p.mv;
    const bool se = p.layout == CUDA_ATTN_SELF_EXTEND;
    const bool want_k = !se || (need & 9u), want_g = se && (need & 2u);
#pragma unroll 4
    for (int c = tid; c < MBK * C::CPR; c += MTHREADS) {
        const int r = c / C::CPR, col = (c % C::CPR) * C::E;
        const long long vk = t0 + r;
        bf16_t *kd = ks + r * C::LD + col, *vd = vs + r * C::LD + col;
        if (vk < kend && vk < p.n_mem) {
            const size_t off = ((size_t)vk * p.n_kv + kh) * D + col;
            stage<C::E>(kd, mk + off, p.k, true);
            stage<C::E>(vd, mv + off, p.k, true);
            if (want_g) stage<C::E>(kgs + r * C::LD + col, p.k, p.k, false);
        } else {
            const bool ok = vk < kend;
            const size_t off = ok ? ((size_t)(vk - p.n_mem) * p.n_kv + kh) * D + col : 0;
            if (want_k) stage<C::E>(kd, p.k + off, p.k, ok);
            if (want_g) stage<C::E>(kgs + r * C::LD + col, p.kg + off, p.k, ok);
            stage<C::E>(vd, p.v + off, p.k, ok);
        }
    }
}

template <int D, typename M>
__global__ void __launch_bounds__(MTHREADS, 2) ext_attn_kernel(mma_params p)
{
    using C = mcfg<D>;
    constexpr int DP = C::DP, LD = C::LD;
    constexpr int KSTEPS = DP / 16;
    constexpr int NT_S = MBK / 8;
    constexpr int NT_O = DP / 8;
    constexpr float CLAMP2 = -1e6f * LOG2E;

    const bool se = p.layout == CUDA_ATTN_SELF_EXTEND;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16_t *k_s = (bf16_t *)smem_raw; /* [2][MBK][LD] */
    bf16_t *v_s = k_s + 2 * C::TILE;  /* [2][MBK][LD] */
    bf16_t *g_s = v_s + 2 * C::TILE;  /* [2][MBK][LD] self-extend only */
    const int rows = (se ? 6 : 4) * MBK;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * MBQ, h = blockIdx.y, split = blockIdx.z;
    const int kh = h / p.group;

    if constexpr (DP > D) {
        unsigned short *raw = (unsigned short *)smem_raw;
        for (int e = tid; e < rows * (DP - D); e += MTHREADS)
            raw[(e / (DP - D)) * LD + D + e % (DP - D)] = 0;
    }

    const long long total = p.n_mem + p.n_k;
    const long long kbeg = (long long)split * p.keys_per_split;
    const int q_last = min(q0 + MBQ, p.n_q) - 1;
    const long long vis = p.n_mem + p.q_offset;
    const long long kend = min(min(total, kbeg + p.keys_per_split), vis + q_last + 1);
    const int n_tiles = kend > kbeg ? (int)((kend - kbeg + MBK - 1) / MBK) : 0;
    const int bi_lo = p.q_offset + q0, bi_hi = p.q_offset + q_last; /* local query indices */
    if (n_tiles > 0)
        load_kv_ext<D, M>(k_s, g_s, v_s, p, kbeg, kend, kh, tid,
                          tile_mask(p, bi_lo, bi_hi, kbeg, min(kbeg + MBK, kend)));
    cp_async_commit();

    const int w0 = q0 + warp * 16;
    const bool warp_active = w0 < p.n_q;
    const long long warp_full = min(kend, vis + w0 + 1);
    const long long warp_end = min(kend, vis + min(w0 + 15, p.n_q - 1) + 1);
    const long long lim0 = min(kend, vis + w0 + g + 1), lim1 = min(kend, vis + w0 + g + 9);
    const int wi_lo = p.q_offset + w0, wi_hi = p.q_offset + min(w0 + 15, p.n_q - 1);
    /* This thread's rows' variant thresholds (pair_variant). */
    const int i0 = p.q_offset + w0 + g, i1 = i0 + 8;
    int th00 = 0, th01 = 0, th10 = 0, th11 = 0;
    if (p.layout == CUDA_ATTN_SELF_EXTEND) {
        th00 = i0 - p.neighbor + 1;
        th10 = i1 - p.neighbor + 1;
    } else if (p.layout == CUDA_ATTN_DCA) {
        th00 = i0 / p.chunk_len * p.chunk_len;
        th01 = th00 - p.chunk_len;
        th10 = i1 / p.chunk_len * p.chunk_len;
        th11 = th10 - p.chunk_len;
    }

    uint32_t qf[KSTEPS][4];
    int cur = -1; /* the variant whose fragments qf holds */
    float o[NT_O][4];
#pragma unroll
    for (int n = 0; n < NT_O; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY;
    float l0 = 0.0f, l1 = 0.0f;

    for (int j = 0; j < n_tiles; j++) {
        const long long t0 = kbeg + (long long)j * MBK;
        const int buf = j & 1;
        if (j + 1 < n_tiles) {
            const long long t1 = t0 + MBK;
            load_kv_ext<D, M>(k_s + (buf ^ 1) * C::TILE, g_s + (buf ^ 1) * C::TILE,
                              v_s + (buf ^ 1) * C::TILE, p, t1, kend, kh, tid,
                              tile_mask(p, bi_lo, bi_hi, t1, min(t1 + MBK, kend)));
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (warp_active && t0 < warp_end) {
            const unsigned need = tile_mask(p, wi_lo, wi_hi, t0, min(t0 + MBK, warp_end));
            const int first = (need >> max(cur, 0)) & 1u && cur >= 0 ? cur : __ffs(need) - 1;
            if (first != cur) {
                cur = first;
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++) q_frag<D>(qf[kk], qvar(p, cur), p, h, w0, g, t4, kk);
            }
            const bf16_t *kb = (se && cur == 1 ? g_s : k_s) + buf * C::TILE;
            const bf16_t *vb = v_s + buf * C::TILE;
            float s[NT_S][4];
#pragma unroll
            for (int n = 0; n < NT_S; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
                for (int np = 0; np < NT_S / 2; np++) {
                    const int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
                    const int col = kk * 16 + ((lane >> 3) & 1) * 8;
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4(b0, b1, b2, b3, smem_u32(kb + key * LD + col));
                    mma_bf16(s[2 * np], qf[kk], b0, b1);
                    mma_bf16(s[2 * np + 1], qf[kk], b2, b3);
                }
            }

            /* The other variants of a boundary tile, 16 keys at a time; each element keeps
             * the score of its own variant. */
            const unsigned rest = need & ~(1u << cur);
            if (rest) {
#pragma unroll 1
                for (int v = 0; v < 4; v++) {
                    if (!((rest >> v) & 1u)) continue;
                    const bf16_t *kv = (se && v == 1 ? g_s : k_s) + buf * C::TILE;
                    const bf16_t *qv = qvar(p, v);
#pragma unroll
                    for (int np = 0; np < NT_S / 2; np++) {
                        float t[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
                        for (int kk = 0; kk < KSTEPS; kk++) {
                            uint32_t a[4];
                            q_frag<D>(a, qv, p, h, w0, g, t4, kk);
                            const int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
                            const int col = kk * 16 + ((lane >> 3) & 1) * 8;
                            uint32_t b0, b1, b2, b3;
                            ldsm_x4(b0, b1, b2, b3, smem_u32(kv + key * LD + col));
                            mma_bf16(t[0], a, b0, b1);
                            mma_bf16(t[1], a, b2, b3);
                        }
#pragma unroll
                        for (int x = 0; x < 2; x++) {
#pragma unroll
                            for (int e = 0; e < 4; e++) {
                                const long long vk = t0 + (2 * np + x) * 8 + 2 * t4 + (e & 1);
                                const int var = e < 2 ? pair_variant(p, th00, th01, vk)
                                                      : pair_variant(p, th10, th11, vk);
                                if (var == v) s[2 * np + x][e] = t[x][e];
                            }
                        }
                    }
                }
            }

            const bool masked = t0 + MBK > warp_full;
            const int r0 = (int)max(min(lim0 - t0, (long long)MBK), -1LL);
            const int r1 = (int)max(min(lim1 - t0, (long long)MBK), -1LL);
            const float sc = t0 < p.n_mem ? p.mem_scale_log2 : p.scale_log2;
            const bool two_sc = t0 < p.n_mem && t0 + MBK > p.n_mem;
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int n = 0; n < NT_S; n++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = n * 8 + 2 * t4 + (e & 1);
                    const float f = two_sc && t0 + col >= p.n_mem ? p.scale_log2 : sc;
                    float x = fmaxf(s[n][e] * f, CLAMP2);
                    if (masked && col >= (e < 2 ? r0 : r1)) x = -INFINITY;
                    s[n][e] = x;
                }
                mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
                mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float mu0 = mn0 == -INFINITY ? 0.0f : mn0;
            const float mu1 = mn1 == -INFINITY ? 0.0f : mn1;
            const float a0 = exp2f(m0 - mu0), a1 = exp2f(m1 - mu1);
            m0 = mn0;
            m1 = mn1;
            float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
            for (int n = 0; n < NT_S; n++) {
                s[n][0] = exp2f(s[n][0] - mu0);
                s[n][1] = exp2f(s[n][1] - mu0);
                s[n][2] = exp2f(s[n][2] - mu1);
                s[n][3] = exp2f(s[n][3] - mu1);
                ps0 += s[n][0] + s[n][1];
                ps1 += s[n][2] + s[n][3];
            }
            l0 = l0 * a0 + ps0;
            l1 = l1 * a1 + ps1;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                o[n][0] *= a0;
                o[n][1] *= a0;
                o[n][2] *= a1;
                o[n][3] *= a1;
            }
#pragma unroll
            for (int kk = 0; kk < MBK / 16; kk++) {
                uint32_t pa[4];
                pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int np = 0; np < NT_O / 2; np++) {
                    const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    const int col = np * 16 + (lane >> 4) * 8;
                    uint32_t b0, b1, b2, b3;
                    ldsm_x4_t(b0, b1, b2, b3, smem_u32(vb + key * LD + col));
                    mma_bf16(o[2 * np], pa, b0, b1);
                    mma_bf16(o[2 * np + 1], pa, b2, b3);
                }
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    if (!warp_active) return;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int i = w0 + g + half * 8;
        if (i >= p.n_q) continue;
        const float l = half ? l1 : l0, m = half ? m1 : m0;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const size_t qh = (size_t)i * p.n_heads + h;
        if (p.part_o) {
            const size_t sq = (size_t)split * p.n_q * p.n_heads + qh;
            float *po = p.part_o + sq * D;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                const int col = n * 8 + 2 * t4;
                if (col < D)
                    *(float2 *)(po + col) =
                        make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
            }
            if (t4 == 0) p.part_lse[sq] = l > 0.0f ? m + log2f(l) : -INFINITY;
        } else {
            bf16_t *out = p.out + qh * D;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                const int col = n * 8 + 2 * t4;
                if (col < D)
                    *(__nv_bfloat162 *)(out + col) =
                        __floats2bfloat162_rn(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
            }
            if (p.lse && t4 == 0) p.lse[qh] = l > 0.0f ? (m + log2f(l)) * LN2 : -INFINITY;
        }
    }
}

/* One block per (query, head): out = Σ_s 2^(lse_s − max) · o_s / Σ_s 2^(lse_s − max). Every
 * split wrote every row (zeros with lse −inf where it saw no key), so no NaN can leak in.
 * With lse, the row's log-sum-exp from the same sum, back in natural log. */
template <int D>
__global__ void mma_merge_kernel(bf16_t *out, float *lse, const float *part_o,
                                 const float *part_lse, int n_split, int n_q, int n_heads)
{
    const size_t qh = (size_t)blockIdx.x * n_heads + blockIdx.y;
    const size_t stride = (size_t)n_q * n_heads;
    float mx = -INFINITY;
    for (int s = 0; s < n_split; s++) mx = fmaxf(mx, part_lse[s * stride + qh]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.0f, w = 0.0f;
        if (mx != -INFINITY) {
            for (int s = 0; s < n_split; s++) {
                const float ws = exp2f(part_lse[s * stride + qh] - mx);
                o += ws * part_o[(s * stride + qh) * D + d];
                w += ws;
            }
        }
        out[qh * D + d] = __float2bfloat16_rn(w > 0.0f ? o / w : 0.0f);
        if (lse && d == 0) lse[qh] = w > 0.0f ? (mx + log2f(w)) * LN2 : -INFINITY;
    }
}

/* Past 48 KB a block's dynamic shared memory must be asked for, once per device and kernel.
 * The mask is only a cache: a race sets the attribute twice, which is harmless. */
template <typename K>
rc_t raise_smem(K kernel, size_t bytes, unsigned long long *raised)
{
    int dev = 0;
    CU_TRY(cudaGetDevice(&dev));
    const unsigned long long bit = dev < 64 ? 1ull << dev : 0;
    if (!bit || !(__atomic_load_n(raised, __ATOMIC_RELAXED) & bit)) {
        CU_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)bytes));
        __atomic_fetch_or(raised, bit, __ATOMIC_RELAXED);
    }
    return RC_OK;
}

template <int D, typename M>
rc_t mma_launch(const mma_params &p, int n_split, bool ext, cudaStream_t s)
{
    using C = mcfg<D>;
    dim3 grid((p.n_q + MBQ - 1) / MBQ, p.n_heads, n_split);
    if (ext) {
        /* No Q tile; K and V double-buffered, Self-Extend's grouped keys too. */
        constexpr size_t tile_bytes = (size_t)C::TILE * sizeof(bf16_t);
        const size_t smem = (p.layout == CUDA_ATTN_SELF_EXTEND ? 6 : 4) * tile_bytes;
        static unsigned long long raised = 0;
        TRY_RC(raise_smem(ext_attn_kernel<D, M>, 6 * tile_bytes, &raised));
        ext_attn_kernel<D, M><<<grid, MTHREADS, smem, s>>>(p);
    } else {
        static unsigned long long raised = 0;
        TRY_RC(raise_smem(mma_attn_kernel<D, M>, C::SMEM, &raised));
        mma_attn_kernel<D, M><<<grid, MTHREADS, C::SMEM, s>>>(p);
    }
    CU_LAUNCHED();
    if (p.part_o) {
        mma_merge_kernel<D><<<dim3(p.n_q, p.n_heads), 128, 0, s>>>(
            p.out, p.lse, p.part_o, p.part_lse, n_split, p.n_q, p.n_heads);
        CU_LAUNCHED();
    }
    return RC_OK;
}

template <int D>
rc_t mma_dispatch(const mma_params &p, dtype_t mt, int n_split, bool ext, cudaStream_t s)
{
    return mt == DTYPE_F32 ? mma_launch<D, float>(p, n_split, ext, s)
                           : mma_launch<D, bf16_t>(p, n_split, ext, s);
}

/* The same argument rules as cuda_attention (attention.cu's attn_check). */
rc_t mma_check(const cuda_attn_args_t *a)
{
    if (!a) return RC_ERR_INVALID;
    if (a->n_q < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads ||
        a->n_heads > 65535 || !(a->scale == a->scale))
        return RC_ERR_INVALID;
    if (a->mem_only ? a->n_mem < 1
                    : a->n_k < 1 || a->q_offset < 0 || (long long)a->q_offset + a->n_q > a->n_k)
        return RC_ERR_INVALID;
    if (a->head_dim != 64 && a->head_dim != 100 && a->head_dim != 128) {
        log_error("cuda: attention for head_dim %d is not built (64, 100, 128 are)", a->head_dim);
        return RC_ERR_UNSUPPORTED;
    }
    if (a->n_mem && a->mem_dtype != DTYPE_F32 && a->mem_dtype != DTYPE_BF16)
        return RC_ERR_UNSUPPORTED;
    /* The positional tail (cuda.h). */
    if (a->layout < CUDA_ATTN_PLAIN || a->layout > CUDA_ATTN_DCA || !std::isfinite(a->mem_scale))
        return RC_ERR_INVALID;
    if (a->mem_only) return RC_OK; /* no local keys: the layout does not apply */
    if (a->layout == CUDA_ATTN_SELF_EXTEND && a->neighbor < 1) return RC_ERR_INVALID;
    if (a->layout == CUDA_ATTN_DCA && a->chunk_len < 1) return RC_ERR_INVALID;
    return RC_OK;
}

/* Whether the positional tail asks for more than plain attention: then only the
 * tensor-core path computes it (cuda_attention ignores those fields). */
bool wants_ext(const cuda_attn_args_t *a)
{
    return a->mem_only || a->layout != CUDA_ATTN_PLAIN || (a->q_mem && a->q_mem != a->q) ||
           (a->mem_scale != 0.0f && a->mem_scale != a->scale);
}

/* Whether the shapes and the device take the tensor-core path (pointers aside). */
rc_t mma_eligible(const cuda_attn_args_t *a, bool *yes)
{
    *yes = false;
    if (a->dtype != DTYPE_BF16) return RC_OK;
    int dev = 0, major = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    *yes = major >= 8;
    return RC_OK;
}

/* cp.async copies 16 (d64, d128) or 8 (d100) bytes and fp32 memory is read as float4:
 * buffers not aligned to that (a view into a larger buffer, say) take the plain kernel. */
bool mma_aligned(const cuda_attn_args_t *a)
{
    const uintptr_t al = a->head_dim % 8 == 0 ? 16 : 8;
    const uintptr_t mal = a->mem_dtype == DTYPE_F32 ? 16 : al;
    bool ok = (uintptr_t)a->q % al == 0 && (uintptr_t)a->k % al == 0 &&
              (uintptr_t)a->v % al == 0 && (uintptr_t)a->out % 4 == 0;
    if (a->n_mem) ok = ok && (uintptr_t)a->mem_k % mal == 0 && (uintptr_t)a->mem_v % mal == 0;
    const void *extra[] = {a->q_alt[0], a->q_alt[1], a->k_alt, a->q_mem};
    for (int i = 0; i < 4; i++) ok = ok && (uintptr_t)extra[i] % al == 0;
    return ok;
}

/* The local keys a call attends to (none for memory alone). */
int local_keys(const cuda_attn_args_t *a)
{
    return a->mem_only ? 0 : a->n_k;
}

size_t mma_split_bytes(const cuda_attn_args_t *a, int n_split)
{
    return (size_t)n_split * a->n_q * a->n_heads * (a->head_dim + 1) * sizeof(float);
}

/* Splits enough for about two waves of blocks (two blocks fit an SM), each split at
 * least M_MIN_TILES_PER_SPLIT tiles. */
rc_t mma_plan(const cuda_attn_args_t *a, int *n_split)
{
    int dev = 0, sm = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, dev));
    const long long base = (long long)((a->n_q + MBQ - 1) / MBQ) * a->n_heads;
    const long long tiles = ((long long)a->n_mem + local_keys(a) + MBK - 1) / MBK;
    long long want = (4LL * sm + base - 1) / base;
    want = min(want, tiles / M_MIN_TILES_PER_SPLIT);
    want = min(want, (long long)M_MAX_SPLITS);
    *n_split = want < 2 ? 1 : (int)want;
    return RC_OK;
}

} // namespace

extern "C" rc_t cuda_attention_fast_workspace(const cuda_attn_args_t *a, size_t *bytes)
{
    if (!bytes) return RC_ERR_INVALID;
    *bytes = 0;
    rc_t rc = mma_check(a);
    if (rc) return rc;
    bool fast = false;
    if ((rc = mma_eligible(a, &fast))) return rc;
    if (!fast && wants_ext(a)) {
        log_error("cuda: Self-Extend, DCA, memory queries of their own and attention over "
                  "memory alone need bf16 activations on an sm_80 or later GPU");
        return RC_ERR_UNSUPPORTED;
    }
    if (!fast) return cuda_attention_workspace(a, bytes);
    if (!a->n_q) return RC_OK;
    int n_split = 1;
    if ((rc = mma_plan(a, &n_split))) return rc;
    *bytes = n_split > 1 ? mma_split_bytes(a, n_split) : 0;
    return RC_OK;
}

extern "C" rc_t cuda_attention_fast(const cuda_attn_args_t *a, void *stream)
{
    rc_t rc = mma_check(a);
    if (rc) return rc;
    bool fast = false;
    if ((rc = mma_eligible(a, &fast))) return rc;
    const bool ext = wants_ext(a);
    if (!fast || !mma_aligned(a)) {
        if (!ext) return cuda_attention(a, stream);
        log_error("cuda: Self-Extend, DCA, memory queries of their own and attention over "
                  "memory alone need bf16 activations on an sm_80 or later GPU, in aligned "
                  "buffers");
        return RC_ERR_UNSUPPORTED;
    }
    if (!a->q || (!a->mem_only && (!a->k || !a->v)) || !a->out ||
        (a->n_mem && (!a->mem_k || !a->mem_v)))
        return a->n_q ? RC_ERR_INVALID : RC_OK;
    if (a->n_q && !a->mem_only && ((a->layout != CUDA_ATTN_PLAIN && !a->q_alt[0]) ||
                   (a->layout == CUDA_ATTN_SELF_EXTEND && !a->k_alt) ||
                   (a->layout == CUDA_ATTN_DCA && !a->q_alt[1])))
        return RC_ERR_INVALID;
    if (!a->n_q) return RC_OK;
    int n_split = 1;
    if ((rc = mma_plan(a, &n_split))) return rc;
    if (n_split > 1) { /* as many splits as the workspace holds */
        const size_t per = mma_split_bytes(a, 1);
        const size_t fit = a->workspace ? a->workspace_bytes / per : 0;
        if ((size_t)n_split > fit) n_split = fit < 2 ? 1 : (int)fit;
    }
    /* Memory alone: no local keys, and the causal limit (n_mem + q_offset + i + 1) then
     * never cuts a memory row. */
    const long long total = (long long)a->n_mem + local_keys(a);
    const long long tiles = (total + MBK - 1) / MBK;
    mma_params p;
    p.n_q = a->n_q;
    p.n_k = local_keys(a);
    p.n_heads = a->n_heads;
    p.group = a->n_heads / a->n_kv_heads;
    p.n_kv = a->n_kv_heads;
    p.q_offset = a->mem_only ? 0 : a->q_offset;
    p.n_mem = (long long)a->n_mem;
    p.keys_per_split = (tiles + n_split - 1) / n_split * MBK;
    n_split = (int)((total + p.keys_per_split - 1) / p.keys_per_split);
    p.q = (const bf16_t *)a->q;
    p.k = (const bf16_t *)a->k;
    p.v = (const bf16_t *)a->v;
    p.mk = a->mem_k;
    p.mv = a->mem_v;
    p.out = (bf16_t *)a->out;
    p.part_o = NULL;
    p.part_lse = NULL;
    if (n_split > 1) {
        p.part_o = (float *)a->workspace;
        p.part_lse = p.part_o + (size_t)n_split * a->n_q * a->n_heads * a->head_dim;
    }
    p.lse = a->lse;
    p.scale_log2 = a->scale * LOG2E;
    p.mem_scale_log2 = (a->mem_scale != 0.0f ? a->mem_scale : a->scale) * LOG2E;
    p.layout = a->mem_only ? CUDA_ATTN_PLAIN : a->layout;
    p.neighbor = a->neighbor;
    p.chunk_len = a->chunk_len;
    p.qv[0] = p.q;
    p.qv[1] = (const bf16_t *)a->q_alt[0];
    p.qv[2] = (const bf16_t *)a->q_alt[1];
    p.qv[3] = a->q_mem ? (const bf16_t *)a->q_mem : p.q;
    p.kg = (const bf16_t *)a->k_alt;
    /* Plain RoPE with only a memory factor of its own stays on mma_attn_kernel. */
    const bool ext_kernel = p.layout != CUDA_ATTN_PLAIN || (a->n_mem && p.qv[3] != p.q);
    const dtype_t mt = a->n_mem ? a->mem_dtype : DTYPE_BF16;
    cudaStream_t s = CU_STREAM(stream);
    switch (a->head_dim) {
    case 64: return mma_dispatch<64>(p, mt, n_split, ext_kernel, s);
    case 100: return mma_dispatch<100>(p, mt, n_split, ext_kernel, s);
    default: return mma_dispatch<128>(p, mt, n_split, ext_kernel, s);
    }
}
