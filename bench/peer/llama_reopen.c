// llama_reopen.c — llama.cpp's way of reopening a long context, timed, for comparison with
// recall's session re-open (start-up, then the first answer after a restart).
//
//   llama_reopen save    MODEL.gguf N_TOKENS STATE_FILE [options]
//   llama_reopen restore MODEL.gguf STATE_FILE [options]
//
// save: prefills N_TOKENS pseudo-random token ids into sequence 0 and writes that sequence's
// state (its KV cache and the token ids) with llama_state_seq_save_file, which is what
// llama-server's /slots?action=save does. It then asks the question itself, so the first
// token a restore should reproduce is on record.
// restore: a fresh process loads the model, makes a context, reads the state back with
// llama_state_seq_load_file, decodes a short question after the restored tokens and takes
// the first answer token greedily (argmax of the logits).
//
// Each prints one JSON line on stdout; llama.cpp's own log goes to stderr. Exit status 0 on
// success, 1 on any failure (with a line saying which call failed), 2 on bad usage.
//
// Options (both commands):
//   --ngl N              layers on the GPU (99: all, 0: CPU; the KV cache follows the layers)
//   --seed S             token ids of the context (save) and of the question (both) [1]
//   --question-tokens Q  question length [32]
//   --batch B            n_batch = n_ubatch [2048]
//   --fa 0|1             flash attention [1]; the KV layout depends on it (V is stored
//                        transposed without it), so save and restore must agree
//   --threads T          CPU threads [all online cores]
//   --cold               (restore) first ask the kernel to drop the model's and the state
//                        file's cached pages (fdatasync + POSIX_FADV_DONTNEED), so the
//                        restore reads from disk rather than the page cache
//
// Token ids are drawn from [3, n_vocab): 0-2 are <unk>, <s>, </s> in LLaMA vocabularies.
// The text is meaningless, which does not matter here: the cost of prefill, of saving and
// restoring a KV cache and of one decode step does not depend on what the tokens say.

#define _POSIX_C_SOURCE 200809L

#include "llama.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// Context room past the stored tokens and the question: the answer token, and slack.
#define CTX_SLACK 64

