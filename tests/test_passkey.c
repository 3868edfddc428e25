/* test_passkey.c — the passkey test's pieces (clients/passkey.c, clients/png.c).
 *
 * Without arguments (test_passkey): the prompt against REFERENCE.md's template written out
 * here independently, filler cutting and depth placement, keys (range, uniformity, seeding),
 * the pass rule, length parsing, the length fit and the question split with fake
 * tokenizers, the result's accuracies and JSON, and the PNG writer (chunk CRCs, IHDR, the
 * inflated rows) and heatmap colours.
 *
 * With "rpc" (test_passkey_rpc, needs the tiny models): recalld's Tokenize RPC against the
 * tokenizer loaded here (ids, BOS, count_only, bad UTF-8), and the fit and the split
 * through the real daemon. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "clients/client.h"
#include "clients/passkey.h"
#include "clients/png.h"
#include "model/tokenizer.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

/* REFERENCE.md, "Passkey test", copied by hand (not from passkey.c). */
static const char *ref_intro = "There is an important info hidden inside a lot of irrelevant "
                               "text. Find it and memorize them. I will quiz you about the "
                               "important information there.";
static const char *ref_filler = "The grass is green. The sky is blue. The sun is yellow. Here "
                                "we go. There and back again.";
static const char *ref_question = "What is the pass key? The pass key is";

/* " ".join([filler] * many)[:n] */
static char *ref_filler_cut(size_t n)
{
    size_t fl = strlen(ref_filler);
    char *s = malloc(n + fl + 2);
    size_t at = 0;
    while (at < n) {
        if (at) s[at++] = ' ';
        memcpy(s + at, ref_filler, fl);
        at += fl;
    }
    s[n] = 0;
    return s;
}

static char *ref_prompt(unsigned key, size_t prefix, size_t suffix)
{
    char *p = ref_filler_cut(prefix), *q = ref_filler_cut(suffix);
    size_t n = strlen(ref_intro) + prefix + suffix + strlen(ref_question) + 200;
    char *s = malloc(n);
    snprintf(s, n, "%s\n%s\nThe pass key is %u. Remember it. %u is the pass key.\n%s\n%s",
             ref_intro, p, key, key, q, ref_question);
    free(p);
    free(q);
    return s;
}

static void test_template(void)
{
    CHECK(!strcmp(PASSKEY_INTRO, ref_intro));
    CHECK(!strcmp(PASSKEY_FILLER, ref_filler));
    CHECK(!strcmp(PASSKEY_QUESTION, ref_question));
    size_t fl = strlen(ref_filler);
    CHECK(passkey_filler_char(0) == 'T');
    CHECK(passkey_filler_char(fl - 1) == '.');
    CHECK(passkey_filler_char(fl) == ' ');
    CHECK(passkey_filler_char(fl + 1) == 'T');
    CHECK(passkey_filler_char(3 * (fl + 1) + 4) == 'g');

    struct {
        unsigned key;
        size_t n;
        double depth;
        size_t prefix;
    } cases[] = {{12345, 200, 0.5, 100},  {1, 0, 0.5, 0},        {49999, 1000, 0.0, 0},
                 {777, 1000, 1.0, 1000},  {42, 1000, 0.25, 250}, {9, 901, 1.0 / 3, 300},
                 {31337, 5000, 0.9, 4500}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p;
        size_t len, q;
        CHECK_RC(passkey_prompt(cases[i].key, cases[i].n, cases[i].depth, &p, &len, &q), RC_OK);
        char *want = ref_prompt(cases[i].key, cases[i].prefix, cases[i].n - cases[i].prefix);
        CHECK_MSG(!strcmp(p, want), "case %zu:\n got  %.300s\n want %.300s", i, p, want);
        CHECK(len == strlen(p));
        CHECK(!strcmp(p + q, ref_question));
        CHECK(p[q - 1] == '\n');
        /* Five lines, the key's at index 2, at the expected offset. */
        int lines = 1;
        for (size_t k = 0; k < len; k++)
            lines += p[k] == '\n';
        CHECK(lines == 5);
        size_t key_at = strlen(ref_intro) + 1 + cases[i].prefix + 1;
        CHECK(!strncmp(p + key_at, "The pass key is ", 16));
        free(p);
        free(want);
    }
}

