/* test_http.c — the HTTP gateway's pure parts, and the gateway itself with no daemon.
 *
 *   request JSON -> Ask options (every mapped field, the session/model rule, each refusal
 *   naming its field), the chat template, stop-string scanning (matches, held-back
 *   prefixes), SSE framing, the constant-time token compare, endpoint rewriting, protobuf
 *   to JSON, the metrics text (HELP/TYPE, cumulative buckets, escaping, counters by kind),
 *   and a running gateway pointed at a dead endpoint: 503 in OpenAI's error shape,
 *   /metrics still served with recall_up 0, 401 without or with a wrong token, 405, 404,
 *   413, a bad address and a port in use refused at start. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "daemon/http_internal.h"

static void test_ask_parse(void)
{
    http_ask_t a;
    const char *field;
    char err[512];
    const char *j =
        "{\"model\":\"m1\",\"prompt\":\"hi there\",\"max_tokens\":7,\"temperature\":0.5,"
        "\"top_p\":0.9,\"seed\":42,\"stop\":[\"\\n\",\"END\"],\"stream\":true,"
        "\"stream_options\":{\"include_usage\":true},\"user\":\"ignored\"}";
    CHECK_RC(http_ask_parse(j, strlen(j), 0, &a, &field, err, sizeof err), RC_OK);
    CHECK(a.session && !strcmp(a.session, "m1"));
    CHECK(a.prompt && !strcmp(a.prompt, "hi there"));
    CHECK(a.max_tokens == 7);
    CHECK_NEAR(a.temperature, 0.5, 1e-6);
    CHECK_NEAR(a.top_p, 0.9, 1e-6);
    CHECK(a.seed == 42);
    CHECK(a.n_stop == 2 && !strcmp(a.stop[0], "\n") && !strcmp(a.stop[1], "END"));
    CHECK(a.stream == 1 && a.include_usage == 1);
    http_ask_free(&a);

    /* The session extension wins over model; a single stop string; defaults stay 0. */
    j = "{\"model\":\"gpt-4\",\"session\":\"notes\",\"prompt\":[\"one\"],\"stop\":\"x\"}";
    CHECK_RC(http_ask_parse(j, strlen(j), 0, &a, &field, err, sizeof err), RC_OK);
    CHECK(!strcmp(a.session, "notes") && !strcmp(a.prompt, "one"));
    CHECK(a.n_stop == 1 && !strcmp(a.stop[0], "x"));
    CHECK(a.max_tokens == 0 && a.temperature == 0 && a.stream == 0);
    http_ask_free(&a);

    struct {
        const char *json;
        int chat;
        const char *field; /* NULL: not JSON at all */
    } bad[] = {
        {"{not json", 0, NULL},
        {"[1,2]", 0, NULL},
        {"{\"prompt\":\"x\"}", 0, "model"},
        {"{\"model\":\"\",\"prompt\":\"x\"}", 0, "model"},
        {"{\"model\":\"m\"}", 0, "prompt"},
        {"{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", 0, "prompt"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":-1}", 0, "temperature"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":1.5}", 0, "top_p"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":0}", 0, "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":2.5}", 0, "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":\"5\"}", 0, "max_tokens"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"seed\":-3}", 0, "seed"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"n\":2}", 0, "n"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop\":5}", 0, "stop"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 0, "stop"},
        {"{\"model\":\"m\",\"prompt\":\"x\",\"stream\":\"yes\"}", 0, "stream"},
        {"{\"model\":\"m\",\"session\":7,\"prompt\":\"x\"}", 0, "session"},
        {"{\"model\":\"m\"}", 1, "messages"},
        {"{\"model\":\"m\",\"messages\":[]}", 1, "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", 1, "messages"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", 1, "messages"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        rc_t rc = http_ask_parse(bad[i].json, strlen(bad[i].json), bad[i].chat, &a, &field, err,
                                 sizeof err);
        CHECK_MSG(rc == RC_ERR_INVALID, "case %zu (%s): rc %d", i, bad[i].json, rc);
        CHECK_MSG(bad[i].field ? field && !strcmp(field, bad[i].field) : field == NULL,
                  "case %zu: field %s, want %s", i, field ? field : "(null)",
                  bad[i].field ? bad[i].field : "(null)");
        CHECK_MSG(err[0] != 0, "case %zu: no message", i);
        http_ask_free(&a);
    }
}

