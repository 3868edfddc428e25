/* attention.cu — flash-style attention with FoT memory keys (cpu_attention's semantics).
 *
 * The keys a query can see form one virtual sequence: the n_mem memory rows (unrotated, no
 * mask) followed by the n_k local keys (causal: query i sees local keys 0 .. q_offset + i).
 * A block takes BQ = 16 queries of one head and walks that sequence in tiles of BK = 32 keys
 * staged in shared memory as fp32, keeping for each query the running maximum m, the
 * running sum l of exp(s − m) and the unnormalized output (the online softmax): the
 * [n_q, n_keys] score matrix never exists.
 *
 * Inside a block, warp w owns queries w·4 .. w·4+3. For scores, lane j takes key j of the
 * tile and dots it with the warp's four queries (q broadcast from shared memory, the key
 * row read as float4 with a padded row stride so the 32 lanes hit distinct banks); for the
 * weighted sum of values, lane j owns output dims j, j+32, … and each key's probability is
 * broadcast by a shuffle. This is the plain-FMA version, correct for any of the three head
 * sizes; tensor cores (mma / wgmma) are the next step for speed.
 *
 * Splitting: with a workspace the virtual key sequence is cut into n_split ranges
 * (blockIdx.z); each block writes its partial output normalized by its own sum, plus its
 * log-sum-exp lse = m + log l, and attn_merge_kernel combines the splits per query row:
 * out = Σ_s exp(lse_s − max lse) · o_s / Σ_s exp(lse_s − max lse). A memory pass and the
 * causal local pass therefore meet by log-sum-exp whether they ran in one block or in many;
 * many splits fill the GPU when there are few queries (decode) or long memories. A caller
 * that asks for the rows' log-sum-exp (cuda_attn_args_t.lse, to merge more keys later) gets
 * m + log l from the block, or from the merge its mx + log Σ_s exp(lse_s − mx): the very
 * normalizer the output was divided by.
 *
 * Scores are clamped below at −1e6 (LongLLaMA); masked keys are excluded, not clamped. */
#include "kernels/cuda/common.cuh"

namespace {

constexpr int WARPS = 4;
constexpr int ROWS = 4;              /* queries per warp */
constexpr int BQ = WARPS * ROWS;     /* queries per block */
constexpr int BK = 32;               /* keys per tile: one per lane */
constexpr int THREADS = WARPS * 32;
constexpr int MAX_SPLITS = 256;
constexpr int MIN_TILES_PER_SPLIT = 8; /* 256 keys: below that the merge costs more than it buys */

/* Row stride of the key tile in floats: a float4 read of row `lane` at column d falls in
 * banks 4·(lane·stride/4 + d/4) mod 32; an odd stride/4 keeps 8 consecutive lanes (one
 * 128-byte phase) on distinct banks. */
template <int D>
__host__ __device__ constexpr int key_stride()
{
    return (D / 4) % 2 ? D : D + 4;
}

struct attn_params {
    int n_q, n_k, n_heads, group, n_kv, q_offset;
    long long n_mem;
    long long keys_per_split; /* multiple of BK */
    const void *q, *k, *v, *mk, *mv;
    void *out;       /* when part_o == NULL */
    float *part_o;   /* [n_split, n_q, n_heads, D] */
    float *part_lse; /* [n_split, n_q, n_heads] */
    float *lse;      /* [n_q, n_heads] the rows' log-sum-exp; NULL: not wanted */
    float scale;
};

template <int D, typename T, typename M>
__global__ void __launch_bounds__(THREADS) attn_kernel(attn_params p)
{
    static_assert(D % 4 == 0 && D <= 128, "head_dim");
    constexpr int KS = key_stride<D>();
    constexpr int NV = (D + 31) / 32; /* output dims per lane */
    __shared__ __align__(16) float q_s[BQ][D];
    __shared__ __align__(16) float k_s[BK][KS];
    __shared__ __align__(16) float v_s[BK][D];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = blockIdx.x * BQ, h = blockIdx.y, split = blockIdx.z;
    const int kh = h / p.group;
    const T *q = (const T *)p.q, *k = (const T *)p.k, *v = (const T *)p.v;
    const M *mk = (const M *)p.mk, *mv = (const M *)p.mv;

    for (int e = tid; e < BQ * D; e += THREADS) {
        const int r = e / D, d = e % D, i = q0 + r;
        q_s[r][d] = i < p.n_q ? ld_f(q, ((size_t)i * p.n_heads + h) * D + d) : 0.0f;
    }

    /* This split's keys, cut at the last key any of the block's queries can see. */
    const long long total = p.n_mem + p.n_k;
    const long long kbeg = (long long)split * p.keys_per_split;
    const int q_last = min(q0 + BQ, p.n_q) - 1;
    const long long kend =
        min(min(total, kbeg + p.keys_per_split), p.n_mem + p.q_offset + q_last + 1);

    float m[ROWS], l[ROWS], acc[ROWS][NV];
    long long row_end[ROWS]; /* virtual keys < row_end are visible to the row */
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int i = q0 + warp * ROWS + r;
        m[r] = -INFINITY;
        l[r] = 0.0f;
        row_end[r] = i < p.n_q ? p.n_mem + p.q_offset + i + 1 : 0;
#pragma unroll
        for (int c = 0; c < NV; c++) acc[r][c] = 0.0f;
    }