static void test_depths(void)
{
    CHECK_NEAR(passkey_depth(0, 1), 0.5, 0);
    CHECK_NEAR(passkey_depth(0, 2), 0.0, 0);
    CHECK_NEAR(passkey_depth(1, 2), 1.0, 0);
    for (int d = 0; d < 10; d++)
        CHECK_NEAR(passkey_depth(d, 10), d / 9.0, 1e-12);
    CHECK_NEAR(passkey_depth(5, 11), 0.5, 1e-12);
}

static void test_keys(void)
{
    uint32_t mn = UINT32_MAX, mx = 0;
    double sum = 0;
    int n = 0, repeats = 0, outside = 0;
    for (int d = 0; d < 10; d++)
        for (int t = 0; t < 10000; t++) {
            uint32_t k = passkey_key(7, 4096, d, t);
            outside += k < PASSKEY_KEY_MIN || k >= PASSKEY_KEY_END;
            if (k < mn) mn = k;
            if (k > mx) mx = k;
            sum += k;
            n++;
            repeats += k == passkey_key(7, 4096, d, t); /* deterministic */
        }
    CHECK(outside == 0);
    CHECK(repeats == n);
    CHECK_MSG(mn < 20 && mx > 49980, "min %u max %u", mn, mx);
    CHECK_NEAR(sum / n, 25000.0, 250.0);
    /* Seed, length, depth and trial each change the key (nearly always). */
    int diff_seed = 0, diff_len = 0, diff_depth = 0, diff_trial = 0;
    for (int t = 0; t < 200; t++) {
        uint32_t k = passkey_key(1, 4096, 3, t);
        diff_seed += k != passkey_key(2, 4096, 3, t);
        diff_len += k != passkey_key(1, 8192, 3, t);
        diff_depth += k != passkey_key(1, 4096, 4, t);
        diff_trial += k != passkey_key(1, 4096, 3, t + 1);
    }
    CHECK(diff_seed >= 198 && diff_len >= 198 && diff_depth >= 198 && diff_trial >= 198);
    /* Pinned values: a change of the generator must be a deliberate one. */
    uint32_t k0 = passkey_key(1, 262144, 0, 0), k1 = passkey_key(1, 262144, 9, 4);
    CHECK(k0 == passkey_key(1, 262144, 0, 0) && k1 != k0);
    printf("keys: seed 1, 256k: d0 t0 %u, d9 t4 %u\n", k0, k1);
}

static void test_score(void)
{
    int32_t ans[] = {29871, 29896, 29906, 29941};
    int32_t same[] = {29871, 29896, 29906, 29941};
    int32_t wrong[] = {29871, 29896, 29906, 29942};
    int32_t longer[] = {29871, 29896, 29906, 29941, 2};
    CHECK(passkey_score(ans, 4, same, 4) == 1);
    CHECK(passkey_score(ans, 4, wrong, 4) == 0);
    CHECK(passkey_score(ans, 4, same, 3) == 0);
    CHECK(passkey_score(ans, 4, longer, 5) == 0);
    CHECK(passkey_score(ans, 0, same, 0) == 0);
    CHECK(passkey_common_prefix(ans, 4, wrong, 4) == 3);
    CHECK(passkey_common_prefix(ans, 4, longer, 5) == 4);
}

static void test_lengths(void)
{
    uint64_t v[PASSKEY_MAX_LENGTHS];
    int n;
    char err[256];
    CHECK_RC(passkey_parse_lengths("4k,16k,64k,256k", v, PASSKEY_MAX_LENGTHS, &n, err, sizeof err),
             RC_OK);
    CHECK(n == 4 && v[0] == 4096 && v[1] == 16384 && v[2] == 65536 && v[3] == 262144);
    CHECK_RC(passkey_parse_lengths("300,512,1M,2K", v, PASSKEY_MAX_LENGTHS, &n, err, sizeof err),
             RC_OK);
    CHECK(n == 4 && v[0] == 300 && v[1] == 512 && v[2] == 1048576 && v[3] == 2048);
    const char *bad[] = {"12q",
                         "",
                         "4k,,8k",
                         "0",
                         "4k,4k",
                         "k",
                         "-5",
                         "4kk",
                         "70M",
                         "4k,",
                         " 4k",
                         "1.5k",
                         "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK_MSG(passkey_parse_lengths(bad[i], v, PASSKEY_MAX_LENGTHS, &n, err, sizeof err) ==
                      RC_ERR_INVALID,
                  "'%s' accepted", bad[i]);
        CHECK_MSG(strstr(err, "--tokens") != NULL, "'%s': %s", bad[i], err);
    }
    CHECK_RC(passkey_parse_lengths("1,2,3", v, 2, &n, err, sizeof err), RC_ERR_INVALID);
    char l[32];
    passkey_length_label(262144, l, sizeof l);
    CHECK(!strcmp(l, "256k"));
    passkey_length_label(1048576, l, sizeof l);
    CHECK(!strcmp(l, "1M"));
    passkey_length_label(300, l, sizeof l);
    CHECK(!strcmp(l, "300"));
}