static void test_chat_template(void)
{
    http_ask_t a;
    const char *field;
    char err[256];
    const char *j = "{\"model\":\"s\",\"max_completion_tokens\":3,\"messages\":["
                    "{\"role\":\"system\",\"content\":\"Be brief.\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello \"},"
                    "{\"type\":\"text\",\"text\":\"there\"}]},"
                    "{\"role\":\"assistant\",\"content\":\"Hi.\"},"
                    "{\"role\":\"tool\",\"content\":\"42\"},"
                    "{\"role\":\"user\",\"content\":\"Why?\"}]}";
    CHECK_RC(http_ask_parse(j, strlen(j), 1, &a, &field, err, sizeof err), RC_OK);
    /* The messages go to the daemon as they are (text parts joined); it applies the
     * template (tests/test_chat.c has the formatters). */
    const char *roles[] = {"system", "user", "assistant", "tool", "user"};
    const char *contents[] = {"Be brief.", "Hello there", "Hi.", "42", "Why?"};
    CHECK(a.n_messages == 5);
    for (int i = 0; i < 5 && i < a.n_messages; i++)
        CHECK_MSG(!strcmp(a.roles[i], roles[i]) && !strcmp(a.contents[i], contents[i]),
                  "message %d: %s [%s]", i, a.roles[i], a.contents[i]);
    CHECK(a.prompt == NULL);
    CHECK(a.max_tokens == 3);
    http_ask_free(&a);
}

static void test_stop_scan(void)
{
    char *stops[] = {"END", "\n\n"};
    size_t cut;
    CHECK(http_stop_scan("hello world", 11, stops, 2, &cut) == 0 && cut == 11);
    CHECK(http_stop_scan("hello EN", 8, stops, 2, &cut) == 0 && cut == 6); /* "EN" held */
    CHECK(http_stop_scan("hello E", 7, stops, 2, &cut) == 0 && cut == 6);
    CHECK(http_stop_scan("hello\n", 6, stops, 2, &cut) == 0 && cut == 5);
    CHECK(http_stop_scan("hello END more", 14, stops, 2, &cut) == 1 && cut == 6);
    /* The earliest match of any stop string wins. */
    CHECK(http_stop_scan("a\n\nb END", 8, stops, 2, &cut) == 1 && cut == 1);
    CHECK(http_stop_scan("END", 3, stops, 2, &cut) == 1 && cut == 0);
    CHECK(http_stop_scan("", 0, stops, 2, &cut) == 0 && cut == 0);
    CHECK(http_stop_scan("abc", 3, stops, 0, &cut) == 0 && cut == 3);
}

static void test_sse_token_endpoint(void)
{
    http_buf_t b = {0};
    http_sse_event(&b, "{\"a\":1}");
    http_sse_event(&b, "[DONE]");
    CHECK(b.p && !strcmp(b.p, "data: {\"a\":1}\n\ndata: [DONE]\n\n"));
    http_buf_free(&b);

    CHECK(http_token_equal("secret", 6, "secret", 6));
    CHECK(!http_token_equal("secreT", 6, "secret", 6));
    CHECK(!http_token_equal("secret1", 7, "secret", 6));
    CHECK(!http_token_equal("secre", 5, "secret", 6));
    CHECK(!http_token_equal("", 0, "secret", 6));

    char out[64];
    CHECK_RC(http_endpoint_local("tcp://0.0.0.0:5555", out, sizeof out), RC_OK);
    CHECK(!strcmp(out, "tcp://127.0.0.1:5555"));
    CHECK_RC(http_endpoint_local("tcp://*:7", out, sizeof out), RC_OK);
    CHECK(!strcmp(out, "tcp://127.0.0.1:7"));
    CHECK_RC(http_endpoint_local("ipc:///tmp/x", out, sizeof out), RC_OK);
    CHECK(!strcmp(out, "ipc:///tmp/x"));
    CHECK_RC(http_endpoint_local("tcp://127.0.0.1:5555", out, 8), RC_ERR_LIMIT);
}

