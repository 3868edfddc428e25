/* http_openai.c — the OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions
 * and /v1/models.
 *
 * A completion is one Ask on the session named by the request (its "session" field, else
 * its "model"): the prompt is the question, asked about everything the session holds, and
 * the session is left as it was. The Ask already streams one message per token; with
 * "stream": true each becomes one server-sent event in OpenAI's chunk format, and the
 * stream ends with "data: [DONE]". Stop strings are applied here, since the daemon has no
 * notion of them: text that might be the start of a stop string is held back until the
 * next token decides, and once one matches, the answer ends before it. The daemon cannot
 * be told to stop early, so its remaining tokens are still read (and dropped): the worker
 * is busy with them either way, and reading to the final message gives exact usage
 * figures and leaves the connection to the daemon reusable. */
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "daemon/chat.h"
#include "daemon/http_internal.h"

#define ASK_TIMEOUT_MS (600 * 1000) /* per token: a long prefill is normal */

/* ---- pure helpers -------------------------------------------------------------------- */

void http_ask_free(http_ask_t *a)
{
    free(a->session);
    free(a->prompt);
    for (int i = 0; i < a->n_messages; i++) {
        free(a->roles[i]);
        free(a->contents[i]);
    }
    free(a->roles);
    free(a->contents);
    for (int i = 0; i < a->n_stop; i++)
        free(a->stop[i]);
    memset(a, 0, sizeof *a);
}

static rc_t bad(const char **field, const char *name, char *err, size_t errlen, const char *why)
{
    *field = name;
    return rc_errf(RC_ERR_INVALID, err, errlen, "'%s' %s", name, why);
}

rc_t http_chat_messages(const cJSON *messages, http_ask_t *a, char *err, size_t errlen)
{
    if (!cJSON_IsArray(messages) || !cJSON_GetArraySize(messages))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "'messages' must be a non-empty array of {role, content}");
    int n = cJSON_GetArraySize(messages);
    if (!(a->roles = calloc((size_t)n, sizeof *a->roles)) ||
        !(a->contents = calloc((size_t)n, sizeof *a->contents)))
        return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role) || !role->valuestring[0])
            return rc_errf(RC_ERR_INVALID, err, errlen, "messages[%d] has no 'role' string", i);
        http_buf_t out = {0};
        if (cJSON_IsString(content)) {
            http_buf_printf(&out, "%s", content->valuestring);
        } else if (cJSON_IsArray(content)) {
            const cJSON *part;
            cJSON_ArrayForEach(part, content)
            {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
                    !cJSON_IsString(text)) {
                    http_buf_free(&out);
                    return rc_errf(RC_ERR_INVALID, err, errlen,
                                   "messages[%d].content: only text parts ({\"type\": \"text\", "
                                   "\"text\": ...}) are supported",
                                   i);
                }
                http_buf_printf(&out, "%s", text->valuestring);
            }
        } else if (!cJSON_IsNull(content)) {
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "messages[%d].content must be a string or an array of text parts", i);
        }
        if (out.oom || !(a->roles[i] = strdup(role->valuestring))) {
            http_buf_free(&out);
            return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
        }
        a->contents[i] = out.p ? out.p : strdup("");
        a->n_messages = ++i;
        if (!a->contents[i - 1]) return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    }
    return RC_OK;
}

/* A number field that must be absent, null, or in [lo, hi] (and whole when integer). */
static rc_t number(const cJSON *root, const char *name, double lo, double hi, int integer,
                   double *v, int *set, const char **field, char *err, size_t errlen)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, name);
    *set = 0;
    if (!x || cJSON_IsNull(x)) return RC_OK;
    char why[128];
    snprintf(why, sizeof why, "must be %s from %g to %g", integer ? "a whole number" : "a number",
             lo, hi);
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= lo && x->valuedouble <= hi) ||
        (integer && x->valuedouble != (double)(uint64_t)x->valuedouble))
        return bad(field, name, err, errlen, why);
    *v = x->valuedouble;
    *set = 1;
    return RC_OK;
}

