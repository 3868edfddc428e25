/* cli.c — the parts of `recall` that every command uses: see cli.h. */
#include "clients/cli.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/chunker.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/size.h"

/* ---------------------------------------------------------------------------------------
 * Output: one place for errors, text or JSON */

int cli_json;
int cli_quiet;
cJSON *cli_err_extra;

void cli_json_print(cJSON *o)
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

int cli_report(int exit_code, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cli_json) {
        cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddNumberToObject(e, "code", code);
        cJSON_AddStringToObject(e, "name", rc_name((rc_t)code));
        cJSON_AddStringToObject(e, "message", msg);
        if (cli_err_extra) {
            cJSON_AddItemToObject(o, "partial", cli_err_extra);
            cli_err_extra = NULL;
        }
        cli_json_print(o);
    }
    /* Usage and connection errors also go to stderr under --json: a person may be there. */
    if (!cli_json || exit_code != EXIT_REMOTE) fprintf(stderr, "recall: %s\n", msg);
    return exit_code;
}

int cli_usage_error(cli_cmd_id cmd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cli_report(EXIT_USAGE, RC_ERR_INVALID, "%s", msg);
    if (cmd > CMD_NONE && cmd < CMD_COUNT)
        fprintf(stderr, "usage: %s\nSee 'recall help %s'.\n", cli_commands[cmd]->synopsis,
                cli_commands[cmd]->name);
    else
        fprintf(stderr, "See 'recall --help'.\n");
    return EXIT_USAGE;
}

int cli_client_error(recall_client *c, rc_t rc)
{
    if (recall_client_error_remote(c))
        return cli_report(EXIT_REMOTE, rc, "%s", recall_client_error(c));
    const char *m = recall_client_error(c);
    if (!m[0]) m = rc_strerror(rc);
    return cli_report(rc == RC_ERR_NOMEM || rc == RC_ERR_INVALID ? EXIT_REMOTE : EXIT_CONNECT, rc,
                      "%s", m);
}

Recall__Request cli_request(Recall__Request__BodyCase kind, void *body)
{
    /* Each kind of the oneof is its own pointer member; the descriptor says where. */
    Recall__Request req = RECALL__REQUEST__INIT;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&recall__request__descriptor, (unsigned)kind);
    ASSERT(f && f->type == PROTOBUF_C_TYPE_MESSAGE && f->quantifier_offset);
    req.body_case = kind;
    memcpy((char *)&req + f->offset, &body, sizeof body);
    return req;
}