    for (long long t0 = kbeg; t0 < kend; t0 += BK) {
        __syncthreads(); /* the previous tile is consumed; q_s is written */
        for (int e = tid; e < BK * D; e += THREADS) {
            const int r = e / D, d = e % D;
            const long long vk = t0 + r;
            float kv = 0.0f, vv = 0.0f;
            if (vk < kend) {
                if (vk < p.n_mem) {
                    const size_t off = ((size_t)vk * p.n_kv + kh) * D + d;
                    kv = ld_f(mk, off);
                    vv = ld_f(mv, off);
                } else {
                    const size_t off = ((size_t)(vk - p.n_mem) * p.n_kv + kh) * D + d;
                    kv = ld_f(k, off);
                    vv = ld_f(v, off);
                }
            }
            k_s[r][d] = kv;
            v_s[r][d] = vv;
        }
        __syncthreads();

        float s[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) s[r] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < D; d += 4) {
            const float4 kk = *(const float4 *)&k_s[lane][d];
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const float4 qq = *(const float4 *)&q_s[warp * ROWS + r][d];
                s[r] += kk.x * qq.x + kk.y * qq.y + kk.z * qq.z + kk.w * qq.w;
            }
        }

        const long long vk = t0 + lane;
        float pr[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const bool valid = vk < kend && vk < row_end[r];
            const float sc = valid ? fmaxf(s[r] * p.scale, -1e6f) : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            if (m_new == -INFINITY) { /* nothing visible yet: the same in every lane */
                pr[r] = 0.0f;
                continue;
            }
            const float alpha = expf(m[r] - m_new); /* 0 when m was −inf */
            pr[r] = valid ? expf(sc - m_new) : 0.0f;
            l[r] = l[r] * alpha + warp_sum(pr[r]);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < NV; c++) acc[r][c] *= alpha;
        }

#pragma unroll 4
        for (int j = 0; j < BK; j++) {
            float vv[NV];
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int d = lane + 32 * c;
                vv[c] = d < D ? v_s[j][d] : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                const float pj = __shfl_sync(0xffffffffu, pr[r], j);
#pragma unroll
                for (int c = 0; c < NV; c++) acc[r][c] += pj * vv[c];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int i = q0 + warp * ROWS + r;
        if (i >= p.n_q) continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        const size_t qh = (size_t)i * p.n_heads + h;
        if (p.part_o) {
            const size_t sq = (size_t)split * p.n_q * p.n_heads + qh;
            float *po = p.part_o + sq * D;
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int d = lane + 32 * c;
                if (d < D) po[d] = acc[r][c] * inv;
            }
            if (lane == 0) p.part_lse[sq] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
        } else {
            T *o = (T *)p.out;
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int d = lane + 32 * c;
                if (d < D) st_f(o, qh * D + d, acc[r][c] * inv);
            }
            if (p.lse && lane == 0) p.lse[qh] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
        }
    }
}

