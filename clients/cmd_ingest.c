/* cmd_ingest.c — `recall ingest`: text files into a session, through the library's ingest call
 * (clients/ingest.h), with a progress bar; cli_ingest is also what `recall bench` uses. */
#include "clients/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clients/chunker.h"
#include "common/clock.h"

static int cmd_ingest(recall_client *c, const cli_args *a);

const cli_command cli_cmd_ingest = {
    "ingest", "recall ingest SESSION FILE... [session options] [--chunk-bytes N]",
    "stream text files into a session (created if needed)",
    "Reads each FILE (- for standard input), cuts it into chunks at line\n"
    "boundaries of at most --chunk-bytes (default 64K; K and M suffixes), and\n"
    "streams them to the daemon. Chunks are numbered, so a session grows in order\n"
    "and a chunk is counted once; a chunk is acknowledged only when it and every\n"
    "window it completed are on disk. The session is created on first use with\n"
    "the session options below; an existing session keeps its own options (a\n"
    "different --memory-dtype is refused: its rows are already stored).\n"
    "On a terminal, a progress bar shows bytes, tokens/s and the time left.\n"
    "\n"
    "Examples:\n"
    "  recall ingest books war-and-peace.txt anna-karenina.txt\n"
    "  cat notes/*.md | recall ingest notes -\n"
    "  recall ingest long --window 4096 --positional self-extend --group 4 "
    "--neighbor 1024 big.txt\n"
    "  recall ingest code --memory knn --k 128 src.txt\n"
    "  recall ingest big --memory knn --nlist 4096 --nprobe 64 "
    "--gpu-memory-budget 4G big.txt\n",
    cmd_ingest};

static void ingest_partial(const recall_ingest_state *st)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "session", st->session);
    cJSON_AddNumberToObject(p, "last_seq", (double)st->last_seq);
    cJSON_AddNumberToObject(p, "tokens", (double)st->tokens);
    cJSON_AddNumberToObject(p, "windows", (double)st->windows);
    cJSON_AddNumberToObject(p, "tokens_added", (double)st->tokens_added);
    cJSON_AddNumberToObject(p, "chunks_acked", (double)st->chunks_acked);
    cli_err_extra = p;
    if (!cli_json)
        fprintf(stderr,
                "recall: ingest stopped; acknowledged so far: %llu chunks, session '%s' at "
                "%llu tokens (last_seq %llu)\n",
                (unsigned long long)st->chunks_acked, st->session, (unsigned long long)st->tokens,
                (unsigned long long)st->last_seq);
}

/* Reads a file through once to find bytes that are not UTF-8 before anything is sent (bad
 * input changes nothing). Standard input cannot be read twice; it is checked as it goes.
 * Returns -1 when the file is fine, else the exit code of the reported problem. */
static int check_utf8_file(const char *path, size_t chunk_bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cli_report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot open %s: %s", path,
                          strerror(errno));
    recall_chunker *ch;
    int result = -1;
    if (recall_chunker_create(f, chunk_bytes, &ch)) {
        fclose(f);
        return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    }
    for (;;) {
        char *text;
        size_t len, off, bad;
        if (recall_chunker_next(ch, &text, &len, &off)) {
            result = cli_report(EXIT_USAGE, RC_ERR_IO, "cannot read %s", path);
            break;
        }
        if (!text) break;
        int ok = recall_utf8_valid(text, len, &bad);
        free(text);
        if (!ok) {
            result = cli_report(EXIT_USAGE, RC_ERR_INVALID,
                                "%s: not UTF-8 text (bad byte at offset %zu); nothing was sent",
                                path, off + bad);
            break;
        }
    }
    recall_chunker_destroy(&ch);
    fclose(f);
    return result;
}

/* The options given that an existing session (resolved options `have`) does not have, as
 * "--k 8 (it has 128), ..." in buf ("" when none differs or have is missing). Only options
 * the daemon echoes resolved are compared. */
