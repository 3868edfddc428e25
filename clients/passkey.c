/* passkey.c — `recall passkey`: see passkey.h for the test and its exact rules. */
#include "clients/passkey.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/chunker.h"
#include "clients/ingest.h"
#include "clients/png.h"
#include "common/clock.h"

const char PASSKEY_INTRO[] = "There is an important info hidden inside a lot of irrelevant text. "
                             "Find it and memorize them. I will quiz you about the important "
                             "information there.";
const char PASSKEY_FILLER[] = "The grass is green. The sky is blue. The sun is yellow. Here we go. "
                              "There and back again.";
const char PASSKEY_QUESTION[] = "What is the pass key? The pass key is";

#define MAX_LENGTH (64ull << 20)
/* Characters of context before the question line when measuring its tokens on their own
 * (passkey_question_split): enough for several words, so the cut's first piece is far away. */
#define SPLIT_CONTEXT 256

/* Error text for the caller (common/rc.h formats it). */
#define set_err(...) ((void)rc_errf(RC_OK, __VA_ARGS__))

/* ---------------------------------------------------------------------------------------
 * The pieces */

rc_t passkey_parse_lengths(const char *spec, uint64_t *out, int max, int *n, char *err,
                           size_t errlen)
{
    *n = 0;
    if (!spec || !*spec) {
        set_err(err, errlen, "--tokens needs a list of lengths, e.g. 4k,16k,64k,256k");
        return RC_ERR_INVALID;
    }
    const char *p = spec;
    for (;;) {
        const char *start = p;
        while (*p && *p != ',')
            p++;
        size_t len = (size_t)(p - start);
        char item[64];
        if (len == 0 || len >= sizeof item) {
            set_err(err, errlen,
                    len ? "--tokens: '%.20s...' is not a length"
                        : "--tokens: empty entry in '%s' (lengths are separated by single commas)",
                    len ? start : spec);
            return RC_ERR_INVALID;
        }
        memcpy(item, start, len);
        item[len] = 0;
        uint64_t v = 0, mult = 1;
        size_t i = 0;
        while (i < len && item[i] >= '0' && item[i] <= '9') {
            if (v > MAX_LENGTH) break;
            v = v * 10 + (uint64_t)(item[i] - '0');
            i++;
        }
        if (i < len && (item[i] == 'k' || item[i] == 'K') && i + 1 == len)
            mult = 1024, i++;
        else if (i < len && (item[i] == 'm' || item[i] == 'M') && i + 1 == len)
            mult = 1024 * 1024, i++;
        if (i == 0 || i != len || (item[0] < '0' || item[0] > '9')) {
            set_err(err, errlen,
                    "--tokens: '%s' is not a length (a whole number of tokens with an optional "
                    "k (x1024) or M (x1048576) suffix, e.g. 4k,16k,64k,256k)",
                    item);
            return RC_ERR_INVALID;
        }
        if (v > MAX_LENGTH || v * mult > MAX_LENGTH || v == 0) {
            set_err(err, errlen, "--tokens: %s is outside 1 .. 64M tokens", item);
            return RC_ERR_INVALID;
        }
        v *= mult;
        for (int k = 0; k < *n; k++)
            if (out[k] == v) {
                set_err(err, errlen, "--tokens: %s is given twice", item);
                return RC_ERR_INVALID;
            }
        if (*n >= max) {
            set_err(err, errlen, "--tokens: at most %d lengths", max);
            return RC_ERR_INVALID;
        }
        out[(*n)++] = v;
        if (!*p) break;
        p++;
    }
    return RC_OK;
}

void passkey_length_label(uint64_t t, char *buf, size_t n)
{
    if (t >= 1048576 && t % 1048576 == 0)
        snprintf(buf, n, "%lluM", (unsigned long long)(t / 1048576));
    else if (t >= 1024 && t % 1024 == 0)
        snprintf(buf, n, "%lluk", (unsigned long long)(t / 1024));
    else
        snprintf(buf, n, "%llu", (unsigned long long)t);
}

