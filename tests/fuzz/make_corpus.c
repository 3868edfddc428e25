/* make_corpus.c — writes the seed corpus of serialized Requests into a directory.
 *
 *   fuzz_make_corpus tests/fuzz/corpus
 *
 * File names say what the daemon must answer, and tests/test_fuzz_corpus.c holds it to
 * that both in process and against a live recalld (limits: --max-chunk-bytes 4096,
 * --max-frame-bytes 65536; sessions "s" with text ingested, and "k" with kNN memory):
 *   ok-*    status 0 (in process: answered 0, or queued for the worker)
 *   bad-*   a non-zero status
 *   any-*   whatever status, as long as the daemon answers and stays up
 * Files replayed in name order, so ok-create-tmp comes before ok-drop-tmp. A generated
 * frame meant to be bad that still decodes (a truncation at a field boundary) is written
 * as any-*. found-* files are inputs the fuzzers found; this program never writes them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "recall.pb-c.h"

static const char *g_dir;
static int g_files;

static void write_file(const char *name, const uint8_t *buf, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.bin", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(buf, 1, n, f) != n)) {
        fprintf(stderr, "fuzz_make_corpus: cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
    g_files++;
}

/* Writes a frame that must fail; renamed any-* when protobuf-c nonetheless decodes it. */
static void write_bad(const char *what, const uint8_t *buf, size_t n)
{
    Recall__Request *r = recall__request__unpack(NULL, n, buf);
    char name[256];
    snprintf(name, sizeof name, "%s-%s", r ? "any" : "bad", what);
    if (r) recall__request__free_unpacked(r, NULL);
    write_file(name, buf, n);
}

static uint8_t *pack(Recall__Request *q, size_t *n)
{
    *n = recall__request__get_packed_size(q);
    uint8_t *b = malloc(*n ? *n : 1);
    recall__request__pack(q, b);
    return b;
}

/* Writes q under name, and its truncations (half, all but one byte) as bad-/any-. */
static void emit(const char *name, Recall__Request *q)
{
    static uint64_t id = 100;
    if (!q->id) q->id = id++;
    size_t n;
    uint8_t *b = pack(q, &n);
    write_file(name, b, n);
    const char *kind = strchr(name, '-') ? strchr(name, '-') + 1 : name;
    char t[256];
    if (n > 2) {
        snprintf(t, sizeof t, "trunc-half-%s", kind);
        write_bad(t, b, n / 2);
        snprintf(t, sizeof t, "trunc-last-%s", kind);
        write_bad(t, b, n - 1);
    }
    free(b);
}

#define REQ(var, field, CASE)                                                                      \
    Recall__Request var = RECALL__REQUEST__INIT;                                                   \
    var.body_case = RECALL__REQUEST__BODY_##CASE;                                                  \
    var.field = &field##_

static void quick_requests(void)
{
    Recall__HealthRequest health_ = RECALL__HEALTH_REQUEST__INIT;
    REQ(h, health, HEALTH);
    emit("ok-health", &h);
    Recall__StatsRequest stats_ = RECALL__STATS_REQUEST__INIT;
    REQ(st, stats, STATS);
    emit("ok-stats", &st);
    Recall__ListSessionsRequest list_sessions_ = RECALL__LIST_SESSIONS_REQUEST__INIT;
    REQ(l, list_sessions, LIST_SESSIONS);
    emit("ok-list", &l);
    Recall__SessionInfoRequest session_info_ = RECALL__SESSION_INFO_REQUEST__INIT;
    session_info_.session = (char *)"s";
    REQ(i, session_info, SESSION_INFO);
    emit("ok-info-s", &i);
    session_info_.session = (char *)"no-such-session";
    emit("bad-info-missing", &i);
    session_info_.session = (char *)"../etc/passwd";
    emit("bad-info-path", &i);
}

