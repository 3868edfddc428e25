/* daemon.h — recalld's state, shared by its parts (internal to daemon/).
 *
 * Threads: the main thread owns the ZeroMQ ROUTER and answers quick requests; one worker
 * thread runs model work (Ingest, Ask, Score) from a queue and hands its responses back
 * over an inproc PAIR socket that the main loop forwards. Everything both threads touch
 * (the session table, each session's counters, the statistics) is guarded by daemon.mu.
 * A session's stream and token array are written only by the worker. */
#ifndef RECALL_DAEMON_DAEMON_H
#define RECALL_DAEMON_DAEMON_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/rc.h"
#include "memory/db.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"
#include "model/tokenizer.h"
#include "recall.pb-c.h"

#define SESSION_NAME_MAX 128
#define DAEMON_CREDIT 8      /* Ingest chunks a client may have unacknowledged per session */
#define DAEMON_QUEUE_MAX 256 /* jobs waiting for the worker */
#define ASK_DEFAULT_TOKENS 64
#define ASK_MAX_TOKENS 4096
#define SESSION_RECORD_VERSION 1
/* SessionOptions.gpu_memory_budget in a request: "no limit", as opposed to 0 (the daemon's
 * default). Resolved options say no limit with 0. */
#define SESSION_BUDGET_NONE UINT64_MAX
/* Sanity bounds on knn_nlist / knn_nprobe and gpu_memory_budget (1 PiB). */
#define SESSION_KNN_LISTS_MAX (1 << 20)
#define SESSION_BUDGET_MAX (1ull << 50)

typedef struct daemon_config {
    const char *model_dir;
    const char *data_dir;
    const char *listen;
    const char *device; /* "cpu", "cuda", "cuda:N" or NULL for auto */
    size_t max_chunk_bytes;
    size_t max_frame_bytes;
    int max_sessions;
    int threads;
    size_t map_size; /* initial LMDB map; 0: default */
    /* Session options for fields a CreateSession (or a Score of text) leaves unset: the
     * --window, --positional, ... flags. Strings point into argv. */
    Recall__SessionOptions defaults;
} daemon_config_t;

typedef struct session {
    char name[SESSION_NAME_MAX + 1];
    int refs;    /* the table's one, plus one per queued or running job (under mu) */
    int dropped; /* removed from the table; a running job must not commit (under mu) */

    model_stream_opts_t opts; /* resolved */
    int window;
    model_stream_t *stream; /* worker only (and load / create before it is shared) */
    int32_t *tokens;        /* [n_tokens] every committed token; written by the worker */
    size_t tokens_cap;

    /* Under mu. */
    uint64_t n_tokens;
    uint64_t windows;
    uint64_t last_seq;
    uint64_t ingest_chunks;
    uint64_t next_chunk;
    int64_t created_unix;
    uint64_t mem_tokens;
    uint64_t mem_bytes_host;
    uint64_t mem_bytes_device; /* the backend's hot tier (GPU); 0 on the CPU */
    uint64_t disk_bytes;
    uint64_t record_bytes; /* the session record's share of disk_bytes */
    unsigned queued_ingest; /* Ingest jobs queued or running */
} session_t;

/* A reply address: the ROUTER identity, plus an empty delimiter when the peer is a REQ
 * socket (which wraps its message in an envelope). */
typedef struct route {
    uint8_t ident[256];
    size_t ident_len;
    int delim;
} route_t;

typedef struct job {
    route_t route;
    Recall__Request *req; /* owned: freed with recall__request__free_unpacked */
    session_t *sess;      /* a reference, or NULL (Score of text) */
    struct job *next;
} job_t;

