/* positional.h — where local attention places queries and keys (REFERENCE.md: Self-Extend,
 * Dual Chunk Attention, RoPE scalings, memory keys under an extended scheme).
 *
 * Indices are 0-based from the window's first token: query i, key j ≤ i. A scheme maps each
 * (i, j) pair to a query position and a key position; RoPE rotates by those. A key has one
 * position per scheme except under Self-Extend (j and j // G), so backends cache keys
 * rotated once (twice for Self-Extend) and rotate each query the few ways its scheme needs.
 *
 *   rope         query i, key j. With a RoPE scaling the frequencies change, not positions.
 *   self-extend  i − j < W: (i, j); else (i // G + W − W // G, j // G)      (integer division)
 *   dca          key j mod c; query i mod c (same chunk), min(i mod c + c, S) (the chunk just
 *                before), S (older chunks); c = S − w
 *
 * Memory keys (FoT memory layers) are scored as a local key at index 0 would be: unrotated
 * (position 0) and the query at its position against key index 0 (positional_mem_query).
 * Where a scheme multiplies cos/sin by a factor (YaRN's attention factor, ChunkLlama's chunk
 * scale), that factor applies to the query and to the index-0 key alike, so a memory score
 * is multiplied by it once more than the query's rotation already does — exactly what a
 * local key at index 0 would get.
 *
 * For rope, self-extend and dca everything here depends only on the window-local index and
 * on constants of the session (trained length, window, parameters), so feeding tokens in
 * any grouping gives the same positions.
 *
 * CLEX is the exception (a scheme whose checkpoints are fine-tuned with it; DAMO-NLP-SG's
 * released code is the definition). Positions stay (i, j), but the frequencies depend on
 * the forward:
 *   - a forward (one backend call: model_stream_feed cuts its input at window boundaries
 *     only) that attends to n local keys — the window's cached keys plus its new ones —
 *     uses row t = ceil(n / L) of the table (positional_clex_t) for every query and every
 *     key; keys are cached unrotated and rotated again with that row. So a window's
 *     prefill uses the t of its own length, and a decode step the t of the current length:
 *     results DO depend on how the tokens are grouped into feeds (as in the released code).
 *   - with log_scale (config.json, true when absent) queries are multiplied by
 *     ln(n) / ln(L) for every n, below L too (a factor under 1; 0 for n = 1).
 *   - FoT memory keys do not count in n (memory grows without bound; the table stops at
 *     M): they stay unrotated and are scored as a local key at index 0, against the query
 *     rotated with row t at i and scaled by the same log factor.
 *   - a window longer than M · L is refused (the released code cannot run there), so
 *     t ≤ M always.
 * The table (positional_clex_table, computed once at load) is what the released code's
 * odeint solves, in double: row 1 is the checkpoint's inv_freq as stored; rows 2 … M are
 * exp(z(t)) with z(1) = ln inv_freq and
 *   dz/dt = act((z + ln ν(t)) · U) · D − 4i / ((d − 2) α),  α = 2t − 1,
 *   ν_i(t) = (10000 · α^(d/(d−2)))^(−2i/d)            (base 10000 whatever rope_theta is)
 * (U = ode_up_proj [d/2, p·d], D = ode_down_proj [p·d, d/2], act silu or tanh), by
 * fixed-step RK4 in the 3/8-rule form on torchdiffeq's grid 1 + k·dt (float32 points,
 * ceil(float32((M − 1) / dt) + 1) of them, the last forced to M), and linear interpolation
 * onto each integer t from the step that first reaches it.
 *
 * GALI (attention-logit interpolation, training-free; blap/GALI's released code is the
 * definition) runs a plain RoPE checkpoint past its trained length L with positions that
 * stay inside [0, L) and logits interpolated between integer positions:
 *   - positions of T tokens (positional_gali_positions): for T ≤ L plain, 0 … T − 1. For
 *     T > L, with w the local window: g = ceil((T − w) / (L − w)), i the smallest with
 *     (L − i) + g·i ≥ T; the newest L − i tokens sit at the integers i … L − 1 and the
 *     T − (L − i) oldest at k + m/g (k = 0, 1, …, m = 0 … g − 1, in that order), computed in
 *     double and rounded to float32 as the release does.
 *   - a forward is cut into pieces (positional_gali_piece): while the window holds fewer
 *     than L tokens, a piece ends at L (plain positions); after that pieces of c tokens (the
 *     chunk size; the last one the remainder). Each piece builds the table for T = all of
 *     the window's tokens up to its end: its queries take the table's last entries, every
 *     key (cached ones too) its own entry, and attention is causal by token index. A
 *     decode step is a piece of one. So, as under CLEX, results depend on how tokens are
 *     grouped into feeds (as in the released code).
 *   - the logit of query q and key k (positional_gali_coef): A with q at ⌈p_q⌉ and k at
 *     ⌈p_k⌉, B with q at ⌈p_q⌉ and k at ⌊p_k⌋, logit = A + c·(B − A) with
 *     c = (⌈p_q⌉ − p_k) mod 1 (0 for a key at an integer position, so only the oldest keys
 *     need B). Memory keys (FoT) sit at the integer position 0: unrotated, c = 0, against
 *     the query rotated at ⌈p_q⌉.
 *   - the two modes, side by side:
 *       paper      c = (⌈p_q⌉ − p_k) mod 1 in float32 (the subtraction rounds to float32);
 *       reference  as released (the model in bf16): c = frac(bf16(bf16(⌈p_q⌉) − bf16(p_k))),
 *                  round-to-nearest-even at each step. bf16 keeps 8 significant bits, so
 *                  c is 0 whenever ⌈p_q⌉ − p_k or p_k is 128 or more (no interpolation at
 *                  real lengths) and coarsely quantized below; the logits A and B and
 *                  everything else stay fp32 in both modes.
 *   - noise (off unless gali_noise > 0): N(0, σ²) with σ = gali_noise · (i − j) / K added to
 *     the logits where c ≠ 0 (i, j the query's and key's token indices among the piece's K
 *     keys), the released "gaussian" noise with its mean 0; drawn from a hash of (seed,
 *     layer, head, i, j), so it does not depend on threads. Never in parity checks.
 * Defaults: w = min(128, L / 8), c = ⌊3L / 4⌋ (the released configs' proportions); accepted
 * 0 ≤ w < L and 1 ≤ c ≤ L. */
