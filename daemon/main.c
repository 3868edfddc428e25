/* main.c — recalld: flags, start-up checks, the signal path and shutdown.
 *
 * Start-up checks everything that can fail before writing anything: the flags, the data
 * directory's permissions, the checkpoint, the listen address. Only then is the data
 * directory created and the LMDB environment opened. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/size.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/http.h"
#include "daemon/notify.h"

static volatile sig_atomic_t g_stop; /* set by SIGTERM / SIGINT */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* clang-format off */
static void usage(FILE *f)
{
    fprintf(f,
"usage: recalld --model DIR [options]\n"
"\n"
"recalld keeps named sessions of up to millions of tokens for a LongLLaMA (Focused\n"
"Transformer) or LLaMA checkpoint and answers questions about them over ZeroMQ.\n"
"Sessions are stored in an LMDB environment in the data directory and survive restarts:\n"
"an Ingest chunk is acknowledged only once it is on disk.\n"
"\n"
"options:\n"
"  --model DIR            checkpoint directory: config.json, model.safetensors (or shards),\n"
"                         tokenizer.model (default: $RECALL_MODEL, else the embedded model,\n"
"                         models/default: a small LongLLaMA trained by this project)\n"
"  --data DIR             data directory, created if missing (default ./recall-data); one\n"
"                         recalld per data directory\n"
"  --listen ENDPOINT      ZeroMQ endpoint to bind (default tcp://127.0.0.1:5555; also\n"
"                         ipc:///path/to/socket). Binding beyond loopback exposes the daemon.\n"
"  --max-chunk-bytes N    largest Ingest chunk, question or Score text in bytes (text bytes,\n"
"                         or 4 per token id); default 1M. Suffixes K, M, G are accepted.\n"
"  --max-frame-bytes N    largest request frame; default max(8M, 4 x max-chunk-bytes + 64K).\n"
"                         Larger frames get an error reply; frames over twice this size make\n"
"                         ZeroMQ drop the connection without reading them.\n"
"  --max-sessions N       most sessions at a time (default 1024)\n"
"  --device DEV           cpu, cuda or cuda:N (default: cuda when this build has it and a\n"
"                         GPU is present, else cpu)\n"
"  --threads N            compute threads for the CPU backend (default: all cores)\n"
"\n"
"session defaults (for sessions created without these options; stored sessions keep theirs):\n"
"  --window N  --positional rope|self-extend|dca|clex|gali  --group G  --neighbor W\n"
"  --chunk-size S  --local-window w  --no-chunk-scale  --rope-scaling TYPE  --rope-factor F\n"
"  --memory exact|knn  --k K  --last-context N\n"
"  --memory-dtype bf16|fp8|int8|f32|f16   (alias --mem-dtype) how memory rows are stored:\n"
"                         fp8 (e4m3) and int8 are one byte per element plus a scale per\n"
"                         token and kv head, about half of bf16's bytes; CPU device only\n"
"  --gali-mode paper|reference  --gali-noise STD  --seed N   (gali sessions only)\n"
"                         the same meaning as the recall CLI's session options; checked at\n"
"                         start-up. e.g. --positional dca --window 16384 stretches every new\n"
"                         session of a 4k model to 16k tokens of local context\n"
"  --nlist N  --nprobe N  knn sessions' Faiss index: memory keys are grouped into N lists\n"
"                         (IVF) and each query searches the nprobe lists nearest to it, so\n"
"                         more probes (or fewer, larger lists) find more of the true top-k at\n"
"                         more cost; nprobe = nlist is an exact search. 1..%d;\n"
"                         default about 4 x sqrt(keys) lists, 32 probed. Exact sessions\n"
"                         do not take these defaults.\n"
"\n"
"memory budgets (all sessions together; sessions move between tiers, nothing is lost):\n"
"  --gpu-memory-budget SIZE\n"
"                         GPU backends: device memory for the memory keys and values of all\n"
"                         sessions together, e.g. 8G, 512M, 1.5G or bytes; none: no limit.\n"
"                         Default: 80%% of the GPU memory the weights leave free. When a\n"
"                         session needs room, the least recently used sessions' rows leave\n"
"                         the GPU (they stay in host memory or on disk). A session larger\n"
"                         than the budget (or than its own, recall's --gpu-memory-budget)\n"
"                         runs with its newest windows on the GPU and the oldest spilled to\n"
"                         the Faiss index in host memory, searching both (knn); an exact\n"
"                         session past it fails the window (ingest is refused, nothing\n"
"                         changed). It must hold at least one window of keys and values.\n"
"                         The CPU backend ignores it.\n"
"  --host-memory-budget SIZE\n"
"                         host memory for the memory rows and tokens of all sessions\n"
"                         together (e.g. 16G, 512M; none: no limit). When a session needs\n"
"                         room, the least recently used ones move to disk (nothing is lost:\n"
"                         their next question brings them back). Default: half the RAM.\n"
"                         Rows are read through a map of their files, so the page cache holds\n"
"                         them once; a session larger than the budget still runs.\n"
"\n"
"HTTP gateway (off unless --http is given; endpoints in daemon/openapi.yaml):\n"
"  --http HOST:PORT       also serve an OpenAI-compatible HTTP API (/v1/completions,\n"
"                         /v1/chat/completions, /v1/models), recall's sessions and ingest\n"
"                         (/v1/sessions...), /health and Prometheus /metrics, e.g.\n"
"                         127.0.0.1:8080. It is a client of --listen: every request goes\n"
"                         through the same checks and limits as recall's.\n"
"  --http-max-body SIZE   largest JSON request body, at least 1K (default 8M; larger\n"
"                         ones get 413). Ingest uploads are streamed and not bounded by it.\n"
"  --http-token FILE      require \"Authorization: Bearer TOKEN\" on every HTTP request,\n"
"                         TOKEN being the first line of FILE (401 otherwise)\n"
"\n"
"chat (/v1/chat/completions and recall ask --chat):\n"
"  --chat-template NAME   plain, llama2 or longllama-instruct: how a chat's messages become\n"
"                         the prompt. Default: the checkpoint's tokenizer_config.json\n"
"                         chat_template when it is Llama-2-chat's or LongLLaMA-Instruct's,\n"
"                         else plain (\"User: ...\\nAssistant:\"; a template recall does not\n"
"                         know is logged as a warning)\n"
"\n"
"config file and checks:\n"
"  --config FILE          read flags from FILE: `key = value` lines, key being a long flag\n"
"                         without --, `#` comments; switches take true or false. Flags on\n"
"                         the command line win over the file. Without --config, recalld\n"
"                         reads " CONFIG_FILE_DEFAULT " when it exists ($RECALLD_CONFIG\n"
"                         names another default file; empty: none).\n"
"  --no-config            read no config file\n"
"  --check-config         check the flags, the file, the model directory (config.json and\n"
"                         tokenizer, not the weights), the data directory and the\n"
"                         addresses without binding or writing anything; print the\n"
"                         effective settings (each with where it came from: flag, file or\n"
"                         default) and exit 0 when they are good, 1 when not (a flag or\n"
"                         file line that does not parse stops it with exit 2, as always)\n"
"security (see README, \"Securing recalld\"):\n"
"  --curve-secret FILE    CURVE authentication and encryption with the daemon's key file\n"
"                         (recall keygen DIR --name server writes one; mode 0600). Needs\n"
"                         --allow. Clients connect with recall --curve-keys --server-key.\n"
"  --allow FILE           the client keys let in: one a line, a Z85 public key and a name\n"
"                         (the client's identity in logs and quotas); # starts a comment\n"
"  --insecure             allow a --listen address other than loopback or ipc:// without\n"
"                         CURVE, and an --http address other than loopback without\n"
"                         --http-token (anyone who can reach it can use and drop every\n"
"                         session)\n"
"\n"
"limits per client identity (a CURVE key's name; 'local' for every client without a key;\n"
"'http' for the HTTP gateway under CURVE). Over a limit a request fails and nothing is\n"
"written. For the first four, 0 or none means no limit:\n"
"  --max-sessions-per-client N    sessions a client has created (default %d)\n"
"  --max-disk-per-client SIZE     bytes on disk of its sessions (default: half the file\n"
"                                 system holding --data)\n"
"  --max-requests-per-client N    Ingest/Ask/Score/Verify requests queued or running at\n"
"                                 once (default %d; over it: busy, retry later)\n"
"  --max-tokens-per-session N     tokens in one session (default 16M = 16777216)\n"
"  --max-ask-tokens N             an Ask's question tokens and its max_tokens, 1..%d\n"
"                                 (default %d)\n"
"  --max-message-bytes N          the largest request (the same as --max-frame-bytes)\n"
"\n"
"  --db-map-size N        initial LMDB map size (default 256M; it grows when full)\n"
"  --log-level LEVEL      debug, info, warn or error (default info; also RECALL_LOG)\n"
"  --help                 this text\n"
"\n"
"%s.\n"
"Exit status: 0 after a clean stop, 1 when start-up or the daemon failed, 2 for bad flags\n"
"or a bad config file (the message names FILE:LINE).\n"
"SIGTERM or SIGINT stop the daemon: it stops accepting requests, finishes or rolls back the\n"
"running job (unacknowledged work is never half-written) and exits 0.\n"
"\n"
"example:\n"
"  recalld --model ~/models/long_llama_3b --data ~/recall-data --listen tcp://127.0.0.1:5555\n"
"  recall ingest notes ~/notes/*.txt && recall ask notes \"What did I decide about X?\"\n"
"  recalld --memory knn --nprobe 64 --gpu-memory-budget 8G\n"
"      (knn sessions by default; 8 GiB of GPU memory for all sessions' rows)\n",
            SESSION_KNN_LISTS_MAX, LIMITS_DEFAULT_SESSIONS_PER_CLIENT,
            LIMITS_DEFAULT_REQUESTS_PER_CLIENT, LIMITS_ASK_TOKENS_MAX, LIMITS_DEFAULT_ASK_TOKENS,
            SESSION_NAME_RULE);
}
/* clang-format on */