static void create_requests(void)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    Recall__CreateSessionRequest create_session_ = RECALL__CREATE_SESSION_REQUEST__INIT;
    REQ(c, create_session, CREATE_SESSION);
    create_session_.session = (char *)"tmp";
    emit("ok-create-tmp", &c);
    create_session_.session = (char *)"tmpk";
    create_session_.options = &o;
    o.memory = (char *)"knn";
    o.k = 8;
    o.mem_dtype = (char *)"f32";
    o.positional = (char *)"rope";
    emit("ok-create-tmpk", &c);
    create_session_.session = (char *)"s";
    create_session_.if_not_exists = 1;
    create_session_.options = NULL;
    emit("ok-create-s-if-not-exists", &c);
    create_session_.if_not_exists = 0;
    emit("bad-create-s-exists", &c);

    static const char *const names[] = {"", ".hidden", "a/b", "a\\b", "sp ace", "\x01", "\xc3\xa9"};
    char label[64];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        create_session_.session = (char *)names[i];
        snprintf(label, sizeof label, "bad-create-name-%zu", i);
        emit(label, &c);
    }
    char longname[130];
    memset(longname, 'a', 129);
    longname[129] = 0;
    create_session_.session = longname;
    emit("bad-create-name-long", &c);

    create_session_.session = (char *)"opt";
    Recall__SessionOptions b = RECALL__SESSION_OPTIONS__INIT;
    create_session_.options = &b;
    b.positional = (char *)"sideways";
    emit("bad-create-positional", &c);
    b.positional = (char *)"";
    b.memory = (char *)"fuzzy";
    emit("bad-create-memory", &c);
    b.memory = (char *)"";
    b.rope_factor = 2.0f;
    emit("bad-create-factor-without-scaling", &c);
    b.rope_scaling = (char *)"warp";
    emit("bad-create-scaling", &c);
    b.rope_scaling = NULL;
    b.rope_factor = 0;
    b.window = 0xffffffffu;
    emit("bad-create-window-huge", &c);
    b.window = 100000;
    emit("bad-create-window-large", &c);
    b.window = 0;
    b.memory = (char *)"knn";
    b.k = 0xffffffffu;
    emit("bad-create-k-huge", &c);
    b.k = 0;
    b.memory = (char *)"";
    b.mem_dtype = (char *)"f8";
    emit("bad-create-dtype", &c);
    b.mem_dtype = (char *)"";
    b.positional = (char *)"self-extend";
    emit("bad-create-self-extend-no-group", &c);
    b.group = 0x80000000u;
    b.neighbor = 0x80000000u;
    emit("bad-create-self-extend-huge", &c);
}

static void drop_requests(void)
{
    Recall__DropSessionRequest drop_session_ = RECALL__DROP_SESSION_REQUEST__INIT;
    REQ(d, drop_session, DROP_SESSION);
    drop_session_.session = (char *)"tmp";
    emit("ok-drop-tmp", &d);
    drop_session_.session = (char *)"tmpk";
    emit("ok-drop-tmpk", &d);
    drop_session_.session = (char *)"never-was";
    emit("bad-drop-missing", &d);
    drop_session_.session = (char *)"";
    emit("bad-drop-empty-name", &d);
}

static void ingest_requests(void)
{
    Recall__IngestRequest ingest_ = RECALL__INGEST_REQUEST__INIT;
    REQ(q, ingest, INGEST);
    ingest_.session = (char *)"s";
    ingest_.seq = 1;
    ingest_.text = (char *)"The recipe asked for 253 grams of flour.";
    emit("ok-ingest-text", &q);
    int32_t toks[] = {1, 5, 6, 7, 8, 9, 10, 300, 511};
    ingest_.text = (char *)"";
    ingest_.tokens = toks;
    ingest_.n_tokens = sizeof toks / sizeof toks[0];
    emit("ok-ingest-tokens", &q);
    ingest_.text = (char *)"both";
    emit("bad-ingest-text-and-tokens", &q);
    ingest_.text = (char *)"";
    ingest_.seq = 0;
    emit("bad-ingest-seq0", &q);
    ingest_.seq = 1;
    int32_t out[] = {5, 512};
    ingest_.tokens = out;
    ingest_.n_tokens = 2;
    emit("bad-ingest-token-over", &q);
    int32_t neg[] = {-1};
    ingest_.tokens = neg;
    ingest_.n_tokens = 1;
    emit("bad-ingest-token-negative", &q);
    int32_t *many = calloc(1025, sizeof *many);
    ingest_.tokens = many;
    ingest_.n_tokens = 1025; /* 4100 bytes of ids */
    emit("bad-ingest-tokens-over-limit", &q);
    free(many);
    ingest_.tokens = NULL;
    ingest_.n_tokens = 0;
    static const char *const bad_utf8[] = {"abc \x80 def", "\xc0\xaf", "\xed\xa0\x80",
                                           "\xf4\x90\x80\x80", "\xe2\x82"};
    char label[64];
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        ingest_.text = (char *)bad_utf8[i];
        snprintf(label, sizeof label, "bad-ingest-utf8-%zu", i);
        emit(label, &q);
    }
    char *big = malloc(4097);
    memset(big, 'x', 4096);
    big[4096] = 0;
    ingest_.text = big + 1; /* 4095: at the limit */
    emit("ok-ingest-text-at-limit", &q);
    big[0] = 'y';
    ingest_.text = big;
    char *bigger = malloc(4098);
    memset(bigger, 'x', 4097);
    bigger[4097] = 0;
    ingest_.text = bigger;
    emit("bad-ingest-text-over-limit", &q);
    free(big);
    free(bigger);
    ingest_.text = (char *)"x";
    ingest_.session = (char *)"no-such-session";
    emit("bad-ingest-missing-session", &q);
    ingest_.session = (char *)"a;b";
    emit("bad-ingest-name", &q);
}

