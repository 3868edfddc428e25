/* weights.h — a loaded checkpoint's tensors as the CPU forward pass reads them.
 *
 * Internal to model/ and the backends: other modules hold a model_t (model.h). Every
 * matrix is fp32, row-major in Hugging Face's [out_features, in_features] layout, so a
 * projection is y = x · Wᵀ. Pointers either point into the checkpoint's memory map (F32
 * tensors whose data is 4-byte aligned) or into buffers the loader owns; both live until
 * model_destroy. */
#ifndef RECALL_MODEL_WEIGHTS_H
#define RECALL_MODEL_WEIGHTS_H

#include <stddef.h>

#include "common/dtype.h"
#include "model/config.h"

typedef struct model_layer {
    const float *attn_norm; /* [hidden]                        input_layernorm */
    const float *wq;        /* [n_heads * head_dim, hidden]    q_proj */
    const float *wk;        /* [n_kv_heads * head_dim, hidden] k_proj */
    const float *wv;        /* [n_kv_heads * head_dim, hidden] v_proj */
    const float *wo;        /* [hidden, n_heads * head_dim]    o_proj */
    const float *ffn_norm;  /* [hidden]                        post_attention_layernorm */
    const float *w_gate;    /* [ffn, hidden]                   mlp.gate_proj */
    const float *w_up;      /* [ffn, hidden]                   mlp.up_proj */
    const float *w_down;    /* [hidden, ffn]                   mlp.down_proj */
} model_layer_t;

typedef struct model_weights {
    const float *tok_emb;   /* [vocab, hidden]  model.embed_tokens */
    model_layer_t *layers;  /* [n_layers] */
    const float *norm;      /* [hidden]         model.norm */
    const float *lm_head;   /* [vocab, hidden]  lm_head (= tok_emb when tied) */

    /* CLEX checkpoints only (config clex), else NULL. d = head_dim, h = d / 2, p =
     * param_factor, M = max_factor. */
    const float *clex_inv_freq; /* [h]      model.clex_layer.inv_freq (rope_theta's when
                                            the checkpoint has none) */
    const float *clex_up;       /* [h, p·d] model.clex_layer.proj_func.ode_up_proj */
    const float *clex_down;     /* [p·d, h] model.clex_layer.proj_func.ode_down_proj */
    const float *clex_freq;     /* [M, h] row t − 1: the inverse frequencies at t = 1 … M
                                            (positional_clex_table), computed at load */
} model_weights_t;

/* The same tensors as the checkpoint stores them (model_check_weights): views into its
 * memory map, valid until model_destroy, each of the shape model_weights_t gives. A backend
 * that keeps its own copy in another form (the CUDA backend's bf16 on the device) reads
 * these, so the host never holds an fp32 copy it would not use. */
typedef struct model_tensor {
    const void *data;
    dtype_t dtype;
    size_t numel;
} model_tensor_t;

typedef struct model_stored_layer {
    model_tensor_t attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
} model_stored_layer_t;

typedef struct model_stored {
    model_tensor_t tok_emb, norm, lm_head; /* lm_head.data == tok_emb.data when tied */
    model_stored_layer_t *layers;          /* [n_layers] */
} model_stored_t;

#endif