/* Fake tokenizers. chars4: one token per 4 bytes (rounded up), BOS = 1. words: one token
 * per space-separated word (a word keeps its leading space, as SentencePiece's marker does)
 * and one per newline; ids are hashes, so equal words get equal ids. */
static int fake_calls;

static rc_t tok_chars4(void *ctx, const char *text, size_t len, int add_bos, int count_only,
                       int32_t **ids, size_t *n, char *err, size_t errlen)
{
    (void)ctx, (void)text, (void)err, (void)errlen;
    fake_calls++;
    size_t m = (len + 3) / 4 + (add_bos ? 1 : 0);
    *n = m;
    if (count_only) return RC_OK;
    *ids = malloc((m ? m : 1) * sizeof **ids);
    for (size_t i = 0; i < m; i++)
        (*ids)[i] = (int32_t)(i + 2);
    if (add_bos) (*ids)[0] = 1;
    return RC_OK;
}

static rc_t tok_words(void *ctx, const char *text, size_t len, int add_bos, int count_only,
                      int32_t **ids, size_t *n, char *err, size_t errlen)
{
    (void)ctx, (void)err, (void)errlen;
    fake_calls++;
    int32_t *out = malloc((len + 2) * sizeof *out);
    size_t m = 0;
    if (add_bos) out[m++] = 1;
    size_t i = 0;
    while (i < len) {
        if (text[i] == '\n') {
            out[m++] = 10;
            i++;
            continue;
        }
        uint32_t h = 2166136261u;
        size_t j = i;
        if (text[j] == ' ') h = (h ^ ' ') * 16777619u, j++;
        while (j < len && text[j] != ' ' && text[j] != '\n')
            h = (h ^ (unsigned char)text[j++]) * 16777619u;
        out[m++] = (int32_t)(100 + h % 100000);
        i = j;
    }
    *n = m;
    if (count_only)
        free(out);
    else
        *ids = out;
    return RC_OK;
}

static void test_fit_and_split(void)
{
    char err[256];
    size_t chars, toks;
    uint64_t targets[] = {300, 512, 4096, 65536, 262144};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        fake_calls = 0;
        CHECK_RC(passkey_fit(tok_chars4, NULL, targets[i], &chars, &toks, err, sizeof err), RC_OK);
        uint64_t tol = targets[i] / 1000 > 2 ? targets[i] / 1000 : 2;
        CHECK_MSG((toks > targets[i] ? toks - targets[i] : targets[i] - toks) <= tol,
                  "target %llu: %zu tokens", (unsigned long long)targets[i], toks);
        CHECK_MSG(fake_calls <= 8, "%d tokenizer calls", fake_calls);
        /* The fitted prompt really is that long. */
        char *p;
        size_t len, q;
        passkey_prompt(49999, chars, 0.5, &p, &len, &q);
        CHECK((len + 3) / 4 + 1 == toks);
        free(p);
        CHECK_RC(passkey_fit(tok_words, NULL, targets[i], &chars, &toks, err, sizeof err), RC_OK);
        CHECK_MSG((toks > targets[i] ? toks - targets[i] : targets[i] - toks) <= tol,
                  "words, target %llu: %zu tokens", (unsigned long long)targets[i], toks);
    }
    err[0] = 0;
    CHECK_RC(passkey_fit(tok_chars4, NULL, 40, &chars, &toks, err, sizeof err), RC_ERR_INVALID);
    CHECK(strstr(err, "too short") != NULL);

    /* Split: the question line's tokens are what the question adds. */
    for (int depth10 = 0; depth10 <= 10; depth10 += 5) {
        char *p;
        size_t len, q, n, split;
        int32_t *ids;
        passkey_prompt(4242, 3000, depth10 / 10.0, &p, &len, &q);
        tok_words(NULL, p, len, 1, 0, &ids, &n, err, sizeof err);
        CHECK_RC(
            passkey_question_split(tok_words, NULL, p, len, q, ids, n, &split, err, sizeof err),
            RC_OK);
        /* "What is the pass key? The pass key is": 9 words. */
        CHECK_MSG(n - split == 9, "question of %zu tokens", n - split);
        CHECK(ids[split - 1] == 10); /* the newline before it stays with the session */
        free(ids);
        /* chars4 is not split at words: the exact path must still give a valid split. */
        tok_chars4(NULL, p, len, 1, 0, &ids, &n, err, sizeof err);
        CHECK_RC(
            passkey_question_split(tok_chars4, NULL, p, len, q, ids, n, &split, err, sizeof err),
            RC_OK);
        CHECK(split > 0 && split < n);
        free(ids);
        free(p);
    }
}