static void options_ignored(const Recall__SessionOptions *given, const Recall__SessionOptions *have,
                            char *buf, size_t n)
{
    buf[0] = 0;
    if (!have) return;
    size_t off = 0;
#define DIFF(fmt, ...)                                                                             \
    do {                                                                                           \
        if (off < n)                                                                               \
            off += (size_t)snprintf(buf + off, n - off, "%s" fmt, off ? ", " : "", __VA_ARGS__);   \
    } while (0)
#define DIFF_NUM(f, opt)                                                                           \
    if (given->f && given->f != have->f) DIFF("--" opt " %u (it has %u)", given->f, have->f)
#define DIFF_STR(f, opt)                                                                           \
    if (given->f && given->f[0] && strcmp(given->f, have->f ? have->f : ""))                       \
    DIFF("--" opt " %s (it has %s)", given->f, cli_str_or(have->f, "-"))
    DIFF_NUM(window, "window");
    DIFF_STR(positional, "positional");
    DIFF_STR(memory, "memory");
    DIFF_NUM(k, "k");
    DIFF_NUM(knn_nlist, "nlist");
    DIFF_NUM(knn_nprobe, "nprobe");
    DIFF_STR(mem_dtype, "memory-dtype");
    if (given->gpu_memory_budget &&
        (given->gpu_memory_budget == BUDGET_NONE ? 0 : given->gpu_memory_budget) !=
            have->gpu_memory_budget) {
        char g[32] = "none", h[32] = "none";
        if (given->gpu_memory_budget != BUDGET_NONE)
            cli_human_bytes(g, sizeof g, (double)given->gpu_memory_budget);
        if (have->gpu_memory_budget) cli_human_bytes(h, sizeof h, (double)have->gpu_memory_budget);
        DIFF("--gpu-memory-budget %s (it has %s)", g, h);
    }
#undef DIFF_STR
#undef DIFF_NUM
#undef DIFF
}

typedef struct ingest_bar {
    cli_progress pg;
    double total;
} ingest_bar;

static void draw_bar(const recall_ingest_state *st, double bytes_done, int final, void *arg)
{
    ingest_bar *b = arg;
    cli_progress_draw(&b->pg, "ingest", bytes_done, b->total, (double)st->tokens_added, final);
}

int cli_ingest(recall_client *c, const recall_ingest_src *srcs, int n_srcs, double total,
               size_t chunk_bytes, recall_ingest_state *st, volatile sig_atomic_t *stop)
{
    ingest_bar bar = {.total = total};
    cli_progress_init(&bar.pg);
    recall_ingest_opts o = {
        .chunk_bytes = chunk_bytes, .stop = stop, .on_progress = draw_bar, .arg = &bar};
    recall_ingest_error err;
    rc_t rc = recall_ingest_text(c, srcs, n_srcs, &o, st, &err);
    cli_progress_clear(&bar.pg);
    if (!rc) return -1;
    /* Every failure also says what was acknowledged, except running out of memory here,
     * which recall has always reported alone. */
    if (err.fault != RECALL_INGEST_NOMEM) ingest_partial(st);
    if (err.fault == RECALL_INGEST_TRANSPORT) return cli_client_error(c, rc);
    return cli_report(err.fault == RECALL_INGEST_INPUT ? EXIT_USAGE : EXIT_REMOTE, err.code, "%s",
                      err.message);
}

