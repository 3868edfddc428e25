/* cmd_session.c — the commands about one session or all of them: `recall sessions`, `info`,
 * `drop` and `verify`. */
#include "clients/cli.h"

#include <string.h>

static int cmd_sessions(recall_client *c, const cli_args *a);
static int cmd_info(recall_client *c, const cli_args *a);
static int cmd_drop(recall_client *c, const cli_args *a);
static int cmd_verify(recall_client *c, const cli_args *a);

const cli_command cli_cmd_sessions = {"sessions", "recall sessions", "list the sessions",
                                      "One line per session: tokens, windows, memory and options.\n"
                                      "\n"
                                      "Example:\n"
                                      "  recall sessions --json\n",
                                      cmd_sessions};

const cli_command cli_cmd_info = {
    "info", "recall info SESSION", "everything known about one session",
    "Shows the session's resolved options, token and window counts, memory use\n"
    "per tier and the last acknowledged ingest chunk.\n"
    "\n"
    "Example:\n"
    "  recall info books --json\n",
    cmd_info};

const cli_command cli_cmd_drop = {
    "drop", "recall drop SESSION", "delete a session and its memory",
    "Removes the session from the daemon and from disk. There is no undo.\n"
    "\n"
    "Example:\n"
    "  recall drop scratch\n",
    cmd_drop};

const cli_command cli_cmd_verify = {
    "verify", "recall verify SESSION",
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
    "  recall verify books\n",
    cmd_verify};

static int cmd_sessions(recall_client *c, const cli_args *a)
{
    if (a->n_pos) return cli_usage_error(CMD_SESSIONS, "sessions takes no arguments");
    Recall__ListSessionsRequest lr = RECALL__LIST_SESSIONS_REQUEST__INIT;
    Recall__Response *r;
    int e = cli_simple_call(c, RECALL__REQUEST__BODY_LIST_SESSIONS, &lr,
                            RECALL__RESPONSE__BODY_LIST_SESSIONS, &r);
    if (e >= 0) return e;
    const Recall__ListSessionsResponse *l = r->list_sessions;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "sessions");
        for (size_t i = 0; i < l->n_sessions; i++)
            cJSON_AddItemToArray(arr, cli_info_json(l->sessions[i]));
        cli_json_print(o);
    } else if (!l->n_sessions) {
        printf("no sessions\n");
    } else {
        int w = 7;
        for (size_t i = 0; i < l->n_sessions; i++) {
            int n = (int)strlen(cli_str_or(l->sessions[i]->name, ""));
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
            cli_human_bytes(b, sizeof b, (double)s->memory_bytes_disk);
            cli_format_time(t, sizeof t, s->created_unix);
            int unavailable = s->problem && s->problem[0];
            bad += unavailable;
            printf("%-*s %12llu %9llu %7u %-11s %-6s %-11s %11s %8llu  %s\n", w,
                   cli_str_or(s->name, ""), (unsigned long long)s->tokens,
                   (unsigned long long)s->windows, o ? o->window : 0,
                   o ? cli_str_or(o->positional, "-") : "-", o ? cli_str_or(o->memory, "-") : "-",
                   unavailable ? "UNAVAILABLE" : cli_str_or(s->tier, "-"), b,
                   (unsigned long long)s->last_seq, unavailable ? "-" : t);
        }
        for (size_t i = 0; i < l->n_sessions; i++)
            if (l->sessions[i]->problem && l->sessions[i]->problem[0])
                printf("%s: UNAVAILABLE: %s\n", cli_str_or(l->sessions[i]->name, ""),
                       l->sessions[i]->problem);
        if (bad)
            printf("%zu session%s unavailable: recall verify SESSION checks one again, recall "
                   "drop SESSION removes it\n",
                   bad, bad == 1 ? " is" : "s are");
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

static int cmd_info(recall_client *c, const cli_args *a)
{
    if (a->n_pos != 1) return cli_usage_error(CMD_INFO, "info needs exactly one SESSION");
    Recall__SessionInfoRequest ir = RECALL__SESSION_INFO_REQUEST__INIT;
    ir.session = (char *)a->pos[0];
    Recall__Response *r;
    int e = cli_simple_call(c, RECALL__REQUEST__BODY_SESSION_INFO, &ir,
                            RECALL__RESPONSE__BODY_SESSION_INFO, &r);
    if (e >= 0) return e;
    const Recall__SessionInfo *s = r->session_info->info;
    if (!s) {
        recall__response__free_unpacked(r, NULL);
        return cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "the daemon sent no session info");
    }
    if (cli_json) {
        cli_json_print(cli_info_json(s));
    } else {
        const Recall__SessionOptions *o = s->options;
        char t[32], bd[32], bh[32], bk[32];
        cli_format_time(t, sizeof t, s->created_unix);
        cli_human_bytes(bd, sizeof bd, (double)s->memory_bytes_device);
        cli_human_bytes(bh, sizeof bh, (double)s->memory_bytes_host);
        cli_human_bytes(bk, sizeof bk, (double)s->memory_bytes_disk);
        printf("session        %s\n", cli_str_or(s->name, ""));
        if (s->problem && s->problem[0]) printf("UNAVAILABLE    %s\n", s->problem);
        printf("tier           %s\n", cli_str_or(s->tier, "-"));
        if (s->owner && s->owner[0]) printf("owner          %s\n", s->owner);
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
            printf("positional     %s", cli_str_or(o->positional, "-"));
            if (o->positional && !strcmp(o->positional, "self-extend"))
                printf(" (group %u, neighbor %u)", o->group, o->neighbor);
            else if (o->positional && !strcmp(o->positional, "dca"))
                printf(" (chunk size %u, local window %u)", o->chunk_size, o->local_window);
            printf("\nmemory         %s", cli_str_or(o->memory, "-"));
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
            if (o->gpu_memory_budget) cli_human_bytes(gb, sizeof gb, (double)o->gpu_memory_budget);
            printf("\ngpu budget     %s\n", gb);
            printf("last context   %u\n", o->last_context);
            printf("mem dtype      %s\n", cli_str_or(o->mem_dtype, "-"));
        }
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}

