/* load_driver.c — drives recalld with many concurrent clients and measures how quickly it
 * answers; the engine of tests/e2e_load.py and bench/load.py.
 *
 *   load_driver latency ENDPOINT TEXT --ingesters N --requests R
 *       N threads ingest TEXT's chunks at full speed (each into its own session, the next
 *       chunk sent as soon as the last is acknowledged) while this thread times R health
 *       then R stats requests, one at a time.
 *   load_driver mixed ENDPOINT TEXT --clients N --seconds S
 *       N threads, each with its own session, pick at random among ingest, ask, info and
 *       drop (then create again) for S seconds; afterwards every session's token count is
 *       checked against what its acknowledgements said.
 *   load_driver droprace ENDPOINT TEXT --requests R
 *       R rounds of: 8 Ingest chunks pipelined into a fresh session, dropped by another
 *       client while they commit; every chunk acknowledged or refused, the session gone.
 *   load_driver stall ENDPOINT TEXT --seconds S
 *       one raw DEALER sends big Tokenize requests and long Asks and never reads a reply,
 *       while a normal client times health requests and ingests.
 *
 * TEXT is a file of ASCII text cut into chunks of --chunk-bytes (default 2048). Every mode
 * prints one JSON object on stdout (latencies in ms, counts) and exits 0 when every request
 * it made was answered as expected, 1 otherwise (the reason on stderr); the caller applies
 * the latency bounds. Sessions are named "load-<i>" (stall: "stall-<i>"). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "clients/client.h"

static const char *endpoint;
static char *text;
static size_t text_len, chunk_bytes = 2048;
static volatile int stop_all;
static int failures;
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void fail(const char *fmt, const char *a, const char *b)
{
    pthread_mutex_lock(&fail_mu);
    failures++;
    if (failures <= 20) {
        fprintf(stderr, "load_driver: ");
        fprintf(stderr, fmt, a, b);
        fputc('\n', stderr);
    }
    pthread_mutex_unlock(&fail_mu);
}

/* ---- latency samples ----------------------------------------------------------------- */

typedef struct samples {
    double *v;
    size_t n, cap;
    pthread_mutex_t mu;
} samples_t;

static void samples_add(samples_t *s, double ms)
{
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 1024;
        double *nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) abort();
        s->v = nv;
        s->cap = nc;
    }
    s->v[s->n++] = ms;
    pthread_mutex_unlock(&s->mu);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (nearest rank) of the samples; sorts them. */
static double quantile(samples_t *s, double q)
{
    if (!s->n) return 0;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    size_t k = (size_t)(q * (double)s->n + 0.999999);
    if (k < 1) k = 1;
    if (k > s->n) k = s->n;
    return s->v[k - 1];
}

/* Prints the set as JSON and frees its samples (each set is printed once, at the end). */
static void print_samples(const char *name, samples_t *s, int last)
{
    double p50 = quantile(s, 0.50), p99 = quantile(s, 0.99);
    printf("\"%s\": {\"n\": %zu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}%s", name,
           s->n, p50, p99, s->n ? s->v[s->n - 1] : 0.0, last ? "" : ", ");
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* ---- one client's calls -------------------------------------------------------------- */

static recall_client *connect_or_die(void)
{
    recall_client *c = NULL;
    const char *err = NULL;
    if (recall_client_create(endpoint, &c, &err)) {
        fprintf(stderr, "load_driver: cannot connect to %s: %s\n", endpoint, err ? err : "");
        exit(1);
    }
    recall_client_set_timeout(c, 120 * 1000);
    return c;
}

/* A request with only a body case set (Health, Stats); the answer is freed. */
static rc_t call_simple(recall_client *c, Recall__Request__BodyCase body, Recall__Response **keep)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__HealthRequest h = RECALL__HEALTH_REQUEST__INIT;
    Recall__StatsRequest st = RECALL__STATS_REQUEST__INIT;
    req.body_case = body;
    if (body == RECALL__REQUEST__BODY_HEALTH)
        req.health = &h;
    else
        req.stats = &st;
    Recall__Response *r = NULL;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (keep && !rc)
        *keep = r;
    else if (r)
        recall__response__free_unpacked(r, NULL);
    return rc;
}

