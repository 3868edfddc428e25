/* passkey.h — LongLLaMA's passkey retrieval test (from Landmark Attention), run through
 * recalld: `recall passkey`.
 *
 * The prompt (REFERENCE.md, "Passkey test") is five lines joined by "\n":
 *   1. PASSKEY_INTRO
 *   2. prefix filler
 *   3. "The pass key is {KEY}. Remember it. {KEY} is the pass key."
 *   4. suffix filler
 *   5. PASSKEY_QUESTION
 * The filler is PASSKEY_FILLER repeated, joined by single spaces, and cut by characters
 * (as the original's `" ".join([garbage] * n)[:n_chars]`); both the prefix and the suffix
 * are cuts of that same stream from its start. For a filler of N characters and a depth
 * f in [0, 1], the prefix is round(f * N) characters and the suffix the rest, so the key
 * line sits at the fraction f of the filler. Depth d of D is d / (D - 1) (0 % and 100 %
 * included, as in the published plots); one depth is 0.5.
 *
 * Length: the target is the prompt's token count with the model's tokenizer, BOS
 * included (what the model reads before it answers). N is fitted per length through the
 * daemon's Tokenize RPC (passkey_fit); every trial's actual length is measured exactly
 * and reported (key digits and cut positions move it by a few tokens).
 *
 * A trial: the whole prompt is tokenized once (BOS first), so the model sees exactly the
 * tokens of the one-string prompt. A fresh session ingests the tokens up to the question
 * line (windows aligned to BOS, memory layers hold the full windows), then Ask sends the
 * question line's tokens, greedy (temperature 0), max_tokens = the answer's token count,
 * ignoring EOS. The answer's tokens are tokenizer(str(KEY)) without BOS — SentencePiece's
 * encoding of the key on its own, which begins with the word-start marker exactly as the
 * key follows "is" in the prompt (this is Landmark's `tokenizer(answer).input_ids[:, 1:]`).
 * A trial passes only if the generated ids equal those ids, every one; the decoded text
 * is shown to people but never scored. The session is dropped afterwards.
 *
 * Keys: uniform in [PASSKEY_KEY_MIN, PASSKEY_KEY_END) from a splitmix64 stream seeded by
 * (seed, target length, depth index, trial), so a cell's keys do not depend on which other
 * lengths or depths are in the run. */
#ifndef RECALL_CLIENTS_PASSKEY_H
#define RECALL_CLIENTS_PASSKEY_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clients/client.h"
#include "common/rc.h"

#define PASSKEY_KEY_MIN 1
#define PASSKEY_KEY_END 50000 /* exclusive */
#define PASSKEY_MAX_LENGTHS 32
#define PASSKEY_MAX_DEPTHS 101

extern const char PASSKEY_INTRO[];
extern const char PASSKEY_FILLER[];
extern const char PASSKEY_QUESTION[];

/* ---- the pieces (pure functions, unit-tested) ---- */

/* Parses a comma-separated list of lengths in tokens: whole numbers with an optional
 * k/K (x1024) or m/M (x1048576) suffix, e.g. "4k,16k,64k,256k" or "300,512". Each is
 * 1..64M and none repeats; at most max entries. RC_ERR_INVALID with a sentence in err. */
rc_t passkey_parse_lengths(const char *spec, uint64_t *out, int max, int *n, char *err,
                           size_t errlen);

/* A length for people: "4k" when a multiple of 1024, "1M" of 1048576, else the number. */
void passkey_length_label(uint64_t tokens, char *buf, size_t n);

/* Depth of index d among n_depths (n_depths >= 1): d / (n_depths - 1), or 0.5 for one. */
double passkey_depth(int d, int n_depths);

/* The key of one trial, in [PASSKEY_KEY_MIN, PASSKEY_KEY_END). */
uint32_t passkey_key(uint64_t seed, uint64_t target, int depth_i, int trial);

/* Character i of the infinite filler stream. */
char passkey_filler_char(size_t i);

/* Builds the prompt for key, a filler of filler_chars characters and depth in [0, 1].
 * *out is malloc'ed, NUL-terminated (caller frees), *len its length and *question_at the
 * offset of the question line (just after the last "\n"). RC_ERR_NOMEM. */
rc_t passkey_prompt(uint32_t key, size_t filler_chars, double depth, char **out, size_t *len,
                    size_t *question_at);

/* 1 if the generated ids are exactly the answer's ids (same count, same ids), else 0. */
int passkey_score(const int32_t *answer, size_t n_answer, const int32_t *generated,
                  size_t n_generated);

/* Longest common prefix of two id sequences. */
size_t passkey_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb);

/* ---- tokenization (the daemon's, or a fake one in tests) ---- */

/* Tokenizes len bytes of text; with add_bos the BOS id first. count_only: only *n is set
 * (and *ids is NULL). Otherwise *ids is malloc'ed (caller frees). err gets a sentence. */
typedef rc_t (*passkey_tokenize_fn)(void *ctx, const char *text, size_t len, int add_bos,
                                    int count_only, int32_t **ids, size_t *n, char *err,
                                    size_t errlen);

/* The Tokenize RPC of recalld through client c (ctx is a recall_client *). */
rc_t passkey_tokenize_rpc(void *ctx, const char *text, size_t len, int add_bos, int count_only,
                          int32_t **ids, size_t *n, char *err, size_t errlen);

