/* bench_gpu — the CUDA backend's model benchmarks at a real shape (bench/gpu_model.sh runs it
 * on a GPU host beside bench/hf_baseline.py, PyTorch's numbers for the same workloads).
 *
 *   bench_gpu --model DIR [--device cuda:0] [--window 2048] [--reps 5]
 *             [--decode-prompt 1920] [--decode-tokens 128] [--ingest 65536]
 *
 * (a) prefill: one window of `window` tokens into an empty local cache (memory off, no
 *     logits: what ingesting a window costs), timed from the feed call until its result is
 *     on the host; the median of --reps after one warm-up. tokens/s = window / median.
 * (b) decode: a prompt of --decode-prompt tokens, then --decode-tokens greedy steps, each a
 *     one-token forward with its logits copied to the host and argmax on the host; the local
 *     context grows from decode-prompt to decode-prompt + decode-tokens (≈ 2048).
 *     tokens/s = steps / total time.
 * (c) ingest: --ingest tokens in windows of `window` with memory on (exact memory: every
 *     window's memory layers attend to all earlier windows' keys), each window flushed into
 *     memory as a session does. tokens/s over the whole run; peak device memory in use
 *     (cudaMemGetInfo after every window: weights, caches, the memory mirror, cuBLAS and
 *     CUDA's own context included).
 * Tokens are random ids (seeded), never zeros. Output: one "key value" line per number, for
 * the script's summary. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "kernels/cpu.h"
#include "kernels/cuda.h"
#include "memory/store.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int parse_pos(const char *flag, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v <= 0 || v > 1 << 28) {
        fprintf(stderr, "bench_gpu: %s wants a positive integer, got '%s'\n", flag, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

#define DIE(...)                                                                               \
    do {                                                                                       \
        fprintf(stderr, "bench_gpu: " __VA_ARGS__);                                            \
        fputc('\n', stderr);                                                                   \
        goto done;                                                                             \
    } while (0)

int main(int argc, char **argv)
{
    const char *dir = NULL, *device = "cuda:0";
    int window = 2048, reps = 5, dprompt = 1920, dtokens = 128, ingest = 65536;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_gpu: %s needs a value\n", f);
            return 2;
        }
        i++;
        int bad = 0;
        if (!strcmp(f, "--model")) dir = v;
        else if (!strcmp(f, "--device")) device = v;
        else if (!strcmp(f, "--window")) bad = parse_pos(f, v, &window);
        else if (!strcmp(f, "--reps")) bad = parse_pos(f, v, &reps);
        else if (!strcmp(f, "--decode-prompt")) bad = parse_pos(f, v, &dprompt);
        else if (!strcmp(f, "--decode-tokens")) bad = parse_pos(f, v, &dtokens);
        else if (!strcmp(f, "--ingest")) bad = parse_pos(f, v, &ingest);
        else {
            fprintf(stderr, "bench_gpu: unknown option %s\n", f);
            return 2;
        }
        if (bad) return 2;
    }
    if (!dir) {
        fprintf(stderr, "usage: bench_gpu --model DIR [--device cuda:N] [--window W] [--reps R]"
                        " [--decode-prompt P] [--decode-tokens T] [--ingest N]\n");
        return 2;
    }
    int ret = 1;
    char err[512];
    model_t *m = NULL;
    model_backend_t *b = NULL;
    model_stream_t *s = NULL;
    int32_t *tok = NULL;
    float *logits = NULL;
    double *times = NULL;

    double t0 = now_s();
    rc_t rc = model_load(dir, 1, &m, err, sizeof err);
    if (rc) DIE("%s", err);
    double t1 = now_s();
    rc = model_backend_open(m, device, &b, err, sizeof err);
    if (rc) DIE("%s", err);
    double t2 = now_s();
    printf("model %s\n", model_describe(m));
    printf("device %s\n", model_backend_describe(b));
    printf("load_s %.2f\nupload_s %.2f\n", t1 - t0, t2 - t1);
    const model_config_t *c = model_get_config(m);
    if (dprompt + dtokens > window) DIE("decode-prompt + decode-tokens exceeds the window");

    const size_t n_tok = (size_t)(ingest > window ? ingest : window);
    tok = malloc(n_tok * sizeof *tok);
    logits = malloc((size_t)c->vocab_size * sizeof *logits);
    times = malloc((size_t)(reps > dtokens ? reps : dtokens) * sizeof *times);
    if (!tok || !logits || !times) DIE("out of memory");
    uint64_t r = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < n_tok; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        tok[i] = 3 + (int32_t)((r >> 11) % (uint64_t)(c->vocab_size - 3));
    }
    model_stream_opts_t o;
    memset(&o, 0, sizeof o);
    o.window = window;

    /* (a) prefill: memory off, the cache emptied by a rewind (no flush) between reps. */
    model_stream_opts_t op = o;
    op.disable_memory = 1;
    if ((rc = model_stream_create_on(b, &op, &s))) DIE("stream: %s", rc_strerror(rc));
    model_stream_mark_t empty = model_stream_get_mark(s);
    for (int i = -1; i < reps; i++) {
        double a = now_s();
        if ((rc = model_stream_feed(s, tok, (size_t)window, NULL, NULL)))
            DIE("prefill: %s", rc_strerror(rc));
        double e = now_s() - a;
        if (i >= 0) times[i] = e;
        model_stream_rewind(s, empty);
    }
    qsort(times, (size_t)reps, sizeof *times, cmp_double);
    const double pre = times[reps / 2];
    printf("prefill_ms %.3f\nprefill_min_ms %.3f\nprefill_tok_s %.0f\n", pre * 1e3,
           times[0] * 1e3, window / pre);
    /* The projections' share of the work (attention and lm_head excluded): 2 flops per
     * weight per token. */
    const double proj = (double)c->n_layers * c->hidden *
                        (2.0 * c->n_heads * c->head_dim + 2.0 * c->n_kv_heads * c->head_dim +
                         3.0 * c->ffn);
    printf("prefill_proj_tflops %.1f\n", 2.0 * proj * window / pre / 1e12);

    /* (b) decode after a prompt, greedy, logits to the host every step. */
    if ((rc = model_stream_feed(s, tok, (size_t)dprompt, NULL, logits)))
        DIE("decode prompt: %s", rc_strerror(rc));
    for (int i = 0; i < 4; i++) { /* warm-up steps, then back to the prompt */
        int32_t t = cpu_argmax(logits, c->vocab_size);
        if ((rc = model_stream_feed(s, &t, 1, NULL, logits))) DIE("decode: %s", rc_strerror(rc));
    }
    model_stream_rewind(s, empty);
    if ((rc = model_stream_feed(s, tok, (size_t)dprompt, NULL, logits)))
        DIE("decode prompt: %s", rc_strerror(rc));
    double d0 = now_s();
    for (int i = 0; i < dtokens; i++) {
        double a = now_s();
        int32_t t = cpu_argmax(logits, c->vocab_size);
        if ((rc = model_stream_feed(s, &t, 1, NULL, logits))) DIE("decode: %s", rc_strerror(rc));
        times[i] = now_s() - a;
    }
    const double dec = now_s() - d0;
    qsort(times, (size_t)dtokens, sizeof *times, cmp_double);
    printf("decode_ms_per_token %.3f\ndecode_median_ms %.3f\ndecode_tok_s %.1f\n",
           dec / dtokens * 1e3, times[dtokens / 2] * 1e3, dtokens / dec);
    model_stream_destroy(&s);

    /* (c) ingest with exact memory. */
    if ((rc = model_stream_create_on(b, &o, &s))) DIE("stream: %s", rc_strerror(rc));
    size_t peak = 0, used = 0, total = 0;
    double first_w = 0, last_w = 0, feed_t = 0, flush_t = 0;
    const double i0 = now_s();
    for (int done = 0; done < ingest; done += window) {
        const int n = ingest - done < window ? ingest - done : window;
        double a = now_s();
        if ((rc = model_stream_feed(s, tok + done, (size_t)n, NULL, NULL)))
            DIE("ingest at %d: %s", done, rc_strerror(rc));
        double f = now_s();
        if ((rc = model_stream_flush(s))) DIE("ingest flush at %d: %s", done, rc_strerror(rc));
        double e = now_s() - a;
        feed_t += f - a;
        flush_t += e - (f - a);
        if (!done) first_w = e;
        last_w = e;
        if (cuda_memory_used(&used, &total) == RC_OK && used > peak) peak = used;
    }
    const double ing = now_s() - i0;
    printf("ingest_tokens %d\ningest_s %.3f\ningest_tok_s %.0f\n", ingest, ing, ingest / ing);
    printf("ingest_first_window_ms %.1f\ningest_last_window_ms %.1f\n", first_w * 1e3,
           last_w * 1e3);
    /* Where the time goes: the forwards (GPU) vs the flushes (memory rows to the host store:
     * device copy, download, host append into freshly grown memory). */
    printf("ingest_feed_s %.3f\ningest_flush_s %.3f\n", feed_t, flush_t);
    {
        /* The host's cost of writing into fresh pages (what a flush's append does): one
         * copy into new memory, then the same copy again into the now-touched memory. */
        const size_t nb = (size_t)256 << 20;
        char *src = malloc(nb), *dst = malloc(nb);
        if (src && dst) {
            memset(src, 1, nb);
            double h0 = now_s();
            memcpy(dst, src, nb);
            double h1 = now_s();
            memcpy(dst, src, nb);
            double h2 = now_s();
            unsigned sum = 0; /* reads the copy, so that it cannot be optimized away */
            for (size_t i = 0; i < nb; i += 4096) sum += (unsigned char)dst[i];
            printf("host_copy_fresh_gb_s %.2f\nhost_copy_touched_gb_s %.2f\nhost_copy_check %u\n",
                   nb / (h1 - h0) / 1e9, nb / (h2 - h1) / 1e9, sum);
        }
        free(src);
        free(dst);
    }
    printf("ingest_mem_rows %zu\ningest_host_memory_gb %.2f\n",
           memory_store_len(model_stream_memory(s)),
           memory_store_bytes(model_stream_memory(s)) / 1e9);
    printf("ingest_peak_gpu_gb %.2f\ngpu_total_gb %.2f\n", peak / 1e9, total / 1e9);
    ret = 0;
done:
    model_stream_destroy(&s);
    model_backend_close(&b);
    model_destroy(&m);
    free(tok);
    free(logits);
    free(times);
    return ret;
}
