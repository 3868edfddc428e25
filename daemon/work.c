/* work.c — the worker thread: Ingest, Ask, Score and Verify, one job at a time.
 *
 * The jobs come from the queue server.c fills; each runs through its row of the request
 * table (request.c) and answers through request_reply / request_error, whose messages the
 * main loop forwards.
 *
 * The worker owns every session's stream and token array. It takes a mark before touching
 * a stream and rewinds to it on any failure, so a failed or rolled-back job leaves the
 * session exactly as it was. A chunk's tokens, the memory rows of every window it
 * completed and the new session record go to LMDB in one transaction; the chunk is
 * acknowledged only after that commit returned.
 *
 * Locking: the worker holds d->mu only to read a session's counters and to publish new
 * ones, never across a forward pass, an fsync or the LMDB commit, so the main loop answers
 * health, stats and info while a chunk computes or syncs. The counters a job reads without
 * mu (n_tokens, windows, ...) are written by this thread alone; the main thread reads them
 * under mu and sees a chunk only once it is durable. A Drop racing a commit is ordered by
 * session.committing / session.dropped (daemon.h). */
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/daemon.h"
#include "daemon/notify.h"
#include "model/sample.h"
#include <zmq.h>

/* ---- durable append: the commit unit ------------------------------------------------- */

typedef struct append_result {
    uint64_t tokens, windows;
} append_result_t;

/* Appends nn tokens to s, runs every window they complete through the stream, and commits
 * tokens, windows and record in one transaction. seq > 0 marks an Ingest chunk (last_seq
 * and ingest_chunks advance). On failure the session is unchanged and err says why. */