static void test_result_json(void)
{
    uint64_t lengths[] = {4096, 16384};
    passkey_cfg_t cfg = {.lengths = lengths, .n_lengths = 2, .n_depths = 3, .trials = 2};
    passkey_result_t r;
    CHECK_RC(passkey_result_init(&r, &cfg), RC_OK);
    CHECK(isnan(passkey_overall_accuracy(&r)));
    /* length 0: depths 2/2, 1/2, 0/2; length 1: 2/2 everywhere. */
    int passes[2][3] = {{2, 1, 0}, {2, 2, 2}};
    for (int li = 0; li < 2; li++)
        for (int d = 0; d < 3; d++) {
            r.runs[li * 3 + d] = 2;
            r.passes[li * 3 + d] = passes[li][d];
            for (int t = 0; t < 2; t++) {
                passkey_trial_t *x = &r.log[(li * 3 + d) * 2 + t];
                x->index = 1 + (li * 3 + d) * 2 + t;
                x->target = lengths[li];
                x->tokens = lengths[li] - 1 + t * 2;
                x->key = 100 + t;
                x->pass = t < passes[li][d];
                snprintf(x->answer, sizeof x->answer, "%u", x->key);
                r.sum_tokens[li] += (double)x->tokens;
                if (!r.min_tokens[li] || x->tokens < r.min_tokens[li]) r.min_tokens[li] = x->tokens;
                if (x->tokens > r.max_tokens[li]) r.max_tokens[li] = x->tokens;
            }
            r.done += 2;
        }
    CHECK_NEAR(passkey_cell_accuracy(&r, 0, 1), 0.5, 1e-12);
    CHECK_NEAR(passkey_length_accuracy(&r, 0), 0.5, 1e-12);
    CHECK_NEAR(passkey_length_accuracy(&r, 1), 1.0, 1e-12);
    CHECK_NEAR(passkey_overall_accuracy(&r), 0.75, 1e-12);
    char *js = passkey_result_json(&r, "x.png");
    cJSON *o = js ? cJSON_Parse(js) : NULL;
    CHECK(o != NULL);
    if (o) {
        CHECK_NEAR(cJSON_GetObjectItem(o, "accuracy")->valuedouble, 0.75, 1e-12);
        cJSON *bl = cJSON_GetObjectItem(o, "by_length");
        CHECK(bl && cJSON_GetArraySize(bl) == 2);
        CHECK(bl && fabs(cJSON_GetObjectItem(bl, "4096")->valuedouble - 0.5) < 1e-12);
        cJSON *cells = cJSON_GetObjectItem(o, "cells");
        CHECK(cJSON_GetArraySize(cells) == 2 &&
              cJSON_GetArraySize(cJSON_GetArrayItem(cells, 0)) == 3);
        CHECK(cJSON_GetArrayItem(cJSON_GetArrayItem(cells, 0), 2)->valuedouble == 0);
        CHECK(cJSON_GetObjectItem(o, "trials")->valueint == 2);
        cJSON *toks = cJSON_GetObjectItem(o, "tokens");
        CHECK(cJSON_GetArraySize(toks) == 2 && cJSON_GetArrayItem(toks, 1)->valuedouble == 16384);
        cJSON *dep = cJSON_GetObjectItem(o, "depths");
        CHECK(cJSON_GetArraySize(dep) == 3 && cJSON_GetArrayItem(dep, 2)->valuedouble == 1.0);
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(o, "results")) == 12);
        CHECK(!strcmp(cJSON_GetObjectItem(o, "png")->valuestring, "x.png"));
        cJSON_Delete(o);
    }
    free(js);

    /* Heatmap: a 100 % cell is green, a 0 % cell red (sampled away from the digits). */
    uint8_t *rgb;
    int w, h;
    CHECK_RC(passkey_heatmap(&r, &rgb, &w, &h), RC_OK);
    CHECK(w > 100 && h > 80);
    int red = 0, green = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            red += p[0] == 215 && p[1] == 48 && p[2] == 39;
            green += p[0] == 26 && p[1] == 152 && p[2] == 80;
        }
    /* One red cell (0 %), four green ones (100 %), plus the legend's ends. */
    CHECK_MSG(red > 500 && green > 4 * 500 && green > 3 * red, "red %d green %d", red, green);
    free(rgb);

    char path[] = "/tmp/test_passkey_XXXXXX.png";
    int fd = mkstemps(path, 4);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    char err[256];
    CHECK_RC(passkey_write_png(&r, path, err, sizeof err), RC_OK);
    FILE *f = fopen(path, "rb");
    unsigned char sig[8] = {0};
    CHECK(f && fread(sig, 1, 8, f) == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8));
    if (f) fclose(f);
    remove(path);
    CHECK_RC(passkey_write_png(&r, "/nonexistent-dir/x.png", err, sizeof err), RC_ERR_IO);
    CHECK(strstr(err, "/nonexistent-dir/x.png") != NULL);
    passkey_result_free(&r);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void test_png(void)
{
    enum { W = 7, H = 5 };
    uint8_t rgb[H][W][3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            rgb[y][x][0] = (uint8_t)(x * 30), rgb[y][x][1] = (uint8_t)(y * 50),
            rgb[y][x][2] = (uint8_t)(x ^ y);
    uint8_t *png;
    size_t n;
    CHECK_RC(recall_png_encode(&rgb[0][0][0], W, H, &png, &n), RC_OK);
    CHECK(n > 8 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8));
    size_t at = 8;
    int chunks = 0, ihdr_ok = 0, iend = 0;
    uint8_t *idat = NULL;
    size_t idat_n = 0;
    while (at + 12 <= n) {
        uint32_t len = be32(png + at);
        const uint8_t *type = png + at + 4, *data = png + at + 8;
        CHECK(at + 12 + len <= n);
        uLong crc = crc32(crc32(0L, Z_NULL, 0), type, 4 + len);
        CHECK_MSG(crc == be32(data + len), "chunk %.4s CRC", (const char *)type);
        if (!memcmp(type, "IHDR", 4))
            ihdr_ok = chunks == 0 && len == 13 && be32(data) == W && be32(data + 4) == H &&
                      data[8] == 8 && data[9] == 2 && data[10] == 0 && data[11] == 0 &&
                      data[12] == 0;
        if (!memcmp(type, "IDAT", 4)) {
            idat = realloc(idat, idat_n + len);
            memcpy(idat + idat_n, data, len);
            idat_n += len;
        }
        if (!memcmp(type, "IEND", 4)) iend = len == 0 && at + 12 == n;
        at += 12 + len;
        chunks++;
    }
    CHECK(ihdr_ok && iend && chunks == 3);
    uint8_t raw[H * (1 + W * 3)];
    uLongf raw_n = sizeof raw;
    CHECK(idat && uncompress(raw, &raw_n, idat, idat_n) == Z_OK && raw_n == sizeof raw);
    int same = 1;
    for (int y = 0; y < H; y++) {
        same &= raw[y * (1 + W * 3)] == 0;
        same &= !memcmp(raw + y * (1 + W * 3) + 1, rgb[y], W * 3);
    }
    CHECK(same);
    free(idat);
    free(png);
    CHECK_RC(recall_png_encode(&rgb[0][0][0], 0, H, &png, &n), RC_ERR_INVALID);
    CHECK_RC(recall_png_encode(&rgb[0][0][0], W, 70000, &png, &n), RC_ERR_INVALID);
}

