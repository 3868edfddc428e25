/* knn_tiers.h — the host-side bookkeeping of a GPU stream's two kNN memory tiers
 * (backend_cuda.c; REFERENCE.md "kNN memory").
 *
 * Under a device memory budget a knn stream keeps its newest memory rows on the GPU (the
 * hot tier, searched exactly by cuda_topk) and the oldest ones in the host store behind a
 * Faiss index (the spilled tier, memory/knn.h). Each query and head gets a best-k list from
 * each tier; this module decides where the tiers split, merges the two lists, and turns the
 * merged list into cuda_knn_attention's row encoding (hot rows by their device position,
 * spilled rows by a slot in a small gather buffer). Pure C, no GPU: tests/test_knn_tiers.c
 * runs it in CI. */
#ifndef RECALL_MODEL_KNN_TIERS_H
#define RECALL_MODEL_KNN_TIERS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

/* Where the tiers split: memory_tiers_spill_rows (memory/tiers.h), used by memory/gpu_tier.h. */

/* Merges two candidate lists per (query, head) into the best k by score, ties to the lower
 * absolute row:
 *   sp_idx, sp_sc   [n_lists, k_sp]  spilled tier (memory_knn_search_rows): absolute rows;
 *   hot_idx, hot_sc [n_lists, k_hot] hot tier (cuda_topk): device positions, absolute row
 *                                    hot_base + idx;
 *   out             [n_lists, k]     absolute rows, best first, -1 padding when the two
 *                                    lists hold fewer than k rows; out_sc (optional, same
 *                                    shape) their scores (-INFINITY for padding).
 * Entries with idx < 0 are skipped; a NaN score ranks as -INFINITY. The input lists need not
 * be sorted (an exact "every row" list comes in row order). k_sp or k_hot may be 0 (that
 * list's pointers are then not read). RC_ERR_INVALID for k < 1, RC_ERR_NOMEM. */
rc_t knn_tiers_merge(size_t n_lists, int k, const int64_t *sp_idx, const float *sp_sc, int k_sp,
                     const int32_t *hot_idx, const float *hot_sc, int k_hot, int64_t hot_base,
                     int64_t *out, float *out_sc);

/* The gather table of spilled rows for one cuda_knn_attention call: each distinct spilled
 * row used by the call's queries gets a slot (0, 1, … in first-use order); the backend
 * copies slot s's key and value rows into row s of the gather buffers. */
typedef struct knn_slots knn_slots_t;

/* A table of at most cap slots. */
rc_t knn_slots_create(size_t cap, knn_slots_t **out);
void knn_slots_destroy(knn_slots_t **t); /* NULL-safe; nulls *t */
/* Empties the table (O(slots in use)). */
void knn_slots_clear(knn_slots_t *t);
size_t knn_slots_count(const knn_slots_t *t);
size_t knn_slots_cap(const knn_slots_t *t);
/* [count] the absolute row of each slot; borrowed, valid until the next encode or clear. */
const int64_t *knn_slots_rows(const knn_slots_t *t);

/* Encodes n merged entries (absolute rows, -1 padding; typically one query's n_heads · k)
 * for cuda_knn_attention: a hot row r (spill_rows <= r < spill_rows + n_hot) becomes
 * r - spill_rows; a spilled row r (< spill_rows) becomes n_hot + its slot, a new slot for a
 * row not in the table yet; -1 stays -1. Returns 0, or -1 when the entries might not fit
 * (slots in use + spilled entries here > cap): then nothing is written or added, and the
 * caller flushes the table (runs the kernel for the queries so far) and tries again on an
 * empty one. A row at or past spill_rows + n_hot is a broken invariant (ASSERT). */
int knn_slots_encode(knn_slots_t *t, const int64_t *rows, size_t n, int64_t spill_rows,
                     int64_t n_hot, int32_t *out);

#endif
