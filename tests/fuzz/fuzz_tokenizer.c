/* fuzz_tokenizer.c — libFuzzer target: untrusted bytes and token ids through the tokenizer.
 *
 * Ingest text and Ask questions arrive as bytes from any client; token ids arrive in
 * Ingest.tokens. Both reach model/tokenizer.cc (SentencePiece behind a C wrapper). The
 * first input byte picks the path, the rest is the payload:
 *   even: encode the payload as text (bit 1: with BOS). It must succeed exactly when
 *         utf8_valid says the bytes are UTF-8 (else RC_ERR_INVALID, nothing allocated);
 *         every id is in [0, vocab); decoding the ids succeeds and gives valid UTF-8
 *         (recalld puts decoded text into protobuf `string` fields, which peers such as
 *         Python's protobuf refuse when they are not UTF-8).
 *   odd:  the payload as little-endian int32 ids: decode succeeds exactly when every id is
 *         in [0, vocab), and then gives valid UTF-8 of the length it reports.
 * utf8_valid itself is compared with an independent decoder (RFC 3629) on every payload.
 *
 * The tokenizer is the tiny model's (RECALL_FUZZ_MODEL, else RECALL_TEST_DATA/tiny-fot).
 *   RECALL_FUZZ_MODEL=build/tests/data/tiny-fot build-fuzz/tests/fuzz_tokenizer \
 *       -max_len=4096 -max_total_time=60 /tmp/w tests/fuzz/corpus_tokenizer */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

static tokenizer_t *g_tok;

static void close_tok(void)
{
    tokenizer_destroy(&g_tok);
}

/* RFC 3629: shortest form only, no surrogates, nothing above U+10FFFF. */
static int ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        uint32_t cp;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[1024];
    const char *m = getenv("RECALL_FUZZ_MODEL");
    const char *td = getenv("RECALL_TEST_DATA");
    if (m && m[0])
        snprintf(path, sizeof path, "%s/tokenizer.model", m);
    else
        snprintf(path, sizeof path, "%s/tiny-fot/tokenizer.model", td && td[0] ? td : "tests/data");
    char err[512];
    if (tokenizer_load(path, &g_tok, err, sizeof err) != RC_OK) {
        fprintf(stderr, "fuzz_tokenizer: %s\n(set RECALL_FUZZ_MODEL to a tiny-fot checkpoint)\n",
                err);
        exit(2);
    }
    atexit(close_tok);
    return 0;
}

static void decode_check(const int32_t *ids, size_t n, int want_ok)
{
    char *text = NULL;
    size_t len = 0;
    rc_t rc = tokenizer_decode(g_tok, ids, n, &text, &len);
    if ((rc == RC_OK) != want_ok) {
        fprintf(stderr, "fuzz_tokenizer: decode of %zu ids: status %d, want %s\n", n, (int)rc,
                want_ok ? "success" : "an error");
        abort();
    }
    if (rc == RC_OK) {
        if (!text || text[len] != '\0' || !ref_utf8_valid((const uint8_t *)text, len)) {
            fprintf(stderr,
                    "fuzz_tokenizer: decode of %zu ids gave %zu bytes that are not "
                    "valid, terminated UTF-8\n",
                    n, len);
            abort();
        }
    } else if (text) {
        abort(); /* nothing allocated on failure */
    }
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    const uint8_t *p = data + 1;
    const size_t n = size - 1;
    const int valid = ref_utf8_valid(p, n);
    if (!!utf8_valid((const char *)p, n) != valid) {
        fprintf(stderr, "fuzz_tokenizer: utf8_valid says %d, the reference %d\n",
                !!utf8_valid((const char *)p, n), valid);
        abort();
    }
    const int vocab = tokenizer_vocab_size(g_tok);
    if (!(mode & 1)) {
        int32_t *ids = NULL;
        size_t nid = 0;
        rc_t rc = tokenizer_encode(g_tok, (const char *)p, n, mode & 2, &ids, &nid);
        if ((rc == RC_OK) != valid || (rc != RC_OK && rc != RC_ERR_INVALID)) {
            fprintf(stderr, "fuzz_tokenizer: encode of %zu bytes (UTF-8: %d): status %d\n", n,
                    valid, (int)rc);
            abort();
        }
        if (rc == RC_OK) {
            for (size_t i = 0; i < nid; i++)
                if (ids[i] < 0 || ids[i] >= vocab) {
                    fprintf(stderr, "fuzz_tokenizer: encode gave id %d (vocab %d)\n", ids[i],
                            vocab);
                    abort();
                }
            if ((mode & 2) && (nid < 1 || ids[0] != tokenizer_bos_id(g_tok))) abort();
            decode_check(ids, nid, 1);
        } else if (ids) {
            abort();
        }
        free(ids);
    } else {
        const size_t nid = n / 4;
        int32_t *ids = malloc(nid ? nid * sizeof *ids : 1);
        int in_range = 1;
        for (size_t i = 0; i < nid; i++) {
            uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            ids[i] = (int32_t)u;
            if (ids[i] < 0 || ids[i] >= vocab) in_range = 0;
        }
        decode_check(ids, nid, in_range);
        free(ids);
    }
    return 0;
}
