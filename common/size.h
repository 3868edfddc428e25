/* size.h — the one parser of byte sizes given by people ("512M", "8G", "1.5G", "4096").
 *
 * Used by recalld's memory-budget and byte-limit flags and by the client's
 * --gpu-memory-budget; each caller words its own error message from the code returned. */
#ifndef RECALL_COMMON_SIZE_H
#define RECALL_COMMON_SIZE_H

#include <stdint.h>

#include "common/rc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parses s into *out (bytes, rounded down to whole bytes). Accepted: a non-negative decimal
 * number without sign, exponent or hex ("4096", "1.5"), optionally followed by a binary
 * unit K, M, G or T (either case) and then "B" or "iB", or by a bare "B"; "none" reads as 0
 * (callers decide what 0 means: usually "no limit").
 * Returns RC_OK; RC_ERR_FORMAT when s is not such a size; RC_ERR_LIMIT when it is more
 * than max bytes (max at most 2^53, so that the double arithmetic is exact in whole bytes);
 * RC_ERR_INVALID when it is above zero but less than one byte ("0.1B"). *out is written
 * only on success. Pure: no allocation, no global state. */
rc_t size_parse(const char *s, uint64_t max, uint64_t *out);

#ifdef __cplusplus
}
#endif

#endif