/* The byte-size flags (--max-chunk-bytes, --max-frame-bytes, --db-map-size): common/size.h's
 * sizes ("65536", "64K", "1M", "1.5G"). Returns 0 on success. */
static int parse_size(const char *s, size_t *out)
{
    uint64_t v;
    if (size_parse(s, SESSION_BUDGET_MAX, &v)) return -1;
    *out = (size_t)v;
    return 0;
}


static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
    int v;
    if (parse_int(s, 0, 1 << 30, &v)) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Checks the data directory without creating it. *exists says whether it is there. */
static int check_data_dir(const char *dir, int *exists)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        *exists = 1;
        if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "recalld: --data %s is not a directory\n", dir);
            return -1;
        }
        if (access(dir, W_OK | X_OK) != 0) {
            fprintf(stderr, "recalld: data directory %s is not writable: %s\n", dir,
                    strerror(errno));
            return -1;
        }
        return 0;
    }
    *exists = 0;
    if (errno != ENOENT) {
        fprintf(stderr, "recalld: cannot use data directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", dir);
    size_t l = strlen(parent);
    while (l > 1 && parent[l - 1] == '/')
        parent[--l] = 0;
    char *slash = strrchr(parent, '/');
    if (!slash)
        snprintf(parent, sizeof parent, ".");
    else if (slash == parent)
        parent[1] = 0;
    else
        *slash = 0;
    if (access(parent, W_OK | X_OK) != 0) {
        fprintf(stderr,
                "recalld: data directory %s does not exist and cannot be created in %s: %s\n", dir,
                parent, strerror(errno));
        return -1;
    }
    return 0;
}

/* The checkpoint's own session defaults (config.json "recall_session_defaults", model/
 * config.h) for what no flag or config-file key set: the configuration the model's card
 * says measures best. Logged, so nobody wonders where a knn session came from. */
