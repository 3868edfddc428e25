/* store.h — a session's FoT memory: the keys and values of every memory layer.
 *
 * For each memory layer the store holds rows of unrotated keys and of values, one row per
 * token, each row [n_kv_heads * head_dim] in the store's dtype (the model's mem_dtype).
 * Rows are appended a window at a time by the forward pass and never change afterwards;
 * the store only shrinks by truncate, which rolls back a query's temporary windows.
 *
 * This is the hot, in-process tier. Durability (LMDB) and the kNN tiers build on it. */
#ifndef RECALL_MEMORY_STORE_H
#define RECALL_MEMORY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"

typedef struct memory_store memory_store_t;

/* n_layers is the number of memory layers (not model layers); row_dim = n_kv_heads *
 * head_dim. A store with n_layers == 0 is valid and always empty. */
rc_t memory_store_create(int n_layers, int row_dim, dtype_t dtype, memory_store_t **out);
void memory_store_destroy(memory_store_t **s);

int memory_store_layers(const memory_store_t *s);
int memory_store_row_dim(const memory_store_t *s);
dtype_t memory_store_dtype(const memory_store_t *s);

/* Rows in memory layer `layer`. All layers have the same count between windows. */
size_t memory_store_rows(const memory_store_t *s, int layer);
/* Rows common to every layer (the token count of the memory); 0 for no layers. */
size_t memory_store_len(const memory_store_t *s);
/* Bytes held (keys and values, all layers). */
size_t memory_store_bytes(const memory_store_t *s);

/* Appends n rows of fp32 keys and values [n, row_dim], converting to the store's dtype. */
rc_t memory_store_append_f32(memory_store_t *s, int layer, const float *k, const float *v,
                             size_t n);
/* Appends n rows already in the store's dtype (raw bytes, as read back from disk). */
rc_t memory_store_append_raw(memory_store_t *s, int layer, const void *k, const void *v,
                             size_t n);

/* Borrowed pointers to the first row of keys / values of a layer, in the store's dtype;
 * valid until the next append or truncate. */
const void *memory_store_keys(const memory_store_t *s, int layer);
const void *memory_store_values(const memory_store_t *s, int layer);

/* Drops rows past n in every layer. */
void memory_store_truncate(memory_store_t *s, size_t n);

#endif
