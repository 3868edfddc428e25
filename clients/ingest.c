/* ingest.c — the Ingest protocol's client side: see ingest.h for the rules it follows.
 *
 * One loop (pump) serves text and ids alike: a feed hands it the next chunk, it keeps a
 * window of chunks sent and not yet acknowledged, and it removes a chunk only when its
 * acknowledgement arrives. */
#include "clients/ingest.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/chunker.h"

/* More than any credit the daemon grants is worth: a larger window only adds memory. */
#define MAX_WINDOW 256
#define MAX_BUSY_ROUNDS 200

typedef struct chunk {
    uint64_t seq;
    uint64_t req_id;    /* 0: not awaiting an answer (to be resent) */
    char *text;         /* owned; NULL for an id chunk */
    const int32_t *ids; /* borrowed from the caller */
    size_t n_ids;
    size_t len; /* bytes, for progress */
    int sends;
} chunk;

/* Where the chunks come from: text sources through the chunker, or a slice of ids. */
typedef struct feed {
    const recall_ingest_src *srcs;
    int n_srcs, src_i;
    FILE *f; /* the source being read; opened here unless it is stdin or srcs[src_i].f */
    recall_chunker *ch;
    size_t chunk_bytes;
    int of_ids; /* 1: the chunks are slices of ids[0..n_ids) */
    const int32_t *ids;
    size_t n_ids, at, chunk_tokens;
    int ended;
} feed;

static rc_t fail(recall_ingest_error *err, recall_ingest_fault fault, int code, uint64_t seq,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static rc_t fail(recall_ingest_error *err, recall_ingest_fault fault, int code, uint64_t seq,
                 const char *fmt, ...)
{
    va_list ap;
    err->fault = fault;
    err->code = code;
    err->seq = seq;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code > 0 || code < RC_ERR_UNAVAILABLE ? RC_ERR_INTERNAL : (rc_t)code;
}

static rc_t transport_failed(recall_client *c, rc_t rc, recall_ingest_error *err)
{
    const char *m = recall_client_error(c);
    return fail(err, RECALL_INGEST_TRANSPORT, rc, 0, "%s", m[0] ? m : rc_strerror(rc));
}

static void feed_close_source(feed *fd)
{
    recall_chunker_destroy(&fd->ch);
    if (fd->f && fd->f != stdin && fd->f != fd->srcs[fd->src_i].f) fclose(fd->f);
    fd->f = NULL;
}

/* The next chunk into *k (seq and req_id left to the caller), or fd->ended. */
static rc_t feed_next(feed *fd, chunk *k, recall_ingest_error *err)
{
    memset(k, 0, sizeof *k);
    if (fd->of_ids) {
        if (fd->at == fd->n_ids) {
            fd->ended = 1;
            return RC_OK;
        }
        size_t m = fd->n_ids - fd->at < fd->chunk_tokens ? fd->n_ids - fd->at : fd->chunk_tokens;
        k->ids = fd->ids + fd->at;
        k->n_ids = m;
        k->len = m * sizeof *fd->ids;
        fd->at += m;
        return RC_OK;
    }
    for (;;) {
        if (!fd->ch) {
            if (fd->src_i == fd->n_srcs) {
                fd->ended = 1;
                return RC_OK;
            }
            const recall_ingest_src *s = &fd->srcs[fd->src_i];
            fd->f = s->f ? s->f : strcmp(s->name, "-") ? fopen(s->name, "rb") : stdin;
            if (!fd->f)
                return fail(err, RECALL_INGEST_INPUT, RC_ERR_NOT_FOUND, 0, "cannot open %s: %s",
                            s->name, strerror(errno));
            if (recall_chunker_create(fd->f, fd->chunk_bytes, &fd->ch))
                return fail(err, RECALL_INGEST_NOMEM, RC_ERR_NOMEM, 0, "out of memory");
        }
        const char *name = fd->srcs[fd->src_i].name;
        size_t off, bad;
        rc_t rc = recall_chunker_next(fd->ch, &k->text, &k->len, &off);
        if (rc) return fail(err, RECALL_INGEST_INPUT, rc, 0, "cannot read %s", name);
        if (!k->text) { /* end of this source */
            feed_close_source(fd);
            fd->src_i++;
            continue;
        }
        if (!recall_utf8_valid(k->text, k->len, &bad)) {
            free(k->text);
            k->text = NULL;
            return fail(err, RECALL_INGEST_INPUT, RC_ERR_INVALID, 0,
                        "%s: not UTF-8 text (bad byte at offset %zu); nothing after it was sent",
                        name, off + bad);
        }
        return RC_OK;
    }
}

static rc_t send_chunk(recall_client *c, const char *session, chunk *k)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__IngestRequest ir = RECALL__INGEST_REQUEST__INIT;
    ir.session = (char *)session;
    ir.seq = k->seq;
    ir.text = k->text;
    ir.tokens = (int32_t *)k->ids;
    ir.n_tokens = k->n_ids;
    req.body_case = RECALL__REQUEST__BODY_INGEST;
    req.ingest = &ir;
    k->sends++;
    return recall_client_send(c, &req, &k->req_id);
}

