/* chat.c — chat templates as C formatters, and stop strings: see chat.h. */
#include "daemon/chat.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tokenizer.h"

/* LongLLaMA-Instruct's opening sentence (chat_initial_prompt of its fine-tuning script;
 * SimpleChatBot.prompt of its demo). */
static const char LONGLLAMA_PROMPT[] =
    "A chat between a user (denoted as USER:) and an artificial intelligence assistant "
    "(denoted as ASSISTANT:). The assistant gives helpful, detailed, and polite answers to "
    "the user's questions.\n\n";

const char *chat_template_name(chat_template_kind_t k)
{
    switch (k) {
    case CHAT_TEMPLATE_LLAMA2:
        return "llama2";
    case CHAT_TEMPLATE_LONGLLAMA_INSTRUCT:
        return "longllama-instruct";
    default:
        return "plain";
    }
}

rc_t chat_template_from_name(const char *name, chat_template_kind_t *out)
{
    for (int k = CHAT_TEMPLATE_PLAIN; k <= CHAT_TEMPLATE_LONGLLAMA_INSTRUCT; k++)
        if (!strcmp(name, chat_template_name((chat_template_kind_t)k))) {
            *out = (chat_template_kind_t)k;
            return RC_OK;
        }
    return RC_ERR_INVALID;
}

int chat_template_recognise(const char *j, chat_template_kind_t *out)
{
    /* Llama-2-chat's template and its many copies (with or without a default system
     * prompt, with or without a system-only branch) share these pieces: the [INST] wrapper
     * with bos_token, the <<SYS>> block, and the answer closed by eos_token. */
    if (strstr(j, "'[INST] '") && strstr(j, "' [/INST]'") && strstr(j, "<<SYS>>") &&
        strstr(j, "<</SYS>>") && strstr(j, "bos_token") && strstr(j, "eos_token")) {
        *out = CHAT_TEMPLATE_LLAMA2;
        return 1;
    }
    /* A Jinja rendering of LongLLaMA-Instruct's format names its roles this way; Vicuna's
     * USER:/ASSISTANT: format has another opening sentence and is not this. */
    if (strstr(j, "denoted as USER:") && strstr(j, "ASSISTANT: ")) {
        *out = CHAT_TEMPLATE_LONGLLAMA_INSTRUCT;
        return 1;
    }
    return 0;
}

/* A special token's printed form from tokenizer_config.json: a string, or an AddedToken
 * object {"content": ...}. */
static void token_string(const cJSON *root, const char *key, char *out, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (cJSON_IsString(v) && v->valuestring[0] && strlen(v->valuestring) < n)
        snprintf(out, n, "%s", v->valuestring);
}

rc_t chat_template_load(const char *model_dir, const char *name, chat_template_t *out, char *warn,
                        size_t warnlen, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    snprintf(out->bos, sizeof out->bos, "<s>");
    snprintf(out->eos, sizeof out->eos, "</s>");
    if (warnlen) warn[0] = 0;
    if (name && chat_template_from_name(name, &out->kind))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "unknown chat template '%s': plain, llama2 or longllama-instruct", name);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    cJSON *root = NULL;
    if (f) {
        long sz = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
        if (sz >= 0 && sz < (64 << 20) && fseek(f, 0, SEEK_SET) == 0 &&
            (buf = malloc((size_t)sz + 1)) && fread(buf, 1, (size_t)sz, f) == (size_t)sz) {
            buf[sz] = 0;
            root = cJSON_Parse(buf);
        }
        fclose(f);
        if (!root && warnlen)
            snprintf(warn, warnlen, "%s does not parse as JSON: chat uses the plain template",
                     path);
    }
    if (root) {
        token_string(root, "bos_token", out->bos, sizeof out->bos);
        token_string(root, "eos_token", out->eos, sizeof out->eos);
    }
    if (name) {
        snprintf(out->source, sizeof out->source, "--chat-template");
    } else {
        const cJSON *t = root ? cJSON_GetObjectItemCaseSensitive(root, "chat_template") : NULL;
        /* A list of named templates ({"name": "default", "template": ...}): the default. */
        if (cJSON_IsArray(t)) {
            const cJSON *e, *pick = NULL;
            cJSON_ArrayForEach(e, t)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default")) pick = e;
            }
            t = pick ? cJSON_GetObjectItemCaseSensitive(pick, "template") : NULL;
        }
        if (cJSON_IsString(t) && t->valuestring[0]) {
            if (chat_template_recognise(t->valuestring, &out->kind)) {
                snprintf(out->source, sizeof out->source, "tokenizer_config.json");
            } else {
                out->kind = CHAT_TEMPLATE_PLAIN;
                snprintf(out->source, sizeof out->source,
                         "fallback: tokenizer_config.json's template is not one recall knows");
                if (warnlen)
                    snprintf(warn, warnlen,
                             "the checkpoint's chat template (%s) is not one recall knows "
                             "(llama2, longllama-instruct): chat uses the plain template; "
                             "--chat-template chooses one",
                             path);
            }
        } else {
            out->kind = CHAT_TEMPLATE_PLAIN;
            snprintf(out->source, sizeof out->source, "default: the checkpoint has none");
        }
    }
    cJSON_Delete(root);
    free(buf);
    return RC_OK;
}