static void test_status_mapping(void)
{
    const char *type, *code;
    struct {
        rc_t rc;
        const char *msg;
        int status;
        const char *code;
    } m[] = {
        {RC_ERR_INVALID, "bad name", 400, "invalid_request"},
        {RC_ERR_NOT_FOUND, "no session named 'x'", 404, "session_not_found"},
        {RC_ERR_EXISTS, "", 409, "exists"},
        {RC_ERR_LIMIT, "the question is over the limit of 10 bytes", 413, "limit_exceeded"},
        {RC_ERR_LIMIT, "there are already 4 sessions", 429, "limit_exceeded"},
        {RC_ERR_BUSY, "", 429, "busy"},
        {RC_ERR_UNAVAILABLE, "", 503, "session_unavailable"},
        {RC_ERR_SHUTDOWN, "", 503, "daemon_stopping"},
        {RC_ERR_IO, "", 503, "daemon_unavailable"},
        {RC_ERR_INTERNAL, "", 500, "internal"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        int st = http_status_of_rc(m[i].rc, m[i].msg, &type, &code);
        CHECK_MSG(st == m[i].status && !strcmp(code, m[i].code), "rc %d: %d %s", m[i].rc, st,
                  code);
        CHECK(!strcmp(type, http_error_type(st)));
    }
    CHECK(!strcmp(http_error_type(401), "authentication_error"));
    CHECK(!strcmp(http_error_type(400), "invalid_request_error"));
    CHECK(!strcmp(http_error_type(502), "server_error"));
}

static void test_proto_json(void)
{
    Recall__SessionInfo si = RECALL__SESSION_INFO__INIT;
    Recall__SessionOptions so = RECALL__SESSION_OPTIONS__INIT;
    si.name = "notes";
    si.tokens = 123456789012ull;
    si.tier = "host";
    so.window = 64;
    so.memory = "knn";
    si.options = &so;
    cJSON *o = http_proto_to_json(&si.base);
    CHECK(o != NULL);
    const cJSON *x = cJSON_GetObjectItem(o, "name");
    CHECK(cJSON_IsString(x) && !strcmp(x->valuestring, "notes"));
    x = cJSON_GetObjectItem(o, "tokens");
    CHECK(cJSON_IsNumber(x) && x->valuedouble == 123456789012.0);
    x = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "options"), "window");
    CHECK(cJSON_IsNumber(x) && x->valuedouble == 64);
    x = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "options"), "memory");
    CHECK(cJSON_IsString(x) && !strcmp(x->valuestring, "knn"));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "options"), "no_chunk_scale")));
    cJSON_Delete(o);
}

/* Every line of a text exposition: a comment, or name{labels} value with recall_ names. */
static int exposition_valid(const char *text, char *bad, size_t badlen)
{
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) return snprintf(bad, badlen, "no final newline"), 0;
        char line[1024];
        size_t n = (size_t)(e - p) < sizeof line - 1 ? (size_t)(e - p) : sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        p = e + 1;
        if (!strncmp(line, "# HELP recall_", 14) || !strncmp(line, "# TYPE recall_", 14)) continue;
        if (strncmp(line, "recall_", 7)) return snprintf(bad, badlen, "%.200s", line), 0;
        const char *sp = strrchr(line, ' ');
        char *end;
        if (!sp || (strtod(sp + 1, &end), *end && strcmp(sp + 1, "+Inf")))
            return snprintf(bad, badlen, "%.200s", line), 0;
    }
    return 1;
}

