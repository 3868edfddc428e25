/* test_daemon.c — recalld end to end: sessions, ingest with sequence numbers, questions
 * that leave the session unchanged, append, score, list, drop, and a restart (SIGTERM and
 * kill -9) that keeps everything acknowledged. Talks raw ZeroMQ + protobuf. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/tokenizer.h"
#include "tests/check.h"
#include "tests/rpc_test_util.h"

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

typedef struct snap {
    int found;
    uint64_t tokens, windows, pending, mem_tokens, mem_host, last_seq, chunks;
    uint32_t window;
    char tier[16];
} snap_t;

static snap_t info(rpc_client_t *c, const char *name)
{
    snap_t s = {0};
    Recall__Response *r = rpc_info(c, name);
    if (r && r->status && r->status->code == 0 && r->session_info && r->session_info->info) {
        Recall__SessionInfo *i = r->session_info->info;
        s.found = 1;
        s.tokens = i->tokens;
        s.windows = i->windows;
        s.pending = i->pending_tokens;
        s.mem_tokens = i->memory_tokens;
        s.mem_host = i->memory_bytes_host;
        s.last_seq = i->last_seq;
        s.chunks = i->ingest_chunks;
        s.window = i->options ? i->options->window : 0;
        snprintf(s.tier, sizeof s.tier, "%s", i->tier ? i->tier : "");
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return s;
}

/* Everything a session stores about itself: equal across restarts, whichever tier its rows
 * are in. */
static int snap_eq_stored(snap_t a, snap_t b)
{
    return a.found == b.found && a.tokens == b.tokens && a.windows == b.windows &&
           a.pending == b.pending && a.mem_tokens == b.mem_tokens && a.last_seq == b.last_seq &&
           a.chunks == b.chunks;
}

/* After a restart a session's rows stay on disk until a job needs them. */
static int snap_on_disk(snap_t a)
{
    return a.found && a.mem_host == 0 && strcmp(a.tier, "disk") == 0;
}

static int snap_eq(snap_t a, snap_t b)
{
    return a.found == b.found && a.tokens == b.tokens && a.windows == b.windows &&
           a.pending == b.pending && a.mem_tokens == b.mem_tokens && a.mem_host == b.mem_host &&
           a.last_seq == b.last_seq && a.chunks == b.chunks;
}

static int code_of(Recall__Response *r)
{
    return r && r->status ? r->status->code : -999;
}

/* Sends Ingest seq with text and checks the ack. Returns tokens after, 0 on failure. */
static uint64_t ingest_ok(rpc_client_t *c, const char *name, uint64_t seq, const char *text)
{
    Recall__Response *r = rpc_ingest_text(c, name, seq, text);
    uint64_t t = 0;
    CHECK_MSG(code_of(r) == 0, "ingest seq %llu: %s", (unsigned long long)seq,
              r && r->status ? r->status->message : "no response");
    if (code_of(r) == 0 && r->ingest) {
        CHECK(r->ingest->seq == seq);
        CHECK(!r->ingest->duplicate);
        CHECK(r->ingest->credit > 0);
        CHECK(r->ingest->tokens_added > 0);
        t = r->ingest->tokens;
    }
    if (r) recall__response__free_unpacked(r, NULL);
    return t;
}

static int answers_equal(const rpc_answer_t *a, const rpc_answer_t *b)
{
    return a->status == 0 && b->status == 0 && a->n_tokens == b->n_tokens &&
           memcmp(a->tokens, b->tokens, a->n_tokens * sizeof a->tokens[0]) == 0 &&
           strcmp(a->text, b->text) == 0 && strcmp(a->stop_reason, b->stop_reason) == 0;
}