static void apply_model_defaults(daemon_t *d)
{
    Recall__SessionOptions *df = &d->cfg.defaults;
    const model_config_t *mc = d->mc;
    int took_memory = 0, took_k = 0;
    if (mc->default_memory[0] && (!df->memory || !df->memory[0])) {
        df->memory = (char *)mc->default_memory;
        took_memory = 1;
    }
    if (mc->default_k && !df->k) {
        df->k = (uint32_t)mc->default_k;
        took_k = 1;
    }
    if (!took_memory && !took_k) return;
    char what[64] = "";
    if (took_memory) snprintf(what, sizeof what, "memory %s", df->memory);
    if (took_k)
        snprintf(what + strlen(what), sizeof what - strlen(what), "%sk %u",
                 took_memory ? ", " : "", (unsigned)df->k);
    log_info("session defaults from the checkpoint's config.json: %s (--memory and --k "
             "override them)",
             what);
}

/* Session defaults are checked at start-up, against this model's config, not at the first
 * create. Returns 0 when they work; else says why on stderr. */
static int check_defaults(daemon_t *d, size_t gpu_budget)
{
    char err[1024];
    Recall__SessionOptions w = session_opts_with_defaults(d, NULL);
    model_stream_opts_t o;
    if (session_opts_resolve(d, &w, &o, err, sizeof err)) {
        fprintf(stderr, "recalld: the session defaults do not work with this model: %s\n", err);
        return -1;
    }
    /* --nlist / --nprobe are for knn sessions, which may be asked for later: check them as a
     * knn session would get them. */
    Recall__SessionOptions knn = d->cfg.defaults;
    knn.memory = (char *)"knn";
    knn = session_opts_with_defaults(d, &knn);
    if (session_opts_resolve(d, &knn, &o, err, sizeof err)) {
        fprintf(stderr, "recalld: the knn session defaults do not work with this model: %s\n",
                err);
        return -1;
    }
    /* A GPU budget must hold one window of rows of a session with the defaults. */
    if (gpu_budget && gpu_budget != SIZE_MAX) {
        w.gpu_memory_budget = gpu_budget;
        if (session_opts_resolve(d, &w, &o, err, sizeof err)) {
            fprintf(stderr, "recalld: --gpu-memory-budget does not work with this model: %s\n",
                    err);
            return -1;
        }
    }
    return 0;
}

/* HOST:PORT with a port from 0 to 65535 (or *, ZeroMQ's any port) and a host that is not
 * empty ([...] for IPv6). For --check-config: the real start resolves names as it binds. */
static int check_host_port(const char *a, char *err, size_t n)
{
    const char *colon = strrchr(a, ':');
    if (!colon || colon == a) {
        snprintf(err, n, "expected HOST:PORT");
        return -1;
    }
    if (a[0] == '[' && colon[-1] != ']') {
        snprintf(err, n, "an IPv6 host goes in brackets: [::1]:PORT");
        return -1;
    }
    const char *p = colon + 1;
    if (!strcmp(p, "*")) return 0;
    int port;
    if (parse_int(p, 0, 65535, &port)) {
        snprintf(err, n, "the port must be a number from 0 to 65535 (or *), not '%s'", p);
        return -1;
    }
    return 0;
}

/* A ZeroMQ endpoint recalld can bind: tcp://HOST:PORT or ipc://PATH (whose directory must
 * exist). For --check-config, which binds nothing. */
static int check_endpoint(const char *e, char *err, size_t n)
{
    if (!strncmp(e, "tcp://", 6)) return check_host_port(e + 6, err, n);
    if (!strncmp(e, "ipc://", 6)) {
        const char *path = e + 6;
        if (!path[0]) {
            snprintf(err, n, "no path");
            return -1;
        }
        if (path[0] == '@') return 0; /* Linux's abstract namespace: no file to check */
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
            dir[1] = 0;
        else if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
        if (access(dir, W_OK | X_OK) != 0) {
            snprintf(err, n, "cannot create a socket in %.900s: %s", dir, strerror(errno));
            return -1;
        }
        return 0;
    }
    snprintf(err, n, "expected tcp://HOST:PORT or ipc://PATH");
    return -1;
}

/* The defaults --check-config prints for flags that were not given: a value, or NULL with
 * a note saying what decides it. */
static const struct {
    const char *key, *value, *note;
} defaults_shown[] = {
    {"data", "./recall-data", NULL},
    {"listen", "tcp://127.0.0.1:5555", NULL},
    {"max-chunk-bytes", "1M", NULL},
    {"max-sessions", "1024", NULL},
    {"device", NULL, "cuda when built with it and a GPU is present, else cpu"},
    {"threads", NULL, "all cores"},
    {"gpu-memory-budget", NULL, "80% of the GPU memory the weights leave free"},
    {"http", NULL, "off"},
    {"http-max-body", "8M", NULL},
    {"http-token", NULL, "none: no authentication"},
    {"db-map-size", "256M", NULL},
    {"log-level", "info", NULL},
    {"chat-template", NULL, "the checkpoint's (see the last line)"},
    {"no-chunk-scale", "false", NULL},
};

/* --check-config's report: every setting as a `key = value` line with where it came from
 * in a comment, so the output is itself a config file. Unset settings whose default depends
 * on the model or the machine are printed commented out. */
