/* rpc_test_util.c — see rpc_test_util.h. */
#include "tests/rpc_test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

const char *rpc_recalld_path(void)
{
    static char path[1024];
    const char *b = getenv("RECALL_BUILD_DIR");
    if (b && b[0]) {
        snprintf(path, sizeof path, "%s/daemon/recalld", b);
        if (access(path, X_OK) == 0) return path;
    }
#ifdef RECALLD_PATH
    return RECALLD_PATH;
#else
    return "recalld";
#endif
}

int rpc_tempdir(char *buf, size_t n)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, n, "%s/recall-test-XXXXXX", t && t[0] ? t : "/tmp");
    return mkdtemp(buf) ? 0 : -1;
}

void rpc_rmtree(const char *dir)
{
    if (!dir || !dir[0] || strcmp(dir, "/") == 0) return;
    pid_t p = fork();
    if (p == 0) {
        execlp("rm", "rm", "-rf", dir, (char *)NULL);
        _exit(127);
    }
    if (p > 0) waitpid(p, NULL, 0);
}

void rpc_print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    fprintf(stderr, "---- %s ----\n", path);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fprintf(stderr, "----\n");
    fclose(f);
}

int rpc_file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

static pid_t spawn(const char *const *args, const char *log_path)
{
    const char *argv[64];
    int k = 0;
    argv[k++] = rpc_recalld_path();
    for (int i = 0; args && args[i] && k < 62; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    pid_t p = fork();
    if (p == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return p;
}

/* Waits for pid up to timeout_s; returns the exit code (128+sig if killed), -1 on timeout. */
static int wait_exit(pid_t pid, int timeout_s)
{
    for (int i = 0; i < timeout_s * 100; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(st)) return WEXITSTATUS(st);
            if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

int rpc_run_recalld(const char *const *args, const char *log_path, int timeout_s)
{
    pid_t p = spawn(args, log_path);
    if (p < 0) return -1;
    int rc = wait_exit(p, timeout_s);
    if (rc < 0) {
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    }
    return rc;
}

int rpc_daemon_start(rpc_daemon_t *dm, const char *model_dir, const char *data_dir,
                     const char *endpoint, const char *log_path, const char *const *extra)
{
    const char *args[64];
    int k = 0;
    args[k++] = "--model";
    args[k++] = model_dir;
    args[k++] = "--data";
    args[k++] = data_dir;
    args[k++] = "--listen";
    args[k++] = endpoint;
    args[k++] = "--threads";
    args[k++] = "1";
    for (int i = 0; extra && extra[i] && k < 62; i++)
        args[k++] = extra[i];
    args[k] = NULL;
    snprintf(dm->endpoint, sizeof dm->endpoint, "%s", endpoint);
    snprintf(dm->log_path, sizeof dm->log_path, "%s", log_path);
    dm->pid = spawn(args, log_path);
    if (dm->pid < 0) return -1;
    rpc_client_t c;
    if (rpc_client_open(&c, endpoint)) return -1;
    int ok = 0;
    for (int i = 0; i < 60 && !ok; i++) {
        int st;
        if (waitpid(dm->pid, &st, WNOHANG) == dm->pid) {
            fprintf(stderr, "recalld exited during start-up\n");
            rpc_print_file(log_path);
            dm->pid = -1;
            break;
        }
        Recall__Response *r = rpc_health(&c);
        if (r && r->status && r->status->code == 0 && r->health && r->health->ok) ok = 1;
        if (r) recall__response__free_unpacked(r, NULL);
    }
    rpc_client_close(&c);
    if (!ok) {
        if (dm->pid > 0) {
            rpc_print_file(log_path);
            kill(dm->pid, SIGKILL);
            waitpid(dm->pid, NULL, 0);
            dm->pid = -1;
        }
        return -1;
    }
    return 0;
}

int rpc_daemon_stop(rpc_daemon_t *dm, int sig)
{
    if (dm->pid <= 0) return -1;
    kill(dm->pid, sig);
    int rc = wait_exit(dm->pid, 30);
    if (rc < 0) {
        kill(dm->pid, SIGKILL);
        waitpid(dm->pid, NULL, 0);
    }
    dm->pid = -1;
    return rc;
}

int rpc_client_open(rpc_client_t *c, const char *endpoint)
{
    memset(c, 0, sizeof *c);
    c->ctx = zmq_ctx_new();
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    c->next_id = 1;
    return zmq_connect(c->sock, endpoint) == 0 ? 0 : -1;
}

void rpc_client_close(rpc_client_t *c)
{
    if (c->sock) zmq_close(c->sock);
    if (c->ctx) zmq_ctx_term(c->ctx);
    c->sock = c->ctx = NULL;
}

int rpc_send(rpc_client_t *c, Recall__Request *req)
{
    if (!req->id) req->id = c->next_id++;
    size_t n = recall__request__get_packed_size(req);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return -1;
    recall__request__pack(req, buf);
    int rc = zmq_send(c->sock, buf, n, 0);
    free(buf);
    return rc < 0 ? -1 : 0;
}

int rpc_send_frames(rpc_client_t *c, const void *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        if (zmq_send(c->sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0) return -1;
    return 0;
}

Recall__Response *rpc_recv(rpc_client_t *c, int timeout_ms)
{
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, c->sock, 0) < 0) {
        zmq_msg_close(&m);
        return NULL;
    }
    Recall__Response *r =
        recall__response__unpack(NULL, zmq_msg_size(&m), (const uint8_t *)zmq_msg_data(&m));
    zmq_msg_close(&m);
    return r;
}

Recall__Response *rpc_call(rpc_client_t *c, Recall__Request *req, int timeout_ms)
{
    if (rpc_send(c, req)) return NULL;
    for (;;) {
        Recall__Response *r = rpc_recv(c, timeout_ms);
        if (!r) return NULL;
        if (r->id == req->id && !r->more) return r;
        recall__response__free_unpacked(r, NULL);
    }
}

Recall__Response *rpc_create_opts(rpc_client_t *c, const char *session,
                                  const Recall__SessionOptions *o, int if_not_exists)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__CreateSessionRequest cs = RECALL__CREATE_SESSION_REQUEST__INIT;
    cs.session = (char *)session;
    cs.options = (Recall__SessionOptions *)o;
    cs.if_not_exists = if_not_exists;
    q.body_case = RECALL__REQUEST__BODY_CREATE_SESSION;
    q.create_session = &cs;
    return rpc_call(c, &q, 10000);
}

Recall__Response *rpc_create(rpc_client_t *c, const char *session, uint32_t window,
                             int if_not_exists)
{
    Recall__SessionOptions o = RECALL__SESSION_OPTIONS__INIT;
    o.window = window;
    return rpc_create_opts(c, session, &o, if_not_exists);
}

Recall__Response *rpc_ingest_tokens(rpc_client_t *c, const char *session, uint64_t seq,
                                    int32_t *tokens, size_t n)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
    in.session = (char *)session;
    in.seq = seq;
    in.tokens = tokens;
    in.n_tokens = n;
    q.body_case = RECALL__REQUEST__BODY_INGEST;
    q.ingest = &in;
    return rpc_call(c, &q, 120000);
}

