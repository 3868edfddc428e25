/* store.h — a session's FoT memory: the keys and values of every memory layer.
 *
 * For each memory layer the store holds rows of unrotated keys and of values, one row per
 * token, each row [n_kv_heads * head_dim] in the store's dtype (the session's mem_dtype):
 * dtype_row_bytes(dtype, n_kv_heads, head_dim) bytes, which for the quantized row formats
 * (fp8, int8: common/quant.h) include one scale per head after the codes. Rows are
 * converted once, on append; the store keeps no wider copy.
 * Rows are appended a window at a time by the forward pass and never change afterwards;
 * the store only shrinks by truncate, which rolls back a query's temporary windows.
 *
 * Two backings, one interface (the kernels read both the same way: each layer's keys and
 * values as one contiguous [rows, row_dim] array):
 *   - anonymous (memory_store_create): rows in private memory, for streams that nothing
 *     keeps (Score of a text, tests, tools);
 *   - files (memory_store_open_files): each layer's keys and values are two append-only
 *     files, mapped read-only and shared, so a row lives once in host memory — in the page
 *     cache — however often it is read; appends are written through the files. This is a
 *     session's host tier (memory/session_memory.h owns it and its durability). */
#ifndef RECALL_MEMORY_STORE_H
#define RECALL_MEMORY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"

typedef struct memory_store memory_store_t;

/* n_layers is the number of memory layers (not model layers); rows of n_kv_heads heads of
 * head_dim elements (row_dim = n_kv_heads * head_dim). A store with n_layers == 0 is valid
 * and always empty. RC_ERR_INVALID for sizes ≤ 0 or an unknown dtype. */
rc_t memory_store_create_heads(int n_layers, int n_kv_heads, int head_dim, dtype_t dtype,
                               memory_store_t **out);
/* The same with the whole row as one head (n_kv_heads 1, head_dim row_dim): enough for
 * f32/bf16/f16 rows, whose layout has no heads; a row format would then carry one scale
 * per row, so streams that quantize use memory_store_create_heads. */
rc_t memory_store_create(int n_layers, int row_dim, dtype_t dtype, memory_store_t **out);
void memory_store_destroy(memory_store_t **s);

int memory_store_layers(const memory_store_t *s);
int memory_store_row_dim(const memory_store_t *s);
dtype_t memory_store_dtype(const memory_store_t *s);
int memory_store_n_kv_heads(const memory_store_t *s);
int memory_store_head_dim(const memory_store_t *s);
/* Bytes of one row (dtype_row_bytes of the above): the stride of memory_store_keys. */
size_t memory_store_row_bytes(const memory_store_t *s);

/* Opens (creating missing ones when `create`) the files dir/L<i>.keys and dir/L<i>.values
 * of n_layers layers, which must hold at least `rows` rows each; files longer than that are
 * cut back to it (rows past `rows` were never committed). dir must exist. Nothing is read
 * here: pages come in when the kernels touch them (or by memory_store_prefetch).
 * Errors: RC_ERR_NOT_FOUND (a file is missing and create is 0), RC_ERR_FORMAT (a file is
 * shorter than `rows` rows, or not a whole number of rows), RC_ERR_IO; err says which file
 * and why. */
rc_t memory_store_open_heads(int n_layers, int n_kv_heads, int head_dim, dtype_t dtype,
                             const char *dir, size_t rows, int create, memory_store_t **out,
                             char *err, size_t errlen);
/* memory_store_open_heads with one head of row_dim (as memory_store_create). */
rc_t memory_store_open_files(int n_layers, int row_dim, dtype_t dtype, const char *dir,
                             size_t rows, int create, memory_store_t **out, char *err,
                             size_t errlen);

/* 1 when the store's rows live in files. */
int memory_store_is_files(const memory_store_t *s);

/* Files backing only: every row appended so far reaches the disk (fdatasync of each file)
 * before it returns RC_OK; RC_ERR_IO otherwise. A no-op for an anonymous store. */
rc_t memory_store_sync(memory_store_t *s, char *err, size_t errlen);

/* Asks the kernel to read rows [from, to) of every layer ahead of use (MADV_WILLNEED):
 * bringing a session back starts its disk reads at once rather than page by page. */
void memory_store_prefetch(const memory_store_t *s, size_t from, size_t to);

/* Rows in memory layer `layer`. All layers have the same count between windows. */
size_t memory_store_rows(const memory_store_t *s, int layer);
/* Rows common to every layer (the token count of the memory); 0 for no layers. */
size_t memory_store_len(const memory_store_t *s);
/* Bytes held (keys and values, all layers). */
size_t memory_store_bytes(const memory_store_t *s);

/* Appends n rows of fp32 keys and values [n, row_dim], converting to the store's dtype
 * (quantizing, for a row format: common/quant.h).
 * Files backing: RC_ERR_IO when a write fails (a full disk); the layer is then unchanged. */
rc_t memory_store_append_f32(memory_store_t *s, int layer, const float *k, const float *v,
                             size_t n);
/* Appends n rows already in the store's dtype (raw bytes, as read back from disk). */
rc_t memory_store_append_raw(memory_store_t *s, int layer, const void *k, const void *v,
                             size_t n);

/* Borrowed pointers to the first row of keys / values of a layer, in the store's dtype,
 * rows memory_store_row_bytes apart; valid until the next append or truncate. */
const void *memory_store_keys(const memory_store_t *s, int layer);
const void *memory_store_values(const memory_store_t *s, int layer);

/* Drops rows past n in every layer (files: they are cut from the files too). */
void memory_store_truncate(memory_store_t *s, size_t n);

#endif
