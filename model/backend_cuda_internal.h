/* backend_cuda_internal.h — what the CUDA backend's files share: the backend's and a
 * stream's state, and the calls between them. Not an interface: only model/backend_cuda*.c
 * include it.
 *
 *   backend_cuda.c          open (weights up to the device), streams (create, destroy),
 *                           flush and rewind, the ops table; the design notes
 *   backend_cuda_forward.c  the forward pass: layers, positions, decode steps as graphs
 *   backend_cuda_knn.c      knn memory layers: the hot tier's top-k on the device, the
 *                           spilled tier's search on the host, the merge, the gather, and
 *                           the observation point of model/knn_observe.h */
#ifndef RECALL_MODEL_BACKEND_CUDA_INTERNAL_H
#define RECALL_MODEL_BACKEND_CUDA_INTERNAL_H

#ifdef RECALL_HAVE_CUDA

#define BACKEND_INTERNAL
#include "model/backend.h"

#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda.h"
#include "memory/gpu_tier.h"
#include "memory/knn.h"
#include "model/knn_tiers.h"
#include "model/positional.h"
#include "model/stream.h"

/* The attention entry point: 0 the FMA kernel (cuda_attention), 1 the tensor-core kernel
 * (cuda_attention_fast, kernels/cuda/attention_mma.cu: same arguments, same result up to bf16
 * rounding). Switching is this one line (or -DBACKEND_CUDA_FAST_ATTENTION=1). */
#ifndef BACKEND_CUDA_FAST_ATTENTION
#define BACKEND_CUDA_FAST_ATTENTION 1
#endif
#if BACKEND_CUDA_FAST_ATTENTION
#define BACKEND_CUDA_ATTENTION cuda_attention_fast
#define BACKEND_CUDA_ATTENTION_WORKSPACE cuda_attention_fast_workspace
#else
#define BACKEND_CUDA_ATTENTION cuda_attention
#define BACKEND_CUDA_ATTENTION_WORKSPACE cuda_attention_workspace
#endif

/* Rows of logits computed at once: bounds the scratch to LOGIT_ROWS × vocab floats (65 MB at
 * a 32000 vocabulary) while keeping the lm_head GEMM large enough to run at full rate. */
#define LOGIT_ROWS 512

/* Queries per host round of the spilled tier (Faiss search, merge, gather): bounds the host
 * scratch to KNN_QBLOCK · n_heads · knn_k entries per buffer. */
#define KNN_QBLOCK 256
/* Bytes of each spilled-row gather buffer (keys; values the same), at least one query's
 * n_heads · knn_k rows: more distinct rows than fit split a block into several kernels. */
#define KNN_GATHER_BYTES ((size_t)32 << 20)

/* Rows of exact memory below the device tier uploaded per attention call (keys and values:
 * 2 · 8192 · kv_dim · 2 bytes, 200 MiB at the 3B shape's kv_dim 3200 in bf16). */
#define SPILL_CHUNK_ROWS ((size_t)8192)

/* fp32 elements per staging step when uploading weights (64 MB). */
#define UPLOAD_CHUNK ((size_t)16 << 20)

#define TRY(expr) RC_TRY(expr) /* common/rc.h */

typedef struct cuda_layer_w {
    uint16_t *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down; /* bf16 */
    /* wq, wk, wv are views into wqkv [q_dim + 2·kv_dim, hidden] and w_gate, w_up into
     * w_gu [2·ffn, hidden]: one GEMM (or matrix-vector product) each instead of three and
     * two — larger GEMMs, fewer launches. The views are not freed on their own. */
    uint16_t *wqkv, *w_gu;
} cuda_layer_w_t;

typedef struct cuda_backend {
    const model_t *model;
    const model_config_t *c;
    int device;
    char describe[320];
    uint16_t *tok_emb;      /* [vocab, hidden] bf16 */
    uint16_t *norm;         /* [hidden] */
    uint16_t *lm_head;      /* [vocab, hidden]; == tok_emb when tied */
    cuda_layer_w_t *layers; /* [n_layers] */
} cuda_backend_t;