double passkey_depth(int d, int n_depths)
{
    if (n_depths <= 1) return 0.5;
    return (double)d / (double)(n_depths - 1);
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint32_t passkey_key(uint64_t seed, uint64_t target, int depth_i, int trial)
{
    /* Each coordinate goes through the mixer in turn, so neighbouring trials, depths and
     * lengths get unrelated streams. */
    uint64_t x = seed;
    uint64_t h = splitmix64(&x);
    x = h ^ target;
    h = splitmix64(&x);
    x = h ^ ((uint64_t)(uint32_t)depth_i << 32 | (uint32_t)trial);
    /* Rejection keeps the draw exactly uniform over the range. */
    const uint64_t range = PASSKEY_KEY_END - PASSKEY_KEY_MIN;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    for (;;) {
        uint64_t v = splitmix64(&x);
        if (v < limit) return (uint32_t)(PASSKEY_KEY_MIN + v % range);
    }
}

char passkey_filler_char(size_t i)
{
    /* " ".join([FILLER] * k): the sentence then one space, repeated. */
    const size_t period = sizeof PASSKEY_FILLER; /* strlen + 1 for the joining space */
    size_t j = i % period;
    return j < period - 1 ? PASSKEY_FILLER[j] : ' ';
}

static char *put_filler(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        *p++ = passkey_filler_char(i);
    return p;
}

rc_t passkey_prompt(uint32_t key, size_t filler_chars, double depth, char **out, size_t *len,
                    size_t *question_at)
{
    *out = NULL;
    char keyline[128];
    int kl = snprintf(keyline, sizeof keyline,
                      "The pass key is %u. Remember it. %u is the pass key.", key, key);
    if (depth < 0) depth = 0;
    if (depth > 1) depth = 1;
    size_t prefix = (size_t)llround(depth * (double)filler_chars);
    if (prefix > filler_chars) prefix = filler_chars;
    size_t suffix = filler_chars - prefix;
    size_t n = strlen(PASSKEY_INTRO) + 1 + prefix + 1 + (size_t)kl + 1 + suffix + 1 +
               strlen(PASSKEY_QUESTION);
    char *s = malloc(n + 1);
    if (!s) return RC_ERR_NOMEM;
    char *p = s;
    p += sprintf(p, "%s\n", PASSKEY_INTRO);
    p = put_filler(p, prefix);
    p += sprintf(p, "\n%s\n", keyline);
    p = put_filler(p, suffix);
    *p++ = '\n';
    *question_at = (size_t)(p - s);
    p += sprintf(p, "%s", PASSKEY_QUESTION);
    *len = (size_t)(p - s);
    *out = s;
    return RC_OK;
}

int passkey_score(const int32_t *answer, size_t n_answer, const int32_t *generated,
                  size_t n_generated)
{
    if (n_answer == 0 || n_generated != n_answer) return 0;
    for (size_t i = 0; i < n_answer; i++)
        if (answer[i] != generated[i]) return 0;
    return 1;
}

size_t passkey_common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb)
{
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    return i;
}

/* ---------------------------------------------------------------------------------------
 * Tokenization */

rc_t passkey_tokenize_rpc(void *ctx, const char *text, size_t len, int add_bos, int count_only,
                          int32_t **ids, size_t *n, char *err, size_t errlen)
{
    recall_client *c = ctx;
    *n = 0;
    if (ids) *ids = NULL;
    /* The wire carries a NUL-terminated string; text[len] is not always NUL here. */
    char *copy = malloc(len + 1);
    if (!copy) return RC_ERR_NOMEM;
    memcpy(copy, text, len);
    copy[len] = 0;
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__TokenizeRequest tr = RECALL__TOKENIZE_REQUEST__INIT;
    tr.text = copy;
    tr.add_bos = add_bos != 0;
    tr.count_only = count_only != 0;
    req.body_case = RECALL__REQUEST__BODY_TOKENIZE;
    req.tokenize = &tr;
    Recall__Response *r = NULL;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    free(copy);
    if (rc) {
        set_err(err, errlen, "%s", recall_client_error(c));
        return rc;
    }
    if (r->body_case != RECALL__RESPONSE__BODY_TOKENIZE) {
        recall__response__free_unpacked(r, NULL);
        set_err(err, errlen,
                "the daemon does not answer Tokenize (an older recalld?); recall passkey "
                "needs it to measure prompts");
        return RC_ERR_UNSUPPORTED;
    }
    const Recall__TokenizeResponse *t = r->tokenize;
    *n = (size_t)t->count;
    if (!count_only) {
        if (t->n_tokens != t->count) {
            recall__response__free_unpacked(r, NULL);
            set_err(err, errlen, "the daemon's Tokenize answer has %zu ids but says %llu",
                    t->n_tokens, (unsigned long long)t->count);
            return RC_ERR_FORMAT;
        }
        *ids = malloc((t->n_tokens ? t->n_tokens : 1) * sizeof **ids);
        if (!*ids) {
            recall__response__free_unpacked(r, NULL);
            return RC_ERR_NOMEM;
        }
        if (t->n_tokens) memcpy(*ids, t->tokens, t->n_tokens * sizeof **ids);
    }
    recall__response__free_unpacked(r, NULL);
    return RC_OK;
}

/* Token count of the prompt for (key, n filler chars, depth), BOS included. */
static rc_t prompt_tokens(passkey_tokenize_fn tok, void *ctx, uint32_t key, size_t n, double depth,
                          size_t *count, char *err, size_t errlen)
{
    char *p;
    size_t len, q;
    rc_t rc = passkey_prompt(key, n, depth, &p, &len, &q);
    if (rc) return rc;
    rc = tok(ctx, p, len, 1, 1, NULL, count, err, errlen);
    free(p);
    return rc;
}