static int cmd_drop(recall_client *c, const cli_args *a)
{
    if (a->n_pos != 1) return cli_usage_error(CMD_DROP, "drop needs exactly one SESSION");
    Recall__DropSessionRequest dr = RECALL__DROP_SESSION_REQUEST__INIT;
    dr.session = (char *)a->pos[0];
    Recall__Response *r;
    int e = cli_simple_call(c, RECALL__REQUEST__BODY_DROP_SESSION, &dr,
                            RECALL__RESPONSE__BODY_DROP_SESSION, &r);
    if (e >= 0) return e;
    recall__response__free_unpacked(r, NULL);
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dropped", dr.session);
        cli_json_print(o);
    } else if (!cli_quiet) {
        printf("dropped session '%s'\n", dr.session);
    }
    return EXIT_OK;
}

static int cmd_verify(recall_client *c, const cli_args *a)
{
    if (a->n_pos != 1) return cli_usage_error(CMD_VERIFY, "verify needs exactly one SESSION");
    Recall__VerifySessionRequest vr = RECALL__VERIFY_SESSION_REQUEST__INIT;
    vr.session = (char *)a->pos[0];
    Recall__Response *r;
    int e = cli_simple_call(c, RECALL__REQUEST__BODY_VERIFY_SESSION, &vr,
                            RECALL__RESPONSE__BODY_VERIFY_SESSION, &r);
    if (e >= 0) return e;
    const Recall__VerifySessionResponse *v = r->verify_session;
    int ok = v->ok;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "session", vr.session);
        cJSON_AddBoolToObject(o, "ok", ok);
        cJSON_AddNumberToObject(o, "windows", (double)v->windows);
        cJSON_AddNumberToObject(o, "bad_windows", (double)v->bad_windows);
        cJSON_AddNumberToObject(o, "bytes_read", (double)v->bytes_read);
        cJSON_AddNumberToObject(o, "tokens", (double)v->tokens);
        cJSON_AddNumberToObject(o, "seconds", v->seconds);
        if (!ok) cJSON_AddStringToObject(o, "problem", cli_str_or(v->problem, ""));
        cli_json_print(o);
    } else {
        char b[32];
        cli_human_bytes(b, sizeof b, (double)v->bytes_read);
        if (ok)
            printf("session '%s' is intact: %llu windows (%s of rows) and %llu tokens checked "
                   "in %.2f s\n",
                   vr.session, (unsigned long long)v->windows, b, (unsigned long long)v->tokens,
                   v->seconds);
        else
            printf("session '%s' is DAMAGED: %s\n%llu of %llu windows fail their checksums; the "
                   "session is unavailable until it verifies clean (or is dropped)\n",
                   vr.session, cli_str_or(v->problem, "?"), (unsigned long long)v->bad_windows,
                   (unsigned long long)v->windows);
    }
    recall__response__free_unpacked(r, NULL);
    return ok ? EXIT_OK : EXIT_REMOTE;
}
