/* test_tokenizer — recall's SentencePiece wrapper against python3-sentencepiece.
 *
 * Every corpus line, random slices of it, random multilingual strings and a list of tricky
 * strings are encoded here and by tests/tokenizer_ref.py; the ids must be identical and the
 * decodes byte-identical. utf8_valid is checked against Python's strict UTF-8 decoder on
 * random byte strings. Needs the tiny_models fixture (its tokenizer.model). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/tokenizer.h"
#include "tests/check.h"

typedef struct req {
    char kind;   /* 'E' encode, 'D' decode, 'V' validate */
    char *bytes; /* E, V: [len] */
    size_t len;
    int32_t *ids; /* D: [n_ids] */
    size_t n_ids;
} req_t;

static req_t *reqs;
static size_t n_reqs, cap_reqs;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static req_t *add(char kind)
{
    if (n_reqs == cap_reqs) {
        cap_reqs = cap_reqs ? 2 * cap_reqs : 1024;
        reqs = realloc(reqs, cap_reqs * sizeof(*reqs));
    }
    req_t *r = &reqs[n_reqs++];
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    return r;
}

static void add_bytes(char kind, const char *s, size_t len)
{
    req_t *r = add(kind);
    r->bytes = malloc(len + 1);
    memcpy(r->bytes, s, len);
    r->bytes[len] = '\0';
    r->len = len;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63)), 2;
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 63));
        o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)), o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void build_requests(const char *corpus, size_t clen, int vocab)
{
    /* Every corpus line. */
    for (const char *p = corpus; p < corpus + clen;) {
        const char *e = memchr(p, '\n', (size_t)(corpus + clen - p));
        if (!e) e = corpus + clen;
        add_bytes('E', p, (size_t)(e - p));
        p = e + 1;
    }
    /* Slices at arbitrary offsets: words cut in half, leading spaces, newlines inside. */
    for (int i = 0; i < 300; i++) {
        size_t a = rnd() % clen, n = rnd() % 400;
        if (a + n > clen) n = clen - a;
        add_bytes('E', corpus + a, n);
    }
    /* Random strings over scripts the tokenizer never saw (byte fallback). */
    static const uint32_t pool[] = {
        ' ',    ' ',    'a',    'e',    't',    '1',     '7',     '.',     ',',     '\n',   '\t',
        0xe9,   0xfc,   0xdf,   0x3b1,  0x416,  0x5d0,   0x627,   0x928,   0x3042,  0x65e5, 0x672c,
        0xac00, 0x2581, 0x2047, 0xfeff, 0x200d, 0x1f600, 0x1f44d, 0x1f3fd, 0x10348, 0x7f,   0x1};
    for (int i = 0; i < 300; i++) {
        char buf[256];
        size_t o = 0, n = rnd() % 40;
        for (size_t k = 0; k < n; k++)
            o += put_utf8(buf + o, pool[rnd() % (sizeof pool / 4)]);
        add_bytes('E', buf, o);
    }
    static const char *tricky[] = {
        "",
        " ",
        "  ",
        "   leading spaces",
        "trailing spaces   ",
        "two  inner   spaces",
        "\n",
        "\n\nparagraph\n",
        "\ttab",
        "12345",
        "3.14159 and 2,718,281",
        "2024-06-11 07:45",
        "0000000000000000000000000000001",
        "Price: 12.50 EUR (VAT 19%)",
        "emoji 😀 👍🏽 👨‍👩‍👧 🇵🇱",
        "日本語のテキストです。",
        "Привет, мир!",
        "مرحبا بالعالم",
        "नमस्ते दुनिया",
        "Ελληνικά κείμενα",
        "한국어 문장",
        "café naïve façade Zürich",
        "<s> literal control </s> <unk>",
        "▁ already a marker ▁▁",
        " ⁇ ",
        "\xef\xbb\xbf BOM",
        "a\x01b\x7f",
        "\xf4\x8f\xbf\xbf max code point",
        "The harbour was quiet.",
    };
    for (size_t i = 0; i < sizeof tricky / sizeof tricky[0]; i++)
        add_bytes('E', tricky[i], strlen(tricky[i]));
    add_bytes('E', "a\0b", 3); /* an embedded NUL is a character like any other */

    /* Decodes: control ids, unknown, byte pieces forming bad UTF-8, random sequences. */
    static const int32_t d0[] = {1, 300, 301, 302, 2}, d1[] = {0}, d2[] = {1, 2, 1},
                         d3[] = {3 + 0xe6, 3 + 0x97}, d4[] = {3 + 0xff, 300}, d5[] = {300, 0, 301};
    const int32_t *ds[] = {d0, d1, d2, d3, d4, d5};
    size_t dn[] = {5, 1, 3, 2, 2, 3};
    for (int i = 0; i < 6; i++) {
        req_t *r = add('D');
        r->ids = malloc(dn[i] * sizeof(int32_t));
        memcpy(r->ids, ds[i], dn[i] * sizeof(int32_t));
        r->n_ids = dn[i];
    }
    for (int i = 0; i < 300; i++) {
        req_t *r = add('D');
        r->n_ids = 1 + rnd() % 20;
        r->ids = malloc(r->n_ids * sizeof(int32_t));
        for (size_t k = 0; k < r->n_ids; k++)
            r->ids[k] = (int32_t)(rnd() % (uint32_t)vocab);
    }

    /* UTF-8 validity: edge cases, then random bytes biased to the multi-byte range. */
    static const char *v[] = {"",
                              "abc",
                              "\xc2\x80",
                              "\xdf\xbf",
                              "\xe0\xa0\x80",
                              "\xed\x9f\xbf",
                              "\xee\x80\x80",
                              "\xef\xbf\xbf",
                              "\xf0\x90\x80\x80",
                              "\xf4\x8f\xbf\xbf",
                              "\x80",
                              "\xbf",
                              "\xc0\xaf",
                              "\xc1\xbf",
                              "\xe0\x9f\xbf",
                              "\xed\xa0\x80",
                              "\xed\xbf\xbf",
                              "\xf0\x8f\xbf\xbf",
                              "\xf4\x90\x80\x80",
                              "\xf5\x80\x80\x80",
                              "\xf8\x88\x80\x80\x80",
                              "\xff",
                              "\xe2\x82",
                              "\xe2\x82\xac",
                              "a\xe2\x82",
                              "\xc3\x28",
                              "\xe2\x28\xa1",
                              "\xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        add_bytes('V', v[i], strlen(v[i]));
    for (int i = 0; i < 5000; i++) {
        char b[8];
        size_t n = rnd() % 7;
        for (size_t k = 0; k < n; k++) {
            uint32_t x = rnd();
            b[k] = (char)((x & 3) == 0 ? (x >> 8) & 0x7f : 0x80 | ((x >> 8) & 0x7f));
        }
        add_bytes('V', b, n);
    }
}

static int write_requests(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (size_t i = 0; i < n_reqs; i++) {
        req_t *r = &reqs[i];
        fputc(r->kind, f);
        fputc(' ', f);
        if (r->kind == 'D') {
            for (size_t k = 0; k < r->n_ids; k++)
                fprintf(f, "%s%d", k ? " " : "", r->ids[k]);
        } else {
            for (size_t k = 0; k < r->len; k++)
                fprintf(f, "%02x", (unsigned char)r->bytes[k]);
        }
        fputc('\n', f);
    }
    return fclose(f);
}

static char *hex(const char *s, size_t n)
{
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", (unsigned char)s[i]);
    h[2 * n] = '\0';
    return h;
}

static void compare(const tokenizer_t *t, size_t i, const char *line)
{
    req_t *r = &reqs[i];
    if (r->kind == 'V') {
        int want = line[0] == '1';
        CHECK_MSG(utf8_valid(r->bytes, r->len) == want, "utf8_valid(request %zu) != python (%d)", i,
                  want);
        return;
    }
    if (r->kind == 'D') {
        char *text;
        size_t len;
        CHECK_RC(tokenizer_decode(t, r->ids, r->n_ids, &text, &len), RC_OK);
        char *h = hex(text, len);
        CHECK_MSG(!strcmp(h, line), "decode of request %zu: %s, python %s", i, h, line);
        free(h);
        free(text);
        return;
    }
    int32_t *ids;
    size_t n;
    rc_t rc = tokenizer_encode(t, r->bytes, r->len, 0, &ids, &n);
    CHECK_MSG(rc == RC_OK, "encode of request %zu failed: %d", i, rc);
    if (rc) return;
    char got[65536];
    size_t o = 0;
    for (size_t k = 0; k < n && o < sizeof got - 16; k++)
        o += (size_t)snprintf(got + o, sizeof got - o, "%s%d", k ? " " : "", ids[k]);
    got[o] = '\0';
    const char *bar = strchr(line, '|');
    size_t want_len = bar ? (size_t)(bar - line) : strlen(line);
    CHECK_MSG(o == want_len && !memcmp(got, line, o),
              "encode of \"%.60s\": recall [%.200s] python [%.*s]", r->bytes, got,
              (int)(want_len > 200 ? 200 : want_len), line);
    char *text;
    size_t len;
    CHECK_RC(tokenizer_decode(t, ids, n, &text, &len), RC_OK);
    char *h = hex(text, len);
    CHECK_MSG(bar && !strcmp(h, bar + 1), "decode(encode(\"%.60s\")) differs from python",
              r->bytes);
    /* Identity normalization and byte fallback make the round trip exact, except for
     * U+2581 itself: it is sentencepiece's whitespace marker and decodes as a space. */
    if (!memmem(r->bytes, r->len, "\xe2\x96\x81", 3)) {
        char *want = hex(r->bytes, r->len);
        CHECK_MSG(len == r->len && !memcmp(text, r->bytes, len), "round trip of %s gave %s", want,
                  h);
        free(want);
    }
    free(h);
    free(text);
    free(ids);
}

static void test_api(const tokenizer_t *t, const char *model_path, const char *corpus_path)
{
    CHECK(tokenizer_vocab_size(t) == 512);
    CHECK(tokenizer_bos_id(t) == 1 && tokenizer_eos_id(t) == 2);

    int32_t *ids = (int32_t *)1;
    size_t n = 99;
    CHECK_RC(tokenizer_encode(t, "hello", 5, 1, &ids, &n), RC_OK);
    CHECK(n >= 2 && ids[0] == 1);
    int32_t *plain;
    size_t pn;
    CHECK_RC(tokenizer_encode(t, "hello", 5, 0, &plain, &pn), RC_OK);
    CHECK(pn == n - 1 && !memcmp(plain, ids + 1, pn * sizeof(int32_t)));
    char *text;
    size_t len;
    CHECK_RC(tokenizer_decode(t, ids, n, &text, &len), RC_OK); /* BOS decodes to nothing */
    CHECK(len == 5 && !strcmp(text, "hello"));
    free(text);
    free(ids);
    free(plain);

    CHECK_RC(tokenizer_encode(t, "", 0, 1, &ids, &n), RC_OK);
    CHECK(n == 1 && ids[0] == 1);
    free(ids);
    CHECK_RC(tokenizer_encode(t, NULL, 0, 0, &ids, &n), RC_OK);
    CHECK(n == 0);
    free(ids);

    /* Invalid UTF-8 is refused, with nothing allocated. */
    const char *bad[] = {"ok \xff", "\xc0\xaf", "\xed\xa0\x80", "abc\xe2\x82"};
    for (int i = 0; i < 4; i++) {
        ids = (int32_t *)1;
        CHECK_RC(tokenizer_encode(t, bad[i], strlen(bad[i]), 0, &ids, &n), RC_ERR_INVALID);
        CHECK(ids == NULL && n == 0);
    }
    int32_t oob[] = {5, 512}, neg[] = {-1};
    text = (char *)1;
    CHECK_RC(tokenizer_decode(t, oob, 2, &text, &len), RC_ERR_INVALID);
    CHECK(text == NULL);
    CHECK_RC(tokenizer_decode(t, neg, 1, &text, &len), RC_ERR_INVALID);
    CHECK_RC(tokenizer_decode(t, NULL, 0, &text, &len), RC_OK);
    CHECK(text && len == 0 && text[0] == '\0');
    free(text);

    tokenizer_t *t2 = (tokenizer_t *)1;
    char err[512];
    CHECK_RC(tokenizer_load("/nonexistent/tokenizer.model", &t2, err, sizeof err),
             RC_ERR_NOT_FOUND);
    CHECK(t2 == NULL && strstr(err, "/nonexistent/tokenizer.model"));
    CHECK_RC(tokenizer_load(corpus_path, &t2, err, sizeof err), RC_ERR_FORMAT);
    CHECK(t2 == NULL && strstr(err, "corpus.txt"));
    CHECK_RC(tokenizer_load(model_path, &t2, err, sizeof err), RC_OK);
    tokenizer_destroy(&t2);
    CHECK(t2 == NULL);
    tokenizer_destroy(&t2);
    tokenizer_destroy(NULL);
}

/* Several threads encoding the same texts through one tokenizer get the same ids. */
typedef struct job {
    const tokenizer_t *t;
    int mismatches;
} job_t;

static void *encode_all(void *arg)
{
    job_t *j = arg;
    for (size_t i = 0; i < n_reqs; i++) {
        if (reqs[i].kind != 'E') continue;
        int32_t *a, *b;
        size_t na, nb;
        if (tokenizer_encode(j->t, reqs[i].bytes, reqs[i].len, 0, &a, &na)) {
            j->mismatches++;
            continue;
        }
        if (tokenizer_encode(j->t, reqs[i].bytes, reqs[i].len, 0, &b, &nb) || na != nb ||
            memcmp(a, b, na * sizeof(int32_t)))
            j->mismatches++;
        free(a);
        free(b);
    }
    return NULL;
}

int main(void)
{
    const char *data = getenv("RECALL_TEST_DATA"), *src = getenv("RECALL_SOURCE_DIR");
    const char *py = getenv("RECALL_PYTHON");
    if (!py || !*py) py = "/usr/bin/python3";
    if (!data || !src) {
        fprintf(stderr, "test_tokenizer: RECALL_TEST_DATA and RECALL_SOURCE_DIR must be set "
                        "(run through ctest)\n");
        return 1;
    }
    char model_path[1024], corpus_path[1024], req_path[] = "/tmp/recall_tok_req_XXXXXX";
    snprintf(model_path, sizeof model_path, "%s/tiny-fot/tokenizer.model", data);
    snprintf(corpus_path, sizeof corpus_path, "%s/tests/data/corpus.txt", src);

    tokenizer_t *t = NULL;
    char err[512];
    CHECK_RC(tokenizer_load(model_path, &t, err, sizeof err), RC_OK);
    size_t clen = 0;
    char *corpus = read_file(corpus_path, &clen);
    CHECK_MSG(corpus && clen > 50000, "cannot read %s", corpus_path);
    if (!t || !corpus) return check_summary();

    test_api(t, model_path, corpus_path);
    build_requests(corpus, clen, tokenizer_vocab_size(t));
    int fd = mkstemp(req_path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(write_requests(req_path) == 0);

    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s/tests/tokenizer_ref.py' '%s' '%s'", py, src, model_path,
             req_path);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    size_t i = 0, cap = 0;
    char *line = NULL;
    ssize_t got;
    int counts[3] = {0};
    while (p && (got = getline(&line, &cap, p)) > 0) {
        if (line[got - 1] == '\n') line[got - 1] = '\0';
        if (i < n_reqs) {
            compare(t, i, line);
            counts[reqs[i].kind == 'E' ? 0 : reqs[i].kind == 'D' ? 1 : 2]++;
        }
        i++;
    }
    free(line);
    int st = p ? pclose(p) : -1;
    CHECK_MSG(st == 0, "tokenizer_ref.py exited with status %d", st);
    CHECK_MSG(i == n_reqs, "python answered %zu of %zu requests", i, n_reqs);
    printf("compared %d encodes, %d decodes, %d UTF-8 validations with python3-sentencepiece\n",
           counts[0], counts[1], counts[2]);

    pthread_t th[4];
    job_t jobs[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (job_t){.t = t};
        pthread_create(&th[k], NULL, encode_all, &jobs[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK(jobs[k].mismatches == 0);
    }

    unlink(req_path);
    for (size_t k = 0; k < n_reqs; k++)
        free(reqs[k].bytes), free(reqs[k].ids);
    free(reqs);
    free(corpus);
    tokenizer_destroy(&t);
    return check_summary();
}
