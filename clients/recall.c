/* recall.c — the command-line client of recalld.
 *
 * Every command is one or a few RPCs (proto/recall.proto) through clients/client.h. Output
 * is for people by default and exactly one JSON object on stdout with --json. Exit codes:
 * 0 ok, 1 the daemon answered with an error, 2 usage error, 3 cannot connect or timeout. */
#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clients/bench.h"
#include "clients/chunker.h"
#include "clients/client.h"
#include "clients/passkey.h"
#include "common/rc.h"

enum { EXIT_OK = 0, EXIT_REMOTE = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

#define DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define DEFAULT_CHUNK_BYTES (64 * 1024)

/* ---------------------------------------------------------------------------------------
 * Commands and options */

typedef enum cmd {
    CMD_NONE = -1,
    CMD_INGEST,
    CMD_ASK,
    CMD_PPL,
    CMD_SESSIONS,
    CMD_INFO,
    CMD_DROP,
    CMD_HEALTH,
    CMD_STATS,
    CMD_VERIFY,
    CMD_HELP,
    CMD_PASSKEY,
    CMD_BENCH,
    CMD_COUNT
} cmd_t;

#define B(c) (1u << (c))
#define ALL_CMDS 0xFFFFFFFFu
#define SESSION_OPT_CMDS (B(CMD_INGEST) | B(CMD_PPL) | B(CMD_PASSKEY) | B(CMD_BENCH))

typedef struct cmd_desc {
    const char *name;
    const char *synopsis;
    const char *summary;
    const char *help; /* details and examples */
} cmd_desc;

static const cmd_desc cmds[CMD_COUNT] = {
    [CMD_INGEST] = {"ingest", "recall ingest SESSION FILE... [session options] [--chunk-bytes N]",
                    "stream text files into a session (created if needed)",
                    "Reads each FILE (- for standard input), cuts it into chunks at line\n"
                    "boundaries of at most --chunk-bytes (default 64K; K and M suffixes), and\n"
                    "streams them to the daemon. Chunks are numbered, so a session grows in order\n"
                    "and a chunk is counted once; a chunk is acknowledged only when it and every\n"
                    "window it completed are on disk. The session is created on first use with\n"
                    "the session options below; an existing session keeps its own options.\n"
                    "On a terminal, a progress bar shows bytes, tokens/s and the time left.\n"
                    "\n"
                    "Examples:\n"
                    "  recall ingest books war-and-peace.txt anna-karenina.txt\n"
                    "  cat notes/*.md | recall ingest notes -\n"
                    "  recall ingest long --window 4096 --positional self-extend --group 4 "
                    "--neighbor 1024 big.txt\n"
                    "  recall ingest code --memory knn --k 128 src.txt\n"
                    "  recall ingest big --memory knn --nlist 4096 --nprobe 64 "
                    "--gpu-memory-budget 4G big.txt\n"},
    [CMD_ASK] = {"ask", "recall ask SESSION QUESTION [--max-tokens N] [--temperature T] ...",
                 "ask a question about a session; the answer streams to stdout",
                 "The question is processed after the session's text, with the memory of all\n"
                 "of it; the session does not change unless --append is given.\n"
                 "  --max-tokens N    stop after N generated tokens (default: the daemon's)\n"
                 "  --temperature T   0 is greedy and deterministic (default 0)\n"
                 "  --top-p P         nucleus sampling (0 or 1: off)\n"
                 "  --seed N          sampling seed\n"
                 "  --append          append the question and the answer to the session\n"
                 "  --ignore-eos      keep generating past the end-of-sequence token\n"
                 "\n"
                 "Examples:\n"
                 "  recall ask books \"Who is Pierre Bezukhov?\"\n"
                 "  recall ask notes \"Summarise the last meeting.\" --max-tokens 200 "
                 "--temperature 0.7 --seed 1\n"},
    [CMD_PPL] = {"ppl", "recall ppl SESSION | recall ppl --text FILE [session options]",
                 "perplexity of a session's text, or of a file",
                 "With SESSION, scores the tokens already in the session. With --text FILE\n"
                 "(- for standard input), scores the file from an empty memory: BOS first and\n"
                 "windows aligned to it, with the session options given here.\n"
                 "Prints \"ppl P over N tokens\".\n"
                 "\n"
                 "Examples:\n"
                 "  recall ppl books\n"
                 "  recall ppl --text pg19-sample.txt --window 2048 --json\n"},
    [CMD_SESSIONS] = {"sessions", "recall sessions", "list the sessions",
                      "One line per session: tokens, windows, memory and options.\n"
                      "\n"
                      "Example:\n"
                      "  recall sessions --json\n"},
    [CMD_INFO] = {"info", "recall info SESSION", "everything known about one session",
                  "Shows the session's resolved options, token and window counts, memory use\n"
                  "per tier and the last acknowledged ingest chunk.\n"
                  "\n"
                  "Example:\n"
                  "  recall info books --json\n"},
    [CMD_DROP] = {"drop", "recall drop SESSION", "delete a session and its memory",
                  "Removes the session from the daemon and from disk. There is no undo.\n"
                  "\n"
                  "Example:\n"
                  "  recall drop scratch\n"},
    [CMD_HEALTH] = {"health", "recall health", "is the daemon up? version, model, device",
                    "Exits 0 when the daemon answers and is healthy, 3 when it cannot be\n"
                    "reached.\n"
                    "\n"
                    "Example:\n"
                    "  recall health --connect ipc:///run/recall.sock\n"},
    [CMD_STATS] = {"stats", "recall stats", "daemon counters: requests, tokens, memory",
                   "Example:\n"
                   "  recall stats --json\n"},
    [CMD_VERIFY] = {"verify", "recall verify SESSION",
                    "read a session's stored memory back and check every checksum",
                    "Reads every memory row of the session from disk and checks it against the\n"
                    "checksum written when its window was committed, and the token count\n"
                    "against the catalogue. Exits 0 when everything matches and 1 when\n"
                    "something does not, naming the first damaged window or file. A session\n"
                    "whose stored data is found damaged (here or when it is brought in) is\n"
                    "marked unavailable (recall sessions shows it); one that passes again is\n"
                    "available again. It reads the whole session: large ones take a while.\n"
                    "\n"
                    "Example:\n"
                    "  recall verify books\n"},
    [CMD_HELP] = {"help", "recall help [COMMAND]", "this help, or a command's",
                  "Example:\n"
                  "  recall help ingest\n"},
    [CMD_PASSKEY] =
        {"passkey",
         "recall passkey --tokens LENGTHS [--depths D] [--trials N] [--seed S] "
         "[--png FILE] [session options]",
         "LongLLaMA's passkey retrieval test: accuracy by length and depth",
         "Hides a random pass key in a long filler text and asks the model for it,\n"
         "at every length and depth given, through the daemon (the Landmark\n"
         "Attention test LongLLaMA reports). The prompt is five lines:\n"
         "  There is an important info hidden inside a lot of irrelevant text. Find\n"
         "    it and memorize them. I will quiz you about the important information\n"
         "    there.\n"
         "  <filler before the key>\n"
         "  The pass key is KEY. Remember it. KEY is the pass key.\n"
         "  <filler after the key>\n"
         "  What is the pass key? The pass key is\n"
         "The filler is \"The grass is green. The sky is blue. The sun is yellow.\n"
         "Here we go. There and back again.\" repeated (joined by spaces) and cut\n"
         "so the whole prompt, BOS included, is the length asked for with the\n"
         "model's own tokenizer (measured through the daemon; the actual lengths\n"
         "are reported). KEY is a whole number in [1, 50000) drawn from --seed.\n"
         "The depth is the fraction of the filler before the key line: depth d of\n"
         "D is d/(D-1), so 0% (key first) and 100% (key last) are both tested\n"
         "(with --depths 1, the middle).\n"
         "\n"
         "Each trial is a fresh session PREFIX-LEN-dD-tT: the prompt up to the\n"
         "question is ingested (windows aligned to its first token, memory layers\n"
         "keep every full window), then the question is asked greedily for as many\n"
         "tokens as the key has. A trial passes only if every generated token is\n"
         "the key's (tokenizer(str(KEY)) without BOS, i.e. \" KEY\"); the decoded\n"
         "answer is shown but never scored. The session is dropped afterwards.\n"
         "A model without memory layers sees only its last window (plus the\n"
         "question): beyond that, expect only keys near the end to be found.\n"
         "\n"
         "  --tokens LENGTHS        comma-separated prompt lengths in tokens; k = 1024,\n"
         "                          M = 1048576 (e.g. 4k,16k,64k,256k) (required)\n"
         "  --depths D              depths per length, 1..101 (default 10)\n"
         "  --trials N              trials per length and depth (default 5)\n"
         "  --seed S                seed of the keys (default 1); a cell's keys depend\n"
         "                          only on the seed, its length, depth and trial\n"
         "  --png FILE              write a heatmap (length x depth, red 0% to green\n"
         "                          100%) as a PNG picture\n"
         "  --session-prefix P      name trial sessions P-... (default passkey-PID)\n"
         "  --keep                  keep each trial's session instead of dropping it\n"
         "On a terminal, a line per trial goes to stderr; Ctrl-C stops after the\n"
         "current step and drops its session. --json prints one object:\n"
         "  {\"accuracy\": overall, \"by_length\": {\"4096\": acc, ...}, \"cells\":\n"
         "   [[acc per depth] per length], \"trials\": N, \"tokens\": [actual mean\n"
         "   length per length], \"target_tokens\": [...], \"tokens_range\": [[min,\n"
         "   max], ...], \"filler_chars\": [...], \"depths\": [...], \"passed\",\n"
         "   \"total\", \"seconds\", \"results\": [one object per trial: target,\n"
         "   tokens, question_tokens, depth, session, trial, key, answer, pass, ...],\n"
         "   \"png\": FILE}\n"
         "\n"
         "Examples:\n"
         "  recall passkey --tokens 4k,16k,64k,256k --depths 10 --trials 5 "
         "--png passkey.png\n"
         "  recall passkey --tokens 32k --depths 5 --trials 2 --memory knn --k 128 "
         "--json\n"},
    [CMD_BENCH] =
        {"bench", "recall bench [--tokens N] [--max-tokens G] [--keep] [session options]",
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
         "  recall --json bench --tokens 1M\n"},
};

typedef enum opt_id {
    O_CONNECT,
    O_JSON,
    O_TIMEOUT,
    O_QUIET,
    O_HELP,
    O_WINDOW,
    O_POSITIONAL,
    O_GROUP,
    O_NEIGHBOR,
    O_CHUNK_SIZE,
    O_LOCAL_WINDOW,
    O_MEMORY,
    O_K,
    O_NLIST,
    O_NPROBE,
    O_GPU_BUDGET,
    O_LAST_CONTEXT,
    O_MEM_DTYPE,
    O_ROPE_SCALING,
    O_ROPE_FACTOR,
    O_NO_CHUNK_SCALE,
    O_CHUNK_BYTES,
    O_MAX_TOKENS,
    O_TEMPERATURE,
    O_TOP_P,
    O_SEED,
    O_APPEND,
    O_IGNORE_EOS,
    O_TEXT,
    O_TOKENS,
    O_DEPTHS,
    O_TRIALS,
    O_PNG,
    O_SESSION_PREFIX,
    O_KEEP,
    O_COUNT
} opt_id;

typedef struct opt_spec {
    const char *name; /* without the leading "--" */
    char short_name;
    int has_arg;
    unsigned cmds; /* commands that accept it */
} opt_spec;

static const opt_spec opt_specs[O_COUNT] = {
    [O_CONNECT] = {"connect", 'c', 1, ALL_CMDS},
    [O_JSON] = {"json", 0, 0, ALL_CMDS},
    [O_TIMEOUT] = {"timeout", 't', 1, ALL_CMDS},
    [O_QUIET] = {"quiet", 'q', 0, ALL_CMDS},
    [O_HELP] = {"help", 'h', 0, ALL_CMDS},
    [O_WINDOW] = {"window", 0, 1, SESSION_OPT_CMDS},
    [O_POSITIONAL] = {"positional", 0, 1, SESSION_OPT_CMDS},
    [O_GROUP] = {"group", 0, 1, SESSION_OPT_CMDS},
    [O_NEIGHBOR] = {"neighbor", 0, 1, SESSION_OPT_CMDS},
    [O_CHUNK_SIZE] = {"chunk-size", 0, 1, SESSION_OPT_CMDS},
    [O_LOCAL_WINDOW] = {"local-window", 0, 1, SESSION_OPT_CMDS},
    [O_MEMORY] = {"memory", 0, 1, SESSION_OPT_CMDS},
    [O_K] = {"k", 0, 1, SESSION_OPT_CMDS},
    [O_NLIST] = {"nlist", 0, 1, SESSION_OPT_CMDS},
    [O_NPROBE] = {"nprobe", 0, 1, SESSION_OPT_CMDS},
    [O_GPU_BUDGET] = {"gpu-memory-budget", 0, 1, SESSION_OPT_CMDS},
    [O_LAST_CONTEXT] = {"last-context", 0, 1, SESSION_OPT_CMDS},
    [O_MEM_DTYPE] = {"mem-dtype", 0, 1, SESSION_OPT_CMDS},
    [O_ROPE_SCALING] = {"rope-scaling", 0, 1, SESSION_OPT_CMDS},
    [O_ROPE_FACTOR] = {"rope-factor", 0, 1, SESSION_OPT_CMDS},
    [O_NO_CHUNK_SCALE] = {"no-chunk-scale", 0, 0, SESSION_OPT_CMDS},
    [O_CHUNK_BYTES] = {"chunk-bytes", 0, 1, B(CMD_INGEST) | B(CMD_BENCH)},
    [O_MAX_TOKENS] = {"max-tokens", 'n', 1, B(CMD_ASK) | B(CMD_BENCH)},
    [O_TEMPERATURE] = {"temperature", 0, 1, B(CMD_ASK)},
    [O_TOP_P] = {"top-p", 0, 1, B(CMD_ASK)},
    [O_SEED] = {"seed", 0, 1, B(CMD_ASK) | B(CMD_PASSKEY)},
    [O_APPEND] = {"append", 0, 0, B(CMD_ASK)},
    [O_IGNORE_EOS] = {"ignore-eos", 0, 0, B(CMD_ASK)},
    [O_TEXT] = {"text", 0, 1, B(CMD_PPL)},
    [O_TOKENS] = {"tokens", 0, 1, B(CMD_PASSKEY) | B(CMD_BENCH)},
    [O_DEPTHS] = {"depths", 0, 1, B(CMD_PASSKEY)},
    [O_TRIALS] = {"trials", 0, 1, B(CMD_PASSKEY)},
    [O_PNG] = {"png", 0, 1, B(CMD_PASSKEY)},
    [O_SESSION_PREFIX] = {"session-prefix", 0, 1, B(CMD_PASSKEY)},
    [O_KEEP] = {"keep", 0, 0, B(CMD_PASSKEY) | B(CMD_BENCH)},
};

static const char session_opts_help[] =
    "Session options (when ingest creates a session, for ppl --text, for passkey's trial\n"
    "sessions and bench's session; 0 or absent = the checkpoint's default):\n"
    "  --window N              tokens per window\n"
    "  --positional SCHEME     rope | self-extend | dca | clex (a CLEX checkpoint's default)\n"
    "  --group G --neighbor W  self-extend group size and neighbour window\n"
    "  --chunk-size S --local-window w   dca chunk size and local window\n"
    "  --memory MODE           exact (default): every memory layer attends to all of the\n"
    "                          session's memory; knn: each query and head attends only to its\n"
    "                          top K memory keys by inner product, found in a Faiss index per\n"
    "                          memory layer and kv head: far less work on long sessions, an\n"
    "                          approximation of exact attention\n"
    "  --k K                   knn: memory keys per query and head (default 128)\n"
    "  --nlist N --nprobe N    knn: the index groups the keys into N lists (IVF) and each query\n"
    "                          searches the nprobe lists nearest to it. More probes, or fewer\n"
    "                          and larger lists, find more of the true top K at more cost per\n"
    "                          query; nprobe = nlist searches everything. 1..1048576;\n"
    "                          default: the daemon's --nlist/--nprobe, else about\n"
    "                          4 x sqrt(keys) lists and 32 probed. They need --memory knn (or\n"
    "                          a daemon whose default memory is knn)\n"
    "  --gpu-memory-budget SIZE  GPU daemons: device memory for the session's memory keys and\n"
    "                          values (512M, 8G, 1.5G, or bytes; 0 or none: no limit). A knn\n"
    "                          session past it keeps its newest windows on the GPU and searches\n"
    "                          the oldest in host memory; an exact session past it is refused\n"
    "                          the next window. At least one window's worth. Default: the\n"
    "                          daemon's --gpu-memory-budget; a CPU daemon ignores it\n"
    "  --last-context N        LongLLaMA's last_context_length, kept with the session (recall's\n"
    "                          windows align to the first token, so it does not change results)\n"
    "  --mem-dtype T           f32 | bf16 | f16 (memory storage type)\n"
    "  --rope-scaling TYPE --rope-factor F   none | linear | ntk | dynamic | yarn, overriding\n"
    "                          the checkpoint's rope_scaling (plain rope only)\n"
    "  --no-chunk-scale        dca: no ChunkLlama cos/sin scaling for windows > trained length\n";

static const char global_opts_help[] =
    "Global options (before or after the command):\n"
    "  --connect ENDPOINT  daemon address (default $RECALL_CONNECT, else " DEFAULT_ENDPOINT ")\n"
    "                      tcp://HOST:PORT or ipc://PATH\n"
    "  --json              print exactly one JSON object on stdout\n"
    "  --timeout S         seconds to wait for each answer (default 600); a daemon that\n"
    "                      cannot be reached at all fails after 3 s (or S, if shorter)\n"
    "  --quiet, -q         no progress bar or summary\n"
    "  --help, -h          help (also: recall help COMMAND)\n";

typedef struct args {
    cmd_t cmd;
    const char *vals[O_COUNT]; /* value, or "1" for flags; NULL when absent */
    const char *pos[64];       /* positional arguments after the command */
    int n_pos;
} args;

/* ---------------------------------------------------------------------------------------
 * Output: one place for errors, text or JSON */

static int g_json;
static int g_quiet;
static cJSON *g_err_extra; /* extra members for the JSON error object (ingest progress) */

static void json_print(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
    cJSON_Delete(o);
    fflush(stdout);
}

/* Reports an error and returns the exit code. code is an rc_t (the daemon's, or local). */
static int report(int exit_code, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int report(int exit_code, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_json) {
        cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddNumberToObject(e, "code", code);
        cJSON_AddStringToObject(e, "name", rc_name((rc_t)code));
        cJSON_AddStringToObject(e, "message", msg);
        if (g_err_extra) {
            cJSON_AddItemToObject(o, "partial", g_err_extra);
            g_err_extra = NULL;
        }
        json_print(o);
    }
    /* Usage and connection errors also go to stderr under --json: a person may be there. */
    if (!g_json || exit_code != EXIT_REMOTE) fprintf(stderr, "recall: %s\n", msg);
    return exit_code;
}

static int usage_error(cmd_t cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(cmd_t cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report(EXIT_USAGE, RC_ERR_INVALID, "%s", msg);
    if (cmd > CMD_NONE && cmd < CMD_COUNT)
        fprintf(stderr, "usage: %s\nSee 'recall help %s'.\n", cmds[cmd].synopsis, cmds[cmd].name);
    else
        fprintf(stderr, "See 'recall --help'.\n");
    return EXIT_USAGE;
}

/* The client's error: the daemon's verdict (exit 1) or the transport's (exit 3). */
static int client_error(recall_client *c, rc_t rc)
{
    if (recall_client_error_remote(c)) return report(EXIT_REMOTE, rc, "%s", recall_client_error(c));
    const char *m = recall_client_error(c);
    if (!m[0]) m = rc_strerror(rc);
    return report(rc == RC_ERR_NOMEM || rc == RC_ERR_INVALID ? EXIT_REMOTE : EXIT_CONNECT, rc, "%s",
                  m);
}

static void print_overall_help(FILE *f)
{
    fprintf(f, "recall — client of the recalld long-context memory daemon\n\n"
               "usage: recall [global options] COMMAND [arguments] [options]\n\nCommands:\n");
    for (int i = 0; i < CMD_COUNT; i++)
        fprintf(f, "  %-9s %s\n", cmds[i].name, cmds[i].summary);
    fprintf(f, "\n%s\n", global_opts_help);
    fprintf(f, "Examples:\n"
               "  recall health\n"
               "  recall ingest books war-and-peace.txt\n"
               "  recall ask books \"Who marries Natasha in the end?\"\n"
               "  recall ppl books --json\n"
               "  recall --connect ipc:///tmp/recall.sock sessions\n\n"
               "Exit status: 0 ok, 1 the daemon reported an error, 2 usage error,\n"
               "3 cannot connect or no answer in time.\n"
               "'recall help COMMAND' or 'recall COMMAND --help' shows a command's details.\n");
}

static void print_cmd_help(cmd_t c)
{
    printf("usage: %s\n\n%s\n\n%s", cmds[c].synopsis, cmds[c].summary, cmds[c].help);
    if (B(c) & SESSION_OPT_CMDS) printf("\n%s", session_opts_help);
    if (c == CMD_INGEST || c == CMD_BENCH)
        printf("  --chunk-bytes N         largest chunk sent at once (default 64K)\n");
    printf("\n%s", global_opts_help);
}

/* ---------------------------------------------------------------------------------------
 * Argument parsing */

static cmd_t find_cmd(const char *s)
{
    for (int i = 0; i < CMD_COUNT; i++)
        if (!strcmp(s, cmds[i].name)) return (cmd_t)i;
    return CMD_NONE;
}

/* Parses argv: options may come before or after the command; "--" ends options. Returns
 * -1 on success, else the exit code (a usage error has been printed). */
static int parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    a->cmd = CMD_NONE;
    const char *unknown_cmd = NULL;
    int opt_at[O_COUNT] = {0};
    int only_pos = 0;
    /* --json first, so that even an early usage error comes out as a JSON object. */
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--json")) g_json = 1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (only_pos || s[0] != '-' || !strcmp(s, "-")) {
            if (a->cmd == CMD_NONE && !unknown_cmd) {
                a->cmd = find_cmd(s);
                if (a->cmd == CMD_NONE) unknown_cmd = s;
            } else if (a->n_pos < (int)(sizeof a->pos / sizeof a->pos[0])) {
                a->pos[a->n_pos++] = s;
            } else {
                return usage_error(a->cmd, "too many arguments");
            }
            continue;
        }
        if (!strcmp(s, "--")) {
            only_pos = 1;
            continue;
        }
        int id = -1;
        const char *val = NULL;
        if (s[1] == '-') {
            const char *name = s + 2, *eq = strchr(name, '=');
            size_t n = eq ? (size_t)(eq - name) : strlen(name);
            for (int o = 0; o < O_COUNT; o++)
                if (strlen(opt_specs[o].name) == n && !strncmp(opt_specs[o].name, name, n)) id = o;
            if (id >= 0 && eq) {
                if (!opt_specs[id].has_arg)
                    return usage_error(a->cmd, "option --%s takes no value", opt_specs[id].name);
                val = eq + 1;
            }
        } else if (s[1] && !s[2]) {
            for (int o = 0; o < O_COUNT; o++)
                if (opt_specs[o].short_name == s[1]) id = o;
        }
        if (id < 0) return usage_error(a->cmd, "unknown option '%s'", s);
        if (opt_specs[id].has_arg && !val) {
            if (i + 1 >= argc) return usage_error(a->cmd, "option %s needs a value", s);
            val = argv[++i];
        }
        a->vals[id] = opt_specs[id].has_arg ? val : "1";
        opt_at[id] = i;
    }
    if (a->vals[O_JSON]) g_json = 1;
    if (a->vals[O_QUIET]) g_quiet = 1;
    if (unknown_cmd) return usage_error(CMD_NONE, "unknown command '%s'", unknown_cmd);
    if (a->cmd != CMD_NONE) {
        for (int o = 0; o < O_COUNT; o++)
            if (a->vals[o] && !(opt_specs[o].cmds & B(a->cmd)))
                return usage_error(a->cmd, "option --%s does not apply to '%s'", opt_specs[o].name,
                                   cmds[a->cmd].name);
    } else {
        for (int o = 0; o < O_COUNT; o++)
            if (a->vals[o] && opt_specs[o].cmds != ALL_CMDS)
                return usage_error(CMD_NONE, "option '%s' given without a command",
                                   argv[opt_at[o]]);
    }
    return -1;
}

