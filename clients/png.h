/* png.h — a minimal PNG writer (8-bit RGB, no interlace), zlib for the compression.
 *
 * Enough for the CLI's pictures (recall passkey's heatmap): one IHDR, one IDAT holding the
 * zlib stream of the rows (filter byte 0, "none", before each), IEND; CRCs from zlib. */
#ifndef RECALL_CLIENTS_PNG_H
#define RECALL_CLIENTS_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

/* Encodes rgb (uint8 [h][w][3], row-major) as a PNG file image in memory. On RC_OK *out is
 * malloc'ed (caller frees) and *len its size. RC_ERR_INVALID for w or h outside
 * 1..65535, RC_ERR_NOMEM, RC_ERR_INTERNAL if zlib fails. */
rc_t recall_png_encode(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *len);

/* Encodes and writes to path (replaced if it exists; written to path.tmp first, so a
 * failure never leaves half a picture). err gets a sentence on failure. RC_ERR_IO when
 * the file cannot be written. */
rc_t recall_png_write(const char *path, const uint8_t *rgb, int w, int h, char *err, size_t errlen);

#endif
