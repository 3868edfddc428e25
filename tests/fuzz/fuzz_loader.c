/* fuzz_loader.c — libFuzzer target: an untrusted checkpoint directory through the loader.
 *
 * recalld opens whatever directory --model names; a truncated download, a hand-edited
 * config.json or a hostile .safetensors header must give an error sentence, never a crash,
 * an overflow or a huge allocation. Each input is cut into up to three files:
 *
 *   config.json  SEP_ST  model.safetensors (raw: 8-byte header length, JSON header, data)
 *                [SEP_IX  model.safetensors.index.json]
 *
 * (SEP_* below; without SEP_ST the whole input is config.json and the safetensors file is
 * absent). With an index, the safetensors bytes are written to model.safetensors and to
 * shard-1.safetensors, the two names an index is likely to use. The files go to one
 * directory (under /dev/shm when it exists), then model_open (config, headers; no tokenizer:
 * fuzz_tokenizer.c covers that) and, if it succeeds, model_check_weights (every tensor's
 * shape against the config, the CLEX table). Properties checked beyond "no crash":
 *   - a failure writes a non-empty, NUL-terminated sentence into err and returns < 0;
 *   - a success gives a config whose sizes are positive and a description.
 *
 *   build-fuzz/tests/fuzz_loader -max_len=16384 -max_total_time=60 /tmp/w \
 *       tests/fuzz/corpus_loader
 * Without libFuzzer (every build), fuzz_replay.c runs the corpus through the same function
 * (ctest fuzz_corpus_loader). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "model/model.h"

#define SEP_ST "\n#--safetensors--#\n"
#define SEP_IX "\n#--index--#\n"

static char g_dir[256];

static void cleanup(void)
{
    const char *f[] = {"config.json", "model.safetensors", "shard-1.safetensors",
                       "model.safetensors.index.json"};
    char p[512];
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, f[i]);
        unlink(p);
    }
    rmdir(g_dir);
}

static void put(const char *name, const uint8_t *b, size_t n)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    if (!b) {
        unlink(p);
        return;
    }
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(b, 1, n, f) != n) || fclose(f) != 0) {
        perror(p);
        abort(); /* the harness, not the loader: a full /dev/shm must not pass for a find */
    }
}

static const uint8_t *find(const uint8_t *h, size_t hn, const char *needle, size_t from)
{
    const size_t nn = strlen(needle);
    for (size_t i = from; i + nn <= hn; i++)
        if (!memcmp(h + i, needle, nn)) return h + i;
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/recall-fuzz-loader-XXXXXX", base);
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    atexit(cleanup);
    log_set_level(LOG_ERROR); /* the loader's info lines (CLEX fallbacks...) would flood */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *st = find(data, size, SEP_ST, 0);
    const size_t cfg_n = st ? (size_t)(st - data) : size;
    const uint8_t *st_b = st ? st + strlen(SEP_ST) : NULL;
    const uint8_t *ix = st_b ? find(data, size, SEP_IX, (size_t)(st_b - data)) : NULL;
    const size_t st_n = st_b ? (size_t)((ix ? ix : data + size) - st_b) : 0;
    const uint8_t *ix_b = ix ? ix + strlen(SEP_IX) : NULL;
    const size_t ix_n = ix_b ? (size_t)(data + size - ix_b) : 0;

    put("config.json", data, cfg_n);
    put("model.safetensors", st_b, st_n);
    put("shard-1.safetensors", ix_b ? st_b : NULL, st_n);
    put("model.safetensors.index.json", ix_b, ix_n);

    char err[512];
    memset(err, 'x', sizeof err); /* a failure must write a terminated sentence over this */
    model_t *m = NULL;
    rc_t rc = model_open(g_dir, 1, &m, err, sizeof err);
    if (rc == RC_OK) {
        const model_config_t *c = model_get_config(m);
        if (!c || c->hidden <= 0 || c->n_layers <= 0 || c->vocab_size <= 0 || !model_describe(m)) {
            fprintf(stderr, "fuzz_loader: model_open accepted a config without sizes\n");
            abort();
        }
        memset(err, 'x', sizeof err);
        rc = model_check_weights(m, err, sizeof err);
    }
    if (rc != RC_OK) {
        if (rc > 0 || !memchr(err, '\0', sizeof err) || !err[0]) {
            fprintf(stderr, "fuzz_loader: status %d without an error sentence\n", (int)rc);
            abort();
        }
    }
    /* RECALL_FUZZ_VERBOSE=1: what each input gave (to see that the ok- seeds load). */
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("RECALL_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "  -> %s\n", rc == RC_OK ? "loaded" : err);
    model_destroy(&m);
    if (m) abort(); /* destroy nulls the pointer */
    return 0;
}