static void progress(const recall_ingest_opts *o, const recall_ingest_state *st, double done,
                     int final)
{
    if (o->on_progress) o->on_progress(st, done, final, o->arg);
}

static rc_t pump(recall_client *c, feed *fd, const recall_ingest_opts *o, recall_ingest_state *st,
                 recall_ingest_error *err)
{
    const char *session = st->session;
    chunk win[MAX_WINDOW];
    int n_win = 0, busy_rounds = 0;
    uint32_t credit = 1;
    uint64_t next_seq = st->last_seq + 1;
    Recall__Response *r;
    rc_t rc;

    for (;;) {
        /* Fill the window with new chunks, unless refused ones wait to be sent again:
         * those go first, so the daemon sees the seqs in order. */
        while (n_win < (int)credit && n_win < MAX_WINDOW && !fd->ended) {
            int awaiting_resend = 0;
            for (int i = 0; i < n_win; i++)
                awaiting_resend |= !win[i].req_id;
            if (awaiting_resend) break;
            rc = feed_next(fd, &win[n_win], err);
            if (rc) goto done;
            if (fd->ended) break;
            chunk *k = &win[n_win++];
            k->seq = next_seq++;
            rc = send_chunk(c, session, k);
            if (rc) {
                rc = transport_failed(c, rc, err);
                goto done;
            }
        }
        if (n_win == 0) break; /* all sent and acknowledged */
        if (o->stop && *o->stop) {
            rc = fail(err, RECALL_INGEST_STOPPED, RC_ERR_SHUTDOWN, 0, "ingest stopped by a signal");
            goto done;
        }

        /* Resend refused chunks once nothing is awaited. */
        int awaited = 0;
        for (int i = 0; i < n_win; i++)
            awaited += win[i].req_id != 0;
        if (!awaited) {
            if (++busy_rounds > MAX_BUSY_ROUNDS) {
                rc = fail(err, RECALL_INGEST_DAEMON, RC_ERR_BUSY, win[0].seq,
                          "daemon stayed busy; giving up");
                recall_client_set_error(c, "%s", err->message);
                goto done;
            }
            usleep((useconds_t)(busy_rounds < 10 ? 20000 * busy_rounds : 200000));
            for (int i = 0; i < n_win && i < (int)credit; i++) {
                rc = send_chunk(c, session, &win[i]);
                if (rc) {
                    rc = transport_failed(c, rc, err);
                    goto done;
                }
            }
            continue;
        }

        uint64_t ids[MAX_WINDOW];
        int n_ids = 0;
        for (int i = 0; i < n_win; i++)
            if (win[i].req_id) ids[n_ids++] = win[i].req_id;
        rc = recall_client_recv(c, ids, n_ids, &r);
        if (rc) {
            rc = transport_failed(c, rc, err);
            goto done;
        }
        int wi = 0;
        while (win[wi].req_id != r->id)
            wi++;
        chunk *k = &win[wi];
        int code = r->status ? r->status->code : 0;
        if (code == RC_ERR_BUSY || (code == RC_ERR_SEQUENCE && k->seq > win[0].seq)) {
            /* Not taken: resend later. A gap error behind a refused chunk is the daemon
             * seeing our pipeline out of order, not a real conflict. */
            k->req_id = 0;
            if (code == RC_ERR_BUSY && credit > 1) credit = (uint32_t)(n_win > 1 ? n_win - 1 : 1);
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        if (code) {
            const char *m = r->status->message && r->status->message[0] ? r->status->message
                                                                        : rc_strerror((rc_t)code);
            rc = fail(err, RECALL_INGEST_DAEMON, code, k->seq, "%s (chunk %llu of %s)", m,
                      (unsigned long long)k->seq, session);
            recall_client_status(c, r); /* the daemon's own words become the client error */
            recall__response__free_unpacked(r, NULL);
            goto done;
        }
        if (r->more) { /* progress inside a large chunk */
            if (r->body_case == RECALL__RESPONSE__BODY_PROGRESS && r->progress->total > 0)
                progress(o, st,
                         st->bytes_acked + (double)k->len * r->progress->done / r->progress->total,
                         0);
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        if (r->body_case != RECALL__RESPONSE__BODY_INGEST) {
            recall__response__free_unpacked(r, NULL);
            rc = fail(err, RECALL_INGEST_PROTOCOL, RC_ERR_FORMAT, k->seq,
                      "unexpected answer to an ingest chunk");
            goto done;
        }
        Recall__IngestResponse *ack = r->ingest;
        if (ack->duplicate && k->sends == 1) {
            /* We sent this seq once and it was already taken: someone else is writing to
             * this session, and our chunk was not ingested. Stop rather than lose text. */
            recall__response__free_unpacked(r, NULL);
            rc = fail(err, RECALL_INGEST_PROTOCOL, RC_ERR_SEQUENCE, k->seq,
                      "chunk %llu of session '%s' was already written by another client; "
                      "stopping (ingest into one session from one client at a time)",
                      (unsigned long long)k->seq, session);
            goto done;
        }
        if (fd->of_ids && !ack->duplicate && ack->tokens_added != k->n_ids) {
            recall__response__free_unpacked(r, NULL);
            rc = fail(err, RECALL_INGEST_PROTOCOL, RC_ERR_FORMAT, k->seq,
                      "the daemon did not take chunk %llu of session '%s' as sent",
                      (unsigned long long)k->seq, session);
            goto done;
        }
        if (ack->seq > st->last_seq) {
            st->last_seq = ack->seq;
            st->tokens = ack->tokens;
            st->windows = ack->windows;
        }
        if (!ack->duplicate) st->tokens_added += ack->tokens_added;
        st->chunks_acked++;
        st->bytes_acked += (double)k->len;
        if (ack->credit > 0) credit = ack->credit > MAX_WINDOW ? MAX_WINDOW : ack->credit;
        busy_rounds = 0;
        recall__response__free_unpacked(r, NULL);
        free(k->text);
        memmove(&win[wi], &win[wi + 1], (size_t)(n_win - wi - 1) * sizeof win[0]);
        n_win--;
        progress(o, st, st->bytes_acked, 0);
    }
    progress(o, st, st->bytes_acked, 1);
    rc = RC_OK;
done:
    for (int i = 0; i < n_win; i++)
        free(win[i].text);
    return rc;
}

static void prepare(const recall_ingest_opts **o, recall_ingest_error *err)
{
    static const recall_ingest_opts defaults = {0};
    if (!*o) *o = &defaults;
    memset(err, 0, sizeof *err);
}

rc_t recall_ingest_text(recall_client *c, const recall_ingest_src *srcs, int n_srcs,
                        const recall_ingest_opts *o, recall_ingest_state *st,
                        recall_ingest_error *err)
{
    prepare(&o, err);
    feed fd = {.srcs = srcs,
               .n_srcs = n_srcs,
               .chunk_bytes = o->chunk_bytes ? o->chunk_bytes : RECALL_INGEST_DEFAULT_CHUNK_BYTES};
    rc_t rc = pump(c, &fd, o, st, err);
    if (fd.src_i < n_srcs) feed_close_source(&fd);
    return rc;
}

rc_t recall_ingest_tokens(recall_client *c, const int32_t *ids, size_t n,
                          const recall_ingest_opts *o, recall_ingest_state *st,
                          recall_ingest_error *err)
{
    prepare(&o, err);
    feed fd = {.of_ids = 1,
               .ids = ids,
               .n_ids = n,
               .chunk_tokens =
                   o->chunk_tokens ? o->chunk_tokens : RECALL_INGEST_DEFAULT_CHUNK_TOKENS};
    return pump(c, &fd, o, st, err);
}
