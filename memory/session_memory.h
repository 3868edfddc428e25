/* session_memory.h — one session's FoT memory rows, in every tier they pass through.
 *
 * The one owner of a session's row bytes outside the kernels: the daemon asks it to bring
 * rows in, commit, evict, verify and drop, and never computes an offset into them.
 *
 *   disk   rows_root/<name>/L<i>.keys and L<i>.values: memory layer i's unrotated keys and
 *          values, [rows, row_dim] in the session's dtype, append-only: exactly the arrays
 *          the kernels read. Per committed window and layer, an XXH3-64 checksum of the
 *          window's key rows then value rows, in the catalogue (memory/db.h "rowsum").
 *   host   a read-only shared map of those files (memory_store_open_files): a row is in host
 *          memory at most once, in the page cache, and evicting it is an unmap.
 *   GPU    a GPU stream's copy of the newest host rows (memory/gpu_tier.h, one per stream,
 *          held by the CUDA backend), kept or dropped by the daemon's tiers policy
 *          (memory/tiers.h) within the daemon's and the session's GPU budgets; it is
 *          rebuilt from the host tier.
 *   index  a knn session's kNN index (memory/knn.h) over the host tier's keys: made when the
 *          rows are loaded (from the copy saved at the last eviction, when it fits), kept
 *          in step with the rows by the stream that searches it (on the CPU every row, on a
 *          GPU the rows spilled below its hot tier), saved to the catalogue (memory/db.h
 *          "index") and freed at eviction. It is a cache of the keys: a copy that is lost
 *          or does not fit only costs its rebuild.
 *
 * Life of an object:
 *   open    catalogue numbers only (committed windows, shape): no file is touched.
 *   load    disk -> host: opens and maps the files, cuts off rows past the committed ones (a
 *           commit that never finished), checks every committed window's checksum, and
 *           (knn) opens the index. A session stored before row files (rows as LMDB blobs) is
 *           migrated here, once.
 *   append  the forward pass appends to session_memory_store(); rows past the committed
 *           ones are not durable and may be rolled back with memory_store_truncate.
 *   commit  makes n new windows durable with the caller's tokens and record: files synced
 *           first, then checksums, tokens and record in one LMDB transaction.
 *   evict   host -> disk: saves a changed kNN index, frees it and unmaps. Only with no
 *           uncommitted rows and no stream using the store or the index.
 *   drop    session_memory_remove_files, after the catalogue dropped the session.
 *
 * Durability: a window is durable when session_memory_commit returned RC_OK. A crash at any
 * point leaves either the old catalogue (and, at most, extra uncommitted rows at the files'
 * ends, cut off by the next load) or the new one with its rows already synced.
 *
 * Blocking: open does no I/O. load reads every committed row once (the checksums), which
 * for a large session means its whole size from disk, and a saved index; commit waits for
 * fdatasync of each file and for LMDB's synced commit; evict writes a changed index (one
 * LMDB transaction per layer); verify reads every row.
 *
 * Threads: an object is used by one thread at a time (the daemon's worker). The counters
 * (session_memory_host_bytes, _disk_bytes) are plain reads of that thread's state. */
#ifndef RECALL_MEMORY_SESSION_MEMORY_H
#define RECALL_MEMORY_SESSION_MEMORY_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"
#include "memory/db.h"
#include "memory/knn.h"
#include "memory/store.h"

typedef struct session_memory session_memory_t;

typedef struct session_memory_shape {
    int n_layers;  /* memory layers (0: a model without them; the object then holds nothing) */
    int row_dim;   /* n_kv_heads * head_dim */
    dtype_t dtype; /* the session's mem_dtype */
    int window;    /* rows per window */
    int head_dim;  /* elements per kv head; 0: row_dim (one head). The quantized row formats
                    * (common/quant.h) keep one scale per head, so they need it set. */
    int knn;       /* a knn session: the object keeps a kNN index over the keys */
    memory_knn_opts_t knn_opts; /* its options (the session's nlist, nprobe; 0: defaults) */
} session_memory_shape_t;

/* An object for session `name` with `windows` committed windows, rows under
 * rows_root/<name>. db and rows_root are borrowed and must outlive it. No I/O. */
rc_t session_memory_open(memory_db_t *db, const char *rows_root, const char *name,
                         const session_memory_shape_t *shape, uint64_t windows,
                         session_memory_t **out);
/* Unmaps and frees (NULL-safe; nulls *m). Nothing is written: uncommitted rows stay at the
 * files' ends until the next load cuts them off. */