static void test_metrics_text(void)
{
    static http_metrics_t m; /* zeroed */
    http_metrics_observe(&m, RECALL__REQUEST__BODY_ASK, RC_OK, 0.003);
    http_metrics_observe(&m, RECALL__REQUEST__BODY_ASK, RC_OK, 0.2);
    http_metrics_observe(&m, RECALL__REQUEST__BODY_ASK, RC_ERR_NOT_FOUND, 0.0001);
    http_metrics_observe(&m, 0, RC_ERR_FORMAT, -1); /* undecoded: no latency */
    http_buf_t b = {0};
    http_metrics_write_requests(&b, &m);
    CHECK(!b.oom && b.p);
    char bad[256] = "";
    CHECK_MSG(exposition_valid(b.p, bad, sizeof bad), "bad line: %s", bad);
    CHECK(strstr(b.p, "# TYPE recall_requests_total counter\n"));
    CHECK(strstr(b.p, "recall_requests_total{kind=\"ask\",outcome=\"ok\"} 2\n"));
    CHECK(strstr(b.p, "recall_requests_total{kind=\"ask\",outcome=\"not_found\"} 1\n"));
    CHECK(strstr(b.p, "recall_requests_total{kind=\"unknown\",outcome=\"format\"} 1\n"));
    CHECK(strstr(b.p, "recall_requests_total{kind=\"ingest\",outcome=\"ok\"} 0\n"));
    CHECK(strstr(b.p, "# TYPE recall_request_duration_seconds histogram\n"));
    /* Cumulative buckets: 0.0001 and 0.003 are <= 0.005; all three <= 0.25. */
    CHECK(strstr(b.p, "recall_request_duration_seconds_bucket{kind=\"ask\",le=\"0.001\"} 1\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_bucket{kind=\"ask\",le=\"0.005\"} 2\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_bucket{kind=\"ask\",le=\"0.1\"} 2\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_bucket{kind=\"ask\",le=\"0.25\"} 3\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_bucket{kind=\"ask\",le=\"+Inf\"} 3\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_count{kind=\"ask\"} 3\n"));
    CHECK(strstr(b.p, "recall_request_duration_seconds_sum{kind=\"ask\"} 0.2031"));
    CHECK(!strstr(b.p, "recall_request_duration_seconds_count{kind=\"unknown\"}"));
    http_buf_free(&b);

    char esc[64];
    http_metrics_escape("a\"b\\c\nd", esc, sizeof esc);
    CHECK(!strcmp(esc, "a\\\"b\\\\c\\nd"));
    http_metrics_sample(&b, "recall_x", "", 1.5);
    http_metrics_sample(&b, "recall_y", "a=\"1\"", 3);
    CHECK(b.p && !strcmp(b.p, "recall_x 1.5\nrecall_y{a=\"1\"} 3\n"));
    http_buf_free(&b);
}

/* ---- a running gateway with no daemon behind it ------------------------------------- */

/* One HTTP/1.0 exchange; returns the status and copies the body. */
static int http_do(int port, const char *method, const char *path, const char *headers,
                   const char *body, char *out, size_t outlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    char req[8192];
    int n =
        snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n%s",
                 method, path, headers, body ? strlen(body) : 0, body ? body : "");
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    static char resp[1 << 16];
    size_t got = 0;
    ssize_t r;
    while ((r = recv(fd, resp + got, sizeof resp - 1 - got, 0)) > 0)
        got += (size_t)r;
    close(fd);
    resp[got] = 0;
    int status = 0;
    sscanf(resp, "HTTP/1.%*d %d", &status);
    const char *b = strstr(resp, "\r\n\r\n");
    snprintf(out, outlen, "%s", b ? b + 4 : "");
    return status;
}

/* The body is OpenAI's error shape with this code. */
static int error_shape(const char *body, const char *code)
{
    cJSON *o = cJSON_Parse(body);
    const cJSON *e = cJSON_GetObjectItem(o, "error");
    int ok = cJSON_IsString(cJSON_GetObjectItem(e, "message")) &&
             cJSON_IsString(cJSON_GetObjectItem(e, "type")) &&
             cJSON_IsString(cJSON_GetObjectItem(e, "code")) &&
             !strcmp(cJSON_GetObjectItem(e, "code")->valuestring, code);
    cJSON_Delete(o);
    return ok;
}