static void print_settings(const struct option *lo, int n_opts, const char *const *given,
                           const char *const *from, const daemon_config_t *cfg,
                           const char *conf_path, const char *model_from, size_t host_budget)
{
    printf("# recalld --check-config: the effective settings\n");
    printf("# config file: %s\n", conf_path ? conf_path : "none");
    for (int i = 0; i < n_opts; i++) {
        const char *k = lo[i].name;
        int alias = 0;
        for (int j = 0; j < i; j++)
            if (lo[j].val == lo[i].val) alias = 1;
        if (alias || !strcmp(k, "config") || !strcmp(k, "no-config") ||
            !strcmp(k, "check-config") || !strcmp(k, "help"))
            continue;
        if (given[i]) {
            printf("%s = %s    # %s%s\n", k, given[i], strcmp(from[i], "flag") ? "file " : "",
                   from[i]);
            continue;
        }
        if (!strcmp(k, "model")) {
            if (cfg->model_dir)
                printf("model = %s    # %s\n", cfg->model_dir, model_from);
            else
                printf("# model =    # not set\n");
            continue;
        }
        if (!strcmp(k, "max-frame-bytes")) {
            printf("max-frame-bytes = %zu    # default: max(8M, 4 x max-chunk-bytes + 64K)\n",
                   cfg->max_frame_bytes);
            continue;
        }
        if (!strcmp(k, "host-memory-budget")) {
            if (host_budget == SIZE_MAX)
                printf("host-memory-budget = none    # default (the RAM size is unknown)\n");
            else
                printf("host-memory-budget = %zu    # default: half the RAM\n", host_budget);
            continue;
        }
        size_t d = 0, nd = sizeof defaults_shown / sizeof defaults_shown[0];
        while (d < nd && strcmp(defaults_shown[d].key, k))
            d++;
        if (d < nd && defaults_shown[d].value)
            printf("%s = %s    # default\n", k, defaults_shown[d].value);
        else if (d < nd)
            printf("# %s =    # default: %s\n", k, defaults_shown[d].note);
        else
            printf("# %s =    # default: the checkpoint's or the session's\n", k);
    }
}

static void fingerprint(const model_config_t *c, char *buf, size_t n)
{
    int off =
        snprintf(buf, n, "layers %d hidden %d heads %d/%d head_dim %d vocab %d mem [", c->n_layers,
                 c->hidden, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size);
    for (int i = 0; i < c->n_mem_layers && off < (int)n; i++)
        off += snprintf(buf + off, n - (size_t)off, "%s%d", i ? "," : "", c->mem_layers[i]);
    if (off < (int)n) snprintf(buf + off, n - (size_t)off, "]");
}

