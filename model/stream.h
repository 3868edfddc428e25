/* stream.h — one token stream through the model: FoT memory plus a local window cache.
 *
 * This is where LongLLaMA's inference semantics live (REFERENCE.md):
 *   - the local context is at most `window` tokens; every layer attends causally inside it,
 *     at positions relative to the window's first token, placed by the session's scheme
 *     (plain RoPE, Self-Extend or DCA, and any RoPE scaling: model/positional.h says how
 *     far each scheme lets a window reach);
 *   - memory layers also attend to every memory key (unrotated, scored as a local key at
 *     index 0 would be) in the same fp32 softmax — or, in knn mode, to the top-k of them;
 *   - when the local cache would exceed `window`, the whole cache moves: memory layers
 *     append its unrotated keys and values to memory (in mem_dtype), other layers drop it.
 *
 * model_stream_feed splits its input at window boundaries counted from the stream's first
 * token, so feeding a session's tokens in any grouping gives the same result — except under
 * CLEX, whose frequencies depend on how many keys each forward attends to (a prefill of a
 * whole window and the same tokens fed one by one differ, as in the released code;
 * model/positional.h). */
#ifndef RECALL_MODEL_STREAM_H
#define RECALL_MODEL_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "memory/knn.h"
#include "memory/store.h"
#include "model/backend.h"
#include "model/model.h"

typedef struct model_stream model_stream_t;

/* How local attention places tokens (REFERENCE.md): plain RoPE, Self-Extend's grouped
 * positions, Dual Chunk Attention, or CLEX's learned frequencies. */
typedef enum positional {
    POSITIONAL_ROPE = 0,
    POSITIONAL_SELF_EXTEND = 1,
    POSITIONAL_DCA = 2,
    POSITIONAL_CLEX = 3, /* CLEX checkpoints only (their default); model/positional.h */
    POSITIONAL_GALI = 4, /* attention-logit interpolation, training-free; positional.h */
} positional_t;

/* GALI's two ways of computing the interpolation coefficient (model/positional.h). */
typedef enum gali_mode {
    GALI_MODE_PAPER = 0,     /* everything in fp32 */
    GALI_MODE_REFERENCE = 1, /* the coefficient in bf16, as the released code computes it */
} gali_mode_t;

typedef struct model_stream_opts {
    int window;         /* tokens per window; 0: the model's max_pos */
    positional_t positional;
    int group, neighbor;          /* self-extend: group size G, neighbour window W */
    int chunk_size, local_window; /* dca: chunk size S, local window w; 0: 3L/4 and L/8;
                                   * gali: chunk size c, local window w (see below) */
    /* gali: local_window as given even when 0 (else 0 means min(128, L/8)); the mode; the
     * optional logit noise (0: off) and its seed. */
    int local_window_set;
    gali_mode_t gali_mode;
    float gali_noise;
    uint64_t gali_seed;
    int dca_no_scale;             /* dca: skip ChunkLlama's cos/sin scaling for windows > L */
    int rope_scaling_set;         /* use the two fields below instead of the config's */
    rope_scaling_type_t rope_scaling;
    float rope_factor;
    int last_context;   /* LongLLaMA's last_context_length; 0: config value */
    int mem_dtype_set;  /* use mem_dtype below instead of the config's */
    /* How memory rows are stored: f32, bf16, f16, or the quantized row formats fp8 e4m3 and
     * int8 (one byte per element plus a scale per row and kv head: common/quant.h; half of
     * bf16's bytes; the CPU backend only — other backends refuse the stream). */
    dtype_t mem_dtype;
    int disable_memory; /* memory layers ignore memory (an ablation for tests); 0 = normal */
    /* Memory mode (REFERENCE.md "kNN memory"): 0 exact; 1 knn, each query and head attending
     * to its top knn_k memory keys by inner product, found in a Faiss index per memory layer
     * and kv head (memory/knn.h). knn_k 0: 128; knn_nlist / knn_nprobe 0: the index's
     * defaults (about 4·sqrt(keys) lists, 32 probed). */
    int memory_knn;
    int knn_k;
    int knn_nlist;
    int knn_nprobe;
    /* GPU backends: bytes of device memory the memory layers' keys and values may use (the
     * hot tier); 0: no limit. In knn mode, when memory outgrows it the oldest windows spill
     * to a Faiss index per layer and kv head (memory/knn.h) with their values in host
     * memory, and each query's top-k merges both tiers. In exact mode the spilled windows
     * stream through the device in chunks on every forward (the same softmax, slower). A
     * budget below one window's rows is refused by model_stream_opts_resolve. */
    size_t gpu_memory_budget;
} model_stream_opts_t;