static void ask_requests(void)
{
    Recall__AskRequest ask_ = RECALL__ASK_REQUEST__INIT;
    REQ(q, ask, ASK);
    ask_.session = (char *)"s";
    ask_.question = (char *)"How much flour?";
    ask_.max_tokens = 4;
    emit("ok-ask-text", &q);
    ask_.temperature = 0.8f;
    ask_.top_p = 0.9f;
    ask_.seed = 7;
    emit("ok-ask-sampled", &q);
    ask_.temperature = -1.0f;
    emit("bad-ask-temperature-negative", &q);
    ask_.temperature = NAN;
    emit("bad-ask-temperature-nan", &q);
    ask_.temperature = 0;
    ask_.top_p = NAN;
    emit("bad-ask-top-p-nan", &q);
    ask_.top_p = 0;
    int32_t qt[] = {1, 20, 30};
    ask_.question_tokens = qt;
    ask_.n_question_tokens = 3;
    emit("bad-ask-text-and-tokens", &q);
    ask_.question = (char *)"";
    ask_.session = (char *)"k";
    emit("ok-ask-tokens-knn", &q);
    int32_t bad[] = {0x7fffffff};
    ask_.question_tokens = bad;
    ask_.n_question_tokens = 1;
    emit("bad-ask-token-range", &q);
    ask_.n_question_tokens = 0;
    ask_.question = (char *)"\xff";
    emit("bad-ask-utf8", &q);
    ask_.question = (char *)"x";
    ask_.session = (char *)"";
    emit("bad-ask-no-session", &q);
}

static void score_requests(void)
{
    Recall__ScoreRequest score_ = RECALL__SCORE_REQUEST__INIT;
    REQ(q, score, SCORE);
    score_.text = (char *)"Some text to score, long enough for a few tokens.";
    score_.add_bos = 1;
    score_.want_logprobs = 1;
    emit("ok-score-text", &q);
    int32_t t[] = {1, 40, 41, 42, 43};
    score_.text = (char *)"";
    score_.tokens = t;
    score_.n_tokens = 5;
    emit("ok-score-tokens", &q);
    score_.text = (char *)"and text";
    emit("bad-score-text-and-tokens", &q);
    score_.text = (char *)"";
    score_.tokens = NULL;
    score_.n_tokens = 0;
    score_.session = (char *)"s";
    emit("ok-score-session", &q);
    score_.text = (char *)"text too";
    emit("bad-score-session-and-text", &q);
    score_.session = (char *)"";
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.positional = (char *)"nowhere";
    score_.options = &o;
    emit("bad-score-options", &q);
    o.positional = (char *)"";
    o.rope_scaling = (char *)"linear";
    o.rope_factor = 2.0f;
    emit("ok-score-linear-scaling", &q);
    score_.options = NULL;
    score_.text = (char *)"\xed\xbf\xbf";
    emit("bad-score-utf8", &q);
}