/* ---- formatting ---------------------------------------------------------------------- */

typedef struct builder {
    chat_prompt_t *p;
    size_t cap, pcap;
    int oom;
} builder_t;

static void put(builder_t *b, chat_part_kind_t kind, const char *s, size_t n)
{
    chat_prompt_t *p = b->p;
    if (b->oom || (!n && kind == CHAT_PART_TEXT)) return;
    if (p->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < p->len + n + 1)
            c *= 2;
        char *t = realloc(p->text, c);
        if (!t) {
            b->oom = 1;
            return;
        }
        p->text = t;
        b->cap = c;
    }
    /* A text part that follows a text part extends it: only specials (and the template's
     * own separately tokenized pieces, put with a zero-length break) cut parts. */
    int extend = kind == CHAT_PART_TEXT && p->n_parts &&
                 p->parts[p->n_parts - 1].kind == CHAT_PART_TEXT &&
                 p->parts[p->n_parts - 1].off + p->parts[p->n_parts - 1].len == p->len;
    if (!extend) {
        if (p->n_parts == b->pcap) {
            size_t c = b->pcap ? b->pcap * 2 : 16;
            struct chat_part *np = realloc(p->parts, c * sizeof *np);
            if (!np) {
                b->oom = 1;
                return;
            }
            p->parts = np;
            b->pcap = c;
        }
        p->parts[p->n_parts++] = (struct chat_part){kind, p->len, 0};
    }
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = 0;
    p->parts[p->n_parts - 1].len += n;
}

static void text(builder_t *b, const char *s)
{
    put(b, CHAT_PART_TEXT, s, strlen(s));
}

/* A text piece tokenized on its own, not joined to the text before it. */
static void piece(builder_t *b, const char *s, size_t n)
{
    chat_prompt_t *p = b->p;
    if (b->oom || !n) return;
    size_t before = p->n_parts;
    put(b, CHAT_PART_TEXT, s, n);
    if (!b->oom && p->n_parts == before) {
        /* put() extended the previous part: take these bytes back into a part of their own. */
        p->parts[p->n_parts - 1].len -= n;
        if (p->n_parts == b->pcap) {
            size_t c = b->pcap * 2;
            struct chat_part *np = realloc(p->parts, c * sizeof *np);
            if (!np) {
                b->oom = 1;
                return;
            }
            p->parts = np;
            b->pcap = c;
        }
        p->parts[p->n_parts++] = (struct chat_part){CHAT_PART_TEXT, p->len - n, n};
    }
}

/* Python's str.strip(): the ASCII white space Python strips (space, \t \n \v \f \r and the
 * separators \x1c-\x1f). Non-ASCII white space is kept: rare in prompts, and stripping it
 * would mean decoding UTF-8 here. */
static int py_space(unsigned char c)
{
    return c == ' ' || (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x1f);
}

static void stripped(const char *s, const char **from, size_t *n)
{
    size_t l = strlen(s);
    while (l && py_space((unsigned char)*s))
        s++, l--;
    while (l && py_space((unsigned char)s[l - 1]))
        l--;
    *from = s;
    *n = l;
}

static int is_system(const char *r)
{
    return !strcmp(r, "system") || !strcmp(r, "developer");
}

/* Llama-2-chat, as its Jinja template renders with add_generation_prompt ignored (it has
 * none):
 *   system_message = messages[0].content if messages[0].role == 'system'
 *   for each other message (index i from 0): roles must alternate, user first;
 *     content = i == 0 and system ? '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content
 *     user:      bos_token + '[INST] ' + content.strip() + ' [/INST]'
 *     assistant: ' ' + content.strip() + ' ' + eos_token */
