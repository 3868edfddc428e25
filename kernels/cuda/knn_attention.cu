/* knn_attention.cu — kNN memory attention's memory part on the GPU: cuda_knn_attention in
 * kernels/cuda.h (REFERENCE.md "kNN memory"; the CPU twin is cpu_attention_knn).
 *
 * The local attention has already run (cuda_attention[_fast] with n_mem = 0) and left, for
 * each (query, head) row, its normalized output and the log-sum-exp λ of its scores. FoT's
 * single softmax adds the row's listed memory rows to those scores; an online softmax that
 * starts from the local part as one entry (m = λ, l = 1, acc = out_local) takes them in
 * their listed order,
 *   m' = max(m, s),  acc = acc·e^(m−m') + e^(s−m')·V,  l = l·e^(m−m') + e^(s−m'),
 * and writes acc / l: that is (e^λ·out_local + Σ e^s·V) / (e^λ + Σ e^s) with no exponent
 * ever above 0, all in fp32.
 *
 * The work is a gather, not arithmetic: prefill of 2048 queries × 32 heads with k = 128 at
 * d = 100 reads 8.4 M key rows and as many value rows, 200 bytes each (3.4 GB), for a few
 * FMAs per byte. The layout is chosen for memory traffic alone:
 *  - one warp per (query, head) row; lane L holds dims 4L .. 4L+3 (D/4 = 16, 25 or 32 lanes
 *    active), so a key or value row is one coalesced request of 8-byte (bf16) or 16-byte
 *    (fp32) pieces: a 200-byte row at an 8-byte-aligned address spans 7 sectors of 32 bytes,
 *    89% of what is fetched is used;
 *  - R = 8 listed rows at a time, their 16 loads issued before any is used: a warp keeps
 *    about 3 KB in flight, which with a few dozen warps per SM covers the memory latency;
 *  - the R partial dot products are reduced together by a transposing butterfly (each step
 *    halves the values a lane holds: 9 shuffles for 8 rows instead of 40), after which the
 *    SPAN = 32/R lanes of group g hold row g's whole score; each row's probability is
 *    computed by its own lanes and broadcast once to weigh its value row.
 * The index list comes 32 entries at a time (one coalesced load, then broadcasts).
 *
 * Indices: −1 is skipped (a list shorter than k). Anything else outside [0, n_hot + n_sp)
 * cannot be reported from a kernel, so that (query, head) output becomes NaN: the bug shows
 * downstream instead of reading out of bounds. */
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace {

constexpr int KWARPS = 4;
constexpr int KTHREADS = KWARPS * 32;
constexpr int R = 8;         /* listed rows in flight per warp */
constexpr int SPAN = 32 / R; /* lanes sharing one row's reduced score */
constexpr unsigned FULL = 0xffffffffu;
static_assert(R >= 2 && R <= 32 && (R & (R - 1)) == 0, "R: a power of two");

struct knn_params {
    long long n_rows;        /* n_q · n_heads */
    int n_heads, group, n_kv, k;
    const bf16_t *q;         /* [n_q, n_heads, D] */
    float mem_scale;
    const int32_t *idx;      /* [n_q, n_heads, k] */
    const void *hk, *hv;     /* [n_hot, n_kv, D] mem dtype */
    const void *sk, *sv;     /* [n_sp, n_kv, D] mem dtype */
    long long n_hot, n_all;  /* n_all = n_hot + n_sp */
    const float *lse;        /* [n_q, n_heads] */
    bf16_t *out;             /* [n_q, n_heads, D] */
};

/* Four consecutive elements of a memory row, kept raw until used so that all of a group's
 * loads are in flight together. */
template <typename M> struct piece;

template <> struct piece<bf16_t> {
    uint2 w;
    __device__ __forceinline__ void load(const bf16_t *p) { w = __ldg((const uint2 *)p); }
    __device__ __forceinline__ void zero() { w = make_uint2(0u, 0u); }
    __device__ __forceinline__ void get(float (&x)[4]) const
    {
        const float2 a = __bfloat1622float2(*(const __nv_bfloat162 *)&w.x);
        const float2 b = __bfloat1622float2(*(const __nv_bfloat162 *)&w.y);
        x[0] = a.x;
        x[1] = a.y;
        x[2] = b.x;
        x[3] = b.y;
    }
};

template <> struct piece<float> {
    float4 w;
    __device__ __forceinline__ void load(const float *p) { w = __ldg((const float4 *)p); }
    __device__ __forceinline__ void zero() { w = make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    __device__ __forceinline__ void get(float (&x)[4]) const
    {
        x[0] = w.x;
        x[1] = w.y;
        x[2] = w.z;
        x[3] = w.w;
    }
};

__device__ __forceinline__ void bf16x4_get(float (&x)[4], uint2 w)
{
    piece<bf16_t> t;
    t.w = w;
    t.get(x);
}

template <int D, typename M>
__global__ void __launch_bounds__(KTHREADS) knn_attn_kernel(knn_params p)
{
    static_assert(D % 4 == 0 && D / 4 <= 32, "head_dim");
    constexpr int LANES = D / 4; /* lanes holding dims */
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * KWARPS + (threadIdx.x >> 5);
    if (row >= p.n_rows) return; /* whole warps only: the shuffles below need all 32 lanes */
    const int h = (int)(row % p.n_heads);
    const bool act = lane < LANES;
    /* This lane's four dims inside one memory row of kv head h / group. */
    const size_t col = (size_t)(h / p.group) * D + (size_t)lane * 4;
    const size_t stride = (size_t)p.n_kv * D; /* elements per memory row */
    const M *hk = (const M *)p.hk, *hv = (const M *)p.hv;
    const M *sk = (const M *)p.sk, *sv = (const M *)p.sv;

    float q[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    bf16_t *out = p.out + (size_t)row * D + (size_t)lane * 4;
    if (act) {
        bf16x4_get(q, __ldg((const uint2 *)(p.q + (size_t)row * D + (size_t)lane * 4)));
        bf16x4_get(acc, *(const uint2 *)out); /* out_local; rewritten below by this lane */
    }
    /* The local part is one entry of weight e^λ: m = λ, and lane 0 holds its 1 of the sum
     * (l is summed over lanes at the end; each row's term is added by its group's first
     * lane). A row that saw no local key (λ = −inf) has none. */
    float m = p.lse[row];
    float l = lane == 0 && m != -INFINITY ? 1.0f : 0.0f;
    bool bad = false;

    const int32_t *ix = p.idx + (size_t)row * p.k;
    for (int j0 = 0; j0 < p.k; j0 += 32) {
        const int n = min(32, p.k - j0);
        const int mine = lane < n ? __ldg(ix + j0 + lane) : -1;
        for (int g = 0; g < n; g += R) { /* g + R ≤ 32: every g + r below names a lane */
            piece<M> kp[R], vp[R];
            unsigned valid = 0;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int id = __shfl_sync(FULL, mine, g + r); /* −1 past the list's end */
                const bool ok = id >= 0 && id < p.n_all;
                bad |= !ok && id != -1;
                valid |= ok ? 1u << r : 0u;
                if (ok && act) {
                    const bool hot = id < p.n_hot;
                    const size_t off = (size_t)(hot ? id : id - p.n_hot) * stride + col;
                    kp[r].load((hot ? hk : sk) + off);
                    vp[r].load((hot ? hv : sv) + off);
                } else {
                    kp[r].zero();
                    vp[r].zero();
                }
            }
            if (!valid) continue; /* the same in every lane: ids are broadcast */

            float part[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float x[4];
                kp[r].get(x);
                part[r] = q[0] * x[0] + q[1] * x[1] + q[2] * x[2] + q[3] * x[3];
            }
            /* Butterfly: at offset o a lane keeps the half of its values whose rows match its
             * bit o and adds its partner's copy of them; after offsets 16 .. SPAN, part[0]
             * is row lane / SPAN's sum over the lanes that share those bits, and the plain
             * steps below SPAN finish it. */
#pragma unroll
            for (int nv = R, o = 16; nv > 1; nv /= 2, o /= 2) {
                const bool up = lane & o;
#pragma unroll
                for (int j = 0; j < nv / 2; j++) {
                    const float send = up ? part[j] : part[j + nv / 2];
                    const float keep = up ? part[j + nv / 2] : part[j];
                    part[j] = keep + __shfl_xor_sync(FULL, send, o);
                }
            }
#pragma unroll
            for (int o = SPAN / 2; o > 0; o /= 2) part[0] += __shfl_xor_sync(FULL, part[0], o);

            /* Row lane / SPAN: its score (clamped as every score), the group's maximum. */
            const int mr = lane / SPAN;
            const float s = (valid >> mr) & 1u ? fmaxf(part[0] * p.mem_scale, -1e6f) : -INFINITY;
            float mx = s;
#pragma unroll
            for (int o = 16; o >= SPAN; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, o));
            const float mn = fmaxf(m, mx); /* finite: some row of the group is valid */
            const float alpha = expf(m - mn); /* 0 while m is −inf */
            const float pr = expf(s - mn);    /* 0 for skipped rows */
            m = mn;
            l = l * alpha + (lane % SPAN == 0 ? pr : 0.0f);
#pragma unroll
            for (int c = 0; c < 4; c++) acc[c] *= alpha;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float pb = __shfl_sync(FULL, pr, r * SPAN);
                float x[4];
                vp[r].get(x);
#pragma unroll
                for (int c = 0; c < 4; c++) acc[c] += pb * x[c];
            }
        }
    }

    l = warp_sum(l);
    if (act) {
        const float inv = bad ? NAN : l > 0.0f ? 1.0f / l : 0.0f;
        const __nv_bfloat162 a = __floats2bfloat162_rn(acc[0] * inv, acc[1] * inv);
        const __nv_bfloat162 b = __floats2bfloat162_rn(acc[2] * inv, acc[3] * inv);
        uint2 w;
        w.x = *(const uint32_t *)&a;
        w.y = *(const uint32_t *)&b;
        *(uint2 *)out = w;
    }
}