static rc_t append_durable(request_t *q, session_t *s, const int32_t *newt, size_t nn, uint64_t seq,
                           append_result_t *res, char *err, size_t errlen)
{
    daemon_t *d = q->d;
    const double t_start = clock_now_s();
    pthread_mutex_lock(&d->mu);
    uint64_t n_old = s->n_tokens, win_old = s->windows, last_seq = s->last_seq;
    uint64_t chunks = s->ingest_chunks, next_chunk = s->next_chunk;
    pthread_mutex_unlock(&d->mu);

    /* Quotas (limits.h) before anything is computed or written. */
    rc_t lrc = limits_check_append(d, s, n_old, nn, err, errlen);
    if (lrc) return lrc;

    const uint64_t W = (uint64_t)s->window;
    /* Without memory layers a finished window would leave nothing behind: the session is
     * its local context, at most one window (the scheme's extended length), kept whole. */
    const int plain = d->mc->n_mem_layers == 0;
    if (plain && n_old + nn > W) {
        snprintf(err, errlen,
                 "the session is full: this model has no memory layers, so a session holds at "
                 "most one window of %llu tokens as its context (it has %llu; this adds %zu). "
                 "Use a longer --window with --positional self-extend or dca, or a model with "
                 "FoT memory layers",
                 (unsigned long long)W, (unsigned long long)n_old, nn);
        return RC_ERR_LIMIT;
    }
    if (n_old + nn > s->tokens_cap) {
        size_t cap = s->tokens_cap ? s->tokens_cap : 4096;
        while (cap < n_old + nn)
            cap *= 2;
        int32_t *nt = realloc(s->tokens, cap * sizeof *nt);
        if (!nt) {
            snprintf(err, errlen, "out of memory for %zu more tokens", nn);
            return RC_ERR_NOMEM;
        }
        s->tokens = nt;
        s->tokens_cap = cap;
    }
    /* Past n_tokens, so invisible until the commit makes it count. */
    if (nn) memcpy(s->tokens + n_old, newt, nn * sizeof *newt);
    uint64_t n_new = n_old + nn;
    uint64_t win_new = plain ? 0 : n_new / W;
    uint64_t nwin = win_new - win_old;

    memory_store_t *mem = model_stream_memory(s->stream);
    model_stream_mark_t mark = model_stream_get_mark(s->stream);
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    rc_t rc = RC_OK;
    for (uint64_t w = 0; w < nwin; w++) {
        if (d->worker_stop_now) {
            snprintf(err, errlen, "the daemon is stopping; the chunk was rolled back");
            rc = RC_ERR_SHUTDOWN;
            goto fail;
        }
        rc = model_stream_feed(s->stream, s->tokens + (win_old + w) * W, (size_t)W, NULL, NULL);
        if (!rc) rc = model_stream_flush(s->stream);
        if (rc == RC_ERR_IO) {
            /* The flush writes the window's rows to the session's row files. */
            struct statvfs fs;
            double free_mib = statvfs(d->rows_root, &fs) == 0
                                  ? (double)fs.f_bavail * (double)fs.f_frsize / 1048576.0
                                  : -1;
            snprintf(err, errlen,
                     "writing the memory rows of window %llu to %s failed (%.1f MiB free there; "
                     "a full disk or a file size limit?)",
                     (unsigned long long)(win_old + w), d->rows_root, free_mib);
            goto fail;
        }
        if (rc) {
            snprintf(err, errlen, "the forward pass failed on window %llu: %s",
                     (unsigned long long)(win_old + w), rc_strerror(rc));
            goto fail;
        }
        if (nwin > 1 && w + 1 < nwin) request_progress(q, (w + 1) * W, nwin * W);
    }

    uint64_t new_seq = seq ? seq : last_seq;
    uint64_t new_chunks = seq ? chunks + 1 : chunks;
    uint64_t new_next = nn ? next_chunk + 1 : next_chunk;
    /* Under mu only what the record needs, and the claim that stops a Drop from deleting
     * the session while its commit is on the way (daemon.h). */
    pthread_mutex_lock(&d->mu);
    if (s->dropped) {
        pthread_mutex_unlock(&d->mu);
        snprintf(err, errlen, "session '%s' was dropped", s->name);
        rc = RC_ERR_NOT_FOUND;
        goto fail;
    }
    rc = session_record_pack(d, s, n_new, win_new, new_seq, new_chunks, new_next, &rec, &rec_len);
    if (rc) {
        pthread_mutex_unlock(&d->mu);
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->committing = 1;
    pthread_mutex_unlock(&d->mu);
    memory_db_commit_t c = {.session = s->name,
                            .record = rec,
                            .record_len = rec_len,
                            .chunk_index = next_chunk,
                            .tokens = newt,
                            .n_tokens = nn};
    /* Without mu: the session's memory syncs its row files, then commits their checksums
     * with the tokens and the record in one transaction. Only this thread touches s->mem,
     * and the job's reference keeps s alive. */
    const uint64_t rows_before = session_memory_disk_bytes(s->mem);
    double t_commit = clock_now_s();
    rc = session_memory_commit(s->mem, &c, nwin, err, errlen);
    t_commit = clock_now_s() - t_commit;
    const uint64_t rows_after = session_memory_disk_bytes(s->mem);
    pthread_mutex_lock(&d->mu);
    s->committing = 0;
    pthread_cond_broadcast(&d->cv); /* a Drop may be waiting for the commit to end */
    if (rc) {
        pthread_mutex_unlock(&d->mu);
        goto fail;
    }
    /* Durable: now the session may say so (a Drop that came meanwhile deletes it next). */
    uint64_t disk_add = nn * 4 + rows_after - rows_before;
    s->n_tokens = n_new;
    s->windows = win_new;
    s->last_seq = new_seq;
    s->ingest_chunks = new_chunks;
    s->next_chunk = new_next;
    s->mem_tokens = memory_store_len(mem);
    session_account_locked(d, s);
    /* The record is rewritten, not added: its varint counters may change its size. */
    s->disk_bytes = s->disk_bytes - s->record_bytes + disk_add + rec_len;
    s->record_bytes = rec_len;
    d->tokens_ingested += nn;
    d->commits++;
    d->commit_seconds += t_commit;
    const double t_append = clock_now_s() - t_start;
    d->append_seconds += t_append;
    if (t_append > 0) d->ingest_last_tps = (double)nn / t_append;
    pthread_mutex_unlock(&d->mu);
    http_histogram_observe(&d->metrics.ingest_append, t_append);
    res->tokens = n_new;
    res->windows = win_new;
    free(rec);
    return RC_OK;
fail:
    model_stream_rewind(s->stream, mark);
    free(rec);
    return rc;
}

/* ---- Ingest -------------------------------------------------------------------------- */

/* Every reply below is the job's last, so it also gives the session's Ingest credit back
 * (request.c), before the client can send its next chunk. */
void work_ingest(request_t *q)
{
    daemon_t *d = q->d;
    const Recall__IngestRequest *in = q->req->ingest;
    session_t *s = q->sess;
    char err[1024];
    pthread_mutex_lock(&d->mu);
    int dropped = s->dropped;
    uint64_t last_seq = s->last_seq, n_tok = s->n_tokens, windows = s->windows;
    pthread_mutex_unlock(&d->mu);
    Recall__IngestResponse ir = RECALL__INGEST_RESPONSE__INIT;
    ir.seq = in->seq;
    ir.credit = DAEMON_CREDIT;
    if (dropped) {
        request_error(q, RC_ERR_NOT_FOUND, "session '%s' was dropped", s->name);
        return;
    }
    if (in->seq <= last_seq) {
        ir.duplicate = 1;
        ir.tokens = n_tok;
        ir.windows = windows;
        request_reply(q, &ir, 0);
        return;
    }
    if (in->seq != last_seq + 1) {
        request_error(q, RC_ERR_SEQUENCE,
                      "Ingest seq %llu for session '%s' leaves a gap: expected seq %llu (the "
                      "last acknowledged is %llu)",
                      (unsigned long long)in->seq, s->name, (unsigned long long)(last_seq + 1),
                      (unsigned long long)last_seq);
        return;
    }
    int32_t *toks = NULL;
    size_t nn = 0;
    rc_t rc = RC_OK;
    size_t tl = strlen(in->text);
    if (tl) {
        int bos = n_tok == 0 && tokenizer_bos_id(d->tok) >= 0;
        rc = tokenizer_encode(d->tok, in->text, tl, bos, &toks, &nn);
        if (rc) {
            request_error(q, rc, "cannot tokenize the chunk: %s", rc_strerror(rc));
            return;
        }
    }
    append_result_t res = {0};
    rc = append_durable(q, s, tl ? toks : in->tokens, tl ? nn : in->n_tokens, in->seq, &res, err,
                        sizeof err);
    free(toks);
    if (rc) {
        request_error(q, rc, "Ingest seq %llu into '%s' failed, nothing changed: %s",
                      (unsigned long long)in->seq, s->name, err);
        return;
    }
    ir.tokens_added = res.tokens - n_tok;
    ir.tokens = res.tokens;
    ir.windows = res.windows;
    request_reply(q, &ir, 0);
}

/* ---- Ask ----------------------------------------------------------------------------- */

/* Length of the prefix of t[0..n) that is safe to send: no trailing U+FFFD (SentencePiece's
 * stand-in for a multi-byte character whose other bytes are still to come) and no
 * incomplete UTF-8 sequence. */
static size_t stable_len(const char *t, size_t n)
{
    while (n >= 3 && (unsigned char)t[n - 3] == 0xEF && (unsigned char)t[n - 2] == 0xBF &&
           (unsigned char)t[n - 1] == 0xBD)
        n -= 3;
    size_t i = n;
    int back = 0;
    while (i > 0 && back < 4 && ((unsigned char)t[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i > 0) {
        unsigned char lead = (unsigned char)t[i - 1];
        size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (need > 1 && (size_t)back + 1 < need) n = i - 1;
    }
    return n;
}

/* Streams the answer's text without splitting a character and without decoding the whole
 * answer at every token. SentencePiece text is the concatenation of its pieces' text except
 * that the very first piece loses its leading space, so the text after token `anchor` is
 * decode(gen[anchor..]) minus decode(gen[anchor]). The anchor moves up whenever everything
 * decoded so far has been sent, which keeps each decode short. */
typedef struct text_stream {
    long anchor;       /* -1: decode from the first token */
    size_t anchor_len; /* bytes of decode(gen[anchor]) */
    size_t sent;       /* bytes sent past the anchor's text */
} text_stream_t;

/* The new text (malloc'ed, maybe empty). final sends everything left. */
static char *text_delta(daemon_t *d, text_stream_t *ts, const int32_t *gen, size_t ng, int final)
{
    size_t from = ts->anchor < 0 ? 0 : (size_t)ts->anchor;
    char *txt = NULL;
    size_t len = 0;
    if (ng <= from || tokenizer_decode(d->tok, gen + from, ng - from, &txt, &len) != RC_OK)
        return strdup("");
    size_t base = ts->anchor < 0 ? 0 : ts->anchor_len;
    if (base > len) base = len;
    size_t end = final ? len : stable_len(txt, len);
    char *out;
    if (end > base + ts->sent) {
        out = strndup(txt + base + ts->sent, end - base - ts->sent);
        ts->sent = end - base;
    } else {
        out = strdup("");
    }
    if (!final && end == len && len > base) {
        /* All sent: anchor on the last token. */
        char *last = NULL;
        size_t ll = 0;
        if (tokenizer_decode(d->tok, gen + ng - 1, 1, &last, &ll) == RC_OK) {
            ts->anchor = (long)ng - 1;
            ts->anchor_len = ll;
            ts->sent = 0;
        }
        free(last);
    }
    free(txt);
    return out;
}

/* Tokenizes a formatted chat prompt part by part (chat.h: each text part on its own, BOS and
 * EOS as their ids). *ids is malloc'ed. */
static rc_t chat_encode(daemon_t *d, const chat_prompt_t *cp, int add_bos, int32_t **ids,
                        size_t *n)
{
    size_t cap = 64, len = 0;
    int32_t *out = malloc(cap * sizeof *out);
    rc_t rc = RC_OK;
    int bos = tokenizer_bos_id(d->tok), eos = tokenizer_eos_id(d->tok);
    if (bos < 0) bos = d->mc->bos_id;
    if (eos < 0) eos = d->mc->eos_id;
    if (!out) return RC_ERR_NOMEM;
    if (add_bos && bos >= 0) out[len++] = bos;
    for (size_t i = 0; i < cp->n_parts && !rc; i++) {
        const struct chat_part *p = &cp->parts[i];
        int32_t one, *t = &one;
        size_t nt = 1;
        if (p->kind == CHAT_PART_TEXT) {
            if ((rc = tokenizer_encode(d->tok, cp->text + p->off, p->len, 0, &t, &nt))) break;
        } else {
            one = p->kind == CHAT_PART_BOS ? bos : eos;
            if (one < 0) nt = 0; /* a tokenizer without it: the template's marker is dropped */
        }
        if (len + nt > cap) {
            while (len + nt > cap)
                cap *= 2;
            int32_t *g = realloc(out, cap * sizeof *g);
            if (!g) rc = RC_ERR_NOMEM;
            else out = g;
        }
        if (!rc && nt) memcpy(out + len, t, nt * sizeof *t);
        if (!rc) len += nt;
        if (t != &one) free(t);
    }
    if (rc) {
        free(out);
        return rc;
    }
    *ids = out;
    *n = len;
    return RC_OK;
}

/* The answer's text so far, for stop strings: what text_delta produced, and how much of it
 * has been released to the client. */
typedef struct stop_text {
    char *p;
    size_t len, cap, released;
} stop_text_t;

/* Adds delta and returns the text that may be sent now (malloc'ed): up to the earliest stop
 * string (*hit = 1) or up to a tail that could still become one. */
static char *stop_take(stop_text_t *st, const char *delta, const char *const *stops,
                       size_t n_stops, int *hit)
{
    size_t dl = strlen(delta);
    if (st->len + dl + 1 > st->cap) {
        size_t c = st->cap ? st->cap : 256;
        while (c < st->len + dl + 1)
            c *= 2;
        char *g = realloc(st->p, c);
        if (!g) return NULL;
        st->p = g;
        st->cap = c;
    }
    memcpy(st->p + st->len, delta, dl);
    st->len += dl;
    st->p[st->len] = 0;
    size_t cut;
    *hit = chat_stop_scan(st->p, st->len, stops, n_stops, &cut);
    if (cut < st->released) cut = st->released; /* cannot happen (chat_stop_scan); be safe */
    char *out = strndup(st->p + st->released, cut - st->released);
    st->released = cut;
    return out;
}

/* How many of the ng generated tokens lie wholly before byte `cut` of their text: the
 * answer kept when a stop string ended it (for --append). */
static size_t tokens_before(daemon_t *d, const int32_t *gen, size_t ng, size_t cut)
{
    for (size_t k = ng; k > 0; k--) {
        char *t = NULL;
        size_t l = 0;
        int ok = tokenizer_decode(d->tok, gen, k, &t, &l) == RC_OK;
        free(t);
        if (ok && l <= cut) return k;
    }
    return 0;
}

void work_ask(request_t *q)
{
    daemon_t *d = q->d;
    const Recall__AskRequest *a = q->req->ask;
    session_t *s = q->sess;
    const int vocab = d->mc->vocab_size;
    char err[1024];
    pthread_mutex_lock(&d->mu);
    int dropped = s->dropped;
    uint64_t n_tok = s->n_tokens, windows = s->windows;
    pthread_mutex_unlock(&d->mu);
    if (dropped) {
        request_error(q, RC_ERR_NOT_FOUND, "session '%s' was dropped", s->name);
        return;
    }
    int32_t *qt = NULL, *prompt = NULL, *gen = NULL, *app = NULL;
    float *logits = NULL;
    size_t nq = 0;
    rc_t rc = RC_OK;
    size_t ql = strlen(a->question);
    /* The stop strings: the request's, and a chat template's own. */
    const char *stops[CHAT_STOP_MAX * 2];
    size_t n_stops = 0;
    for (size_t i = 0; i < a->n_stop && n_stops < CHAT_STOP_MAX; i++)
        stops[n_stops++] = a->stop[i];
    stop_text_t st = {0};
    if (a->n_messages) {
        chat_message_t *msgs = malloc(a->n_messages * sizeof *msgs);
        chat_prompt_t cp;
        if (!msgs) {
            request_error(q, RC_ERR_NOMEM, "out of memory for the chat");
            return;
        }
        for (size_t i = 0; i < a->n_messages; i++)
            msgs[i] = (chat_message_t){a->messages[i]->role, a->messages[i]->content};
        rc = chat_format(&d->chat, msgs, a->n_messages, &cp, err, sizeof err);
        free(msgs);
        if (rc) {
            request_error(q, rc, "%s", err);
            return;
        }
        /* The templates that know BOS put it themselves; plain text starts a session with it
         * as a question does. */
        rc = chat_encode(d, &cp, d->chat.kind == CHAT_TEMPLATE_PLAIN && n_tok == 0, &qt, &nq);
        chat_prompt_free(&cp);
        if (rc) {
            request_error(q, rc, "cannot tokenize the chat: %s", rc_strerror(rc));
            return;
        }
        for (const char *const *t = chat_template_stops(d->chat.kind); *t; t++)
            stops[n_stops++] = *t;
    } else if (ql) {
        /* An empty session: the question is its first token, so BOS comes first. */
        int bos = n_tok == 0 && tokenizer_bos_id(d->tok) >= 0;
        rc = tokenizer_encode(d->tok, a->question, ql, bos, &qt, &nq);
        if (rc) {
            request_error(q, rc, "cannot tokenize the question: %s", rc_strerror(rc));
            return;
        }
    } else if (a->n_question_tokens) {
        nq = a->n_question_tokens;
        qt = malloc(nq * sizeof *qt);
        if (qt) memcpy(qt, a->question_tokens, nq * sizeof *qt);
    }
    uint64_t tail_start = windows * (uint64_t)s->window;
    size_t ntail = (size_t)(n_tok - tail_start);
    size_t np = ntail + nq;
    uint32_t max_tokens = a->max_tokens ? a->max_tokens : ASK_DEFAULT_TOKENS;
    if (max_tokens > d->cfg.max_ask_tokens) max_tokens = d->cfg.max_ask_tokens; /* limits.h */
    prompt = malloc((np ? np : 1) * sizeof *prompt);
    gen = malloc(max_tokens * sizeof *gen);
    logits = malloc((size_t)vocab * sizeof *logits);
    if ((nq && !qt) || !prompt || !gen || !logits) {
        request_error(q, RC_ERR_NOMEM, "out of memory for the question");
        goto out;
    }
    if (np == 0) {
        request_error(q, RC_ERR_INVALID,
                      "nothing to answer from: session '%s' is empty and the question is empty",
                      s->name);
        goto out;
    }
    if (ntail) memcpy(prompt, s->tokens + tail_start, ntail * sizeof *prompt);
    if (nq) memcpy(prompt + ntail, qt, nq * sizeof *prompt);

    sampler_t sm;
    sampler_init(&sm, a->temperature, a->top_p, a->seed);
    int eos = tokenizer_eos_id(d->tok);
    if (eos < 0) eos = d->mc->eos_id;
    model_stream_mark_t mark = model_stream_get_mark(s->stream);
    double t0 = clock_now_s();
    rc = model_stream_feed(s->stream, prompt, np, NULL, logits);
    double t1 = clock_now_s();
    if (!rc) http_histogram_observe(&d->metrics.ask_prefill, t1 - t0);
    if (rc) {
        model_stream_rewind(s->stream, mark);
        request_error(q, rc, "the forward pass over the prompt failed: %s", rc_strerror(rc));
        goto out;
    }
    size_t ng = 0;
    text_stream_t ts = {-1, 0, 0};
    const char *reason = "length";
    while (ng < max_tokens) {
        if (d->worker_stop_now) {
            model_stream_rewind(s->stream, mark);
            request_error(q, RC_ERR_SHUTDOWN, "the daemon is stopping; the answer was cut short");
            goto out;
        }
        if (d->job_abort) {
            model_stream_rewind(s->stream, mark);
            log_warn("ask on '%s' abandoned after %zu tokens: the client is not reading its "
                     "replies",
                     s->name, ng);
            request_error(q, RC_ERR_IO, "the client stopped reading; the answer was abandoned");
            goto out;
        }
        int tok = sampler_sample(&sm, logits, vocab);
        if (tok == eos && !a->ignore_eos) {
            reason = "eos";
            break;
        }
        gen[ng++] = tok;
        Recall__AskResponse ar = RECALL__ASK_RESPONSE__INIT;
        char *delta = text_delta(d, &ts, gen, ng, 0);
        int hit = 0;
        if (n_stops && delta) {
            /* Text that may be the start of a stop string waits for the next token. */
            char *now = stop_take(&st, delta, stops, n_stops, &hit);
            free(delta);
            delta = now;
        }
        ar.token = tok;
        ar.text = delta ? delta : (char *)"";
        request_reply(q, &ar, 1);
        free(delta);
        if (hit) {
            reason = "stop";
            break;
        }
        if (ng == max_tokens) break;
        int32_t t32 = tok;
        rc = model_stream_feed(s->stream, &t32, 1, NULL, logits);
        if (rc) {
            model_stream_rewind(s->stream, mark);
            request_error(q, rc, "the forward pass failed while generating: %s", rc_strerror(rc));
            goto out;
        }
    }
    double t2 = clock_now_s();
    /* The question leaves the session as it was... */
    model_stream_rewind(s->stream, mark);
    pthread_mutex_lock(&d->mu);
    d->tokens_generated += ng;
    pthread_mutex_unlock(&d->mu);
    /* The text not sent yet: everything left, up to a stop string found in it now. */
    char *rest = NULL;
    if (!strcmp(reason, "stop")) {
        rest = strdup(""); /* what followed the stop string is not part of the answer */
    } else {
        rest = text_delta(d, &ts, gen, ng, 1);
        if (n_stops && rest) {
            int hit = 0;
            /* Released whole unless a stop string completes in it. */
            char *now = stop_take(&st, rest, (const char *const *)stops, n_stops, &hit);
            free(rest);
            rest = now;
            if (hit) reason = "stop";
            else if (rest && st.released < st.len) {
                char *all = malloc(strlen(rest) + st.len - st.released + 1);
                if (all) sprintf(all, "%s%s", rest, st.p + st.released);
                free(rest);
                rest = all;
                st.released = st.len;
            }
        }
    }
    /* A stop string ends the kept answer before it: the tokens wholly before it. */
    size_t ng_keep = !strcmp(reason, "stop") ? tokens_before(d, gen, ng, st.released) : ng;
    /* ...unless the client asked to keep it: question and answer become a durable chunk. */
    if (a->append && nq + ng_keep > 0) {
        app = malloc((nq + ng_keep) * sizeof *app);
        if (!app) {
            free(rest);
            request_error(q, RC_ERR_NOMEM, "out of memory appending the answer");
            goto out;
        }
        if (nq) memcpy(app, qt, nq * sizeof *app);
        if (ng_keep) memcpy(app + nq, gen, ng_keep * sizeof *app);
        append_result_t res;
        rc = append_durable(q, s, app, nq + ng_keep, 0, &res, err, sizeof err);
        if (rc) {
            free(rest);
            request_error(q, rc, "the answer was generated but appending it to '%s' failed: %s",
                          s->name, err);
            goto out;
        }
    }
    Recall__AskResponse ar = RECALL__ASK_RESPONSE__INIT;
    ar.token = -1;
    ar.text = rest ? rest : (char *)"";
    ar.done = 1;
    ar.prompt_tokens = (uint32_t)np;
    ar.generated = (uint32_t)ng;
    ar.prefill_ms = (t1 - t0) * 1e3;
    ar.decode_ms = (t2 - t1) * 1e3;
    ar.stop_reason = (char *)reason;
    if (a->n_messages) ar.chat_template = (char *)chat_template_name(d->chat.kind);
    request_reply(q, &ar, 0);
    free(rest);
out:
    free(st.p);
    free(qt);
    free(prompt);
    free(gen);
    free(logits);
    free(app);
}

/* ---- Score --------------------------------------------------------------------------- */

void work_score(request_t *q)
{
    daemon_t *d = q->d;
    const Recall__ScoreRequest *sq = q->req->score;
    session_t *s = q->sess;
    const int vocab = d->mc->vocab_size;
    char err[1024];
    model_stream_opts_t o;
    const int32_t *toks = NULL;
    int32_t *owned = NULL;
    size_t n = 0;
    float *lp = NULL, *logits = NULL;
    model_stream_t *st = NULL;
    rc_t rc;
    if (s) {
        pthread_mutex_lock(&d->mu);
        int dropped = s->dropped;
        n = (size_t)s->n_tokens;
        o = s->opts;
        pthread_mutex_unlock(&d->mu);
        if (dropped) {
            request_error(q, RC_ERR_NOT_FOUND, "session '%s' was dropped", s->name);
            return;
        }
        toks = s->tokens; /* only this thread appends to it */
    } else {
        Recall__SessionOptions want = session_opts_with_defaults(d, sq->options);
        rc = session_opts_resolve(d, &want, &o, err, sizeof err);
        if (rc) {
            request_error(q, rc, "score options: %s", err);
            return;
        }
        size_t tl = strlen(sq->text);
        if (tl) {
            rc = tokenizer_encode(d->tok, sq->text, tl,
                                  sq->add_bos && tokenizer_bos_id(d->tok) >= 0, &owned, &n);
            if (rc) {
                request_error(q, rc, "cannot tokenize the text: %s", rc_strerror(rc));
                return;
            }
            toks = owned;
        } else {
            toks = sq->tokens;
            n = sq->n_tokens;
        }
    }
    if (n < 2) {
        request_error(q, RC_ERR_INVALID, "scoring needs at least 2 tokens; got %zu", n);
        goto out;
    }
    lp = malloc(n * sizeof *lp);
    logits = malloc((size_t)vocab * sizeof *logits);
    if (!lp || !logits) {
        request_error(q, RC_ERR_NOMEM, "out of memory for %zu log-probabilities", n);
        goto out;
    }
    o.gpu_memory_budget = daemon_stream_gpu_budget(d, &o);
    char why[256] = "";
    rc = model_stream_create_with(d->backend, &o, NULL, NULL, &st, why, sizeof why);
    if (rc) {
        request_error(q, rc, "cannot create a stream: %s", why[0] ? why : rc_strerror(rc));
        goto out;
    }
    /* Window by window (aligned to the first token), so long texts report progress; the
     * last logprob of each piece is left by feed for want of its next token, so it is
     * filled here from the piece's last logits. */
    const size_t W = (size_t)o.window;
    for (size_t pos = 0; pos < n; pos += W) {
        if (d->worker_stop_now) {
            request_error(q, RC_ERR_SHUTDOWN, "the daemon is stopping; scoring was abandoned");
            goto out;
        }
        if (d->job_abort) {
            log_warn("score abandoned at token %zu: the client is not reading its replies", pos);
            request_error(q, RC_ERR_IO, "the client stopped reading; scoring was abandoned");
            goto out;
        }
        size_t piece = n - pos < W ? n - pos : W;
        rc = model_stream_feed(st, toks + pos, piece, lp + pos, logits);
        if (rc) {
            request_error(q, rc, "the forward pass failed at token %zu: %s", pos, rc_strerror(rc));
            goto out;
        }
        if (pos + piece < n) {
            float mx = -INFINITY;
            for (int v = 0; v < vocab; v++)
                if (logits[v] > mx) mx = logits[v];
            double sum = 0;
            for (int v = 0; v < vocab; v++)
                sum += exp((double)(logits[v] - mx));
            lp[pos + piece - 1] = (float)((double)(logits[toks[pos + piece]] - mx) - log(sum));
            request_progress(q, pos + piece, n);
        }
    }
    double nll = 0;
    for (size_t i = 0; i + 1 < n; i++)
        nll -= (double)lp[i];
    Recall__ScoreResponse sr = RECALL__SCORE_RESPONSE__INIT;
    sr.tokens = n;
    sr.scored = n - 1;
    sr.nll = nll;
    sr.ppl = exp(nll / (double)(n - 1));
    if (sq->want_logprobs) {
        sr.n_logprobs = n - 1;
        sr.logprobs = lp;
    }
    request_reply(q, &sr, 0);
out:
    model_stream_destroy(&st);
    free(owned);
    free(lp);
    free(logits);
}

/* ---- Verify -------------------------------------------------------------------------- */

/* Reads the whole session back: every row against its checksum, the tokens against the
 * record. It runs for an unavailable session too (that is when it is wanted), and a
 * session that passes becomes available again if its rows were what had failed. */
void work_verify(request_t *q)
{
    daemon_t *d = q->d;
    session_t *s = q->sess;
    char err[1024] = "";
    Recall__VerifySessionResponse vr = RECALL__VERIFY_SESSION_RESPONSE__INIT;
    double t0 = clock_now_s();
    pthread_mutex_lock(&d->mu);
    int dropped = s->dropped;
    uint64_t want_tokens = s->n_tokens;
    char problem[sizeof s->problem];
    snprintf(problem, sizeof problem, "%s", s->problem);
    pthread_mutex_unlock(&d->mu);
    if (dropped) {
        request_error(q, RC_ERR_NOT_FOUND, "session '%s' was dropped", s->name);
        return;
    }
    rc_t rc = RC_OK;
    if (!s->mem) {
        /* Its record is what is damaged: nothing else can be checked. */
        snprintf(err, sizeof err, "%s", problem);
        rc = RC_ERR_UNAVAILABLE;
    } else {
        session_memory_report_t rep;
        rc = session_memory_verify(s->mem, &rep, err, sizeof err);
        vr.windows = rep.windows;
        vr.bad_windows = rep.bad;
        vr.bytes_read = rep.bytes;
        int32_t *toks = NULL;
        size_t n = 0;
        rc_t trc = memory_db_load_tokens(d->db, s->name, &toks, &n, NULL, NULL);
        free(toks);
        vr.tokens = n;
        if (!rc && (trc || n != want_tokens)) {
            rc = RC_ERR_UNAVAILABLE;
            snprintf(err, sizeof err,
                     "session '%s': the catalogue holds %zu of its tokens but its record says "
                     "%llu",
                     s->name, n, (unsigned long long)want_tokens);
        }
    }
    if (rc && rc != RC_ERR_UNAVAILABLE) {
        request_error(q, rc, "verifying '%s' failed: %s", s->name, err);
        return;
    }
    pthread_mutex_lock(&d->mu);
    if (rc == RC_ERR_UNAVAILABLE && s->mem) {
        session_mark_unavailable(s, err);
    } else if (!rc && s->problem[0]) {
        log_info("session '%s' verified clean: available again", s->name);
        s->problem[0] = 0;
        session_account_locked(d, s);
    }
    pthread_mutex_unlock(&d->mu);
    /* Whatever it held came from rows that no longer check out. */
    if (rc == RC_ERR_UNAVAILABLE) session_move_to_disk(d, s);
    vr.ok = rc == RC_OK;
    vr.problem = rc ? err : (char *)"";
    vr.seconds = clock_now_s() - t0;
    request_reply(q, &vr, 0);
}

/* ---- the thread ---------------------------------------------------------------------- */

static void job_free(daemon_t *d, job_t *j)
{
    recall__request__free_unpacked(j->req, NULL);
    session_unref(d, j->sess);
    free(j);
}

/* Runs one job through its row of the request table: the session brought in as the row
 * says, the handler, the session released. */
static void run_job(daemon_t *d, job_t *j, int stopping)
{
    const request_kind_t *k = request_kind_find((int)j->req->body_case);
    request_t q = {.d = d,
                   .kind = k,
                   .sock = d->pair_worker,
                   .route = j->route,
                   .id = j->req->id,
                   .req = j->req,
                   .sess = j->sess,
                   .credit = k && k->credit && j->sess,
                   .in_flight = j->route.client != NULL}; /* every queued job was counted */
    pthread_mutex_lock(&d->mu);
    d->job_route = j->route;
    d->job_running = 1;
    d->job_abort = 0;
    pthread_mutex_unlock(&d->mu);
    if (stopping) {
        request_error(&q, RC_ERR_SHUTDOWN, "the daemon is stopping; the request was not run");
    } else if (!k || k->thread != REQUEST_WORKER) {
        request_error(&q, RC_ERR_INTERNAL, "the worker got a request it cannot run");
    } else if (k->bring == BRING_NONE) {
        k->handle(&q);
    } else {
        /* Ingest and Ask run on the session's rows; Score of a session re-reads its tokens
         * only; Score of a text has no session. */
        char err[1024];
        rc_t rc =
            q.sess ? session_bring_in(d, q.sess, k->bring == BRING_ROWS, err, sizeof err) : RC_OK;
        if (rc) {
            request_error(&q, rc, "%s", err);
        } else {
            k->handle(&q);
            if (q.sess) session_release(d, q.sess);
        }
    }
    pthread_mutex_lock(&d->mu);
    if (q.credit) q.sess->queued_ingest--; /* a handler sent no final reply: no leak */
    if (q.in_flight) limits_job_end(q.route.client);
    d->job_running = 0;
    pthread_mutex_unlock(&d->mu);
}

/* The GPU's memory for /metrics (daemon.h: gpu_mem_*), read here because the worker is the
 * thread that uses the device. Nothing on the CPU backend. */
static void sample_gpu_memory(daemon_t *d)
{
    size_t free_b = 0, total = 0;
    if (!daemon_memory_on_device(d) || model_backend_device_memory(d->backend, &free_b, &total))
        return;
    __atomic_store_n(&d->gpu_mem_total, (uint64_t)total, __ATOMIC_RELAXED);
    __atomic_store_n(&d->gpu_mem_free, (uint64_t)free_b, __ATOMIC_RELAXED);
}

void *worker_main(void *arg)
{
    daemon_t *d = arg;
    /* Signals go to the main thread, which owns shutdown. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (d->cfg.threads > 0) omp_set_num_threads(d->cfg.threads);
    /* The weights first: jobs that arrive meanwhile wait in the queue; if the weights cannot
     * be loaded, recalld is stopping and every job is refused. */
    const int failed = daemon_load_weights(d) != RC_OK;
    if (!failed) sample_gpu_memory(d);
    pthread_mutex_lock(&d->mu);
    size_t status_sessions = d->n_sessions; /* the count weights.c's STATUS gave */
    pthread_mutex_unlock(&d->mu);

    for (;;) {
        pthread_mutex_lock(&d->mu);
        while (!d->head && !d->stopping)
            pthread_cond_wait(&d->cv, &d->mu);
        job_t *j = d->head;
        if (j) {
            d->head = j->next;
            if (!d->head) d->tail = NULL;
            d->queued--;
        }
        int stopping = d->stopping;
        pthread_mutex_unlock(&d->mu);
        if (!j) break; /* stopping and nothing left */
        run_job(d, j, stopping || failed);
        job_free(d, j);
        sample_gpu_memory(d);
        /* systemd's STATUS line follows the session count (notify.h): sessions are created
         * and dropped on the main thread, and the next job after that says so. */
        pthread_mutex_lock(&d->mu);
        if (!failed && d->n_sessions != status_sessions) {
            status_sessions = d->n_sessions;
            daemon_notify_status("serving %zu session%s on %s", status_sessions,
                                 status_sessions == 1 ? "" : "s",
                                 daemon_device_describe(d));
        }
        pthread_mutex_unlock(&d->mu);
    }
    zmq_send(d->pair_worker, "", 0, 0); /* goodbye: the main loop may finish */
    return NULL;
}