static rc_t format_llama2(builder_t *b, const chat_template_t *t, const chat_message_t *m, size_t n,
                          char *err, size_t errlen)
{
    const char *system = NULL;
    size_t first = 0;
    if (n && is_system(m[0].role)) {
        system = m[0].content;
        first = 1;
    }
    for (size_t i = first; i < n; i++) {
        size_t k = i - first;
        int user = !strcmp(m[i].role, "user");
        if (user != (k % 2 == 0))
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "the llama2 chat template needs roles to alternate user/assistant/"
                           "user/... after an optional first system message; message %zu is "
                           "'%s'",
                           i, m[i].role);
        if (!user && strcmp(m[i].role, "assistant"))
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "the llama2 chat template has no place for role '%s' (message %zu)",
                           m[i].role, i);
        const char *c = m[i].content, *s;
        size_t l;
        char *joined = NULL;
        if (k == 0 && system) {
            size_t need = strlen(system) + strlen(c) + 32;
            if (!(joined = malloc(need)))
                return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
            snprintf(joined, need, "<<SYS>>\n%s\n<</SYS>>\n\n%s", system, c);
            c = joined;
        }
        stripped(c, &s, &l);
        if (user) {
            put(b, CHAT_PART_BOS, t->bos, strlen(t->bos));
            text(b, "[INST] ");
            put(b, CHAT_PART_TEXT, s, l);
            text(b, " [/INST]");
        } else {
            text(b, " ");
            put(b, CHAT_PART_TEXT, s, l);
            text(b, " ");
            put(b, CHAT_PART_EOS, t->eos, strlen(t->eos));
        }
        free(joined);
    }
    return RC_OK;
}

/* LongLLaMA-Instruct (chat.h gives the sources): BOS, the opening sentence, then per
 * message "\nUSER: " + text or "\nASSISTANT: " + text + EOS, then "\nASSISTANT: ". Each of
 * these is tokenized on its own, as the fine-tuning script did (tokenize_text_no_special_
 * tokens per piece). */
static rc_t format_longllama(builder_t *b, const chat_template_t *t, const chat_message_t *m,
                             size_t n, char *err, size_t errlen)
{
    put(b, CHAT_PART_BOS, t->bos, strlen(t->bos));
    size_t i = 0;
    if (n && is_system(m[0].role)) {
        piece(b, m[0].content, strlen(m[0].content));
        piece(b, "\n\n", 2);
        i = 1;
    } else {
        piece(b, LONGLLAMA_PROMPT, strlen(LONGLLAMA_PROMPT));
    }
    for (; i < n; i++) {
        const char *r = m[i].role;
        if (!strcmp(r, "user")) {
            piece(b, "\nUSER: ", 7);
            piece(b, m[i].content, strlen(m[i].content));
        } else if (!strcmp(r, "assistant")) {
            piece(b, "\nASSISTANT: ", 12);
            piece(b, m[i].content, strlen(m[i].content));
            put(b, CHAT_PART_EOS, t->eos, strlen(t->eos));
        } else {
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           is_system(r) ? "the longllama-instruct chat template takes a system "
                                          "message only first (message %zu)"
                                        : "the longllama-instruct chat template has no place "
                                          "for role '%2$s' (message %1$zu)",
                           i, r);
        }
    }
    piece(b, "\nASSISTANT: ", 12);
    return RC_OK;
}

/* recall's plain format: "Role: content\n" per message (system and developer are
 * "System", others capitalised), then "Assistant:". */
static void format_plain(builder_t *b, const chat_message_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char cap[64];
        const char *r = m[i].role;
        if (is_system(r))
            r = "System";
        else if (!strcmp(r, "user"))
            r = "User";
        else if (!strcmp(r, "assistant"))
            r = "Assistant";
        else {
            snprintf(cap, sizeof cap, "%s", r);
            cap[0] = (char)toupper((unsigned char)cap[0]);
            r = cap;
        }
        text(b, r);
        text(b, ": ");
        text(b, m[i].content);
        text(b, "\n");
    }
    text(b, "Assistant:");
}