/* ---- against recalld ---- */

static int test_rpc(void)
{
    const char *data = getenv("RECALL_TEST_DATA");
    if (!data) {
        printf("skipped: RECALL_TEST_DATA is not set\n");
        return CHECK_SKIP;
    }
    char model[1024], tokpath[1100], dir[256], log[512], ep[512];
    snprintf(model, sizeof model, "%s/tiny-fot", data);
    snprintf(tokpath, sizeof tokpath, "%s/tokenizer.model", model);
    if (access(tokpath, R_OK)) {
        printf("skipped: no %s\n", tokpath);
        return CHECK_SKIP;
    }
    char terr[256];
    tokenizer_t *tk = NULL;
    CHECK_RC(tokenizer_load(tokpath, &tk, terr, sizeof terr), RC_OK);
    if (!tk) return check_summary();
    CHECK(rpc_tempdir(dir, sizeof dir) == 0);
    snprintf(log, sizeof log, "%s/recalld.log", dir);
    snprintf(ep, sizeof ep, "ipc://%s/sock", dir);
    rpc_daemon_t dm;
    if (rpc_daemon_start(&dm, model, dir, ep, log, NULL) != 0) {
        CHECK(!"recalld started");
        tokenizer_destroy(&tk);
        return check_summary();
    }
    recall_client *c;
    const char *cerr;
    CHECK_RC(recall_client_create(ep, &c, &cerr), RC_OK);
    char err[512];

    const char *texts[] = {"", "The pass key is 12345. Remember it.",
                           "What is the pass key? The pass key is",
                           "h\xc3\xa9llo w\xc3\xb6rld\n\n x"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        for (int bos = 0; bos < 2; bos++) {
            int32_t *got = NULL, *want = NULL;
            size_t ng = 0, nw = 0, nc = 0;
            CHECK_RC(tokenizer_encode(tk, texts[i], strlen(texts[i]), bos, &want, &nw), RC_OK);
            CHECK_RC(passkey_tokenize_rpc(c, texts[i], strlen(texts[i]), bos, 0, &got, &ng, err,
                                          sizeof err),
                     RC_OK);
            CHECK_MSG(ng == nw && (!nw || !memcmp(got, want, nw * sizeof *got)),
                      "text %zu bos %d: %zu vs %zu ids", i, bos, ng, nw);
            CHECK_RC(passkey_tokenize_rpc(c, texts[i], strlen(texts[i]), bos, 1, NULL, &nc, err,
                                          sizeof err),
                     RC_OK);
            CHECK(nc == nw);
            free(got);
            free(want);
        }
    /* Bad UTF-8 is refused with the daemon's message. */
    int32_t *ids = NULL;
    size_t n = 0;
    err[0] = 0;
    CHECK_RC(passkey_tokenize_rpc(c, "ab\xff", 3, 0, 0, &ids, &n, err, sizeof err), RC_ERR_INVALID);
    CHECK_MSG(strstr(err, "UTF-8") != NULL, "%s", err);
    CHECK(recall_client_error_remote(c));

    /* The fit and the split with the real tokenizer. */
    size_t chars, toks;
    CHECK_RC(passkey_fit(passkey_tokenize_rpc, c, 2048, &chars, &toks, err, sizeof err), RC_OK);
    CHECK_MSG(toks >= 2046 && toks <= 2050, "fitted 2048 to %zu tokens", toks);
    char *p;
    size_t len, q, split, split_exact;
    passkey_prompt(31337, chars, 0.3, &p, &len, &q);
    CHECK_RC(passkey_tokenize_rpc(c, p, len, 1, 0, &ids, &n, err, sizeof err), RC_OK);
    CHECK(n >= 2040 && n <= 2056);
    CHECK_RC(
        passkey_question_split(passkey_tokenize_rpc, c, p, len, q, ids, n, &split, err, sizeof err),
        RC_OK);
    /* Independently: the ids of the text before the question, BOS first, are a prefix. */
    int32_t *before = NULL;
    size_t nb = 0;
    CHECK_RC(tokenizer_encode(tk, p, q, 1, &before, &nb), RC_OK);
    split_exact = passkey_common_prefix(ids, n, before, nb);
    CHECK_MSG(split == split_exact && split == nb, "split %zu, exact %zu, before %zu", split,
              split_exact, nb);
    free(before);
    free(ids);
    free(p);

    recall_client_destroy(&c);
    CHECK(rpc_daemon_stop(&dm, 15) == 0);
    tokenizer_destroy(&tk);
    rpc_rmtree(dir);
    return check_summary();
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "rpc")) return test_rpc();
    test_template();
    test_depths();
    test_keys();
    test_score();
    test_lengths();
    test_fit_and_split();
    test_result_json();
    test_png();
    return check_summary();
}
