/* chunker.h — cuts a text stream into Ingest chunks.
 *
 * A chunk is at most max_bytes long and ends at a line boundary (just after a '\n') when
 * the stream allows it; a single line longer than max_bytes is cut at a UTF-8 character
 * boundary, so every chunk is valid UTF-8 on its own when the input is. Chunks are
 * tokenized separately by the daemon, so cutting between lines keeps words whole. */
#ifndef RECALL_CLIENTS_CHUNKER_H
#define RECALL_CLIENTS_CHUNKER_H

#include <stddef.h>
#include <stdio.h>

#include "common/rc.h"

typedef struct recall_chunker recall_chunker;

/* Length of the next chunk of buf[0..n). eof says whether more bytes may follow buf[n-1].
 * Returns 0 when eof is false and n < max_bytes (read more first); otherwise 1..max_bytes
 * (or n when eof and n <= max_bytes). max_bytes >= 4. */
size_t recall_chunk_split(const char *buf, size_t n, size_t max_bytes, int eof);

/* 1 if s[0..n) is valid UTF-8 without NUL bytes (the wire carries proto3 strings, and a
 * NUL would truncate them); else 0 with the offset of the first bad byte in *bad_at. A
 * sequence cut off at the very end is reported at its start. */
int recall_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* Reads from f (not owned; not closed). max_bytes >= 4. */
rc_t recall_chunker_create(FILE *f, size_t max_bytes, recall_chunker **out);
void recall_chunker_destroy(recall_chunker **ch);

/* The next chunk as a new NUL-terminated string (*out, owned by the caller, free()) of
 * *len bytes; *out = NULL and *len = 0 at the end of the stream. *offset (may be NULL) is
 * the chunk's byte offset in the stream. RC_ERR_IO on a read error, RC_ERR_NOMEM. */
rc_t recall_chunker_next(recall_chunker *ch, char **out, size_t *len, size_t *offset);

#endif
