/* recall_score — recall's side of the reference-parity tests (tests/ref/parity.py).
 *
 * Same command line as tests/ref/longllama_ref.py, so the two can be run on the same
 * inputs and their outputs compared byte for byte:
 *
 *   recall_score --model DIR --tokens IN.bin [--window W] [--mem-dtype f32|bf16|f16]
 *                [--no-memory] [--logprobs OUT.bin] [--generate N --gen-out OUT.bin]
 *                [--positional rope|self-extend|dca] [--group G] [--neighbor W]
 *                [--chunk-size S] [--local-window w] [--no-chunk-scale]
 *                [--rope-scaling none|linear|ntk|dynamic|yarn] [--rope-factor F]
 *                [--device cpu|cuda|cuda:N] [--knn K]
 *                [--positional clex] [--feeds N[,N...]] [--clex-table OUT.bin]
 *                [--positional gali] [--gali-mode paper|reference] [--gali-noise STD]
 *                [--seed N]
 *
 * The positional options are those of tests/ref/positional_ref.py (parity_positional.py)
 * and map one to one onto model_stream_opts_t; longllama_ref.py has only the first line.
 *
 * IN.bin holds int32 little-endian token ids. --logprobs writes n-1 float32 values,
 * logprob[i] = log p(tok[i+1] | tok[..i]); --generate feeds the whole input as a prompt and
 * continues it greedily for N tokens (int32 ids to --gen-out). --feeds gives the sizes of
 * successive model_stream_feed calls (the last size repeats; default: everything in one
 * call), which matters under CLEX and GALI only; each feed's last log-prob comes from its last
 * logits. --clex-table writes a CLEX checkpoint's frequency table (max_factor x head_dim/2
 * float32). Only public APIs are used:
 * model_load and the model_stream_* calls, exactly as a session would drive them. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cpu.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"

typedef struct args {
    const char *model, *tokens, *logprobs, *gen_out;
    const char *device; /* NULL: the CPU, as model_stream_create */
    int window, generate, no_memory, mem_dtype_set;
    dtype_t mem_dtype;
    positional_t positional;
    int group, neighbor, chunk_size, local_window, no_chunk_scale;
    int rope_scaling_set, rope_factor_set;
    int knn_k; /* 0: exact memory */
    rope_scaling_type_t rope_scaling;
    float rope_factor;
    int feeds[64], n_feeds; /* model_stream_feed sizes, the last repeating; 0: one feed */
    const char *clex_table;
    int local_window_set, gali_mode;
    float gali_noise;
    unsigned long long seed;
} args_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: recall_score --model DIR --tokens IN.bin [--window W] "
               "[--mem-dtype f32|bf16|f16]\n"
               "                    [--no-memory] [--logprobs OUT.bin] "
               "[--generate N --gen-out OUT.bin]\n"
               "                    [--positional rope|self-extend|dca] [--group G] "
               "[--neighbor W]\n"
               "                    [--chunk-size S] [--local-window w] [--no-chunk-scale]\n"
               "                    [--rope-scaling none|linear|ntk|dynamic|yarn] "
               "[--rope-factor F]\n"
               "                    [--device cpu|cuda|cuda:N] [--knn K]\n"
               "                    [--positional clex] [--feeds N[,N...]] "
               "[--clex-table OUT.bin]\n"
               "                    [--positional gali] [--gali-mode paper|reference] "
               "[--gali-noise STD] [--seed N]\n");
}

