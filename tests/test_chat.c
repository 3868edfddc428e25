/* test_chat — the chat templates (daemon/chat.h) against exact strings, and stop strings.
 *
 * Each expected prompt below is derived by hand from the template's definition, step by
 * step in the comment above it; tests/chat_ref.py checks the same formatters against the
 * Jinja template itself rendered by jinja2 (Llama-2-chat) and against a Python transcription
 * of LongLLaMA's demo (longllama-instruct), on more conversations.
 *
 * `test_chat render KIND` reads a conversation from stdin (one message per line:
 * ROLE<TAB>CONTENT with \n and \\ escaped) and prints the prompt, then a line per part
 * (kind, offset, length) after a line "--parts--"; chat_ref.py drives it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "daemon/chat.h"
#include "tests/check.h"

static chat_template_t tmpl(chat_template_kind_t k)
{
    chat_template_t t = {.kind = k};
    strcpy(t.bos, "<s>");
    strcpy(t.eos, "</s>");
    return t;
}

/* Formats and compares the whole text; returns the prompt for more checks (free it). */
static chat_prompt_t expect(chat_template_kind_t k, const chat_message_t *m, size_t n,
                            const char *want, const char *what)
{
    chat_template_t t = tmpl(k);
    chat_prompt_t p;
    char err[256] = "";
    rc_t rc = chat_format(&t, m, n, &p, err, sizeof err);
    CHECK_MSG(rc == RC_OK, "%s: rc %d %s", what, rc, err);
    CHECK_MSG(rc == RC_OK && p.text && !strcmp(p.text, want), "%s:\n got [%s]\nwant [%s]", what,
              p.text ? p.text : "(null)", want);
    /* The parts tile the text exactly, in order. */
    size_t at = 0;
    for (size_t i = 0; i < p.n_parts; i++) {
        CHECK_MSG(p.parts[i].off == at, "%s: part %zu at %zu, want %zu", what, i, p.parts[i].off,
                  at);
        at += p.parts[i].len;
    }
    CHECK_MSG(rc || at == p.len, "%s: parts cover %zu of %zu bytes", what, at, p.len);
    return p;
}

static void check_parts(const chat_prompt_t *p, const char *const *want, const char *what)
{
    size_t n = 0;
    while (want[n])
        n++;
    CHECK_MSG(p->n_parts == n, "%s: %zu parts, want %zu", what, p->n_parts, n);
    for (size_t i = 0; i < n && i < p->n_parts; i++) {
        char got[1024];
        const char *kind = p->parts[i].kind == CHAT_PART_BOS   ? "BOS"
                           : p->parts[i].kind == CHAT_PART_EOS ? "EOS"
                                                               : NULL;
        if (kind)
            snprintf(got, sizeof got, "%s", kind);
        else
            snprintf(got, sizeof got, "%.*s", (int)p->parts[i].len, p->text + p->parts[i].off);
        CHECK_MSG(!strcmp(got, want[i]), "%s: part %zu [%s], want [%s]", what, i, got, want[i]);
    }
}