int main(int argc, char **argv)
{
    /* OpenMP workers wait passively (sleep) unless the user chose otherwise: spinning idle
     * workers took the cores the CPU backend's compute needed (the 256k passkey ran 2-3x
     * slower on 2 cores). libgomp reads the variable once, before main, so set it and
     * start over; if exec fails, carry on as we are. */
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 1) == 0)
        execv("/proc/self/exe", argv);
    daemon_config_t cfg = {
        .data_dir = "./recall-data",
        .listen = "tcp://127.0.0.1:5555",
        .max_chunk_bytes = 1u << 20,
        .max_sessions = 1024,
        .max_sessions_per_client = LIMITS_DEFAULT_SESSIONS_PER_CLIENT,
        .max_requests_per_client = LIMITS_DEFAULT_REQUESTS_PER_CLIENT,
        .max_tokens_per_session = LIMITS_DEFAULT_TOKENS_PER_SESSION,
        .max_disk_per_client = UINT64_MAX, /* the default: resolved once --data exists */
        .max_ask_tokens = LIMITS_DEFAULT_ASK_TOKENS,
        .defaults = RECALL__SESSION_OPTIONS__INIT,
    };
    enum { O_MODEL = 256, O_DATA, O_LISTEN, O_CHUNK, O_FRAME, O_SESS, O_THREADS, O_LOG, O_MAP, O_DEVICE,
           O_WINDOW, O_POSITIONAL, O_GROUP, O_NEIGHBOR, O_CHUNK_SIZE, O_LOCAL_WINDOW,
           O_NO_CHUNK_SCALE, O_ROPE_SCALING, O_ROPE_FACTOR, O_MEMORY, O_K, O_MEM_DTYPE,
           O_LAST_CONTEXT, O_NLIST, O_NPROBE, O_GPU_BUDGET, O_HOST_BUDGET, O_GALI_MODE,
           O_GALI_NOISE, O_SEED, O_HTTP, O_HTTP_MAX_BODY, O_HTTP_TOKEN, O_CONFIG, O_NO_CONFIG,
           O_CHECK_CONFIG, O_CHAT_TEMPLATE,
           /* auth.h and limits.h */
           O_CURVE_SECRET, O_ALLOW, O_INSECURE, O_MAX_SESS_CLIENT, O_MAX_DISK_CLIENT,
           O_MAX_REQ_CLIENT, O_MAX_TOK_SESSION, O_MAX_ASK_TOKENS };
    static const struct option longopts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"data", required_argument, 0, O_DATA},
        {"listen", required_argument, 0, O_LISTEN},
        {"max-chunk-bytes", required_argument, 0, O_CHUNK},
        {"max-frame-bytes", required_argument, 0, O_FRAME},
        {"max-sessions", required_argument, 0, O_SESS},
        {"device", required_argument, 0, O_DEVICE},
        {"window", required_argument, 0, O_WINDOW},
        {"positional", required_argument, 0, O_POSITIONAL},
        {"group", required_argument, 0, O_GROUP},
        {"neighbor", required_argument, 0, O_NEIGHBOR},
        {"chunk-size", required_argument, 0, O_CHUNK_SIZE},
        {"local-window", required_argument, 0, O_LOCAL_WINDOW},
        {"no-chunk-scale", no_argument, 0, O_NO_CHUNK_SCALE},
        {"rope-scaling", required_argument, 0, O_ROPE_SCALING},
        {"rope-factor", required_argument, 0, O_ROPE_FACTOR},
        {"memory", required_argument, 0, O_MEMORY},
        {"k", required_argument, 0, O_K},
        {"memory-dtype", required_argument, 0, O_MEM_DTYPE},
        {"mem-dtype", required_argument, 0, O_MEM_DTYPE},
        {"last-context", required_argument, 0, O_LAST_CONTEXT},
        {"nlist", required_argument, 0, O_NLIST},
        {"nprobe", required_argument, 0, O_NPROBE},
        {"gali-mode", required_argument, 0, O_GALI_MODE},
        {"gali-noise", required_argument, 0, O_GALI_NOISE},
        {"seed", required_argument, 0, O_SEED},
        {"gpu-memory-budget", required_argument, 0, O_GPU_BUDGET},
        {"host-memory-budget", required_argument, 0, O_HOST_BUDGET},
        {"threads", required_argument, 0, O_THREADS},
        {"log-level", required_argument, 0, O_LOG},
        {"db-map-size", required_argument, 0, O_MAP},
        {"http", required_argument, 0, O_HTTP},
        {"http-max-body", required_argument, 0, O_HTTP_MAX_BODY},
        {"http-token", required_argument, 0, O_HTTP_TOKEN},
        {"chat-template", required_argument, 0, O_CHAT_TEMPLATE},
        {"config", required_argument, 0, O_CONFIG},
        {"no-config", no_argument, 0, O_NO_CONFIG},
        {"check-config", no_argument, 0, O_CHECK_CONFIG},
        {"curve-secret", required_argument, 0, O_CURVE_SECRET},
        {"allow", required_argument, 0, O_ALLOW},
        {"insecure", no_argument, 0, O_INSECURE},
        {"max-sessions-per-client", required_argument, 0, O_MAX_SESS_CLIENT},
        {"max-disk-per-client", required_argument, 0, O_MAX_DISK_CLIENT},
        {"max-requests-per-client", required_argument, 0, O_MAX_REQ_CLIENT},
        {"max-tokens-per-session", required_argument, 0, O_MAX_TOK_SESSION},
        {"max-ask-tokens", required_argument, 0, O_MAX_ASK_TOKENS},
        {"max-message-bytes", required_argument, 0, O_FRAME},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    enum { N_OPTS = sizeof longopts / sizeof longopts[0] - 1 };
    /* The config file's arguments go before the command line's (config.h), so the file is
     * found first, by a look at the command line alone. */
    const char *conf_path = NULL;
    int no_conf = 0, check_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            conf_path = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9))
            conf_path = argv[i] + 9;
        else if (!strcmp(argv[i], "--no-config"))
            no_conf = 1;
        else if (!strcmp(argv[i], "--check-config"))
            check_only = 1;
    }
    if (no_conf) {
        conf_path = NULL;
    } else if (!conf_path) {
        const char *def = getenv("RECALLD_CONFIG");
        if (!def) def = CONFIG_FILE_DEFAULT;
        if (def[0] && access(def, F_OK) == 0) conf_path = def;
    }
    static const char *const cli_only[] = {"config", "no-config", "check-config", "help", NULL};
    static config_args_t args; /* cfg points into it until exit */
    {
        char cerr[1024];
        if (config_file_merge(conf_path, argc, argv, longopts, cli_only, &args, cerr,
                              sizeof cerr)) {
            fprintf(stderr, "recalld: %s\n", cerr);
            return 2;
        }
    }
    /* What each flag was set to and where (--check-config prints them): by the index of the
     * first longopts entry with that flag's val, so aliases are one setting. */
    const char *given[N_OPTS] = {0}, *given_from[N_OPTS] = {0};
    size_t host_budget = 0; /* 0: the default, half the RAM; SIZE_MAX: none */
    size_t gpu_budget = 0;  /* 0: the default, a share of the free GPU memory; SIZE_MAX: none */
    int opt, li = -1, at = 1;
    opterr = 0;
    /* argv from here on is the merged vector: the file's arguments, then the command line. */
    argc = args.argc;
    argv = args.argv;
    for (; (opt = getopt_long(argc, argv, "h", longopts, &li)) != -1; at = optind, li = -1) {
        int bad = 0;
        /* "FILE:LINE: " when this argument came from the config file. */
        char from[4200] = "";
        if (at < argc && args.origin[at]) snprintf(from, sizeof from, "%s: ", args.origin[at]);
        if (li >= 0) {
            int c = li;
            for (int j = 0; j < li; j++)
                if (longopts[j].val == longopts[li].val) {
                    c = j;
                    break;
                }
            given[c] = optarg ? optarg : "true";
            given_from[c] = args.origin[at] ? args.origin[at] : "flag";
        }
        switch (opt) {
        case O_CONFIG:
        case O_NO_CONFIG:
        case O_CHECK_CONFIG:
            break; /* taken before the loop */
        case O_MODEL:
            cfg.model_dir = optarg;
            break;
        case O_DATA:
            cfg.data_dir = optarg;
            break;
        case O_LISTEN:
            cfg.listen = optarg;
            break;
        case O_DEVICE:
            cfg.device = optarg;
            break;
        case O_HTTP: cfg.http = optarg; break;
        case O_HTTP_TOKEN: cfg.http_token = optarg; break;
        case O_CHAT_TEMPLATE: {
            chat_template_kind_t k;
            bad = chat_template_from_name(optarg, &k) != RC_OK;
            cfg.chat_template = optarg;
            break;
        }
        case O_CURVE_SECRET: cfg.curve_secret = optarg; break;
        case O_ALLOW: cfg.allow = optarg; break;
        case O_INSECURE: cfg.insecure = 1; break;
        case O_MAX_SESS_CLIENT:
        case O_MAX_REQ_CLIENT: {
            int v;
            bad = !strcmp(optarg, "none") ? (v = 0, 0) : parse_int(optarg, 0, 1 << 24, &v);
            *(opt == O_MAX_SESS_CLIENT ? &cfg.max_sessions_per_client
                                       : &cfg.max_requests_per_client) = (unsigned)v;
            break;
        }
        case O_MAX_DISK_CLIENT:
        case O_MAX_TOK_SESSION:
            bad = size_parse(optarg, SESSION_BUDGET_MAX,
                             opt == O_MAX_DISK_CLIENT ? &cfg.max_disk_per_client
                                                      : &cfg.max_tokens_per_session) != RC_OK;
            break;
        case O_MAX_ASK_TOKENS: {
            int v;
            bad = parse_int(optarg, 1, LIMITS_ASK_TOKENS_MAX, &v);
            cfg.max_ask_tokens = (uint32_t)v;
            break;
        }
        case O_HTTP_MAX_BODY:
            bad = parse_size(optarg, &cfg.http_max_body) || cfg.http_max_body < 1024;
            break;
        case O_WINDOW: bad = parse_u32(optarg, &cfg.defaults.window); break;
        case O_GROUP: bad = parse_u32(optarg, &cfg.defaults.group); break;
        case O_NEIGHBOR: bad = parse_u32(optarg, &cfg.defaults.neighbor); break;
        case O_CHUNK_SIZE: bad = parse_u32(optarg, &cfg.defaults.chunk_size); break;
        case O_LOCAL_WINDOW:
            bad = parse_u32(optarg, &cfg.defaults.local_window);
            cfg.defaults.local_window_set = !bad && !cfg.defaults.local_window; /* gali w = 0 */
            break;
        case O_GALI_MODE:
            bad = strcmp(optarg, "paper") != 0 && strcmp(optarg, "reference") != 0;
            cfg.defaults.gali_mode = optarg;
            break;
        case O_GALI_NOISE: {
            char *end;
            double f = strtod(optarg, &end);
            bad = end == optarg || *end || !(f >= 0.0 && f <= 1e6);
            cfg.defaults.gali_noise = (float)f;
            break;
        }
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            bad = errno || end == optarg || *end || optarg[0] == '-';
            cfg.defaults.gali_seed = v;
            break;
        }
        case O_K: bad = parse_u32(optarg, &cfg.defaults.k); break;
        case O_LAST_CONTEXT: bad = parse_u32(optarg, &cfg.defaults.last_context); break;
        case O_NO_CHUNK_SCALE: cfg.defaults.no_chunk_scale = 1; break;
        case O_NLIST:
        case O_NPROBE: {
            int v;
            bad = parse_int(optarg, 1, SESSION_KNN_LISTS_MAX, &v);
            if (bad) {
                fprintf(stderr,
                        "recalld: %s--%s must be a whole number of lists from 1 to %d, not '%s' "
                        "(see recalld --help)\n",
                        from, opt == O_NLIST ? "nlist" : "nprobe", SESSION_KNN_LISTS_MAX, optarg);
                config_args_free(&args);
                return 2;
            }
            *(opt == O_NLIST ? &cfg.defaults.knn_nlist : &cfg.defaults.knn_nprobe) = (uint32_t)v;
            break;
        }
        case O_GPU_BUDGET:
        case O_HOST_BUDGET: {
            const int gpu = opt == O_GPU_BUDGET;
            uint64_t b = 0;
            if (size_parse(optarg, SESSION_BUDGET_MAX, &b)) {
                if (gpu)
                    fprintf(stderr,
                            "recalld: %s--gpu-memory-budget must be a size such as 512M, 8G, "
                            "1.5G or a number of bytes (at most 1P), or 0 / none for no limit; "
                            "not '%s'\n",
                            from, optarg);
                else
                    fprintf(stderr,
                            "recalld: %s--host-memory-budget must be a size such as 512M, 16G, "
                            "1.5G or a number of bytes, or none for no limit; not '%s'\n",
                            from, optarg);
                config_args_free(&args);
                return 2;
            }
            *(gpu ? &gpu_budget : &host_budget) = b ? (size_t)b : SIZE_MAX; /* none: no limit */
            break;
        }
        case O_POSITIONAL: cfg.defaults.positional = optarg; break;
        case O_MEMORY: cfg.defaults.memory = optarg; break;
        case O_MEM_DTYPE: cfg.defaults.mem_dtype = optarg; break;
        case O_ROPE_SCALING: cfg.defaults.rope_scaling = optarg; break;
        case O_ROPE_FACTOR: {
            char *end;
            double f = strtod(optarg, &end);
            bad = *end || !(f >= 1.0 && f <= 1e6);
            cfg.defaults.rope_factor = (float)f;
            break;
        }
        case O_CHUNK:
            bad = parse_size(optarg, &cfg.max_chunk_bytes) || !cfg.max_chunk_bytes;
            break;
        case O_FRAME:
            bad = parse_size(optarg, &cfg.max_frame_bytes) || cfg.max_frame_bytes < 256;
            break;
        case O_SESS:
            bad = parse_int(optarg, 1, 1 << 24, &cfg.max_sessions);
            break;
        case O_THREADS:
            bad = parse_int(optarg, 0, 4096, &cfg.threads);
            break;
        case O_MAP:
            bad = parse_size(optarg, &cfg.map_size) || cfg.map_size < 65536;
            break;
        case O_LOG:
            if (!strcmp(optarg, "debug"))
                log_set_level(LOG_DEBUG);
            else if (!strcmp(optarg, "info"))
                log_set_level(LOG_INFO);
            else if (!strcmp(optarg, "warn"))
                log_set_level(LOG_WARN);
            else if (!strcmp(optarg, "error"))
                log_set_level(LOG_ERROR);
            else
                bad = 1;
            break;
        case 'h':
            usage(stdout);
            config_args_free(&args);
            return 0;
        default:
            fprintf(stderr, "recalld: %sunknown option or missing value: %s\n", from,
                    argv[optind - 1]);
            fprintf(stderr, "run 'recalld --help' for the options\n");
            config_args_free(&args);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "recalld: %sbad value '%s' for --%s (see recalld --help)\n", from,
                    optarg, li >= 0 ? longopts[li].name : "?");
            config_args_free(&args);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "recalld: unexpected argument '%s' (see recalld --help)\n", argv[optind]);
        config_args_free(&args);
        return 2;
    }
    const char *model_from = cfg.model_dir ? NULL : "env RECALL_MODEL";
    if (!cfg.model_dir) cfg.model_dir = getenv("RECALL_MODEL");
