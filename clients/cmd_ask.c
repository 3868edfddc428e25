/* cmd_ask.c — `recall ask`: a question about a session; the answer streams to stdout. */
#include "clients/cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/chunker.h"

static int cmd_ask(recall_client *c, const cli_args *a);

const cli_command cli_cmd_ask = {
    "ask", "recall ask SESSION QUESTION [--max-tokens N] [--temperature T] ...",
    "ask a question about a session; the answer streams to stdout",
    "The question is processed after the session's text, with the memory of all\n"
    "of it; the session does not change unless --append is given.\n"
    "  --max-tokens N    stop after N generated tokens (default: the daemon's)\n"
    "  --temperature T   0 is greedy and deterministic (default 0)\n"
    "  --top-p P         nucleus sampling (0 or 1: off)\n"
    "  --seed N          sampling seed\n"
    "  --append          append the question and the answer to the session\n"
    "  --ignore-eos      keep generating past the end-of-sequence token\n"
    "  --stop STR        end the answer where STR first appears (not included); the\n"
    "                    daemon stops generating there. Repeat for several (up to 16)\n"
    "  --chat            send QUESTION as a user's chat message: the daemon formats it with\n"
    "                    the checkpoint's chat template (recalld --chat-template), as\n"
    "                    /v1/chat/completions does, and adds the template's stop strings\n"
    "  --system TEXT     with --chat: a system message before it\n"
    "\n"
    "Examples:\n"
    "  recall ask books \"Who is Pierre Bezukhov?\"\n"
    "  recall ask notes \"Summarise the last meeting.\" --max-tokens 200 "
    "--temperature 0.7 --seed 1\n"
    "  recall ask notes \"List the decisions.\" --stop $'\\n\\n' --stop END\n"
    "  recall ask notes \"Who came?\" --chat --system \"Answer in one line.\"\n",
    cmd_ask};

typedef struct ask_state {
    cJSON *tokens;
    char *answer;
    size_t len, cap;
    Recall__AskResponse final;
    char stop_reason[32];
    char chat_template[32];
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
        if (!cli_json) {
            fwrite(t, 1, n, stdout);
            fflush(stdout); /* tokens are shown as they arrive */
        }
    }
    if (a->done) {
        s->final = *a;
        snprintf(s->stop_reason, sizeof s->stop_reason, "%s", cli_str_or(a->stop_reason, ""));
        snprintf(s->chat_template, sizeof s->chat_template, "%s",
                 cli_str_or(a->chat_template, ""));
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

static int cmd_ask(recall_client *c, const cli_args *a)
{
    if (a->n_pos != 2)
        return cli_usage_error(CMD_ASK, a->n_pos < 2 ? "ask needs a SESSION and a QUESTION"
                                                     : "ask takes one QUESTION (quote it)");
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = (char *)a->pos[0];
    ar.question = (char *)a->pos[1];
    size_t bad;
    if (!recall_utf8_valid(ar.question, strlen(ar.question), &bad))
        return cli_usage_error(CMD_ASK, "the question is not UTF-8 text");
    uint64_t u;
    double d;
    if (a->vals[O_MAX_TOKENS]) {
        if (!cli_parse_u64("max-tokens", a->vals[O_MAX_TOKENS], 1, UINT32_MAX, &u, a->cmd, 0))
            return EXIT_USAGE;
        ar.max_tokens = (uint32_t)u;
    }
    if (a->vals[O_TEMPERATURE]) {
        if (!cli_parse_double("temperature", a->vals[O_TEMPERATURE], 0, 100, &d, a->cmd))
            return EXIT_USAGE;
        ar.temperature = (float)d;
    }
    if (a->vals[O_TOP_P]) {
        if (!cli_parse_double("top-p", a->vals[O_TOP_P], 0, 1, &d, a->cmd)) return EXIT_USAGE;
        ar.top_p = (float)d;
    }
    if (a->vals[O_SEED]) {
        if (!cli_parse_u64("seed", a->vals[O_SEED], 0, UINT64_MAX, &u, a->cmd, 0))
            return EXIT_USAGE;
        ar.seed = u;
    }
    ar.append = a->vals[O_APPEND] != NULL;
    ar.ignore_eos = a->vals[O_IGNORE_EOS] != NULL;
    for (int i = 0; i < a->n_stops; i++) {
        if (!a->stops[i][0]) return cli_usage_error(CMD_ASK, "--stop needs a non-empty string");
        if (!recall_utf8_valid(a->stops[i], strlen(a->stops[i]), &bad))
            return cli_usage_error(CMD_ASK, "--stop strings must be UTF-8 text");
    }
    ar.n_stop = (size_t)a->n_stops;
    ar.stop = (char **)a->stops;
    /* --chat: the question is a user's message (after --system's), formatted by the daemon
     * with the checkpoint's chat template. */
    Recall__ChatMessage msgs[2], *mp[2];
    if (a->vals[O_SYSTEM] && !a->vals[O_CHAT])
        return cli_usage_error(CMD_ASK, "--system goes with --chat");
    if (a->vals[O_CHAT]) {
        size_t n = 0;
        if (a->vals[O_SYSTEM]) {
            if (!recall_utf8_valid(a->vals[O_SYSTEM], strlen(a->vals[O_SYSTEM]), &bad))
                return cli_usage_error(CMD_ASK, "the system message is not UTF-8 text");
            recall__chat_message__init(&msgs[n]);
            msgs[n].role = (char *)"system";
            msgs[n].content = (char *)a->vals[O_SYSTEM];
            n++;
        }
        recall__chat_message__init(&msgs[n]);
        msgs[n].role = (char *)"user";
        msgs[n].content = ar.question;
        n++;
        for (size_t i = 0; i < n; i++)
            mp[i] = &msgs[i];
        ar.messages = mp;
        ar.n_messages = n;
        ar.question = (char *)"";
    }

    Recall__Request req = cli_request(RECALL__REQUEST__BODY_ASK, &ar);
    ask_state s = {.tokens = cJSON_CreateArray()};
    rc_t rc = recall_client_stream(c, &req, ask_cb, &s);
    int result;
    if (rc) {
        if (!cli_json && s.len) fputc('\n', stdout); /* end the partial answer's line */
        fflush(stdout);
        result = rc == RC_ERR_NOMEM ? cli_report(EXIT_REMOTE, rc, "out of memory")
                                    : cli_client_error(c, rc);
    } else if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", ar.session);
        cJSON_AddStringToObject(o, "question", a->pos[1]);
        if (a->vals[O_CHAT])
            cJSON_AddStringToObject(o, "chat_template", s.chat_template);
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
        cli_json_print(o);
        result = EXIT_OK;
    } else {
        fputc('\n', stdout);
        fflush(stdout);
        if (!cli_quiet && isatty(STDERR_FILENO) && s.got_final)
            fprintf(stderr, "[%u tokens, %s; prefill %.0f ms, decode %.0f ms]\n", s.final.generated,
                    s.stop_reason, s.final.prefill_ms, s.final.decode_ms);
        result = EXIT_OK;
    }
    cJSON_Delete(s.tokens);
    free(s.answer);
    return result;
}