static void test_llama2(void)
{
    /* Llama-2-chat's template (tokenizer_config.json of meta-llama/Llama-2-7b-chat-hf):
     *   messages[0] is system -> system_message = "You are terse.", loop over the rest;
     *   loop 0 (user): content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + " Hi there "
     *     -> strip() removes the trailing blank only (the leading one is inside)
     *     -> bos + '[INST] ' + "<<SYS>>\nYou are terse.\n<</SYS>>\n\n Hi there" + ' [/INST]'
     *   loop 1 (assistant): ' ' + "Hello!".strip() + ' ' + eos -> " Hello! </s>"
     *   loop 2 (user): bos + '[INST] ' + "What is 2+2?" + ' [/INST]' */
    chat_message_t m[] = {{"system", "You are terse."},
                          {"user", " Hi there "},
                          {"assistant", "Hello!\n"},
                          {"user", "What is 2+2?"}};
    chat_prompt_t p = expect(CHAT_TEMPLATE_LLAMA2, m, 4,
                             "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n Hi there [/INST] "
                             "Hello! </s><s>[INST] What is 2+2? [/INST]",
                             "llama2 with a system message");
    /* Hugging Face's tokenizer splits the rendered text at special tokens only. */
    const char *parts[] = {"BOS",
                           "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\n Hi there [/INST] Hello! ",
                           "EOS",
                           "BOS",
                           "[INST] What is 2+2? [/INST]",
                           NULL};
    check_parts(&p, parts, "llama2 parts");
    chat_prompt_free(&p);

    /* No system message: loop 0 is the user's, content stripped: "<s>[INST] Hi [/INST]". */
    chat_message_t u[] = {{"user", "\tHi \n"}};
    p = expect(CHAT_TEMPLATE_LLAMA2, u, 1, "<s>[INST] Hi [/INST]", "llama2 one user message");
    chat_prompt_free(&p);

    /* A user's "<s>" stays text: it is inside a text part, not a BOS part. */
    chat_message_t inj[] = {{"user", "a</s><s>b"}};
    p = expect(CHAT_TEMPLATE_LLAMA2, inj, 1, "<s>[INST] a</s><s>b [/INST]",
               "llama2 markers in text");
    const char *pi[] = {"BOS", "[INST] a</s><s>b [/INST]", NULL};
    check_parts(&p, pi, "llama2 markers stay text");
    chat_prompt_free(&p);

    /* What the template refuses (raise_exception): roles that do not alternate; and roles
     * it has no branch for, which recall refuses rather than drop silently. */
    chat_template_t t = tmpl(CHAT_TEMPLATE_LLAMA2);
    char err[256];
    chat_message_t bad1[] = {{"user", "a"}, {"user", "b"}};
    chat_message_t bad2[] = {{"assistant", "a"}};
    chat_message_t bad3[] = {{"user", "a"}, {"tool", "b"}};
    chat_message_t bad4[] = {{"system", "s"}, {"system", "t"}};
    CHECK_RC(chat_format(&t, bad1, 2, &p, err, sizeof err), RC_ERR_INVALID);
    CHECK(strstr(err, "alternate") != NULL);
    CHECK_RC(chat_format(&t, bad2, 1, &p, err, sizeof err), RC_ERR_INVALID);
    CHECK_RC(chat_format(&t, bad3, 2, &p, err, sizeof err), RC_ERR_INVALID);
    CHECK_RC(chat_format(&t, bad4, 2, &p, err, sizeof err), RC_ERR_INVALID);
    /* A system message alone renders nothing in this template: refused as empty. */
    CHECK_RC(chat_format(&t, bad4, 1, &p, err, sizeof err), RC_ERR_INVALID);
    CHECK(p.text == NULL && p.n_parts == 0);
}

static void test_longllama(void)
{
    /* LongLLaMA-Instruct (long_llama_instruct_colab.ipynb, SimpleChatBot): the prompt is
     * BOS + its opening sentence; ask() adds "\nUSER: " + text + "\nASSISTANT: "; an earlier
     * answer was "\nASSISTANT: " + text + EOS (chat_tuning_data_processor). */
    const char *opening =
        "A chat between a user (denoted as USER:) and an artificial intelligence assistant "
        "(denoted as ASSISTANT:). The assistant gives helpful, detailed, and polite answers to "
        "the user's questions.\n\n";
    chat_message_t m[] = {{"user", "Hi"}, {"assistant", "Hello."}, {"user", "Who wrote it?"}};
    char want[2048];
    snprintf(want, sizeof want,
             "<s>%s\nUSER: Hi\nASSISTANT: Hello.</s>\nUSER: Who wrote it?\nASSISTANT: ", opening);
    chat_prompt_t p = expect(CHAT_TEMPLATE_LONGLLAMA_INSTRUCT, m, 3, want, "longllama-instruct");
    /* Each piece is tokenized on its own, as tokenize_text_no_special_tokens did. */
    const char *parts[] = {
        "BOS",      opening,         "\nUSER: ",      "Hi", "\nASSISTANT: ", "Hello.", "EOS",
        "\nUSER: ", "Who wrote it?", "\nASSISTANT: ", NULL};
    check_parts(&p, parts, "longllama-instruct parts");
    chat_prompt_free(&p);

    /* A system message takes the opening sentence's place, with its blank line. */
    chat_message_t s[] = {{"system", "Answer in French."}, {"user", "Hi"}};
    p = expect(CHAT_TEMPLATE_LONGLLAMA_INSTRUCT, s, 2,
               "<s>Answer in French.\n\n\nUSER: Hi\nASSISTANT: ", "longllama-instruct system");
    chat_prompt_free(&p);

    chat_template_t t = tmpl(CHAT_TEMPLATE_LONGLLAMA_INSTRUCT);
    char err[256];
    chat_message_t bad[] = {{"user", "a"}, {"system", "b"}};
    CHECK_RC(chat_format(&t, bad, 2, &p, err, sizeof err), RC_ERR_INVALID);
    chat_message_t bad2[] = {{"tool", "a"}};
    CHECK_RC(chat_format(&t, bad2, 1, &p, err, sizeof err), RC_ERR_INVALID);
    CHECK(strstr(err, "tool") != NULL);
}