/* One block per (query, head): the log-sum-exp merge of the splits' partial outputs; with
 * lse, also the row's whole log-sum-exp, mx + log Σ_s exp(lse_s − mx), from the same sum. */
template <int D, typename T>
__global__ void attn_merge_kernel(T *out, float *lse, const float *part_o,
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
                const float ws = expf(part_lse[s * stride + qh] - mx); /* 0 for empty splits */
                o += ws * part_o[(s * stride + qh) * D + d];
                w += ws;
            }
        }
        st_f(out, qh * D + d, w > 0.0f ? o / w : 0.0f);
        if (lse && d == 0) lse[qh] = w > 0.0f ? mx + logf(w) : -INFINITY;
    }
}

template <int D, typename T, typename M>
rc_t attn_launch(const attn_params &p, int n_split, cudaStream_t s)
{
    dim3 grid((p.n_q + BQ - 1) / BQ, p.n_heads, n_split);
    attn_kernel<D, T, M><<<grid, THREADS, 0, s>>>(p);
    CU_LAUNCHED();
    if (p.part_o) {
        attn_merge_kernel<D, T><<<dim3(p.n_q, p.n_heads), 128, 0, s>>>(
            (T *)p.out, p.lse, p.part_o, p.part_lse, n_split, p.n_q, p.n_heads);
        CU_LAUNCHED();
    }
    return RC_OK;
}

template <int D>
rc_t attn_dispatch(const attn_params &p, dtype_t t, dtype_t mt, int n_split, cudaStream_t s)
{
    if (t == DTYPE_F32)
        return mt == DTYPE_F32 ? attn_launch<D, float, float>(p, n_split, s)
                               : attn_launch<D, float, bf16_t>(p, n_split, s);
    return mt == DTYPE_F32 ? attn_launch<D, bf16_t, float>(p, n_split, s)
                           : attn_launch<D, bf16_t, bf16_t>(p, n_split, s);
}

rc_t attn_check(const cuda_attn_args_t *a)
{
    if (!a) return RC_ERR_INVALID;
    if (a->mem_only) {
        log_error("cuda: attention over memory alone is the tensor-core kernel's "
                  "(cuda_attention_fast on sm_80+)");
        return RC_ERR_UNSUPPORTED;
    }
    if (a->n_q < 0 || a->n_k < 1 || a->n_heads <= 0 || a->n_kv_heads <= 0 ||
        a->n_heads % a->n_kv_heads || a->n_heads > 65535 || a->q_offset < 0 ||
        (long long)a->q_offset + a->n_q > a->n_k || !(a->scale == a->scale))
        return RC_ERR_INVALID;
    if (a->head_dim != 64 && a->head_dim != 100 && a->head_dim != 128) {
        log_error("cuda: attention for head_dim %d is not built (64, 100, 128 are)", a->head_dim);
        return RC_ERR_UNSUPPORTED;
    }
    if (!act_dtype_ok(a->dtype) || (a->n_mem && !act_dtype_ok(a->mem_dtype)))
        return RC_ERR_UNSUPPORTED;
    return RC_OK;
}

/* The buffers, checked only where they are used: sizing the workspace needs shapes alone. */
rc_t attn_check_buffers(const cuda_attn_args_t *a)
{
    if (a->n_q && (!a->q || !a->k || !a->v || !a->out)) return RC_ERR_INVALID;
    if (a->n_mem && (!a->mem_k || !a->mem_v)) return RC_ERR_INVALID;
    return RC_OK;
}