rc_t passkey_fit(passkey_tokenize_fn tok, void *ctx, uint64_t target, size_t *filler_chars,
                 size_t *tokens, char *err, size_t errlen)
{
    const uint32_t key = 49999; /* the most digits a key has */
    size_t t0;
    rc_t rc = prompt_tokens(tok, ctx, key, 0, 0.5, &t0, err, errlen);
    if (rc) return rc;
    if (target <= t0) {
        char l[32];
        passkey_length_label(target, l, sizeof l);
        set_err(err, errlen,
                "--tokens %s is too short: the prompt without any filler is already %zu tokens "
                "with this model's tokenizer",
                l, t0);
        return RC_ERR_INVALID;
    }
    /* Tokens per character of filler, from a sample long enough to average the cut. */
    enum { SAMPLE = 8192 };
    char *sample = malloc(SAMPLE);
    if (!sample) return RC_ERR_NOMEM;
    put_filler(sample, SAMPLE);
    size_t ts;
    rc = tok(ctx, sample, SAMPLE, 0, 1, NULL, &ts, err, errlen);
    free(sample);
    if (rc) return rc;
    if (ts == 0) {
        set_err(err, errlen, "the tokenizer turned %d characters of filler into no tokens", SAMPLE);
        return RC_ERR_INVALID;
    }
    double rate = (double)ts / SAMPLE;
    uint64_t tol = target / 1000 > 2 ? target / 1000 : 2;
    double nf = (double)(target - t0) / rate;
    size_t best_n = 0, best_t = t0;
    uint64_t best_d = target - t0;
    for (int it = 0; it < 10; it++) {
        size_t n = nf > 0 ? (size_t)llround(nf) : 0;
        size_t t;
        rc = prompt_tokens(tok, ctx, key, n, 0.5, &t, err, errlen);
        if (rc) return rc;
        uint64_t d = t > target ? t - target : target - t;
        if (d < best_d || (d == best_d && n < best_n)) best_d = d, best_n = n, best_t = t;
        if (d <= tol) break;
        double step = ((double)target - (double)t) / rate;
        /* A step under one character would repeat the same measurement. */
        if (fabs(step) < 1) step = step < 0 ? -1 : 1;
        nf = (double)n + step;
    }
    *filler_chars = best_n;
    *tokens = best_t;
    return RC_OK;
}

rc_t passkey_question_split(passkey_tokenize_fn tok, void *ctx, const char *prompt, size_t len,
                            size_t q_at, const int32_t *ids, size_t n, size_t *split, char *err,
                            size_t errlen)
{
    *split = n;
    if (q_at == 0 || q_at > len) return RC_ERR_INVALID;
    /* Cheap path: tokenize a few hundred characters before the question, starting at a
     * word, with and without the question line; the ids the question adds are the tail
     * of the longer one after the common prefix. Accept it only if the whole prompt's ids
     * end the same way. */
    size_t start = q_at > SPLIT_CONTEXT ? q_at - SPLIT_CONTEXT : 0;
    while (start > 0 && start < q_at && prompt[start - 1] != ' ')
        start++;
    if (start >= q_at) start = 0;
    int32_t *a = NULL, *b = NULL;
    size_t na, nb;
    rc_t rc = tok(ctx, prompt + start, q_at - start, 0, 0, &a, &na, err, errlen);
    if (!rc) rc = tok(ctx, prompt + start, len - start, 0, 0, &b, &nb, err, errlen);
    if (rc) {
        free(a);
        free(b);
        return rc;
    }
    size_t lcp = passkey_common_prefix(a, na, b, nb);
    size_t qn = nb - lcp;
    int ok = lcp > 0 && qn > 0 && qn < n && !memcmp(ids + n - qn, b + lcp, qn * sizeof *ids);
    free(a);
    free(b);
    if (ok) {
        *split = n - qn;
        return RC_OK;
    }
    /* Exact path: the ids of everything before the question, BOS first. */
    rc = tok(ctx, prompt, q_at, 1, 0, &a, &na, err, errlen);
    if (rc) return rc;
    lcp = passkey_common_prefix(ids, n, a, na);
    free(a);
    *split = lcp < n ? lcp : n - 1;
    return RC_OK;
}

/* ---------------------------------------------------------------------------------------
 * Results */

rc_t passkey_result_init(passkey_result_t *r, const passkey_cfg_t *cfg)
{
    memset(r, 0, sizeof *r);
    size_t nl = (size_t)cfg->n_lengths, nd = (size_t)cfg->n_depths, nt = (size_t)cfg->trials;
    r->n_lengths = cfg->n_lengths;
    r->n_depths = cfg->n_depths;
    r->trials = cfg->trials;
    r->targets = calloc(nl, sizeof *r->targets);
    r->filler_chars = calloc(nl, sizeof *r->filler_chars);
    r->min_tokens = calloc(nl, sizeof *r->min_tokens);
    r->max_tokens = calloc(nl, sizeof *r->max_tokens);
    r->sum_tokens = calloc(nl, sizeof *r->sum_tokens);
    r->passes = calloc(nl * nd, sizeof *r->passes);
    r->runs = calloc(nl * nd, sizeof *r->runs);
    r->depths = calloc(nd, sizeof *r->depths);
    r->log = calloc(nl * nd * nt, sizeof *r->log);
    if (!r->targets || !r->filler_chars || !r->min_tokens || !r->max_tokens || !r->sum_tokens ||
        !r->passes || !r->runs || !r->depths || !r->log) {
        passkey_result_free(r);
        return RC_ERR_NOMEM;
    }
    for (size_t i = 0; i < nl; i++)
        r->targets[i] = cfg->lengths[i];
    for (size_t d = 0; d < nd; d++)
        r->depths[d] = passkey_depth((int)d, cfg->n_depths);
    return RC_OK;
}