static int parse_int(const char *flag, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < 0 || v > 1 << 30) {
        fprintf(stderr, "recall_score: %s wants a non-negative integer, got '%s'\n", flag, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_factor(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !(v > 0.0f) || v > 1e6f) {
        fprintf(stderr, "recall_score: --rope-factor wants a positive number, got '%s'\n", s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_positional(const char *s, positional_t *out)
{
    if (!strcmp(s, "rope"))
        *out = POSITIONAL_ROPE;
    else if (!strcmp(s, "self-extend"))
        *out = POSITIONAL_SELF_EXTEND;
    else if (!strcmp(s, "dca"))
        *out = POSITIONAL_DCA;
    else if (!strcmp(s, "clex"))
        *out = POSITIONAL_CLEX;
    else if (!strcmp(s, "gali"))
        *out = POSITIONAL_GALI;
    else {
        fprintf(stderr,
                "recall_score: unknown --positional '%s' (rope, self-extend, dca, clex, gali)\n",
                s);
        return -1;
    }
    return 0;
}

static int parse_scaling(const char *s, rope_scaling_type_t *out)
{
    static const struct {
        const char *name;
        rope_scaling_type_t t;
    } names[] = {{"none", ROPE_SCALING_NONE},       {"linear", ROPE_SCALING_LINEAR},
                 {"ntk", ROPE_SCALING_NTK},         {"dynamic", ROPE_SCALING_DYNAMIC},
                 {"yarn", ROPE_SCALING_YARN}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!strcmp(s, names[i].name)) {
            *out = names[i].t;
            return 0;
        }
    }
    fprintf(stderr,
            "recall_score: unknown --rope-scaling '%s' (none, linear, ntk, dynamic, yarn)\n", s);
    return -1;
}

static int parse_args(int argc, char **argv, args_t *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        int has_val = i + 1 < argc;
        if (!strcmp(f, "--no-memory")) {
            a->no_memory = 1;
            continue;
        }
        if (!strcmp(f, "--no-chunk-scale")) {
            a->no_chunk_scale = 1;
            continue;
        }
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!has_val) {
            fprintf(stderr, "recall_score: %s needs a value\n", f);
            return -1;
        }
        const char *v = argv[++i];
        if (!strcmp(f, "--model")) {
            a->model = v;
        } else if (!strcmp(f, "--device")) {
            a->device = v;
        } else if (!strcmp(f, "--clex-table")) {
            a->clex_table = v;
        } else if (!strcmp(f, "--feeds")) {
            const char *p = v;
            while (*p) {
                char *end;
                long x = strtol(p, &end, 10);
                if (end == p || x < 1 || x > 1 << 30 || (*end && *end != ',') ||
                    a->n_feeds == (int)(sizeof a->feeds / sizeof a->feeds[0])) {
                    fprintf(stderr,
                            "recall_score: --feeds wants up to 64 positive sizes, "
                            "comma-separated, got '%s'\n",
                            v);
                    return -1;
                }
                a->feeds[a->n_feeds++] = (int)x;
                p = *end ? end + 1 : end;
            }
        } else if (!strcmp(f, "--tokens")) {
            a->tokens = v;
        } else if (!strcmp(f, "--logprobs")) {
            a->logprobs = v;
        } else if (!strcmp(f, "--gen-out")) {
            a->gen_out = v;
        } else if (!strcmp(f, "--window")) {
            if (parse_int(f, v, &a->window)) return -1;
        } else if (!strcmp(f, "--generate")) {
            if (parse_int(f, v, &a->generate)) return -1;
        } else if (!strcmp(f, "--positional")) {
            if (parse_positional(v, &a->positional)) return -1;
        } else if (!strcmp(f, "--group")) {
            if (parse_int(f, v, &a->group)) return -1;
        } else if (!strcmp(f, "--neighbor")) {
            if (parse_int(f, v, &a->neighbor)) return -1;
        } else if (!strcmp(f, "--chunk-size")) {
            if (parse_int(f, v, &a->chunk_size)) return -1;
        } else if (!strcmp(f, "--local-window")) {
            if (parse_int(f, v, &a->local_window)) return -1;
            a->local_window_set = 1;
        } else if (!strcmp(f, "--gali-mode")) {
            if (!strcmp(v, "paper"))
                a->gali_mode = GALI_MODE_PAPER;
            else if (!strcmp(v, "reference"))
                a->gali_mode = GALI_MODE_REFERENCE;
            else {
                fprintf(stderr, "recall_score: unknown --gali-mode '%s' (paper, reference)\n", v);
                return -1;
            }
        } else if (!strcmp(f, "--gali-noise")) {
            char *end;
            a->gali_noise = strtof(v, &end);
            if (*end || end == v) {
                fprintf(stderr, "recall_score: --gali-noise wants a number, got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(f, "--seed")) {
            char *end;
            errno = 0;
            a->seed = strtoull(v, &end, 10);
            if (errno || *end || end == v) {
                fprintf(stderr, "recall_score: --seed wants a non-negative integer, got '%s'\n", v);
                return -1;
            }
        } else if (!strcmp(f, "--rope-scaling")) {
            if (parse_scaling(v, &a->rope_scaling)) return -1;
            a->rope_scaling_set = 1;
        } else if (!strcmp(f, "--rope-factor")) {
            if (parse_factor(v, &a->rope_factor)) return -1;
            a->rope_factor_set = 1;
        } else if (!strcmp(f, "--knn")) {
            if (parse_int(f, v, &a->knn_k) || a->knn_k < 1) {
                fprintf(stderr, "recall_score: --knn wants k >= 1\n");
                return -1;
            }
        } else if (!strcmp(f, "--mem-dtype")) {
            if (dtype_parse(v, &a->mem_dtype)) {
                fprintf(stderr, "recall_score: unknown --mem-dtype '%s' (f32, bf16, f16)\n", v);
                return -1;
            }
            a->mem_dtype_set = 1;
        } else {
            fprintf(stderr, "recall_score: unknown option %s\n", f);
            return -1;
        }
    }
    if (!a->model || !a->tokens) {
        fprintf(stderr, "recall_score: --model and --tokens are required\n");
        return -1;
    }
    /* A factor alone would silently apply to whatever scaling the config names. */
    if (a->rope_factor_set && !a->rope_scaling_set) {
        fprintf(stderr, "recall_score: --rope-factor needs --rope-scaling\n");
        return -1;
    }
    if (a->rope_scaling_set && a->rope_scaling != ROPE_SCALING_NONE && !a->rope_factor_set) {
        fprintf(stderr, "recall_score: --rope-scaling needs --rope-factor\n");
        return -1;
    }
    if (a->generate && !a->gen_out) {
        fprintf(stderr, "recall_score: --generate needs --gen-out\n");
        return -1;
    }
    if (!a->logprobs && !a->generate && !a->clex_table) {
        fprintf(stderr,
                "recall_score: nothing to do: give --logprobs, --generate or --clex-table\n");
        return -1;
    }
    return 0;
}

/* Reads a whole file of int32 LE ids (this code assumes a little-endian host, as x86 and
 * arm64 Linux are). *out is malloc'ed. */
static int read_tokens(const char *path, int32_t **out, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "recall_score: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1024, len = 0;
    int32_t *buf = malloc(cap * sizeof *buf);
    while (buf) {
        len += fread(buf + len, sizeof *buf, cap - len, f);
        if (len < cap) break;
        int32_t *nb = realloc(buf, 2 * cap * sizeof *buf);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || len == 0) {
        fprintf(stderr, "recall_score: %s: %s\n", path,
                !buf  ? "out of memory"
                : bad ? "read error"
                      : "no tokens");
        free(buf);
        return -1;
    }
    *out = buf;
    *n = len;
    return 0;
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f)) {
        fprintf(stderr, "recall_score: cannot write %s: %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    return 0;
}

static int feed(model_stream_t *s, const int32_t *tok, size_t n, float *lp, float *last)
{
    rc_t rc = model_stream_feed(s, tok, n, lp, last);
    if (rc) {
        fprintf(stderr, "recall_score: model_stream_feed: %s\n", rc_strerror(rc));
        return -1;
    }
    return 0;
}

/* Feeds tok[0..n) in calls of the --feeds sizes. lp [n] (optional): every feed's last entry,
 * which model_stream_feed leaves alone, is filled from that feed's logits (into last
 * [vocab], required then), in double as the backends do. */
static int feed_in_parts(const args_t *a, model_stream_t *s, const int32_t *tok, size_t n,
                         float *lp, float *last, int vocab)
{
    if (!a->n_feeds) return feed(s, tok, n, lp, last);
    size_t off = 0;
    for (int f = 0; off < n; f = f + 1 < a->n_feeds ? f + 1 : f) {
        size_t k = (size_t)a->feeds[f] < n - off ? (size_t)a->feeds[f] : n - off;
        if (feed(s, tok + off, k, lp ? lp + off : NULL, last)) return -1;
        off += k;
        if (lp && off < n) {
            float mx = -INFINITY;
            for (int j = 0; j < vocab; j++)
                if (last[j] > mx) mx = last[j];
            double sum = 0;
            for (int j = 0; j < vocab; j++)
                sum += exp((double)(last[j] - mx));
            lp[off - 1] = (float)((double)(last[tok[off]] - mx) - log(sum));
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    args_t a;
    if (parse_args(argc, argv, &a)) {
        usage(stderr);
        return 2;
    }
    int ret = 1;
    char err[512] = "";
    model_t *m = NULL;
    model_backend_t *b = NULL;
    model_stream_t *s = NULL;
    int32_t *tok = NULL, *gen = NULL;
    float *lp = NULL, *logits = NULL;
    size_t n = 0;

    if (read_tokens(a.tokens, &tok, &n)) goto done;
    rc_t rc = model_load(a.model, 1, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recall_score: %s: %s\n", rc_strerror(rc), err);
        goto done;
    }
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    o.window = a.window;
    o.mem_dtype_set = a.mem_dtype_set;
    o.mem_dtype = a.mem_dtype;
    o.disable_memory = a.no_memory;
    o.memory_knn = a.knn_k > 0;
    o.knn_k = a.knn_k;
    o.positional = a.positional;
    o.group = a.group;
    o.neighbor = a.neighbor;
    o.chunk_size = a.chunk_size;
    o.local_window = a.local_window;
    o.local_window_set = a.local_window_set;
    o.gali_mode = (gali_mode_t)a.gali_mode;
    o.gali_noise = a.gali_noise;
    o.gali_seed = a.seed;
    o.dca_no_scale = a.no_chunk_scale;
    o.rope_scaling_set = a.rope_scaling_set;
    o.rope_scaling = a.rope_scaling;
    o.rope_factor = a.rope_scaling_set && a.rope_scaling == ROPE_SCALING_NONE ? 1.0f
                                                                             : a.rope_factor;
    if (a.device && (rc = model_backend_open(m, a.device, &b, err, sizeof err))) {
        fprintf(stderr, "recall_score: %s: %s\n", rc_strerror(rc), err);
        goto done;
    }
    rc = model_stream_opts_resolve(m, &o, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recall_score: %s: %s\n", rc_strerror(rc), err);
        goto done;
    }
    int vocab = model_get_config(m)->vocab_size;
    if (a.clex_table) {
        int rows, cols;
        const float *tab = model_clex_table(m, &rows, &cols);
        if (!tab) {
            fprintf(stderr, "recall_score: --clex-table: %s is not a CLEX checkpoint\n", a.model);
            goto done;
        }
        if (write_file(a.clex_table, tab, (size_t)rows * cols * sizeof *tab)) goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (tok[i] < 0 || tok[i] >= vocab) {
            fprintf(stderr,
                    "recall_score: %s: token %zu is id %d, outside the vocabulary [0, %d)\n",
                    a.tokens, i, (int)tok[i], vocab);
            goto done;
        }
    }

    if (a.logprobs) {
        lp = malloc(n * sizeof *lp); /* [n]; the last entry is not an output */
        if (!lp) goto oom;
        logits = malloc((size_t)vocab * sizeof *logits); /* [vocab] */
        if (!logits) goto oom;
        rc = b ? model_stream_create_on(b, &o, &s) : model_stream_create(m, &o, &s);
        if (rc) goto fail_rc;
        if (feed_in_parts(&a, s, tok, n, lp, a.n_feeds ? logits : NULL, vocab)) goto done;
        if (write_file(a.logprobs, lp, (n - 1) * sizeof *lp)) goto done;
        model_stream_destroy(&s);
    }
    if (a.generate) {
        if (!logits) logits = malloc((size_t)vocab * sizeof *logits); /* [vocab] */
        gen = malloc((size_t)a.generate * sizeof *gen);               /* [generate] */
        if (!logits || !gen) goto oom;
        rc = b ? model_stream_create_on(b, &o, &s) : model_stream_create(m, &o, &s);
        if (rc) goto fail_rc;
        if (feed_in_parts(&a, s, tok, n, NULL, logits, vocab)) goto done;
        for (int i = 0; i < a.generate; i++) {
            gen[i] = cpu_argmax(logits, vocab);
            if (i + 1 < a.generate && feed(s, &gen[i], 1, NULL, logits)) goto done;
        }
        if (write_file(a.gen_out, gen, (size_t)a.generate * sizeof *gen)) goto done;
    }
    ret = 0;
    goto done;
fail_rc:
    fprintf(stderr, "recall_score: model_stream_create: %s\n", rc_strerror(rc));
    goto done;
oom:
    fprintf(stderr, "recall_score: out of memory\n");
done:
    model_stream_destroy(&s);
    model_backend_close(&b);
    model_destroy(&m);
    free(tok);
    free(gen);
    free(lp);
    free(logits);
    return ret;
}