size_t split_bytes(const cuda_attn_args_t *a, int n_split)
{
    return (size_t)n_split * a->n_q * a->n_heads * (a->head_dim + 1) * sizeof(float);
}

/* How many ranges to cut the keys into: enough blocks for a few per multiprocessor, each
 * range at least MIN_TILES_PER_SPLIT tiles. */
rc_t attn_plan(const cuda_attn_args_t *a, int *n_split)
{
    int dev = 0, sm = 0;
    CU_TRY(cudaGetDevice(&dev));
    CU_TRY(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, dev));
    const long long base = (long long)((a->n_q + BQ - 1) / BQ) * a->n_heads;
    const long long tiles = ((long long)a->n_mem + a->n_k + BK - 1) / BK;
    long long want = (4LL * sm + base - 1) / base;
    want = min(want, tiles / MIN_TILES_PER_SPLIT);
    want = min(want, (long long)MAX_SPLITS);
    *n_split = want < 2 ? 1 : (int)want;
    return RC_OK;
}

} // namespace

extern "C" rc_t cuda_attention_workspace(const cuda_attn_args_t *a, size_t *bytes)
{
    if (!bytes) return RC_ERR_INVALID;
    *bytes = 0;
    rc_t rc = attn_check(a);
    if (rc) return rc;
    if (!a->n_q) return RC_OK;
    int n_split = 1;
    if ((rc = attn_plan(a, &n_split))) return rc;
    *bytes = n_split > 1 ? split_bytes(a, n_split) : 0;
    return RC_OK;
}

extern "C" rc_t cuda_attention(const cuda_attn_args_t *a, void *stream)
{
    rc_t rc = attn_check(a);
    if (!rc) rc = attn_check_buffers(a);
    if (rc) return rc;
    if (!a->n_q) return RC_OK;
    int n_split = 1;
    if ((rc = attn_plan(a, &n_split))) return rc;
    if (n_split > 1) { /* as many splits as the workspace holds */
        const size_t per = split_bytes(a, 1);
        const size_t fit = a->workspace ? a->workspace_bytes / per : 0;
        if ((size_t)n_split > fit) n_split = fit < 2 ? 1 : (int)fit;
    }
    const long long total = (long long)a->n_mem + a->n_k;
    const long long tiles = (total + BK - 1) / BK;
    attn_params p;
    p.n_q = a->n_q;
    p.n_k = a->n_k;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / a->n_kv_heads;
    p.n_kv = a->n_kv_heads;
    p.q_offset = a->q_offset;
    p.n_mem = (long long)a->n_mem;
    p.keys_per_split = (tiles + n_split - 1) / n_split * BK;
    n_split = (int)((total + p.keys_per_split - 1) / p.keys_per_split);
    p.q = a->q;
    p.k = a->k;
    p.v = a->v;
    p.mk = a->mem_k;
    p.mv = a->mem_v;
    p.out = a->out;
    p.part_o = NULL;
    p.part_lse = NULL;
    if (n_split > 1) {
        p.part_o = (float *)a->workspace;
        p.part_lse = p.part_o + (size_t)n_split * a->n_q * a->n_heads * a->head_dim;
    }
    p.lse = a->lse;
    p.scale = a->scale;
    /* Without memory rows the kernel never touches mem_k/mem_v; reuse the activations'
     * dtype so no extra instantiation is needed. */
    const dtype_t mt = a->n_mem ? a->mem_dtype : a->dtype;
    cudaStream_t s = CU_STREAM(stream);
    switch (a->head_dim) {
    case 64: return attn_dispatch<64>(p, a->dtype, mt, n_split, s);
    case 100: return attn_dispatch<100>(p, a->dtype, mt, n_split, s);
    default: return attn_dispatch<128>(p, a->dtype, mt, n_split, s);
    }
}