rc_t http_ask_parse(const char *json, size_t len, int chat, http_ask_t *a, const char **field,
                    char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    *field = NULL;
    rc_t rc = RC_ERR_INVALID;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        rc_errf(rc, err, errlen, "the request body is not a JSON object");
        goto out;
    }
    const cJSON *sess = cJSON_GetObjectItemCaseSensitive(root, "session");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *name = cJSON_IsString(sess) && sess->valuestring[0] ? sess : model;
    if (sess && !cJSON_IsNull(sess) && !cJSON_IsString(sess)) {
        rc = bad(field, "session", err, errlen, "must be a string (the session's name)");
        goto out;
    }
    if (!cJSON_IsString(name) || !name->valuestring[0]) {
        rc = bad(field, "model", err, errlen,
                 "is required: the session to ask (or give it as 'session')");
        goto out;
    }
    if (!(a->session = strdup(name->valuestring))) goto oom;

    if (chat) {
        rc = http_chat_messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), a, err,
                                errlen);
        if (rc) {
            *field = "messages";
            goto out;
        }
        rc = RC_ERR_INVALID;
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1) p = cJSON_GetArrayItem(p, 0);
        if (!cJSON_IsString(p)) {
            rc = bad(field, "prompt", err, errlen,
                     "is required: a string (or an array of exactly one string)");
            goto out;
        }
        if (!(a->prompt = strdup(p->valuestring))) goto oom;
    }
    if (!chat && !a->prompt && !(a->prompt = strdup(""))) goto oom;

    double v;
    int set;
    if ((rc = number(root, "max_tokens", 1, 4294967295.0, 1, &v, &set, field, err, errlen)))
        goto out;
    if (set) a->max_tokens = (uint32_t)v;
    if (chat) {
        if ((rc = number(root, "max_completion_tokens", 1, 4294967295.0, 1, &v, &set, field, err,
                         errlen)))
            goto out;
        if (set) a->max_tokens = (uint32_t)v;
    }
    if ((rc = number(root, "temperature", 0, 100, 0, &v, &set, field, err, errlen))) goto out;
    if (set) a->temperature = (float)v;
    if ((rc = number(root, "top_p", 0, 1, 0, &v, &set, field, err, errlen))) goto out;
    if (set) a->top_p = (float)v;
    if ((rc = number(root, "seed", 0, 9007199254740992.0, 1, &v, &set, field, err, errlen)))
        goto out;
    if (set) a->seed = (uint64_t)v;
    if ((rc = number(root, "n", 1, 1, 1, &v, &set, field, err, errlen))) {
        rc_errf(rc, err, errlen, "'n' must be 1: one answer per request is supported");
        goto out;
    }
    rc = RC_ERR_INVALID;

    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (cJSON_IsString(stop)) {
        if (stop->valuestring[0] && !(a->stop[a->n_stop++] = strdup(stop->valuestring))) goto oom;
    } else if (cJSON_IsArray(stop)) {
        const cJSON *s;
        if (cJSON_GetArraySize(stop) > HTTP_STOP_MAX) {
            rc = bad(field, "stop", err, errlen, "takes at most 4 strings");
            goto out;
        }
        cJSON_ArrayForEach(s, stop)
        {
            if (!cJSON_IsString(s)) {
                rc = bad(field, "stop", err, errlen, "must be a string or an array of strings");
                goto out;
            }
            if (s->valuestring[0] && !(a->stop[a->n_stop++] = strdup(s->valuestring))) goto oom;
        }
    } else if (stop && !cJSON_IsNull(stop)) {
        rc = bad(field, "stop", err, errlen, "must be a string or an array of strings");
        goto out;
    }

    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream)) {
        rc = bad(field, "stream", err, errlen, "must be true or false");
        goto out;
    }
    a->stream = cJSON_IsTrue(stream);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    a->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
    rc = RC_OK;
    goto out;