/* Ingests one chunk with sequence number seq; *total gets the session's tokens after it. */
static rc_t ingest_chunk(recall_client *c, const char *session, uint64_t seq, const char *chunk,
                         uint64_t *total)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
    in.session = (char *)session;
    in.seq = seq;
    in.text = (char *)chunk;
    req.body_case = RECALL__REQUEST__BODY_INGEST;
    req.ingest = &in;
    Recall__Response *r = NULL;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (!rc) {
        if (r->body_case != RECALL__RESPONSE__BODY_INGEST || r->ingest->seq != seq ||
            r->ingest->duplicate)
            rc = RC_ERR_FORMAT;
        else
            *total = r->ingest->tokens;
        recall__response__free_unpacked(r, NULL);
    }
    return rc;
}

static rc_t create(recall_client *c, const char *session)
{
    Recall__Response *r = NULL;
    rc_t rc = recall_client_create_session(c, session, NULL, 1, &r);
    if (r) recall__response__free_unpacked(r, NULL);
    return rc;
}

static rc_t session_tokens(recall_client *c, const char *session, uint64_t *tokens)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__SessionInfoRequest si = RECALL__SESSION_INFO_REQUEST__INIT;
    si.session = (char *)session;
    req.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
    req.session_info = &si;
    Recall__Response *r = NULL;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (!rc) {
        *tokens = r->session_info && r->session_info->info ? r->session_info->info->tokens : 0;
        recall__response__free_unpacked(r, NULL);
    }
    return rc;
}

static rc_t ask(recall_client *c, const char *session, uint32_t max_tokens)
{
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__AskRequest a = RECALL__ASK_REQUEST__INIT;
    a.session = (char *)session;
    a.question = (char *)"What happened next?";
    a.max_tokens = max_tokens;
    req.body_case = RECALL__REQUEST__BODY_ASK;
    req.ask = &a;
    Recall__Response *r = NULL;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (r) recall__response__free_unpacked(r, NULL);
    return rc;
}

/* The chunk starting at *pos (wrapping around the text), NUL-terminated into buf. */
static const char *next_chunk(size_t *pos, char *buf)
{
    if (*pos >= text_len) *pos = 0;
    size_t n = text_len - *pos < chunk_bytes ? text_len - *pos : chunk_bytes;
    memcpy(buf, text + *pos, n);
    buf[n] = 0;
    *pos += n;
    return buf;
}

/* ---- latency mode -------------------------------------------------------------------- */

typedef struct worker_arg {
    int id;
    uint64_t chunks, ops[4], errors, checked_ok;
    samples_t *lat;   /* ingest chunk latencies (latency) or every op's (mixed) */
    samples_t *by_op; /* mixed: [4] each op's latencies */
    unsigned seed;
    double seconds;
} worker_arg_t;

static void *ingester(void *p)
{
    worker_arg_t *w = p;
    recall_client *c = connect_or_die();
    char name[64], *buf = malloc(chunk_bytes + 1);
    snprintf(name, sizeof name, "load-%d", w->id);
    if (create(c, name)) fail("create %s: %s", name, recall_client_error(c));
    size_t pos = (size_t)w->id * 997 % (text_len ? text_len : 1);
    uint64_t total;
    for (uint64_t seq = 1; !stop_all; seq++) {
        double t0 = now_ms();
        rc_t rc = ingest_chunk(c, name, seq, next_chunk(&pos, buf), &total);
        if (rc) {
            fail("ingest into %s: %s", name, recall_client_error(c));
            break;
        }
        samples_add(w->lat, now_ms() - t0);
        w->chunks++;
    }
    free(buf);
    recall_client_destroy(&c);
    return NULL;
}

