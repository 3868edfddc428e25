/* safetensors.h — read-only access to Hugging Face .safetensors checkpoints.
 *
 * A .safetensors file is an 8-byte little-endian header length, a JSON header
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
 * and the data section (offsets are relative to its start). Files are memory-mapped
 * read-only; every header entry is checked (known dtype, size = dtype x shape, offsets
 * inside the data section, no two tensors overlapping) before any pointer is handed out.
 *
 * A checkpoint directory holds either model.safetensors or shards listed in
 * model.safetensors.index.json ({"weight_map": {name: file}}); safetensors_open_dir hides
 * which. Only F32, F16 and BF16 tensors are accepted: another dtype is an error naming the
 * tensor, because recall could not use it anyway. */
#ifndef RECALL_MODEL_SAFETENSORS_H
#define RECALL_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/dtype.h"
#include "common/rc.h"

#define SAFETENSORS_MAX_DIMS 8

typedef struct st_tensor {
    const char *name; /* owned by the set */
    const char *file; /* path of the file holding it; owned by the set */
    dtype_t dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t numel;
    size_t nbytes;    /* numel * dtype_size(dtype) */
    const void *data; /* [numel] in the mapping; not necessarily aligned */
} st_tensor_t;

typedef struct safetensors safetensors_t;

/* Maps one .safetensors file. On failure returns RC_ERR_NOT_FOUND / RC_ERR_IO /
 * RC_ERR_FORMAT / RC_ERR_UNSUPPORTED (unknown dtype) with a sentence in err naming the file
 * and, where there is one, the tensor. Nothing is left open on failure. */
rc_t safetensors_open(const char *path, safetensors_t **out, char *err, size_t errlen);

/* Opens DIR/model.safetensors.index.json and its shards when the index exists, else
 * DIR/model.safetensors. Every tensor named in the index must be in the file it names. */
rc_t safetensors_open_dir(const char *dir, safetensors_t **out, char *err, size_t errlen);

/* Unmaps everything. NULL-safe; sets *st to NULL. Pointers from the set die with it. */
void safetensors_destroy(safetensors_t **st);

/* The tensor called name, or NULL. Borrowed; lives until safetensors_destroy. */
const st_tensor_t *safetensors_find(const safetensors_t *st, const char *name);

/* All tensors, sorted by name: i in [0, safetensors_count). */
size_t safetensors_count(const safetensors_t *st);
const st_tensor_t *safetensors_at(const safetensors_t *st, size_t i);

/* "[3200, 8640]" into buf (always NUL-terminated); returns buf. For error messages. */
const char *safetensors_shape_str(const int64_t *shape, int ndim, char *buf, size_t len);

#endif