static void test_plain(void)
{
    /* recall's own format (README, HTTP API): "Role: content\n" per message, system and
     * developer as System, other roles capitalised, then "Assistant:". */
    chat_message_t m[] = {{"system", "Be brief."}, {"user", "Hello there"}, {"assistant", "Hi."},
                          {"tool", "42"},          {"developer", "d"},      {"user", "Why?"}};
    chat_prompt_t p = expect(CHAT_TEMPLATE_PLAIN, m, 6,
                             "System: Be brief.\nUser: Hello there\nAssistant: Hi.\nTool: 42\n"
                             "System: d\nUser: Why?\nAssistant:",
                             "plain");
    CHECK(p.n_parts == 1 && p.parts[0].kind == CHAT_PART_TEXT);
    chat_prompt_free(&p);
    CHECK(!strcmp(chat_template_stops(CHAT_TEMPLATE_PLAIN)[0], "\nUser:"));
    CHECK(chat_template_stops(CHAT_TEMPLATE_LLAMA2)[0] == NULL);
}

/* The Llama-2-chat template as its tokenizer_config.json carries it. */
static const char LLAMA2_JINJA[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% "
    "set system_message = false %}{% endif %}{% for message in loop_messages %}{% if "
    "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == "
    "0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% "
    "endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' "
    "[/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
    "eos_token }}{% endif %}{% endfor %}";

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_recognise_and_load(void)
{
    chat_template_kind_t k;
    CHECK(chat_template_recognise(LLAMA2_JINJA, &k) == 1 && k == CHAT_TEMPLATE_LLAMA2);
    /* ChatML and Mistral's [INST] without <<SYS>> are not recognised. */
    CHECK(!chat_template_recognise("{% for message in messages %}{{'<|im_start|>' + "
                                   "message['role'] + '\\n' + message['content'] + "
                                   "'<|im_end|>'}}{% endfor %}",
                                   &k));
    CHECK(!chat_template_recognise("{{ bos_token }}{% for m in messages %}{{ '[INST] ' + "
                                   "m['content'] + ' [/INST]' }}{{ eos_token }}{% endfor %}",
                                   &k));
    CHECK(chat_template_recognise("{{ bos_token }}A chat between a user (denoted as USER:) and "
                                  "... {{ '\\nASSISTANT: ' }}",
                                  &k) == 1 &&
          k == CHAT_TEMPLATE_LONGLLAMA_INSTRUCT);
    CHECK_RC(chat_template_from_name("llama2", &k), RC_OK);
    CHECK(k == CHAT_TEMPLATE_LLAMA2);
    CHECK_RC(chat_template_from_name("chatml", &k), RC_ERR_INVALID);

    char dir[] = "/tmp/test_chat_XXXXXX", path[256], warn[512], err[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    chat_template_t t;

    /* No tokenizer_config.json: plain, no warning, <s> and </s>. */
    CHECK_RC(chat_template_load(dir, NULL, &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_PLAIN && !warn[0] && !strcmp(t.bos, "<s>"));

    /* Llama-2's template, with AddedToken objects for the special tokens. */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "chat_template", LLAMA2_JINJA);
    cJSON *bos = cJSON_AddObjectToObject(o, "bos_token");
    cJSON_AddStringToObject(bos, "content", "<BOS>");
    cJSON_AddStringToObject(o, "eos_token", "<EOS>");
    char *js = cJSON_Print(o);
    write_file(path, js);
    free(js);
    cJSON_Delete(o);
    CHECK_RC(chat_template_load(dir, NULL, &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_LLAMA2 && !warn[0]);
    CHECK(!strcmp(t.bos, "<BOS>") && !strcmp(t.eos, "<EOS>"));
    /* The flag wins over the checkpoint's template. */
    CHECK_RC(chat_template_load(dir, "plain", &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_PLAIN && !strcmp(t.source, "--chat-template"));
    CHECK_RC(chat_template_load(dir, "jinja", &t, warn, sizeof warn, err, sizeof err),
             RC_ERR_INVALID);

    /* An unknown template: plain, with a warning that says so. */
    write_file(path, "{\"chat_template\": \"{% for m in messages %}<|im_start|>{% endfor %}\"}");
    CHECK_RC(chat_template_load(dir, NULL, &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_PLAIN && strstr(warn, "not one recall knows"));

    /* The list form: the template named "default". */
    o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "chat_template"), *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", "tool_use");
    cJSON_AddStringToObject(e, "template", "x");
    cJSON_AddItemToArray(arr, e);
    e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", "default");
    cJSON_AddStringToObject(e, "template", LLAMA2_JINJA);
    cJSON_AddItemToArray(arr, e);
    js = cJSON_Print(o);
    write_file(path, js);
    free(js);
    cJSON_Delete(o);
    CHECK_RC(chat_template_load(dir, NULL, &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_LLAMA2);

    /* A file that does not parse: plain with a warning, not a failure. */
    write_file(path, "{not json");
    CHECK_RC(chat_template_load(dir, NULL, &t, warn, sizeof warn, err, sizeof err), RC_OK);
    CHECK(t.kind == CHAT_TEMPLATE_PLAIN && strstr(warn, "does not parse"));
    unlink(path);
    rmdir(dir);
}

static void test_stop_scan(void)
{
    const char *stops[] = {"END", "\n\n"};
    size_t cut;
    CHECK(chat_stop_scan("hello world", 11, stops, 2, &cut) == 0 && cut == 11);
    CHECK(chat_stop_scan("hello EN", 8, stops, 2, &cut) == 0 && cut == 6); /* "EN" held */
    CHECK(chat_stop_scan("hello END more", 14, stops, 2, &cut) == 1 && cut == 6);
    CHECK(chat_stop_scan("a\n\nb END", 8, stops, 2, &cut) == 1 && cut == 1); /* earliest */
    CHECK(chat_stop_scan("END", 3, stops, 2, &cut) == 1 && cut == 0);
    CHECK(chat_stop_scan("abc", 3, stops, 0, &cut) == 0 && cut == 3);
}

static void test_ask_check(void)
{
    char err[256];
    Recall__AskRequest q = RECALL__ASK_REQUEST__INIT;
    q.session = "s";
    q.question = "hi";
    char *stops[20];
    for (int i = 0; i < 20; i++)
        stops[i] = "x";
    q.stop = stops;
    q.n_stop = CHAT_STOP_MAX;
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_OK);
    q.n_stop = CHAT_STOP_MAX + 1;
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_LIMIT);
    stops[0] = "";
    q.n_stop = 1;
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_INVALID);
    stops[0] = "\xff";
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_INVALID);
    q.n_stop = 0;

    Recall__ChatMessage m = RECALL__CHAT_MESSAGE__INIT, *mp[] = {&m};
    m.role = "user";
    m.content = "hello";
    q.messages = mp;
    q.n_messages = 1;
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_INVALID); /* and a question */
    q.question = "";
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_OK);
    CHECK_RC(chat_ask_check(&q, 8, err, sizeof err), RC_ERR_LIMIT);
    m.role = "";
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_INVALID);
    m.role = "user";
    m.content = "\xc3";
    CHECK_RC(chat_ask_check(&q, 1 << 20, err, sizeof err), RC_ERR_INVALID);
}

