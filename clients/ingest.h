/* ingest.h — the client side of recalld's Ingest protocol (proto/recall.proto), written
 * once for every client: `recall ingest`, `recall bench` and `recall passkey`.
 *
 * The protocol, as this file speaks it:
 *   chunks     text is cut at line boundaries into chunks of at most chunk_bytes
 *              (clients/chunker.h), each checked to be UTF-8 before it is sent; token ids
 *              are cut into chunks of chunk_tokens ids. Each chunk carries seq, one more
 *              than the previous; the first is the session's last acknowledged seq + 1.
 *   credits    at most `credit` chunks are unacknowledged at a time. Until the daemon's
 *              first acknowledgement says how many it accepts, one at a time.
 *   retries    a chunk refused as BUSY, or refused for a gap behind a refused one, is sent
 *              again, in order, once nothing is in flight, after a growing pause (20 ms,
 *              40 ms, ... then 200 ms); 200 such rounds without an acknowledgement give up.
 *              An acknowledged chunk is never sent again. A first send answered as a
 *              duplicate means another client wrote that seq: the call stops rather than
 *              lose text.
 *   progress   on_progress is told after each acknowledgement and at each Progress message
 *              inside a large chunk (bytes done so far, estimated inside the chunk).
 * An acknowledgement means the chunk and every window it completed are on disk, so what
 * state reports as acknowledged survives a crash of the daemon.
 *
 * Both calls block until every chunk is acknowledged or something fails; each send and
 * each wait obeys the client's time limits (client.h). They use the client handle
 * exclusively while they run (no other request may be in flight on it). */
#ifndef RECALL_CLIENTS_INGEST_H
#define RECALL_CLIENTS_INGEST_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clients/client.h"
#include "common/rc.h"

#define RECALL_INGEST_DEFAULT_CHUNK_BYTES (64 * 1024)
#define RECALL_INGEST_DEFAULT_CHUNK_TOKENS 16384

/* One source of text: a file name ("-": standard input), or an open stream f that name
 * only labels in messages. A stream given here is read but never closed; a file opened
 * here is closed before the call returns. */
typedef struct recall_ingest_src {
    const char *name;
    FILE *f; /* NULL: open name */
} recall_ingest_src;

/* Where the session stands. The caller fills session, last_seq, tokens and windows from
 * the session's info (CreateSession's answer) and zeroes the rest; the call keeps it up
 * to date with every acknowledgement, so on failure it says what is durable. */
typedef struct recall_ingest_state {
    const char *session; /* not owned; must outlive the call */
    uint64_t last_seq;   /* the highest acknowledged seq */
    uint64_t tokens;     /* the session's tokens and windows as of that acknowledgement */
    uint64_t windows;
    uint64_t tokens_added; /* tokens this call's chunks added (re-acknowledged ones: none) */
    uint64_t chunks_acked;
    double bytes_acked; /* text bytes (or, for ids, 4 per id) acknowledged by this call */
} recall_ingest_state;

/* Progress: bytes_done is bytes_acked plus the estimated part of a chunk in progress;
 * final is 1 on the last call, after everything was acknowledged. Runs on the caller's
 * thread, inside the ingest call; must not use the client handle. */
typedef void (*recall_ingest_progress_fn)(const recall_ingest_state *st, double bytes_done,
                                          int final, void *arg);

typedef struct recall_ingest_opts {
    size_t chunk_bytes;                    /* text: largest chunk, >= 4 (0: the default above) */
    size_t chunk_tokens;                   /* ids: ids per chunk (0: the default above) */
    volatile sig_atomic_t *stop;           /* non-zero stops before the next wait (may be NULL) */
    recall_ingest_progress_fn on_progress; /* may be NULL */
    void *arg;                             /* for on_progress */
} recall_ingest_opts;

/* What went wrong, so that each client can word it and pick its exit status. */
typedef enum recall_ingest_fault {
    RECALL_INGEST_OK = 0,
    RECALL_INGEST_INPUT,     /* a source cannot be opened or read, or is not UTF-8 text;
                                nothing from that point on was sent */
    RECALL_INGEST_NOMEM,     /* out of memory here */
    RECALL_INGEST_TRANSPORT, /* a send or receive failed: recall_client_error(c) says why */
    RECALL_INGEST_DAEMON,    /* the daemon refused a chunk (its message is the client error,
                                recall_client_error_remote is 1), or stayed busy */
    RECALL_INGEST_PROTOCOL,  /* an answer that breaks the protocol: not an Ingest answer, a
                                chunk another client wrote, ids not taken as sent */
    RECALL_INGEST_STOPPED,   /* *opts->stop was set */
} recall_ingest_fault;

typedef struct recall_ingest_error {
    recall_ingest_fault fault;
    int code;           /* the status; for DAEMON the daemon's code exactly as it sent it */
    uint64_t seq;       /* the chunk concerned, or 0 */
    char message[1024]; /* a sentence for a person (not prefixed with the program's name) */
} recall_ingest_error;

/* Streams srcs[0..n_srcs) in order into the existing session st->session. Returns RC_OK
 * when every chunk was acknowledged; otherwise the failure's status (a daemon code outside
 * rc_t is RC_ERR_INTERNAL) with *err filled in and *st holding what was acknowledged.
 * o may be NULL for the defaults; err must not be. */
rc_t recall_ingest_text(recall_client *c, const recall_ingest_src *srcs, int n_srcs,
                        const recall_ingest_opts *o, recall_ingest_state *st,
                        recall_ingest_error *err);

/* The same for ids[0..n) (not copied; must stay valid during the call). Each chunk must be
 * taken whole: an acknowledgement that adds fewer or more tokens than the chunk carried is
 * a PROTOCOL failure. */
rc_t recall_ingest_tokens(recall_client *c, const int32_t *ids, size_t n,
                          const recall_ingest_opts *o, recall_ingest_state *st,
                          recall_ingest_error *err);

#endif