/* Numbers: whole strings only, with a range, so "--window 4k" or "--k -3" is a usage
 * error that names the option instead of a silent zero. */
static int parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out,
                     cmd_t cmd, int allow_suffix)
{
    char *end;
    errno = 0;
    if (!s || !*s || s[0] == '-') goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) goto bad;
    if (allow_suffix && *end) {
        unsigned long long m = 0;
        if (!strcmp(end, "K") || !strcmp(end, "k") || !strcmp(end, "KiB"))
            m = 1024;
        else if (!strcmp(end, "M") || !strcmp(end, "m") || !strcmp(end, "MiB"))
            m = 1024 * 1024;
        if (!m || v > ULLONG_MAX / m) goto bad;
        v *= m;
        end += strlen(end);
    }
    if (*end) goto bad;
    if (v < lo || v > hi) {
        usage_error(cmd, "--%s must be between %llu and %llu (got %s)", opt, (unsigned long long)lo,
                    (unsigned long long)hi, s);
        return 0;
    }
    *out = v;
    return 1;
bad:
    usage_error(cmd, "--%s needs a whole number%s, not '%s'", opt,
                allow_suffix ? " (K and M suffixes allowed)" : "", s ? s : "");
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out,
                        cmd_t cmd)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        usage_error(cmd, "--%s needs a number, not '%s'", opt, s);
        return 0;
    }
    if (v < lo || v > hi) {
        usage_error(cmd, "--%s must be between %g and %g (got %s)", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int one_of(const char *opt, const char *s, const char *const *choices, cmd_t cmd)
{
    for (int i = 0; choices[i]; i++)
        if (!strcmp(s, choices[i])) return 1;
    char list[128] = "";
    for (int i = 0; choices[i]; i++) {
        strcat(list, i ? " | " : "");
        strcat(list, choices[i]);
    }
    usage_error(cmd, "--%s must be %s, not '%s'", opt, list, s);
    return 0;
}

/* --gpu-memory-budget: "512M", "8G", "1.5G", bytes (binary units K to T, an optional "B"
 * or "iB"); "0" or "none" ask for no limit explicitly, as opposed to leaving the option out
 * (the daemon's default). 1 on success. */
#define BUDGET_NONE UINT64_MAX /* proto/recall.proto: SessionOptions.gpu_memory_budget */
#define BUDGET_MAX (1ull << 50)
static int parse_budget(const char *s, uint64_t *out, cmd_t cmd)
{
    if (!strcmp(s, "none")) {
        *out = BUDGET_NONE;
        return 1;
    }
    char *end;
    errno = 0;
    size_t digits = strspn(s, "0123456789."); /* no sign, exponent, hex, inf or nan */
    double v = strtod(s, &end);
    const char *units = "KMGT", *u = NULL;
    if (!errno && digits && end == s + digits && v >= 0) {
        if (*end) u = strchr(units, toupper((unsigned char)*end));
        if (u) end++;
        if (!*end || !strcmp(end, "B") || (u && !strcmp(end, "iB"))) {
            double b = v * (u ? (double)(1ull << (10 * (u - units + 1))) : 1.0);
            if (b > (double)BUDGET_MAX || (v > 0 && b < 1)) {
                usage_error(cmd,
                            "--gpu-memory-budget %s is %s; use none (or 0) for no limit", s,
                            v > 0 && b < 1 ? "less than a byte" : "more than 1P");
                return 0;
            }
            *out = v == 0 ? BUDGET_NONE : (uint64_t)b;
            return 1;
        }
    }
    usage_error(cmd,
                "--gpu-memory-budget needs a size such as 512M, 8G, 1.5G or a number of bytes, "
                "or none; not '%s'",
                s);
    return 0;
}

/* Session options from the command line into opts (zeros where not given). 1 on success. */
static int parse_session_opts(const args *a, Recall__SessionOptions *so, int *any)
{
    static const char *const positional[] = {"rope", "self-extend", "dca", "clex", NULL};
    static const char *const memory[] = {"exact", "knn", NULL};
    static const char *const dtypes[] = {"f32", "bf16", "f16", NULL};
    struct {
        opt_id id;
        uint32_t *field;
    } nums[] = {{O_WINDOW, &so->window},
                {O_GROUP, &so->group},
                {O_NEIGHBOR, &so->neighbor},
                {O_CHUNK_SIZE, &so->chunk_size},
                {O_LOCAL_WINDOW, &so->local_window},
                {O_K, &so->k},
                {O_LAST_CONTEXT, &so->last_context}};
    *any = 0;
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const char *v = a->vals[nums[i].id];
        if (!v) continue;
        uint64_t x;
        if (!parse_u64(opt_specs[nums[i].id].name, v, 1, UINT32_MAX, &x, a->cmd, 0)) return 0;
        *nums[i].field = (uint32_t)x;
        *any = 1;
    }
    if (a->vals[O_POSITIONAL]) {
        if (!one_of("positional", a->vals[O_POSITIONAL], positional, a->cmd)) return 0;
        so->positional = (char *)a->vals[O_POSITIONAL];
        *any = 1;
    }
    if (a->vals[O_MEMORY]) {
        if (!one_of("memory", a->vals[O_MEMORY], memory, a->cmd)) return 0;
        so->memory = (char *)a->vals[O_MEMORY];
        *any = 1;
    }
    if (a->vals[O_MEM_DTYPE]) {
        if (!one_of("mem-dtype", a->vals[O_MEM_DTYPE], dtypes, a->cmd)) return 0;
        so->mem_dtype = (char *)a->vals[O_MEM_DTYPE];
        *any = 1;
    }
    static const char *const scalings[] = {"none", "linear", "ntk", "dynamic", "yarn", NULL};
    if (a->vals[O_ROPE_SCALING]) {
        if (!one_of("rope-scaling", a->vals[O_ROPE_SCALING], scalings, a->cmd)) return 0;
        so->rope_scaling = (char *)a->vals[O_ROPE_SCALING];
        *any = 1;
    }
    if (a->vals[O_ROPE_FACTOR]) {
        char *end;
        double f = strtod(a->vals[O_ROPE_FACTOR], &end);
        if (*end || !(f >= 1.0 && f <= 1e6)) {
            usage_error(a->cmd, "--rope-factor must be a number >= 1, not '%s'",
                        a->vals[O_ROPE_FACTOR]);
            return 0;
        }
        so->rope_factor = (float)f;
        *any = 1;
    }
    if (a->vals[O_NO_CHUNK_SCALE]) {
        so->no_chunk_scale = 1;
        *any = 1;
    }
    /* Whether nlist/nprobe fit the memory mode is the daemon's call: its default mode may
     * be knn. */
    struct {
        opt_id id;
        uint32_t *field;
    } lists[] = {{O_NLIST, &so->knn_nlist}, {O_NPROBE, &so->knn_nprobe}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        const char *v = a->vals[lists[i].id];
        uint64_t x;
        if (!v) continue;
        if (!parse_u64(opt_specs[lists[i].id].name, v, 1, 1u << 20, &x, a->cmd, 0)) return 0;
        *lists[i].field = (uint32_t)x;
        *any = 1;
    }
    if (a->vals[O_GPU_BUDGET]) {
        if (!parse_budget(a->vals[O_GPU_BUDGET], &so->gpu_memory_budget, a->cmd)) return 0;
        *any = 1;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Small helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *str_or(const char *s, const char *dflt)
{
    return s && s[0] ? s : dflt;
}

static void human_bytes(char *buf, size_t n, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4)
        b /= 1024, i++;
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void human_duration(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0) {
        snprintf(buf, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static cJSON *options_json(const Recall__SessionOptions *o)
{
    cJSON *j = cJSON_CreateObject();
    if (!o) return j;
    cJSON_AddNumberToObject(j, "window", o->window);
    cJSON_AddStringToObject(j, "positional", str_or(o->positional, ""));
    cJSON_AddNumberToObject(j, "group", o->group);
    cJSON_AddNumberToObject(j, "neighbor", o->neighbor);
    cJSON_AddNumberToObject(j, "chunk_size", o->chunk_size);
    cJSON_AddNumberToObject(j, "local_window", o->local_window);
    cJSON_AddStringToObject(j, "memory", str_or(o->memory, ""));
    cJSON_AddNumberToObject(j, "k", o->k);
    cJSON_AddNumberToObject(j, "knn_nlist", o->knn_nlist);
    cJSON_AddNumberToObject(j, "knn_nprobe", o->knn_nprobe);
    cJSON_AddNumberToObject(j, "gpu_memory_budget", (double)o->gpu_memory_budget);
    cJSON_AddNumberToObject(j, "last_context", o->last_context);
    cJSON_AddStringToObject(j, "mem_dtype", str_or(o->mem_dtype, ""));
    return j;
}

static cJSON *info_json(const Recall__SessionInfo *i)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", str_or(i->name, ""));
    cJSON_AddItemToObject(j, "options", options_json(i->options));
    cJSON_AddNumberToObject(j, "tokens", (double)i->tokens);
    cJSON_AddNumberToObject(j, "windows", (double)i->windows);
    cJSON_AddNumberToObject(j, "pending_tokens", (double)i->pending_tokens);
    cJSON_AddNumberToObject(j, "memory_tokens", (double)i->memory_tokens);
    cJSON_AddNumberToObject(j, "memory_bytes_device", (double)i->memory_bytes_device);
    cJSON_AddNumberToObject(j, "memory_bytes_host", (double)i->memory_bytes_host);
    cJSON_AddNumberToObject(j, "memory_bytes_disk", (double)i->memory_bytes_disk);
    cJSON_AddNumberToObject(j, "last_seq", (double)i->last_seq);
    cJSON_AddNumberToObject(j, "created_unix", (double)i->created_unix);
    cJSON_AddNumberToObject(j, "ingest_chunks", (double)i->ingest_chunks);
    cJSON_AddStringToObject(j, "tier", str_or(i->tier, ""));
    if (i->problem && i->problem[0]) cJSON_AddStringToObject(j, "problem", i->problem);
    return j;
}

static void format_time(char *buf, size_t n, int64_t unix_s)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    if (unix_s <= 0 || !localtime_r(&t, &tm) || !strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(buf, n, "-");
}

static Recall__Request new_request(void)
{
    Recall__Request r = RECALL__REQUEST__INIT;
    return r;
}

/* Reads a whole file (or stdin for "-") as a NUL-terminated string that must be valid
 * UTF-8. Returns an exit code (-1 ok) after reporting any problem. */
static int read_text_file(const char *path, char **out, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb, cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf) return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory reading %s", path);
    if (err) {
        free(buf);
        return report(EXIT_USAGE, RC_ERR_IO, "cannot read %s", path);
    }
    buf[n] = 0;
    size_t bad;
    if (!recall_utf8_valid(buf, n, &bad)) {
        free(buf);
        return report(EXIT_USAGE, RC_ERR_INVALID, "%s: not UTF-8 text (bad byte at offset %zu)",
                      path, bad);
    }
    *out = buf;
    *len = n;
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Progress bar (stderr, only on a terminal) */

typedef struct progress {
    int on;
    double t0, last_draw;
} progress;

static void progress_init(progress *p)
{
    p->on = !g_quiet && isatty(STDERR_FILENO);
    p->t0 = now_s();
    p->last_draw = 0;
}

/* done/total in bytes (total 0: unknown), tokens so far for the rate. */
static void progress_draw(progress *p, const char *what, double done, double total, double tokens,
                          int force)
{
    if (!p->on) return;
    double t = now_s();
    if (!force && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    double el = t - p->t0;
    char d[32], tot[32], eta[32], bar[32];
    human_bytes(d, sizeof d, done);
    int width = 24;
    if (total > 0) {
        human_bytes(tot, sizeof tot, total);
        double frac = done / total;
        if (frac > 1) frac = 1;
        int fill = (int)(frac * width);
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[width] = 0;
        human_duration(eta, sizeof eta, done > 0 ? el * (total - done) / done : NAN);
        fprintf(stderr, "\r\033[K%s [%s] %s/%s  %.0f tokens/s  ETA %s", what, bar, d, tot,
                el > 0 ? tokens / el : 0.0, eta);
    } else {
        fprintf(stderr, "\r\033[K%s %s  %.0f tokens/s", what, d, el > 0 ? tokens / el : 0.0);
    }
    fflush(stderr);
}

static void progress_clear(progress *p)
{
    if (p->on) fprintf(stderr, "\r\033[K"), fflush(stderr);
}

/* ---------------------------------------------------------------------------------------
 * ingest */

typedef struct chunk {
    uint64_t seq;
    uint64_t req_id; /* 0: not awaiting an answer (to be resent) */
    char *text;
    size_t len;
    int sends;
} chunk;

typedef struct ingest_state {
    const char *session;
    uint64_t acked_seq, tokens, windows, tokens_before, tokens_added, chunks_acked;
    double bytes_acked;
} ingest_state;

static void ingest_partial(const ingest_state *st)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "session", st->session);
    cJSON_AddNumberToObject(p, "last_seq", (double)st->acked_seq);
    cJSON_AddNumberToObject(p, "tokens", (double)st->tokens);
    cJSON_AddNumberToObject(p, "windows", (double)st->windows);
    cJSON_AddNumberToObject(p, "tokens_added", (double)st->tokens_added);
    cJSON_AddNumberToObject(p, "chunks_acked", (double)st->chunks_acked);
    g_err_extra = p;
    if (!g_json)
        fprintf(stderr,
                "recall: ingest stopped; acknowledged so far: %llu chunks, session '%s' at "
                "%llu tokens (last_seq %llu)\n",
                (unsigned long long)st->chunks_acked, st->session, (unsigned long long)st->tokens,
                (unsigned long long)st->acked_seq);
}

/* Reads a file through once to find bytes that are not UTF-8 before anything is sent (bad
 * input changes nothing). Standard input cannot be read twice; it is checked as it goes.
 * Returns -1 when the file is fine, else the exit code of the reported problem. */
static int check_utf8_file(const char *path, size_t chunk_bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot open %s: %s", path, strerror(errno));
    recall_chunker *ch;
    int result = -1;
    if (recall_chunker_create(f, chunk_bytes, &ch)) {
        fclose(f);
        return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    }
    for (;;) {
        char *text;
        size_t len, off, bad;
        if (recall_chunker_next(ch, &text, &len, &off)) {
            result = report(EXIT_USAGE, RC_ERR_IO, "cannot read %s", path);
            break;
        }
        if (!text) break;
        int ok = recall_utf8_valid(text, len, &bad);
        free(text);
        if (!ok) {
            result = report(EXIT_USAGE, RC_ERR_INVALID,
                            "%s: not UTF-8 text (bad byte at offset %zu); nothing was sent", path,
                            off + bad);
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
static void options_ignored(const Recall__SessionOptions *given,
                            const Recall__SessionOptions *have, char *buf, size_t n)
{
    buf[0] = 0;
    if (!have) return;
    size_t off = 0;
#define DIFF(fmt, ...)                                                                         \
    do {                                                                                       \
        if (off < n)                                                                           \
            off += (size_t)snprintf(buf + off, n - off, "%s" fmt, off ? ", " : "",           \
                                    __VA_ARGS__);                                              \
    } while (0)
#define DIFF_NUM(f, opt)                                                                       \
    if (given->f && given->f != have->f) DIFF("--" opt " %u (it has %u)", given->f, have->f)
#define DIFF_STR(f, opt)                                                                       \
    if (given->f && given->f[0] && strcmp(given->f, have->f ? have->f : ""))                  \
    DIFF("--" opt " %s (it has %s)", given->f, str_or(have->f, "-"))
    DIFF_NUM(window, "window");
    DIFF_STR(positional, "positional");
    DIFF_STR(memory, "memory");
    DIFF_NUM(k, "k");
    DIFF_NUM(knn_nlist, "nlist");
    DIFF_NUM(knn_nprobe, "nprobe");
    DIFF_STR(mem_dtype, "mem-dtype");
    if (given->gpu_memory_budget &&
        (given->gpu_memory_budget == BUDGET_NONE ? 0 : given->gpu_memory_budget) !=
            have->gpu_memory_budget) {
        char g[32] = "none", h[32] = "none";
        if (given->gpu_memory_budget != BUDGET_NONE)
            human_bytes(g, sizeof g, (double)given->gpu_memory_budget);
        if (have->gpu_memory_budget) human_bytes(h, sizeof h, (double)have->gpu_memory_budget);
        DIFF("--gpu-memory-budget %s (it has %s)", g, h);
    }
#undef DIFF_STR
#undef DIFF_NUM
#undef DIFF
}

/* One source of ingest text: a file name ("-": standard input), or an open stream f
 * (not closed here) that name only labels in messages. */
typedef struct ingest_src {
    const char *name;
    FILE *f;
} ingest_src;

/* Streams srcs[0..n_srcs) in order into the existing session st->session, whose state
 * (acked_seq, tokens, windows) st holds on entry; st counts what was acknowledged.
 * total: bytes expected, for the progress bar (0: unknown). stop (may be NULL): non-zero
 * stops after the next acknowledgement. Returns -1 when every chunk was acknowledged (all
 * of it durable), else the exit code of the problem it reported (with the partial state). */
static int ingest_stream(recall_client *c, const ingest_src *srcs, int n_srcs, double total,
                         size_t chunk_bytes, ingest_state *st, volatile sig_atomic_t *stop)
{
    const char *session = st->session;
    int n_files = n_srcs;
    /* Pipelining: at most `credit` chunks unacknowledged. The daemon says how many it
     * accepts in every ack; until the first one, send one at a time. A chunk refused as
     * BUSY (or refused for a gap behind a refused one) is resent, in order, once nothing is
     * in flight; an acknowledged chunk is never sent again. */
    enum { MAX_WINDOW = 256 };
    chunk win[MAX_WINDOW];
    int n_win = 0;
    uint32_t credit = 1;
    uint64_t next_seq = st->acked_seq + 1;
    int file_i = 0, busy_retries = 0, result = -1;
    FILE *f = NULL;
    recall_chunker *ch = NULL;
    progress pg;
    progress_init(&pg);
    const char *file_name = NULL;
    Recall__Request req;
    Recall__Response *r;
    rc_t rc;

    for (;;) {
        /* Fill the window with new chunks. */
        while (n_win < (int)credit && n_win < MAX_WINDOW && file_i <= n_files) {
            int awaiting_resend = 0;
            for (int i = 0; i < n_win; i++)
                awaiting_resend |= !win[i].req_id;
            if (awaiting_resend) break;
            if (!ch) {
                if (file_i == n_files) {
                    file_i++;
                    break;
                }
                file_name = srcs[file_i].name;
                f = srcs[file_i].f                 ? srcs[file_i].f
                    : strcmp(file_name, "-") ? fopen(file_name, "rb")
                                             : stdin;
                if (!f) {
                    ingest_partial(st);
                    result = report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot open %s: %s", file_name,
                                    strerror(errno));
                    goto done;
                }
                if (recall_chunker_create(f, chunk_bytes, &ch)) {
                    result = report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
                    goto done;
                }
            }
            char *text;
            size_t len, off;
            rc = recall_chunker_next(ch, &text, &len, &off);
            if (rc) {
                ingest_partial(st);
                result = report(EXIT_USAGE, rc, "cannot read %s", file_name);
                goto done;
            }
            if (!text) { /* end of this file */
                recall_chunker_destroy(&ch);
                if (f != stdin && f != srcs[file_i].f) fclose(f);
                f = NULL;
                file_i++;
                continue;
            }
            size_t bad;
            if (!recall_utf8_valid(text, len, &bad)) {
                free(text);
                ingest_partial(st);
                result = report(EXIT_USAGE, RC_ERR_INVALID,
                                "%s: not UTF-8 text (bad byte at offset %zu); nothing after it "
                                "was sent",
                                file_name, off + bad);
                goto done;
            }
            win[n_win++] = (chunk){.seq = next_seq++, .text = text, .len = len};
            chunk *k = &win[n_win - 1];
            Recall__IngestRequest ir = RECALL__INGEST_REQUEST__INIT;
            ir.session = (char *)session;
            ir.seq = k->seq;
            ir.text = k->text;
            req = new_request();
            req.body_case = RECALL__REQUEST__BODY_INGEST;
            req.ingest = &ir;
            rc = recall_client_send(c, &req, &k->req_id);
            k->sends = 1;
            if (rc) {
                ingest_partial(st);
                result = client_error(c, rc);
                goto done;
            }
        }
        if (n_win == 0) break; /* all sent and acknowledged */
        if (stop && *stop) {
            progress_clear(&pg);
            ingest_partial(st);
            result = report(EXIT_REMOTE, RC_ERR_SHUTDOWN, "ingest stopped by a signal");
            goto done;
        }

        /* Resend refused chunks once nothing is awaited. */
        int awaited = 0;
        for (int i = 0; i < n_win; i++)
            awaited += win[i].req_id != 0;
        if (!awaited) {
            if (++busy_retries > 200) {
                ingest_partial(st);
                result = report(EXIT_REMOTE, RC_ERR_BUSY, "daemon stayed busy; giving up");
                goto done;
            }
            usleep((useconds_t)(busy_retries < 10 ? 20000 * busy_retries : 200000));
            for (int i = 0; i < n_win && i < (int)credit; i++) {
                Recall__IngestRequest ir = RECALL__INGEST_REQUEST__INIT;
                ir.session = (char *)session;
                ir.seq = win[i].seq;
                ir.text = win[i].text;
                req = new_request();
                req.body_case = RECALL__REQUEST__BODY_INGEST;
                req.ingest = &ir;
                rc = recall_client_send(c, &req, &win[i].req_id);
                win[i].sends++;
                if (rc) {
                    ingest_partial(st);
                    result = client_error(c, rc);
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
            progress_clear(&pg);
            ingest_partial(st);
            result = client_error(c, rc);
            goto done;
        }
        int wi = 0;
        while (win[wi].req_id != r->id)
            wi++;
        int code = r->status ? r->status->code : 0;
        if (code == RC_ERR_BUSY || (code == RC_ERR_SEQUENCE && win[wi].seq > win[0].seq)) {
            /* Not taken: resend later. A gap error behind a refused chunk is the daemon
             * seeing our pipeline out of order, not a real conflict. */
            win[wi].req_id = 0;
            if (code == RC_ERR_BUSY && credit > 1) credit = (uint32_t)(n_win > 1 ? n_win - 1 : 1);
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        if (code) {
            progress_clear(&pg);
            ingest_partial(st);
            result = report(EXIT_REMOTE, code, "%s (chunk %llu of %s)",
                            str_or(r->status->message, rc_strerror((rc_t)code)),
                            (unsigned long long)win[wi].seq, session);
            recall__response__free_unpacked(r, NULL);
            goto done;
        }
        if (r->more) { /* progress inside a large chunk */
            if (r->body_case == RECALL__RESPONSE__BODY_PROGRESS && r->progress->total > 0)
                progress_draw(&pg, "ingest",
                              st->bytes_acked +
                                  (double)win[wi].len * r->progress->done / r->progress->total,
                              total, (double)st->tokens_added, 0);
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        if (r->body_case != RECALL__RESPONSE__BODY_INGEST) {
            recall__response__free_unpacked(r, NULL);
            ingest_partial(st);
            result = report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to an ingest chunk");
            goto done;
        }
        Recall__IngestResponse *ack = r->ingest;
        if (ack->duplicate && win[wi].sends == 1) {
            /* We sent this seq once and it was already taken: someone else is writing to
             * this session, and our chunk was not ingested. Stop rather than lose text. */
            recall__response__free_unpacked(r, NULL);
            ingest_partial(st);
            result = report(EXIT_REMOTE, RC_ERR_SEQUENCE,
                            "chunk %llu of session '%s' was already written by another client; "
                            "stopping (ingest into one session from one client at a time)",
                            (unsigned long long)win[wi].seq, session);
            goto done;
        }
        if (ack->seq > st->acked_seq) {
            st->acked_seq = ack->seq;
            st->tokens = ack->tokens;
            st->windows = ack->windows;
        }
        if (!ack->duplicate) st->tokens_added += ack->tokens_added;
        st->chunks_acked++;
        st->bytes_acked += (double)win[wi].len;
        if (ack->credit > 0) credit = ack->credit > MAX_WINDOW ? MAX_WINDOW : ack->credit;
        busy_retries = 0;
        recall__response__free_unpacked(r, NULL);
        free(win[wi].text);
        memmove(&win[wi], &win[wi + 1], (size_t)(n_win - wi - 1) * sizeof win[0]);
        n_win--;
        progress_draw(&pg, "ingest", st->bytes_acked, total, (double)st->tokens_added, 0);
    }
    progress_draw(&pg, "ingest", st->bytes_acked, total, (double)st->tokens_added, 1);
    progress_clear(&pg);
    result = -1;
done:
    for (int i = 0; i < n_win; i++)
        free(win[i].text);
    recall_chunker_destroy(&ch);
    if (f && f != stdin && (file_i >= n_srcs || f != srcs[file_i].f)) fclose(f);
    return result;
}

static int cmd_ingest(recall_client *c, const args *a)
{
    if (a->n_pos < 2)
        return usage_error(CMD_INGEST, "ingest needs a SESSION and at least one FILE");
    const char *session = a->pos[0];
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    uint64_t chunk_bytes = DEFAULT_CHUNK_BYTES;
    if (a->vals[O_CHUNK_BYTES] &&
        !parse_u64("chunk-bytes", a->vals[O_CHUNK_BYTES], 16, 256u << 20, &chunk_bytes, a->cmd, 1))
        return EXIT_USAGE;

    /* Every file is checked before anything is sent: a typo in the last name must not
     * leave the session half-fed. */
    const char **files = (const char **)a->pos + 1;
    int n_files = a->n_pos - 1, n_stdin = 0;
    double total = 0;
    for (int i = 0; i < n_files; i++) {
        struct stat stt;
        if (!strcmp(files[i], "-")) {
            if (++n_stdin > 1) return usage_error(CMD_INGEST, "'-' (stdin) given twice");
            if (fstat(STDIN_FILENO, &stt) == 0 && S_ISREG(stt.st_mode))
                total += stt.st_size;
            else
                total = -1e300; /* unknown */
            continue;
        }
        if (stat(files[i], &stt) != 0 || access(files[i], R_OK) != 0)
            return report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot read %s: %s", files[i],
                          strerror(errno));
        if (S_ISDIR(stt.st_mode))
            return report(EXIT_USAGE, RC_ERR_INVALID, "%s is a directory", files[i]);
        total += stt.st_size;
        int e = check_utf8_file(files[i], (size_t)chunk_bytes);
        if (e >= 0) return e;
    }
    if (total < 0) total = 0;

    Recall__Response *r;
    rc_t rc = recall_client_create_session(c, session, &so, 1, &r);
    if (rc) return client_error(c, rc);
    if (r->body_case != RECALL__RESPONSE__BODY_CREATE_SESSION || !r->create_session->info) {
        recall__response__free_unpacked(r, NULL);
        return report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to CreateSession");
    }
    int created = r->create_session->created;
    ingest_state st = {.session = session};
    st.acked_seq = r->create_session->info->last_seq;
    st.tokens = st.tokens_before = r->create_session->info->tokens;
    st.windows = r->create_session->info->windows;
    const Recall__SessionOptions *have = r->create_session->info->options;
    if (!created && any_opt && !g_quiet) {
        char diff[512];
        options_ignored(&so, have, diff, sizeof diff);
        if (diff[0])
            fprintf(stderr, "recall: session '%s' exists; it keeps its own options, not %s\n",
                    session, diff);
        else
            fprintf(stderr, "recall: session '%s' exists; it keeps its own options\n", session);
    }
    recall__response__free_unpacked(r, NULL);

    ingest_src *srcs = calloc((size_t)n_files, sizeof *srcs);
    if (!srcs) return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_files; i++)
        srcs[i].name = files[i];
    double t0 = now_s();
    int result = ingest_stream(c, srcs, n_files, total, (size_t)chunk_bytes, &st, NULL);
    free(srcs);
    if (result >= 0) return result;

    double secs = now_s() - t0;
    double rate = secs > 0 ? st.tokens_added / secs : 0;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", session);
        cJSON_AddBoolToObject(o, "created", created);
        cJSON_AddNumberToObject(o, "tokens_added", (double)st.tokens_added);
        cJSON_AddNumberToObject(o, "tokens", (double)st.tokens);
        cJSON_AddNumberToObject(o, "windows", (double)st.windows);
        cJSON_AddNumberToObject(o, "chunks", (double)st.chunks_acked);
        cJSON_AddNumberToObject(o, "last_seq", (double)st.acked_seq);
        cJSON_AddNumberToObject(o, "bytes", st.bytes_acked);
        cJSON_AddNumberToObject(o, "seconds", secs);
        cJSON_AddNumberToObject(o, "tokens_per_s", rate);
        json_print(o);
    } else if (!g_quiet) {
        char b[32];
        human_bytes(b, sizeof b, st.bytes_acked);
        fprintf(stderr,
                "ingested %llu tokens (%s, %llu chunks) into '%s' in %.2f s, %.0f tokens/s; "
                "session now %llu tokens, %llu windows\n",
                (unsigned long long)st.tokens_added, b, (unsigned long long)st.chunks_acked,
                session, secs, rate, (unsigned long long)st.tokens, (unsigned long long)st.windows);
    }
    return EXIT_OK;
}

/* ---------------------------------------------------------------------------------------
 * ask */

typedef struct ask_state {
    cJSON *tokens;
    char *answer;
    size_t len, cap;
    Recall__AskResponse final;
    char stop_reason[32];
    int got_final;
} ask_state;

static rc_t ask_cb(const Recall__Response *r, void *arg)
{
    ask_state *s = arg;
    if (r->body_case != RECALL__RESPONSE__BODY_ASK) return RC_OK; /* progress of the prefill */
    const Recall__AskResponse *a = r->ask;
    const char *t = a->text ? a->text : "";
    size_t n = strlen(t);
    if (n) {
        if (s->len + n + 1 > s->cap) {
            size_t cap = (s->cap ? s->cap * 2 : 1024) + n;
            char *nb = realloc(s->answer, cap);
            if (!nb) return RC_ERR_NOMEM;
            s->answer = nb, s->cap = cap;
        }
        memcpy(s->answer + s->len, t, n + 1);
        s->len += n;
        if (!g_json) {
            fwrite(t, 1, n, stdout);
            fflush(stdout); /* tokens are shown as they arrive */
        }
    }
    if (a->done) {
        s->final = *a;
        snprintf(s->stop_reason, sizeof s->stop_reason, "%s", str_or(a->stop_reason, ""));
        s->got_final = 1;
    } else {
        cJSON_AddItemToArray(s->tokens, cJSON_CreateNumber(a->token));
    }
    return RC_OK;
}

/* A copy of s in which every byte that does not start a valid UTF-8 sequence is replaced
 * by U+FFFD: JSON must be UTF-8, and a token may end in the middle of a character when the
 * daemon does not hold the bytes back. Caller frees. */
static char *utf8_sanitize(const char *s)
{
    size_t n = strlen(s), o = 0;
    char *out = malloc(3 * n + 1);
    if (!out) return NULL;
    while (*s) {
        size_t bad, len = strlen(s);
        if (recall_utf8_valid(s, len, &bad)) bad = len;
        memcpy(out + o, s, bad);
        o += bad;
        s += bad;
        if (*s) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            s++;
        }
    }
    out[o] = 0;
    return out;
}

static int cmd_ask(recall_client *c, const args *a)
{
    if (a->n_pos != 2)
        return usage_error(CMD_ASK, a->n_pos < 2 ? "ask needs a SESSION and a QUESTION"
                                                 : "ask takes one QUESTION (quote it)");
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = (char *)a->pos[0];
    ar.question = (char *)a->pos[1];
    size_t bad;
    if (!recall_utf8_valid(ar.question, strlen(ar.question), &bad))
        return usage_error(CMD_ASK, "the question is not UTF-8 text");
    uint64_t u;
    double d;
    if (a->vals[O_MAX_TOKENS]) {
        if (!parse_u64("max-tokens", a->vals[O_MAX_TOKENS], 1, UINT32_MAX, &u, a->cmd, 0))
            return EXIT_USAGE;
        ar.max_tokens = (uint32_t)u;
    }
    if (a->vals[O_TEMPERATURE]) {
        if (!parse_double("temperature", a->vals[O_TEMPERATURE], 0, 100, &d, a->cmd))
            return EXIT_USAGE;
        ar.temperature = (float)d;
    }
    if (a->vals[O_TOP_P]) {
        if (!parse_double("top-p", a->vals[O_TOP_P], 0, 1, &d, a->cmd)) return EXIT_USAGE;
        ar.top_p = (float)d;
    }
    if (a->vals[O_SEED]) {
        if (!parse_u64("seed", a->vals[O_SEED], 0, UINT64_MAX, &u, a->cmd, 0)) return EXIT_USAGE;
        ar.seed = u;
    }
    ar.append = a->vals[O_APPEND] != NULL;
    ar.ignore_eos = a->vals[O_IGNORE_EOS] != NULL;

    Recall__Request req = new_request();
    req.body_case = RECALL__REQUEST__BODY_ASK;
    req.ask = &ar;
    ask_state s = {.tokens = cJSON_CreateArray()};
    rc_t rc = recall_client_stream(c, &req, ask_cb, &s);
    int result;
    if (rc) {
        if (!g_json && s.len) fputc('\n', stdout); /* end the partial answer's line */
        fflush(stdout);
        result =
            rc == RC_ERR_NOMEM ? report(EXIT_REMOTE, rc, "out of memory") : client_error(c, rc);
    } else if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", ar.session);
        cJSON_AddStringToObject(o, "question", ar.question);
        char *clean = utf8_sanitize(s.answer ? s.answer : "");
        cJSON_AddStringToObject(o, "answer", clean ? clean : "");
        free(clean);
        cJSON_AddItemToObject(o, "tokens", s.tokens);
        s.tokens = NULL;
        cJSON_AddNumberToObject(o, "generated", s.final.generated);
        cJSON_AddStringToObject(o, "stop_reason", s.stop_reason);
        cJSON_AddNumberToObject(o, "prompt_tokens", s.final.prompt_tokens);
        cJSON_AddNumberToObject(o, "prefill_ms", s.final.prefill_ms);
        cJSON_AddNumberToObject(o, "decode_ms", s.final.decode_ms);
        json_print(o);
        result = EXIT_OK;
    } else {
        fputc('\n', stdout);
        fflush(stdout);
        if (!g_quiet && isatty(STDERR_FILENO) && s.got_final)
            fprintf(stderr, "[%u tokens, %s; prefill %.0f ms, decode %.0f ms]\n", s.final.generated,
                    s.stop_reason, s.final.prefill_ms, s.final.decode_ms);
        result = EXIT_OK;
    }
    cJSON_Delete(s.tokens);
    free(s.answer);
    return result;
}

/* ---------------------------------------------------------------------------------------
 * ppl */

static rc_t score_progress(const Recall__Response *r, void *arg)
{
    progress *p = arg;
    if (r->body_case == RECALL__RESPONSE__BODY_PROGRESS && p->on && r->progress->total) {
        double el = now_s() - p->t0, done = (double)r->progress->done,
               tot = (double)r->progress->total;
        char eta[32];
        human_duration(eta, sizeof eta, done > 0 ? el * (tot - done) / done : NAN);
        fprintf(stderr, "\r\033[Kscoring %.0f/%.0f  ETA %s", done, tot, eta);
        fflush(stderr);
    }
    return RC_OK;
}

static int cmd_ppl(recall_client *c, const args *a)
{
    const char *text_path = a->vals[O_TEXT];
    if (text_path && a->n_pos)
        return usage_error(CMD_PPL, "give either SESSION or --text FILE, not both");
    if (!text_path && a->n_pos != 1)
        return usage_error(CMD_PPL, a->n_pos ? "ppl takes one SESSION"
                                             : "ppl needs a SESSION or --text FILE");
    Recall__ScoreRequest sr = RECALL__SCORE_REQUEST__INIT;
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    if (!text_path && any_opt)
        return usage_error(CMD_PPL, "session options apply to ppl --text only (a session keeps "
                                    "the options it was created with)");
    char *text = NULL;
    size_t len;
    if (text_path) {
        int e = read_text_file(text_path, &text, &len);
        if (e >= 0) return e;
        sr.text = text;
        sr.add_bos = 1;
        sr.options = &so;
    } else {
        sr.session = (char *)a->pos[0];
    }
    Recall__Request req = new_request();
    req.body_case = RECALL__REQUEST__BODY_SCORE;
    req.score = &sr;
    progress pg;
    progress_init(&pg);
    Recall__Response *r;
    rc_t rc = recall_client_call(c, &req, &r, score_progress, &pg);
    progress_clear(&pg);
    free(text);
    if (rc) return client_error(c, rc);
    if (r->body_case != RECALL__RESPONSE__BODY_SCORE) {
        recall__response__free_unpacked(r, NULL);
        return report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to Score");
    }
    const Recall__ScoreResponse *s = r->score;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        if (text_path)
            cJSON_AddStringToObject(o, "text", text_path);
        else
            cJSON_AddStringToObject(o, "session", sr.session);
        cJSON_AddNumberToObject(o, "ppl", s->ppl); /* cJSON writes null for a non-finite ppl */
        cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
        cJSON_AddNumberToObject(o, "scored", (double)s->scored);
        cJSON_AddNumberToObject(o, "nll", s->nll);
        json_print(o);
    } else {
        printf("ppl %.2f over %llu tokens\n", s->ppl, (unsigned long long)s->tokens);
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

/* ---------------------------------------------------------------------------------------
 * sessions, info, drop, health, stats */

static int simple_call(recall_client *c, Recall__Request *req, Recall__Response__BodyCase want,
                       Recall__Response **out)
{
    rc_t rc = recall_client_call(c, req, out, NULL, NULL);
    if (rc) return client_error(c, rc);
    if ((*out)->body_case != want) {
        recall__response__free_unpacked(*out, NULL);
        *out = NULL;
        return report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer from the daemon");
    }
    return -1;
}

static int cmd_sessions(recall_client *c, const args *a)
{
    if (a->n_pos) return usage_error(CMD_SESSIONS, "sessions takes no arguments");
    Recall__Request req = new_request();
    Recall__ListSessionsRequest lr = RECALL__LIST_SESSIONS_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_LIST_SESSIONS;
    req.list_sessions = &lr;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_LIST_SESSIONS, &r);
    if (e >= 0) return e;
    const Recall__ListSessionsResponse *l = r->list_sessions;
    if (g_json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "sessions");
        for (size_t i = 0; i < l->n_sessions; i++)
            cJSON_AddItemToArray(arr, info_json(l->sessions[i]));
        json_print(o);
    } else if (!l->n_sessions) {
        printf("no sessions\n");
    } else {
        int w = 7;
        for (size_t i = 0; i < l->n_sessions; i++) {
            int n = (int)strlen(str_or(l->sessions[i]->name, ""));
            if (n > w) w = n;
        }
        printf("%-*s %12s %9s %7s %-11s %-6s %-11s %11s %8s  %s\n", w, "SESSION", "TOKENS",
               "WINDOWS", "WINDOW", "POSITIONAL", "MEMORY", "TIER", "DISK_BYTES", "LAST_SEQ",
               "CREATED");
        size_t bad = 0;
        for (size_t i = 0; i < l->n_sessions; i++) {
            const Recall__SessionInfo *s = l->sessions[i];
            const Recall__SessionOptions *o = s->options;
            char b[32], t[32];
            human_bytes(b, sizeof b, (double)s->memory_bytes_disk);
            format_time(t, sizeof t, s->created_unix);
            int unavailable = s->problem && s->problem[0];
            bad += unavailable;
            printf("%-*s %12llu %9llu %7u %-11s %-6s %-11s %11s %8llu  %s\n", w,
                   str_or(s->name, ""), (unsigned long long)s->tokens,
                   (unsigned long long)s->windows, o ? o->window : 0,
                   o ? str_or(o->positional, "-") : "-", o ? str_or(o->memory, "-") : "-",
                   unavailable ? "UNAVAILABLE" : str_or(s->tier, "-"), b,
                   (unsigned long long)s->last_seq, unavailable ? "-" : t);
        }
        for (size_t i = 0; i < l->n_sessions; i++)
            if (l->sessions[i]->problem && l->sessions[i]->problem[0])
                printf("%s: UNAVAILABLE: %s\n", str_or(l->sessions[i]->name, ""),
                       l->sessions[i]->problem);
        if (bad)
            printf("%zu session%s unavailable: recall verify SESSION checks one again, recall "
                   "drop SESSION removes it\n",
                   bad, bad == 1 ? " is" : "s are");
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

static int cmd_info(recall_client *c, const args *a)
{
    if (a->n_pos != 1) return usage_error(CMD_INFO, "info needs exactly one SESSION");
    Recall__Request req = new_request();
    Recall__SessionInfoRequest ir = RECALL__SESSION_INFO_REQUEST__INIT;
    ir.session = (char *)a->pos[0];
    req.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
    req.session_info = &ir;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_SESSION_INFO, &r);
    if (e >= 0) return e;
    const Recall__SessionInfo *s = r->session_info->info;
    if (!s) {
        recall__response__free_unpacked(r, NULL);
        return report(EXIT_REMOTE, RC_ERR_FORMAT, "the daemon sent no session info");
    }
    if (g_json) {
        json_print(info_json(s));
    } else {
        const Recall__SessionOptions *o = s->options;
        char t[32], bd[32], bh[32], bk[32];
        format_time(t, sizeof t, s->created_unix);
        human_bytes(bd, sizeof bd, (double)s->memory_bytes_device);
        human_bytes(bh, sizeof bh, (double)s->memory_bytes_host);
        human_bytes(bk, sizeof bk, (double)s->memory_bytes_disk);
        printf("session        %s\n", str_or(s->name, ""));
        if (s->problem && s->problem[0]) printf("UNAVAILABLE    %s\n", s->problem);
        printf("tier           %s\n", str_or(s->tier, "-"));
        printf("created        %s\n", t);
        printf("tokens         %llu\n", (unsigned long long)s->tokens);
        printf("windows        %llu\n", (unsigned long long)s->windows);
        printf("pending tokens %llu\n", (unsigned long long)s->pending_tokens);
        printf("memory tokens  %llu\n", (unsigned long long)s->memory_tokens);
        printf("memory bytes   device %s, host %s, disk %s\n", bd, bh, bk);
        printf("last seq       %llu\n", (unsigned long long)s->last_seq);
        printf("ingest chunks  %llu\n", (unsigned long long)s->ingest_chunks);
        if (o) {
            printf("window         %u\n", o->window);
            printf("positional     %s", str_or(o->positional, "-"));
            if (o->positional && !strcmp(o->positional, "self-extend"))
                printf(" (group %u, neighbor %u)", o->group, o->neighbor);
            else if (o->positional && !strcmp(o->positional, "dca"))
                printf(" (chunk size %u, local window %u)", o->chunk_size, o->local_window);
            printf("\nmemory         %s", str_or(o->memory, "-"));
            if (o->memory && !strcmp(o->memory, "knn")) {
                printf(" (k %u, ", o->k);
                if (o->knn_nlist)
                    printf("nlist %u, ", o->knn_nlist);
                else
                    printf("nlist auto, ");
                if (o->knn_nprobe)
                    printf("nprobe %u)", o->knn_nprobe);
                else
                    printf("nprobe default)");
            }
            char gb[32] = "none";
            if (o->gpu_memory_budget) human_bytes(gb, sizeof gb, (double)o->gpu_memory_budget);
            printf("\ngpu budget     %s\n", gb);
            printf("last context   %u\n", o->last_context);
            printf("mem dtype      %s\n", str_or(o->mem_dtype, "-"));
        }
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

static int cmd_drop(recall_client *c, const args *a)
{
    if (a->n_pos != 1) return usage_error(CMD_DROP, "drop needs exactly one SESSION");
    Recall__Request req = new_request();
    Recall__DropSessionRequest dr = RECALL__DROP_SESSION_REQUEST__INIT;
    dr.session = (char *)a->pos[0];
    req.body_case = RECALL__REQUEST__BODY_DROP_SESSION;
    req.drop_session = &dr;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_DROP_SESSION, &r);
    if (e >= 0) return e;
    recall__response__free_unpacked(r, NULL);
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dropped", dr.session);
        json_print(o);
    } else if (!g_quiet) {
        printf("dropped session '%s'\n", dr.session);
    }
    return EXIT_OK;
}

static int cmd_health(recall_client *c, const args *a)
{
    if (a->n_pos) return usage_error(CMD_HEALTH, "health takes no arguments");
    Recall__Request req = new_request();
    Recall__HealthRequest hr = RECALL__HEALTH_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_HEALTH;
    req.health = &hr;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_HEALTH, &r);
    if (e >= 0) return e;
    const Recall__HealthResponse *h = r->health;
    int ok = h->ok;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", ok);
        cJSON_AddStringToObject(o, "version", str_or(h->version, ""));
        cJSON_AddStringToObject(o, "model", str_or(h->model, ""));
        cJSON_AddStringToObject(o, "device", str_or(h->device, ""));
        cJSON_AddStringToObject(o, "endpoint", recall_client_endpoint(c));
        json_print(o);
    } else {
        printf("%s: recalld %s at %s\nmodel:  %s\ndevice: %s\n", ok ? "ok" : "NOT OK",
               str_or(h->version, "?"), recall_client_endpoint(c), str_or(h->model, "?"),
               str_or(h->device, "?"));
    }
    recall__response__free_unpacked(r, NULL);
    return ok ? EXIT_OK : EXIT_REMOTE;
}

static int cmd_stats(recall_client *c, const args *a)
{
    if (a->n_pos) return usage_error(CMD_STATS, "stats takes no arguments");
    Recall__Request req = new_request();
    Recall__StatsRequest sr = RECALL__STATS_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_STATS;
    req.stats = &sr;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_STATS, &r);
    if (e >= 0) return e;
    const Recall__StatsResponse *s = r->stats;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "uptime_s", s->uptime_s);
        cJSON_AddNumberToObject(o, "sessions", s->sessions);
        cJSON_AddNumberToObject(o, "requests", (double)s->requests);
        cJSON_AddNumberToObject(o, "errors", (double)s->errors);
        cJSON_AddNumberToObject(o, "tokens_ingested", (double)s->tokens_ingested);
        cJSON_AddNumberToObject(o, "tokens_generated", (double)s->tokens_generated);
        cJSON_AddNumberToObject(o, "memory_tokens", (double)s->memory_tokens);
        cJSON_AddNumberToObject(o, "memory_bytes_device", (double)s->memory_bytes_device);
        cJSON_AddNumberToObject(o, "memory_bytes_host", (double)s->memory_bytes_host);
        cJSON_AddNumberToObject(o, "memory_bytes_disk", (double)s->memory_bytes_disk);
        cJSON_AddStringToObject(o, "device", str_or(s->device, ""));
        cJSON_AddStringToObject(o, "model", str_or(s->model, ""));
        cJSON_AddNumberToObject(o, "host_budget", (double)s->host_budget);
        cJSON_AddNumberToObject(o, "gpu_budget", (double)s->gpu_budget);
        cJSON_AddNumberToObject(o, "sessions_gpu", (double)s->sessions_gpu);
        cJSON_AddNumberToObject(o, "sessions_host", (double)s->sessions_host);
        cJSON_AddNumberToObject(o, "sessions_disk", (double)s->sessions_disk);
        cJSON_AddNumberToObject(o, "sessions_unavailable", (double)s->sessions_unavailable);
        cJSON_AddNumberToObject(o, "loads", (double)s->loads);
        cJSON_AddNumberToObject(o, "evictions", (double)s->evictions);
        json_print(o);
    } else {
        char up[32], bd[32], bh[32], bk[32], hb[32] = "none";
        if (s->host_budget) human_bytes(hb, sizeof hb, (double)s->host_budget);
        human_duration(up, sizeof up, s->uptime_s);
        human_bytes(bd, sizeof bd, (double)s->memory_bytes_device);
        human_bytes(bh, sizeof bh, (double)s->memory_bytes_host);
        human_bytes(bk, sizeof bk, (double)s->memory_bytes_disk);
        printf("uptime           %s\n", up);
        printf("model            %s\n", str_or(s->model, "?"));
        printf("device           %s\n", str_or(s->device, "?"));
        printf("sessions         %u\n", s->sessions);
        printf("requests         %llu (%llu errors)\n", (unsigned long long)s->requests,
               (unsigned long long)s->errors);
        printf("tokens ingested  %llu\n", (unsigned long long)s->tokens_ingested);
        printf("tokens generated %llu\n", (unsigned long long)s->tokens_generated);
        printf("memory tokens    %llu\n", (unsigned long long)s->memory_tokens);
        printf("memory bytes     device %s, host %s, disk %s\n", bd, bh, bk);
        printf("host budget      %s\n", hb);
        printf("sessions by tier gpu %llu, host %llu, disk %llu, unavailable %llu\n",
               (unsigned long long)s->sessions_gpu, (unsigned long long)s->sessions_host,
               (unsigned long long)s->sessions_disk, (unsigned long long)s->sessions_unavailable);
        printf("rows moved       %llu loads from disk, %llu evictions\n",
               (unsigned long long)s->loads, (unsigned long long)s->evictions);
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

static int cmd_verify(recall_client *c, const args *a)
{
    if (a->n_pos != 1) return usage_error(CMD_VERIFY, "verify needs exactly one SESSION");
    Recall__Request req = new_request();
    Recall__VerifySessionRequest vr = RECALL__VERIFY_SESSION_REQUEST__INIT;
    vr.session = (char *)a->pos[0];
    req.body_case = RECALL__REQUEST__BODY_VERIFY_SESSION;
    req.verify_session = &vr;
    Recall__Response *r;
    int e = simple_call(c, &req, RECALL__RESPONSE__BODY_VERIFY_SESSION, &r);
    if (e >= 0) return e;
    const Recall__VerifySessionResponse *v = r->verify_session;
    int ok = v->ok;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", vr.session);
        cJSON_AddBoolToObject(o, "ok", ok);
        cJSON_AddNumberToObject(o, "windows", (double)v->windows);
        cJSON_AddNumberToObject(o, "bad_windows", (double)v->bad_windows);
        cJSON_AddNumberToObject(o, "bytes_read", (double)v->bytes_read);
        cJSON_AddNumberToObject(o, "tokens", (double)v->tokens);
        cJSON_AddNumberToObject(o, "seconds", v->seconds);
        if (!ok) cJSON_AddStringToObject(o, "problem", str_or(v->problem, ""));
        json_print(o);
    } else {
        char b[32];
        human_bytes(b, sizeof b, (double)v->bytes_read);
        if (ok)
            printf("session '%s' is intact: %llu windows (%s of rows) and %llu tokens checked "
                   "in %.2f s\n",
                   vr.session, (unsigned long long)v->windows, b, (unsigned long long)v->tokens,
                   v->seconds);
        else
            printf("session '%s' is DAMAGED: %s\n%llu of %llu windows fail their checksums; the "
                   "session is unavailable until it verifies clean (or is dropped)\n",
                   vr.session, str_or(v->problem, "?"), (unsigned long long)v->bad_windows,
                   (unsigned long long)v->windows);
    }
    recall__response__free_unpacked(r, NULL);
    return ok ? EXIT_OK : EXIT_REMOTE;
}