void passkey_result_free(passkey_result_t *r)
{
    free(r->targets);
    free(r->filler_chars);
    free(r->min_tokens);
    free(r->max_tokens);
    free(r->sum_tokens);
    free(r->passes);
    free(r->runs);
    free(r->depths);
    free(r->log);
    memset(r, 0, sizeof *r);
}

double passkey_cell_accuracy(const passkey_result_t *r, int li, int di)
{
    int k = li * r->n_depths + di;
    return r->runs[k] ? (double)r->passes[k] / r->runs[k] : NAN;
}

double passkey_length_accuracy(const passkey_result_t *r, int li)
{
    int p = 0, n = 0;
    for (int d = 0; d < r->n_depths; d++)
        p += r->passes[li * r->n_depths + d], n += r->runs[li * r->n_depths + d];
    return n ? (double)p / n : NAN;
}

double passkey_overall_accuracy(const passkey_result_t *r)
{
    int p = 0, n = 0;
    for (int k = 0; k < r->n_lengths * r->n_depths; k++)
        p += r->passes[k], n += r->runs[k];
    return n ? (double)p / n : NAN;
}

/* ---------------------------------------------------------------------------------------
 * The run */

static int stopped(const passkey_cfg_t *cfg)
{
    return cfg->stop && *cfg->stop;
}

/* A daemon or transport failure: the client's message into err. */
static rc_t call_failed(recall_client *c, rc_t rc, const char *what, char *err, size_t errlen)
{
    set_err(err, errlen, "%s: %s", what,
            recall_client_error(c)[0] ? recall_client_error(c) : rc_strerror(rc));
    return rc;
}

static rc_t create_session(recall_client *c, const passkey_cfg_t *cfg, const char *name, char *err,
                           size_t errlen)
{
    /* Not if_not_exists: a leftover session of the same name would falsify the trial. */
    Recall__Response *r;
    rc_t rc = recall_client_create_session(c, name, cfg->session_opts, 0, &r);
    if (rc == RC_ERR_EXISTS) {
        set_err(err, errlen,
                "session '%s' already exists (left by an earlier run?); drop it, or pick "
                "another --session-prefix",
                name);
        return rc;
    }
    if (rc) return call_failed(c, rc, "cannot create the trial's session", err, errlen);
    recall__response__free_unpacked(r, NULL);
    return RC_OK;
}

/* Ingests ids[0..n) into the fresh session `name` through the library's ingest call, in
 * chunks of cfg->chunk_tokens; each chunk must be taken whole. */
static rc_t ingest_ids(recall_client *c, const passkey_cfg_t *cfg, const char *name,
                       const int32_t *ids, size_t n, char *err, size_t errlen)
{
    recall_ingest_state st = {.session = name};
    recall_ingest_opts o = {.chunk_tokens = cfg->chunk_tokens, .stop = cfg->stop};
    recall_ingest_error ie;
    rc_t rc = recall_ingest_tokens(c, ids, n, &o, &st, &ie);
    if (rc == RC_OK && !stopped(cfg)) return RC_OK;
    switch (rc ? ie.fault : RECALL_INGEST_STOPPED) { /* a signal during the last chunk too */
    case RECALL_INGEST_STOPPED:
        set_err(err, errlen, "stopped by a signal during a trial");
        return RC_ERR_SHUTDOWN;
    case RECALL_INGEST_PROTOCOL:
        set_err(err, errlen, "the daemon did not take chunk %llu of session '%s' as sent",
                (unsigned long long)ie.seq, name);
        return RC_ERR_FORMAT;
    case RECALL_INGEST_NOMEM:
        return rc; /* run_trial says "out of memory" */
    default: /* the daemon's or the transport's words are the client error; INPUT cannot be */
        return call_failed(c, rc, "ingest of the prompt failed", err, errlen);
    }
}

typedef struct ask_acc {
    int32_t *gen; /* [cap] */
    size_t n, cap;
    char text[96];
    size_t text_len;
} ask_acc;

static rc_t ask_collect(const Recall__Response *r, void *arg)
{
    ask_acc *a = arg;
    if (r->body_case != RECALL__RESPONSE__BODY_ASK) return RC_OK;
    const Recall__AskResponse *x = r->ask;
    if (!x->done && a->n < a->cap) a->gen[a->n++] = x->token;
    const char *t = x->text ? x->text : "";
    size_t tl = strlen(t), room = sizeof a->text - 1 - a->text_len;
    if (tl > room) tl = room;
    memcpy(a->text + a->text_len, t, tl);
    a->text_len += tl;
    a->text[a->text_len] = 0;
    return RC_OK;
}

/* Characters that may be printed as the model's answer: the text cut at the first
 * control character, so one line stays one line. */
static void printable_answer(char *s)
{
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = 0;
            break;
        }
}