int cli_simple_call(recall_client *c, Recall__Request__BodyCase kind, void *body,
                    Recall__Response__BodyCase want, Recall__Response **out)
{
    Recall__Request req = cli_request(kind, body);
    rc_t rc = recall_client_call(c, &req, out, NULL, NULL);
    if (rc) return cli_client_error(c, rc);
    if ((*out)->body_case != want) {
        recall__response__free_unpacked(*out, NULL);
        *out = NULL;
        return cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer from the daemon");
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Argument parsing */

const opt_spec cli_opt_specs[O_COUNT] = {
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
    [O_MEMORY_DTYPE] = {"memory-dtype", 0, 1, SESSION_OPT_CMDS},
    [O_ROPE_SCALING] = {"rope-scaling", 0, 1, SESSION_OPT_CMDS},
    [O_ROPE_FACTOR] = {"rope-factor", 0, 1, SESSION_OPT_CMDS},
    [O_NO_CHUNK_SCALE] = {"no-chunk-scale", 0, 0, SESSION_OPT_CMDS},
    [O_GALI_MODE] = {"gali-mode", 0, 1, SESSION_OPT_CMDS},
    [O_GALI_NOISE] = {"gali-noise", 0, 1, SESSION_OPT_CMDS},
    [O_CHUNK_BYTES] = {"chunk-bytes", 0, 1, B(CMD_INGEST) | B(CMD_BENCH)},
    [O_MAX_TOKENS] = {"max-tokens", 'n', 1, B(CMD_ASK) | B(CMD_BENCH)},
    [O_TEMPERATURE] = {"temperature", 0, 1, B(CMD_ASK)},
    [O_TOP_P] = {"top-p", 0, 1, B(CMD_ASK)},
    [O_SEED] = {"seed", 0, 1, B(CMD_ASK) | SESSION_OPT_CMDS}, /* sessions: gali's noise */
    [O_APPEND] = {"append", 0, 0, B(CMD_ASK)},
    [O_IGNORE_EOS] = {"ignore-eos", 0, 0, B(CMD_ASK)},
    [O_STOP] = {"stop", 0, 1, B(CMD_ASK)},
    [O_CHAT] = {"chat", 0, 0, B(CMD_ASK)},
    [O_SYSTEM] = {"system", 0, 1, B(CMD_ASK)},
    [O_TEXT] = {"text", 0, 1, B(CMD_PPL)},
    [O_TOKENS] = {"tokens", 0, 1, B(CMD_PASSKEY) | B(CMD_BENCH)},
    [O_DEPTHS] = {"depths", 0, 1, B(CMD_PASSKEY)},
    [O_TRIALS] = {"trials", 0, 1, B(CMD_PASSKEY)},
    [O_PNG] = {"png", 0, 1, B(CMD_PASSKEY)},
    [O_SESSION_PREFIX] = {"session-prefix", 0, 1, B(CMD_PASSKEY)},
    [O_KEEP] = {"keep", 0, 0, B(CMD_PASSKEY) | B(CMD_BENCH)},
    [O_CURVE_KEYS] = {"curve-keys", 0, 1, ALL_CMDS},
    [O_SERVER_KEY] = {"server-key", 0, 1, ALL_CMDS},
    [O_NAME] = {"name", 0, 1, B(CMD_KEYGEN)},
};

cli_cmd_id cli_find_cmd(const char *s)
{
    for (int i = 0; i < CMD_COUNT; i++)
        if (!strcmp(s, cli_commands[i]->name)) return (cli_cmd_id)i;
    return CMD_NONE;
}

/* Parses argv: options may come before or after the command; "--" ends options. Returns
 * -1 on success, else the exit code (a usage error has been printed). */
int cli_parse_args(int argc, char **argv, cli_args *a)
{
    memset(a, 0, sizeof *a);
    a->cmd = CMD_NONE;
    const char *unknown_cmd = NULL;
    int opt_at[O_COUNT] = {0};
    int only_pos = 0;
    /* --json first, so that even an early usage error comes out as a JSON object. */
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--json")) cli_json = 1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (only_pos || s[0] != '-' || !strcmp(s, "-")) {
            if (a->cmd == CMD_NONE && !unknown_cmd) {
                a->cmd = cli_find_cmd(s);
                if (a->cmd == CMD_NONE) unknown_cmd = s;
            } else if (a->n_pos < (int)(sizeof a->pos / sizeof a->pos[0])) {
                a->pos[a->n_pos++] = s;
            } else {
                return cli_usage_error(a->cmd, "too many arguments");
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
                if (strlen(cli_opt_specs[o].name) == n && !strncmp(cli_opt_specs[o].name, name, n))
                    id = o;
            if (id >= 0 && eq) {
                if (!cli_opt_specs[id].has_arg)
                    return cli_usage_error(a->cmd, "option --%s takes no value",
                                           cli_opt_specs[id].name);
                val = eq + 1;
            }
        } else if (s[1] && !s[2]) {
            for (int o = 0; o < O_COUNT; o++)
                if (cli_opt_specs[o].short_name == s[1]) id = o;
        }
        if (id < 0) return cli_usage_error(a->cmd, "unknown option '%s'", s);
        if (cli_opt_specs[id].has_arg && !val) {
            if (i + 1 >= argc) return cli_usage_error(a->cmd, "option %s needs a value", s);
            val = argv[++i];
        }
        a->vals[id] = cli_opt_specs[id].has_arg ? val : "1";
        opt_at[id] = i;
        if (id == O_STOP) { /* the one option that repeats */
            if (a->n_stops == (int)(sizeof a->stops / sizeof a->stops[0]))
                return cli_usage_error(a->cmd, "at most %d --stop strings",
                                       (int)(sizeof a->stops / sizeof a->stops[0]));
            a->stops[a->n_stops++] = val;
        }
    }
    if (a->vals[O_JSON]) cli_json = 1;
    if (a->vals[O_QUIET]) cli_quiet = 1;
    if (unknown_cmd) return cli_usage_error(CMD_NONE, "unknown command '%s'", unknown_cmd);
    if (a->cmd != CMD_NONE) {
        for (int o = 0; o < O_COUNT; o++)
            if (a->vals[o] && !(cli_opt_specs[o].cmds & B(a->cmd)))
                return cli_usage_error(a->cmd, "option --%s does not apply to '%s'",
                                       cli_opt_specs[o].name, cli_commands[a->cmd]->name);
    } else {
        for (int o = 0; o < O_COUNT; o++)
            if (a->vals[o] && cli_opt_specs[o].cmds != ALL_CMDS)
                return cli_usage_error(CMD_NONE, "option '%s' given without a command",
                                       argv[opt_at[o]]);
    }
    return -1;
}

/* Numbers: whole strings only, with a range, so "--window 4k" or "--k -3" is a usage
 * error that names the option instead of a silent zero. */
int cli_parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out,
                  cli_cmd_id cmd, int allow_suffix)
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
        cli_usage_error(cmd, "--%s must be between %llu and %llu (got %s)", opt,
                        (unsigned long long)lo, (unsigned long long)hi, s);
        return 0;
    }
    *out = v;
    return 1;
