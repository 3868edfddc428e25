/* png.c — see png.h. The format: the 8-byte signature, then chunks of (length, type, data,
 * CRC-32 over type and data), all integers big-endian (PNG spec, ISO/IEC 15948). */
#include "clients/png.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8),
    p[3] = (uint8_t)v;
}

/* Appends one chunk at out + *at (room already reserved). */
static void put_chunk(uint8_t *out, size_t *at, const char type[4], const uint8_t *data, size_t n)
{
    uint8_t *p = out + *at;
    put32(p, (uint32_t)n);
    memcpy(p + 4, type, 4);
    if (n) memcpy(p + 8, data, n);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, p + 4, (uInt)(4 + n));
    put32(p + 8 + n, (uint32_t)crc);
    *at += 12 + n;
}

rc_t recall_png_encode(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!rgb || w < 1 || h < 1 || w > 65535 || h > 65535) return RC_ERR_INVALID;
    size_t stride = (size_t)w * 3 + 1; /* filter byte + RGB */
    size_t raw_n = stride * (size_t)h;
    uint8_t *raw = malloc(raw_n); /* [h][1 + w*3] */
    if (!raw) return RC_ERR_NOMEM;
    for (int y = 0; y < h; y++) {
        raw[(size_t)y * stride] = 0;
        memcpy(raw + (size_t)y * stride + 1, rgb + (size_t)y * w * 3, (size_t)w * 3);
    }
    uLongf z_n = compressBound((uLong)raw_n);
    uint8_t *z = malloc(z_n);
    if (!z) {
        free(raw);
        return RC_ERR_NOMEM;
    }
    int zrc = compress2(z, &z_n, raw, (uLong)raw_n, 9);
    free(raw);
    if (zrc != Z_OK) {
        free(z);
        return RC_ERR_INTERNAL;
    }
    size_t total = 8 + (12 + 13) + (12 + z_n) + 12;
    uint8_t *png = malloc(total);
    if (!png) {
        free(z);
        return RC_ERR_NOMEM;
    }
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(png, sig, 8);
    size_t at = 8;
    uint8_t ihdr[13];
    put32(ihdr, (uint32_t)w);
    put32(ihdr + 4, (uint32_t)h);
    ihdr[8] = 8;  /* bit depth */
    ihdr[9] = 2;  /* colour type: truecolour (RGB) */
    ihdr[10] = 0; /* deflate */
    ihdr[11] = 0; /* adaptive filtering (every row says "none") */
    ihdr[12] = 0; /* no interlace */
    put_chunk(png, &at, "IHDR", ihdr, sizeof ihdr);
    put_chunk(png, &at, "IDAT", z, z_n);
    put_chunk(png, &at, "IEND", NULL, 0);
    free(z);
    *out = png;
    *len = at;
    return RC_OK;
}

rc_t recall_png_write(const char *path, const uint8_t *rgb, int w, int h, char *err, size_t errlen)
{
    uint8_t *png;
    size_t n;
    rc_t rc = recall_png_encode(rgb, w, h, &png, &n);
    if (rc) {
        snprintf(err, errlen, "cannot encode a %dx%d PNG: %s", w, h, rc_strerror(rc));
        return rc;
    }
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 5);
    if (!tmp) {
        free(png);
        snprintf(err, errlen, "out of memory");
        return RC_ERR_NOMEM;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    rc = RC_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        rc = RC_ERR_IO;
    } else {
        int bad = fwrite(png, 1, n, f) != n;
        bad |= fclose(f) != 0;
        if (bad || rename(tmp, path) != 0) {
            snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
            remove(tmp);
            rc = RC_ERR_IO;
        }
    }
    free(tmp);
    free(png);
    return rc;
}