static int cmd_ingest(recall_client *c, const cli_args *a)
{
    if (a->n_pos < 2)
        return cli_usage_error(CMD_INGEST, "ingest needs a SESSION and at least one FILE");
    const char *session = a->pos[0];
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!cli_parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    uint64_t chunk_bytes = RECALL_INGEST_DEFAULT_CHUNK_BYTES;
    if (a->vals[O_CHUNK_BYTES] && !cli_parse_u64("chunk-bytes", a->vals[O_CHUNK_BYTES], 16,
                                                 256u << 20, &chunk_bytes, a->cmd, 1))
        return EXIT_USAGE;

    /* Every file is checked before anything is sent: a typo in the last name must not
     * leave the session half-fed. */
    const char **files = (const char **)a->pos + 1;
    int n_files = a->n_pos - 1, n_stdin = 0;
    double total = 0;
    for (int i = 0; i < n_files; i++) {
        struct stat stt;
        if (!strcmp(files[i], "-")) {
            if (++n_stdin > 1) return cli_usage_error(CMD_INGEST, "'-' (stdin) given twice");
            if (fstat(STDIN_FILENO, &stt) == 0 && S_ISREG(stt.st_mode))
                total += stt.st_size;
            else
                total = -1e300; /* unknown */
            continue;
        }
        if (stat(files[i], &stt) != 0 || access(files[i], R_OK) != 0)
            return cli_report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot read %s: %s", files[i],
                              strerror(errno));
        if (S_ISDIR(stt.st_mode))
            return cli_report(EXIT_USAGE, RC_ERR_INVALID, "%s is a directory", files[i]);
        total += stt.st_size;
        int e = check_utf8_file(files[i], (size_t)chunk_bytes);
        if (e >= 0) return e;
    }
    if (total < 0) total = 0;

    Recall__Response *r;
    rc_t rc = recall_client_create_session(c, session, &so, 1, &r);
    if (rc) return cli_client_error(c, rc);
    if (r->body_case != RECALL__RESPONSE__BODY_CREATE_SESSION || !r->create_session->info) {
        recall__response__free_unpacked(r, NULL);
        return cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to CreateSession");
    }
    int created = r->create_session->created;
    recall_ingest_state st = {.session = session};
    st.last_seq = r->create_session->info->last_seq;
    st.tokens = r->create_session->info->tokens;
    st.windows = r->create_session->info->windows;
    const Recall__SessionOptions *have = r->create_session->info->options;
    /* The other options an existing session keeps are a warning; its rows' dtype is an
     * error: the user asked for a storage format (half the bytes, or full precision) that
     * the rows already written do not have and never will. */
    if (!created && have && so.mem_dtype && so.mem_dtype[0] && have->mem_dtype &&
        strcmp(so.mem_dtype, have->mem_dtype) != 0) {
        char have_dt[16];
        snprintf(have_dt, sizeof have_dt, "%s", have->mem_dtype);
        recall__response__free_unpacked(r, NULL);
        return cli_report(EXIT_USAGE, RC_ERR_INVALID,
                          "session '%s' stores its memory rows as %s; it cannot change to %s "
                          "(--memory-dtype). Leave the option out, or drop the session and "
                          "ingest again",
                          session, have_dt, so.mem_dtype);
    }
    if (!created && any_opt && !cli_quiet) {
        char diff[512];
        options_ignored(&so, have, diff, sizeof diff);
        if (diff[0])
            fprintf(stderr, "recall: session '%s' exists; it keeps its own options, not %s\n",
                    session, diff);
        else
            fprintf(stderr, "recall: session '%s' exists; it keeps its own options\n", session);
    }
    recall__response__free_unpacked(r, NULL);

    recall_ingest_src *srcs = calloc((size_t)n_files, sizeof *srcs);
    if (!srcs) return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_files; i++)
        srcs[i].name = files[i];
    double t0 = clock_now_s();
    int result = cli_ingest(c, srcs, n_files, total, (size_t)chunk_bytes, &st, NULL);
    free(srcs);
    if (result >= 0) return result;

    double secs = clock_now_s() - t0;
    double rate = secs > 0 ? st.tokens_added / secs : 0;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", session);
        cJSON_AddBoolToObject(o, "created", created);
        cJSON_AddNumberToObject(o, "tokens_added", (double)st.tokens_added);
        cJSON_AddNumberToObject(o, "tokens", (double)st.tokens);
        cJSON_AddNumberToObject(o, "windows", (double)st.windows);
        cJSON_AddNumberToObject(o, "chunks", (double)st.chunks_acked);
        cJSON_AddNumberToObject(o, "last_seq", (double)st.last_seq);
        cJSON_AddNumberToObject(o, "bytes", st.bytes_acked);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "tokens_per_s", rate);
        cli_json_print(o);
    } else if (!cli_quiet) {
        char b[32];
        cli_human_bytes(b, sizeof b, st.bytes_acked);
        fprintf(stderr,
                "ingested %llu tokens (%s, %llu chunks) into '%s' in %.2f s, %.0f tokens/s; "
                "session now %llu tokens, %llu windows\n",
                (unsigned long long)st.tokens_added, b, (unsigned long long)st.chunks_acked,
                session, secs, rate, (unsigned long long)st.tokens, (unsigned long long)st.windows);
    }
    return EXIT_OK;
}
