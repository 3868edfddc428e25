/* cmd_passkey.c — `recall passkey`: the command line around the test in clients/passkey.c. */
#include "clients/cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/passkey.h"

static int cmd_passkey(recall_client *c, const cli_args *a);

const cli_command cli_cmd_passkey = {
    "passkey",
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
    "--json\n",
    cmd_passkey};

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

static int cmd_passkey(recall_client *c, const cli_args *a)
{
    if (a->n_pos) return cli_usage_error(CMD_PASSKEY, "passkey takes no arguments, only options");
    if (!a->vals[O_TOKENS])
        return cli_usage_error(CMD_PASSKEY,
                               "passkey needs --tokens, e.g. --tokens 4k,16k,64k,256k");
    uint64_t lengths[PASSKEY_MAX_LENGTHS];
    int n_lengths;
    char err[1024];
    if (passkey_parse_lengths(a->vals[O_TOKENS], lengths, PASSKEY_MAX_LENGTHS, &n_lengths, err,
                              sizeof err))
        return cli_usage_error(CMD_PASSKEY, "%s", err);
    uint64_t depths = 10, trials = 5, seed = 1;
    if (a->vals[O_DEPTHS] &&
        !cli_parse_u64("depths", a->vals[O_DEPTHS], 1, PASSKEY_MAX_DEPTHS, &depths, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_TRIALS] &&
        !cli_parse_u64("trials", a->vals[O_TRIALS], 1, 100000, &trials, a->cmd, 0))
        return EXIT_USAGE;
    if (a->vals[O_SEED] && !cli_parse_u64("seed", a->vals[O_SEED], 0, UINT64_MAX, &seed, a->cmd, 0))
        return EXIT_USAGE;
    char prefix[128];
    if (a->vals[O_SESSION_PREFIX]) {
        if (!prefix_ok(a->vals[O_SESSION_PREFIX]))
            return cli_usage_error(
                CMD_PASSKEY,
                "--session-prefix must be 1 to 96 letters, digits and . _ - : @ + "
                "not starting with '.', not '%s'",
                a->vals[O_SESSION_PREFIX]);
        snprintf(prefix, sizeof prefix, "%s", a->vals[O_SESSION_PREFIX]);
    } else {
        snprintf(prefix, sizeof prefix, "passkey-%ld", (long)getpid());
    }
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!cli_parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    const char *png = a->vals[O_PNG];
    if (png && !png[0]) return cli_usage_error(CMD_PASSKEY, "--png needs a file name");

    passkey_cfg_t cfg = {.lengths = lengths,
                         .n_lengths = n_lengths,
                         .n_depths = (int)depths,
                         .trials = (int)trials,
                         .seed = seed,
                         .session_prefix = prefix,
                         .keep = a->vals[O_KEEP] != NULL,
                         .session_opts = any_opt ? &so : NULL,
                         .stop = &g_passkey_stop};
    if (!cli_quiet && isatty(STDERR_FILENO)) {
        cfg.on_trial = passkey_on_trial;
        cfg.on_phase = passkey_on_phase;
    }
    passkey_result_t res;
    if (passkey_result_init(&res, &cfg))
        return cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory for %llu trials",
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
            result = cli_report(EXIT_USAGE, RC_ERR_IO, "%s", png_err);
            passkey_result_free(&res);
            return result;
        }
    }
    if (rc) {
        if (res.done > 0) {
            if (cli_json) {
                char *js = passkey_result_json(&res, png_ok ? png : NULL);
                cli_err_extra = js ? cJSON_Parse(js) : NULL;
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
        result = cli_report(code, rc, "%s", err);
    } else if (cli_json) {
        char *js = passkey_result_json(&res, png_ok ? png : NULL);
        if (!js) {
            result = cli_report(EXIT_REMOTE, RC_ERR_NOMEM, "out of memory");
        } else {
            puts(js);
            fflush(stdout);
            free(js);
        }
    } else {
        passkey_print_table(stdout, &res);
        if (png_ok && !cli_quiet) printf("heatmap written to %s\n", png);
    }
    passkey_result_free(&res);
    return result;
}
