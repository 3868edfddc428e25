/* recall.c — the command-line client of recalld: the table of commands and main.
 *
 * Every command is one or a few RPCs (proto/recall.proto) through clients/client.h; each
 * lives in a cmd_*.c file by group, and cli.h says what they share. Output is for people
 * by default and exactly one JSON object on stdout with --json. Exit codes: 0 ok, 1 the
 * daemon answered with an error, 2 usage error, 3 cannot connect or timeout. */
#include "clients/cli.h"

#include <stdlib.h>
#include <string.h>

#define DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"

static const cli_command cmd_help = {"help", "recall help [COMMAND]", "this help, or a command's",
                                     "Example:\n"
                                     "  recall help ingest\n",
                                     NULL};

const cli_command *const cli_commands[CMD_COUNT] = {
    [CMD_INGEST] = &cli_cmd_ingest,   [CMD_ASK] = &cli_cmd_ask,
    [CMD_PPL] = &cli_cmd_ppl,         [CMD_SESSIONS] = &cli_cmd_sessions,
    [CMD_INFO] = &cli_cmd_info,       [CMD_DROP] = &cli_cmd_drop,
    [CMD_HEALTH] = &cli_cmd_health,   [CMD_STATS] = &cli_cmd_stats,
    [CMD_VERIFY] = &cli_cmd_verify,   [CMD_HELP] = &cmd_help,
    [CMD_PASSKEY] = &cli_cmd_passkey, [CMD_BENCH] = &cli_cmd_bench,
    [CMD_KEYGEN] = &cli_cmd_keygen,
};

static const char session_opts_help[] =
    "Session options (when ingest creates a session, for ppl --text, for passkey's trial\n"
    "sessions and bench's session; 0 or absent = the checkpoint's default):\n"
    "  --window N              tokens per window\n"
    "  --positional SCHEME     rope | self-extend | dca | clex (a CLEX checkpoint's default)\n"
    "                          | gali (training-free logit interpolation; CPU only so far)\n"
    "  --group G --neighbor W  self-extend group size and neighbour window\n"
    "  --chunk-size S --local-window w   dca chunk size and local window; gali chunk size\n"
    "                          c (1..L, default 3L/4) and local window w (0..L-1, default\n"
    "                          min(128, L/8))\n"
    "  --gali-mode MODE        gali: paper (fp32) | reference (the release's bf16 coefficient)\n"
    "  --gali-noise STD --seed N   gali: Gaussian logit noise (default off)\n"
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
    "                          the next window. At least one window's worth. Default: no\n"
    "                          limit of its own, within the daemon's --gpu-memory-budget (all\n"
    "                          sessions together); a CPU daemon ignores it\n"
    "  --last-context N        LongLLaMA's last_context_length, kept with the session (recall's\n"
    "                          windows align to the first token, so it does not change results)\n"
    "  --memory-dtype T        bf16 | fp8 | int8 | f32 | f16 (alias --mem-dtype): how memory\n"
    "                          rows are stored. fp8 (e4m3) and int8 keep one byte per element\n"
    "                          and a scale per token and kv head: about half of bf16's bytes,\n"
    "                          CPU daemons only. Fixed when the session is created\n"
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
    "  --curve-keys PATH   CURVE: this client's key file (or the directory recall keygen\n"
    "                      wrote); default $RECALL_CURVE_KEYS. Needs --server-key\n"
    "  --server-key FILE   CURVE: the daemon's public key file (default $RECALL_SERVER_KEY)\n"
    "  --quiet, -q         no progress bar or summary\n"
    "  --help, -h          help (also: recall help COMMAND)\n";

static void print_overall_help(FILE *f)
{
    fprintf(f, "recall — client of the recalld long-context memory daemon\n\n"
               "usage: recall [global options] COMMAND [arguments] [options]\n\nCommands:\n");
    for (int i = 0; i < CMD_COUNT; i++)
        fprintf(f, "  %-9s %s\n", cli_commands[i]->name, cli_commands[i]->summary);
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

static void print_cmd_help(cli_cmd_id c)
{
    const cli_command *cmd = cli_commands[c];
    printf("usage: %s\n\n%s\n\n%s", cmd->synopsis, cmd->summary, cmd->help);
    if (B(c) & SESSION_OPT_CMDS) printf("\n%s", session_opts_help);
    if (B(c) & cli_opt_specs[O_CHUNK_BYTES].cmds)
        printf("  --chunk-bytes N         largest chunk sent at once (default 64K)\n");
    printf("\n%s", global_opts_help);
}

/* ---------------------------------------------------------------------------------------
 * main */

int main(int argc, char **argv)
{
    cli_args a;
    int e = cli_parse_args(argc, argv, &a);
    if (e >= 0) return e;

    if (a.cmd == CMD_HELP) {
        if (a.n_pos > 1) return cli_usage_error(CMD_HELP, "help takes at most one COMMAND");
        if (a.n_pos == 1) {
            cli_cmd_id c = cli_find_cmd(a.pos[0]);
            if (c == CMD_NONE) return cli_usage_error(CMD_HELP, "no command '%s'", a.pos[0]);
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
        return cli_usage_error(CMD_NONE, "no command given");
    }

    if (a.cmd == CMD_KEYGEN) return cli_keygen(&a);

    const char *endpoint = a.vals[O_CONNECT];
    if (!endpoint) endpoint = getenv("RECALL_CONNECT");
    if (!endpoint || !*endpoint) endpoint = DEFAULT_ENDPOINT;
    int timeout_ms = RECALL_CLIENT_DEFAULT_TIMEOUT_MS;
    if (a.vals[O_TIMEOUT]) {
        double t;
        if (!cli_parse_double("timeout", a.vals[O_TIMEOUT], 0.001, 86400 * 365, &t, a.cmd))
            return EXIT_USAGE;
        timeout_ms = (int)(t * 1000 + 0.5);
        if (timeout_ms < 1) timeout_ms = 1;
    }
    recall_client_curve curve;
    int have_curve = 0;
    char kerr[1024];
    if (recall_client_curve_load(a.vals[O_CURVE_KEYS], a.vals[O_SERVER_KEY], &curve, &have_curve,
                                 kerr, sizeof kerr))
        return cli_usage_error(a.cmd, "%s", kerr);
    recall_client *c;
    const char *err;
    rc_t rc = recall_client_create_curve(endpoint, have_curve ? &curve : NULL, &c, &err);
    memset(&curve, 0, sizeof curve); /* the client has its copy */
    if (rc)
        return rc == RC_ERR_INVALID ? cli_usage_error(a.cmd, "%s", err)
                                    : cli_report(EXIT_CONNECT, rc, "%s", err);
    recall_client_set_timeout(c, timeout_ms);
    recall_client_set_connect_timeout(c, timeout_ms < RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS
                                             ? timeout_ms
                                             : RECALL_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS);

    e = cli_commands[a.cmd]->run(c, &a);
    recall_client_destroy(&c);
    return e;
}
