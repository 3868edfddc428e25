/* gpu_pair.c — see gpu_pair.h. */
#include "tests/gpu_pair.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"

int pair_open(const char *dir, pair_t *p)
{
    char err[512];
    memset(p, 0, sizeof *p);
    rc_t rc = model_load(dir, 1, &p->m, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "model_load(%s): %s", dir, err);
    if (rc) return -1;
    rc = model_backend_open(p->m, "cpu", &p->cpu, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "open cpu: %s", err);
    if (rc) return -1;
    rc = model_backend_open(p->m, "cuda", &p->gpu, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "open cuda: %s", err);
    if (rc) return -1;
    const char *d = model_backend_describe(p->gpu);
    CHECK_MSG(!strncmp(d, "cuda:0 (", 8), "describe: %s", d);
    printf("model %s on %s\n", model_describe(p->m), d);
    return 0;
}

void pair_close(pair_t *p)
{
    model_backend_close(&p->gpu);
    model_backend_close(&p->cpu);
    model_destroy(&p->m);
}

int pair_stream(model_backend_t *b, const model_stream_opts_t *o, model_stream_t **s)
{
    char err[256] = "";
    rc_t rc = model_stream_create_with(b, o, NULL, NULL, s, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "a stream on %s: %s (%s)", model_backend_describe(b), rc_strerror(rc),
              err);
    return rc == RC_OK ? 0 : -1;
}

rc_t pair_feed_uneven(model_stream_t *s, const int32_t *tok, size_t n, float *lp,
                      char *chunk_end)
{
    static const size_t sizes[] = {1, 7, 37, 64, 100, 3, 250};
    size_t done = 0, k = 0;
    while (done < n) {
        size_t c = sizes[k++ % (sizeof sizes / sizeof sizes[0])];
        if (c > n - done) c = n - done;
        rc_t rc = model_stream_feed(s, tok + done, c, lp ? lp + done : NULL, NULL);
        if (rc) return rc;
        done += c;
        if (chunk_end) chunk_end[done - 1] = 1;
    }
    return RC_OK;
}

void pair_compare_logprobs(const char *name, model_backend_t *cpu, model_backend_t *gpu,
                           const model_stream_opts_t *o, const int32_t *tok, size_t n,
                           double tol, double tol_mean, double *max, double *mean_out)
{
    float *a = malloc(n * sizeof *a), *g = malloc(n * sizeof *g);
    char *end = calloc(n, 1);
    model_stream_t *sc = NULL, *sg = NULL;
    if (max) *max = 0;
    if (mean_out) *mean_out = 0;
    if (!a || !g || !end || pair_stream(cpu, o, &sc) || pair_stream(gpu, o, &sg)) goto done;
    for (size_t i = 0; i < n; i++) a[i] = g[i] = NAN;
    CHECK_RC(model_stream_feed(sc, tok, n, a, NULL), RC_OK);
    CHECK_RC(pair_feed_uneven(sg, tok, n, g, end), RC_OK);
    double mx = 0, sum = 0;
    size_t bad = 0, at = 0, cmp = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (end[i]) continue;
        cmp++;
        if (!isfinite(g[i]) || !isfinite(a[i]) || g[i] > 0) {
            bad++;
            continue;
        }
        const double d = fabs((double)a[i] - g[i]);
        sum += d;
        if (d > mx) {
            mx = d;
            at = i;
        }
    }
    const double mean = cmp ? sum / (double)cmp : 0;
    printf("%-44s %5zu scored  max|dlp| %.5f (at %zu)  mean|dlp| %.6f  mem rows %zu/%zu\n",
           name, cmp, mx, at, mean, memory_store_len(model_stream_memory(sc)),
           memory_store_len(model_stream_memory(sg)));
    CHECK_MSG(bad == 0, "%s: %zu log-probs not finite or positive", name, bad);
    CHECK_MSG(cmp > 0, "%s: nothing compared", name);
    CHECK_MSG(mx <= tol, "%s: max |dlogprob| %.4f > %.3f", name, mx, tol);
    CHECK_MSG(mean <= tol_mean, "%s: mean |dlogprob| %.5f > %.3f", name, mean, tol_mean);
    CHECK(memory_store_len(model_stream_memory(sc)) == memory_store_len(model_stream_memory(sg)));
    if (max) *max = mx;
    if (mean_out) *mean_out = mean;
done:
    model_stream_destroy(&sc);
    model_stream_destroy(&sg);
    free(a);
    free(g);
    free(end);
}

int pair_make_models(const char *dir, const pair_model_t *models, size_t n)
{
    const char *py = getenv("RECALL_PYTHON"), *src = getenv("RECALL_SOURCE_DIR");
    if (!py || !*py) py = "python3";
    if (!src) {
        fprintf(stderr, "RECALL_SOURCE_DIR is not set (ctest sets it)\n");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char path[1200], cmd[8192];
        snprintf(path, sizeof path, "%s/%s/config.json", dir, models[i].name);
        FILE *f = fopen(path, "r");
        if (f) {
            fclose(f);
            continue;
        }
        snprintf(cmd, sizeof cmd,
                 "rm -rf '%s/%s.tmp' && '%s' '%s/tools/make_test_model.py' --out '%s/%s.tmp' %s "
                 "--no-tokenizer > /dev/null && mv '%s/%s.tmp' '%s/%s'",
                 dir, models[i].name, py, src, dir, models[i].name, models[i].args, dir,
                 models[i].name, dir, models[i].name);
        if (system(cmd) != 0) {
            fprintf(stderr, "making %s failed: %s\n", models[i].name, cmd);
            return -1;
        }
    }
    return 0;
}