static rc_t run_trial(recall_client *c, const passkey_cfg_t *cfg, passkey_trial_t *t,
                      size_t filler_chars, char *err, size_t errlen)
{
    char *prompt = NULL;
    int32_t *ids = NULL, *ans = NULL;
    size_t len, q_at, n, n_ans, split;
    int created = 0;
    ask_acc acc = {0};
    double t0 = clock_now_s();
    rc_t rc = passkey_prompt(t->key, filler_chars, t->depth, &prompt, &len, &q_at);
    if (rc) goto out;
    rc = passkey_tokenize_rpc(c, prompt, len, 1, 0, &ids, &n, err, errlen);
    if (rc) goto out;
    t->tokens = n;
    char key_text[16];
    int kl = snprintf(key_text, sizeof key_text, "%u", t->key);
    rc = passkey_tokenize_rpc(c, key_text, (size_t)kl, 0, 0, &ans, &n_ans, err, errlen);
    if (rc) goto out;
    t->n_answer = n_ans;
    rc = passkey_question_split(passkey_tokenize_rpc, c, prompt, len, q_at, ids, n, &split, err,
                                errlen);
    if (rc) goto out;
    t->question_tokens = n - split;

    rc = create_session(c, cfg, t->session, err, errlen);
    if (rc) goto out;
    created = 1;
    rc = ingest_ids(c, cfg, t->session, ids, split, err, errlen);
    if (rc) goto out;

    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = t->session;
    ar.question_tokens = ids + split;
    ar.n_question_tokens = n - split;
    ar.max_tokens = (uint32_t)n_ans;
    ar.temperature = 0;
    ar.ignore_eos = 1; /* an early EOS is a wrong token, not a shorter answer */
    req.body_case = RECALL__REQUEST__BODY_ASK;
    req.ask = &ar;
    acc.cap = n_ans;
    acc.gen = malloc((n_ans ? n_ans : 1) * sizeof *acc.gen);
    if (!acc.gen) {
        rc = RC_ERR_NOMEM;
        goto out;
    }
    rc = recall_client_stream(c, &req, ask_collect, &acc);
    if (rc) {
        call_failed(c, rc, "the question failed", err, errlen);
        goto out;
    }
    t->n_generated = acc.n;
    t->pass = passkey_score(ans, n_ans, acc.gen, acc.n);
    /* The answer as a person reads it: the word-start space SentencePiece gives the key
     * is the decoder's, not the model's, so it is trimmed for display only. */
    const char *shown = acc.text;
    while (*shown == ' ')
        shown++;
    snprintf(t->answer, sizeof t->answer, "%s", shown);
    printable_answer(t->answer);
    /* The buffer may have cut a character in two; JSON must stay UTF-8. */
    size_t bad;
    if (!recall_utf8_valid(t->answer, strlen(t->answer), &bad)) t->answer[bad] = 0;
out:
    if (rc == RC_ERR_NOMEM) set_err(err, errlen, "out of memory");
    if (created && !cfg->keep) {
        rc_t drc = recall_client_drop(c, t->session);
        if (drc && !rc) rc = call_failed(c, drc, "cannot drop the trial's session", err, errlen);
    }
    t->seconds = clock_now_s() - t0;
    free(prompt);
    free(ids);
    free(ans);
    free(acc.gen);
    return rc;
}

