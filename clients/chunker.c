/* chunker.c — see chunker.h. */
#include "clients/chunker.h"

#include <stdlib.h>
#include <string.h>

struct recall_chunker {
    FILE *f;
    size_t max;
    char *buf; /* [max] bytes read but not yet handed out: buf[0..n) */
    size_t n;
    size_t offset; /* stream offset of buf[0] */
    int eof;
};

size_t recall_chunk_split(const char *buf, size_t n, size_t max, int eof)
{
    if (n <= max) {
        if (eof) return n;
        if (n < max) return 0;
    }
    /* Last newline inside the first max bytes: the chunk keeps it. */
    for (size_t i = max; i > 0; i--)
        if (buf[i - 1] == '\n') return i;
    /* One line longer than max: cut before the last character if it does not fit whole.
     * Its lead byte is within the last 4 bytes (a UTF-8 character is at most 4 bytes); in
     * invalid input there may be none, and then any cut is as good as another. */
    size_t p = max;
    while (p > 0 && p + 4 > max && ((unsigned char)buf[p - 1] & 0xC0) == 0x80)
        p--;
    if (p == 0) return max;
    unsigned char lead = (unsigned char)buf[p - 1];
    size_t clen = lead < 0x80             ? 1
                  : (lead & 0xE0) == 0xC0 ? 2
                  : (lead & 0xF0) == 0xE0 ? 3
                  : (lead & 0xF8) == 0xF0 ? 4
                                          : 1;
    if ((p - 1) + clen <= max || p - 1 == 0) return max;
    return p - 1;
}

int recall_utf8_valid(const char *str, size_t n, size_t *bad_at)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        unsigned min;
        if (c == 0) goto bad;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            len = 2, min = 0x80, c &= 0x1F;
        else if ((c & 0xF0) == 0xE0)
            len = 3, min = 0x800, c &= 0x0F;
        else if ((c & 0xF8) == 0xF0)
            len = 4, min = 0x10000, c &= 0x07;
        else
            goto bad;
        if (i + len > n) goto bad;
        for (size_t j = 1; j < len; j++) {
            if ((s[i + j] & 0xC0) != 0x80) goto bad;
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        /* overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8 */
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) goto bad;
        i += len;
    }
    return 1;
bad:
    if (bad_at) *bad_at = i;
    return 0;
}

rc_t recall_chunker_create(FILE *f, size_t max_bytes, recall_chunker **out)
{
    *out = NULL;
    if (!f || max_bytes < 4) return RC_ERR_INVALID;
    recall_chunker *ch = calloc(1, sizeof *ch);
    if (!ch) return RC_ERR_NOMEM;
    ch->buf = malloc(max_bytes);
    if (!ch->buf) {
        free(ch);
        return RC_ERR_NOMEM;
    }
    ch->f = f;
    ch->max = max_bytes;
    *out = ch;
    return RC_OK;
}

void recall_chunker_destroy(recall_chunker **chp)
{
    if (!chp || !*chp) return;
    free((*chp)->buf);
    free(*chp);
    *chp = NULL;
}

rc_t recall_chunker_next(recall_chunker *ch, char **out, size_t *len, size_t *offset)
{
    *out = NULL;
    *len = 0;
    size_t k;
    while ((k = recall_chunk_split(ch->buf, ch->n, ch->max, ch->eof)) == 0 && !ch->eof) {
        size_t got = fread(ch->buf + ch->n, 1, ch->max - ch->n, ch->f);
        ch->n += got;
        if (got == 0) {
            if (ferror(ch->f)) return RC_ERR_IO;
            ch->eof = 1;
        }
    }
    if (offset) *offset = ch->offset;
    if (k == 0) return RC_OK; /* end of stream */
    char *s = malloc(k + 1);
    if (!s) return RC_ERR_NOMEM;
    memcpy(s, ch->buf, k);
    s[k] = 0;
    memmove(ch->buf, ch->buf + k, ch->n - k);
    ch->n -= k;
    ch->offset += k;
    *out = s;
    *len = k;
    return RC_OK;
}
