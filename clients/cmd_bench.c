/* cmd_bench.c — `recall bench`: end-to-end throughput of a running daemon, from this client. */
#include "clients/cli.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/bench.h"
#include "clients/passkey.h"
#include "common/clock.h"

static int cmd_bench(recall_client *c, const cli_args *a);

const cli_command cli_cmd_bench = {
    "bench", "recall bench [--tokens N] [--max-tokens G] [--keep] [session options]",
    "end-to-end throughput of a running daemon, measured from the client",
    "Measures what a user of this daemon gets, over ZeroMQ, from this client:\n"
    "  1. makes about N tokens of English-like filler text here (sentences with\n"
    "     numbers, the same text every run; its size in bytes is fitted with the\n"
    "     daemon's tokenizer, and the daemon's own count is reported);\n"
    "  2. creates a fresh session bench-PID-TIME with the session options given;\n"
    "  3. ingests the text exactly as 'recall ingest' does (chunks, pipelining),\n"
    "     timed until every chunk is acknowledged, i.e. on disk: tokens/s;\n"
    "  4. asks one question, greedy, G tokens, ignoring end-of-sequence: the time\n"
    "     to the first streamed token as this client sees it, and the daemon's\n"
    "     prefill and decode times;\n"
    "  5. reads the session's memory use (host, device, disk);\n"
    "  6. drops the session (unless --keep), also when a step fails or on Ctrl-C.\n"
    "\n"
    "  --tokens N              size of the text in tokens; k = 1024, M = 1048576\n"
    "                          (default 64k)\n"
    "  --max-tokens G          tokens to generate (default 32)\n"
    "  --keep                  keep the session afterwards (its name is printed)\n"
    "--json prints one object: session, kept, model, device, target_tokens, tokens,\n"
    "bytes, chunks, windows, ingest_s, tokens_per_s, ttft_ms, prompt_tokens,\n"
    "prefill_ms, generated, decode_ms, decode_ms_per_token, memory_tokens,\n"
    "memory_bytes_host, memory_bytes_device, memory_bytes_disk, options.\n"
    "For GPU kernel benchmarks (attention, top-k, matmul), see bench/ in the\n"
    "repository (bench/README.md); this command measures the whole service.\n"
    "\n"
    "Examples:\n"
    "  recall bench\n"
    "  recall bench --tokens 256k --memory knn\n"
    "  recall --json bench --tokens 1M\n",
    cmd_bench};

static volatile sig_atomic_t g_bench_stop;

static void bench_on_signal(int sig)
{
    (void)sig;
    g_bench_stop = 1;
}

typedef struct bench_ask {
    double t_first; /* clock_now_s() at the first streamed token; 0 before */
    uint32_t generated, prompt_tokens;
    float prefill_ms, decode_ms;
    int got_final;
} bench_ask;

static rc_t bench_ask_cb(const Recall__Response *r, void *arg)
{
    bench_ask *b = arg;
    if (g_bench_stop) return RC_ERR_SHUTDOWN;
    if (r->body_case != RECALL__RESPONSE__BODY_ASK) return RC_OK; /* prefill progress */
    const Recall__AskResponse *a = r->ask;
    if (!a->done) {
        if (!b->t_first) b->t_first = clock_now_s();
        return RC_OK;
    }
    b->generated = a->generated;
    b->prompt_tokens = a->prompt_tokens;
    b->prefill_ms = a->prefill_ms;
    b->decode_ms = a->decode_ms;
    b->got_final = 1;
    return RC_OK;
}

/* A failed step: the daemon's message (exit 1), the transport's (exit 3), or a signal. */
static int bench_failed(recall_client *c, rc_t rc, const char *what)
{
    if (rc == RC_ERR_SHUTDOWN && g_bench_stop)
        return cli_report(EXIT_REMOTE, rc, "%s: stopped by a signal", what);
    if (rc == RC_ERR_NOMEM) return cli_report(EXIT_REMOTE, rc, "%s: out of memory", what);
    const char *m = recall_client_error(c);
    return cli_report(recall_client_error_remote(c) ? EXIT_REMOTE : EXIT_CONNECT, rc, "%s: %s",
                      what, m[0] ? m : rc_strerror(rc));
}