/* Raw wire-format oddities protobuf-c has to survive. */
static void raw_frames(void)
{
    write_file("bad-empty", (const uint8_t *)"", 0);
    static const uint8_t ff[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    write_bad("garbage-ff", ff, sizeof ff);
    /* id = 5 followed by an 11-byte varint (longer than any 64-bit value). */
    static const uint8_t ov[] = {0x08, 0x05, 0x10, 0x80, 0x80, 0x80, 0x80, 0x80,
                                 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    write_bad("varint-overlong", ov, sizeof ov);
    /* id sent as a length-delimited field: wrong wire type. */
    static const uint8_t wt[] = {0x0a, 0x01, 0x00};
    write_bad("wire-type", wt, sizeof wt);
    /* ingest (field 11) claiming a 2^63-byte body. */
    static const uint8_t ln[] = {0x5a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    write_bad("length-huge", ln, sizeof ln);
    /* ingest with a packed tokens field whose last varint is cut. */
    static const uint8_t pk[] = {0x5a, 0x08, 0x0a, 0x01, 's', 0x10, 0x01, 0x22, 0x02, 0x80};
    write_bad("packed-cut", pk, sizeof pk);
    /* Field number 0 (invalid) and a group start (wire type 3, deprecated). */
    static const uint8_t f0[] = {0x00, 0x01};
    write_bad("field-zero", f0, sizeof f0);
    static const uint8_t gs[] = {0x0b, 0x0c};
    write_bad("group", gs, sizeof gs);
    /* An unknown field only: decodes, but there is no body. */
    static const uint8_t uk[] = {0x08, 0x09, 0xa2, 0x06, 0x01, 0x41};
    write_bad("unknown-field", uk, sizeof uk);
    /* Two different oneof members: the last one wins (health). */
    static const uint8_t two[] = {0x08, 0x0a, 0x5a, 0x03, 0x0a, 0x01, 's', 0x92, 0x01, 0x00};
    write_file("any-oneof-ingest-then-health", two, sizeof two);
    /* The same oneof member twice: protobuf-c merges the two ingest bodies. */
    static const uint8_t same[] = {0x08, 0x0b, 0x5a, 0x05, 0x0a, 0x01, 's', 0x10, 0x01,
                                   0x5a, 0x04, 0x1a, 0x02, 'h', 'i'};
    write_file("any-oneof-ingest-twice", same, sizeof same);
    /* Ingest whose tokens come unpacked and packed, mixed. */
    static const uint8_t mix[] = {0x08, 0x0c, 0x5a, 0x0c, 0x0a, 0x01, 's', 0x10, 0x01, 0x20,
                                  0x05, 0x22, 0x02, 0x06, 0x07, 0x20, 0x08};
    write_file("any-ingest-tokens-mixed", mix, sizeof mix);
    /* A text with an embedded NUL (protobuf-c keeps the bytes; C sees the prefix). */
    static const uint8_t nul[] = {0x08, 0x0d, 0x5a, 0x0b, 0x0a, 0x01, 's', 0x10,
                                  0x01, 0x1a, 0x04, 'a', 0x00, 'b', 'c'};
    write_file("any-ingest-text-nul", nul, sizeof nul);
    /* A frame over --max-frame-bytes (65536). */
    size_t hn = 65537;
    uint8_t *huge = calloc(1, hn);
    write_file("bad-frame-over-limit", huge, hn);
    free(huge);
    /* A few seeded random frames. */
    unsigned s = 12345;
    for (int k = 0; k < 6; k++) {
        uint8_t r[48];
        size_t n = 4 + (size_t)(k * 7);
        for (size_t i = 0; i < n; i++) {
            s = s * 1103515245u + 12345u;
            r[i] = (uint8_t)(s >> 16);
        }
        char name[32];
        snprintf(name, sizeof name, "random-%d", k);
        write_bad(name, r, n);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_corpus DIR   (writes the seed corpus into DIR)\n");
        return 2;
    }
    g_dir = argv[1];
    quick_requests();
    create_requests();
    drop_requests();
    ingest_requests();
    ask_requests();
    score_requests();
    raw_frames();
    printf("fuzz_make_corpus: %d files in %s\n", g_files, g_dir);
    return 0;
}
