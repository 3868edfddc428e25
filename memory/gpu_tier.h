/* gpu_tier.h — the GPU tier of one stream's memory rows: a device copy of the newest rows of
 * the host tier (memory/store.h; a session's rows, memory/session_memory.h), the rest
 * left in host memory where the stream's device budget does not hold them all.
 *
 * Layout: device row p of memory layer i (k[i], v[i], each [cap, row] in the store's dtype,
 * the arrays the kernels read) is host row spill + p, for p in [0, rows). spill is 0 while
 * everything fits; past the stream's budget the oldest rows stay in host memory: a knn
 * stream searches them there (memory/knn.h), an exact stream streams them through the
 * device in chunks (model/backend_cuda_forward.c).
 *
 * Where the split goes is a function of the row count alone (memory_tiers_spill_rows), so a
 * stream made again over the same host rows (a session brought back) splits where the old
 * one did. Nothing here writes to the host rows: dropping the device copy loses nothing.
 *
 * Ownership: the tier owns its device buffers (freed by gpu_tier_free); the host store and
 * the CUDA stream are borrowed. Blocking: every call queues its copies on the borrowed
 * stream; growing waits for that stream (the old buffers are freed only after the copies),
 * and gpu_tier_sync's uploads are complete when it returns (large ones go through two
 * page-locked staging buffers of up to 64 MiB, allocated for the call, filled by the
 * OpenMP threads while the bus copies the other).
 * Threads: one stream, one thread. Compiled only with the CUDA backend. */
#ifndef RECALL_MEMORY_GPU_TIER_H
#define RECALL_MEMORY_GPU_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"
#include "memory/store.h"

typedef struct gpu_tier {
    /* Read by the caller, changed only through the calls below. */
    void **k, **v; /* [n_layers] device, each [cap, row_dim] dtype */
    size_t rows;   /* device rows: host rows [spill, spill + rows) */
    size_t spill;  /* host rows below the device ones */
    uint64_t gen;  /* bumped whenever k, v or the rows' device positions change */
    /* Fixed at init. */
    int n_layers;
    dtype_t dtype;
    size_t row_bytes; /* row_dim · dtype_size */
    size_t window;    /* rows per window: the split moves in whole windows */
    size_t hot_cap;   /* most rows on the device (the budget); SIZE_MAX: no limit */
    size_t cap;       /* rows allocated per layer */
    void *stream;     /* cudaStream_t, borrowed */
    const char *who;  /* names the device in log messages, borrowed */
} gpu_tier_t;

/* An empty tier for n_layers layers of row_dim-wide rows of dtype, at most `budget` bytes
 * of keys and values on the device (0: no limit). No device memory yet. RC_ERR_UNSUPPORTED
 * for a quantized row format (fp8, int8: CPU-only so far). */
rc_t gpu_tier_init(gpu_tier_t *t, int n_layers, int row_dim, dtype_t dtype, size_t window,
                   size_t budget, void *stream, const char *who);
/* Frees the device buffers (after the stream's pending work). Idempotent. */
void gpu_tier_free(gpu_tier_t *t);

/* Device bytes of rows held now (keys and values, all layers). */
size_t gpu_tier_bytes(const gpu_tier_t *t);

/* Room for `rows` device rows per layer, keeping the ones held: small tiers double, large
 * ones (past 256k rows) grow by a quarter, and when even that does not fit the device, by
 * just what is needed (whole windows). RC_ERR_NOMEM (logged with advice) when the device
 * cannot hold them; the tier is then unchanged. */
rc_t gpu_tier_reserve(gpu_tier_t *t, size_t rows);

/* Puts the split where memory_tiers_spill_rows wants it for `rows` host rows, never
 * above `limit` (rows of a flush not written yet). Moving it up drops the oldest device
 * rows and moves the rest to the front; moving it down (after a rewind below it) drops the
 * device rows, which the next gpu_tier_sync uploads again. */
rc_t gpu_tier_place(gpu_tier_t *t, size_t rows, size_t limit);

/* Makes the tier hold the store's rows: places the split, drops device rows the store no
 * longer has and uploads the ones it has beyond them (a session brought in, a rewind below
 * the split, a flush whose copy was skipped). */
rc_t gpu_tier_sync(gpu_tier_t *t, const memory_store_t *store);

/* The caller wrote device rows itself (into room gpu_tier_reserve made, at device row
 * host row − spill): the tier now holds host rows [spill, host_rows). */
void gpu_tier_written(gpu_tier_t *t, size_t host_rows);

/* The host store was cut back to `rows` (a rewind): drop device rows past it, and a split
 * above it (the device rows then go; gpu_tier_sync brings them back). */
void gpu_tier_truncated(gpu_tier_t *t, size_t rows);

#endif