oom:
    rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
out:
    cJSON_Delete(root);
    return rc;
}

int http_stop_scan(const char *text, size_t len, char *const *stops, int n_stops, size_t *cut)
{
    return chat_stop_scan(text, len, (const char *const *)stops, n_stops > 0 ? (size_t)n_stops : 0,
                          cut);
}

void http_sse_event(http_buf_t *b, const char *data)
{
    http_buf_printf(b, "data: %s\n\n", data);
}

/* ---- one completion ------------------------------------------------------------------ */

typedef struct completion {
    http_gateway_t *g;
    recall_client *c;
    uint64_t id;
    int chat;
    http_ask_t ask;
    char cid[48];
    long created;
    http_buf_t text; /* every token's text so far */
    size_t sent;     /* bytes of text already emitted (streams) */
    unsigned tokens, prompt_tokens;
    int stopped;             /* a stop string matched: text is final, later tokens are dropped */
    int finish_sent;         /* streams: the chunk with finish_reason went out */
    const char *finish;      /* NULL until the daemon's final message */
    int clean;               /* the daemon's final reply was read: the client may be reused */
    Recall__Response *first; /* read before the stream started */
    http_buf_t out;          /* stream bytes not yet handed to libmicrohttpd */
    size_t out_at;
    int done;
} completion_t;

static void completion_free(void *p)
{
    completion_t *s = p;
    if (!s) return;
    http_client_put(s->g, s->c, s->clean);
    if (s->first) recall__response__free_unpacked(s->first, NULL);
    http_ask_free(&s->ask);
    http_buf_free(&s->text);
    http_buf_free(&s->out);
    free(s);
}

/* Takes one Ask response: its text (until a stop string matched), and on the final one
 * the counts and the reason, setting s->finish. */
static void take(completion_t *s, const Recall__Response *r)
{
    const Recall__AskResponse *a = r->body_case == RECALL__RESPONSE__BODY_ASK ? r->ask : NULL;
    if (a && a->text && a->text[0] && !s->stopped) {
        http_buf_append(&s->text, a->text, strlen(a->text));
        size_t cut;
        if (s->ask.n_stop &&
            http_stop_scan(s->text.p, s->text.len, s->ask.stop, s->ask.n_stop, &cut)) {
            s->text.len = cut;
            s->text.p[cut] = 0;
            s->stopped = 1;
        }
    }
    if (a && !a->done && r->more) s->tokens++;
    if (!r->more) {
        s->clean = 1;
        if (a) {
            s->prompt_tokens = a->prompt_tokens;
            s->tokens = a->generated;
        }
        s->finish = !s->stopped && a && a->stop_reason && !strcmp(a->stop_reason, "length")
                        ? "length"
                        : "stop";
    }
}

static cJSON *usage(const completion_t *s)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", s->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", s->tokens);
    cJSON_AddNumberToObject(u, "total_tokens", s->prompt_tokens + s->tokens);
    return u;
}

static cJSON *envelope(const completion_t *s, const char *object)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->cid);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)s->created);
    cJSON_AddStringToObject(o, "model", s->ask.session);
    return o;
}

/* One chunk event: text (may be NULL), finish reason (may be NULL), role for chat's first. */
static void chunk(completion_t *s, const char *text, size_t n, const char *finish, int role)
{
    cJSON *o = envelope(s, s->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    char *t = strndup(text ? text : "", text ? n : 0);
    if (s->chat) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (text || role) cJSON_AddStringToObject(delta, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c, "text", t ? t : "");
    }
    free(t);
    cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    char *js = cJSON_PrintUnformatted(o);
    if (js) http_sse_event(&s->out, js);
    cJSON_free(js);
    cJSON_Delete(o);
}