#ifndef RECALL_MODEL_POSITIONAL_H
#define RECALL_MODEL_POSITIONAL_H

#include <stddef.h>

#include "common/rc.h"
#include "model/config.h"
#include "model/stream.h"

/* A session's resolved positional parameters (all sizes in tokens). */
typedef struct positional_params {
    positional_t kind;
    int trained;      /* L: the config's max_position_embeddings */
    int window;       /* tokens per window */
    int group;        /* self-extend: G */
    int neighbor;     /* self-extend: W */
    int chunk_size;   /* dca: S */
    int local_window; /* dca: w */
    int chunk_len;    /* dca: c = S − w */
    int clex_max;     /* clex: M, the table's rows */
    gali_mode_t gali_mode; /* gali: chunk_size is c, local_window is w */
} positional_params_t;

/* Fills the positional defaults of opts (DCA's S = 3L/4 and w = L/8, the window, the RoPE
 * scaling from the config unless rope_scaling_set; on a CLEX checkpoint rope, the zero
 * value, becomes clex) and checks every limit: the window a scheme
 * can reach (rope: L; rope with a scaling of factor f ≥ 1: f · L; self-extend with
 * 1 ≤ W < L, G ≥ 1: (L − W) · G + W; dca with 0 < w < S ≤ L: any length; clex: M · L;
 * gali with 0 ≤ w < L, 1 ≤ c ≤ L: any length), non-positive sizes, self-extend, dca or gali
 * combined with a RoPE scaling (refused), clex on a checkpoint without CLEX weights and
 * self-extend, dca, gali or a RoPE scaling on one with them (refused), gali with knn memory,
 * an unknown gali mode or a negative or non-finite gali noise. Idempotent: resolving
 * resolved opts changes nothing. On failure returns RC_ERR_INVALID with a sentence in err.
 * Called by model_stream_opts_resolve before its other checks. */
rc_t positional_resolve(const model_config_t *c, model_stream_opts_t *o, char *err, size_t errlen);