typedef struct daemon {
    daemon_config_t cfg;
    model_t *model;
    model_backend_t *backend; /* where every stream computes */
    const model_config_t *mc;
    const tokenizer_t *tok;
    char fingerprint[256];
    int row_dim;
    memory_db_t *db;
    double start_time;

    pthread_mutex_t mu;
    session_t **sessions; /* [n_sessions] */
    size_t n_sessions, cap_sessions;
    uint64_t requests, errors, tokens_ingested, tokens_generated;

    /* Worker queue (under mu). */
    pthread_cond_t cv;
    job_t *head, *tail;
    size_t queued;
    int stopping;                          /* set by the main thread at shutdown (under mu) */
    volatile sig_atomic_t worker_stop_now; /* read by long jobs between windows/tokens */

    void *zctx;
    void *pair_main;   /* main's end of the inproc pipe */
    void *pair_worker; /* worker's end */
    pthread_t worker;
} daemon_t;

/* ---- session.c ---- */
/* "" if the name is acceptable, else a sentence saying why not. */
const char *session_name_problem(const char *name);
extern const char SESSION_NAME_RULE[];
/* Resolves wire options to stream options; err gets a sentence on failure. */
rc_t session_opts_resolve(daemon_t *d, const Recall__SessionOptions *in, model_stream_opts_t *o,
                          char *err, size_t errlen);
/* in, with every unset field (0 or "") taken from the daemon's --window/--positional/...
 * defaults; strings are borrowed. The --nlist / --nprobe defaults apply only when the
 * result is a knn session. Only for new sessions and Score of text: a stored session keeps
 * the options it was created with. */
Recall__SessionOptions session_opts_with_defaults(const daemon_t *d,
                                                  const Recall__SessionOptions *in);
/* Fills a SessionOptions from resolved stream options (strings are static). */
void session_opts_to_wire(const model_stream_opts_t *o, Recall__SessionOptions *out);
/* Under mu. Fills info (strings point into sess / static storage). */
void session_info_fill(const session_t *s, Recall__SessionInfo *info,
                       Recall__SessionOptions *opts);
/* Under mu. */
session_t *session_find(daemon_t *d, const char *name);
/* Creates a session object (not in the table, not persisted). */
rc_t session_new(daemon_t *d, const char *name, const model_stream_opts_t *o, session_t **out);
void session_unref(daemon_t *d, session_t *s); /* takes mu itself */
void session_unref_locked(session_t *s, session_t **to_free);
void session_free(session_t *s);
/* Packs the record for s (under mu) with the counters given; *buf malloc'ed. */
rc_t session_record_pack(daemon_t *d, const session_t *s, uint64_t n_tokens, uint64_t windows,
                         uint64_t last_seq, uint64_t ingest_chunks, uint64_t next_chunk,
                         uint8_t **buf, size_t *len);
/* Saves a knn session's indexes into the database (derived data, so best effort: a failure
 * is logged and the index is rebuilt at the next start). Worker stopped or worker only. */
void session_index_save(daemon_t *d, session_t *s);
/* Loads every session from the database into the table. */
rc_t session_load_all(daemon_t *d, char *err, size_t errlen);
/* Under mu: table insert / remove. */
rc_t session_table_add(daemon_t *d, session_t *s);
void session_table_remove(daemon_t *d, session_t *s);

/* ---- work.c (worker thread) ---- */
void *worker_main(void *arg);

/* ---- server.c ---- */
/* Packs resp and sends it to route over sock (ROUTER or the worker's PAIR). */
int server_send(void *sock, const route_t *route, Recall__Response *resp);
/* Sends a response with only a status (and optionally more=false). */
int server_send_status(void *sock, const route_t *route, uint64_t id, rc_t code, const char *fmt,
                       ...) __attribute__((format(printf, 5, 6)));
rc_t server_run(daemon_t *d, void *router, volatile sig_atomic_t *stop_flag);

double now_s(void);

/* Non-zero when the backend keeps session memory on a GPU (a mirror of the host store). */
static inline int daemon_memory_on_device(const daemon_t *d)
{
    return strncmp(model_backend_describe(d->backend), "cuda", 4) == 0;
}

#endif
