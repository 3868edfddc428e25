/* fuzz_daemon.c — black-box fuzzer: mutated request frames at a live recalld.
 *
 * Starts recalld once (tiny model, small limits), then sends batches of frames made by
 * mutating the seed corpus (bit flips, interesting bytes, insertions, deletions,
 * truncations, splices of two seeds). After each batch it asks for Health and requires an
 * answer within a minute, every reply in between must decode as a Response, and at the end
 * the daemon must stop cleanly on SIGTERM (exit 0: under ASan that includes no leak and no
 * error report). On a failure the batch is written to --crashes as found-*.bin, ready to be
 * copied into tests/fuzz/corpus, and the daemon's log is printed.
 *
 *   fuzz_daemon --model DIR --corpus DIR [--iterations N] [--seconds S] [--seed N]
 *               [--batch N] [--crashes DIR]
 * Exit status: 0 when the daemon survived everything, 1 on a failure, 2 on bad usage. The
 * run is reproducible from --seed (the daemon's own timing aside). */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "tests/rpc_test_util.h"

typedef struct buf {
    uint8_t *p;
    size_t n;
} buf_t;

static buf_t *g_seeds;
static size_t g_nseeds;
static uint64_t g_rng;

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static size_t below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static int load_seeds(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (n < 0 || n > 8192) { /* the big over-the-limit frames add nothing to mutate */
            fclose(f);
            continue;
        }
        buf_t b = {malloc((size_t)n + 1), (size_t)n};
        if (n && fread(b.p, 1, (size_t)n, f) != (size_t)n) b.n = 0;
        fclose(f);
        g_seeds = realloc(g_seeds, (g_nseeds + 1) * sizeof *g_seeds);
        g_seeds[g_nseeds++] = b;
    }
    closedir(d);
    return g_nseeds ? 0 : -1;
}

/* One mutated frame (malloc'ed, at most 8192 bytes). */
static buf_t mutate(void)
{
    const buf_t *s = &g_seeds[below(g_nseeds)];
    size_t cap = 8192;
    buf_t o = {malloc(cap), s->n};
    memcpy(o.p, s->p, s->n);
    static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x0a, 0x10,
                                          0x12, 0x1a, 0x22, 0x5a, 0x62, 0x6a, 0xc0, 0xed};
    int rounds = 1 + (int)below(4);
    for (int r = 0; r < rounds; r++) {
        switch (below(7)) {
        case 0: /* flip a bit */
            if (o.n) o.p[below(o.n)] ^= (uint8_t)(1u << below(8));
            break;
        case 1: /* an interesting byte */
            if (o.n) o.p[below(o.n)] = interesting[below(sizeof interesting)];
            break;
        case 2: { /* insert random bytes */
            size_t k = 1 + below(8), at = below(o.n + 1);
            if (o.n + k > cap) break;
            memmove(o.p + at + k, o.p + at, o.n - at);
            for (size_t i = 0; i < k; i++)
                o.p[at + i] = (uint8_t)rnd();
            o.n += k;
            break;
        }
        case 3: { /* delete a range */
            if (!o.n) break;
            size_t at = below(o.n), k = 1 + below(o.n - at);
            memmove(o.p + at, o.p + at + k, o.n - at - k);
            o.n -= k;
            break;
        }
        case 4: /* truncate */
            o.n = below(o.n + 1);
            break;
        case 5: { /* splice: our prefix, another seed's suffix */
            const buf_t *t = &g_seeds[below(g_nseeds)];
            size_t at = below(o.n + 1), from = below(t->n + 1);
            if (at + (t->n - from) > cap) break;
            memcpy(o.p + at, t->p + from, t->n - from);
            o.n = at + (t->n - from);
            break;
        }
        default: { /* duplicate a range (repeated fields, oneof members twice) */
            if (!o.n) break;
            size_t at = below(o.n), k = 1 + below(o.n - at);
            if (o.n + k > cap) break;
            memmove(o.p + at + k, o.p + at, o.n - at);
            o.n += k;
            break;
        }
        }
    }
    return o;
}

/* Receives one reply; 1 got one (decodable into *ok), 0 timeout. */
static int recv_reply(void *sock, int ms, int *decodes, uint64_t *id, int *more)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) <= 0) return 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return 0;
    }
    Recall__Response *r =
        recall__response__unpack(NULL, zmq_msg_size(&m), (const uint8_t *)zmq_msg_data(&m));
    zmq_msg_close(&m);
    *decodes = r != NULL && r->status != NULL;
    *id = r ? r->id : 0;
    *more = r ? r->more : 0;
    if (r) recall__response__free_unpacked(r, NULL);
    return 1;
}