typedef struct cuda_layer_cache {
    uint16_t *k_rot; /* [window, kv_dim] bf16 keys rotated at their local position */
    uint16_t *k_raw; /* [window, kv_dim] bf16 unrotated keys (memory layers only, else NULL) */
    uint16_t *v;     /* [window, kv_dim] bf16 */
    int mem_layer;   /* index into the memory store, or -1 */
} cuda_layer_cache_t;

struct backend_stream {
    cuda_backend_t *b;
    const model_config_t *c;
    model_stream_opts_t o;
    memory_store_t *mem; /* borrowed from the stream: the durable copy of memory */
    cuda_ctx_t *cx;      /* this stream's cuBLAS handle */
    void *st;            /* this stream's cudaStream_t */
    int q_dim, kv_dim, W;
    float scale;
    cuda_layer_cache_t *layers; /* [n_layers] */

    float *inv_freq;  /* [head_dim / 2] device: RoPE frequencies after any scaling */
    int32_t *pos;     /* [window] device: 0, 1, …, window − 1 (a chunk's are pos + local) */
    int32_t *tok;     /* [window] device: the chunk's token ids */
    int32_t *tgt;     /* [window] device: the chunk's targets */
    float *x;         /* [window, hidden] fp32 residual stream */
    uint16_t *xn;     /* [window, hidden] bf16 normalized input of a GEMM */
    uint16_t *q;      /* [window, q_dim] bf16 */
    uint16_t *att;    /* [window, q_dim] bf16 attention output */
    uint16_t *gate;   /* [window, ffn] bf16: SwiGLU's output */
    uint16_t *gu;     /* [window, 2·ffn] bf16: the fused gate/up GEMM's output */
    uint16_t *qkv;    /* [window, q_dim + 2·kv_dim] bf16: the fused q/k/v GEMM's output */
    float *logits;    /* [LOGIT_ROWS, vocab] fp32 */
    float *lp;        /* [window] device: gathered log-probs */
    float *lp_host;   /* [window] page-locked */
    void *ws;         /* attention workspace (splits), grown on demand */
    size_t ws_bytes;

    /* The memory rows on the device (memory/gpu_tier.h): device row p of every memory
     * layer is host row mt.spill + p, for p in [0, mt.rows); mt.spill is 0 unless a knn
     * stream outgrew its budget (then rows below it are the spilled tier). */
    gpu_tier_t mt;             /* also the rows' dtype and row_bytes (kv_dim × its size) */
    void *flush_k, *flush_v;   /* [window, kv_dim] mt.dtype, page-locked: a flush's rows */
    /* Bumped whenever a buffer a captured step points to is replaced (workspace growth);
     * with mt.gen (growth, spills, re-mirrors) part of the graph key. */
    uint64_t gen;

    /* Exact memory below the device tier (mt.spill > 0), made at the first such forward
     * (backend_cuda_forward.c, exact_spilled): each layer's rows [0, spill) go through the
     * device SPILL_CHUNK_ROWS at a time. */
    float *x_lse;              /* [window, n_heads] device: the running log-sum-exp */
    float *x_clse;             /* [window, n_heads] device: a chunk's */
    uint16_t *x_cout;          /* [window, q_dim] bf16 device: a chunk's attention output */
    void *x_ck, *x_cv;         /* [SPILL_CHUNK_ROWS, kv_dim] mt.dtype device: a chunk's rows */

    /* knn mode (memory layers present), else NULL. */
    memory_knn_t *knn;         /* the spilled tier's index (borrowed): host rows [0, mt.spill) */
    float *k_lse;              /* [window, n_heads] device: the local attention's log-sum-exp */
    float *k_sc;               /* [window, n_heads, knn_k] device: hot tier scores (cuda_topk) */
    int32_t *k_idx;            /* [window, n_heads, knn_k] device: cuda_knn_attention's rows */
    void *tws;                 /* cuda_topk workspace, grown on demand */
    size_t tws_bytes;
    /* The spilled tier's scratch, made at the first spill (knn_spill_alloc). */
    int spill_ready;
    int32_t *k_hidx;           /* [window, n_heads, knn_k] device: hot tier rows when merged */
    uint16_t *h_q16;           /* [window, q_dim] page-locked: the memory queries, bf16 */
    float *h_q;                /* [window, q_dim] the same in fp32, for Faiss */
    float *h_hsc;              /* [KNN_QBLOCK, n_heads, knn_k] page-locked: hot scores */
    int32_t *h_hidx;           /* [KNN_QBLOCK, n_heads, knn_k] page-locked: hot rows */
    float *h_ssc;              /* [KNN_QBLOCK, n_heads, knn_k] spilled tier scores */
    int64_t *h_sidx;           /* [KNN_QBLOCK, n_heads, knn_k] spilled tier rows */
    int64_t *h_mrg;            /* [KNN_QBLOCK, n_heads, knn_k] merged rows (absolute) */
    int32_t *h_enc;            /* [KNN_QBLOCK, n_heads, knn_k] page-locked: encoded rows */
    knn_slots_t *slots;        /* spilled rows of one kernel call -> gather slots */
    void *h_gk, *h_gv;         /* [slot_cap, kv_dim] mt.dtype page-locked: gathered spilled rows */
    void *d_gk, *d_gv;         /* [slot_cap, kv_dim] mt.dtype device: the same, uploaded */

