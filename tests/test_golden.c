/* test_golden — the embedded model's (models/default) greedy continuations of three fixed
 * prompts, pinned: the prompt's token count, the generated ids and their decoded text.
 *
 *   test_golden            on the CPU (the normal suite)
 *   test_golden cuda       on the CUDA backend (label gpu); with no GPU it prints
 *                          "skipped: no GPU" and exits 77, which ctest counts as skipped
 *   test_golden print [cuda]  prints the values in the form of the table below, to pin
 *                          them again after a deliberate numerical change (say why in the
 *                          commit), and writes each prompt's ids to golden-N.bin for
 *                          tests/ref/longllama_ref.py
 *
 * Every check is exact: any change in the tokenizer, the weights' reading, a kernel's
 * rounding or the memory layers that moves one argmax breaks it. The third prompt is the
 * passkey template with the key in the middle, several windows long, so the answer (the
 * key) has to come from memory.
 *
 * How the pinned values were made: `test_golden print` on the CPU at the commit that added
 * this file. Cross-checked: tests/ref/longllama_ref.py (the independent PyTorch reference,
 * float32, the checkpoint's window of 256 and bf16 memory) with `--generate 24` on the ids
 * it wrote gives the same 24 ids for all three prompts, and python3-sentencepiece encodes
 * the first prompt to the same 23 ids. The passkey prompt is 1210 tokens (digits are
 * single pieces), so its question is answered from the memory of four earlier windows.
 *
 * `test_golden cuda` checks the same pins: the CUDA backend should agree with the CPU's
 * argmax everywhere here; where it does not, the failure names the first token that
 * differs. It had not yet been run on a GPU when the pins were written. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kernels/cpu.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"
#include "model/tokenizer.h"
#include "tests/check.h"
#ifdef RECALL_HAVE_CUDA
#include "kernels/cuda.h"
#endif

#define N_GEN 24
#define KEY_FILLER_REPEATS 14 /* the passkey prompt: filler before and after the key line */

typedef struct golden {
    const char *name;
    size_t n_prompt;    /* the prompt's ids, BOS included */
    int32_t gen[N_GEN]; /* the greedy continuation */
    const char *text;   /* gen decoded */
} golden_t;

/* ---- the pinned values (test_golden print) ---- */
static const golden_t goldens[] = {
    {"colours",
     23,
     {703, 1965, 270, 718, 478,  324, 1965, 270, 918, 264,  703, 1965,
      270, 718,  478, 324, 1965, 270, 918,  264, 703, 1965, 270, 718},
     "red. The story goes on. The table is red. The story goes on. The table is red. The story"},
    {"story",
     36,
     {268,  1713, 299,  275, 1974, 1952, 1952, 1952, 269,  808, 483,  281,
      1378, 1966, 1195, 325, 1952, 319,  269,  1954, 1671, 684, 1517, 1993},
     "a reference to the\n    `IncomingMessage` class.\n  * `triggerAsyncI"},
    {"passkey",
     1210,
     {1952, 2024, 2032, 2012, 2012, 1965, 270, 918, 264,  703, 1965, 270,
      718,  478,  324,  1965, 270,  918,  264, 703, 1965, 270, 718,  478},
     "4711. The table is red. The story goes on. The table is red. The story goes"},
};
enum { N_GOLDEN = sizeof goldens / sizeof goldens[0] };

static const char filler[] = "The grass is green. The sky is blue. The sun is yellow. Here we go. "
                             "There and back again.";

/* The prompt of golden i (malloc'ed). */
static char *prompt_of(int i)
{
    char *p = malloc(8192);
    if (!p) return NULL;
    if (i == 0) {
        snprintf(p, 8192, "The grass is green. The sky is blue. The sun is");
    } else if (i == 1) {
        snprintf(p, 8192,
                 "Once upon a time, there was a little girl who lived in a village "
                 "near the forest. One day,");
    } else {
        size_t o = (size_t)snprintf(p, 8192,
                                    "There is an important info hidden inside a lot of "
                                    "irrelevant text. Find it and memorize them. I will quiz "
                                    "you about the important information there.\n");
        for (int r = 0; r < KEY_FILLER_REPEATS; r++)
            o += (size_t)snprintf(p + o, 8192 - o, "%s%s", r ? " " : "", filler);
        o += (size_t)snprintf(p + o, 8192 - o,
                              "\nThe pass key is 4711. Remember it. 4711 is the pass key.\n");
        for (int r = 0; r < KEY_FILLER_REPEATS; r++)
            o += (size_t)snprintf(p + o, 8192 - o, "%s%s", r ? " " : "", filler);
        snprintf(p + o, 8192 - o, "\nWhat is the pass key? The pass key is");
    }
    return p;
}

/* Tokenizes the prompt (BOS first), feeds it to a fresh stream with the checkpoint's
 * defaults and continues it greedily for N_GEN tokens. b NULL: the CPU. */