/* The stream's next events: emits what the latest response released, and the end. */
static void stream_step(completion_t *s)
{
    Recall__Response *r = s->first;
    s->first = NULL;
    rc_t rc = r ? RC_OK : http_client_next(s->g, s->c, s->id, ASK_TIMEOUT_MS, &r);
    if (rc) {
        const char *type, *code;
        http_status_of_rc(rc, recall_client_error(s->c), &type, &code);
        cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "message", recall_client_error(s->c));
        cJSON_AddStringToObject(e, "type", type);
        cJSON_AddStringToObject(e, "code", code);
        char *js = cJSON_PrintUnformatted(o);
        if (js) http_sse_event(&s->out, js);
        cJSON_free(js);
        cJSON_Delete(o);
        http_sse_event(&s->out, "[DONE]");
        s->clean = recall_client_error_remote(s->c); /* the daemon's final (error) reply */
        s->done = 1;
        return;
    }
    take(s, r);
    recall__response__free_unpacked(r, NULL);
    if (s->finish_sent && !s->finish) return; /* dropping tokens after a stop string */
    size_t upto = s->text.len;
    if (!s->finish && !s->stopped && s->ask.n_stop)
        http_stop_scan(s->text.p ? s->text.p : "", s->text.len, s->ask.stop, s->ask.n_stop, &upto);
    if (upto > s->sent) {
        chunk(s, s->text.p + s->sent, upto - s->sent, NULL, 0);
        s->sent = upto;
    }
    if ((s->stopped || s->finish) && !s->finish_sent) {
        chunk(s, NULL, 0, s->finish ? s->finish : "stop", 0);
        s->finish_sent = 1;
    }
    if (s->finish) {
        if (s->ask.include_usage) {
            cJSON *o = envelope(s, s->chat ? "chat.completion.chunk" : "text_completion");
            cJSON_AddArrayToObject(o, "choices");
            cJSON_AddItemToObject(o, "usage", usage(s));
            char *js = cJSON_PrintUnformatted(o);
            if (js) http_sse_event(&s->out, js);
            cJSON_free(js);
            cJSON_Delete(o);
        }
        http_sse_event(&s->out, "[DONE]");
        s->done = 1;
    }
}