#ifdef RECALL_DEFAULT_MODEL_DIR
    /* The embedded default model (models/default of the source tree this was built from). */
    struct stat dst;
    if (!cfg.model_dir && stat(RECALL_DEFAULT_MODEL_DIR "/config.json", &dst) == 0) {
        cfg.model_dir = RECALL_DEFAULT_MODEL_DIR;
        model_from = "default: the embedded model";
    }
#endif
    if (!cfg.model_dir) {
        fprintf(stderr, "recalld: no model: give --model DIR (a checkpoint directory with "
                        "config.json, model.safetensors and tokenizer.model) or set "
                        "RECALL_MODEL\n"
                        "run 'recalld --help' for the options\n");
        return 2;
    }
    if (!cfg.max_frame_bytes) {
        cfg.max_frame_bytes = 4 * cfg.max_chunk_bytes + (64u << 10);
        if (cfg.max_frame_bytes < (8u << 20)) cfg.max_frame_bytes = 8u << 20;
    }
    if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
    if (host_budget == 0) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        host_budget = pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz / 2 : SIZE_MAX;
    }
    cfg.host_budget = host_budget == SIZE_MAX ? 0 : host_budget;

    /* --check-config counts what is wrong instead of stopping at the first problem. */
    int problems = 0;
    char err[1024] = "";
    if (check_only) {
        if (check_endpoint(cfg.listen, err, sizeof err)) {
            fprintf(stderr, "recalld: --listen %s: %s\n", cfg.listen, err);
            problems++;
        }
        if (cfg.http && check_host_port(cfg.http, err, sizeof err)) {
            fprintf(stderr, "recalld: --http %s: %s\n", cfg.http, err);
            problems++;
        }
    }

    /* The token file is read now: a missing or empty one stops start-up, not a request. */
    char *http_token = NULL;
    if (cfg.http_token) {
        char terr[512];
        if (!cfg.http) {
            fprintf(stderr, "recalld: --http-token needs --http HOST:PORT\n");
            return 2;
        }
        if (http_token_read(cfg.http_token, &http_token, terr, sizeof terr)) {
            fprintf(stderr, "recalld: %s\n", terr);
            if (!check_only) return 2;
            problems++;
        }
    }

    /* Who may connect (auth.h): refused now, before anything is written, with what to do. */
    auth_t *auth = NULL;
    char aerr[1024];
    if (auth_configure(&cfg, http_token != NULL, &auth, aerr, sizeof aerr)) {
        fprintf(stderr, "recalld: %s\n", aerr);
        if (!check_only) {
            free(http_token);
            return 2;
        }
        problems++;
    }

    int existed = 0;
    if (check_data_dir(cfg.data_dir, &existed)) {
        if (!check_only) {
            free(http_token);
            auth_destroy(&auth);
            return 1;
        }
        problems++;
    }

    static daemon_t dd;
    daemon_t *d = &dd;
    d->cfg = cfg;
    d->auth = auth;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->start_time = clock_now_s();
    int exit_code = 1;
    void *router = NULL;
    int worker_started = 0;

    /* The config and tokenizer now; the weights on the worker once recalld listens, so
     * health, sessions and info answer while a large checkpoint is still loading. */
    rc_t rc = model_open(cfg.model_dir, 0, &d->model, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recalld: cannot load the model in %s: %s\n", cfg.model_dir, err);
        if (!check_only) goto out;
        problems++;
    }
    d->mc = d->model ? model_get_config(d->model) : NULL;
    if (d->mc) apply_model_defaults(d);
    d->gpu_budget_flag = gpu_budget;
    if (d->model && check_defaults(d, gpu_budget)) {
        if (!check_only) goto out;
        problems++;
    }
    if (d->model) {
        /* How chat Asks are formatted: the flag, else the checkpoint's template if recall
         * knows it, else plain (with a warning when the checkpoint has one it does not). */
        char warn[1024];
        chat_template_load(cfg.model_dir, cfg.chat_template, &d->chat, warn, sizeof warn, err,
                           sizeof err); /* the name was checked with the flags */
        if (warn[0]) log_warn("%s", warn);
        log_info("chat template: %s (%s)", chat_template_name(d->chat.kind), d->chat.source);
    }
    if (check_only) {
        print_settings(longopts, N_OPTS, given, given_from, &cfg, conf_path, model_from,
                       host_budget);
        if (d->model)
            printf("# chat template in effect: %s (%s)\n", chat_template_name(d->chat.kind),
                   d->chat.source);
        if (problems)
            fprintf(stderr, "recalld: %d problem%s with this configuration\n", problems,
                    problems == 1 ? "" : "s");
        else
            fprintf(stderr, "recalld: the configuration is good\n");
        exit_code = problems ? 1 : 0;
        goto out;
    }
    d->tok = model_get_tokenizer(d->model);
    d->row_dim = d->mc->n_kv_heads * d->mc->head_dim;
    fingerprint(d->mc, d->fingerprint, sizeof d->fingerprint);

    d->zctx = zmq_ctx_new();
    router = zmq_socket(d->zctx, ZMQ_ROUTER);
    int linger = 1000, hwm = 100000, client_queue = SERVER_CLIENT_QUEUE;
    int64_t maxmsg = (int64_t)cfg.max_frame_bytes * 2 + 1024;
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    /* Before bind: connections take it when made (server.c: slow clients). */
    zmq_setsockopt(router, ZMQ_SNDHWM, &client_queue, sizeof client_queue);
    zmq_setsockopt(router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (limits_create(&d->limits)) goto out;
    if (d->auth && auth_start(d->auth, d->zctx, router, err, sizeof err)) {
        fprintf(stderr, "recalld: %s\n", err);
        goto out;
    }
    if (zmq_bind(router, cfg.listen) != 0) {
        int e = errno;
        if (e == EADDRINUSE)
            fprintf(stderr,
                    "recalld: cannot listen on %s: the address is already in use "
                    "(another recalld?)\n",
                    cfg.listen);
        else
            fprintf(stderr, "recalld: cannot listen on %s: %s\n", cfg.listen, zmq_strerror(e));
        goto out;
    }

    if (!existed && mkdir(cfg.data_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "recalld: cannot create data directory %s: %s\n", cfg.data_dir,
                strerror(errno));
        goto out;
    }
    if (d->cfg.max_disk_per_client == UINT64_MAX) {
        /* The default: no one client may fill more than half of the disk the data is on. */
        struct statvfs fs;
        d->cfg.max_disk_per_client =
            statvfs(cfg.data_dir, &fs) == 0 ? (uint64_t)fs.f_blocks * fs.f_frsize / 2 : 0;
    }
    memory_db_opts_t dbo = {.map_size = cfg.map_size};
    rc = memory_db_open(cfg.data_dir, &dbo, &d->db, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recalld: %s\n", err);
        goto out;
    }
    if (!(d->rows_root = malloc(strlen(cfg.data_dir) + 6))) goto out;
    sprintf(d->rows_root, "%s/rows", cfg.data_dir);
    if (mkdir(d->rows_root, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "recalld: cannot create %s: %s\n", d->rows_root, strerror(errno));
        goto out;
    }
    /* The GPU budget is set when the backend is open (daemon_load_weights). */
    if (memory_tiers_create(d->cfg.host_budget, 0, &d->tiers)) goto out;
    rc = session_open_all(d, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recalld: cannot open the sessions in %s: %s\n", cfg.data_dir, err);
        goto out;
    }

    d->pair_main = zmq_socket(d->zctx, ZMQ_PAIR);
    d->pair_worker = zmq_socket(d->zctx, ZMQ_PAIR);
    zmq_setsockopt(d->pair_main, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d->pair_worker, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (zmq_bind(d->pair_main, "inproc://recalld-worker") != 0 ||
        zmq_connect(d->pair_worker, "inproc://recalld-worker") != 0) {
        fprintf(stderr, "recalld: cannot set up the worker pipe: %s\n", zmq_strerror(errno));
        goto out;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: zmq_poll returns EINTR at once */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (pthread_create(&d->worker, NULL, worker_main, d) != 0) {
        fprintf(stderr, "recalld: cannot start the worker thread\n");
        goto out;
    }
    worker_started = 1;
    log_info("recalld listening on %s; model %s; data %s; %zu sessions (opened lazily); host "
             "memory budget %s%.1f MiB; loading the weights on device %s",
             cfg.listen, model_describe(d->model), cfg.data_dir, d->n_sessions,
             cfg.host_budget ? "" : "none, ", (double)cfg.host_budget / 1048576.0,
             cfg.device ? cfg.device : "auto");
    if (d->auth)
        log_info("CURVE on: %zu client keys allowed (%s); the daemon's public key, for clients' "
                 "--server-key: %s",
                 auth_n_allowed(d->auth), cfg.allow, auth_server_public(d->auth));
    log_info("limits per client: %u sessions, %.1f MiB on disk, %u requests in flight; %llu "
             "tokens per session; %u ask tokens; %zu bytes a message (0: none)",
             d->cfg.max_sessions_per_client, (double)d->cfg.max_disk_per_client / 1048576.0,
             d->cfg.max_requests_per_client, (unsigned long long)d->cfg.max_tokens_per_session,
             d->cfg.max_ask_tokens, d->cfg.max_frame_bytes);

    if (cfg.http) {
        /* The gateway connects to the endpoint the ROUTER actually bound (a wildcard port
         * resolved, a wildcard host made loopback). */
        char bound[256] = "", local[300];
        err[0] = 0;
        size_t bl = sizeof bound;
        zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, bound, &bl);
        http_gateway_opts_t ho = {.address = cfg.http,
                                  .endpoint = local,
                                  .max_body = cfg.http_max_body,
                                  .token = http_token,
                                  .daemon_metrics = &d->metrics,
                                  .extra_metrics = daemon_metrics_write,
                                  .extra_metrics_arg = d,
                                  .curve = d->auth ? auth_gateway_curve(d->auth) : NULL};
        if (http_endpoint_local(bound[0] ? bound : cfg.listen, local, sizeof local) ||
            http_gateway_start(&ho, &d->http, err, sizeof err)) {
            fprintf(stderr, "recalld: %s\n", err[0] ? err : "cannot start the HTTP gateway");
            goto out;
        }
        log_info("HTTP gateway on %s (port %d), a client of %s%s", cfg.http,
                 http_gateway_port(d->http), local, http_token ? "; bearer token required" : "");
    }

    /* Serving from here on: systemd may count the service as started (notify.h). Under mu,
     * so this status and the worker's "serving" one (weights.c) arrive in order. */
    pthread_mutex_lock(&d->mu);
    {
        char note[700];
        if (daemon_ready(d))
            snprintf(note, sizeof note, "READY=1\nSTATUS=serving %zu session%s on %s",
                     d->n_sessions, d->n_sessions == 1 ? "" : "s", daemon_device_describe(d));
        else
            snprintf(note, sizeof note, "READY=1\nSTATUS=listening on %s; loading the weights",
                     cfg.listen);
        if (daemon_notify(note) < 0) log_warn("cannot notify systemd: %s", strerror(errno));
    }
    pthread_mutex_unlock(&d->mu);
    rc = server_run(d, router, &g_stop);
    daemon_notify("STOPPING=1\nSTATUS=stopping");
    pthread_mutex_lock(&d->mu);
    exit_code = rc == RC_OK && !d->load_failed ? 0 : 1;
    pthread_mutex_unlock(&d->mu);
    log_info("recalld stopped");

out:
    /* HTTP requests still waiting on the daemon give up (503) before it goes away. */
    http_gateway_stop(&d->http);
    free(http_token);
    if (worker_started) {
        pthread_mutex_lock(&d->mu);
        d->stopping = 1;
        d->worker_stop_now = 1;
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->worker, NULL);
    }
    /* The worker is gone: streams are quiet, so knn indexes can be written out for a fast
     * next start (each session's move to disk saves its index). */
    if (d->db) session_evict_all(d);
    if (router) zmq_close(router);
    if (d->pair_main) zmq_close(d->pair_main);
    if (d->pair_worker) zmq_close(d->pair_worker);
    auth_destroy(&d->auth); /* its sockets too, before the context goes */
    if (d->zctx) zmq_ctx_term(d->zctx);
    limits_destroy(&d->limits); /* nothing points at its clients now */
    for (size_t i = 0; i < d->n_sessions; i++)
        session_free(d->sessions[i]);
    free(d->sessions);
    memory_tiers_destroy(&d->tiers);
    free(d->rows_root);
    memory_db_close(&d->db); /* after every commit has returned */
    model_backend_close(&d->backend); /* after every stream on it is gone */
    model_destroy(&d->model);
    config_args_free(&args);
    return exit_code;
}
