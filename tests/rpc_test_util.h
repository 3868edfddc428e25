/* rpc_test_util.h — start recalld as a child process and talk raw ZeroMQ + protobuf to it.
 *
 * Used by the daemon tests (and any end-to-end test). The daemon binary is found at
 * $RECALL_BUILD_DIR/daemon/recalld, else at the RECALLD_PATH compile definition. */
#ifndef RECALL_TESTS_RPC_TEST_UTIL_H
#define RECALL_TESTS_RPC_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "recall.pb-c.h"

typedef struct rpc_daemon {
    pid_t pid;
    char endpoint[512];
    char log_path[512];
} rpc_daemon_t;

/* Path of the recalld binary (static storage). */
const char *rpc_recalld_path(void);

/* Makes a fresh temporary directory (mkdtemp) and writes its path into buf. */
int rpc_tempdir(char *buf, size_t n);
/* rm -rf dir (for test clean-up). */
void rpc_rmtree(const char *dir);

/* Starts recalld --model model_dir --data data_dir --listen endpoint [extra args, NULL-
 * terminated], stderr into log_path, and waits (up to 30 s) until Health answers.
 * Returns 0, or -1 if the daemon exited or never answered (its log is printed). */
int rpc_daemon_start(rpc_daemon_t *dm, const char *model_dir, const char *data_dir,
                     const char *endpoint, const char *log_path, const char *const *extra);
/* Runs recalld with argv (NULL-terminated, argv[0] excluded) to completion and returns its
 * exit status (-1 if it did not exit within timeout_s); stderr goes to log_path. */
int rpc_run_recalld(const char *const *args, const char *log_path, int timeout_s);
/* Sends sig and waits (up to 30 s). Returns the exit code, 128+signal if killed, -1 on
 * timeout (the child is then killed with SIGKILL). */
int rpc_daemon_stop(rpc_daemon_t *dm, int sig);
void rpc_print_file(const char *path);
/* Non-zero if the file contains needle. */
int rpc_file_contains(const char *path, const char *needle);

typedef struct rpc_client {
    void *ctx;
    void *sock;
    uint64_t next_id;
} rpc_client_t;

int rpc_client_open(rpc_client_t *c, const char *endpoint);
void rpc_client_close(rpc_client_t *c);

/* Sends a request; sets req->id to a fresh id when it is 0. */
int rpc_send(rpc_client_t *c, Recall__Request *req);
/* Sends raw frames as one multipart message. */
int rpc_send_frames(rpc_client_t *c, const void *const *frames, const size_t *lens, int n);
/* Receives one response (NULL on timeout or undecodable). Free with
 * recall__response__free_unpacked(r, NULL). */
Recall__Response *rpc_recv(rpc_client_t *c, int timeout_ms);
/* Sends req and returns its final response (more == false), dropping streamed ones. */
Recall__Response *rpc_call(rpc_client_t *c, Recall__Request *req, int timeout_ms);

/* Conveniences; each returns the final response (caller frees) or NULL. */
Recall__Response *rpc_create(rpc_client_t *c, const char *session, uint32_t window,
                             int if_not_exists);
/* CreateSession with the given options (NULL: none). */
Recall__Response *rpc_create_opts(rpc_client_t *c, const char *session,
                                  const Recall__SessionOptions *o, int if_not_exists);
/* Ingest of token ids (borrowed for the call). */
Recall__Response *rpc_ingest_tokens(rpc_client_t *c, const char *session, uint64_t seq,
                                    int32_t *tokens, size_t n);
Recall__Response *rpc_ingest_text(rpc_client_t *c, const char *session, uint64_t seq,
                                  const char *text);
Recall__Response *rpc_info(rpc_client_t *c, const char *session);
Recall__Response *rpc_health(rpc_client_t *c);

/* A collected Ask: the streamed tokens and text, and the final response's fields. */
typedef struct rpc_answer {
    int status; /* final Status.code */
    char message[512];
    int32_t tokens[4096];
    size_t n_tokens;  /* streamed tokens */
    char text[65536]; /* streamed text concatenated with the final message's */
    int text_ok;      /* every streamed piece was valid UTF-8 on its own */
    uint32_t generated, prompt_tokens;
    char stop_reason[32];
} rpc_answer_t;

int rpc_ask(rpc_client_t *c, const char *session, const char *question, uint32_t max_tokens,
            int append, rpc_answer_t *out);

#endif