template <int D>
rc_t knn_launch(const knn_params &p, dtype_t mt, unsigned blocks, cudaStream_t s)
{
    if (mt == DTYPE_F32)
        knn_attn_kernel<D, float><<<blocks, KTHREADS, 0, s>>>(p);
    else
        knn_attn_kernel<D, bf16_t><<<blocks, KTHREADS, 0, s>>>(p);
    CU_LAUNCHED();
    return RC_OK;
}

bool aligned(const void *p, uintptr_t to)
{
    return (uintptr_t)p % to == 0;
}

} // namespace

extern "C" rc_t cuda_knn_attention(const cuda_knn_attn_args_t *a, void *stream)
{
    if (!a) return RC_ERR_INVALID;
    if (a->n_q < 0 || a->n_heads <= 0 || a->n_kv_heads <= 0 || a->n_heads % a->n_kv_heads ||
        a->k < 0 || a->n_hot < 0 || a->n_sp < 0 || !std::isfinite(a->mem_scale)) {
        log_error("cuda: knn attention: bad shapes (n_q %d, heads %d/%d, k %d, rows %lld + "
                  "%lld) or memory scale %g",
                  a->n_q, a->n_heads, a->n_kv_heads, a->k, (long long)a->n_hot,
                  (long long)a->n_sp, (double)a->mem_scale);
        return RC_ERR_INVALID;
    }
    if (a->head_dim != 64 && a->head_dim != 100 && a->head_dim != 128) {
        log_error("cuda: knn attention for head_dim %d is not built (64, 100, 128 are)",
                  a->head_dim);
        return RC_ERR_UNSUPPORTED;
    }
    if (a->mem_dtype != DTYPE_F32 && a->mem_dtype != DTYPE_BF16) return RC_ERR_UNSUPPORTED;
    if (!a->n_q || !a->k) return RC_OK; /* no listed rows: out_local is the answer */
    if (!a->q_mem || !a->idx || !a->lse || !a->out || (a->n_hot && (!a->hot_k || !a->hot_v)) ||
        (a->n_sp && (!a->sp_k || !a->sp_v))) {
        log_error("cuda: knn attention: a buffer is missing");
        return RC_ERR_INVALID;
    }
    /* Whole-row views of cudaMalloc'd buffers always meet these (rows are 8·25·n_kv bytes
     * and more); pieces are read as 8 bytes (bf16) or 16 (fp32). */
    const uintptr_t mal = a->mem_dtype == DTYPE_F32 ? 16 : 8;
    if (!aligned(a->q_mem, 8) || !aligned(a->out, 8) || !aligned(a->hot_k, mal) ||
        !aligned(a->hot_v, mal) || !aligned(a->sp_k, mal) || !aligned(a->sp_v, mal)) {
        log_error("cuda: knn attention: buffers must be %d-byte aligned (memory rows) and "
                  "8-byte aligned (q_mem, out)",
                  (int)mal);
        return RC_ERR_INVALID;
    }
    const long long rows = (long long)a->n_q * a->n_heads;
    const long long blocks = (rows + KWARPS - 1) / KWARPS;
    if (blocks > 0x7fffffffLL) return RC_ERR_INVALID;

    knn_params p;
    p.n_rows = rows;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / a->n_kv_heads;
    p.n_kv = a->n_kv_heads;
    p.k = a->k;
    p.q = (const bf16_t *)a->q_mem;
    p.mem_scale = a->mem_scale;
    p.idx = a->idx;
    p.hk = a->hot_k;
    p.hv = a->hot_v;
    p.sk = a->sp_k;
    p.sv = a->sp_v;
    p.n_hot = (long long)a->n_hot;
    p.n_all = (long long)a->n_hot + (long long)a->n_sp;
    p.lse = a->lse;
    p.out = (bf16_t *)a->out;
    cudaStream_t s = CU_STREAM(stream);
    switch (a->head_dim) {
    case 64: return knn_launch<64>(p, a->mem_dtype, (unsigned)blocks, s);
    case 100: return knn_launch<100>(p, a->mem_dtype, (unsigned)blocks, s);
    default: return knn_launch<128>(p, a->mem_dtype, (unsigned)blocks, s);
    }
}
