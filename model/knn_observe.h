/* knn_observe.h — a read-only observation point in the CUDA backend's knn memory layers, for
 * measurement tools. bench/knn_probe.c uses it to measure knn against exact attention at
 * chosen memory sizes; the product never installs an observer, and with none installed a
 * knn layer pays one pointer test.
 *
 * The observer sees, right after a knn memory layer's memory part, everything the layer
 * computed with and from (the struct below). It may read device buffers on the stream's CUDA
 * stream and wait for it, and must change nothing, so the stream's results are the same
 * with and without it. Compiled with the CUDA backend only (RECALL_HAVE_CUDA). */
#ifndef RECALL_MODEL_KNN_OBSERVE_H
#define RECALL_MODEL_KNN_OBSERVE_H

#ifdef RECALL_HAVE_CUDA

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "kernels/cuda.h"
#include "memory/store.h"

/* What an observer reads; every device pointer stays the stream's and is only read. */
typedef struct knn_observe_in {
    int layer, mem_layer;          /* model layer; its memory layer index */
    int n;                         /* queries in the chunk */
    /* The layer's attention arguments as the exact path would pass them, memory fields
     * aside: q, k, v, local layout, q_mem and mem_scale as positional preparation set them
     * (n_mem, mem_k, mem_v, lse, out and the workspace are the observer's to replace). */
    const cuda_attn_args_t *attn;
    int fast;                      /* exact path: 1 cuda_attention_fast, 0 cuda_attention */
    size_t rows;                   /* memory rows of the layer: spilled + on the device */
    size_t spilled;                /* rows in the host tier, not in mem_k / mem_v */
    const void *mem_k, *mem_v;     /* [rows - spilled, n_kv_heads, head_dim] mem_dtype, device */
    dtype_t mem_dtype;
    const uint16_t *mem_q;         /* [n, n_heads, head_dim] bf16 device: the memory queries */
    float mem_scale;               /* the knn kernel's score factor */
    const uint16_t *o_knn;         /* [n, n_heads, head_dim] bf16 device: the knn output */
    const int32_t *knn_idx;        /* [n, n_heads, k] device: the top-k rows used (hot tier
                                    * only: with spilled rows they are the kernel's encoding) */
    int k;                         /* the knn path's k (knn_k, or rows when fewer) */
    const memory_store_t *store;   /* the host copy of the memory (rows [0, rows) per layer) */
    int n_mem_layers;
    int nlist, nprobe;             /* the stream's knn options (0: the index's defaults) */
    void *stream;                  /* the stream's CUDA stream */
    const char *describe;          /* the backend, for messages */
} knn_observe_in_t;

typedef struct knn_observer {
    /* Optional: whether memory layer mem_layer, at `rows` memory rows, in a forward of n
     * queries, is to be observed (NULL: every time). Called first; keep it cheap. */
    int (*due)(void *ctx, int mem_layer, size_t rows, int n);
    void (*observe)(void *ctx, const knn_observe_in_t *in);
    void *ctx;
} knn_observer_t;

/* Installs a copy of *o for every CUDA stream of the process (NULL removes it). Install
 * before streams run forwards: it is not synchronized with them. */
void backend_cuda_observe_knn(const knn_observer_t *o);

#endif
#endif
