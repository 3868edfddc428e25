/* test_faiss_c.c — the Faiss C API functions recall calls (memory/faiss_c.cpp, or a real
 * libfaiss_c): flat inner-product search against brute force, range removal, spherical
 * k-means, and a serialize / deserialize round trip through stdio memory streams. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_io_c.h>

#include "tests/check.h"

#define D 16
#define N 4000
#define NQ 50
#define K 10

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Brute-force top-k inner products of q against x[0..n): indices best first. */
static void brute(const float *x, int n, const float *q, int k, idx_t *out)
{
    float best[K];
    for (int j = 0; j < k; j++) best[j] = -1e30f, out[j] = -1;
    for (int i = 0; i < n; i++) {
        float s = 0;
        for (int d = 0; d < D; d++) s += x[i * D + d] * q[d];
        int p = k;
        while (p > 0 && s > best[p - 1]) p--;
        if (p == k) continue;
        for (int j = k - 1; j > p; j--) best[j] = best[j - 1], out[j] = out[j - 1];
        best[p] = s, out[p] = i;
    }
}

static int same_sets(const idx_t *a, const idx_t *b, int k)
{
    int hit = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) hit += a[i] == b[j];
    return hit;
}

int main(void)
{
    /* Clustered data: IVF finds most neighbours with a few probes. */
    float *x = malloc(sizeof(float) * N * D), *q = malloc(sizeof(float) * NQ * D);
    float cent[20][D];
    for (int c = 0; c < 20; c++)
        for (int d = 0; d < D; d++) cent[c][d] = 3 * frand();
    for (int i = 0; i < N; i++)
        for (int d = 0; d < D; d++) x[i * D + d] = cent[i % 20][d] + 0.3f * frand();
    for (int i = 0; i < NQ; i++)
        for (int d = 0; d < D; d++) q[i * D + d] = x[(i * 37) % N * D + d] + 0.1f * frand();
    idx_t want[NQ][K], got[NQ][K];
    float dist[NQ][K];
    for (int i = 0; i < NQ; i++) brute(x, N, q + i * D, K, want[i]);

    /* Flat: exact. */
    FaissIndexFlatIP *flat = NULL;
    CHECK_RC(faiss_IndexFlatIP_new_with(&flat, D), 0);
    CHECK_RC(faiss_Index_add(flat, N, x), 0);
    CHECK(faiss_Index_ntotal(flat) == N);
    CHECK(faiss_Index_d(flat) == D);
    CHECK_RC(faiss_Index_search(flat, NQ, q, K, &dist[0][0], &got[0][0]), 0);
    int exact = 0;
    for (int i = 0; i < NQ; i++) exact += same_sets(want[i], got[i], K) == K;
    CHECK_MSG(exact == NQ, "flat search matched brute force on %d of %d queries", exact, NQ);
    for (int i = 0; i < NQ; i++) {
        float s = 0;
        for (int d = 0; d < D; d++) s += x[got[i][0] * D + d] * q[i * D + d];
        CHECK_NEAR(dist[i][0], s, 1e-3 * (1 + fabs(s)));
    }
    /* k past ntotal pads with -1. */
    idx_t pad[N + 5];
    float pd[N + 5];
    CHECK_RC(faiss_Index_search(flat, 1, q, N + 5, pd, pad), 0);
    CHECK(pad[N] == -1 && pad[N + 4] == -1 && pad[N - 1] >= 0);

    /* Removing an id range from the tail keeps ids = row numbers. */
    FaissIDSelectorRange *sel = NULL;
    size_t removed = 0;
    CHECK_RC(faiss_IDSelectorRange_new(&sel, N - 100, N), 0);
    CHECK_RC(faiss_Index_remove_ids(flat, (const FaissIDSelector *)sel, &removed), 0);
    faiss_IDSelectorRange_free(sel);
    CHECK(removed == 100);
    CHECK(faiss_Index_ntotal(flat) == N - 100);

    /* Spherical k-means (memory/knn.c trains its IVF lists' centroids with it): unit-length
     * centroids, and every point's best centroid by inner product is a close one. */
    FaissClusteringParameters cp;
    faiss_ClusteringParameters_init(&cp);
    CHECK(cp.niter > 0 && cp.max_points_per_centroid > 0);
    cp.spherical = 1;
    cp.niter = 10;
    cp.seed = 7;
    const int nlist = 40;
    FaissClustering *cl = NULL;
    FaissIndexFlatIP *assign = NULL;
    CHECK_RC(faiss_Clustering_new_with_params(&cl, D, nlist, &cp), 0);
    CHECK_RC(faiss_IndexFlatIP_new_with(&assign, D), 0);
    CHECK_RC(faiss_Clustering_train(cl, N, x, assign), 0);
    float *c;
    size_t csz;
    faiss_Clustering_centroids(cl, &c, &csz);
    CHECK(csz == (size_t)nlist * D);
    int unit = 0, close = 0;
    for (int l = 0; l < nlist && csz == (size_t)nlist * D; l++) {
        float n2 = 0;
        for (int d = 0; d < D; d++) n2 += c[l * D + d] * c[l * D + d];
        unit += fabs(n2 - 1.0f) < 1e-3f;
    }
    for (int i = 0; i < N && csz == (size_t)nlist * D; i++) {
        float best = -1e30f, n2 = 0;
        for (int d = 0; d < D; d++) n2 += x[i * D + d] * x[i * D + d];
        for (int l = 0; l < nlist; l++) {
            float s = 0;
            for (int d = 0; d < D; d++) s += x[i * D + d] * c[l * D + d];
            if (s > best) best = s;
        }
        close += best / sqrtf(n2) > 0.9f; /* the clusters' spread is 0.3 around norm ~7 */
    }
    CHECK_MSG(unit == nlist, "%d of %d centroids have unit length", unit, nlist);
    /* k-means may leave a pair of clusters under one centroid (measured: 90 % of points
     * within 0.9); random unit centroids would leave almost none. */
    CHECK_MSG(close >= N * 8 / 10, "%d of %d points have a centroid within cosine 0.9",
              close, N);

    /* Round trip of the flat index (memory/knn.c's saved tier) through memory streams:
     * identical results. */
    idx_t before[NQ][K], after[NQ][K];
    float db[NQ][K], da[NQ][K];
    CHECK_RC(faiss_Index_search(flat, NQ, q, K, &db[0][0], &before[0][0]), 0);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK_RC(faiss_write_index(flat, f), 0);
    fclose(f);
    CHECK(len > (size_t)(N - 100) * D * sizeof(float));
    FaissIndex *back = NULL;
    f = fmemopen(buf, len, "rb");
    CHECK_RC(faiss_read_index(f, 0, &back), 0);
    fclose(f);
    CHECK(back && faiss_Index_ntotal(back) == N - 100 && faiss_Index_d(back) == D);
    if (back) {
        CHECK_RC(faiss_Index_search(back, NQ, q, K, &da[0][0], &after[0][0]), 0);
        CHECK(memcmp(before, after, sizeof before) == 0);
        CHECK(memcmp(db, da, sizeof db) == 0);
    }
    /* A damaged buffer is an error with a message, not a crash. */
    FaissIndex *bad = NULL;
    f = fmemopen(buf, 16, "rb");
    CHECK(faiss_read_index(f, 0, &bad) != 0);
    fclose(f);
    CHECK(faiss_get_last_error() != NULL);

    free(buf);
    faiss_Index_free(back);
    faiss_Index_free(assign);
    faiss_Clustering_free(cl);
    faiss_Index_free(flat);
    free(x);
    free(q);
    return check_summary();
}