rc_t passkey_run(recall_client *c, const passkey_cfg_t *cfg, passkey_result_t *res, char *err,
                 size_t errlen)
{
    double t_start = clock_now_s();
    int total = cfg->n_lengths * cfg->n_depths * cfg->trials, index = 0;
    rc_t rc = RC_OK;
    for (int li = 0; li < cfg->n_lengths && !rc; li++) {
        uint64_t target = cfg->lengths[li];
        char label[32], phase[96];
        passkey_length_label(target, label, sizeof label);
        if (cfg->on_phase) {
            snprintf(phase, sizeof phase, "measuring the filler for %s tokens", label);
            cfg->on_phase(phase, cfg->arg);
        }
        size_t fitted;
        rc = passkey_fit(passkey_tokenize_rpc, c, target, &res->filler_chars[li], &fitted, err,
                         errlen);
        if (rc) break;
        for (int di = 0; di < cfg->n_depths && !rc; di++) {
            for (int tr = 0; tr < cfg->trials && !rc; tr++) {
                if (stopped(cfg)) {
                    rc = RC_ERR_SHUTDOWN;
                    set_err(err, errlen, "stopped by a signal after %d of %d trials", index, total);
                    break;
                }
                passkey_trial_t *t =
                    &res->log[((size_t)li * cfg->n_depths + di) * cfg->trials + tr];
                memset(t, 0, sizeof *t);
                t->length_i = li, t->depth_i = di, t->trial = tr;
                t->index = ++index, t->total = total;
                t->target = target;
                t->depth = passkey_depth(di, cfg->n_depths);
                t->key = passkey_key(cfg->seed, target, di, tr);
                snprintf(t->session, sizeof t->session, "%s-%s-d%d-t%d", cfg->session_prefix, label,
                         di, tr);
                rc = run_trial(c, cfg, t, res->filler_chars[li], err, errlen);
                if (rc) break;
                int k = li * cfg->n_depths + di;
                res->runs[k]++;
                res->passes[k] += t->pass;
                if (!res->min_tokens[li] || t->tokens < res->min_tokens[li])
                    res->min_tokens[li] = t->tokens;
                if (t->tokens > res->max_tokens[li]) res->max_tokens[li] = t->tokens;
                res->sum_tokens[li] += (double)t->tokens;
                res->done++;
                if (cfg->on_trial) cfg->on_trial(t, cfg->arg);
            }
        }
    }
    res->seconds = clock_now_s() - t_start;
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Output */

static double mean_tokens(const passkey_result_t *r, int li)
{
    int n = 0;
    for (int d = 0; d < r->n_depths; d++)
        n += r->runs[li * r->n_depths + d];
    return n ? r->sum_tokens[li] / n : NAN;
}

static void pct(char *buf, size_t n, double a)
{
    if (isnan(a))
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.0f%%", 100 * a);
}

void passkey_print_table(FILE *f, const passkey_result_t *r)
{
    fprintf(f,
            "passkey accuracy: %d trial%s per cell, greedy; rows: prompt length in tokens "
            "(target, actual mean); columns: depth of the key\n",
            r->trials, r->trials == 1 ? "" : "s");
    fprintf(f, "%-6s %9s", "tokens", "actual");
    for (int d = 0; d < r->n_depths; d++) {
        char h[16];
        snprintf(h, sizeof h, "%.0f%%", 100 * r->depths[d]);
        fprintf(f, " %5s", h);
    }
    fprintf(f, " %6s\n", "all");
    for (int li = 0; li < r->n_lengths; li++) {
        char l[32], c[16];
        passkey_length_label(r->targets[li], l, sizeof l);
        double m = mean_tokens(r, li);
        if (isnan(m))
            fprintf(f, "%-6s %9s", l, "-");
        else
            fprintf(f, "%-6s %9.0f", l, m);
        for (int d = 0; d < r->n_depths; d++) {
            pct(c, sizeof c, passkey_cell_accuracy(r, li, d));
            fprintf(f, " %5s", c);
        }
        pct(c, sizeof c, passkey_length_accuracy(r, li));
        fprintf(f, " %6s\n", c);
    }
    if (r->n_lengths > 1) {
        fprintf(f, "%-6s %9s", "all", "");
        for (int d = 0; d < r->n_depths; d++) {
            int p = 0, n = 0;
            for (int li = 0; li < r->n_lengths; li++)
                p += r->passes[li * r->n_depths + d], n += r->runs[li * r->n_depths + d];
            char c[16];
            pct(c, sizeof c, n ? (double)p / n : NAN);
            fprintf(f, " %5s", c);
        }
        char c[16];
        pct(c, sizeof c, passkey_overall_accuracy(r));
        fprintf(f, " %6s\n", c);
    }
    int passed = 0;
    for (int k = 0; k < r->n_lengths * r->n_depths; k++)
        passed += r->passes[k];
    fprintf(f, "overall %d/%d passed (%.1f%%) in %.1f s\n", passed, r->done,
            r->done ? 100.0 * passed / r->done : 0.0, r->seconds);
}

/* cJSON writes null for NaN, which is what a cell without trials should say. */
char *passkey_result_json(const passkey_result_t *r, const char *png_path)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "accuracy", passkey_overall_accuracy(r));
    cJSON *bl = cJSON_AddObjectToObject(o, "by_length");
    cJSON *cells = cJSON_AddArrayToObject(o, "cells");
    cJSON *targets = cJSON_AddArrayToObject(o, "target_tokens");
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *range = cJSON_AddArrayToObject(o, "tokens_range");
    cJSON *fill = cJSON_AddArrayToObject(o, "filler_chars");
    for (int li = 0; li < r->n_lengths; li++) {
        char key[32];
        snprintf(key, sizeof key, "%llu", (unsigned long long)r->targets[li]);
        cJSON_AddNumberToObject(bl, key, passkey_length_accuracy(r, li));
        cJSON *row = cJSON_CreateArray();
        for (int d = 0; d < r->n_depths; d++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber(passkey_cell_accuracy(r, li, d)));
        cJSON_AddItemToArray(cells, row);
        cJSON_AddItemToArray(targets, cJSON_CreateNumber((double)r->targets[li]));
        double m = mean_tokens(r, li);
        cJSON_AddItemToArray(toks, cJSON_CreateNumber(isnan(m) ? NAN : round(m)));
        cJSON *mm = cJSON_CreateArray();
        cJSON_AddItemToArray(mm, cJSON_CreateNumber((double)r->min_tokens[li]));
        cJSON_AddItemToArray(mm, cJSON_CreateNumber((double)r->max_tokens[li]));
        cJSON_AddItemToArray(range, mm);
        cJSON_AddItemToArray(fill, cJSON_CreateNumber((double)r->filler_chars[li]));
    }
    cJSON *depths = cJSON_AddArrayToObject(o, "depths");
    for (int d = 0; d < r->n_depths; d++)
        cJSON_AddItemToArray(depths, cJSON_CreateNumber(r->depths[d]));
    cJSON_AddNumberToObject(o, "trials", r->trials);
    int passed = 0;
    for (int k = 0; k < r->n_lengths * r->n_depths; k++)
        passed += r->passes[k];
    cJSON_AddNumberToObject(o, "passed", passed);
    cJSON_AddNumberToObject(o, "total", r->done);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    cJSON *log = cJSON_AddArrayToObject(o, "results");
    size_t n_log = (size_t)r->n_lengths * r->n_depths * r->trials;
    for (size_t i = 0; i < n_log; i++) {
        const passkey_trial_t *t = &r->log[i];
        if (!t->index || !t->tokens) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "target", (double)t->target);
        cJSON_AddNumberToObject(e, "tokens", (double)t->tokens);
        cJSON_AddNumberToObject(e, "question_tokens", (double)t->question_tokens);
        cJSON_AddNumberToObject(e, "generated", (double)t->n_generated);
        cJSON_AddNumberToObject(e, "depth", t->depth);
        cJSON_AddStringToObject(e, "session", t->session);
        cJSON_AddNumberToObject(e, "trial", t->trial);
        cJSON_AddNumberToObject(e, "key", t->key);
        cJSON_AddStringToObject(e, "answer", t->answer);
        cJSON_AddBoolToObject(e, "pass", t->pass);
        cJSON_AddNumberToObject(e, "seconds", t->seconds);
        cJSON_AddItemToArray(log, e);
    }
    if (png_path) cJSON_AddStringToObject(o, "png", png_path);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---- the heatmap picture ---- */