/* ---------------------------------------------------------------------------------------
 * passkey (the test itself is clients/passkey.c) */

static volatile sig_atomic_t g_passkey_stop;

static void passkey_on_signal(int sig)
{
    (void)sig;
    g_passkey_stop = 1;
}

static void passkey_on_phase(const char *what, void *arg)
{
    (void)arg;
    fprintf(stderr, "passkey: %s\n", what);
}

static void passkey_on_trial(const passkey_trial_t *t, void *arg)
{
    (void)arg;
    char l[32];
    passkey_length_label(t->target, l, sizeof l);
    fprintf(stderr, "[%*d/%d] %s (%zu tokens) depth %3.0f%% key %5u -> '%s' %s  %.1f s\n",
            t->total >= 100 ? 4 : 2, t->index, t->total, l, t->tokens, 100 * t->depth, t->key,
            t->answer, t->pass ? "PASS" : "fail", t->seconds);
}

static int prefix_ok(const char *p)
{
    if (!p[0] || p[0] == '.' || strlen(p) > 96) return 0;
    for (const char *q = p; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
              strchr("._-:@+", *q)))
            return 0;
    return 1;
}

static int cmd_passkey(recall_client *c, const args *a)
{
    if (a->n_pos) return usage_error(CMD_PASSKEY, "passkey takes no arguments, only options");
    if (!a->vals[O_TOKENS])
        return usage_error(CMD_PASSKEY, "passkey needs --tokens, e.g. --tokens 4k,16k,64k,256k");
    uint64_t lengths[PASSKEY_MAX_LENGTHS];
    int n_lengths;
    char err[1024];
    if (passkey_parse_lengths(a->vals[O_TOKENS], lengths, PASSKEY_MAX_LENGTHS, &n_lengths, err,
                              sizeof err))
        return usage_error(CMD_PASSKEY, "%s", err);
    uint64_t depths = 10, trials = 5, seed = 1;
    if (a->vals[O_DEPTHS] &&
        !parse_u64("depths", a->vals[O_DEPTHS], 1, PASSKEY_MAX_DEPTHS, &depths, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_TRIALS] && !parse_u64("trials", a->vals[O_TRIALS], 1, 100000, &trials, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_SEED] && !parse_u64("seed", a->vals[O_SEED], 0, UINT64_MAX, &seed, a->cmd, 0))
        return EXIT_USAGE;
    char prefix[128];
    if (a->vals[O_SESSION_PREFIX]) {
        if (!prefix_ok(a->vals[O_SESSION_PREFIX]))
            return usage_error(CMD_PASSKEY,
                               "--session-prefix must be 1 to 96 letters, digits and . _ - : @ + "
                               "not starting with '.', not '%s'",
                               a->vals[O_SESSION_PREFIX]);
        snprintf(prefix, sizeof prefix, "%s", a->vals[O_SESSION_PREFIX]);
    } else {
        snprintf(prefix, sizeof prefix, "passkey-%ld", (long)getpid());
    }
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    const char *png = a->vals[O_PNG];
    if (png && !png[0]) return usage_error(CMD_PASSKEY, "--png needs a file name");

    passkey_cfg_t cfg = {.lengths = lengths,
                         .n_lengths = n_lengths,
                         .n_depths = (int)depths,
                         .trials = (int)trials,
                         .seed = seed,
                         .session_prefix = prefix,
                         .keep = a->vals[O_KEEP] != NULL,
                         .session_opts = any_opt ? &so : NULL,
                         .stop = &g_passkey_stop};
    if (!g_quiet && isatty(STDERR_FILENO)) {
        cfg.on_trial = passkey_on_trial;
        cfg.on_phase = passkey_on_phase;
    }
    passkey_result_t res;
    if (passkey_result_init(&res, &cfg))
        return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory for %llu trials",
                      (unsigned long long)(n_lengths * depths * trials));
    /* No SA_RESTART: Ctrl-C ends the step in progress as soon as its answer is in, and the
     * trial's session is still dropped. */
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = passkey_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc_t rc = passkey_run(c, &cfg, &res, err, sizeof err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    int result = EXIT_OK;
    char png_err[512] = "";
    int png_ok = 0;
    if (png && res.done > 0) {
        png_ok = passkey_write_png(&res, png, png_err, sizeof png_err) == RC_OK;
        if (!png_ok && !rc) {
            result = report(EXIT_USAGE, RC_ERR_IO, "%s", png_err);
            passkey_result_free(&res);
            return result;
        }
    }
    if (rc) {
        if (res.done > 0) {
            if (g_json) {
                char *js = passkey_result_json(&res, png_ok ? png : NULL);
                g_err_extra = js ? cJSON_Parse(js) : NULL;
                free(js);
            } else {
                fprintf(stderr, "recall: passkey stopped; the trials done so far:\n");
                passkey_print_table(stderr, &res);
            }
        }
        int remote = recall_client_error_remote(c);
        int code = rc == RC_ERR_SHUTDOWN  ? EXIT_REMOTE
                   : remote               ? EXIT_REMOTE
                   : rc == RC_ERR_IO      ? EXIT_CONNECT
                   : rc == RC_ERR_INVALID ? EXIT_USAGE
                                          : EXIT_REMOTE;
        result = report(code, rc, "%s", err);
    } else if (g_json) {
        char *js = passkey_result_json(&res, png_ok ? png : NULL);
        if (!js) {
            result = report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
        } else {
            puts(js);
            fflush(stdout);
            free(js);
        }
    } else {
        passkey_print_table(stdout, &res);
        if (png_ok && !g_quiet) printf("heatmap written to %s\n", png);
    }
    passkey_result_free(&res);
    return result;
}

