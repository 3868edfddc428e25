/* test_client.c — the client library against a fake daemon (a ROUTER in a thread):
 * replies matched by id with stale ones dropped, streams, the daemon's errors, timeouts,
 * a dead endpoint, and frames that are not Responses. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "check.h"
#include "clients/client.h"
#include "common/clock.h"

static char endpoint[256];
static void *srv_ctx, *srv_sock;

static void send_resp(zmq_msg_t *ident, Recall__Response *r)
{
    size_t n = recall__response__get_packed_size(r);
    uint8_t *buf = malloc(n ? n : 1);
    recall__response__pack(r, buf);
    zmq_msg_t id;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, ident);
    zmq_msg_send(&id, srv_sock, ZMQ_SNDMORE);
    zmq_send(srv_sock, buf, n, 0);
    free(buf);
}

/* The scenario is chosen by the SessionInfo request's session name. */
static void *server(void *arg)
{
    (void)arg;
    for (;;) {
        zmq_msg_t ident, body;
        zmq_msg_init(&ident);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&ident, srv_sock, 0) < 0) break;
        zmq_msg_recv(&body, srv_sock, 0);
        Recall__Request *q =
            recall__request__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
        zmq_msg_close(&body);
        if (!q) {
            zmq_msg_close(&ident);
            continue;
        }
        Recall__Response r = RECALL__RESPONSE__INIT;
        Recall__Status st = RECALL__STATUS__INIT;
        r.id = q->id;
        r.status = &st;
        const char *name =
            q->body_case == RECALL__REQUEST__BODY_SESSION_INFO ? q->session_info->session : "";
        int quit = !strcmp(name, "quit");
        if (q->body_case == RECALL__REQUEST__BODY_HEALTH) {
            Recall__HealthResponse h = RECALL__HEALTH_RESPONSE__INIT;
            h.ok = 1;
            h.version = "test";
            r.body_case = RECALL__RESPONSE__BODY_HEALTH;
            r.health = &h;
            send_resp(&ident, &r);
        } else if (q->body_case == RECALL__REQUEST__BODY_ASK) {
            /* three tokens, then the final message */
            Recall__AskResponse a = RECALL__ASK_RESPONSE__INIT;
            r.body_case = RECALL__RESPONSE__BODY_ASK;
            r.ask = &a;
            const char *words[] = {"one", " two", " three"};
            for (int i = 0; i < 3; i++) {
                a.token = 10 + i;
                a.text = (char *)words[i];
                r.more = 1;
                send_resp(&ident, &r);
            }
            a.text = "";
            a.done = 1;
            a.generated = 3;
            a.stop_reason = "length";
            r.more = 0;
            send_resp(&ident, &r);
        } else if (!strcmp(name, "stale")) {
            /* an answer to some earlier request first, then the real one */
            Recall__SessionInfoResponse si = RECALL__SESSION_INFO_RESPONSE__INIT;
            Recall__SessionInfo info = RECALL__SESSION_INFO__INIT;
            info.name = "wrong";
            si.info = &info;
            r.body_case = RECALL__RESPONSE__BODY_SESSION_INFO;
            r.session_info = &si;
            r.id = q->id - 1;
            send_resp(&ident, &r);
            r.id = q->id + 1000;
            send_resp(&ident, &r);
            info.name = "stale";
            info.tokens = 42;
            r.id = q->id;
            send_resp(&ident, &r);
        } else if (!strcmp(name, "progress")) {
            Recall__Progress p = RECALL__PROGRESS__INIT;
            r.body_case = RECALL__RESPONSE__BODY_PROGRESS;
            r.progress = &p;
            r.more = 1;
            for (int i = 1; i <= 2; i++) {
                p.done = (uint64_t)i;
                p.total = 2;
                send_resp(&ident, &r);
            }
            Recall__SessionInfoResponse si = RECALL__SESSION_INFO_RESPONSE__INIT;
            Recall__SessionInfo info = RECALL__SESSION_INFO__INIT;
            info.name = "progress";
            si.info = &info;
            r.more = 0;
            r.body_case = RECALL__RESPONSE__BODY_SESSION_INFO;
            r.session_info = &si;
            send_resp(&ident, &r);
        } else if (!strcmp(name, "missing")) {
            st.code = RC_ERR_NOT_FOUND;
            st.message = "no session 'missing'";
            send_resp(&ident, &r);
        } else if (!strcmp(name, "garbage")) {
            zmq_msg_t id;
            zmq_msg_init(&id);
            zmq_msg_copy(&id, &ident);
            zmq_msg_send(&id, srv_sock, ZMQ_SNDMORE);
            zmq_send(srv_sock, "\xff\xff\xff\xff\xff", 5, 0);
        } else if (!strcmp(name, "silent")) {
            /* no answer at all */
        } else if (quit) {
            send_resp(&ident, &r);
        }
        recall__request__free_unpacked(q, NULL);
        zmq_msg_close(&ident);
        if (quit) break;
    }
    return NULL;
}

static rc_t info_call(recall_client *c, const char *name, Recall__Response **out,
                      recall_client_cb on_more, void *arg)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__SessionInfoRequest si = RECALL__SESSION_INFO_REQUEST__INIT;
    si.session = (char *)name;
    q.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
    q.session_info = &si;
    return recall_client_call(c, &q, out, on_more, arg);
}

typedef struct seen {
    int n, tokens[8], finals;
    char text[64];
} seen;

static rc_t on_ask(const Recall__Response *r, void *arg)
{
    seen *s = arg;
    if (r->body_case != RECALL__RESPONSE__BODY_ASK) return RC_ERR_FORMAT;
    if (r->ask->done)
        s->finals++;
    else if (s->n < 8)
        s->tokens[s->n++] = r->ask->token;
    strncat(s->text, r->ask->text, sizeof s->text - strlen(s->text) - 1);
    return RC_OK;
}

