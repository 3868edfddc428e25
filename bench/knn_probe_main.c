/* bench_knn_probe — how close knn memory comes to exact attention on the GPU, as memory
 * grows: ingests a text (or random tokens) into one knn stream on a CUDA device, window by
 * window as a session would, with the probe of bench/knn_probe.h installed as the
 * backend's knn observer (model/knn_observe.h). At each threshold it logs one
 * `knn-probe ...` line per memory layer (knn_probe.h lists the fields). bench/README.md
 * has the figures this printed.
 *
 *   bench_knn_probe --model DIR --tokens N --at 64k,256k,1m [--heads H] [--text FILE]
 *                   [--k K] [--window W] [--nlist N] [--nprobe N] [--device cuda:N] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"
#include "model/tokenizer.h"

#ifdef RECALL_HAVE_CUDA
#include "bench/knn_probe.h"

static int due(void *ctx, int mem_layer, size_t rows, int n)
{
    return n >= 2 && knn_probe_due(ctx, mem_layer, rows); /* prefill chunks only */
}

static void observe(void *ctx, const knn_observe_in_t *in)
{
    (void)knn_probe_run(ctx, in); /* logs its line, or why it failed */
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_knn_probe --model DIR --tokens N --at ROWS[,ROWS...] [--heads H]\n"
               "                       [--text FILE] [--k K] [--window W] [--nlist N] "
               "[--nprobe N]\n"
               "                       [--device cuda:N]\n"
               "  --at      memory row counts to probe at (k = x1024, m = x2^20), e.g. "
               "64k,256k,1m\n"
               "  --heads   build the probe's IVF index over this many kv heads (default all: "
               "minutes per layer at 1M rows of a 3B model)\n"
               "  --text    ingest this file's tokens, repeated to N (default: random tokens)\n");
}

static int read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = *buf && n > 0 ? fread(*buf, 1, (size_t)n, f) : 0;
    fclose(f);
    return *buf && (long)*len == n ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *at = NULL, *text = NULL, *device = "cuda";
    long tokens = 0;
    int heads = 0;
    model_stream_opts_t o = {.memory_knn = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--model")) dir = v;
        else if (!strcmp(a, "--tokens")) tokens = atol(v);
        else if (!strcmp(a, "--at")) at = v;
        else if (!strcmp(a, "--heads")) heads = atoi(v);
        else if (!strcmp(a, "--text")) text = v;
        else if (!strcmp(a, "--k")) o.knn_k = atoi(v);
        else if (!strcmp(a, "--window")) o.window = atoi(v);
        else if (!strcmp(a, "--nlist")) o.knn_nlist = atoi(v);
        else if (!strcmp(a, "--nprobe")) o.knn_nprobe = atoi(v);
        else if (!strcmp(a, "--device")) device = v;
        else {
            fprintf(stderr, "bench_knn_probe: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!dir || tokens <= 0 || !at) {
        usage(stderr);
        return 2;
    }
    char err[512] = "";
    model_t *m = NULL;
    model_backend_t *b = NULL;
    model_stream_t *s = NULL;
    knn_probe_t *probe = NULL;
    int32_t *ids = NULL, *win = NULL;
    size_t n_ids = 0;
    int ret = 1;
    if (model_load(dir, text == NULL, &m, err, sizeof err)) goto out;
    const model_config_t *c = model_get_config(m);
    if (!c->n_mem_layers) {
        snprintf(err, sizeof err, "%s has no memory layers", dir);
        goto out;
    }
    if (knn_probe_create(at, heads, c->n_mem_layers, &probe)) {
        snprintf(err, sizeof err, "--at '%s' is not a list of row counts (e.g. 64k,256k,1m)", at);
        goto out;
    }
    if (model_backend_open(m, device, &b, err, sizeof err)) goto out;
    if (model_stream_create_with(b, &o, NULL, NULL, &s, err, sizeof err)) goto out;
    const knn_observer_t obs = {.due = due, .observe = observe, .ctx = probe};
    backend_cuda_observe_knn(&obs);
    if (text) {
        char *buf = NULL;
        size_t len = 0;
        if (read_file(text, &buf, &len)) {
            snprintf(err, sizeof err, "cannot read %s: %s", text, strerror(errno));
            free(buf);
            goto out;
        }
        rc_t rc = tokenizer_encode(model_get_tokenizer(m), buf, len, 1, &ids, &n_ids);
        free(buf);
        if (rc || !n_ids) {
            snprintf(err, sizeof err, "cannot tokenize %s: %s", text, rc_strerror(rc));
            goto out;
        }
    }
    const int W = model_stream_window(s);
    if (!(win = malloc((size_t)W * sizeof *win))) goto out;
    printf("bench_knn_probe: %s on %s, window %d, k %d, %ld tokens of %s, probes at %s\n",
           model_describe(m), model_backend_describe(b), W, o.knn_k ? o.knn_k : 128, tokens,
           text ? text : "random tokens", at);
    unsigned seed = 1;
    size_t pos = 0;
    const double t0 = clock_now_s();
    for (long done = 0; done < tokens; done += W) {
        const int n = tokens - done < W ? (int)(tokens - done) : W;
        for (int i = 0; i < n; i++) {
            win[i] = ids ? ids[pos] : (int32_t)(rand_r(&seed) % (unsigned)c->vocab_size);
            pos = ids && pos + 1 < n_ids ? pos + 1 : 0;
        }
        rc_t rc = model_stream_feed(s, win, (size_t)n, NULL, NULL);
        if (!rc) rc = model_stream_flush(s);
        if (rc) {
            snprintf(err, sizeof err, "ingest failed at token %ld: %s", done, rc_strerror(rc));
            goto out;
        }
        if ((done / W) % 64 == 63)
            log_info("bench_knn_probe: %ld tokens in %.1f s", done + n, clock_now_s() - t0);
    }
    printf("bench_knn_probe: %ld tokens in %.1f s (probes included)\n", tokens,
           clock_now_s() - t0);
    ret = 0;
out:
    backend_cuda_observe_knn(NULL);
    if (ret && err[0]) fprintf(stderr, "bench_knn_probe: %s\n", err);
    free(win);
    free(ids);
    model_stream_destroy(&s);
    model_backend_close(&b);
    knn_probe_destroy(&probe);
    model_destroy(&m);
    return ret;
}
#else
int main(void)
{
    fprintf(stderr, "bench_knn_probe: this build has no CUDA backend\n");
    return 1;
}
#endif
