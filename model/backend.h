/* backend.h — where a stream's compute runs: the interface every backend implements.
 *
 * Public part: open a backend for a loaded model on a device ("cpu", "cuda", "cuda:N"),
 * then create streams on it (model_stream_create_on in stream.h). A backend holds the
 * model's weights in its own form (the CUDA backend uploads them once as bf16) and is
 * shared by all streams; it must outlive them.
 *
 * Internal part (BACKEND_INTERNAL): the ops table. stream.c owns the semantics that do not
 * depend on the device — splitting input at window boundaries, deciding when the local
 * cache moves into memory, marks and rewinds, the host memory store — and calls the ops
 * for the compute. */
#ifndef RECALL_MODEL_BACKEND_H
#define RECALL_MODEL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "model/model.h"

typedef struct model_backend model_backend_t;

/* device: "cpu", "cuda" (GPU 0) or "cuda:N"; NULL or "auto" picks cuda when this build
 * has it and a GPU is present, else cpu. Readies m's weights in the form the backend reads
 * (model.h: model_load_weights, fp32, for the CPU; model_check_weights for a GPU, which
 * uploads the stored tensors, so no fp32 copy is made), which may take seconds. Errors
 * name the device or the tensor, and why. */
rc_t model_backend_open(model_t *m, const char *device, model_backend_t **out,
                        char *err, size_t errlen);
void model_backend_close(model_backend_t **b);
/* "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)". Borrowed; lives as long as the backend. */
const char *model_backend_describe(const model_backend_t *b);
const model_t *model_backend_model(const model_backend_t *b);
/* The device memory of a backend that keeps session memory on a device (GPU): bytes free
 * now and in all. RC_ERR_UNSUPPORTED for the CPU backend (its memory is host memory). */
rc_t model_backend_device_memory(const model_backend_t *b, size_t *free_bytes, size_t *total);

#ifdef BACKEND_INTERNAL
#include "memory/knn.h"
#include "memory/store.h"

struct model_stream_opts;

/* A stream's device-side state: the local cache of every layer, scratch, and for
 * backends whose memory lives elsewhere (GPU), a mirror of the host memory store. */
typedef struct backend_stream backend_stream_t;

typedef struct backend_ops {
    const char *name;
    /* Prepares the model's weights for this backend (upload, conversion). */
    rc_t (*open)(const model_t *m, int device, void **ctx, char *err, size_t errlen);
    void (*close)(void *ctx);
    const char *(*describe)(void *ctx);

    /* A stream with an empty local cache. mem is the stream's host memory store and knn
     * (knn mode, else NULL) the kNN index over its keys, both borrowed from the stream
     * (stream.c made them or was handed them): the backend reads memory rows from mem,
     * appends to it on flush, and searches and syncs knn. Failures say why in err. */
    rc_t (*stream_create)(void *ctx, const struct model_stream_opts *o, memory_store_t *mem,
                          memory_knn_t *knn, backend_stream_t **out, char *err, size_t errlen);
    void (*stream_destroy)(backend_stream_t *bs);

    /* Runs tok[0..n) through every layer; the local cache holds `local` tokens before them
     * and local + n ≤ window. Outputs, each optional:
     *   targets/logprobs [n]: logprobs[i] = log p(targets[i]) after token i, for
     *                         targets[i] >= 0 (others untouched);
     *   last_logits [vocab]:  the logits after tok[n-1]. */
    rc_t (*forward)(backend_stream_t *bs, const int32_t *tok, int n, int local,
                    const int32_t *targets, float *logprobs, float *last_logits);

    /* Appends the unrotated keys and values of the `local` cached tokens of every memory
     * layer to the host memory store (all layers, or none on failure). */
    rc_t (*flush)(backend_stream_t *bs, int local);

    /* The host store was truncated to `rows` (a rewind): drop any mirrored rows past it. */
    void (*memory_truncated)(backend_stream_t *bs, size_t rows);

    /* Optional (NULL: 0). Bytes of memory rows (keys and values, all memory layers) the
     * device holds for this stream now: the GPU hot tier. */
    size_t (*device_bytes)(backend_stream_t *bs);


    /* Optional (NULL: RC_ERR_UNSUPPORTED). The device's free and total memory now. */
    rc_t (*device_memory)(void *ctx, size_t *free_bytes, size_t *total);
} backend_ops_t;

extern const backend_ops_t backend_cpu_ops;
#ifdef RECALL_HAVE_CUDA
extern const backend_ops_t backend_cuda_ops;
#endif

struct model_backend {
    const backend_ops_t *ops;
    void *ctx;
    const model_t *model;
};
#endif

#endif