rc_t chat_format(const chat_template_t *t, const chat_message_t *m, size_t n, chat_prompt_t *out,
                 char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!n) return rc_errf(RC_ERR_INVALID, err, errlen, "a chat needs at least one message");
    for (size_t i = 0; i < n; i++)
        if (!m[i].role || !m[i].role[0] || !m[i].content)
            return rc_errf(RC_ERR_INVALID, err, errlen, "message %zu has no role", i);
    builder_t b = {.p = out};
    rc_t rc = RC_OK;
    switch (t->kind) {
    case CHAT_TEMPLATE_LLAMA2:
        rc = format_llama2(&b, t, m, n, err, errlen);
        break;
    case CHAT_TEMPLATE_LONGLLAMA_INSTRUCT:
        rc = format_longllama(&b, t, m, n, err, errlen);
        break;
    default:
        format_plain(&b, m, n);
        break;
    }
    if (!rc && b.oom) rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    if (!rc && !out->len)
        rc = rc_errf(RC_ERR_INVALID, err, errlen,
                     "the %s chat template makes an empty prompt of these messages",
                     chat_template_name(t->kind));
    if (rc) chat_prompt_free(out);
    return rc;
}

void chat_prompt_free(chat_prompt_t *p)
{
    if (!p) return;
    free(p->text);
    free(p->parts);
    memset(p, 0, sizeof *p);
}

const char *const *chat_template_stops(chat_template_kind_t k)
{
    static const char *const none[] = {NULL};
    static const char *const plain[] = {"\nUser:", NULL};
    /* The demo's ChatOutputBuffer stops at the stripped role names. */
    static const char *const longllama[] = {"USER:", "ASSISTANT:", NULL};
    switch (k) {
    case CHAT_TEMPLATE_PLAIN:
        return plain;
    case CHAT_TEMPLATE_LONGLLAMA_INSTRUCT:
        return longllama;
    default:
        return none; /* llama2 ends its answers with EOS */
    }
}

/* ---- stop strings -------------------------------------------------------------------- */

int chat_stop_scan(const char *text, size_t len, const char *const *stops, size_t n_stops,
                   size_t *cut)
{
    size_t best = len;
    int found = 0;
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (!sl) continue;
        const char *m = memmem(text, len, stops[i], sl);
        if (m && (size_t)(m - text) < best) {
            best = (size_t)(m - text);
            found = 1;
        }
    }
    if (found) {
        *cut = best;
        return 1;
    }
    size_t hold = 0; /* the longest tail of text that is a proper prefix of a stop string */
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = sl ? sl - 1 : 0; k > hold; k--)
            if (k <= len && !memcmp(text + len - k, stops[i], k)) {
                hold = k;
                break;
            }
    }
    *cut = len - hold;
    return 0;
}

rc_t chat_ask_check(const Recall__AskRequest *q, size_t max_bytes, char *err, size_t errlen)
{
    if (q->n_stop > CHAT_STOP_MAX)
        return rc_errf(RC_ERR_LIMIT, err, errlen, "an Ask takes at most %d stop strings, not %zu",
                       CHAT_STOP_MAX, q->n_stop);
    for (size_t i = 0; i < q->n_stop; i++) {
        size_t l = strlen(q->stop[i]);
        if (!l || l > CHAT_STOP_BYTES)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "stop string %zu is %s: each must be 1 to %d bytes", i,
                           l ? "too long" : "empty", CHAT_STOP_BYTES);
        if (!utf8_valid(q->stop[i], l))
            return rc_errf(RC_ERR_INVALID, err, errlen, "stop string %zu is not valid UTF-8", i);
    }
    if (!q->n_messages) return RC_OK;
    if (q->question[0] || q->n_question_tokens)
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "an Ask carries a question or chat messages, not both");
    if (q->n_messages > CHAT_MESSAGES_MAX)
        return rc_errf(RC_ERR_LIMIT, err, errlen, "a chat takes at most %d messages, not %zu",
                       CHAT_MESSAGES_MAX, q->n_messages);
    size_t total = 0;
    for (size_t i = 0; i < q->n_messages; i++) {
        const Recall__ChatMessage *m = q->messages[i];
        size_t rl = strlen(m->role), cl = strlen(m->content);
        if (!rl || rl > 64)
            return rc_errf(RC_ERR_INVALID, err, errlen,
                           "message %zu's role must be 1 to 64 bytes (system, user, assistant)", i);
        if (!utf8_valid(m->role, rl) || !utf8_valid(m->content, cl))
            return rc_errf(RC_ERR_INVALID, err, errlen, "message %zu is not valid UTF-8", i);
        total += rl + cl + 16;
    }
    if (total > max_bytes)
        return rc_errf(RC_ERR_LIMIT, err, errlen,
                       "the chat messages are over the limit of %zu bytes", max_bytes);
    return RC_OK;
}
