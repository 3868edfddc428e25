/* request_harness.h — recalld's handling of one untrusted request frame, in process.
 *
 * Shared by the libFuzzer target (tests/fuzz/fuzz_request.c) and the corpus regression test
 * (tests/test_fuzz_corpus.c), so both drive exactly the same path. The harness compiles
 * daemon/server.c into itself (its checks are static functions) and runs its
 * handle_message() against a real daemon_t: the tiny model on the CPU backend, an LMDB
 * environment in a temporary directory, and a ROUTER whose only peer is the harness's own
 * DEALER, so every reply the daemon sends can be read back and checked.
 *
 * No worker thread runs: model work (Ingest, Ask, Score) that passes the main thread's
 * checks is queued exactly as in recalld and then taken off the queue and released by the
 * harness, the way a stopping worker would. Running the model is the live-daemon part of
 * test_fuzz_corpus and of the black-box fuzzer (fuzz_daemon.c). */
#ifndef RECALL_TESTS_FUZZ_REQUEST_HARNESS_H
#define RECALL_TESTS_FUZZ_REQUEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct rh rh_t;

/* What the daemon did with one frame. */
typedef struct rh_result {
    int decoded;      /* recall__request__unpack accepted the frame */
    uint64_t req_id;  /* its id when decoded */
    int body_case;    /* its body when decoded (Recall__Request__BodyCase) */
    int queued;       /* passed the checks and went to the worker queue (no reply yet) */
    int replied;      /* a decodable Response came back */
    int32_t code;     /* the reply's Status.code (when replied) */
    uint64_t resp_id; /* the reply's id (when replied) */
    char message[512];
} rh_result_t;

/* Loads the model in model_dir (CPU backend, one thread), opens a fresh LMDB environment
 * in a new temporary directory and creates sessions "s" (exact memory) and "k" (kNN) for
 * requests to name. Limits: 4096-byte chunks, 65536-byte frames, 8 sessions. Returns 0, or
 * -1 with a sentence in err. */
int rh_open(rh_t **out, const char *model_dir, char *err, size_t errlen);

/* Hands one frame to the daemon's handle_message and collects the outcome. Returns 0 when
 * the daemon behaved (exactly one well-formed reply, or queued with none; an undecodable
 * frame answered RC_ERR_FORMAT with id 0; a reply's id equal to the request's); else -1
 * with the reason in res->message. */
int rh_run(rh_t *h, const uint8_t *data, size_t len, rh_result_t *res);

/* Checks recall__request__unpack alone: a decoded request re-packs to bytes that decode to
 * a request packing to the very same bytes. Returns 0 if it holds (or the frame does not
 * decode). */
int rh_check_roundtrip(const uint8_t *data, size_t len);

/* Differential check of the public validation helpers on raw bytes: utf8_valid against an
 * independent strict decoder, session_name_problem against the documented rule. Returns 0
 * if they agree. */
int rh_check_helpers(const uint8_t *data, size_t len);

/* Number of sessions in the table (for invariants between inputs). */
size_t rh_sessions(rh_t *h);

/* Stops everything and removes the temporary directory. NULL-safe; nulls *h. */
void rh_close(rh_t **h);

#endif
