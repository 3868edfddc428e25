/* db.h — the durable catalogue: sessions, their tokens, their row checksums in LMDB.
 *
 * One LMDB environment per data directory (DIR/data.mdb, DIR/lock.mdb), opened by one
 * process at a time (an exclusive lock on DIR/recalld.lock says so). Five named
 * databases:
 *
 *   "sessions"  name                                  -> the caller's session record (opaque)
 *   "tokens"    name \0 be64(chunk)                   -> int32 little-endian token ids
 *   "rowsum"    name \0 be64(window)                  -> one little-endian u64 per memory
 *                                                        layer: the XXH3-64 of that window's
 *                                                        key rows then value rows
 *   "memory"    name \0 be32(layer) be64(window)      -> key rows then value rows of that
 *                                                        window (the layout before row files;
 *                                                        read only to migrate it)
 *   "index"     name \0 be32(layer)                   -> be64(rows) then a kNN index blob
 *                                                        (derived data; see below)
 *
 * The memory rows themselves live in files beside the environment (memory/session_memory.h);
 * a window's checksums commit with its tokens and record, after its rows were synced, so
 * the catalogue never names a window whose rows are not on disk.
 *
 * Names never contain '\0' (the daemon only accepts safe names), so "name \0" is a prefix
 * that belongs to exactly one session and big-endian numbers sort in order.
 *
 * The unit of commit is memory_db_commit: everything it lists lands in one write
 * transaction, synced to disk before it returns RC_OK (no MDB_NOSYNC), so a caller that
 * acknowledges only after RC_OK never loses acknowledged data, and a crash mid-commit
 * leaves nothing half-written. A full map is grown (doubled, or more for a large commit)
 * and the commit retried, up to max_map_size; past that the commit fails with
 * RC_ERR_LIMIT and the database is as it was.
 *
 * Thread-safety: every function may be called from any thread; calls are serialized by a
 * mutex inside the handle (LMDB allows a map resize only with no transaction open). */
#ifndef RECALL_MEMORY_DB_H
#define RECALL_MEMORY_DB_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

typedef struct memory_db memory_db_t;

typedef struct memory_db_opts {
    size_t map_size;     /* initial map size in bytes; 0: 256 MiB. Never below the data. */
    size_t max_map_size; /* growth stops here; 0: 4 TiB */
} memory_db_opts_t;

/* Opens (creating if needed) the environment in dir, which must exist and be writable.
 * o may be NULL for defaults. On failure writes a sentence into err and returns
 * RC_ERR_IO (cannot create or open), RC_ERR_BUSY (another process holds the data dir) or
 * RC_ERR_FORMAT (not an LMDB environment / incompatible). */
rc_t memory_db_open(const char *dir, const memory_db_opts_t *o, memory_db_t **out, char *err,
                    size_t errlen);
/* Closes the environment (any commit has already returned). NULL-safe; nulls *db. */
void memory_db_close(memory_db_t **db);

/* Current map size in bytes (grows on MDB_MAP_FULL). */
size_t memory_db_map_size(memory_db_t *db);

/* One window of one memory layer: `bytes` of key rows and `bytes` of value rows
 * ([rows, row_dim] in the store's dtype each). Pointers are borrowed for the call. */
typedef struct memory_db_window {
    uint32_t layer;
    uint64_t window;
    const void *keys;
    const void *values;
    size_t bytes;
} memory_db_window_t;

/* One commit unit. record is written when not NULL; tokens when n_tokens > 0 under
 * chunk_index; windows (legacy row blobs) may be empty; sums holds sum_windows windows ×
 * sum_layers checksums for windows sum_first, sum_first + 1, ...; drop_legacy_rows deletes
 * the session's "memory" blobs in the same transaction (the end of a migration to row
 * files). Everything is borrowed for the call. */
typedef struct memory_db_commit {
    const char *session;
    const void *record;
    size_t record_len;
    uint64_t chunk_index;
    const int32_t *tokens;
    size_t n_tokens;
    const memory_db_window_t *windows;
    size_t n_windows;
    const uint64_t *sums; /* [sum_windows, sum_layers] */
    uint64_t sum_first;
    size_t sum_windows;
    uint32_t sum_layers;
    int drop_legacy_rows;
} memory_db_commit_t;

/* Writes c in one transaction and syncs it. RC_OK only when durable. On failure nothing
 * was written; err says why (RC_ERR_LIMIT: the map could not grow enough; RC_ERR_IO). */
rc_t memory_db_commit(memory_db_t *db, const memory_db_commit_t *c, char *err, size_t errlen);

/* Checksums of windows [first, first + n) of a session, `layers` per window, into
 * out [n, layers]. RC_ERR_NOT_FOUND if any window has none; RC_ERR_FORMAT if one holds
 * another number of layers. */
rc_t memory_db_get_sums(memory_db_t *db, const char *session, uint64_t first, size_t n,
                        uint32_t layers, uint64_t *out);

/* Deletes a session's record, token chunks, checksums and memory windows in one transaction.
 * RC_ERR_NOT_FOUND if there was no record (other keys are still removed). */
rc_t memory_db_drop(memory_db_t *db, const char *session, char *err, size_t errlen);

/* Derived index blobs (a kNN index of one memory layer). They are a cache of what the
 * stored keys determine: writing one is not part of any commit unit, losing one loses
 * nothing (the keys rebuild it), and memory_db_drop deletes them with the session.
 * put stores `rows`, the memory rows the blob covers, beside the bytes; get returns a
 * malloc'ed copy (RC_ERR_NOT_FOUND when there is none). */
rc_t memory_db_put_index(memory_db_t *db, const char *session, uint32_t layer, uint64_t rows,
                         const void *data, size_t len, char *err, size_t errlen);
rc_t memory_db_get_index(memory_db_t *db, const char *session, uint32_t layer, uint64_t *rows,
                         void **data, size_t *len);

/* A session record as read back. */
typedef struct memory_db_record {
    char *name; /* NUL-terminated, malloc'ed */
    void *data; /* malloc'ed */
    size_t len;
} memory_db_record_t;

/* Every session record, in name order. *recs is malloc'ed; free it with
 * memory_db_records_free. */
rc_t memory_db_list(memory_db_t *db, memory_db_record_t **recs, size_t *n);
void memory_db_records_free(memory_db_record_t *recs, size_t n);

/* All token chunks of a session concatenated in chunk order (*tokens malloc'ed, caller
 * frees; NULL when n is 0). *chunks receives the number of chunks and *next_chunk one
 * past the highest chunk index (0 for none). */
rc_t memory_db_load_tokens(memory_db_t *db, const char *session, int32_t **tokens, size_t *n,
                           uint64_t *chunks, uint64_t *next_chunk);

/* Reads one memory window and hands its key rows and value rows (bytes each) to fn;
 * the pointers live only during the call. RC_ERR_NOT_FOUND if absent, RC_ERR_FORMAT if
 * its size is odd; otherwise fn's status. */
typedef rc_t (*memory_db_window_fn)(void *ctx, const void *keys, const void *values, size_t bytes);
rc_t memory_db_read_window(memory_db_t *db, const char *session, uint32_t layer, uint64_t window,
                           memory_db_window_fn fn, void *ctx);

/* Bytes of values stored for a session (record, tokens and memory). */
rc_t memory_db_session_bytes(memory_db_t *db, const char *session, uint64_t *bytes);

#endif
