/* config.h — a checkpoint's architecture, read from its config.json.
 *
 * Fields follow Hugging Face LLaMA and LongLLaMA names. Absent LongLLaMA fields take
 * LongLLaMA's defaults; a plain LLaMA / Llama-2 config has no memory layers. */
#ifndef RECALL_MODEL_CONFIG_H
#define RECALL_MODEL_CONFIG_H

#include <stddef.h>

#include "common/dtype.h"
#include "common/rc.h"

#define MODEL_MAX_MEM_LAYERS 64

typedef enum rope_scaling_type {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR,
    ROPE_SCALING_NTK,
    ROPE_SCALING_DYNAMIC,
    ROPE_SCALING_YARN,
} rope_scaling_type_t;

/* CLEX's ODE activation (rope_scaling.act). */
typedef enum clex_act {
    CLEX_ACT_SILU = 0,
    CLEX_ACT_TANH = 1,
} clex_act_t;

typedef struct model_config {
    int vocab_size;      /* vocab_size */
    int hidden;          /* hidden_size */
    int n_layers;        /* num_hidden_layers */
    int n_heads;         /* num_attention_heads */
    int n_kv_heads;      /* num_key_value_heads (= n_heads when absent) */
    int head_dim;        /* hidden / n_heads (or head_dim when present) */
    int ffn;             /* intermediate_size */
    float rms_eps;       /* rms_norm_eps */
    float rope_theta;    /* rope_theta (1e4 when absent) */
    int max_pos;         /* max_position_embeddings: the trained length L */
    int tie_embeddings;  /* tie_word_embeddings */
    dtype_t torch_dtype; /* torch_dtype: the checkpoint's weight type */
    int bos_id, eos_id;  /* bos_token_id (1), eos_token_id (2) */

    /* LongLLaMA (FoT). n_mem_layers == 0 for plain LLaMA. */
    int is_longllama;    /* model_type "longllama" or any mem_* field present */
    int n_mem_layers;
    int mem_layers[MODEL_MAX_MEM_LAYERS]; /* 0-indexed, ascending */
    dtype_t mem_dtype;        /* mem_dtype ("bfloat16" default) */
    int last_context_length;  /* last_context_length (1024 default) */
    int mem_positionals;      /* mem_positionals (true default); false is refused */
    int mem_attention_grouping_set; /* present in config: memory-saving only, ignored */

    /* rope_scaling (consumed by the positional-scheme work; parsed and validated here). */
    rope_scaling_type_t rope_scaling;
    float rope_factor;
    int rope_original_max_pos; /* original_max_position_embeddings (YaRN); 0 if absent */

    /* CLEX (rope_scaling type "clex", a checkpoint fine-tuned with learned continuous RoPE
     * scaling; model/positional.h). rope_scaling above stays NONE for such a config: CLEX
     * is a positional scheme of its own, with weights. */
    int clex;              /* rope_scaling.type == "clex" */
    int clex_max_factor;   /* M = rope_scaling.max_factor: integer >= 1 (required) */
    int clex_param_factor; /* p = rope_scaling.param_factor: integer >= 1 (required) */
    clex_act_t clex_act;   /* rope_scaling.act: "silu" (default: first releases) or "tanh" */
    float clex_time_dt;    /* rope_scaling.time_dt: RK4 step, > 0 (0.01 when absent) */
    int log_scale;         /* top-level log_scale (true when absent: the config class's
                              default); read for every config, used by CLEX only */

    /* The session options this checkpoint measures best with, from an optional
     * "recall_session_defaults" object ({"memory": "knn", "k": 128}); recalld uses them for
     * new sessions where neither the client nor its own flags say otherwise. Transformers
     * ignores the key. "" / 0: not given. */
    char default_memory[8]; /* "exact" or "knn" */
    int default_k;          /* knn k, 1 .. 4096 */
} model_config_t;

/* Parses config.json text. On failure returns RC_ERR_FORMAT or RC_ERR_INVALID and writes a
 * sentence naming the bad field into err (errlen bytes, always NUL-terminated). */
rc_t model_config_parse(const char *json, size_t len, model_config_t *out, char *err,
                        size_t errlen);

/* Reads DIR/config.json and parses it. */
rc_t model_config_load(const char *dir, model_config_t *out, char *err, size_t errlen);

/* Non-zero if layer l (0-indexed) is a memory layer. */
int model_config_is_mem_layer(const model_config_t *c, int l);

#endif