static int run_latency(int n_ingesters, int n_requests)
{
    samples_t health = {.mu = PTHREAD_MUTEX_INITIALIZER}, stats = health, ing = health;
    pthread_t th[256];
    worker_arg_t args[256] = {{0}};
    recall_client *c = connect_or_die();
    for (int i = 0; i < n_ingesters; i++) {
        args[i].id = i;
        args[i].lat = &ing;
        pthread_create(&th[i], NULL, ingester, &args[i]);
    }
    /* Let the ingesters get going (the first acknowledgement): the point is the daemon
     * under load. */
    while (ing.n < 1 && !failures) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    double t0 = now_ms();
    for (int kind = 0; kind < 2; kind++)
        for (int i = 0; i < n_requests && !failures; i++) {
            double s = now_ms();
            rc_t rc = call_simple(
                c, kind ? RECALL__REQUEST__BODY_STATS : RECALL__REQUEST__BODY_HEALTH, NULL);
            if (rc) fail("%s: %s", kind ? "stats" : "health", recall_client_error(c));
            samples_add(kind ? &stats : &health, now_ms() - s);
            /* A monitor's pace, not a flood: a few ms apart. */
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    double secs = (now_ms() - t0) / 1e3;
    stop_all = 1;
    uint64_t chunks = 0;
    for (int i = 0; i < n_ingesters; i++) {
        pthread_join(th[i], NULL);
        chunks += args[i].chunks;
    }
    recall_client_destroy(&c);
    printf("{\"mode\": \"latency\", \"ingesters\": %d, \"seconds\": %.2f, \"chunks\": %llu, ",
           n_ingesters, secs, (unsigned long long)chunks);
    print_samples("health", &health, 0);
    print_samples("stats", &stats, 0);
    print_samples("ingest", &ing, 1);
    printf("}\n");
    return failures ? 1 : 0;
}

/* ---- mixed mode ---------------------------------------------------------------------- */

static const char *const op_names[4] = {"ingest", "ask", "info", "drop"};

static void *mixed_client(void *p)
{
    worker_arg_t *w = p;
    recall_client *c = connect_or_die();
    char name[64], *buf = malloc(chunk_bytes + 1);
    snprintf(name, sizeof name, "load-%d", w->id);
    size_t pos = (size_t)w->id * 1009 % (text_len ? text_len : 1);
    uint64_t seq = 0, acked = 0, tokens;
    int exists = 0;
    double end = now_ms() + w->seconds * 1e3;
    while (now_ms() < end) {
        if (!exists) {
            if (create(c, name)) {
                fail("create %s: %s", name, recall_client_error(c));
                break;
            }
            exists = 1;
            seq = acked = 0;
        }
        /* Mostly ingest; asks once there is something to ask about; drops rare. */
        int r = (int)(rand_r(&w->seed) % 100);
        int op = r < 55 ? 0 : r < 75 ? 1 : r < 97 ? 2 : 3;
        if (op == 1 && !acked) op = 0;
        double t0 = now_ms();
        rc_t rc = RC_OK;
        switch (op) {
        case 0:
            rc = ingest_chunk(c, name, seq + 1, next_chunk(&pos, buf), &tokens);
            if (!rc) {
                seq++;
                if (tokens <= acked)
                    fail("%s: an ingest acknowledgement went backwards%s", name, "");
                acked = tokens;
            }
            break;
        case 1:
            rc = ask(c, name, 4);
            break;
        case 2:
            rc = session_tokens(c, name, &tokens);
            if (!rc && tokens != acked)
                fail("%s: info disagrees with the acknowledgements%s", name, "");
            break;
        case 3:
            rc = recall_client_drop(c, name);
            if (!rc) exists = 0;
            break;
        }
        /* BUSY (a full queue) is an honest answer under load: counted, retried later. */
        if (rc == RC_ERR_BUSY) {
            w->errors++;
            continue;
        }
        if (rc) {
            fail("%s failed: %s", op_names[op], recall_client_error(c));
            break;
        }
        double ms = now_ms() - t0;
        samples_add(w->lat, ms);
        samples_add(&w->by_op[op], ms);
        w->ops[op]++;
    }
    /* What the acknowledgements promised must be there. */
    if (exists && !failures) {
        if (session_tokens(c, name, &tokens))
            fail("final info %s: %s", name, recall_client_error(c));
        else if (tokens != acked)
            fail("%s: final token count differs from the acknowledgements%s", name, "");
        else
            w->checked_ok = 1;
        w->chunks = acked; /* reused: the acknowledged token total */
    }
    free(buf);
    recall_client_destroy(&c);
    return NULL;
}

static int run_mixed(int n_clients, double seconds)
{
    samples_t lat = {.mu = PTHREAD_MUTEX_INITIALIZER}, by_op[4] = {lat, lat, lat, lat};
    pthread_t th[256];
    worker_arg_t args[256] = {{0}};
    double t0 = now_ms();
    for (int i = 0; i < n_clients; i++) {
        args[i].id = i;
        args[i].lat = &lat;
        args[i].by_op = by_op;
        args[i].seed = 12345u + (unsigned)i;
        args[i].seconds = seconds;
        pthread_create(&th[i], NULL, mixed_client, &args[i]);
    }
    uint64_t ops[4] = {0}, busy = 0, checked = 0;
    for (int i = 0; i < n_clients; i++) {
        pthread_join(th[i], NULL);
        for (int k = 0; k < 4; k++)
            ops[k] += args[i].ops[k];
        busy += args[i].errors;
        checked += args[i].checked_ok;
    }
    double secs = (now_ms() - t0) / 1e3;
    uint64_t total = ops[0] + ops[1] + ops[2] + ops[3];
    printf("{\"mode\": \"mixed\", \"clients\": %d, \"seconds\": %.2f, \"requests\": %llu, "
           "\"requests_per_s\": %.1f, \"busy\": %llu, \"sessions_checked\": %llu, ",
           n_clients, secs, (unsigned long long)total, (double)total / secs,
           (unsigned long long)busy, (unsigned long long)checked);
    for (int k = 0; k < 4; k++)
        printf("\"n_%s\": %llu, ", op_names[k], (unsigned long long)ops[k]);
    printf("\"sessions\": {");
    int first = 1;
    for (int i = 0; i < n_clients; i++)
        if (args[i].checked_ok) {
            printf("%s\"load-%d\": %llu", first ? "" : ", ", i, (unsigned long long)args[i].chunks);
            first = 0;
        }
    printf("}, ");
    for (int k = 0; k < 4; k++)
        print_samples(op_names[k], &by_op[k], 0);
    print_samples("all", &lat, 1);
    printf("}\n");
    return failures ? 1 : 0;
}

/* ---- stall mode ---------------------------------------------------------------------- */

static uint64_t replies_dropped(recall_client *c)
{
    Recall__Response *r = NULL;
    uint64_t n = 0;
    if (call_simple(c, RECALL__REQUEST__BODY_STATS, &r) == RC_OK) {
        n = r->stats ? r->stats->replies_dropped : 0;
        recall__response__free_unpacked(r, NULL);
    }
    return n;
}

static int run_stall(double seconds)
{
    samples_t health = {.mu = PTHREAD_MUTEX_INITIALIZER}, ing = health;
    recall_client *c = connect_or_die();
    uint64_t total = 0;
    char *buf = malloc(chunk_bytes + 1);
    size_t pos = 0;
    /* Something to ask about. */
    if (create(c, "stall-0")) fail("create stall-0: %s%s", recall_client_error(c), "");
    for (uint64_t seq = 1; seq <= 4; seq++)
        if (ingest_chunk(c, "stall-0", seq, next_chunk(&pos, buf), &total))
            fail("ingest into stall-0: %s%s", recall_client_error(c), "");
    uint64_t dropped0 = replies_dropped(c);

    /* The stalled client: a small receive buffer and queue, so its replies back up into
     * the daemon's send queue for it; it never reads. */
    void *ctx = zmq_ctx_new(), *bad = zmq_socket(ctx, ZMQ_DEALER);
    int one = 1, small = 4096, linger = 0;
    zmq_setsockopt(bad, ZMQ_RCVHWM, &one, sizeof one);
    zmq_setsockopt(bad, ZMQ_RCVBUF, &small, sizeof small);
    zmq_setsockopt(bad, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(bad, endpoint))
        fail("connect the stalled client: %s%s", zmq_strerror(errno), "");
    /* Long Asks whose tokens have nowhere to go, then a flood of small requests (Health,
     * answered at once by the main loop) whose replies fill the kernel's buffers and the
     * daemon's queue for this client. */
    int n_tok = 0, n_ask = 0, sndtimeo = 2000;
    zmq_setsockopt(bad, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    for (int i = 0; i < 4 + 60000 && !failures; i++) {
        Recall__Request req = RECALL__REQUEST__INIT;
        Recall__HealthRequest h = RECALL__HEALTH_REQUEST__INIT;
        Recall__AskRequest a = RECALL__ASK_REQUEST__INIT;
        req.id = (uint64_t)i + 1;
        if (i >= 4) {
            req.body_case = RECALL__REQUEST__BODY_HEALTH;
            req.health = &h;
            n_tok++;
        } else {
            a.session = (char *)"stall-0";
            a.question = (char *)"Tell me everything.";
            a.max_tokens = 4096;
            a.ignore_eos = 1;
            req.body_case = RECALL__REQUEST__BODY_ASK;
            req.ask = &a;
            n_ask++;
        }
        uint8_t b[256];
        size_t n = recall__request__pack(&req, b);
        if (zmq_send(bad, b, n, 0) < 0)
            fail("the stalled client could not send: %s%s", zmq_strerror(errno), "");
    }

    /* Meanwhile the well-behaved clients keep working: one ingests at full speed, this
     * thread asks for health every few ms. */
    pthread_t th;
    worker_arg_t warg = {.id = 0, .lat = &ing};
    pthread_create(&th, NULL, ingester, &warg);
    double end = now_ms() + seconds * 1e3;
    while (now_ms() < end && !failures) {
        double t0 = now_ms();
        if (call_simple(c, RECALL__REQUEST__BODY_HEALTH, NULL))
            fail("health beside the stalled client: %s%s", recall_client_error(c), "");
        samples_add(&health, now_ms() - t0);
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    stop_all = 1;
    pthread_join(th, NULL);
    Recall__Response *r = NULL;
    uint64_t generated = 0;
    if (call_simple(c, RECALL__REQUEST__BODY_STATS, &r) == RC_OK) {
        generated = r->stats ? r->stats->tokens_generated : 0;
        recall__response__free_unpacked(r, NULL);
    }
    uint64_t dropped = replies_dropped(c) - dropped0;
    printf("{\"mode\": \"stall\", \"seconds\": %.1f, \"stalled_health\": %d, "
           "\"stalled_asks\": %d, \"asked_tokens\": %d, \"tokens_generated\": %llu, "
           "\"replies_dropped\": %llu, ",
           seconds, n_tok, n_ask, n_ask * 4096, (unsigned long long)generated,
           (unsigned long long)dropped);
    print_samples("health", &health, 0);
    print_samples("ingest", &ing, 1);
    printf("}\n");
    zmq_close(bad);
    zmq_ctx_term(ctx);
    free(buf);
    recall_client_destroy(&c);
    return failures ? 1 : 0;
}

/* ---- drop race mode ------------------------------------------------------------------ */

/* Drops racing commits: for each round one client pipelines 8 Ingest chunks into a fresh
 * session and another drops it while they are being committed. Every chunk must be
 * acknowledged or refused (dropped), the drop must succeed, and the session must be gone
 * for good: info says NOT_FOUND now, and the caller checks after a restart that no
 * commit brought it back. */
static int run_droprace(int rounds)
{
    recall_client *a = connect_or_die(), *b = connect_or_die();
    char *buf = malloc(chunk_bytes + 1);
    size_t pos = 0;
    uint64_t acked = 0, refused = 0;
    for (int r = 0; r < rounds && !failures; r++) {
        char name[64];
        snprintf(name, sizeof name, "race-%d", r);
        if (create(a, name)) {
            fail("create %s: %s", name, recall_client_error(a));
            break;
        }
        uint64_t ids[8];
        for (int k = 0; k < 8; k++) {
            Recall__Request req = RECALL__REQUEST__INIT;
            Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
            in.session = name;
            in.seq = (uint64_t)k + 1;
            in.text = (char *)next_chunk(&pos, buf);
            req.body_case = RECALL__REQUEST__BODY_INGEST;
            req.ingest = &in;
            if (recall_client_send(a, &req, &ids[k]))
                fail("send to %s: %s", name, recall_client_error(a));
        }
        /* Let the first chunks reach the worker, at a different point each round. */
        struct timespec ts = {0, (long)(r % 20) * 4 * 1000 * 1000};
        nanosleep(&ts, NULL);
        if (recall_client_drop(b, name)) fail("drop %s: %s", name, recall_client_error(b));
        for (int done = 0; done < 8 && !failures;) {
            Recall__Response *resp = NULL;
            if (recall_client_recv(a, ids, 8, &resp)) {
                fail("the answers to %s's chunks: %s", name, recall_client_error(a));
                break;
            }
            if (!resp->more) {
                done++;
                if (resp->status && resp->status->code == RC_ERR_NOT_FOUND)
                    refused++;
                else if (resp->status && resp->status->code)
                    fail("%s: %s", name, resp->status->message);
                else
                    acked++;
            }
            recall__response__free_unpacked(resp, NULL);
        }
        uint64_t t;
        if (session_tokens(b, name, &t) != RC_ERR_NOT_FOUND)
            fail("%s is still there after its drop%s", name, "");
    }
    printf("{\"mode\": \"droprace\", \"rounds\": %d, \"acked\": %llu, \"refused\": %llu}\n", rounds,
           (unsigned long long)acked, (unsigned long long)refused);
    free(buf);
    recall_client_destroy(&a);
    recall_client_destroy(&b);
    return failures ? 1 : 0;
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr,
                "usage: load_driver latency|mixed|stall|droprace ENDPOINT TEXTFILE [--ingesters N] "
                "[--requests R] [--clients N] [--seconds S] [--chunk-bytes B]\n");
        return 2;
    }
    const char *mode = argv[1];
    endpoint = argv[2];
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        fprintf(stderr, "load_driver: cannot open %s: %s\n", argv[3], strerror(errno));
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc((size_t)len + 1);
    text_len = len > 0 ? fread(text, 1, (size_t)len, f) : 0;
    text[text_len] = 0;
    fclose(f);
    if (!text_len) {
        fprintf(stderr, "load_driver: %s is empty\n", argv[3]);
        return 2;
    }
    int ingesters = 8, requests = 200, clients = 64;
    double seconds = 20;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ingesters"))
            ingesters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--requests"))
            requests = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--clients"))
            clients = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--chunk-bytes"))
            chunk_bytes = (size_t)atol(argv[i + 1]);
        else {
            fprintf(stderr, "load_driver: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (ingesters < 1 || ingesters > 256 || clients < 1 || clients > 256 || requests < 1 ||
        chunk_bytes < 16) {
        fprintf(stderr, "load_driver: --ingesters/--clients 1..256, --requests >= 1, "
                        "--chunk-bytes >= 16\n");
        return 2;
    }
    if (!strcmp(mode, "latency")) return run_latency(ingesters, requests);
    if (!strcmp(mode, "mixed")) return run_mixed(clients, seconds);
    if (!strcmp(mode, "stall")) return run_stall(seconds);
    if (!strcmp(mode, "droprace")) return run_droprace(requests);
    fprintf(stderr, "load_driver: unknown mode %s (latency, mixed, stall or droprace)\n", mode);
    return 2;
}