bad:
    cli_usage_error(cmd, "--%s needs a whole number%s, not '%s'", opt,
                    allow_suffix ? " (K and M suffixes allowed)" : "", s ? s : "");
    return 0;
}

int cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out,
                     cli_cmd_id cmd)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        cli_usage_error(cmd, "--%s needs a number, not '%s'", opt, s);
        return 0;
    }
    if (v < lo || v > hi) {
        cli_usage_error(cmd, "--%s must be between %g and %g (got %s)", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int one_of(const char *opt, const char *s, const char *const *choices, cli_cmd_id cmd)
{
    for (int i = 0; choices[i]; i++)
        if (!strcmp(s, choices[i])) return 1;
    char list[128] = "";
    for (int i = 0; choices[i]; i++) {
        strcat(list, i ? " | " : "");
        strcat(list, choices[i]);
    }
    cli_usage_error(cmd, "--%s must be %s, not '%s'", opt, list, s);
    return 0;
}

/* --gpu-memory-budget: "512M", "8G", "1.5G", bytes (binary units K to T, an optional "B"
 * or "iB"); "0" or "none" ask for no limit explicitly, as opposed to leaving the option out
 * (the daemon's default). 1 on success. */
#define BUDGET_MAX (1ull << 50)
static int parse_budget(const char *s, uint64_t *out, cli_cmd_id cmd)
{
    uint64_t b;
    rc_t rc = size_parse(s, BUDGET_MAX, &b);
    if (rc == RC_OK) {
        *out = b ? b : BUDGET_NONE;
        return 1;
    }
    if (rc == RC_ERR_FORMAT)
        cli_usage_error(cmd,
                        "--gpu-memory-budget needs a size such as 512M, 8G, 1.5G or a number of "
                        "bytes, or none; not '%s'",
                        s);
    else
        cli_usage_error(cmd, "--gpu-memory-budget %s is %s; use none (or 0) for no limit", s,
                        rc == RC_ERR_INVALID ? "less than a byte" : "more than 1P");
    return 0;
}

/* Session options from the command line into opts (zeros where not given). 1 on success. */
int cli_parse_session_opts(const cli_args *a, Recall__SessionOptions *so, int *any)
{
    static const char *const positional[] = {"rope", "self-extend", "dca", "clex", "gali", NULL};
    static const char *const gali_modes[] = {"paper", "reference", NULL};
    static const char *const memory[] = {"exact", "knn", NULL};
    static const char *const dtypes[] = {"f32", "bf16", "f16", "fp8", "int8", NULL};
    struct {
        opt_id id;
        uint32_t *field;
    } nums[] = {{O_WINDOW, &so->window},
                {O_GROUP, &so->group},
                {O_NEIGHBOR, &so->neighbor},
                {O_CHUNK_SIZE, &so->chunk_size},
                {O_K, &so->k},
                {O_LAST_CONTEXT, &so->last_context}};
    *any = 0;
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const char *v = a->vals[nums[i].id];
        if (!v) continue;
        uint64_t x;
        if (!cli_parse_u64(cli_opt_specs[nums[i].id].name, v, 1, UINT32_MAX, &x, a->cmd, 0))
            return 0;
        *nums[i].field = (uint32_t)x;
        *any = 1;
    }
    /* --local-window 0 is GALI's w = 0 (dca refuses it): sent with local_window_set. */
    if (a->vals[O_LOCAL_WINDOW]) {
        uint64_t x;
        if (!cli_parse_u64("local-window", a->vals[O_LOCAL_WINDOW], 0, UINT32_MAX, &x, a->cmd, 0))
            return 0;
        so->local_window = (uint32_t)x;
        so->local_window_set = x == 0;
        *any = 1;
    }
    if (a->vals[O_GALI_MODE]) {
        if (!one_of("gali-mode", a->vals[O_GALI_MODE], gali_modes, a->cmd)) return 0;
        so->gali_mode = (char *)a->vals[O_GALI_MODE];
        *any = 1;
    }
    if (a->vals[O_GALI_NOISE]) {
        char *end;
        double f = strtod(a->vals[O_GALI_NOISE], &end);
        if (end == a->vals[O_GALI_NOISE] || *end || !(f >= 0.0 && f <= 1e6)) {
            cli_usage_error(a->cmd, "--gali-noise must be a number >= 0 (0: off), not '%s'",
                            a->vals[O_GALI_NOISE]);
            return 0;
        }
        so->gali_noise = (float)f;
        *any = 1;
        uint64_t seed = 0;
        if (a->vals[O_SEED] &&
            !cli_parse_u64("seed", a->vals[O_SEED], 0, UINT64_MAX, &seed, a->cmd, 0))
            return 0;
        so->gali_seed = seed;
    } else if (a->vals[O_SEED] && a->cmd != CMD_ASK && a->cmd != CMD_PASSKEY) {
        cli_usage_error(a->cmd, "--seed goes with --gali-noise here (the noise's seed)");
        return 0;
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
    if (a->vals[O_MEM_DTYPE] && a->vals[O_MEMORY_DTYPE] &&
        strcmp(a->vals[O_MEM_DTYPE], a->vals[O_MEMORY_DTYPE])) {
        cli_usage_error(a->cmd, "--mem-dtype and --memory-dtype are one option; they disagree");
        return 0;
    }
    const char *mdt = a->vals[O_MEMORY_DTYPE] ? a->vals[O_MEMORY_DTYPE] : a->vals[O_MEM_DTYPE];
    if (mdt) {
        if (!one_of("memory-dtype", mdt, dtypes, a->cmd)) return 0;
        so->mem_dtype = (char *)mdt;
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
            cli_usage_error(a->cmd, "--rope-factor must be a number >= 1, not '%s'",
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
        if (!cli_parse_u64(cli_opt_specs[lists[i].id].name, v, 1, 1u << 20, &x, a->cmd, 0))
            return 0;
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

const char *cli_str_or(const char *s, const char *dflt)
{
    return s && s[0] ? s : dflt;
}

void cli_human_bytes(char *buf, size_t n, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4)
        b /= 1024, i++;
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

void cli_human_duration(char *buf, size_t n, double s)
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

cJSON *cli_options_json(const Recall__SessionOptions *o)
{
    cJSON *j = cJSON_CreateObject();
    if (!o) return j;
    cJSON_AddNumberToObject(j, "window", o->window);
    cJSON_AddStringToObject(j, "positional", cli_str_or(o->positional, ""));
    cJSON_AddNumberToObject(j, "group", o->group);
    cJSON_AddNumberToObject(j, "neighbor", o->neighbor);
    cJSON_AddNumberToObject(j, "chunk_size", o->chunk_size);
    cJSON_AddNumberToObject(j, "local_window", o->local_window);
    cJSON_AddStringToObject(j, "memory", cli_str_or(o->memory, ""));
    cJSON_AddNumberToObject(j, "k", o->k);
    cJSON_AddNumberToObject(j, "knn_nlist", o->knn_nlist);
    cJSON_AddNumberToObject(j, "knn_nprobe", o->knn_nprobe);
    cJSON_AddNumberToObject(j, "gpu_memory_budget", (double)o->gpu_memory_budget);
    cJSON_AddNumberToObject(j, "last_context", o->last_context);
    cJSON_AddStringToObject(j, "mem_dtype", cli_str_or(o->mem_dtype, ""));
    if (o->gali_mode && o->gali_mode[0]) {
        cJSON_AddStringToObject(j, "gali_mode", o->gali_mode);
        cJSON_AddNumberToObject(j, "gali_noise", o->gali_noise);
        cJSON_AddNumberToObject(j, "gali_seed", (double)o->gali_seed);
    }
    return j;
}

cJSON *cli_info_json(const Recall__SessionInfo *i)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", cli_str_or(i->name, ""));
    cJSON_AddItemToObject(j, "options", cli_options_json(i->options));
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
    cJSON_AddStringToObject(j, "tier", cli_str_or(i->tier, ""));
    if (i->owner && i->owner[0]) cJSON_AddStringToObject(j, "owner", i->owner);
    if (i->problem && i->problem[0]) cJSON_AddStringToObject(j, "problem", i->problem);
    return j;
}

void cli_format_time(char *buf, size_t n, int64_t unix_s)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    if (unix_s <= 0 || !localtime_r(&t, &tm) || !strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(buf, n, "-");
}

/* Reads a whole file (or stdin for "-") as a NUL-terminated string that must be valid
 * UTF-8. Returns an exit code (-1 ok) after reporting any problem. */
int cli_read_text_file(const char *path, char **out, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return cli_report(EXIT_USAGE, RC_ERR_NOT_FOUND, "cannot open %s: %s", path,
                          strerror(errno));
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
    if (!buf) return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory reading %s", path);
    if (err) {
        free(buf);
        return cli_report(EXIT_USAGE, RC_ERR_IO, "cannot read %s", path);
    }
    buf[n] = 0;
    size_t bad;
    if (!recall_utf8_valid(buf, n, &bad)) {
        free(buf);
        return cli_report(EXIT_USAGE, RC_ERR_INVALID, "%s: not UTF-8 text (bad byte at offset %zu)",
                          path, bad);
    }
    *out = buf;
    *len = n;
    return -1;
}

/* ---------------------------------------------------------------------------------------
 * Progress bar (stderr, only on a terminal) */

void cli_progress_init(cli_progress *p)
{
    p->on = !cli_quiet && isatty(STDERR_FILENO);
    p->t0 = clock_now_s();
    p->last_draw = 0;
}

/* done/total in bytes (total 0: unknown), tokens so far for the rate. */
void cli_progress_draw(cli_progress *p, const char *what, double done, double total, double tokens,
                       int force)
{
    if (!p->on) return;
    double t = clock_now_s();
    if (!force && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    double el = t - p->t0;
    char d[32], tot[32], eta[32], bar[32];
    cli_human_bytes(d, sizeof d, done);
    int width = 24;
    if (total > 0) {
        cli_human_bytes(tot, sizeof tot, total);
        double frac = done / total;
        if (frac > 1) frac = 1;
        int fill = (int)(frac * width);
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[width] = 0;
        cli_human_duration(eta, sizeof eta, done > 0 ? el * (total - done) / done : NAN);
        fprintf(stderr, "\r\033[K%s [%s] %s/%s  %.0f tokens/s  ETA %s", what, bar, d, tot,
                el > 0 ? tokens / el : 0.0, eta);
    } else {
        fprintf(stderr, "\r\033[K%s %s  %.0f tokens/s", what, d, el > 0 ? tokens / el : 0.0);
    }
    fflush(stderr);
}

void cli_progress_clear(cli_progress *p)
{
    if (p->on) fprintf(stderr, "\r\033[K"), fflush(stderr);
}
