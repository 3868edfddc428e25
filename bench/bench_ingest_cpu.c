/* bench_ingest_cpu — ingest throughput of the CPU backend as FoT memory grows.
 *
 * Streams random tokens through a model window by window (as a session ingests) and
 * reports tokens/s measured over the windows around each memory size, so the table shows
 * how the cost of attending to all memory grows (exact memory), or of the kNN tier (knn:
 * Faiss flat search below 32k rows, IVF lists beyond; the table then shows the retraining
 * at 32k and 128k rows in the block that crosses them).
 *   bench_ingest_cpu MODEL_DIR [MAX_MEMORY_TOKENS (default 65536)] [knn [K (default 128)]]
 * Run it with OMP_WAIT_POLICY=passive on a machine shared with other work (daemon/main.c
 * says why). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/model.h"
#include "model/stream.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (argc > 3 && strcmp(argv[3], "knn"))) {
        fprintf(stderr, "usage: %s MODEL_DIR [MAX_MEMORY_TOKENS] [knn [K]]\n", argv[0]);
        return 2;
    }
    long max_mem = argc > 2 ? atol(argv[2]) : 65536;
    const int knn = argc > 3, knn_k = argc > 4 ? atoi(argv[4]) : 0;
    char err[512];
    model_t *m = NULL;
    if (model_load(argv[1], 1, &m, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    const model_config_t *c = model_get_config(m);
    if (!c->n_mem_layers) {
        fprintf(stderr, "bench: %s has no memory layers; nothing to grow\n", argv[1]);
        return 1;
    }
    model_stream_opts_t o = {.memory_knn = knn, .knn_k = knn_k};
    model_stream_t *s = NULL;
    if (model_stream_create(m, &o, &s)) {
        fprintf(stderr, "bench: cannot create stream\n");
        return 1;
    }
    int W = model_stream_window(s);
    int32_t *tok = malloc(sizeof(int32_t) * W);
    unsigned seed = 1;
    printf("model: %s\nwindow %d, mem layers %d, memory %s, threads: OpenMP defaults\n",
           model_describe(m), W, c->n_mem_layers, knn ? "knn" : "exact");
    printf("%12s %12s %12s\n", "memory_tok", "tokens/s", "ms/window");
    long next = 1024;
    double t_block = now_s();
    long tokens_block = 0;
    for (;;) {
        for (int i = 0; i < W; i++) tok[i] = (int32_t)(rand_r(&seed) % c->vocab_size);
        model_stream_feed(s, tok, (size_t)W, NULL, NULL);
        model_stream_flush(s);
        tokens_block += W;
        long mem = (long)memory_store_len(model_stream_memory(s));
        /* Time a block of windows that ends at each power-of-two memory size. */
        if (mem >= next) {
            double dt = now_s() - t_block;
            printf("%12ld %12.0f %12.2f\n", mem, tokens_block / dt, dt * 1e3 * W / tokens_block);
            fflush(stdout);
            if (next >= max_mem) break;
            next *= 2;
            /* The next block covers the second half of the way to the next size. */
            while (memory_store_len(model_stream_memory(s)) < (size_t)(next / 2 + next / 4)) {
                for (int i = 0; i < W; i++) tok[i] = (int32_t)(rand_r(&seed) % c->vocab_size);
                model_stream_feed(s, tok, (size_t)W, NULL, NULL);
                model_stream_flush(s);
            }
            t_block = now_s();
            tokens_block = 0;
        }
    }
    free(tok);
    model_stream_destroy(&s);
    model_destroy(&m);
    return 0;
}
