/* gpu_pair.h — what the GPU model tests (test_cuda_model, test_cuda_positional) share: one
 * checkpoint opened on the CPU and CUDA backends side by side, the tiny checkpoints they
 * make for themselves, and feeding a stream in uneven chunks (so GPU forwards start at
 * local > 0 and cross window ends mid-chunk). Failures are CHECKs (tests/check.h). */
#ifndef RECALL_TESTS_GPU_PAIR_H
#define RECALL_TESTS_GPU_PAIR_H

#include <stddef.h>
#include <stdint.h>

#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"

typedef struct pair {
    model_t *m;
    model_backend_t *cpu, *gpu;
} pair_t;

/* Loads dir (no tokenizer needed) and opens it on "cpu" and "cuda" (device 0). 0 on
 * success; -1 after a failed CHECK (whatever was opened is closed by pair_close). */
int pair_open(const char *dir, pair_t *p);
void pair_close(pair_t *p);

/* A stream on b, CHECKed; 0 on success. */
int pair_stream(model_backend_t *b, const model_stream_opts_t *o, model_stream_t **s);

/* Feeds tok[0..n) in chunks of 1, 7, 37, 64, 100, 3, 250, ... tokens; lp as for
 * model_stream_feed over the whole; chunk_end (optional, [n]) gets 1 at each chunk's last
 * token (the positions a chunked feed cannot score). */
rc_t pair_feed_uneven(model_stream_t *s, const int32_t *tok, size_t n, float *lp,
                      char *chunk_end);

/* Log-probs of tok on both backends with options o: the CPU takes the whole input in one
 * call, the GPU uneven chunks (so its forwards start at local > 0), and the positions a
 * chunked feed cannot score are skipped. Prints one line; CHECKs every log-prob finite and
 * not positive, the largest and the mean |difference| within tol and tol_mean, and both
 * memories of the same length. *max, *mean (optional) get the two figures. */
void pair_compare_logprobs(const char *name, model_backend_t *cpu, model_backend_t *gpu,
                           const model_stream_opts_t *o, const int32_t *tok, size_t n,
                           double tol, double tol_mean, double *max, double *mean);

/* Makes each tiny checkpoint (tools/make_test_model.py NAME ARGS, no tokenizer) under dir
 * that is not there yet. 0 on success. */
typedef struct pair_model {
    const char *name, *args;
} pair_model_t;
int pair_make_models(const char *dir, const pair_model_t *models, size_t n);

#endif
