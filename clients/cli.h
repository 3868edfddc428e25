/* cli.h — what the files of the `recall` command share: the command table, the parsed
 * command line, the one place that reports errors, and small helpers.
 *
 * recall.c holds the table and main; each cmd_*.c file holds one group of commands, each
 * command a cli_command with its help text and its run function; cli.c holds the rest.
 *
 * Output: for people by default, and exactly one JSON object on stdout with --json
 * (cli_json). Every failure goes through cli_report, which prints it (as the JSON error
 * object under --json) and returns the exit status; a command returns that status as is.
 * Exit statuses: 0 ok, 1 the daemon answered with an error, 2 usage error, 3 cannot
 * connect or no answer in time.
 *
 * Everything here runs on the one thread of the program; nothing is thread-safe. */
#ifndef RECALL_CLIENTS_CLI_H
#define RECALL_CLIENTS_CLI_H

#include <cJSON.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "clients/client.h"
#include "clients/ingest.h"
#include "common/rc.h"

enum { EXIT_OK = 0, EXIT_REMOTE = 1, EXIT_USAGE = 2, EXIT_CONNECT = 3 };

/* ---------------------------------------------------------------------------------------
 * Commands and options */

/* In the order `recall --help` lists them. */
typedef enum cli_cmd_id {
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
    CMD_KEYGEN,
    CMD_COUNT
} cli_cmd_id;

#define B(c) (1u << (c))
#define ALL_CMDS 0xFFFFFFFFu
#define SESSION_OPT_CMDS (B(CMD_INGEST) | B(CMD_PPL) | B(CMD_PASSKEY) | B(CMD_BENCH))

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
    O_MEMORY_DTYPE, /* --memory-dtype, the same option as --mem-dtype */
    O_ROPE_SCALING,
    O_ROPE_FACTOR,
    O_NO_CHUNK_SCALE,
    O_GALI_MODE,
    O_GALI_NOISE,
    O_CHUNK_BYTES,
    O_MAX_TOKENS,
    O_TEMPERATURE,
    O_TOP_P,
    O_SEED,
    O_APPEND,
    O_IGNORE_EOS,
    O_STOP,
    O_CHAT,
    O_SYSTEM,
    O_TEXT,
    O_TOKENS,
    O_DEPTHS,
    O_TRIALS,
    O_PNG,
    O_SESSION_PREFIX,
    O_KEEP,
    O_CURVE_KEYS,
    O_SERVER_KEY,
    O_NAME,
    O_COUNT
} opt_id;

typedef struct opt_spec {
    const char *name; /* without the leading "--" */
    char short_name;
    int has_arg;
    unsigned cmds; /* commands that accept it: B(CMD_...) bits */
} opt_spec;

extern const opt_spec cli_opt_specs[O_COUNT];

/* The command line, parsed. Every pointer points into argv. */
typedef struct cli_args {
    cli_cmd_id cmd;
    const char *vals[O_COUNT]; /* value, or "1" for flags; NULL when absent */
    const char *pos[64];       /* positional arguments after the command */
    int n_pos;
    const char *stops[16];     /* every --stop, in order (the option repeats) */
    int n_stops;
} cli_args;

/* One command. run is called with a connected client (owned by main) and returns the exit
 * status, having reported any failure; NULL for `help`, which main answers itself. */
typedef struct cli_command {
    const char *name;
    const char *synopsis;
    const char *summary;
    const char *help; /* details and examples */
    int (*run)(recall_client *c, const cli_args *a);
} cli_command;

/* The table (recall.c), indexed by cli_cmd_id. */
extern const cli_command *const cli_commands[CMD_COUNT];

/* The commands, one group a file. */
extern const cli_command cli_cmd_ingest; /* cmd_ingest.c */
extern const cli_command cli_cmd_ask;    /* cmd_ask.c */
extern const cli_command cli_cmd_ppl;    /* cmd_ppl.c */
extern const cli_command cli_cmd_sessions, cli_cmd_info, cli_cmd_drop,
    cli_cmd_verify;                                     /* cmd_session.c */
extern const cli_command cli_cmd_health, cli_cmd_stats; /* cmd_daemon.c */
extern const cli_command cli_cmd_passkey;               /* cmd_passkey.c */
extern const cli_command cli_cmd_bench;                 /* cmd_bench.c */
/* cmd_keygen.c: needs no daemon, so main runs it before connecting (its run is NULL). */
extern const cli_command cli_cmd_keygen;
int cli_keygen(const cli_args *a);

/* The command named s, or CMD_NONE. */
cli_cmd_id cli_find_cmd(const char *s);