static rc_t continue_prompt(model_t *m, model_backend_t *b, const char *prompt, int32_t **ids,
                            size_t *n_ids, int32_t gen[N_GEN], char **text)
{
    const tokenizer_t *t = model_get_tokenizer(m);
    int vocab = model_get_config(m)->vocab_size;
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    char err[512] = "";
    model_stream_t *s = NULL;
    float *logits = malloc((size_t)vocab * sizeof *logits); /* [vocab] */
    rc_t rc = logits ? RC_OK : RC_ERR_NOMEM;
    if (!rc) rc = tokenizer_encode(t, prompt, strlen(prompt), 1, ids, n_ids);
    if (!rc) rc = model_stream_opts_resolve(m, &o, err, sizeof err);
    if (!rc) rc = b ? model_stream_create_on(b, &o, &s) : model_stream_create(m, &o, &s);
    if (!rc) rc = model_stream_feed(s, *ids, *n_ids, NULL, logits);
    for (int i = 0; !rc && i < N_GEN; i++) {
        gen[i] = cpu_argmax(logits, vocab);
        if (i + 1 < N_GEN) rc = model_stream_feed(s, &gen[i], 1, NULL, logits);
    }
    if (!rc) rc = tokenizer_decode(t, gen, N_GEN, text, NULL);
    if (rc) fprintf(stderr, "test_golden: %s %s\n", rc_strerror(rc), err);
    model_stream_destroy(&s);
    free(logits);
    return rc;
}

/* Writes s as a C string literal. */
static void print_c_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if (*s == '\n')
            printf("\\n");
        else if ((unsigned char)*s < 0x20)
            printf("\\x%02x\"\"", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    int print = argc > 1 && !strcmp(argv[1], "print");
    const char *device = argc > 1 + print ? argv[1 + print] : NULL;
    if (device && strcmp(device, "cuda")) {
        fprintf(stderr, "usage: test_golden [print] [cuda]\n");
        return 2;
    }
    if (device) {
        int n_gpu = 0;
#ifdef RECALL_HAVE_CUDA
        if (cuda_device_count(&n_gpu)) n_gpu = 0;
#endif
        if (n_gpu == 0) {
            printf("skipped: no GPU\n");
            return CHECK_SKIP;
        }
    }
    log_set_level(LOG_WARN);
    const char *src = getenv("RECALL_SOURCE_DIR");
    char dir[1024], err[512] = "";
    snprintf(dir, sizeof dir, "%s/models/default", src ? src : ".");
    model_t *m = NULL;
    model_backend_t *b = NULL;
    rc_t rc = model_load(dir, 0, &m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "model_load %s: %s", dir, err);
    if (rc) return check_summary();
    if (device) {
        rc = model_backend_open(m, device, &b, err, sizeof err);
        CHECK_MSG(rc == RC_OK, "model_backend_open %s: %s", device, err);
        if (rc) goto out;
    }
    printf("%s, %d continuations of %d tokens\n", device ? device : "cpu", N_GOLDEN, N_GEN);
    for (int i = 0; i < N_GOLDEN; i++) {
        const golden_t *g = &goldens[i];
        char *prompt = prompt_of(i), *text = NULL;
        int32_t *ids = NULL, gen[N_GEN];
        size_t n = 0;
        CHECK(prompt != NULL);
        if (!prompt) break;
        rc = continue_prompt(m, b, prompt, &ids, &n, gen, &text);
        CHECK_RC(rc, RC_OK);
        if (rc == RC_OK && print) {
            printf("    {\"%s\",\n     %zu,\n     {", g->name, n);
            for (int k = 0; k < N_GEN; k++)
                printf("%s%d", k ? ", " : "", (int)gen[k]);
            printf("},\n     ");
            print_c_string(text);
            printf("},\n");
            char path[64];
            snprintf(path, sizeof path, "golden-%d.bin", i);
            FILE *f = fopen(path, "wb");
            CHECK(f && fwrite(ids, sizeof *ids, n, f) == n && !fclose(f));
        } else if (rc == RC_OK) {
            CHECK_MSG(n == g->n_prompt, "%s: the prompt is %zu tokens, pinned %zu", g->name, n,
                      g->n_prompt);
            int first_diff = -1;
            for (int k = 0; k < N_GEN && first_diff < 0; k++)
                if (gen[k] != g->gen[k]) first_diff = k;
            CHECK_MSG(first_diff < 0, "%s: token %d is %d, pinned %d", g->name, first_diff,
                      first_diff < 0 ? 0 : (int)gen[first_diff],
                      first_diff < 0 ? 0 : (int)g->gen[first_diff]);
            CHECK_MSG(!strcmp(text, g->text), "%s: the text is '%s', pinned '%s'", g->name, text,
                      g->text);
            printf("%s: '%s'\n", g->name, text);
        }
        free(prompt);
        free(ids);
        free(text);
    }
out:
    model_backend_close(&b);
    model_destroy(&m);
    return check_summary();
}