struct opts {
    int ngl;
    uint64_t seed;
    int n_question;
    int n_batch;
    int fa;
    int threads;
    int cold;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Prints "llama_reopen: <message>" on stderr and returns 1, so callers can `return fail(...)`.
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("llama_reopen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

// splitmix64: a fixed, documented sequence, so save and restore agree on ids across runs
// and machines without sharing anything but the seed.
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// n ids in [3, n_vocab). The question uses a stream of its own (seed + 1), so its ids do not
// depend on how many context tokens were drawn.
static void random_tokens(llama_token *out, int n, uint64_t seed, int n_vocab) {
    uint64_t s = seed;
    for (int i = 0; i < n; i++)
        out[i] = 3 + (llama_token)(next_u64(&s) % (uint64_t)(n_vocab - 3));
}

static struct llama_model *load_model(const char *path, const struct opts *o) {
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = o->ngl;
    return llama_model_load_from_file(path, mp);
}

static struct llama_context *make_context(struct llama_model *model, uint32_t n_ctx,
                                          const struct opts *o) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = (uint32_t)o->n_batch;
    cp.n_ubatch = (uint32_t)o->n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = o->threads;
    cp.n_threads_batch = o->threads;
    cp.flash_attn_type = o->fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    return llama_init_from_model(model, cp);
}

// Decodes tokens[0..n) into sequence 0 at positions pos0.., n_batch at a time. Only the last
// token's logits are asked for (want_logits), the rest of the prefill produces none. Returns
// after the device has finished (llama_decode may return before the GPU is done), so the
// caller's clock covers the work.
static int decode(struct llama_context *ctx, struct llama_batch *b, const llama_token *tokens,
                  int n, llama_pos pos0, int n_batch, int want_logits) {
    for (int done = 0; done < n;) {
        int m = n - done < n_batch ? n - done : n_batch;
        for (int i = 0; i < m; i++) {
            b->token[i] = tokens[done + i];
            b->pos[i] = pos0 + done + i;
            b->n_seq_id[i] = 1;
            b->seq_id[i][0] = 0;
            b->logits[i] = want_logits && done + i == n - 1;
        }
        b->n_tokens = m;
        int rc = llama_decode(ctx, *b);
        if (rc != 0)
            return fail("llama_decode failed (rc %d) at tokens %d..%d", rc, done, done + m - 1);
        done += m;
    }
    llama_synchronize(ctx);
    return 0;
}

// The greedy answer to what was just decoded, or -1 if llama.cpp has no logits for it.
static llama_token argmax_last(struct llama_context *ctx, int n_vocab) {
    const float *logits = llama_get_logits_ith(ctx, -1); // [n_vocab], owned by ctx
    if (!logits)
        return -1;
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

// Checks that the sequence holds exactly positions 0..n-1 (all of the prefill, nothing else).
static int check_seq(struct llama_context *ctx, int n) {
    llama_memory_t mem = llama_get_memory(ctx);
    llama_pos lo = llama_memory_seq_pos_min(mem, 0), hi = llama_memory_seq_pos_max(mem, 0);
    if (lo != 0 || hi != n - 1)
        return fail("sequence 0 holds positions %d..%d, expected 0..%d", lo, hi, n - 1);
    return 0;
}

// Drops the cached pages of path (best effort by the kernel's rules: only clean pages go,
// hence the fdatasync first). Not part of any timing.
static int drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("--cold: cannot open %s", path);
    int rc = fdatasync(fd);
    if (rc == 0)
        rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc == 0 ? 0 : fail("--cold: cannot drop the cached pages of %s", path);
}

static long long file_bytes(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int cmd_save(const char *model_path, int n_tokens, const char *state_path,
                    const struct opts *o) {
    int rc = 1;
    struct llama_model *model = NULL;
    struct llama_context *ctx = NULL;
    struct llama_batch batch = {0}; // llama_batch_free accepts it still zeroed
    llama_token *tokens = NULL;   // [n_tokens], the prefill
    llama_token *question = NULL; // [n_question]

    llama_backend_init();
    double t = now_s();
    model = load_model(model_path, o);
    if (!model) {
        fail("cannot load model %s", model_path);
        goto done;
    }
    double load_s = now_s() - t;
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    if (n_vocab <= 3) {
        fail("model vocabulary has %d tokens; need more than 3", n_vocab);
        goto done;
    }

    // save asks the question too; restore sizes its context by the same rule
    uint32_t n_ctx = (uint32_t)n_tokens + (uint32_t)o->n_question + CTX_SLACK;
    ctx = make_context(model, n_ctx, o);
    if (!ctx) {
        fail("cannot create a context of %u tokens", n_ctx);
        goto done;
    }
    batch = llama_batch_init(o->n_batch, 0, 1);
    tokens = malloc(sizeof *tokens * (size_t)n_tokens);
    question = malloc(sizeof *question * (size_t)o->n_question);
    if (!tokens || !question) {
        fail("out of memory for %d token ids", n_tokens);
        goto done;
    }
    random_tokens(tokens, n_tokens, o->seed, n_vocab);
    random_tokens(question, o->n_question, o->seed + 1, n_vocab);

    t = now_s();
    if (decode(ctx, &batch, tokens, n_tokens, 0, o->n_batch, 0))
        goto done;
    double prefill_s = now_s() - t;
    if (check_seq(ctx, n_tokens))
        goto done;

    t = now_s();
    size_t written = llama_state_seq_save_file(ctx, state_path, 0, tokens, (size_t)n_tokens);
    double save_s = now_s() - t;
    if (written == 0) {
        fail("llama_state_seq_save_file(%s) failed", state_path);
        goto done;
    }
    // llama.cpp closes the file without syncing it; what a durable session costs includes
    // getting it onto the disk, so that is timed on its own.
    t = now_s();
    int fd = open(state_path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        if (fd >= 0)
            close(fd);
        fail("cannot fsync %s", state_path);
        goto done;
    }
    close(fd);
    double fsync_s = now_s() - t;

    // The reference answer for restore: same question after the same context, no restart.
    if (decode(ctx, &batch, question, o->n_question, n_tokens, o->n_batch, 1))
        goto done;
    llama_token first = argmax_last(ctx, n_vocab);
    if (first < 0) {
        fail("no logits after the question");
        goto done;
    }

    printf("{\"mode\":\"save\",\"ngl\":%d,\"fa\":%d,\"tokens\":%d,\"n_ctx\":%u,\"load_s\":%.4f,"
           "\"prefill_s\":%.4f,\"prefill_tok_s\":%.1f,\"save_s\":%.4f,\"fsync_s\":%.4f,"
           "\"state_bytes\":%zu,\"first_token\":%d}\n",
           o->ngl, o->fa, n_tokens, llama_n_ctx(ctx), load_s, prefill_s,
           n_tokens / prefill_s, save_s, fsync_s, written, first);
    fflush(stdout);
    rc = 0;
done:
    free(question);
    free(tokens);
    llama_batch_free(batch);
    llama_free(ctx); // both NULL-safe
    llama_model_free(model);
    llama_backend_free();
    return rc;
}

// The token count stored in a sequence-state file, read before any context exists so the
// context can be made large enough. The layout (llama_context::state_seq_save_file): u32
// magic, u32 version, u32 n_tokens, the ids, then the state; little-endian as written.
static int read_state_header(const char *path, uint32_t *n_tokens) {
    uint32_t h[3];
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail("cannot open state file %s", path);
    size_t got = fread(h, sizeof h[0], 3, f);
    fclose(f);
    if (got != 3)
        return fail("%s is too short for a sequence-state file", path);
    if (h[0] != LLAMA_STATE_SEQ_MAGIC || h[1] != LLAMA_STATE_SEQ_VERSION)
        return fail("%s: magic/version %08x/%u, this llama.cpp writes %08x/%u", path, h[0], h[1],
                    (unsigned)LLAMA_STATE_SEQ_MAGIC, (unsigned)LLAMA_STATE_SEQ_VERSION);
    if (h[2] == 0)
        return fail("%s holds no tokens", path);
    *n_tokens = h[2];
    return 0;
}

static int cmd_restore(const char *model_path, const char *state_path, const struct opts *o) {
    int rc = 1;
    struct llama_model *model = NULL;
    struct llama_context *ctx = NULL;
    struct llama_batch batch = {0}; // llama_batch_free accepts it still zeroed
    llama_token *tokens = NULL;   // [n_stored], read back from the state file
    llama_token *question = NULL; // [n_question]

    uint32_t n_stored = 0;
    if (read_state_header(state_path, &n_stored))
        return 1;
    if (o->cold && (drop_cache(model_path) || drop_cache(state_path)))
        return 1;
    if (n_stored > (1u << 30))
        return fail("%s: %u tokens is more than this program handles", state_path, n_stored);

    // The clock starts here: after argument checks and the optional cache drop, before
    // anything a real restart would have to do.
    double t0 = now_s();
    llama_backend_init();
    model = load_model(model_path, o);
    if (!model) {
        fail("cannot load model %s", model_path);
        goto done;
    }
    double load_s = now_s() - t0;
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    if (n_vocab <= 3) {
        fail("model vocabulary has %d tokens; need more than 3", n_vocab);
        goto done;
    }

    double t = now_s();
    uint32_t n_ctx = n_stored + (uint32_t)o->n_question + CTX_SLACK;
    ctx = make_context(model, n_ctx, o);
    if (!ctx) {
        fail("cannot create a context of %u tokens", n_ctx);
        goto done;
    }
    double ctx_s = now_s() - t;

    t = now_s();
    tokens = malloc(sizeof *tokens * n_stored);
    if (!tokens) {
        fail("out of memory for %u token ids", n_stored);
        goto done;
    }
    size_t n_read = 0;
    size_t nbytes = llama_state_seq_load_file(ctx, state_path, 0, tokens, n_stored, &n_read);
    llama_synchronize(ctx);
    double restore_s = now_s() - t;
    if (nbytes == 0) {
        fail("llama_state_seq_load_file(%s) failed (see llama.cpp's message above)", state_path);
        goto done;
    }
    if (n_read != n_stored) {
        fail("%s: header says %u tokens, %zu were restored", state_path, n_stored, n_read);
        goto done;
    }
    if (check_seq(ctx, (int)n_stored))
        goto done;

    t = now_s();
    batch = llama_batch_init(o->n_batch, 0, 1);
    question = malloc(sizeof *question * (size_t)o->n_question);
    if (!question) {
        fail("out of memory");
        goto done;
    }
    random_tokens(question, o->n_question, o->seed + 1, n_vocab);
    if (decode(ctx, &batch, question, o->n_question, (llama_pos)n_stored, o->n_batch, 1))
        goto done;
    llama_token first = argmax_last(ctx, n_vocab);
    double t_end = now_s();
    if (first < 0) {
        fail("no logits after the question");
        goto done;
    }

    // Were these the ids save drew with this seed? (A different --seed on save is not an
    // error, only a restore whose first_token cannot be compared with save's.)
    int ids_match = 1;
    {
        llama_token *expect = malloc(sizeof *expect * n_stored);
        if (!expect) {
            fail("out of memory");
            goto done;
        }
        random_tokens(expect, (int)n_stored, o->seed, n_vocab);
        ids_match = memcmp(expect, tokens, sizeof *expect * n_stored) == 0;
        free(expect);
    }

    printf("{\"mode\":\"restore\",\"ngl\":%d,\"fa\":%d,\"cold\":%d,\"restored_tokens\":%u,"
           "\"question_tokens\":%d,\"n_ctx\":%u,\"load_s\":%.4f,\"ctx_s\":%.4f,"
           "\"restore_s\":%.4f,\"first_token_s\":%.4f,\"total_s\":%.4f,\"state_bytes\":%lld,"
           "\"first_token\":%d,\"ids_match_seed\":%s}\n",
           o->ngl, o->fa, o->cold, n_stored, o->n_question, llama_n_ctx(ctx), load_s, ctx_s,
           restore_s, t_end - t, t_end - t0, file_bytes(state_path), first,
           ids_match ? "true" : "false");
    fflush(stdout);
    rc = 0;
done:
    free(question);
    free(tokens);
    llama_batch_free(batch);
    llama_free(ctx); // both NULL-safe
    llama_model_free(model);
    llama_backend_free();
    return rc;
}

static int usage(void) {
    fprintf(stderr,
            "usage: llama_reopen save    MODEL.gguf N_TOKENS STATE_FILE [options]\n"
            "       llama_reopen restore MODEL.gguf STATE_FILE [options]\n"
            "options: --ngl N  --seed S  --question-tokens Q  --batch B  --fa 0|1  --threads T"
            "  --cold (restore)\n");
    return 2;
}

// A whole decimal number in [lo, hi], or -1 (every accepted value here is non-negative).
static long long parse_int(const char *s, long long lo, long long hi) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    return v;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return usage();
    int save = strcmp(argv[1], "save") == 0;
    if (!save && strcmp(argv[1], "restore") != 0)
        return usage();
    int n_pos = save ? 3 : 2; // positional arguments after the command
    if (argc < 2 + n_pos)
        return usage();

    long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct opts o = {.ngl = 99, .seed = 1, .n_question = 32, .n_batch = 2048, .fa = 1,
                     .threads = n_cpu > 0 ? (int)n_cpu : 4, .cold = 0};
    for (int i = 2 + n_pos; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--cold") == 0 && !save) {
            o.cold = 1;
            continue;
        }
        if (i + 1 >= argc)
            return usage();
        long long v = -1;
        const char *s = argv[++i];
        if (strcmp(a, "--ngl") == 0 && (v = parse_int(s, 0, 10000)) >= 0)
            o.ngl = (int)v;
        else if (strcmp(a, "--seed") == 0 && (v = parse_int(s, 0, INT64_MAX - 1)) >= 0)
            o.seed = (uint64_t)v;
        else if (strcmp(a, "--question-tokens") == 0 && (v = parse_int(s, 1, 4096)) >= 0)
            o.n_question = (int)v;
        else if (strcmp(a, "--batch") == 0 && (v = parse_int(s, 1, 1 << 16)) >= 0)
            o.n_batch = (int)v;
        else if (strcmp(a, "--fa") == 0 && (v = parse_int(s, 0, 1)) >= 0)
            o.fa = (int)v;
        else if (strcmp(a, "--threads") == 0 && (v = parse_int(s, 1, 1024)) >= 0)
            o.threads = (int)v;
        else {
            fprintf(stderr, "llama_reopen: bad option or value: %s %s\n", a, s);
            return usage();
        }
    }

    int n_tokens = 0;
    if (save) {
        long long v = parse_int(argv[3], 1, 1 << 30);
        if (v < 0) {
            fprintf(stderr, "llama_reopen: N_TOKENS must be a positive integer, got %s\n", argv[3]);
            return usage();
        }
        n_tokens = (int)v;
    }

    return save ? cmd_save(argv[2], n_tokens, argv[4], &o) : cmd_restore(argv[2], argv[3], &o);
}