/* ---------------------------------------------------------------------------------------
 * bench */

static volatile sig_atomic_t g_bench_stop;

static void bench_on_signal(int sig)
{
    (void)sig;
    g_bench_stop = 1;
}

typedef struct bench_ask {
    double t_first; /* now_s() at the first streamed token; 0 before */
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
        if (!b->t_first) b->t_first = now_s();
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
        return report(EXIT_REMOTE, rc, "%s: stopped by a signal", what);
    if (rc == RC_ERR_NOMEM) return report(EXIT_REMOTE, rc, "%s: out of memory", what);
    const char *m = recall_client_error(c);
    return report(recall_client_error_remote(c) ? EXIT_REMOTE : EXIT_CONNECT, rc, "%s: %s", what,
                  m[0] ? m : rc_strerror(rc));
}

#define BENCH_SAMPLE_BYTES 16384
#define BENCH_TEXT_SEED 1

static int cmd_bench(recall_client *c, const args *a)
{
    /* Everything the user typed is checked before the daemon is asked anything. */
    if (a->n_pos) return usage_error(CMD_BENCH, "bench takes no arguments, only options");
    uint64_t target = 64 * 1024, max_tokens = 32, chunk_bytes = DEFAULT_CHUNK_BYTES;
    char err[1024];
    if (a->vals[O_TOKENS]) {
        int n;
        if (strchr(a->vals[O_TOKENS], ','))
            return usage_error(CMD_BENCH, "--tokens takes one length, not a list ('%s')",
                               a->vals[O_TOKENS]);
        if (passkey_parse_lengths(a->vals[O_TOKENS], &target, 1, &n, err, sizeof err))
            return usage_error(CMD_BENCH, "%s", err);
    }
    if (a->vals[O_MAX_TOKENS] &&
        !parse_u64("max-tokens", a->vals[O_MAX_TOKENS], 1, 1 << 20, &max_tokens, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_CHUNK_BYTES] &&
        !parse_u64("chunk-bytes", a->vals[O_CHUNK_BYTES], 16, 256u << 20, &chunk_bytes, a->cmd, 1))
        return EXIT_USAGE;
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    int keep = a->vals[O_KEEP] != NULL;

    /* Health first: it says the daemon is there (before anything is created) and names
     * the model and device for the report. */
    Recall__Request req = new_request();
    Recall__HealthRequest hr = RECALL__HEALTH_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_HEALTH;
    req.health = &hr;
    Recall__Response *r;
    rc_t rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (rc) return client_error(c, rc);
    char model[256] = "", device[256] = "";
    if (r->body_case == RECALL__RESPONSE__BODY_HEALTH) {
        snprintf(model, sizeof model, "%s", str_or(r->health->model, ""));
        snprintf(device, sizeof device, "%s", str_or(r->health->device, ""));
    }
    recall__response__free_unpacked(r, NULL);

    /* The text's size in bytes: the filler's bytes per token, measured on a sample with
     * the daemon's tokenizer (the text is uniform, so the ratio carries over). A daemon
     * without Tokenize gets 4 bytes per token; the daemon's count is reported either way. */
    char *text = NULL, *sample = NULL;
    double bytes_per_token = 4.0;
    if (bench_text(BENCH_SAMPLE_BYTES, BENCH_TEXT_SEED, &sample))
        return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
    size_t n_sample = 0;
    rc = passkey_tokenize_rpc(c, sample, BENCH_SAMPLE_BYTES, 0, 1, NULL, &n_sample, err,
                              sizeof err);
    free(sample);
    if (rc == RC_ERR_IO || rc == RC_ERR_NOMEM) return bench_failed(c, rc, "cannot tokenize");
    if (!rc && n_sample > 0)
        bytes_per_token = (double)BENCH_SAMPLE_BYTES / (double)n_sample;
    else if (!g_quiet)
        fprintf(stderr, "recall: the daemon does not tokenize (%s); assuming 4 bytes a token\n",
                err);
    size_t n_bytes = (size_t)((double)target * bytes_per_token + 0.5);
    if (n_bytes < 1) n_bytes = 1;
    if (bench_text(n_bytes, BENCH_TEXT_SEED, &text))
        return report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory for %zu bytes of text", n_bytes);

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
    ingest_state st = {.session = session};
    if (r->body_case == RECALL__RESPONSE__BODY_CREATE_SESSION && r->create_session->info) {
        st.acked_seq = r->create_session->info->last_seq;
        st.tokens = st.tokens_before = r->create_session->info->tokens;
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
        result = report(EXIT_REMOTE, RC_ERR_NOMEM, "cannot open the text as a stream: %s",
                        strerror(errno));
        goto out;
    }
    ingest_src src = {.name = "the bench text", .f = mem};
    double t0 = now_s();
    result = ingest_stream(c, &src, 1, (double)n_bytes, (size_t)chunk_bytes, &st, &g_bench_stop);
    double ingest_s = now_s() - t0;
    if (result >= 0) goto out;

    /* The question, greedy, G tokens whatever the model says. */
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = session;
    ar.question = (char *)BENCH_QUESTION;
    ar.max_tokens = (uint32_t)max_tokens;
    ar.temperature = 0;
    ar.ignore_eos = 1;
    req = new_request();
    req.body_case = RECALL__REQUEST__BODY_ASK;
    req.ask = &ar;
    bench_ask ba = {0};
    double t_ask = now_s();
    rc = recall_client_stream(c, &req, bench_ask_cb, &ba);
    if (rc) {
        result = bench_failed(c, rc, "the question failed");
        goto out;
    }
    if (!ba.got_final) {
        result = report(EXIT_REMOTE, RC_ERR_FORMAT, "the answer ended without its summary");
        goto out;
    }

    Recall__SessionInfoRequest ir = RECALL__SESSION_INFO_REQUEST__INIT;
    ir.session = session;
    req = new_request();
    req.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
    req.session_info = &ir;
    rc = recall_client_call(c, &req, &r, NULL, NULL);
    if (rc) {
        result = bench_failed(c, rc, "cannot read the session's info");
        goto out;
    }
    if (r->body_case != RECALL__RESPONSE__BODY_SESSION_INFO || !r->session_info->info) {
        recall__response__free_unpacked(r, NULL);
        result = report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to SessionInfo");
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
    if (g_json) {
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
        cJSON_AddItemToObject(o, "options", options_json(info->options));
        json_print(o);
    } else {
        char b[32], bh[32], bd[32], bk[32];
        human_bytes(b, sizeof b, (double)n_bytes);
        human_bytes(bh, sizeof bh, (double)info->memory_bytes_host);
        human_bytes(bd, sizeof bd, (double)info->memory_bytes_device);
        human_bytes(bk, sizeof bk, (double)info->memory_bytes_disk);
        const Recall__SessionOptions *o = info->options;
        printf("session        %s (%s)\n", session, keep ? "kept" : "dropped");
        printf("model          %s\n", str_or(model, "?"));
        printf("device         %s\n", str_or(device, "?"));
        printf("options        window %u, %s, memory %s", o ? o->window : 0,
               o ? str_or(o->positional, "-") : "-", o ? str_or(o->memory, "-") : "-");
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
            fprintf(stderr, "recall: could not drop session '%s' (%s); drop it with 'recall drop %s'\n",
                    session, recall_client_error(c), session);
    } else if (created && keep && result != EXIT_OK && !g_quiet) {
        fprintf(stderr, "recall: session '%s' kept (--keep)\n", session);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return result;
}

/* ---------------------------------------------------------------------------------------
 * main */

int main(int argc, char **argv)
{
    args a;
    int e = parse_args(argc, argv, &a);
    if (e >= 0) return e;

    if (a.cmd == CMD_HELP) {
        if (a.n_pos > 1) return usage_error(CMD_HELP, "help takes at most one COMMAND");
        if (a.n_pos == 1) {
            cmd_t c = find_cmd(a.pos[0]);
            if (c == CMD_NONE) return usage_error(CMD_HELP, "no command '%s'", a.pos[0]);
            print_cmd_help(c);
        } else {
            print_overall_help(stdout);
        }
        return EXIT_OK;
    }
    if (a.vals[O_HELP]) {
        if (a.cmd == CMD_NONE)
            print_overall_help(stdout);
        else
            print_cmd_help(a.cmd);
        return EXIT_OK;
    }
    if (a.cmd == CMD_NONE) {
        print_overall_help(stderr);
        return usage_error(CMD_NONE, "no command given");
    }

    const char *endpoint = a.vals[O_CONNECT];
    if (!endpoint) endpoint = getenv("RECALL_CONNECT");
    if (!endpoint || !*endpoint) endpoint = DEFAULT_ENDPOINT;
    int timeout_ms = RECALL_CLIENT_DEFAULT_TIMEOUT_MS;
    if (a.vals[O_TIMEOUT]) {
        double t;
        if (!parse_double("timeout", a.vals[O_TIMEOUT], 0.001, 86400 * 365, &t, a.cmd))
            return EXIT_USAGE;
        timeout_ms = (int)(t * 1000 + 0.5);
        if (timeout_ms < 1) timeout_ms = 1;
    }
    recall_client *c;
    const char *err;
    rc_t rc = recall_client_create(endpoint, &c, &err);
    if (rc)
        return rc == RC_ERR_INVALID ? usage_error(a.cmd, "%s", err)
                                    : report(EXIT_CONNECT, rc, "%s", err);
    recall_client_set_timeout(c, timeout_ms);
    recall_client_set_connect_timeout(c, timeout_ms < RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS
                                             ? timeout_ms
                                             : RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS);

    switch (a.cmd) {
    case CMD_INGEST:
        e = cmd_ingest(c, &a);
        break;
    case CMD_ASK:
        e = cmd_ask(c, &a);
        break;
    case CMD_PPL:
        e = cmd_ppl(c, &a);
        break;
    case CMD_SESSIONS:
        e = cmd_sessions(c, &a);
        break;
    case CMD_INFO:
        e = cmd_info(c, &a);
        break;
    case CMD_DROP:
        e = cmd_drop(c, &a);
        break;
    case CMD_HEALTH:
        e = cmd_health(c, &a);
        break;
    case CMD_STATS:
        e = cmd_stats(c, &a);
        break;
    case CMD_VERIFY:
        e = cmd_verify(c, &a);
        break;
    case CMD_PASSKEY:
        e = cmd_passkey(c, &a);
        break;
    case CMD_BENCH:
        e = cmd_bench(c, &a);
        break;
    default:
        e = EXIT_USAGE;
        break;
    }
    recall_client_destroy(&c);
    return e;
}