/* A 5x7 font for the characters the labels use; bit 4 is the leftmost column. */
typedef struct glyph {
    char c;
    uint8_t rows[7];
} glyph;

static const glyph font[] = {
    {'0', {14, 17, 19, 21, 25, 17, 14}}, {'1', {4, 12, 4, 4, 4, 4, 14}},
    {'2', {14, 17, 1, 2, 4, 8, 31}},     {'3', {31, 2, 4, 2, 1, 17, 14}},
    {'4', {2, 6, 10, 18, 31, 2, 2}},     {'5', {31, 16, 30, 1, 1, 17, 14}},
    {'6', {6, 8, 16, 30, 17, 17, 14}},   {'7', {31, 1, 2, 4, 8, 8, 8}},
    {'8', {14, 17, 17, 14, 17, 17, 14}}, {'9', {14, 17, 17, 15, 1, 2, 12}},
    {'a', {0, 0, 14, 1, 15, 17, 15}},    {'b', {16, 16, 22, 25, 17, 17, 30}},
    {'c', {0, 0, 14, 16, 16, 17, 14}},   {'d', {1, 1, 13, 19, 17, 17, 15}},
    {'e', {0, 0, 14, 17, 31, 16, 14}},   {'f', {6, 9, 8, 28, 8, 8, 8}},
    {'g', {0, 15, 17, 17, 15, 1, 14}},   {'h', {16, 16, 22, 25, 17, 17, 17}},
    {'i', {4, 0, 12, 4, 4, 4, 14}},      {'k', {16, 16, 18, 20, 24, 20, 18}},
    {'l', {12, 4, 4, 4, 4, 4, 14}},      {'m', {0, 0, 26, 21, 21, 17, 17}},
    {'n', {0, 0, 22, 25, 17, 17, 17}},   {'o', {0, 0, 14, 17, 17, 17, 14}},
    {'p', {0, 0, 30, 17, 30, 16, 16}},   {'r', {0, 0, 22, 25, 16, 16, 16}},
    {'s', {0, 0, 14, 16, 14, 1, 30}},    {'t', {8, 8, 28, 8, 8, 9, 6}},
    {'u', {0, 0, 17, 17, 17, 19, 13}},   {'v', {0, 0, 17, 17, 17, 10, 4}},
    {'w', {0, 0, 17, 17, 21, 21, 10}},   {'x', {0, 0, 17, 10, 4, 10, 17}},
    {'y', {0, 0, 17, 17, 15, 1, 14}},    {'M', {17, 27, 21, 21, 17, 17, 17}},
    {'%', {24, 25, 2, 4, 8, 19, 3}},     {'(', {2, 4, 8, 8, 8, 4, 2}},
    {')', {8, 4, 2, 2, 2, 4, 8}},        {'.', {0, 0, 0, 0, 0, 12, 12}},
    {'-', {0, 0, 0, 31, 0, 0, 0}},       {',', {0, 0, 0, 0, 12, 4, 8}},
    {':', {0, 12, 12, 0, 12, 12, 0}},    {'/', {1, 2, 2, 4, 8, 8, 16}},
    {'=', {0, 0, 31, 0, 31, 0, 0}},
};

typedef struct canvas {
    uint8_t *px; /* [h][w][3] */
    int w, h;
} canvas;

static void fill_rect(canvas *cv, int x, int y, int w, int h, const uint8_t rgb[3])
{
    for (int j = y; j < y + h; j++)
        for (int i = x; i < x + w; i++) {
            if (i < 0 || j < 0 || i >= cv->w || j >= cv->h) continue;
            memcpy(cv->px + ((size_t)j * cv->w + i) * 3, rgb, 3);
        }
}

enum { SCALE = 2, GLYPH_W = 6 * SCALE, GLYPH_H = 7 * SCALE };

static int text_width(const char *s)
{
    return (int)strlen(s) * GLYPH_W - SCALE;
}

static void draw_text(canvas *cv, int x, int y, const char *s, const uint8_t rgb[3])
{
    for (; *s; s++, x += GLYPH_W) {
        const glyph *g = NULL;
        for (size_t k = 0; k < sizeof font / sizeof font[0]; k++)
            if (font[k].c == *s) g = &font[k];
        if (!g) continue; /* a space, or a character the font lacks */
        for (int row = 0; row < 7; row++)
            for (int col = 0; col < 5; col++)
                if (g->rows[row] & (16 >> col))
                    fill_rect(cv, x + col * SCALE, y + row * SCALE, SCALE, SCALE, rgb);
    }
}

