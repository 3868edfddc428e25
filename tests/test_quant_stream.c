/* test_quant_stream.c — fp8 / int8 memory rows in a whole stream, on tiny-fot (CPU).
 *
 * A stream with quantized rows keeps them in its store at dtype_row_bytes apiece (the codes
 * of exactly the keys the f32 stream stores), scores a text several windows long within a
 * small distance of the f32-memory stream, and differs from it (the rows are really read).
 * A backend other than the CPU's refuses such a stream (model/stream.c), where bf16 goes. */
#define BACKEND_INTERNAL
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/quant.h"
#include "model/backend.h"
#include "model/stream.h"

enum { N = 64 * 6 + 17 }; /* six windows of tiny-fot and a tail */

static double score(const model_backend_t *b, dtype_t dt, const int32_t *tok,
                    memory_store_t **keep, model_stream_t **st)
{
    model_stream_opts_t o = {.mem_dtype_set = 1, .mem_dtype = dt};
    float *lp = calloc(N, sizeof(float));
    CHECK_RC(model_stream_create_on(b, &o, st), RC_OK);
    double nll = 0;
    if (*st && lp) {
        CHECK_RC(model_stream_feed(*st, tok, N, lp, NULL), RC_OK);
        for (int i = 0; i < N - 1; i++) nll -= lp[i];
        *keep = model_stream_memory(*st);
    }
    free(lp);
    return nll / (N - 1);
}

int main(void)
{
    const char *data = getenv("RECALL_TEST_DATA");
    char dir[512], err[512];
    snprintf(dir, sizeof dir, "%s/tiny-fot", data ? data : "build/tests/data");
    model_t *m = NULL;
    model_backend_t *b = NULL;
    if (model_load(dir, 0, &m, err, sizeof err) ||
        model_backend_open(m, "cpu", &b, err, sizeof err)) {
        fprintf(stderr, "cannot load %s: %s\n", dir, err);
        return 1;
    }
    const model_config_t *c = model_get_config(m);
    int32_t tok[N];
    uint64_t x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((x >> 33) % (uint64_t)c->vocab_size);
    }
    memory_store_t *mf = NULL, *mq = NULL, *mi = NULL;
    model_stream_t *sf = NULL, *sq = NULL, *si = NULL;
    const double nf = score(b, DTYPE_F32, tok, &mf, &sf);
    const double nq = score(b, DTYPE_FP8_E4M3, tok, &mq, &sq);
    const double ni = score(b, DTYPE_I8, tok, &mi, &si);
    printf("mean nll: f32 rows %.6f, fp8 %.6f, int8 %.6f\n", nf, nq, ni);
    CHECK(isfinite(nq) && isfinite(ni) && nf > 0);
    CHECK_MSG(fabs(nq - nf) < 0.01 * nf, "fp8 mean nll %g vs f32 %g", nq, nf);
    CHECK_MSG(fabs(ni - nf) < 0.01 * nf, "int8 mean nll %g vs f32 %g", ni, nf);
    CHECK(nq != nf && ni != nf); /* the quantized rows are what the memory layers read */
    if (mf && mq && mi) {
        const size_t rows = memory_store_rows(mq, 0);
        CHECK(rows == 6 * 64 && memory_store_rows(mf, 0) == rows);
        const size_t rb = dtype_row_bytes(DTYPE_FP8_E4M3, c->n_kv_heads, c->head_dim);
        CHECK(memory_store_row_bytes(mq) == rb && memory_store_dtype(mq) == DTYPE_FP8_E4M3);
        CHECK(memory_store_bytes(mq) == (size_t)c->n_mem_layers * 2 * rows * rb);
        /* The stored codes are those of the f32 stream's keys: the forward pass before the
         * first memory layer's keys does not depend on the memory. */
        unsigned char *want = malloc(rows * rb);
        quant_rows_encode(want, DTYPE_FP8_E4M3, memory_store_keys(mf, 0), rows, c->n_kv_heads,
                          c->head_dim);
        CHECK(!memcmp(want, memory_store_keys(mq, 0), rows * rb));
        free(want);
    }
    model_stream_destroy(&sf), model_stream_destroy(&sq), model_stream_destroy(&si);

    /* Another backend (the CPU's ops under another name, as a GPU's would be) refuses the
     * row formats before it is asked to make the stream, and takes bf16. */
    backend_ops_t ops = *b->ops;
    ops.name = "not-cpu";
    struct model_backend other = {.ops = &ops, .ctx = b->ctx, .model = b->model};
    model_stream_t *s = NULL;
    model_stream_opts_t o = {.mem_dtype_set = 1, .mem_dtype = DTYPE_FP8_E4M3};
    CHECK_RC(model_stream_create_on(&other, &o, &s), RC_ERR_UNSUPPORTED);
    o.mem_dtype = DTYPE_I8;
    CHECK_RC(model_stream_create_on(&other, &o, &s), RC_ERR_UNSUPPORTED);
    CHECK(s == NULL);
    o.mem_dtype = DTYPE_BF16;
    CHECK_RC(model_stream_create_on(&other, &o, &s), RC_OK);
    model_stream_destroy(&s);

    model_backend_close(&b);
    model_destroy(&m);
    return check_summary();
}