int main(void)
{
    const char *td = getenv("RECALL_TEST_DATA");
    const char *src = getenv("RECALL_SOURCE_DIR");
    char model[1024], corpus_path[1024];
    snprintf(model, sizeof model, "%s/tiny-fot", td ? td : "tests/data");
    snprintf(corpus_path, sizeof corpus_path, "%s/tests/data/corpus.txt", src ? src : ".");
    struct stat st;
    if (stat(model, &st) != 0) {
        printf("skipped: no tiny model at %s (run the make_tiny_models fixture)\n", model);
        return CHECK_SKIP;
    }
    size_t clen = 0;
    char *corpus = read_file(corpus_path, &clen);
    CHECK(corpus && clen > 8000);
    if (!corpus) return check_summary();

    char tmp[512], data[700], ep[700], log[700];
    CHECK(rpc_tempdir(tmp, sizeof tmp) == 0);
    snprintf(data, sizeof data, "%s/data", tmp);
    snprintf(ep, sizeof ep, "ipc://%s/recalld.sock", tmp);
    snprintf(log, sizeof log, "%s/recalld.log", tmp);
    rpc_daemon_t dm;
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, NULL) == 0);
    if (dm.pid <= 0) return check_summary();
    rpc_client_t c;
    CHECK(rpc_client_open(&c, ep) == 0);

    /* Create. */
    Recall__Response *r = rpc_create(&c, "docs", 0, 0);
    CHECK_RC(code_of(r), 0);
    if (r && r->create_session) {
        CHECK(r->create_session->created);
        CHECK(r->create_session->info && r->create_session->info->options &&
              r->create_session->info->options->window == 64);
        CHECK(r->create_session->info && r->create_session->info->tokens == 0);
    }
    if (r) recall__response__free_unpacked(r, NULL);
    snap_t s0 = info(&c, "docs");
    CHECK(s0.found && s0.tokens == 0 && s0.window == 64);

    /* Ingest chunks of the corpus one by one: 1..3 waited for, 4..6 pipelined. */
    char chunk[1200];
    uint64_t tokens = 0, first_chunk_tokens = 0, second_chunk_tokens = 0;
    for (int i = 0; i < 3; i++) {
        memcpy(chunk, corpus + i * 1000, 1000);
        chunk[1000] = 0;
        uint64_t t = ingest_ok(&c, "docs", (uint64_t)i + 1, chunk);
        CHECK(t > tokens);
        tokens = t;
        if (i == 0) first_chunk_tokens = t;
        if (i == 1) second_chunk_tokens = t - first_chunk_tokens;
    }
    uint64_t ids[3];
    for (int i = 3; i < 6; i++) {
        memcpy(chunk, corpus + i * 1000, 1000);
        chunk[1000] = 0;
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
        in.session = (char *)"docs";
        in.seq = (uint64_t)i + 1;
        in.text = chunk;
        q.body_case = RECALL__REQUEST__BODY_INGEST;
        q.ingest = &in;
        CHECK(rpc_send(&c, &q) == 0);
        ids[i - 3] = q.id;
    }
    int progress = 0;
    for (int k = 0; k < 3;) {
        r = rpc_recv(&c, 60000);
        CHECK(r != NULL);
        if (!r) break;
        if (r->more) {
            /* Chunks of ~450 tokens complete several 64-token windows: progress first. */
            if (r->progress && r->progress->total > 0 && r->progress->done < r->progress->total)
                progress++;
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        CHECK(r->id == ids[k]); /* acknowledged in order */
        CHECK_RC(code_of(r), 0);
        if (r->ingest) {
            CHECK(r->ingest->seq == (uint64_t)k + 4);
            CHECK(r->ingest->tokens > tokens);
            tokens = r->ingest->tokens;
        }
        recall__response__free_unpacked(r, NULL);
        k++;
    }
    CHECK(progress >= 3);
    snap_t s1 = info(&c, "docs");
    CHECK(s1.tokens == tokens);
    CHECK(s1.last_seq == 6 && s1.chunks == 6);
    CHECK(s1.windows == tokens / 64);
    CHECK(s1.pending == tokens % 64);
    CHECK(s1.windows >= 10);
    CHECK(s1.mem_tokens == s1.windows * 64);
    CHECK(s1.mem_host > 0);

    /* Duplicate: acknowledged again, nothing changes. */
    r = rpc_ingest_text(&c, "docs", 2, "this text must not be added");
    CHECK_RC(code_of(r), 0);
    CHECK(r && r->ingest && r->ingest->duplicate && r->ingest->tokens == tokens);
    if (r) recall__response__free_unpacked(r, NULL);
    /* Gap: an error, nothing changes. */
    r = rpc_ingest_text(&c, "docs", 8, "this text must not be added either");
    CHECK_RC(code_of(r), -10);
    CHECK(r && r->status && strstr(r->status->message, "expected seq 7"));
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(snap_eq(info(&c, "docs"), s1));

    /* Ask greedy twice: same answer, session unchanged. */
    static rpc_answer_t a1, a2, a3, a4;
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a1) == 0);
    CHECK_MSG(a1.status == 0, "%s", a1.message);
    CHECK(a1.generated == a1.n_tokens);
    CHECK(a1.n_tokens > 0 && a1.n_tokens <= 12);
    CHECK(a1.prompt_tokens > s1.pending);
    CHECK(a1.text_ok);
    CHECK(strcmp(a1.stop_reason, "length") == 0 || strcmp(a1.stop_reason, "eos") == 0);
    CHECK(snap_eq(info(&c, "docs"), s1));
    /* The streamed text pieces add up to the decoded answer. */
    {
        char tokpath[1100], terr[256];
        snprintf(tokpath, sizeof tokpath, "%s/tokenizer.model", model);
        tokenizer_t *tk = NULL;
        CHECK_RC(tokenizer_load(tokpath, &tk, terr, sizeof terr), 0);
        char *full = NULL;
        size_t fl = 0;
        if (tk) CHECK_RC(tokenizer_decode(tk, a1.tokens, a1.n_tokens, &full, &fl), 0);
        CHECK_MSG(full && strcmp(full, a1.text) == 0, "streamed '%s' vs decoded '%s'", a1.text,
                  full ? full : "");
        free(full);
        tokenizer_destroy(&tk);
    }
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a2) == 0);
    CHECK(answers_equal(&a1, &a2));
    CHECK(snap_eq(info(&c, "docs"), s1));

    /* Score the session: n-1 log-probabilities, a finite perplexity. */
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sq = RECALL__SCORE_REQUEST__INIT;
    sq.session = (char *)"docs";
    sq.want_logprobs = 1;
    q.body_case = RECALL__REQUEST__BODY_SCORE;
    q.score = &sq;
    r = rpc_call(&c, &q, 120000);
    CHECK_RC(code_of(r), 0);
    double session_ppl = 0;
    if (r && r->score) {
        CHECK(r->score->tokens == tokens);
        CHECK(r->score->scored == tokens - 1);
        CHECK(r->score->n_logprobs == tokens - 1);
        double nll = 0;
        int all_neg = 1;
        for (size_t i = 0; i < r->score->n_logprobs; i++) {
            nll -= r->score->logprobs[i];
            if (!(r->score->logprobs[i] <= 0)) all_neg = 0;
        }
        CHECK(all_neg);
        CHECK_NEAR(nll, r->score->nll, 1e-3 * fabs(nll) + 1e-3);
        CHECK(isfinite(r->score->ppl) && r->score->ppl > 1);
        session_ppl = r->score->ppl;
    }
    if (r) recall__response__free_unpacked(r, NULL);
    /* Score of a text with BOS, from an empty memory. */
    Recall__Request q2 = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sq2 = RECALL__SCORE_REQUEST__INIT;
    memcpy(chunk, corpus, 1000);
    chunk[1000] = 0;
    sq2.text = chunk;
    sq2.add_bos = 1;
    q2.body_case = RECALL__REQUEST__BODY_SCORE;
    q2.score = &sq2;
    r = rpc_call(&c, &q2, 120000);
    CHECK_RC(code_of(r), 0);
    /* The first chunk was the session's first and got BOS too (and only it): the same
     * token count as its Ingest added. */
    if (r && r->score) {
        CHECK(r->score->tokens == first_chunk_tokens);
        CHECK(r->score->n_logprobs == 0); /* not asked for */
        CHECK(isfinite(r->score->ppl));
    }
    if (r) recall__response__free_unpacked(r, NULL);
    /* Later chunks get no BOS: the second chunk scored without BOS has as many tokens. */
    memcpy(chunk, corpus + 1000, 1000);
    chunk[1000] = 0;
    sq2.add_bos = 0;
    q2.id = 0;
    r = rpc_call(&c, &q2, 120000);
    CHECK_RC(code_of(r), 0);
    CHECK(r && r->score && r->score->tokens == second_chunk_tokens);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(snap_eq(info(&c, "docs"), s1));

    /* A second session and the list. */
    r = rpc_create(&c, "other:2", 32, 0);
    CHECK_RC(code_of(r), 0);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(ingest_ok(&c, "other:2", 1, "A short second session about maps and flour.") > 0);
    Recall__Request lq = RECALL__REQUEST__INIT;
    Recall__ListSessionsRequest ls = RECALL__LIST_SESSIONS_REQUEST__INIT;
    lq.body_case = RECALL__REQUEST__BODY_LIST_SESSIONS;
    lq.list_sessions = &ls;
    r = rpc_call(&c, &lq, 10000);
    CHECK_RC(code_of(r), 0);
    CHECK(r && r->list_sessions && r->list_sessions->n_sessions == 2);
    if (r && r->list_sessions && r->list_sessions->n_sessions == 2) {
        CHECK(strcmp(r->list_sessions->sessions[0]->name, "docs") == 0);
        CHECK(strcmp(r->list_sessions->sessions[1]->name, "other:2") == 0);
        CHECK(r->list_sessions->sessions[1]->options->window == 32);
    }
    if (r) recall__response__free_unpacked(r, NULL);

    /* Append: question and answer become part of the session, durably. */
    CHECK(rpc_ask(&c, "docs", " Tell me more.", 8, 1, &a3) == 0);
    CHECK_MSG(a3.status == 0, "%s", a3.message);
    snap_t s2 = info(&c, "docs");
    uint64_t nq = a3.prompt_tokens - s1.pending;
    CHECK(s2.tokens == s1.tokens + nq + a3.generated);
    CHECK(s2.last_seq == s1.last_seq); /* not an Ingest chunk */
    CHECK(s2.windows == s2.tokens / 64);
    /* The answer to the same question now differs in context: at least the prompt does. */
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a4) == 0);
    CHECK(a4.status == 0);
    CHECK(a4.prompt_tokens != a1.prompt_tokens || s2.windows != s1.windows);
    CHECK(snap_eq(info(&c, "docs"), s2));

    /* Flow control: 12 chunks sent without waiting. The worker is busy with the first while
     * the others arrive, so past the credit of unacknowledged chunks the daemon answers
     * RC_ERR_BUSY (-9) at once; what it accepted is acknowledged in order, gap-free. */
    {
        r = rpc_create(&c, "flow", 0, 0);
        CHECK_RC(code_of(r), 0);
        if (r) recall__response__free_unpacked(r, NULL);
        /* A long answer (1024 tokens, past EOS) keeps the worker busy while the chunks
         * arrive, so they all queue behind it: exactly `credit` are accepted. */
        static char small[501];
        memcpy(small, corpus + 20000, 500);
        small[500] = 0;
        Recall__Request aq = RECALL__REQUEST__INIT;
        Recall__AskRequest ask = RECALL__ASK_REQUEST__INIT;
        ask.session = (char *)"docs";
        ask.question = (char *)" Go on.";
        ask.max_tokens = 1024;
        ask.ignore_eos = 1;
        aq.body_case = RECALL__REQUEST__BODY_ASK;
        aq.ask = &ask;
        CHECK(rpc_send(&c, &aq) == 0);
        uint64_t fid[12];
        for (int i = 0; i < 12; i++) {
            Recall__Request fq = RECALL__REQUEST__INIT;
            Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
            in.session = (char *)"flow";
            in.seq = (uint64_t)i + 1;
            in.text = small;
            fq.body_case = RECALL__REQUEST__BODY_INGEST;
            fq.ingest = &in;
            CHECK(rpc_send(&c, &fq) == 0);
            fid[i] = fq.id;
        }
        int ask_done = 0, ask_tokens = 0;
        static char long_text[1 << 17];
        static int32_t long_toks[1024];
        size_t long_len = 0;
        int busy = 0, acked = 0, other = 0;
        uint64_t max_acked = 0;
        uint32_t credit = 0;
        for (int k = 0; k < 12 || !ask_done;) {
            r = rpc_recv(&c, 120000);
            CHECK(r != NULL);
            if (!r) break;
            if (r->id == aq.id) {
                if (r->ask && r->ask->text) {
                    size_t l = strlen(r->ask->text);
                    if (long_len + l < sizeof long_text) {
                        memcpy(long_text + long_len, r->ask->text, l);
                        long_len += l;
                        long_text[long_len] = 0;
                    }
                }
                if (r->more && r->ask && ask_tokens < 1024) long_toks[ask_tokens] = r->ask->token;
                if (r->more) ask_tokens++;
                if (!r->more) {
                    ask_done = 1;
                    CHECK_RC(code_of(r), 0);
                    CHECK(r->ask && r->ask->generated == 1024);
                }
            } else if (!r->more) {
                int idx = -1;
                for (int i = 0; i < 12; i++)
                    if (fid[i] == r->id) idx = i;
                CHECK(idx >= 0);
                if (code_of(r) == -9) {
                    busy++;
                    CHECK(strstr(r->status->message, "credit") != NULL);
                } else if (code_of(r) == 0) {
                    acked++;
                    CHECK(r->ingest && r->ingest->seq == (uint64_t)idx + 1);
                    if (r->ingest) credit = r->ingest->credit;
                    if ((uint64_t)idx + 1 > max_acked) max_acked = (uint64_t)idx + 1;
                } else {
                    other++;
                }
                k++;
            }
            recall__response__free_unpacked(r, NULL);
        }
        CHECK(ask_tokens == 1024);
        /* 1024 arbitrary tokens (byte pieces included): the pieces still add up. */
        {
            char tokpath[1100], terr[256];
            snprintf(tokpath, sizeof tokpath, "%s/tokenizer.model", model);
            tokenizer_t *tk = NULL;
            CHECK_RC(tokenizer_load(tokpath, &tk, terr, sizeof terr), 0);
            char *full = NULL;
            size_t fl = 0;
            if (tk) CHECK_RC(tokenizer_decode(tk, long_toks, 1024, &full, &fl), 0);
            CHECK(full && fl == long_len && memcmp(full, long_text, fl) == 0);
            free(full);
            tokenizer_destroy(&tk);
        }
        CHECK_MSG(busy == 4 && acked == 8 && other == 0, "busy %d acked %d other %d", busy,
                  acked, other);
        CHECK(credit == 8);
        CHECK(max_acked == (uint64_t)acked); /* acknowledged seqs are exactly 1..acked */
        CHECK(info(&c, "flow").last_seq == (uint64_t)acked);
        Recall__Request fd = RECALL__REQUEST__INIT;
        Recall__DropSessionRequest fds = RECALL__DROP_SESSION_REQUEST__INIT;
        fds.session = (char *)"flow";
        fd.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
        fd.drop_session = &fds;
        r = rpc_call(&c, &fd, 10000);
        CHECK_RC(code_of(r), 0);
        if (r) recall__response__free_unpacked(r, NULL);
    }

    /* Drop. */
    Recall__Request dq = RECALL__REQUEST__INIT;
    Recall__DropSessionRequest ds = RECALL__DROP_SESSION_REQUEST__INIT;
    ds.session = (char *)"other:2";
    dq.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
    dq.drop_session = &ds;
    r = rpc_call(&c, &dq, 10000);
    CHECK_RC(code_of(r), 0);
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK(!info(&c, "other:2").found);

    /* Stats count what happened. */
    Recall__Request stq = RECALL__REQUEST__INIT;
    Recall__StatsRequest stats = RECALL__STATS_REQUEST__INIT;
    stq.body_case = RECALL__REQUEST__BODY_STATS;
    stq.stats = &stats;
    r = rpc_call(&c, &stq, 10000);
    CHECK_RC(code_of(r), 0);
    if (r && r->stats) {
        CHECK(r->stats->sessions == 1);
        CHECK(r->stats->tokens_generated >= a1.generated + a2.generated + a3.generated);
        CHECK(r->stats->tokens_ingested >= s2.tokens);
        CHECK(r->stats->memory_tokens == s2.mem_tokens);
        CHECK(r->stats->errors >= 1);
    }
    if (r) recall__response__free_unpacked(r, NULL);

    /* SIGTERM: a clean exit 0. */
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);

    /* Restart on the same data: the session is intact and answers the same. */
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, NULL) == 0);
    if (dm.pid <= 0) return check_summary();
    CHECK(rpc_client_open(&c, ep) == 0);
    snap_t s3 = info(&c, "docs");
    CHECK(snap_eq_stored(s3, s2));
    CHECK_MSG(snap_on_disk(s3), "after a restart: tier '%s', %llu host bytes", s3.tier,
              (unsigned long long)s3.mem_host);
    CHECK(!info(&c, "other:2").found);
    static rpc_answer_t a5;
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a5) == 0);
    CHECK(answers_equal(&a4, &a5));
    /* The question brought the rows back: the session is as it was before the restart. */
    CHECK(snap_eq(info(&c, "docs"), s2));
    CHECK(strcmp(info(&c, "docs").tier, "host") == 0);
    sq.session = (char *)"docs";
    Recall__Request q3 = RECALL__REQUEST__INIT;
    Recall__ScoreRequest sq3 = RECALL__SCORE_REQUEST__INIT;
    sq3.session = (char *)"docs";
    q3.body_case = RECALL__REQUEST__BODY_SCORE;
    q3.score = &sq3;
    r = rpc_call(&c, &q3, 120000);
    CHECK_RC(code_of(r), 0);
    CHECK(r && r->score && r->score->tokens == s2.tokens);
    if (r) recall__response__free_unpacked(r, NULL);
    (void)session_ppl;

    /* Sequence numbers continue across the restart. */
    r = rpc_ingest_text(&c, "docs", 6, "duplicate after restart");
    CHECK(code_of(r) == 0 && r->ingest && r->ingest->duplicate);
    if (r) recall__response__free_unpacked(r, NULL);
    memcpy(chunk, corpus + 6000, 1000);
    chunk[1000] = 0;
    uint64_t t7 = ingest_ok(&c, "docs", 7, chunk);
    CHECK(t7 > s2.tokens);
    snap_t s4 = info(&c, "docs");

    /* kill -9 right after an acknowledgement loses nothing acknowledged. */
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGKILL), 128 + SIGKILL);
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, NULL) == 0);
    if (dm.pid <= 0) return check_summary();
    CHECK(rpc_client_open(&c, ep) == 0);
    snap_t s5 = info(&c, "docs");
    CHECK(snap_eq_stored(s5, s4) && snap_on_disk(s5));
    CHECK(s5.last_seq == 7);
    static rpc_answer_t a6, a7;
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a6) == 0);
    CHECK(a6.status == 0);
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);
    /* And once more after a clean stop: the same answer as right after the kill. */
    CHECK(rpc_daemon_start(&dm, model, data, ep, log, NULL) == 0);
    if (dm.pid <= 0) return check_summary();
    CHECK(rpc_client_open(&c, ep) == 0);
    CHECK(rpc_ask(&c, "docs", " Who cleaned the map?", 12, 0, &a7) == 0);
    CHECK(answers_equal(&a6, &a7));
    rpc_client_close(&c);
    CHECK_RC(rpc_daemon_stop(&dm, SIGTERM), 0);

    if (check_failed_) rpc_print_file(log);
    free(corpus);
    rpc_rmtree(tmp);
    return check_summary();
}