static void test_gateway_without_daemon(void)
{
    /* A port nothing listens on: take one and close it. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &al);
    char dead[64];
    snprintf(dead, sizeof dead, "tcp://127.0.0.1:%d", ntohs(a.sin_port));
    close(s);

    char err[512];
    http_gateway_t *g = NULL;
    http_gateway_opts_t o = {.address = "127.0.0.1:0",
                             .endpoint = dead,
                             .max_body = 2048,
                             .token = "s3cret",
                             .connect_timeout_ms = 300};
    CHECK_RC(http_gateway_start(&o, &g, err, sizeof err), RC_OK);
    if (!g) return;
    int port = http_gateway_port(g);
    CHECK(port > 0);
    char body[1 << 16];
    const char *auth = "Authorization: Bearer s3cret\r\n";

    int st = http_do(port, "GET", "/health", auth, NULL, body, sizeof body);
    CHECK_MSG(st == 503 && error_shape(body, "daemon_unavailable"), "%d %s", st, body);
    st = http_do(port, "POST", "/v1/completions", auth, "{\"model\":\"x\",\"prompt\":\"y\"}", body,
                 sizeof body);
    CHECK_MSG(st == 503 && error_shape(body, "daemon_unavailable"), "%d %s", st, body);
    st = http_do(port, "GET", "/metrics", auth, NULL, body, sizeof body);
    CHECK_MSG(st == 200 && strstr(body, "\nrecall_up 0\n"), "%d %s", st, body);
    char bad[256] = "";
    CHECK_MSG(exposition_valid(body, bad, sizeof bad), "bad line: %s", bad);

    st = http_do(port, "GET", "/health", "", NULL, body, sizeof body);
    CHECK_MSG(st == 401 && error_shape(body, "invalid_api_key"), "%d %s", st, body);
    st = http_do(port, "GET", "/health", "Authorization: Bearer s3creT\r\n", NULL, body,
                 sizeof body);
    CHECK_MSG(st == 401 && error_shape(body, "invalid_api_key"), "%d %s", st, body);
    st = http_do(port, "GET", "/health", "Authorization: Bearer s3cret2\r\n", NULL, body,
                 sizeof body);
    CHECK(st == 401);
    st = http_do(port, "GET", "/v1/completions", auth, NULL, body, sizeof body);
    CHECK_MSG(st == 405 && error_shape(body, "method_not_allowed"), "%d %s", st, body);
    st = http_do(port, "GET", "/v2/nothing", auth, NULL, body, sizeof body);
    CHECK_MSG(st == 404 && error_shape(body, "not_found"), "%d %s", st, body);
    char big[4096];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    st = http_do(port, "POST", "/v1/completions", auth, big, body, sizeof body);
    CHECK_MSG(st == 413 && error_shape(body, "body_too_large"), "%d %s", st, body);
    st = http_do(port, "POST", "/v1/completions", auth, "{oops", body, sizeof body);
    CHECK_MSG(st == 400 && error_shape(body, "invalid_json"), "%d %s", st, body);

    /* The same port again: in use. A malformed address: invalid. */
    http_gateway_t *g2 = NULL;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    o.address = addr;
    CHECK_RC(http_gateway_start(&o, &g2, err, sizeof err), RC_ERR_IO);
    CHECK_MSG(strstr(err, "in use") != NULL, "%s", err);
    CHECK(g2 == NULL);
    const char *bad_addrs[] = {"8080", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:80x",
                               "no.such.host.invalid:80"};
    for (size_t i = 0; i < sizeof bad_addrs / sizeof bad_addrs[0]; i++) {
        o.address = bad_addrs[i];
        err[0] = 0;
        CHECK_RC(http_gateway_start(&o, &g2, err, sizeof err), RC_ERR_INVALID);
        CHECK_MSG(strstr(err, "--http") != NULL, "%s: %s", bad_addrs[i], err);
    }
    http_gateway_stop(&g);
    CHECK(g == NULL);
    http_gateway_stop(&g); /* NULL-safe */
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_ask_parse();
    test_chat_template();
    test_stop_scan();
    test_sse_token_endpoint();
    test_status_mapping();
    test_proto_json();
    test_metrics_text();
    test_gateway_without_daemon();
    return check_summary();
}
