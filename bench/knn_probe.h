/* knn_probe.h — a measurement probe of a GPU knn stream's approximation, for the tool
 * bench_knn_probe (bench/knn_probe_main.c), which installs it as the CUDA backend's knn
 * observer (model/knn_observe.h) and ingests into one knn stream. Its thresholds are given
 * as a list of memory row counts, e.g.
 *
 *     --at 65536,262144,1048576      (a k / m suffix is ×1024 / ×2^20)
 *
 * At the first prefill forward (≥ 2 queries) of a memory layer whose memory has reached a
 * threshold, each threshold once per memory layer, the probe takes that forward's first
 * KNN_PROBE_MAX_Q queries and measures, all in fp32 on the host:
 *   rel_err_exact_topk  ‖o_knn − o_exact‖ / ‖o_exact‖ over all (query, head) elements: o_knn
 *                       the knn path's output (device exact top-k, cuda_knn_attention),
 *                       o_exact the exact path's attention over the same local keys plus
 *                       every memory row;
 *   rel_err_ivf         the same for cuda_knn_attention with the lists of an IVF index
 *                       (memory/knn.h, the stream's nlist / nprobe) built over all rows;
 *   recall_at_k         |IVF list ∩ exact list| / k, averaged over (query, head).
 * It prints one info line per (layer, forward), grep-able by its prefix:
 *     knn-probe rows=R threshold=T layer=L mem_layer=M queries=Q k=K rel_err_exact_topk=…
 *     rel_err_ivf=… recall_at_k=… ivf_heads=H/NKV rel_err_exact_topk_ivf_heads=… ivf=0|1
 *     nlist=… nprobe=… index_s=… probe_s=… probe_total_s=…
 * (one line; index_s: building and searching the IVF index, probe_s: the whole probe,
 * probe_total_s: the stream's probes so far, so a benchmark can subtract them from its
 * ingest time). Building the index is the probe's cost (k-means and assignment per kv head,
 * on the host): at 1M rows of LongLLaMA-3B's 32 heads it runs minutes per layer. So
 *
 *     --heads 8                      (kv heads; default all)
 *
 * indexes only that many evenly spaced kv heads: recall_at_k and rel_err_ivf then cover
 * their query heads alone (the other heads keep their exact lists in the IVF output), and
 * rel_err_exact_topk_ivf_heads is the exact top-k's error over the same heads, the number
 * to compare rel_err_ivf with; rel_err_exact_topk always covers every head. With rows
 * in the spilled tier the exact output cannot be computed on the device: the probe logs
 * `knn-probe rows=R threshold=T layer=L mem_layer=M skipped: …` instead.
 *
 * The probe only reads the stream's buffers: it works in its own scratch on the stream's
 * CUDA stream and waits for it, so the stream's results are unchanged. Compiled with the
 * CUDA backend only (RECALL_HAVE_CUDA). */
#ifndef RECALL_BENCH_KNN_PROBE_H
#define RECALL_BENCH_KNN_PROBE_H

#ifdef RECALL_HAVE_CUDA

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"
#include "kernels/cuda.h"
#include "memory/store.h"
#include "model/knn_observe.h"

/* Queries per probe: the first this many of the chunk (keeps the host search cheap). */
#define KNN_PROBE_MAX_Q 256
/* Thresholds one spec may list. */
#define KNN_PROBE_MAX_THRESHOLDS 16

typedef struct knn_probe knn_probe_t;

/* A probe for a stream of n_mem_layers memory layers from spec (the variable's value: comma-
 * separated row counts), its IVF part over ivf_heads kv heads (0: all). RC_ERR_INVALID for
 * a malformed spec (nothing made), RC_ERR_NOMEM. The caller owns *out (knn_probe_destroy). */
rc_t knn_probe_create(const char *spec, int ivf_heads, int n_mem_layers, knn_probe_t **out);
void knn_probe_destroy(knn_probe_t **p); /* NULL-safe; nulls *p */

/* Whether memory layer mem_layer at `rows` memory rows has a threshold <= rows not probed
 * yet (p NULL: 0). */
int knn_probe_due(const knn_probe_t *p, int mem_layer, size_t rows);

/* What one probe reads: the observation point's input (model/knn_observe.h). */
typedef knn_observe_in_t knn_probe_in_t;

/* Runs the probe of in->mem_layer at in->rows (marking every threshold <= rows done for it)
 * and logs its line. A failure is returned (and logged) but leaves the stream's state as it
 * was; the caller may go on. */
rc_t knn_probe_run(knn_probe_t *p, const knn_probe_in_t *in);

#endif
#endif