/* Parses argv into *a: options may come before or after the command; "--" ends options.
 * Sets cli_json and cli_quiet. Returns -1 on success, else the exit status (a usage error
 * has been printed). */
int cli_parse_args(int argc, char **argv, cli_args *a);

/* ---------------------------------------------------------------------------------------
 * Output */

extern int cli_json;  /* --json */
extern int cli_quiet; /* --quiet */
/* Extra members for the next JSON error object, as "partial" (what an interrupted ingest
 * or passkey run got done); cli_report takes ownership and clears it. */
extern cJSON *cli_err_extra;

/* Prints o as one line on stdout and frees it. */
void cli_json_print(cJSON *o);

/* Reports an error and returns exit_code. code is an rc_t (the daemon's, or local). Under
 * --json the error is a JSON object on stdout; the message also goes to stderr unless it
 * is the daemon's verdict under --json. */
int cli_report(int exit_code, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A usage error: reported, followed by the command's synopsis; returns EXIT_USAGE. */
int cli_usage_error(cli_cmd_id cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The client's error after rc: the daemon's verdict (exit 1) or the transport's (exit 3). */
int cli_client_error(recall_client *c, rc_t rc);

/* A Request whose body is `body`, the request message of kind `kind` (a
 * Recall__SessionInfoRequest * for RECALL__REQUEST__BODY_SESSION_INFO, ...). body stays
 * the caller's and must outlive the Request's use. */
Recall__Request cli_request(Recall__Request__BodyCase kind, void *body);

/* One request (kind and body as cli_request), one answer of body `want`: -1 with *out
 * (caller frees) on success, else the exit status of the reported failure (*out NULL). */
int cli_simple_call(recall_client *c, Recall__Request__BodyCase kind, void *body,
                    Recall__Response__BodyCase want, Recall__Response **out);

/* ---------------------------------------------------------------------------------------
 * Option values: 1 on success; 0 after reporting a usage error that names the option. */

/* A whole number in [lo, hi]; allow_suffix takes K and M (x1024, x1048576). */
int cli_parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out,
                  cli_cmd_id cmd, int allow_suffix);
int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out,
                     cli_cmd_id cmd);

/* proto/recall.proto: SessionOptions.gpu_memory_budget asking for no limit. */
#define BUDGET_NONE UINT64_MAX

/* The session options given into *so (zeros where not given; strings point into argv);
 * *any says whether any was given. */
int cli_parse_session_opts(const cli_args *a, Recall__SessionOptions *so, int *any);

/* ---------------------------------------------------------------------------------------
 * Small helpers */

const char *cli_str_or(const char *s, const char *dflt);   /* s unless NULL or empty */
void cli_human_bytes(char *buf, size_t n, double b);       /* "1.5 MiB" */
void cli_human_duration(char *buf, size_t n, double s);    /* "1:02:03", "2:03", "--:--" */
void cli_format_time(char *buf, size_t n, int64_t unix_s); /* local time, or "-" */
cJSON *cli_options_json(const Recall__SessionOptions *o);  /* new object; {} for NULL */
cJSON *cli_info_json(const Recall__SessionInfo *i);        /* new object */

/* Reads a whole file (or stdin for "-") into *out (malloc'ed, NUL-terminated, caller
 * frees), which must be valid UTF-8. Returns -1 on success, else the exit status of the
 * reported problem. */
int cli_read_text_file(const char *path, char **out, size_t *len);

/* A progress line on stderr, drawn only on a terminal and without --quiet. */
typedef struct cli_progress {
    int on;
    double t0, last_draw;
} cli_progress;

void cli_progress_init(cli_progress *p);
/* done/total in bytes (total 0: unknown), tokens so far for the rate; redrawn at most
 * every 0.1 s unless force. */
void cli_progress_draw(cli_progress *p, const char *what, double done, double total, double tokens,
                       int force);
void cli_progress_clear(cli_progress *p);

/* ---------------------------------------------------------------------------------------
 * Ingest as `recall ingest` does it (cmd_ingest.c), also used by `recall bench` */

/* Streams srcs into the existing session st->session (st filled in from its info) through
 * recall_ingest_text, with a progress bar of `total` bytes (0: unknown). On failure, reports
 * it together with what was acknowledged (stderr, or "partial" under --json). Returns -1
 * when every chunk was acknowledged, else the exit status. Blocks until then. */
int cli_ingest(recall_client *c, const recall_ingest_src *srcs, int n_srcs, double total,
               size_t chunk_bytes, recall_ingest_state *st, volatile sig_atomic_t *stop);

#endif