static rc_t count_more(const Recall__Response *r, void *arg)
{
    if (r->body_case == RECALL__RESPONSE__BODY_PROGRESS) ++*(int *)arg;
    return RC_OK;
}

int main(void)
{
    srv_ctx = zmq_ctx_new();
    srv_sock = zmq_socket(srv_ctx, ZMQ_ROUTER);
    CHECK(zmq_bind(srv_sock, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof endpoint;
    zmq_getsockopt(srv_sock, ZMQ_LAST_ENDPOINT, endpoint, &len);
    pthread_t th;
    pthread_create(&th, NULL, server, NULL);

    recall_client *c = NULL;
    const char *err;
    CHECK_RC(recall_client_create("http://x", &c, &err), RC_ERR_INVALID);
    CHECK(c == NULL && strstr(err, "tcp://"));
    CHECK_RC(recall_client_create(endpoint, &c, &err), RC_OK);
    recall_client_set_timeout(c, 2000);

    /* plain call */
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__HealthRequest hq = RECALL__HEALTH_REQUEST__INIT;
    q.body_case = RECALL__REQUEST__BODY_HEALTH;
    q.health = &hq;
    Recall__Response *r = NULL;
    CHECK_RC(recall_client_call(c, &q, &r, NULL, NULL), RC_OK);
    CHECK(r && r->body_case == RECALL__RESPONSE__BODY_HEALTH && r->health->ok);
    uint64_t first = q.id;
    if (r) recall__response__free_unpacked(r, NULL);
    CHECK_RC(recall_client_call(c, &q, &r, NULL, NULL), RC_OK);
    CHECK(q.id != first); /* a fresh id per request */
    if (r) recall__response__free_unpacked(r, NULL);

    /* stale ids are dropped */
    CHECK_RC(info_call(c, "stale", &r, NULL, NULL), RC_OK);
    CHECK(r && r->session_info->info && !strcmp(r->session_info->info->name, "stale") &&
          r->session_info->info->tokens == 42);
    if (r) recall__response__free_unpacked(r, NULL);

    /* progress messages reach on_more, the final one is returned */
    int progress = 0;
    CHECK_RC(info_call(c, "progress", &r, count_more, &progress), RC_OK);
    CHECK(progress == 2);
    CHECK(r && !r->more && r->body_case == RECALL__RESPONSE__BODY_SESSION_INFO);
    if (r) recall__response__free_unpacked(r, NULL);

    /* the daemon's error: its code and message, marked remote */
    CHECK_RC(info_call(c, "missing", &r, NULL, NULL), RC_ERR_NOT_FOUND);
    CHECK(r == NULL);
    CHECK(strstr(recall_client_error(c), "no session 'missing'") != NULL);
    CHECK(recall_client_error_remote(c) == 1);

    /* streaming */
    Recall__AskRequest aq = RECALL__ASK_REQUEST__INIT;
    aq.session = "s";
    aq.question = "q";
    q.body_case = RECALL__REQUEST__BODY_ASK;
    q.ask = &aq;
    seen s = {0};
    CHECK_RC(recall_client_stream(c, &q, on_ask, &s), RC_OK);
    CHECK(s.n == 3 && s.tokens[0] == 10 && s.tokens[2] == 12 && s.finals == 1);
    CHECK(!strcmp(s.text, "one two three"));

    /* a frame that is not a Response */
    CHECK_RC(info_call(c, "garbage", &r, NULL, NULL), RC_ERR_FORMAT);
    CHECK(recall_client_error_remote(c) == 0);

    /* no answer: a timeout with a useful message, on time */
    recall_client_set_timeout(c, 300);
    double t0 = clock_now_s() * 1e3;
    CHECK_RC(info_call(c, "silent", &r, NULL, NULL), RC_ERR_IO);
    double el = clock_now_s() * 1e3 - t0;
    CHECK_MSG(el >= 250 && el < 2000, "timeout took %.0f ms, want about 300", el);
    CHECK(strstr(recall_client_error(c), "no answer from") &&
          strstr(recall_client_error(c), endpoint));
    CHECK(recall_client_error_remote(c) == 0);
    /* and the client still works after a timeout (the late answer would be stale) */
    recall_client_set_timeout(c, 2000);
    CHECK_RC(info_call(c, "stale", &r, NULL, NULL), RC_OK);
    if (r) recall__response__free_unpacked(r, NULL);

    CHECK_RC(info_call(c, "quit", &r, NULL, NULL), RC_OK);
    if (r) recall__response__free_unpacked(r, NULL);
    pthread_join(th, NULL);
    recall_client_destroy(&c);
    recall_client_destroy(&c); /* NULL-safe */
    CHECK(c == NULL);
    zmq_close(srv_sock);
    zmq_ctx_term(srv_ctx);

    /* a dead endpoint fails within the connect timeout, and destroy does not hang */
    CHECK_RC(recall_client_create(endpoint, &c, &err), RC_OK);
    recall_client_set_connect_timeout(c, 500);
    q.body_case = RECALL__REQUEST__BODY_HEALTH;
    q.health = &hq;
    t0 = clock_now_s() * 1e3;
    CHECK_RC(recall_client_call(c, &q, &r, NULL, NULL), RC_ERR_IO);
    el = clock_now_s() * 1e3 - t0;
    CHECK_MSG(el < 2500, "dead endpoint took %.0f ms", el);
    CHECK(strstr(recall_client_error(c), "is recalld running?") != NULL);
    recall_client_destroy(&c);
    return check_summary();
}
