/* recall_score — recall's side of the reference-parity tests (tests/ref/parity.py).
 *
 * Same command line as tests/ref/longllama_ref.py, so the two can be run on the same
 * inputs and their outputs compared byte for byte:
 *
 *   recall_score --model DIR --tokens IN.bin [--window W] [--mem-dtype f32|bf16|f16]
 *                [--no-memory] [--logprobs OUT.bin] [--generate N --gen-out OUT.bin]
 *
 * IN.bin holds int32 little-endian token ids. --logprobs writes n-1 float32 values,
 * logprob[i] = log p(tok[i+1] | tok[..i]); --generate feeds the whole input as a prompt and
 * continues it greedily for N tokens (int32 ids to --gen-out). Only public APIs are used:
 * model_load and the model_stream_* calls, exactly as a session would drive them. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "kernels/cpu.h"
#include "model/model.h"
#include "model/stream.h"

typedef struct args {
    const char *model, *tokens, *logprobs, *gen_out;
    int window, generate, no_memory, mem_dtype_set;
    dtype_t mem_dtype;
} args_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: recall_score --model DIR --tokens IN.bin [--window W] "
               "[--mem-dtype f32|bf16|f16]\n"
               "                    [--no-memory] [--logprobs OUT.bin] "
               "[--generate N --gen-out OUT.bin]\n");
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
    if (a->generate && !a->gen_out) {
        fprintf(stderr, "recall_score: --generate needs --gen-out\n");
        return -1;
    }
    if (!a->logprobs && !a->generate) {
        fprintf(stderr, "recall_score: nothing to do: give --logprobs and/or --generate\n");
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
    rc = model_stream_opts_resolve(m, &o, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recall_score: %s: %s\n", rc_strerror(rc), err);
        goto done;
    }
    int vocab = model_get_config(m)->vocab_size;
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
        if ((rc = model_stream_create(m, &o, &s))) goto fail_rc;
        if (feed(s, tok, n, lp, NULL)) goto done;
        if (write_file(a.logprobs, lp, (n - 1) * sizeof *lp)) goto done;
        model_stream_destroy(&s);
    }
    if (a.generate) {
        logits = malloc((size_t)vocab * sizeof *logits); /* [vocab] */
        gen = malloc((size_t)a.generate * sizeof *gen);  /* [generate] */
        if (!logits || !gen) goto oom;
        if ((rc = model_stream_create(m, &o, &s))) goto fail_rc;
        if (feed(s, tok, n, NULL, logits)) goto done;
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
    model_destroy(&m);
    free(tok);
    free(gen);
    free(lp);
    free(logits);
    return ret;
}