/* Red (0) through yellow (0.5) to green (1), the usual passkey / needle heatmap scale. */
static void colour(double a, uint8_t rgb[3])
{
    if (isnan(a)) {
        rgb[0] = rgb[1] = rgb[2] = 200;
        return;
    }
    static const double stops[3][3] = {{215, 48, 39}, {254, 224, 139}, {26, 152, 80}};
    double t = a < 0 ? 0 : a > 1 ? 2 : a * 2;
    int i = t >= 1 ? 1 : 0;
    double f = t - i;
    for (int k = 0; k < 3; k++)
        rgb[k] = (uint8_t)lround(stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f);
}

rc_t passkey_heatmap(const passkey_result_t *r, uint8_t **rgb, int *w, int *h)
{
    *rgb = NULL;
    static const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, grey[3] = {90, 90, 90};
    const int cell_w = 56, cell_h = 34, pad = 12;
    int label_w = text_width("tokens");
    for (int li = 0; li < r->n_lengths; li++) {
        char l[32];
        passkey_length_label(r->targets[li], l, sizeof l);
        if (text_width(l) > label_w) label_w = text_width(l);
    }
    int grid_x = pad + label_w + pad, grid_y = pad + GLYPH_H + pad + GLYPH_H + 6;
    int grid_w = cell_w * r->n_depths, grid_h = cell_h * r->n_lengths;
    char title[128];
    snprintf(title, sizeof title, "passkey accuracy (%d trial%s per cell)", r->trials,
             r->trials == 1 ? "" : "s");
    int legend_h = 14 + 6 + GLYPH_H;
    int W = grid_x + grid_w + pad;
    if (W < pad * 2 + text_width(title)) W = pad * 2 + text_width(title);
    if (W < grid_x + 244 + text_width("100%") + pad) W = grid_x + 244 + text_width("100%") + pad;
    int H = grid_y + grid_h + 6 + GLYPH_H + pad + GLYPH_H + pad + legend_h + pad;
    canvas cv = {malloc((size_t)W * H * 3), W, H};
    if (!cv.px) return RC_ERR_NOMEM;
    fill_rect(&cv, 0, 0, W, H, white);
    draw_text(&cv, pad, pad, title, black);
    /* Column header: depth of the key in percent, above the grid. */
    draw_text(&cv, pad, pad + GLYPH_H + pad, "tokens", grey);
    for (int d = 0; d < r->n_depths; d++) {
        char s[16];
        snprintf(s, sizeof s, "%.0f", 100 * r->depths[d]);
        draw_text(&cv, grid_x + d * cell_w + (cell_w - text_width(s)) / 2, pad + GLYPH_H + pad, s,
                  grey);
    }
    for (int li = 0; li < r->n_lengths; li++) {
        char l[32];
        passkey_length_label(r->targets[li], l, sizeof l);
        int y = grid_y + li * cell_h;
        draw_text(&cv, grid_x - pad - text_width(l), y + (cell_h - GLYPH_H) / 2, l, black);
        for (int d = 0; d < r->n_depths; d++) {
            double a = passkey_cell_accuracy(r, li, d);
            uint8_t c[3];
            colour(a, c);
            int x = grid_x + d * cell_w;
            fill_rect(&cv, x + 1, y + 1, cell_w - 2, cell_h - 2, c);
            char s[16];
            if (isnan(a))
                snprintf(s, sizeof s, "-");
            else
                snprintf(s, sizeof s, "%.0f", 100 * a);
            draw_text(&cv, x + (cell_w - text_width(s)) / 2, y + (cell_h - GLYPH_H) / 2, s, black);
        }
    }
    int y = grid_y + grid_h + 6;
    const char *xt = "depth of the key (% of the filler)";
    draw_text(&cv,
              grid_x + (grid_w - text_width(xt)) / 2 > pad ? grid_x + (grid_w - text_width(xt)) / 2
                                                           : pad,
              y, xt, grey);
    /* Legend: the colour scale from 0 % to 100 %. */
    y += GLYPH_H + pad;
    char acc[64];
    snprintf(acc, sizeof acc, "overall %.1f%%", 100 * passkey_overall_accuracy(r));
    draw_text(&cv, pad, y, acc, black);
    y += GLYPH_H + pad;
    for (int i = 0; i < 240; i++) {
        uint8_t c[3];
        colour(i / 239.0, c);
        fill_rect(&cv, grid_x + i, y, 1, 14, c);
    }
    draw_text(&cv, grid_x - pad - text_width("0%"), y, "0%", grey);
    draw_text(&cv, grid_x + 240 + 4, y, "100%", grey);
    *rgb = cv.px;
    *w = W;
    *h = H;
    return RC_OK;
}

rc_t passkey_write_png(const passkey_result_t *r, const char *path, char *err, size_t errlen)
{
    uint8_t *rgb;
    int w, h;
    rc_t rc = passkey_heatmap(r, &rgb, &w, &h);
    if (rc) {
        set_err(err, errlen, "out of memory drawing the heatmap");
        return rc;
    }
    rc = recall_png_write(path, rgb, w, h, err, errlen);
    free(rgb);
    return rc;
}
