/* daemon.h — recalld's state, shared by its parts (internal to daemon/).
 *
 * Threads: the main thread owns the ZeroMQ ROUTER and answers quick requests; one worker
 * thread runs model work (Ingest, Ask, Score, Verify) from a queue and hands its responses
 * back over an inproc PAIR socket that the main loop forwards. Everything both threads
 * touch (the session table, each session's counters, the statistics, the tiers' books) is
 * guarded by daemon.mu. A session's memory object, stream and token array are touched only
 * by the worker, or by whoever frees the session once no job holds it.
 *
 * mu is held only for short, bounded steps: reading or publishing counters, the table,
 * the queue, the tiers' books. Nothing that waits on a disk (fsync, an LMDB commit,
 * unlinking files), runs the model, or grows with a session's size happens under it, so
 * the main loop's quick requests (health, stats, info, sessions) never wait behind the
 * worker's long steps. In particular a chunk's durable commit runs without mu: the worker
 * marks the session `committing` under mu (after checking `dropped`), commits, then takes
 * mu again to publish the new counters; a Drop sets `dropped` first (no commit starts
 * after that) and waits on cv until `committing` is clear, so the catalogue never sees
 * a commit land after the drop deleted the session.
 *
 * Which thread answers each request kind, what is checked before it runs and how its
 * reply is built is one table (request.c); both threads answer through its reply path.
 *
 * Sessions open lazily: start-up reads the catalogue only, and a session's tokens and
 * memory rows come in when a job first needs them (residency.c), moving other sessions'
 * rows down a tier when the daemon-wide budgets ask for room. */
#ifndef RECALL_DAEMON_DAEMON_H
#define RECALL_DAEMON_DAEMON_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/rc.h"
#include "daemon/chat.h"
#include "daemon/auth.h"
#include "daemon/http_metrics.h"
#include "daemon/limits.h"
#include "memory/db.h"
#include "memory/session_memory.h"
#include "memory/tiers.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/stream.h"
#include "model/tokenizer.h"
#include "recall.pb-c.h"

#define SESSION_NAME_MAX 128
/* A client identity's name (limits.h): a CURVE key's name in --allow, or the key itself. */
#define CLIENT_NAME_MAX 64
#define CLIENT_LOCAL "local" /* every client without a CURVE key */
#define CLIENT_HTTP "http"   /* the HTTP gateway, when recalld runs with CURVE */
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
    size_t host_budget; /* bytes of host memory for sessions' rows and tokens (resolved) */
    /* Bytes of device memory for all sessions' memory rows together (resolved; 0: no
     * limit, and always 0 on the CPU backend). A session's stream gets the smaller of this
     * and its own gpu_memory_budget (daemon_stream_gpu_budget). */
    size_t gpu_budget;
    /* Session options for fields a CreateSession (or a Score of text) leaves unset: the
     * --window, --positional, ... flags. Strings point into argv. */
    Recall__SessionOptions defaults;
    /* The HTTP gateway (daemon/http.h): its HOST:PORT (NULL: off), largest JSON body, and
     * the file holding its bearer token (NULL: no authentication). */
    const char *http;
    size_t http_max_body;
    const char *http_token;
    /* --chat-template: plain, llama2, longllama-instruct; NULL: the checkpoint's. */
    const char *chat_template;
    /* Authentication (auth.h): the daemon's secret key file and the allow-list (NULL: no
     * CURVE); insecure lets a non-loopback --listen run without CURVE. */
    const char *curve_secret;
    const char *allow;
    int insecure;
    /* Per-client quotas and request limits (limits.h); 0: no limit, except max_ask_tokens. */
    unsigned max_sessions_per_client;
    unsigned max_requests_per_client;
    uint64_t max_tokens_per_session;
    uint64_t max_disk_per_client; /* resolved (the default is half the data file system) */
    uint32_t max_ask_tokens;
} daemon_config_t;

typedef struct session {
    char name[SESSION_NAME_MAX + 1];
    /* The client identity that created it, whose quotas it counts against (limits.h);
     * fixed at creation, kept in its record. */
    char owner[CLIENT_NAME_MAX + 1];
    int refs;    /* the table's one, plus one per queued or running job (under mu) */
    int dropped; /* being or been dropped; a job must not start a commit (under mu) */
    /* The worker is committing a chunk of it to disk, outside mu (set and cleared under mu;
     * clearing broadcasts d->cv). A Drop waits for it to clear before deleting. */
    int committing;

    /* Non-empty: the session is unavailable and this says why (its record or rows are
     * damaged, or belong to another model); requests on it fail, the rest are served.
     * Under mu. An unavailable session may have no mem and unresolved opts. */
    char problem[512];

    model_stream_opts_t opts; /* resolved */
    int window;
    session_memory_t *mem;  /* its rows in every tier; worker only (see the header comment) */
    model_stream_t *stream; /* over mem's host tier; NULL until a job needs it (worker only) */
    int32_t *tokens;        /* [n_tokens] every committed token, once loaded (worker only) */
    size_t tokens_cap;
    int tokens_loaded;
    tiers_slot_t slot;      /* its entry in d->tiers (under mu) */
    const char *tier;       /* "gpu", "host", "disk", "unavailable" (static; under mu) */

    /* Written under mu, by the worker only (once a chunk is durable, or at start-up), so
     * the worker may read them without mu; every other thread reads them under mu. */
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
    unsigned queued_ingest; /* Ingest jobs queued or running (under mu, both threads) */
} session_t;

