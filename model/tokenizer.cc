/* tokenizer.cc — the C face of Debian's libsentencepiece.
 *
 * Parity with the checkpoint's Python tokenizer is the whole point, so encoding is exactly
 * SentencePieceProcessor::Encode with no extra options (what python's sp.encode(text) calls);
 * BOS is prepended here only when the caller asks. Text is checked for strict UTF-8 first:
 * sentencepiece would silently map bad bytes to U+FFFD pieces, and a client that sent
 * invalid text deserves an error rather than a question about replacement characters. */
extern "C" {
#include "model/tokenizer.h"
}

#include <sentencepiece_processor.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

struct tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    int vocab;
    int bos, eos;
};

static rc_t fail(rc_t rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static rc_t fail(rc_t rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

extern "C" int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xbf; /* allowed range of the first continuation byte */
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* UTF-16 surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            return 0; /* continuation byte, overlong 0xc0/0xc1, or 0xf5.. */
        }
        if (len - i <= n) return 0;
        if (p[i + 1] < lo || p[i + 1] > hi) return 0;
        for (size_t k = 2; k <= n; k++)
            if ((p[i + k] & 0xc0) != 0x80) return 0;
        i += n + 1;
    }
    return 1;
}

extern "C" rc_t tokenizer_load(const char *path, tokenizer_t **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return fail(RC_ERR_NOT_FOUND, err, errlen, "cannot open tokenizer %s", path);
    fclose(f);
    tokenizer *t = new (std::nothrow) tokenizer;
    if (!t) return fail(RC_ERR_NOMEM, err, errlen, "out of memory loading %s", path);
    try {
        auto st = t->sp.Load(path);
        if (!st.ok()) {
            std::string msg = st.ToString();
            delete t;
            return fail(RC_ERR_FORMAT, err, errlen, "%s is not a SentencePiece model: %s", path,
                        msg.c_str());
        }
        t->vocab = t->sp.GetPieceSize();
        t->bos = t->sp.bos_id();
        t->eos = t->sp.eos_id();
    } catch (const std::bad_alloc &) {
        delete t;
        return fail(RC_ERR_NOMEM, err, errlen, "out of memory loading %s", path);
    } catch (const std::exception &e) {
        delete t;
        return fail(RC_ERR_FORMAT, err, errlen, "cannot load tokenizer %s: %s", path, e.what());
    }
    if (t->vocab <= 0) {
        delete t;
        return fail(RC_ERR_FORMAT, err, errlen, "tokenizer %s has no pieces", path);
    }
    *out = t;
    return RC_OK;
}

extern "C" void tokenizer_destroy(tokenizer_t **t)
{
    if (!t || !*t) return;
    delete *t;
    *t = NULL;
}

extern "C" int tokenizer_vocab_size(const tokenizer_t *t)
{
    return t->vocab;
}

extern "C" int tokenizer_bos_id(const tokenizer_t *t)
{
    return t->bos;
}

extern "C" int tokenizer_eos_id(const tokenizer_t *t)
{
    return t->eos;
}

extern "C" rc_t tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, int add_bos,
                                 int32_t **ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len)) return RC_ERR_INVALID;
    if (len && !utf8_valid(text, len)) return RC_ERR_INVALID;
    if (add_bos && t->bos < 0) return RC_ERR_INVALID;
    try {
        std::vector<int> v;
        if (len) {
            auto st = t->sp.Encode(absl::string_view(text, len), &v);
            if (!st.ok()) return RC_ERR_INTERNAL;
        }
        size_t m = v.size() + (add_bos ? 1 : 0);
        int32_t *out = (int32_t *)malloc((m ? m : 1) * sizeof(int32_t));
        if (!out) return RC_ERR_NOMEM;
        size_t k = 0;
        if (add_bos) out[k++] = t->bos;
        for (int id : v)
            out[k++] = id;
        *ids = out;
        *n = m;
    } catch (const std::bad_alloc &) {
        return RC_ERR_NOMEM;
    }
    return RC_OK;
}

extern "C" rc_t tokenizer_decode(const tokenizer_t *t, const int32_t *ids, size_t n, char **text,
                                 size_t *len)
{
    *text = NULL;
    if (len) *len = 0;
    if (!t || (!ids && n)) return RC_ERR_INVALID;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab) return RC_ERR_INVALID;
    try {
        /* sentencepiece's Decode already emits nothing for control pieces (<s>, </s>) and
         * " ⁇ " for <unk>, as the Python decode does. */
        std::vector<int> v(ids, ids + n);
        std::string s;
        auto st = t->sp.Decode(v, &s);
        if (!st.ok()) return RC_ERR_INTERNAL;
        char *out = (char *)malloc(s.size() + 1);
        if (!out) return RC_ERR_NOMEM;
        memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
        *text = out;
        if (len) *len = s.size();
    } catch (const std::bad_alloc &) {
        return RC_ERR_NOMEM;
    }
    return RC_OK;
}