/* Finds a filler length (characters) that makes the prompt `target` tokens long, within
 * max(2, target / 1000) tokens where the tokenizer allows it (a 5-digit key at depth 0.5
 * is measured; other trials differ by a few tokens). *tokens is the fitted prompt's
 * length. RC_ERR_INVALID when target is shorter than the prompt without any filler. */
rc_t passkey_fit(passkey_tokenize_fn tok, void *ctx, uint64_t target, size_t *filler_chars,
                 size_t *tokens, char *err, size_t errlen);

/* Where the question starts in the prompt's ids: the number of ids that belong to the text
 * before the question line. ids/n are the whole prompt's (BOS first); prompt/len/q_at as
 * passkey_prompt gave them. The model's output does not depend on the split (the session's
 * tail and the question are one local context), so this only decides which ids are called
 * the question: those the question line adds. */
rc_t passkey_question_split(passkey_tokenize_fn tok, void *ctx, const char *prompt, size_t len,
                            size_t q_at, const int32_t *ids, size_t n, size_t *split, char *err,
                            size_t errlen);

/* ---- the run ---- */

typedef struct passkey_trial {
    int length_i, depth_i, trial;
    int index, total; /* 1-based position in the run, and the run's trial count */
    uint64_t target;
    double depth;
    uint32_t key;
    size_t tokens;          /* the prompt's actual length, BOS included */
    size_t question_tokens; /* of tokens: those sent as the question (the rest ingested) */
    size_t n_answer;        /* the answer's tokens */
    size_t n_generated;     /* tokens generated */
    int pass;
    char answer[96]; /* what the model wrote (decoded; may be cut) */
    double seconds;
    char session[160];
} passkey_trial_t;

typedef struct passkey_cfg {
    const uint64_t *lengths; /* [n_lengths] target prompt lengths in tokens */
    int n_lengths;
    int n_depths;
    int trials;
    uint64_t seed;
    const char *session_prefix; /* sessions are PREFIX-LEN-dD-tT */
    int keep;                   /* keep each trial's session */
    const void *session_opts;   /* Recall__SessionOptions * for CreateSession, or NULL */
    size_t chunk_tokens;        /* tokens per Ingest chunk (0: ingest.h's default, 16384) */
    void (*on_trial)(const passkey_trial_t *t, void *arg); /* after each trial, or NULL */
    void (*on_phase)(const char *what, void *arg);         /* "fitting 256k", ... or NULL */
    void *arg;
    volatile sig_atomic_t *stop; /* non-zero: stop after the current step (may be NULL) */
} passkey_cfg_t;

typedef struct passkey_result {
    int n_lengths, n_depths, trials;
    uint64_t *targets;    /* [n_lengths] */
    size_t *filler_chars; /* [n_lengths] */
    size_t *min_tokens;   /* [n_lengths] actual prompt lengths over the trials */
    size_t *max_tokens;   /* [n_lengths] */
    double *sum_tokens;   /* [n_lengths] */
    int *passes;          /* [n_lengths][n_depths] */
    int *runs;            /* [n_lengths][n_depths] trials done */
    double *depths;       /* [n_depths] */
    passkey_trial_t *log; /* [n_lengths][n_depths][trials] */
    int done;             /* trials completed */
    double seconds;
} passkey_result_t;

/* Allocates a result for cfg's shape (everything zero). */
rc_t passkey_result_init(passkey_result_t *r, const passkey_cfg_t *cfg);
void passkey_result_free(passkey_result_t *r);

/* Accuracy in [0, 1] of a cell, a length (all depths), or everything; NAN with no trial. */
double passkey_cell_accuracy(const passkey_result_t *r, int li, int di);
double passkey_length_accuracy(const passkey_result_t *r, int li);
double passkey_overall_accuracy(const passkey_result_t *r);

/* Runs the test through client c. The result holds what finished even on failure. A
 * daemon error is returned as its code with the client error set; err gets a sentence
 * for every failure. The session of a failed trial is dropped (unless keep). RC_ERR_SHUTDOWN
 * when *cfg->stop was set. */
rc_t passkey_run(recall_client *c, const passkey_cfg_t *cfg, passkey_result_t *res, char *err,
                 size_t errlen);

/* ---- output ---- */

/* The accuracy table: rows are lengths (target, actual mean), columns depths, and an
 * overall column and row. */
void passkey_print_table(FILE *f, const passkey_result_t *r);

/* One JSON object (malloc'ed string, caller frees; NULL when out of memory): {"accuracy",
 * "by_length", "cells", "trials", "tokens", "depths", ...} as documented in `recall help
 * passkey`; png_path (may be NULL) is added as "png". */
char *passkey_result_json(const passkey_result_t *r, const char *png_path);

/* Renders the heatmap (rows lengths, columns depths; red 0 % .. yellow .. green 100 %,
 * labelled) into *rgb (malloc'ed uint8 [h][w][3], caller frees). */
rc_t passkey_heatmap(const passkey_result_t *r, uint8_t **rgb, int *w, int *h);

/* Renders and writes the heatmap PNG. */
rc_t passkey_write_png(const passkey_result_t *r, const char *path, char *err, size_t errlen);

#endif
