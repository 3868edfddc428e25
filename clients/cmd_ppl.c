/* cmd_ppl.c — `recall ppl`: the perplexity of a session's text, or of a file. */
#include "clients/cli.h"

#include <math.h>
#include <stdlib.h>

#include "common/clock.h"

static int cmd_ppl(recall_client *c, const cli_args *a);

const cli_command cli_cmd_ppl = {
    "ppl", "recall ppl SESSION | recall ppl --text FILE [session options]",
    "perplexity of a session's text, or of a file",
    "With SESSION, scores the tokens already in the session. With --text FILE\n"
    "(- for standard input), scores the file from an empty memory: BOS first and\n"
    "windows aligned to it, with the session options given here.\n"
    "Prints \"ppl P over N tokens\".\n"
    "\n"
    "Examples:\n"
    "  recall ppl books\n"
    "  recall ppl --text pg19-sample.txt --window 2048 --json\n",
    cmd_ppl};

static rc_t score_progress(const Recall__Response *r, void *arg)
{
    cli_progress *p = arg;
    if (r->body_case == RECALL__RESPONSE__BODY_PROGRESS && p->on && r->progress->total) {
        double el = clock_now_s() - p->t0, done = (double)r->progress->done,
               tot = (double)r->progress->total;
        char eta[32];
        cli_human_duration(eta, sizeof eta, done > 0 ? el * (tot - done) / done : NAN);
        fprintf(stderr, "\r\033[Kscoring %.0f/%.0f  ETA %s", done, tot, eta);
        fflush(stderr);
    }
    return RC_OK;
}

static int cmd_ppl(recall_client *c, const cli_args *a)
{
    const char *text_path = a->vals[O_TEXT];
    if (text_path && a->n_pos)
        return cli_usage_error(CMD_PPL, "give either SESSION or --text FILE, not both");
    if (!text_path && a->n_pos != 1)
        return cli_usage_error(CMD_PPL, a->n_pos ? "ppl takes one SESSION"
                                                 : "ppl needs a SESSION or --text FILE");
    Recall__ScoreRequest sr = RECALL__SCORE_REQUEST__INIT;
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    int any_opt;
    if (!cli_parse_session_opts(a, &so, &any_opt)) return EXIT_USAGE;
    if (!text_path && any_opt)
        return cli_usage_error(CMD_PPL, "session options apply to ppl --text only (a session keeps "
                                        "the options it was created with)");
    char *text = NULL;
    size_t len;
    if (text_path) {
        int e = cli_read_text_file(text_path, &text, &len);
        if (e >= 0) return e;
        sr.text = text;
        sr.add_bos = 1;
        sr.options = &so;
    } else {
        sr.session = (char *)a->pos[0];
    }
    Recall__Request req = cli_request(RECALL__REQUEST__BODY_SCORE, &sr);
    cli_progress pg;
    cli_progress_init(&pg);
    Recall__Response *r;
    rc_t rc = recall_client_call(c, &req, &r, score_progress, &pg);
    cli_progress_clear(&pg);
    free(text);
    if (rc) return cli_client_error(c, rc);
    if (r->body_case != RECALL__RESPONSE__BODY_SCORE) {
        recall__response__free_unpacked(r, NULL);
        return cli_report(EXIT_REMOTE, RC_ERR_FORMAT, "unexpected answer to Score");
    }
    const Recall__ScoreResponse *s = r->score;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        if (text_path)
            cJSON_AddStringToObject(o, "text", text_path);
        else
            cJSON_AddStringToObject(o, "session", sr.session);
        cJSON_AddNumberToObject(o, "ppl", s->ppl); /* cJSON writes null for a non-finite ppl */
        cJSON_AddNumberToObject(o, "tokens", (double)s->tokens);
        cJSON_AddNumberToObject(o, "scored", (double)s->scored);
        cJSON_AddNumberToObject(o, "nll", s->nll);
        cli_json_print(o);
    } else {
        printf("ppl %.2f over %llu tokens\n", s->ppl, (unsigned long long)s->tokens);
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}