/* Fills defaults from the model's config into a zero-initialized opts and checks them. */
rc_t model_stream_opts_resolve(const model_t *m, model_stream_opts_t *o, char *err,
                               size_t errlen);

/* Creates an empty stream on the CPU backend. The model must outlive it. The stream owns
 * its memory store (model_stream_memory). */
rc_t model_stream_create(model_t *m, const model_stream_opts_t *o, model_stream_t **out);

/* The same on a backend opened with model_backend_open (backend.h), which must outlive
 * the stream. */
rc_t model_stream_create_on(const model_backend_t *b, const model_stream_opts_t *o,
                            model_stream_t **out);
/* The same over a memory store the caller owns (a session's host tier, memory/
 * session_memory.h) and, in knn mode, its kNN index: the stream reads and appends to mem,
 * searches and syncs knn, never frees either, and both must outlive the stream. mem's
 * layers, row width and dtype must match the model and o->mem_dtype, and for fp8/int8 its
 * head_dim the model's; mem may already hold rows. knn must be of the model's memory shape
 * and given only in knn mode; NULL makes the stream its own (rebuilt from mem's keys as it
 * searches). mem NULL: the stream makes its own store (and index). Every failure is
 * RC_ERR_* with err saying why, in words for the user (a scheme or dtype this backend
 * cannot run, a k the GPU top-k cannot take, device memory). */
rc_t model_stream_create_with(const model_backend_t *b, const model_stream_opts_t *o,
                              memory_store_t *mem, memory_knn_t *knn, model_stream_t **out,
                              char *err, size_t errlen);
void model_stream_destroy(model_stream_t **s);

/* Feeds n tokens. Outputs are optional:
 *   logprobs [n]: logprobs[i] = log p(tok[i+1] | everything before it); the last entry is
 *                 left untouched (its next token is not known yet);
 *   last_logits [vocab]: the logits after the last token (for sampling).
 * Token ids out of range are RC_ERR_INVALID and leave the stream unchanged. */
rc_t model_stream_feed(model_stream_t *s, const int32_t *tok, size_t n, float *logprobs,
                       float *last_logits);

/* Moves the local cache into memory now (memory layers) and empties it, as happens
 * implicitly when the cache would overflow. Sessions call it after each full window so
 * that committed windows are in memory. */
rc_t model_stream_flush(model_stream_t *s);

/* Tokens in the local cache, and tokens fed in total. */
size_t model_stream_local_len(const model_stream_t *s);
uint64_t model_stream_tokens(const model_stream_t *s);
int model_stream_window(const model_stream_t *s);

/* Bytes of memory rows the stream's device holds now (a GPU backend's hot tier: all memory,
 * or under a gpu memory budget the newest part; filled on first use after a restore); 0 on
 * the CPU backend. */
size_t model_stream_device_bytes(const model_stream_t *s);
/* The stream's memory (borrowed: the stream's own, or the one it was created with). */
memory_store_t *model_stream_memory(model_stream_t *s);

/* The stream's kNN index (knn mode; NULL otherwise): its own or the one it was created
 * with. Borrowed. On the CPU it indexes every memory row; on a GPU the rows spilled below
 * the device's hot tier (the hot rows are searched exactly on the device). */
memory_knn_t *model_stream_index(model_stream_t *s);
/* A rewind point: the memory length and token count. model_stream_rewind truncates the
 * memory back to it and empties the local cache. Used so a question leaves the session
 * as it was. */
typedef struct model_stream_mark {
    size_t mem_rows;
    uint64_t tokens;
} model_stream_mark_t;
/* Take marks only with an empty local cache (after a flush, or on a fresh stream). */
model_stream_mark_t model_stream_get_mark(const model_stream_t *s);
void model_stream_rewind(model_stream_t *s, model_stream_mark_t mark);

#endif
