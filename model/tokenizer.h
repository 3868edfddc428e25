/* tokenizer.h — SentencePiece tokenizer behind a C interface.
 *
 * Wraps Debian's libsentencepiece (C++). Encoding matches the checkpoint's Python
 * tokenizer (sentencepiece.SentencePieceProcessor.encode) exactly; BOS is added by the
 * caller's choice, never implicitly. Thread-safe after load (encode/decode are const). */
#ifndef RECALL_MODEL_TOKENIZER_H
#define RECALL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

typedef struct tokenizer tokenizer_t;

/* Loads a SentencePiece model file (tokenizer.model). */
rc_t tokenizer_load(const char *path, tokenizer_t **out, char *err, size_t errlen);
void tokenizer_destroy(tokenizer_t **t);

int tokenizer_vocab_size(const tokenizer_t *t);
int tokenizer_bos_id(const tokenizer_t *t); /* -1 if the model has none */
int tokenizer_eos_id(const tokenizer_t *t);

/* Encodes len bytes of UTF-8 text. Invalid UTF-8 is RC_ERR_INVALID (nothing allocated).
 * With add_bos, the BOS id comes first. *ids is malloc'ed; the caller frees it. */
rc_t tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos,
                      int32_t **ids, size_t *n);

/* Decodes ids to UTF-8 text (malloc'ed, NUL-terminated, caller frees). Ids out of range
 * are RC_ERR_INVALID. BOS/EOS and other control ids decode to nothing. */
rc_t tokenizer_decode(const tokenizer_t *t, const int32_t *ids, size_t n, char **text,
                      size_t *len);

/* Non-zero if len bytes at s are valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int utf8_valid(const char *s, size_t len);

#endif
