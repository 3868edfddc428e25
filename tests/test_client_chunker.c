/* test_client_chunker.c — the ingest chunker: line boundaries, UTF-8 boundaries, and
 * that the chunks of a stream put back together are the stream. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clients/chunker.h"

static void test_split(void)
{
    const char *s = "aa\nbbb\ncc";
    CHECK(recall_chunk_split(s, 9, 8, 0) == 7);             /* last newline within 8 bytes */
    CHECK(recall_chunk_split(s, 9, 16, 1) == 9);            /* everything left fits at the end */
    CHECK(recall_chunk_split(s, 5, 8, 0) == 0);             /* need more input first */
    CHECK(recall_chunk_split("abcdefghij", 10, 4, 0) == 4); /* one long ASCII line */
    /* "ab" + "é" (C3 A9): max 3 would cut the é in half; cut before it. */
    CHECK(recall_chunk_split("ab\xC3\xA9xyz", 7, 3, 0) == 2);
    /* "a" + "€" (E2 82 AC): max 4 holds it whole. */
    CHECK(recall_chunk_split("a\xE2\x82\xAC"
                             "bc",
                             6, 4, 0) == 4);
    /* max 2 and 3 split inside the €: cut after the "a". */
    CHECK(recall_chunk_split("a\xE2\x82\xAC"
                             "bc",
                             6, 4 - 1, 0) == 1);
    /* a 4-byte character (U+1F600) right at the cut */
    CHECK(recall_chunk_split("abc\xF0\x9F\x98\x80z", 8, 5, 0) == 3);
    CHECK(recall_chunk_split("abc\xF0\x9F\x98\x80z", 8, 7, 0) == 7);
    /* a newline beats a character boundary */
    CHECK(recall_chunk_split("a\nbcdefgh", 9, 6, 0) == 2);
}

static void test_utf8(void)
{
    size_t at = 99;
    CHECK(recall_utf8_valid("hello", 5, &at));
    CHECK(recall_utf8_valid("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 9, &at));
    CHECK(!recall_utf8_valid("ab\xC3", 3, &at) && at == 2);            /* cut off */
    CHECK(!recall_utf8_valid("ab\xC0\xAF", 4, &at) && at == 2);        /* overlong '/' */
    CHECK(!recall_utf8_valid("\xED\xA0\x80", 3, &at) && at == 0);      /* surrogate */
    CHECK(!recall_utf8_valid("x\xF4\x90\x80\x80", 5, &at) && at == 1); /* > U+10FFFF */
    CHECK(!recall_utf8_valid("a\0b", 3, &at) && at == 1);              /* NUL */
    CHECK(!recall_utf8_valid("\xFF", 1, &at) && at == 0);
    CHECK(!recall_utf8_valid("a\x80", 2, &at) && at == 1); /* lone continuation */
}

/* Random text of short and very long lines with multi-byte characters. */
static size_t make_text(char *buf, size_t cap, unsigned seed)
{
    static const char *pieces[] = {"a", "b", " ", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                   "z"};
    size_t n = 0;
    srand(seed);
    while (n + 8 < cap) {
        int len = rand() % 5 == 0 ? 300 + rand() % 300 : rand() % 40;
        for (int i = 0; i < len && n + 8 < cap; i++) {
            const char *p = pieces[rand() % 7];
            memcpy(buf + n, p, strlen(p));
            n += strlen(p);
        }
        buf[n++] = '\n';
    }
    return n;
}

static void test_stream(size_t max, unsigned seed)
{
    enum { CAP = 50000 };
    static char text[CAP], back[CAP];
    size_t n = make_text(text, CAP, seed);
    FILE *f = tmpfile();
    CHECK(f != NULL);
    if (!f) return;
    fwrite(text, 1, n, f);
    rewind(f);
    recall_chunker *ch;
    CHECK_RC(recall_chunker_create(f, max, &ch), RC_OK);
    size_t got = 0, chunks = 0;
    int too_long = 0, bad_utf8 = 0, mid_line_cut_with_newline_available = 0, bad_offset = 0;
    for (;;) {
        char *c;
        size_t len, off;
        if (recall_chunker_next(ch, &c, &len, &off) != RC_OK) break;
        if (!c) break;
        chunks++;
        if (off != got) bad_offset++;
        if (len > max) too_long++;
        if (!recall_utf8_valid(c, len, NULL)) bad_utf8++;
        /* A chunk that does not end a line is only allowed when its line alone exceeds
         * max (no newline anywhere in it) or at the end of the stream. */
        if (c[len - 1] != '\n' && memchr(c, '\n', len) && got + len < n)
            mid_line_cut_with_newline_available++;
        if (strlen(c) != len) bad_utf8++;
        if (got + len <= CAP) memcpy(back + got, c, len);
        got += len;
        free(c);
    }
    recall_chunker_destroy(&ch);
    CHECK(ch == NULL);
    fclose(f);
    CHECK_MSG(got == n && !memcmp(back, text, n), "max %zu: chunks do not rebuild the text", max);
    CHECK_MSG(too_long == 0, "max %zu: %d chunks over max", max, too_long);
    CHECK_MSG(bad_utf8 == 0, "max %zu: %d chunks not valid UTF-8 on their own", max, bad_utf8);
    CHECK_MSG(mid_line_cut_with_newline_available == 0, "max %zu: %d chunks cut mid-line", max,
              mid_line_cut_with_newline_available);
    CHECK(bad_offset == 0);
    CHECK(chunks >= n / max);
}

int main(void)
{
    test_split();
    test_utf8();
    size_t sizes[] = {4, 5, 7, 64, 301, 4096, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        test_stream(sizes[i], 7 + (unsigned)i);
    /* empty input: no chunks */
    FILE *f = tmpfile();
    recall_chunker *ch;
    CHECK_RC(recall_chunker_create(f, 16, &ch), RC_OK);
    char *c = (char *)1;
    size_t len = 1;
    CHECK_RC(recall_chunker_next(ch, &c, &len, NULL), RC_OK);
    CHECK(c == NULL && len == 0);
    recall_chunker_destroy(&ch);
    recall_chunker_destroy(&ch); /* NULL-safe */
    fclose(f);
    CHECK_RC(recall_chunker_create(NULL, 16, &ch), RC_ERR_INVALID);
    return check_summary();
}
