/* bench.h — the pieces of `recall bench` that do not talk to the daemon: the synthetic
 * text it ingests. The run itself (create, ingest, ask, info, drop) is in clients/cmd_bench.c,
 * and its ingest goes through exactly the code path of `recall ingest` (cli_ingest, which is
 * the library's recall_ingest_text). */
#ifndef RECALL_CLIENTS_BENCH_H
#define RECALL_CLIENTS_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/rc.h"

/* The question bench asks after the text. */
extern const char BENCH_QUESTION[];

/* Writes English-like filler of exactly `bytes` bytes (>= 1) into *out (malloc'ed,
 * NUL-terminated, caller frees): lines of a few sentences built from word lists and
 * numbers drawn from a splitmix64 stream seeded by seed, each line ending in '\n' (the
 * last may be cut short). Plain ASCII, so every cut is valid UTF-8; varied, so the text
 * is not one line repeated and the tokenizer sees ordinary words. The same seed and size
 * give the same text. RC_ERR_INVALID for bytes == 0, RC_ERR_NOMEM. */
rc_t bench_text(size_t bytes, uint64_t seed, char **out);

#endif