/* The parameters of resolved opts. */
positional_params_t positional_params(const model_config_t *c, const model_stream_opts_t *o);

/* Self-Extend's grouped positions. */
int positional_se_query(int i, int group, int neighbor); /* i // G + W − W // G */
int positional_se_key(int j, int group);                 /* j // G */

/* The positions of the pair (i, j), j ≤ i, under p's scheme. */
void positional_pair(const positional_params_t *p, int i, int j, int *qpos, int *kpos);

/* The position query i takes against a memory key (recall's rule: as against key index 0):
 * rope i; self-extend i if i < W else i // G + W − W // G; dca i mod c in chunk 0,
 * min(i mod c + c, S) in chunk 1, S later. */
int positional_mem_query(const positional_params_t *p, int i);

/* DCA's query positions, the same for every key of a chunk class (see the top). */
int positional_dca_intra(const positional_params_t *p, int i); /* i mod c */
int positional_dca_succ(const positional_params_t *p, int i);  /* min(i mod c + c, S) */

/* ChunkLlama's cos/sin scale for a window of n tokens: 0.05 · ln(n / L) + 1 when n > L, else
 * 1. */
float positional_dca_scale(int n, int trained);

/* RoPE frequencies and cos/sin multiplier for a scaling (NONE included) with this config,
 * for a session whose window is `window` tokens (dynamic NTK takes n = window: recall's
 * rule, so results do not depend on how tokens are grouped):
 *   none     inv_freq[p] = 1 / θ^(2p/d)                         (cpu_rope_inv_freq)
 *   linear   inv_freq /= factor
 *   ntk      θ' = θ · factor^(d/(d−2))
 *   dynamic  θ' = θ · (factor · n / L − (factor − 1))^(d/(d−2))  when n > L, else θ
 *   yarn     interpolated (/ factor) and extrapolated frequencies blended by a linear ramp
 *            over the correction range for beta_fast = 32, beta_slow = 1 at the original
 *            max positions (config original_max_position_embeddings, else L);
 *            mscale = 0.1 · ln(factor) + 1 (factor > 1)
 * mscale is 1 except for YaRN. inv_freq [head_dim / 2]. The scaling type and factor must have
 * passed positional_resolve. */
void positional_rope_freqs(const model_config_t *c, rope_scaling_type_t type, float factor,
                           int window, float *inv_freq, float *mscale);

/* CLEX (see the top). The table's row for a forward attending to n local keys:
 * ceil(n / L), at least 1 and at most M. */
int positional_clex_t(int n, int trained, int max_factor);

/* The query factor under log_scale: ln(n) / ln(L) (0 for n = 1), as float. */
float positional_clex_log_scale(int n, int trained);

/* Fills table [M, d/2] (row t − 1 for t = 1 … M; M = c->clex_max_factor, d = c->head_dim)
 * from the checkpoint's inv_freq [d/2], ode_up_proj [d/2, p·d] and ode_down_proj [p·d, d/2],
 * in double, rounded to float at the end. RC_ERR_FORMAT if some entry is not finite or not
 * positive (weights that make the ODE blow up). */
rc_t positional_clex_table(const model_config_t *c, const float *inv_freq, const float *up,
                           const float *down, float *table);

/* GALI (see the top). Positions of the T tokens of a window, pos [T]; w the local window,
 * 0 ≤ w < L. */
void positional_gali_positions(int T, int trained, int local_window, float *pos);

/* The size of the piece starting with `local` tokens in the window, of n still to feed:
 * up to L while local < L, else up to the chunk size. */
int positional_gali_piece(int local, int n, int trained, int chunk_size);

/* c = (qceil − pk) mod 1 in the mode's arithmetic (qceil = ⌈p_q⌉, an integer). */
float positional_gali_coef(float qceil, float pk, gali_mode_t mode);

/* "paper", "reference". */
const char *positional_gali_mode_name(gali_mode_t mode);

/* "rope", "self-extend", "dca", "clex", "gali"; "none", "linear", "ntk", "dynamic", "yarn". */
const char *positional_name(positional_t kind);
const char *positional_scaling_name(rope_scaling_type_t type);

#endif