#define BENCH_SAMPLE_BYTES 16384
#define BENCH_TEXT_SEED 1

static int cmd_bench(recall_client *c, const cli_args *a)
{
    /* Everything the user typed is checked before the daemon is asked anything. */
    if (a->n_pos) return cli_usage_error(CMD_BENCH, "bench takes no arguments, only options");
    uint64_t target = 64 * 1024, max_tokens = 32, chunk_bytes = RECALL_INGEST_DEFAULT_CHUNK_BYTES;
    char err[1024];
    if (a->vals[O_TOKENS]) {
        int n;
        if (strchr(a->vals[O_TOKENS], ','))
            return cli_usage_error(CMD_BENCH, "--tokens takes one length, not a list ('%s')",
                                   a->vals[O_TOKENS]);
        if (passkey_parse_lengths(a->vals[O_TOKENS], &target, 1, &n, err, sizeof err))
            return cli_usage_error(CMD_BENCH, "%s", err);
    }
    if (a->vals[O_MAX_TOKENS] &&
        !cli_parse_u64("max-tokens", a->vals[O_MAX_TOKENS], 1, 1 << 20, &max_tokens, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_CHUNK_BYTES] && !cli_parse_u64("chunk-bytes", a->vals[O_CHUNK_BYTES], 16,
                                                 256u << 20, &chunk_bytes, a->cmd, 1))
        return EXIT_USAGE;
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!cli_parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    int keep = a->vals[O_KEEP] != NULL;

    /* Health first: it says the daemon is there (before anything is created) and names
     * the model and device for the report. */
    Recall__HealthRequest hr = RECALL__HEALTH_REQUEST__INIT;
    Recall__Request req = cli_request(RECALL__REQUEST__BODY_HEALTH, &hr);
    Recall__Response *r;
    char model[256] = "", device[256] = "";
    /* A daemon that has just started is still loading its weights: wait for them, so the
     * report names the device and no measurement includes the load. */
    for (int said = 0;; said = 1) {
        rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
        if (rc) return cli_client_error(c, rc);
        int ready = 1;
        if (r->body_case == RECALL__RESPONSE__BODY_HEALTH) {
            snprintf(model, sizeof model, "%s", cli_str_or(r->health->model, ""));
            snprintf(device, sizeof device, "%s", cli_str_or(r->health->device, ""));
            ready = r->health->ready;
        }
        recall__response__free_unpacked(r, NULL);
        if (ready) break;
        if (!said) fprintf(stderr, "bench: waiting for the daemon to load its weights\n");
        usleep(200 * 1000);
    }

    /* The text's size in bytes: the filler's bytes per token, measured on a sample with
     * the daemon's tokenizer (the text is uniform, so the ratio carries over). A daemon
     * without Tokenize gets 4 bytes per token; the daemon's count is reported either way. */
    char *text = NULL, *sample = NULL;
    double bytes_per_token = 4.0;
    if (bench_text(BENCH_SAMPLE_BYTES, BENCH_TEXT_SEED, &sample))
        return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    size_t n_sample = 0;
    rc_t rc =
        passkey_tokenize_rpc(c, sample, BENCH_SAMPLE_BYTES, 0, 1, NULL, &n_sample, err, sizeof err);
    free(sample);
    if (rc == RC_ERR_IO || rc == RC_ERR_NOMEM) return bench_failed(c, rc, "cannot tokenize");
    if (!rc && n_sample > 0)
        bytes_per_token = (double)BENCH_SAMPLE_BYTES / (double)n_sample;
    else if (!cli_quiet)
        fprintf(stderr, "recall: the daemon does not tokenize (%s); assuming 4 bytes a token\n",
                err);
    size_t n_bytes = (size_t)((double)target * bytes_per_token + 0.5);
    if (n_bytes < 1) n_bytes = 1;
    if (bench_text(n_bytes, BENCH_TEXT_SEED, &text))
        return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory for %zu bytes of text",
                          n_bytes);

    char session[96];
    snprintf(session, sizeof session, "bench-%ld-%lld", (long)getpid(), (long long)time(NULL));
    int result = -1, created = 0;
    FILE *mem = NULL;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = bench_on_signal; /* no SA_RESTART: a signal ends the step in progress */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    /* Not if_not_exists: a session of that name is someone else's. */
    rc = recall_client_create_session(c, session, &so, 0, &r);
    if (rc) {
        result = bench_failed(c, rc, "cannot create the bench session");
        goto out;
    }
    created = 1;
    recall_ingest_state st = {.session = session};
    if (r->body_case == RECALL__RESPONSE__BODY_CREATE_SESSION && r->create_session->info) {
        st.last_seq = r->create_session->info->last_seq;
        st.tokens = r->create_session->info->tokens;
        st.windows = r->create_session->info->windows;
    }
    recall__response__free_unpacked(r, NULL);
    if (g_bench_stop) {
        result = bench_failed(c, RC_ERR_SHUTDOWN, "bench");
        goto out;
    }

    /* The ingest, through recall ingest's own loop; the text is a stream in memory. */
    mem = fmemopen(text, n_bytes, "rb");
    if (!mem) {
        result = cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "cannot open the text as a stream: %s",
                            strerror(errno));
        goto out;
    }
    recall_ingest_src src = {.name = "the bench text", .f = mem};
    double t0 = clock_now_s();
    result = cli_ingest(c, &src, 1, (double)n_bytes, (size_t)chunk_bytes, &st, &g_bench_stop);
    double ingest_s = clock_now_s() - t0;
    if (result >= 0) goto out;

    /* The question, greedy, G tokens whatever the model says. */
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = session;
    ar.question = (char *)BENCH_QUESTION;
    ar.max_tokens = (uint32_t)max_tokens;
    ar.temperature = 0;
    ar.ignore_eos = 1;
    req = cli_request(RECALL__REQUEST__BODY_ASK, &ar);
    bench_ask ba = {0};
    double t_ask = clock_now_s();
    rc = recall_client_stream(c, &req, bench_ask_cb, &ba);
    if (rc) {
        result = bench_failed(c, rc, "the question failed");
        goto out;
    }
    if (!ba.got_final) {
        result = cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "the answer ended without its summary");
        goto out;
    }

    Recall__SessionInfoRequest ir = RECALL__SESSION_INFO_REQUEST__INIT;
    ir.session = session;
    req = cli_request(RECALL__REQUEST__BODY_SESSION_INFO, &ir);
    rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (rc) {
        result = bench_failed(c, rc, "cannot read the session's info");
        goto out;
    }
    if (r->body_case != RECALL__RESPONSE__BODY_SESSION_INFO || !r->session_info->info) {
        recall__response__free_unpacked(r, NULL);
        result = cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to SessionInfo");
        goto out;
    }
    const Recall__SessionInfo *info = r->session_info->info;

    /* Drop before printing, so that a failed drop is the one thing reported. */
    if (!keep) {
        created = 0;
        rc = recall_client_drop(c, session);
        if (rc) {
            recall__response__free_unpacked(r, NULL);
            result = bench_failed(c, rc, "cannot drop the bench session");
            goto out;
        }
    }
    double tps = ingest_s > 0 ? (double)st.tokens_added / ingest_s : 0;
    double ttft_ms = ba.t_first ? (ba.t_first - t_ask) * 1000 : NAN;
    double ms_per_tok = ba.generated ? ba.decode_ms / ba.generated : NAN;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", session);
        cJSON_AddBoolToObject(o, "kept", keep);
        cJSON_AddStringToObject(o, "model", model);
        cJSON_AddStringToObject(o, "device", device);
        cJSON_AddNumberToObject(o, "target_tokens", (double)target);
        cJSON_AddNumberToObject(o, "tokens", (double)st.tokens_added);
        cJSON_AddNumberToObject(o, "bytes", (double)n_bytes);
        cJSON_AddNumberToObject(o, "chunks", (double)st.chunks_acked);
        cJSON_AddNumberToObject(o, "windows", (double)info->windows);
        cJSON_AddNumberToObject(o, "ingest_s", ingest_s);
        cJSON_AddNumberToObject(o, "tokens_per_s", tps);
        if (isfinite(ttft_ms))
            cJSON_AddNumberToObject(o, "ttft_ms", ttft_ms);
        else
            cJSON_AddNullToObject(o, "ttft_ms");
        cJSON_AddNumberToObject(o, "prompt_tokens", ba.prompt_tokens);
        cJSON_AddNumberToObject(o, "prefill_ms", ba.prefill_ms);
        cJSON_AddNumberToObject(o, "generated", ba.generated);
        cJSON_AddNumberToObject(o, "decode_ms", ba.decode_ms);
        if (isfinite(ms_per_tok))
            cJSON_AddNumberToObject(o, "decode_ms_per_token", ms_per_tok);
        else
            cJSON_AddNullToObject(o, "decode_ms_per_token");
        cJSON_AddNumberToObject(o, "memory_tokens", (double)info->memory_tokens);
        cJSON_AddNumberToObject(o, "memory_bytes_host", (double)info->memory_bytes_host);
        cJSON_AddNumberToObject(o, "memory_bytes_device", (double)info->memory_bytes_device);
        cJSON_AddNumberToObject(o, "memory_bytes_disk", (double)info->memory_bytes_disk);
        cJSON_AddItemToObject(o, "options", cli_options_json(info->options));
        cli_json_print(o);
    } else {
        char b[32], bh[32], bd[32], bk[32];
        cli_human_bytes(b, sizeof b, (double)n_bytes);
        cli_human_bytes(bh, sizeof bh, (double)info->memory_bytes_host);
        cli_human_bytes(bd, sizeof bd, (double)info->memory_bytes_device);
        cli_human_bytes(bk, sizeof bk, (double)info->memory_bytes_disk);
        const Recall__SessionOptions *o = info->options;
        printf("session        %s (%s)\n", session, keep ? "kept" : "dropped");
        printf("model          %s\n", cli_str_or(model, "?"));
        printf("device         %s\n", cli_str_or(device, "?"));
        printf("options        window %u, %s, memory %s", o ? o->window : 0,
               o ? cli_str_or(o->positional, "-") : "-", o ? cli_str_or(o->memory, "-") : "-");
        if (o && o->memory && !strcmp(o->memory, "knn")) printf(" (k %u)", o->k);
        printf("\ntokens         %llu (%s, %llu chunks, %llu windows)\n",
               (unsigned long long)st.tokens_added, b, (unsigned long long)st.chunks_acked,
               (unsigned long long)info->windows);
        printf("ingest         %.2f s, %.0f tokens/s (every chunk on disk)\n", ingest_s, tps);
        if (isfinite(ttft_ms))
            printf("first token    %.1f ms (client, from sending the question)\n", ttft_ms);
        else
            printf("first token    - (no token generated)\n");
        printf("prefill        %.1f ms (daemon, %u question tokens)\n", ba.prefill_ms,
               ba.prompt_tokens);
        if (isfinite(ms_per_tok))
            printf("decode         %.2f ms/token (daemon, %u tokens in %.1f ms)\n", ms_per_tok,
                   ba.generated, ba.decode_ms);
        else
            printf("decode         - (no token generated)\n");
        printf("memory         host %s, device %s, disk %s (%llu tokens)\n", bh, bd, bk,
               (unsigned long long)info->memory_tokens);
        fflush(stdout);
    }
    recall__response__free_unpacked(r, NULL);
    result = EXIT_OK;
out:
    if (mem) fclose(mem);
    free(text);
    if (created && !keep) {
        /* The step that failed was reported already; a drop that fails too only adds a
         * line for the person, so that they can drop the session by hand. */
        rc = recall_client_drop(c, session);
        if (rc)
            fprintf(stderr,
                    "recall: could not drop session '%s' (%s); drop it with 'recall drop %s'\n",
                    session, recall_client_error(c), session);
    } else if (created && keep && result != EXIT_OK && !cli_quiet) {
        fprintf(stderr, "recall: session '%s' kept (--keep)\n", session);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return result;
}
