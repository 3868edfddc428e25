/* model.h — a loaded checkpoint: config, weights and tokenizer.
 *
 * A checkpoint directory holds config.json, model.safetensors (or shards listed in
 * model.safetensors.index.json) and tokenizer.model. Tensors are memory-mapped; F32, F16
 * and BF16 are accepted and held as fp32 for the CPU backend. The model is immutable after
 * load and may be shared by any number of threads and streams. */
#ifndef RECALL_MODEL_MODEL_H
#define RECALL_MODEL_MODEL_H

#include <stddef.h>

#include "common/rc.h"
#include "model/config.h"

typedef struct model model_t;
typedef struct tokenizer tokenizer_t;
typedef struct model_weights model_weights_t;

/* Loads the checkpoint in dir. On failure returns a status and writes a sentence naming
 * the offending file, tensor or config field into err (always NUL-terminated); nothing is
 * left allocated. A missing tokenizer.model is an error unless allow_no_tokenizer is set
 * (then model_tokenizer returns NULL and only token ids can be used). */
rc_t model_load(const char *dir, int allow_no_tokenizer, model_t **out, char *err,
                size_t errlen);

/* model_load in steps, for a daemon that answers before its weights are in.
 * model_open reads config.json, the safetensors headers and tokenizer.model (cheap: no tensor
 * data is read); config, tokenizer and describe work at once, the weights not yet.
 * model_check_weights finds every tensor and checks its shape against the config, reading
 * no tensor data (but a CLEX checkpoint's small ODE, whose table it computes):
 * model_get_stored and model_clex_table work after it. model_load_weights does that and
 * converts every tensor to fp32 (seconds and 4 bytes a parameter for a 3B checkpoint):
 * model_get_weights works after it; only the CPU backend needs it, and model_backend_open
 * calls it when it picks the CPU. Either may run on another thread while others read the
 * config, tokenizer and description, which they do not touch; each is a no-op once done.
 * After a failure the weights are unusable and the model is only good for model_destroy. */
rc_t model_open(const char *dir, int allow_no_tokenizer, model_t **out, char *err,
                size_t errlen);
rc_t model_check_weights(model_t *m, char *err, size_t errlen);
rc_t model_load_weights(model_t *m, char *err, size_t errlen);
/* 1 once model_load_weights succeeded (fp32 weights), else 0. */
int model_has_f32_weights(const model_t *m);

/* NULL-safe; sets *m to NULL. */
void model_destroy(model_t **m);

const model_config_t *model_get_config(const model_t *m);
/* The fp32 weights (after model_load_weights; NULL before). */
const model_weights_t *model_get_weights(const model_t *m);
/* The tensors as stored (after model_check_weights or model_load_weights; NULL before). */
const struct model_stored *model_get_stored(const model_t *m);
/* Borrowed; lives as long as the model. NULL when loaded without a tokenizer. */
const tokenizer_t *model_get_tokenizer(const model_t *m);
/* One line for humans: "longllama 4 layers, hidden 64, mem layers [1,2], vocab 512 (DIR)". */
const char *model_describe(const model_t *m);

/* A CLEX checkpoint's frequency table (model/positional.h): [*rows = max_factor,
 * *cols = head_dim / 2], row t − 1 for t = 1 … max_factor. NULL for other checkpoints. */
const float *model_clex_table(const model_t *m, int *rows, int *cols);

#endif