    /* Extended positions (positional_setup): only when `ext`, else NULL. With ext the q/k/v
     * split leaves q and keys unrotated and positional_prepare rotates them. */
    int ext;                   /* self-extend, dca, or a cos/sin multiplier (YaRN, DCA) */
    float mscale;              /* cos/sin multiplier of every rotation */
    positional_params_t pp;
    int32_t *kpos;             /* [window] device: the cached key's position */
    int32_t *kpos_grp;         /* [window] device: self-extend j // G */
    int32_t *qpos[3];          /* [window] device each: query position per variant */
    int32_t *mpos;             /* [window] device: query position against memory keys */
    uint16_t *q_alt[2];        /* [window, q_dim] bf16 each: queries of variants 2, 3 */
    uint16_t *q_mem;           /* [window, q_dim] bf16: queries against memory */
    uint16_t **k_grp;          /* [n_layers] self-extend, each [window, kv_dim] bf16 at j // G */

    /* One-token steps (decode): matrix-vector kernels instead of GEMMs when the shapes
     * allow (gemv_ok), and the whole step replayed as a CUDA graph (graphs). Two graph
     * slots alternate: while one step runs, the next position's step is captured into the
     * other (same kernels, arguments one position on), so the host's capture work hides
     * behind the GPU's. A slot is valid for its key: the local length it was captured at,
     * the memory rows of both tiers and the buffers' generation (gen). Steps that need the
     * host (a non-empty spilled tier) never run as graphs. */
    int gemv_ok, graphs;
    void *cap_st;              /* capture stream (idle, so capture never meets pending work) */
    void *g_exec[2];
    struct graph_key {
        int local;
        size_t mem_rows, spill_rows;
        uint64_t gen;
    } g_key[2];
    int g_next;
    int32_t *tok_host;         /* [1] page-locked: the step's token, read by the graph */
    float *logits_host;        /* [vocab] page-locked: the step's logits, written by it */
};

/* backend_cuda_forward.c */
/* The backend's forward op (backend.h): tok[0..n) through every layer. */
rc_t cuda_stream_forward(backend_stream_t *s, const int32_t *tok, int n, int local,
                         const int32_t *targets, float *logprobs, float *last_logits);
/* A device scratch buffer of at least `need` bytes. Growing waits for the stream (work
 * queued on it may still read the old buffer) and invalidates captured steps. */
rc_t cuda_stream_grow(backend_stream_t *s, void **buf, size_t *bytes, size_t need);

/* backend_cuda_knn.c */
/* Memory layer mi's knn memory part over the chunk's n queries mem_q (the local attention
 * is in s->att with its log-sum-exp in k_lse): each query's and head's top-k memory rows
 * joined into its softmax. */
rc_t cuda_stream_knn_memory(backend_stream_t *s, int mi, int n, const uint16_t *mem_q,
                            float mem_scale);
/* The observation point (model/knn_observe.h) right after cuda_stream_knn_memory: `exact`
 * holds the layer's attention arguments as the exact path would pass them (memory fields
 * aside). A no-op unless a tool installed an observer. */
void cuda_stream_knn_observe(backend_stream_t *s, int l, int mi, int n,
                             const cuda_attn_args_t *exact, const uint16_t *mem_q,
                             float mem_scale);

#endif
#endif