void session_memory_close(session_memory_t **m);

/* Brings the rows to the host tier (a no-op when loaded). RC_ERR_UNAVAILABLE when the stored
 * rows are damaged — a file missing or truncated, a checksum that does not match, a window
 * without its checksum — with err naming the file or window; RC_ERR_NOMEM / RC_ERR_IO for
 * problems that may pass (nothing is marked). Nothing is loaded on failure. */
rc_t session_memory_load(session_memory_t *m, char *err, size_t errlen);
int session_memory_loaded(const session_memory_t *m);

/* The host tier (loaded only; NULL otherwise): the store the forward pass reads and
 * appends to. Borrowed; valid until evict or close. */
memory_store_t *session_memory_store(session_memory_t *m);

/* The kNN index of a knn session (loaded only; NULL otherwise, and for exact sessions):
 * streams over session_memory_store() search and sync it (model_stream_create_with).
 * Borrowed; valid until evict or close. */
memory_knn_t *session_memory_index(session_memory_t *m);

/* Committed windows. */
uint64_t session_memory_windows(const session_memory_t *m);

/* Commits windows [windows, windows + n) — rows the store holds past the committed ones,
 * exactly n windows of them — together with what c carries (the caller's record and
 * tokens; c's checksum fields are filled here). RC_OK only when durable; on failure
 * nothing was committed, err says why, and the rows are still in the store for the caller
 * to roll back. Loaded only. */
rc_t session_memory_commit(session_memory_t *m, memory_db_commit_t *c, uint64_t n, char *err,
                           size_t errlen);

/* host -> disk. RC_ERR_BUSY (nothing done) while the store holds uncommitted rows. */
rc_t session_memory_evict(session_memory_t *m);

/* Bytes of rows mapped in host memory (0 on disk); host bytes of the kNN index (0 on disk
 * and for exact sessions: on the CPU its IVF lists hold the keys again as fp32, so about
 * the rows' size once past 32k rows); bytes of committed rows on disk. */
size_t session_memory_host_bytes(const session_memory_t *m);
size_t session_memory_index_bytes(const session_memory_t *m);
uint64_t session_memory_disk_bytes(const session_memory_t *m);

/* What session_memory_verify found. */
typedef struct session_memory_report {
    uint64_t windows;    /* committed windows checked */
    uint64_t bad;        /* windows (any layer) whose rows do not match their checksum */
    uint64_t first_bad;  /* the first of them (valid when bad > 0) */
    int first_bad_layer;
    uint64_t bytes;      /* row bytes read */
} session_memory_report_t;

/* Reads every committed row from the files (whether or not loaded; nothing is changed) and
 * checks it against its checksum. RC_OK when all match; RC_ERR_UNAVAILABLE when any does
 * not, a file is short or a checksum is missing (rep says how many windows, err names the
 * first problem); RC_ERR_IO / RC_ERR_NOMEM otherwise. */
rc_t session_memory_verify(session_memory_t *m, session_memory_report_t *rep, char *err,
                           size_t errlen);

/* Removes rows_root/<name> and its files. RC_OK when it is gone (or never existed). */
rc_t session_memory_remove_files(const char *rows_root, const char *name, char *err,
                                 size_t errlen);

/* The first half of a drop that must not hold a lock while gigabytes are unlinked: renames
 * rows_root/<name> to a private name under rows_root (".dropped-<name>-<n>", which no
 * session can have) so that a new session of the same name starts with no files, and sets
 * *detached to that path (malloc'ed; NULL when there were no files). One rename: fast.
 * RC_ERR_IO when the rename fails (the files stay where they were). */
rc_t session_memory_detach_files(const char *rows_root, const char *name, char **detached,
                                 char *err, size_t errlen);
/* Removes a directory of row files and the directory (a detached one). RC_OK when it is
 * gone (or never existed). Blocks for as long as unlinking takes. */
rc_t session_memory_remove_dir(const char *dir, char *err, size_t errlen);

/* Removes every directory under rows_root for which known(ctx, name) is 0, and every
 * detached one: the rows of a session whose drop was interrupted after its catalogue entry
 * went. Returns how many. */
int session_memory_sweep(const char *rows_root, int (*known)(void *ctx, const char *name),
                         void *ctx);

/* The checksum of one window of one layer: XXH3-64 of its key rows then its value rows. */
uint64_t session_memory_window_sum(const void *keys, const void *values, size_t bytes);

#endif