Recall__Response *rpc_ingest_text(rpc_client_t *c, const char *session, uint64_t seq,
                                  const char *text)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__IngestRequest in = RECALL__INGEST_REQUEST__INIT;
    in.session = (char *)session;
    in.seq = seq;
    in.text = (char *)text;
    q.body_case = RECALL__REQUEST__BODY_INGEST;
    q.ingest = &in;
    return rpc_call(c, &q, 60000);
}

Recall__Response *rpc_info(rpc_client_t *c, const char *session)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__SessionInfoRequest si = RECALL__SESSION_INFO_REQUEST__INIT;
    si.session = (char *)session;
    q.body_case = RECALL__REQUEST__BODY_SESSION_INFO;
    q.session_info = &si;
    return rpc_call(c, &q, 10000);
}

Recall__Response *rpc_health(rpc_client_t *c)
{
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__HealthRequest h = RECALL__HEALTH_REQUEST__INIT;
    q.body_case = RECALL__REQUEST__BODY_HEALTH;
    q.health = &h;
    return rpc_call(c, &q, 500);
}

static int utf8_ok(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] & 0xC0) != 0x80) return 0;
        i += k;
    }
    return 1;
}

int rpc_ask(rpc_client_t *c, const char *session, const char *question, uint32_t max_tokens,
            int append, rpc_answer_t *out)
{
    memset(out, 0, sizeof *out);
    out->text_ok = 1;
    Recall__Request q = RECALL__REQUEST__INIT;
    Recall__AskRequest a = RECALL__ASK_REQUEST__INIT;
    a.session = (char *)session;
    a.question = (char *)question;
    a.max_tokens = max_tokens;
    a.append = append;
    q.body_case = RECALL__REQUEST__BODY_ASK;
    q.ask = &a;
    if (rpc_send(c, &q)) return -1;
    size_t tl = 0;
    for (;;) {
        Recall__Response *r = rpc_recv(c, 60000);
        if (!r) return -1;
        if (r->id != q.id) {
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        if (r->ask && r->ask->text) {
            size_t n = strlen(r->ask->text);
            if (!utf8_ok(r->ask->text, n)) out->text_ok = 0;
            if (tl + n < sizeof out->text) {
                memcpy(out->text + tl, r->ask->text, n);
                tl += n;
                out->text[tl] = 0;
            }
        }
        if (r->more) {
            if (r->ask && out->n_tokens < 4096) out->tokens[out->n_tokens++] = r->ask->token;
            recall__response__free_unpacked(r, NULL);
            continue;
        }
        out->status = r->status ? r->status->code : -999;
        if (r->status && r->status->message)
            snprintf(out->message, sizeof out->message, "%s", r->status->message);
        if (r->ask) {
            out->generated = r->ask->generated;
            out->prompt_tokens = r->ask->prompt_tokens;
            snprintf(out->stop_reason, sizeof out->stop_reason, "%s", r->ask->stop_reason);
        }
        recall__response__free_unpacked(r, NULL);
        return 0;
    }
}