static void save_batch(const char *dir, buf_t *batch, size_t n, unsigned long long seed,
                       long round)
{
    mkdir(dir, 0755);
    for (size_t i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/found-daemon-s%llu-r%ld-%zu.bin", dir, seed, round, i);
        FILE *f = fopen(path, "wb");
        if (f) {
            if (batch[i].n) fwrite(batch[i].p, 1, batch[i].n, f);
            fclose(f);
        }
    }
    fprintf(stderr, "fuzz_daemon: the batch of %zu frames is in %s\n", n, dir);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *corpus = NULL, *crashes = "fuzz-daemon-crashes";
    long iterations = 2000, seconds = 0, batch_n = 50;
    unsigned long long seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--corpus"))
            corpus = argv[i + 1];
        else if (!strcmp(argv[i], "--iterations"))
            iterations = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds"))
            seconds = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--batch"))
            batch_n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--crashes"))
            crashes = argv[i + 1];
        else {
            fprintf(stderr, "fuzz_daemon: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!model || !corpus || batch_n < 1 || batch_n > 1000) {
        fprintf(stderr, "usage: fuzz_daemon --model DIR --corpus DIR [--iterations N] "
                        "[--seconds S] [--seed N] [--batch N (1..1000)] [--crashes DIR]\n");
        return 2;
    }
    struct stat st;
    if (stat(model, &st) != 0) {
        printf("skipped: no tiny model at %s\n", model);
        return 77;
    }
    if (load_seeds(corpus)) {
        fprintf(stderr, "fuzz_daemon: no seed files in %s\n", corpus);
        return 2;
    }
    g_rng = seed * 0x9e3779b97f4a7c15ull + 1;

    char tmp[512], data[700], ep[700], log[700];
    if (rpc_tempdir(tmp, sizeof tmp)) return 1;
    snprintf(data, sizeof data, "%s/data", tmp);
    snprintf(ep, sizeof ep, "ipc://%s/recalld.sock", tmp);
    snprintf(log, sizeof log, "%s/recalld.log", tmp);
    const char *extra[] = {"--max-chunk-bytes", "4096", "--max-frame-bytes", "65536",
                           "--max-sessions", "16", "--log-level", "warn", NULL};
    rpc_daemon_t dm;
    if (rpc_daemon_start(&dm, model, data, ep, log, extra)) {
        fprintf(stderr, "fuzz_daemon: recalld did not start\n");
        return 1;
    }
    rpc_client_t c;
    rpc_client_open(&c, ep);
    /* Sessions the seeds name, with some text in "s". */
    Recall__Response *r = rpc_create(&c, "s", 0, 1);
    if (r) recall__response__free_unpacked(r, NULL);
    r = rpc_ingest_text(&c, "s", 1, "The recipe asked for 253 grams of flour, and then some more.");
    if (r) recall__response__free_unpacked(r, NULL);
    {
        Recall__Request q = RECALL__REQUEST__INIT;
        Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
        Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
        o.memory = (char *)"knn";
        cs.session = (char *)"k";
        cs.options = &o;
        cs.if_not_exists = 1;
        q.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
        q.create_session = &cs;
        r = rpc_call(&c, &q, 30000);
        if (r) recall__response__free_unpacked(r, NULL);
    }

    buf_t *batch = calloc((size_t)batch_n, sizeof *batch);
    time_t t0 = time(NULL);
    long sent = 0, replies = 0, round = 0;
    int failed = 0;
    while (!failed && (seconds ? time(NULL) - t0 < seconds : sent < iterations)) {
        for (long i = 0; i < batch_n; i++) {
            batch[i] = mutate();
            const void *f[] = {batch[i].p};
            size_t l[] = {batch[i].n};
            rpc_send_frames(&c, f, l, 1);
            sent++;
        }
        /* Health after the batch: replies before it must decode; it must come. */
        Recall__Request hq = RECALL__REQUEST__INIT;
        Recall__HealthRequest h = RECALL__HEALTH_REQUEST__INIT;
        hq.id = 0xfeedface00000000ull + (uint64_t)round;
        hq.body_case = RECALL__REQUEST__BODY_HEALTH;
        hq.health = &h;
        rpc_send(&c, &hq);
        int healthy = 0;
        time_t deadline = time(NULL) + 60;
        while (!healthy && time(NULL) < deadline) {
            int ok = 0, more = 0;
            uint64_t id = 0;
            if (!recv_reply(c.sock, 1000, &ok, &id, &more)) {
                if (waitpid(dm.pid, NULL, WNOHANG) == dm.pid) {
                    dm.pid = -1;
                    break;
                }
                continue;
            }
            replies++;
            if (!ok) {
                fprintf(stderr, "fuzz_daemon: a reply did not decode as a Response\n");
                failed = 1;
                break;
            }
            if (id == hq.id) healthy = 1;
        }
        if (!healthy && !failed) {
            fprintf(stderr, "fuzz_daemon: no Health answer after round %ld (%s)\n", round,
                    dm.pid < 0 ? "recalld is gone" : "timeout");
            failed = 1;
        }
        if (failed) save_batch(crashes, batch, (size_t)batch_n, seed, round);
        for (long i = 0; i < batch_n; i++)
            free(batch[i].p);
        round++;
    }
    /* Let the worker finish what is queued, then require a clean exit. */
    rpc_client_close(&c);
    int code = dm.pid > 0 ? rpc_daemon_stop(&dm, SIGTERM) : -1;
    if (!failed && code != 0) {
        fprintf(stderr, "fuzz_daemon: recalld exited with %d on SIGTERM, want 0\n", code);
        failed = 1;
    }
    printf("fuzz_daemon: %ld frames in %ld rounds, %ld replies, %lld s: %s\n", sent, round,
           replies, (long long)(time(NULL) - t0), failed ? "FAILED" : "recalld survived");
    if (failed) rpc_print_file(log);
    rpc_rmtree(tmp);
    for (size_t i = 0; i < g_nseeds; i++)
        free(g_seeds[i].p);
    free(g_seeds);
    free(batch);
    return failed ? 1 : 0;
}