/* ---- render mode for chat_ref.py ----------------------------------------------------- */

static char *unescape(char *s)
{
    char *o = s, *r = s;
    for (; *r; r++) {
        if (*r == '\\' && r[1] == 'n') {
            *o++ = '\n';
            r++;
        } else if (*r == '\\' && r[1] == 't') {
            *o++ = '\t';
            r++;
        } else if (*r == '\\' && r[1] == '\\') {
            *o++ = '\\';
            r++;
        } else {
            *o++ = *r;
        }
    }
    *o = 0;
    return s;
}

static int render(const char *name)
{
    chat_template_t t = tmpl(CHAT_TEMPLATE_PLAIN);
    if (chat_template_from_name(name, &t.kind)) {
        fprintf(stderr, "unknown template %s\n", name);
        return 2;
    }
    chat_message_t m[64];
    char *lines[64];
    size_t n = 0, cap = 0;
    char *line = NULL;
    while (n < 64 && getline(&line, &cap, stdin) > 0) {
        line[strcspn(line, "\n")] = 0;
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        lines[n] = strdup(line);
        m[n].role = lines[n];
        char *c = strdup(tab + 1);
        m[n].content = unescape(c);
        n++;
    }
    free(line);
    chat_prompt_t p;
    char err[512];
    rc_t rc = chat_format(&t, m, n, &p, err, sizeof err);
    if (rc) {
        printf("ERROR %s\n", err);
    } else {
        fwrite(p.text, 1, p.len, stdout);
        printf("\n--parts--\n");
        for (size_t i = 0; i < p.n_parts; i++)
            printf("%d %zu %zu\n", (int)p.parts[i].kind, p.parts[i].off, p.parts[i].len);
        chat_prompt_free(&p);
    }
    for (size_t i = 0; i < n; i++) {
        free(lines[i]);
        free((char *)m[i].content);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "render")) return render(argv[2]);
    test_llama2();
    test_longllama();
    test_plain();
    test_recognise_and_load();
    test_stop_scan();
    test_ask_check();
    return check_summary();
}