/* A reply address: the ROUTER identity, plus an empty delimiter when the peer is a REQ
 * socket (which wraps its message in an envelope). */
typedef struct route {
    uint8_t ident[256];
    size_t ident_len;
    int delim;
    limits_client_t *client; /* who sent it (limits.h); NULL: not known (not counted) */
    double t0; /* when the request arrived (clock_now_s; 0: unknown), for its latency */
} route_t;

typedef struct job {
    route_t route;
    Recall__Request *req; /* owned: freed with recall__request__free_unpacked */
    session_t *sess;      /* a reference, or NULL (Score of text) */
    struct job *next;
} job_t;

typedef struct daemon {
    daemon_config_t cfg;
    model_t *model;           /* opened before listening; its weights load on the worker */
    model_backend_t *backend; /* where every stream computes: NULL until ready (below) */
    /* Set once (release) by the worker when the weights are in and the backend open; a
     * thread other than the worker reads backend only after seeing it (daemon_ready). */
    int ready;
    int load_failed;          /* the worker could not load the weights: recalld exits 1 */
    size_t gpu_budget_flag;   /* --gpu-memory-budget as given (0 default, SIZE_MAX none) */
    const model_config_t *mc;
    const tokenizer_t *tok;
    chat_template_t chat; /* how chat Asks are formatted (set before listening; read-only) */
    char fingerprint[256];
    int row_dim;
    memory_db_t *db;
    char *rows_root;       /* DATA/rows: the sessions' row files */
    memory_tiers_t *tiers; /* the budgets' books (under mu) */
    double start_time;

    pthread_mutex_t mu;
    session_t **sessions; /* [n_sessions] */
    size_t n_sessions, cap_sessions;
    uint64_t requests, errors, tokens_ingested, tokens_generated;
    uint64_t loads, evictions;
    /* Final replies by kind and outcome, with their latency, for GET /metrics (atomic
     * adds in the reply path; no lock). */
    http_metrics_t metrics;
    struct http_gateway *http; /* the HTTP gateway, or NULL (main thread: start and stop) */
    /* Replies the main loop discarded because the client's queue was full (it is not
     * reading) or it was gone. Atomic (__atomic builtins), no lock: replies may be sent
     * under mu. */
    uint64_t replies_dropped;
    /* Requests refused by a quota or limit (limits.h); atomic, no lock. */
    uint64_t limit_refused;
    auth_t *auth;     /* CURVE (auth.h), or NULL */
    limits_t *limits; /* the client identities (main thread; in_flight under mu) */
    /* Durable appends (under mu): how many, the seconds spent in their commits (fsync and
     * LMDB) and in the whole append (forward passes included); logged at shutdown. */
    uint64_t commits;
    double commit_seconds, append_seconds;
    /* For /metrics (metrics.c): the last durable append's tokens per second (under mu), and
     * the GPU's memory as the worker last read it, after loading the weights and after each
     * job (atomic; 0 on the CPU backend): the scrape runs on an HTTP thread, which must not
     * call into the device. */
    double ingest_last_tps;
    uint64_t gpu_mem_total, gpu_mem_free;

    /* Worker queue (under mu). cv also signals the end of a session's commit to a Drop
     * waiting for it; the two waiters never wait at once (the worker waits only when
     * idle, the Drop only while the worker commits), so one condition serves both and
     * every signal of it is a broadcast. */
    pthread_cond_t cv;
    job_t *head, *tail;
    size_t queued;
    int stopping;                          /* set by the main thread at shutdown (under mu) */
    volatile sig_atomic_t worker_stop_now; /* read by long jobs between windows/tokens */
    /* The running job's reply address (under mu; job_running 0 between jobs). When the main
     * loop has to discard a reply to it because the client stopped reading, it sets
     * job_abort, and an Ask or Score stops at its next token or window: nobody would get
     * its output. An Ingest carries on: its commit is state the client can resend into. */
    route_t job_route;
    int job_running;
    volatile sig_atomic_t job_abort;
    /* Main thread only: a discarded reply's address, checked against the job's at the end
     * of the loop's turn (replies may be sent under mu, so not at the send); the last time
     * a discard was logged (they are logged at most once a second). */
    route_t stalled;
    int stalled_pending;
    double stalled_logged;

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
/* Creates a session object with `windows` committed windows (not in the table, not
 * persisted; nothing is read). */
rc_t session_new(daemon_t *d, const char *name, const model_stream_opts_t *o, uint64_t windows,
                 session_t **out);
void session_unref(daemon_t *d, session_t *s); /* takes mu itself */
/* Under mu; *to_free gets s when that was the last reference (free it after unlocking). */
void session_unref_locked(daemon_t *d, session_t *s, session_t **to_free);
void session_free(session_t *s);
/* Packs the record for s (under mu) with the counters given; *buf malloc'ed. */
rc_t session_record_pack(daemon_t *d, const session_t *s, uint64_t n_tokens, uint64_t windows,
                         uint64_t last_seq, uint64_t ingest_chunks, uint64_t next_chunk,
                         uint8_t **buf, size_t *len);
/* Puts every session of the catalogue into the table, reading records only. A session whose
 * record is damaged or was written for another model is listed as unavailable. Fails only
 * when the catalogue itself cannot be read. */
rc_t session_open_all(daemon_t *d, char *err, size_t errlen);
/* Under mu: marks s unavailable with the reason. */
void session_mark_unavailable(session_t *s, const char *why);
/* Under mu: "gpu", "host", "disk" or "unavailable" (static strings). */
const char *session_tier(const session_t *s);

/* ---- residency.c (worker thread) ---- */
/* Brings s in for a job: its tokens, and with rows its memory rows and stream, after moving
 * least recently used sessions down a tier when the budgets need room. Pins s until
 * session_release. Fails with RC_ERR_UNAVAILABLE (and marks s) when its stored data is
 * damaged; err says why. */
rc_t session_bring_in(daemon_t *d, session_t *s, int rows, char *err, size_t errlen);
/* After the job: unpins s, records its new size, and moves others down if it grew. */
void session_release(daemon_t *d, session_t *s);
/* Moves s's rows to disk: its stream (knn index saved first), map and tokens go. Worker only,
 * between jobs. */
void session_move_to_disk(daemon_t *d, session_t *s);
/* The same for every session (shutdown). */
void session_evict_all(daemon_t *d);
/* Under mu: refreshes s's reported sizes and tier from its memory object and stream. */
void session_account_locked(daemon_t *d, session_t *s);
/* Under mu: table insert / remove. */
rc_t session_table_add(daemon_t *d, session_t *s);
void session_table_remove(daemon_t *d, session_t *s);

/* ---- request.c: the request table and the reply path ---- */
typedef enum request_thread {
    REQUEST_MAIN,   /* answered by the main loop at once (no model work) */
    REQUEST_WORKER, /* queued for the worker */
} request_thread_t;

/* What the worker brings in (residency.c) before a job on a session runs. */
typedef enum request_bring {
    BRING_NONE = 0, /* nothing: the handler reads what it needs itself (Verify) */
    BRING_TOKENS,   /* the session's tokens (Score of a session) */
    BRING_ROWS,     /* its tokens, memory rows and stream (Ingest, Ask) */
} request_bring_t;

/* One request being answered, on either thread. Replies go through request_reply,
 * request_progress and request_error only; each request gets exactly one final reply
 * (more = 0) after any number of more = 1 ones. */
typedef struct request request_t;

/* One row of the table: everything that differs between request kinds. */
typedef struct request_kind {
    int body;         /* Recall__Request__BodyCase */
    const char *name; /* the oneof field's name on the wire */
    request_thread_t thread;
    /* Decoder (main thread, before anything runs or is queued; NULL: nothing to check):
     * refuses what needs no model — a bad session name, sizes over the limits, invalid
     * UTF-8, token ids out of range — with err set; for worker kinds *session gets the
     * session to queue the job on (left NULL for none). */
    rc_t (*decode)(daemon_t *d, const Recall__Request *req, const char **session, char *err,
                   size_t errlen);
    /* Handler: runs on `thread` and sends the final reply (worker handlers run with the
     * session brought in as `bring` says). */
    void (*handle)(request_t *q);
    /* Reply builder: puts this kind's response body into the Response's oneof. */
    void (*put)(Recall__Response *resp, void *body);
    request_bring_t bring; /* worker kinds */
    int credit;            /* takes one of the session's Ingest credits (DAEMON_CREDIT) */
    int unavailable_ok;    /* runs on an unavailable session (Verify) */
} request_kind_t;

struct request {
    daemon_t *d;
    const request_kind_t *kind; /* NULL only for a frame that did not decode */
    void *sock;                 /* the ROUTER (main thread) or the worker's PAIR */
    route_t route;
    uint64_t id;
    const Recall__Request *req; /* borrowed: the job's or the main loop's */
    session_t *sess;            /* the job's reference, or NULL (main thread, Score of text) */
    int credit;                 /* holds an Ingest credit of sess until the final reply */
    int in_flight;              /* counts in route.client's in_flight until the final reply */
};

/* The row for a Request's body_case, or NULL for none / an unknown one. */
const request_kind_t *request_kind_find(int body_case);
/* The kinds' wire names, comma-separated, into buf. */
void request_kind_names(char *buf, size_t len);
/* Success with this kind's body (NULL: status only); more = 1 for a partial reply. Takes
 * no lock unless the reply is the last of an Ingest, so it may be called under mu with a
 * body pointing at session counters (but not for an Ingest). */
void request_reply(request_t *q, void *body, int more);
/* A partial reply with a Progress body. */
void request_progress(request_t *q, uint64_t done, uint64_t total);
/* The final reply of a failure: Status code (the rc_t itself) and message, no body;
 * counts in d->errors (takes mu: never call it under mu). */
void request_error(request_t *q, rc_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- server.c: the main loop and the main thread's handlers ---- */
/* Per client, at most this many replies wait in the daemon for a client that is not
 * reading (the ROUTER's ZMQ_SNDHWM, set by main.c before it binds: ZeroMQ takes it when a
 * connection is made); past it (the kernel's socket buffers full too) its replies are
 * discarded. A client that reads keeps its queue near empty. Streamed asks send a reply a
 * token, so a client that sends a batch of requests before it reads (fuzz_daemon does) can
 * be a few thousand behind without being stalled: 128 cut such a client's Health reply on
 * a loaded CI machine. At ~100 bytes a reply this is well under a MiB per client. */
#define SERVER_CLIENT_QUEUE 4096
rc_t server_run(daemon_t *d, void *router, volatile sig_atomic_t *stop_flag);
/* Main thread: a reply to route could not be queued (errno_val: EAGAIN, the client's queue
 * is full; EHOSTUNREACH, it is gone). Counts it, logs (rate-limited) and remembers the
 * route so that a worker job answering it is aborted. Takes no lock. */
void server_reply_dropped(daemon_t *d, const route_t *route, int errno_val);
void serve_create(request_t *q);
void serve_info(request_t *q);
void serve_list(request_t *q);
void serve_drop(request_t *q);
void serve_stats(request_t *q);
void serve_health(request_t *q);
void serve_tokenize(request_t *q);

/* ---- metrics.c ---- */
/* The daemon's own /metrics families (the gateway's extra_metrics; arg is the daemon_t):
 * readiness, the queue, ingest and commit time, the last ingest's speed, the worker's prefill
 * and append histograms, and the GPU's memory. Any thread; takes mu briefly. */
void daemon_metrics_write(http_buf_t *b, void *arg);

/* ---- work.c (worker thread) ---- */
void *worker_main(void *arg);
void work_ingest(request_t *q);
void work_ask(request_t *q);
void work_score(request_t *q);
void work_verify(request_t *q);

/* Non-zero once the worker has loaded the weights and opened the backend. */
static inline int daemon_ready(const daemon_t *d)
{
    return __atomic_load_n(&d->ready, __ATOMIC_ACQUIRE);
}

/* The backend's one-line description, or "loading" before it is open. Any thread. */
static inline const char *daemon_device_describe(const daemon_t *d)
{
    return daemon_ready(d) ? model_backend_describe(d->backend) : "loading";
}

/* Non-zero when the backend keeps session memory on a GPU (a mirror of the host store);
 * 0 until the backend is open. */
static inline int daemon_memory_on_device(const daemon_t *d)
{
    return daemon_ready(d) && strncmp(model_backend_describe(d->backend), "cuda", 4) == 0;
}

/* The worker's first step (main.c): loads the weights, opens the backend on the configured
 * device and sets the daemon's GPU budget, then publishes ready. On failure it logs why, sets
 * load_failed and asks the main loop to stop (SIGTERM to the process); jobs are then refused. */
rc_t daemon_load_weights(daemon_t *d);

/* The device bytes a stream with these options may hold: the smaller of the session's own
 * budget and the daemon's (0 in either means no limit from that side). */
static inline size_t daemon_stream_gpu_budget(const daemon_t *d, const model_stream_opts_t *o)
{
    size_t cap = o->gpu_memory_budget, all = d->cfg.gpu_budget;
    if (!cap) return all;
    if (!all) return cap;
    return cap < all ? cap : all;
}

#endif