/* libmicrohttpd's content reader: blocks (on this connection's thread) until the daemon
 * sends the next token, then hands over its event. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    completion_t *s = cls;
    while (s->out_at == s->out.len) {
        if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
        s->out.len = s->out_at = 0;
        stream_step(s);
        if (s->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = s->out.len - s->out_at;
    if (n > max) n = max;
    memcpy(buf, s->out.p + s->out_at, n);
    s->out_at += n;
    return (ssize_t)n;
}

void http_openai_completions(http_req_t *r, int chat)
{
    http_gateway_t *g = r->g;
    completion_t *s = calloc(1, sizeof *s);
    char err[1024];
    const char *field;
    if (!s) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    s->g = g;
    s->chat = chat;
    s->created = (long)time(NULL);
    rc_t rc = http_ask_parse(r->body.p ? r->body.p : "", r->body.len, chat, &s->ask, &field, err,
                             sizeof err);
    if (rc) {
        http_reply_error(r, rc == RC_ERR_NOMEM ? 500 : 400,
                         !field                    ? "invalid_json"
                         : strstr(err, "required") ? "missing_field"
                                                   : "invalid_value",
                         "%s", err);
        completion_free(s);
        return;
    }
    if (!(s->c = http_client_get(g, err, sizeof err))) {
        http_reply_error(r, 503, "daemon_unavailable", "%s", err);
        completion_free(s);
        return;
    }
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__AskRequest ar = RECALL__ASK_REQUEST__INIT;
    ar.session = s->ask.session;
    ar.question = s->ask.prompt;
    ar.max_tokens = s->ask.max_tokens;
    ar.temperature = s->ask.temperature;
    ar.top_p = s->ask.top_p;
    ar.seed = s->ask.seed;
    /* The daemon ends the answer at a stop string (and stops generating there). */
    ar.n_stop = (size_t)s->ask.n_stop;
    ar.stop = s->ask.stop;
    /* A chat: the daemon applies the checkpoint's chat template to the messages. */
    Recall__ChatMessage *msgs = NULL, **mp = NULL;
    if (chat) {
        size_t n = (size_t)s->ask.n_messages;
        msgs = calloc(n, sizeof *msgs);
        mp = calloc(n, sizeof *mp);
        if (!msgs || !mp) {
            free(msgs);
            free(mp);
            completion_free(s);
            http_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            recall__chat_message__init(&msgs[i]);
            msgs[i].role = s->ask.roles[i];
            msgs[i].content = s->ask.contents[i];
            mp[i] = &msgs[i];
        }
        ar.question = (char *)"";
        ar.n_messages = n;
        ar.messages = mp;
    }
    req.body_case = RECALL__REQUEST__BODY_ASK;
    req.ask = &ar;
    rc = recall_client_send(s->c, &req, &s->id);
    free(msgs);
    free(mp);
    snprintf(s->cid, sizeof s->cid, "%s-%llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)s->id);
    /* The first answer decides the status: an unknown session is a 404, not a stream. */
    if (!rc) rc = http_client_next(g, s->c, s->id, ASK_TIMEOUT_MS, &s->first);
    if (rc) {
        s->clean = recall_client_error_remote(s->c);
        http_reply_rc(r, rc, recall_client_error(s->c));
        completion_free(s);
        return;
    }
    if (s->ask.stream) {
        if (chat) chunk(s, NULL, 0, NULL, 1); /* OpenAI's first chat chunk: the role */
        struct MHD_Response *resp = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 4096, stream_read, s, completion_free);
        if (!resp) {
            completion_free(s);
            http_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        http_reply_queue(r, 200, resp);
        return;
    }
    /* Not streamed: read to the end (or to a stop string), then one body. */
    for (;;) {
        Recall__Response *x = s->first;
        s->first = NULL;
        if (!x && (rc = http_client_next(g, s->c, s->id, ASK_TIMEOUT_MS, &x))) {
            s->clean = recall_client_error_remote(s->c);
            http_reply_rc(r, rc, recall_client_error(s->c));
            completion_free(s);
            return;
        }
        take(s, x);
        recall__response__free_unpacked(x, NULL);
        if (s->finish) break;
    }
    cJSON *o = envelope(s, chat ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    const char *text = s->text.p ? s->text.p : "";
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", text);
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", s->finish);
    cJSON_AddItemToObject(o, "usage", usage(s));
    http_reply_json(r, s->text.oom ? 500 : 200, o);
    completion_free(s);
}

/* ---- /v1/models ---------------------------------------------------------------------- */

void http_openai_models(http_req_t *r)
{
    char err[512];
    recall_client *c = http_client_get(r->g, err, sizeof err);
    if (!c) {
        http_reply_error(r, 503, "daemon_unavailable", "%s", err);
        return;
    }
    Recall__Request req = RECALL__REQUEST__INIT;
    Recall__ListSessionsRequest lr = RECALL__LIST_SESSIONS_REQUEST__INIT;
    req.body_case = RECALL__REQUEST__BODY_LIST_SESSIONS;
    req.list_sessions = &lr;
    Recall__Response *resp;
    rc_t rc = http_client_call(r->g, c, &req, 30000, &resp);
    if (rc) {
        http_reply_rc(r, rc, recall_client_error(c));
        http_client_put(r->g, c, recall_client_error_remote(c));
        return;
    }
    http_client_put(r->g, c, 1);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    const Recall__ListSessionsResponse *l =
        resp->body_case == RECALL__RESPONSE__BODY_LIST_SESSIONS ? resp->list_sessions : NULL;
    for (size_t i = 0; l && i < l->n_sessions; i++) {
        const Recall__SessionInfo *si = l->sessions[i];
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", si->name);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)si->created_unix);
        cJSON_AddStringToObject(m, "owned_by", "recall");
        cJSON_AddItemToArray(data, m);
    }
    recall__response__free_unpacked(resp, NULL);
    http_reply_json(r, 200, o);
}
