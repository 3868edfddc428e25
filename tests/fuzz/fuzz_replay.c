/* fuzz_replay.c — a libFuzzer target's corpus replayed without libFuzzer.
 *
 * Linked with one target (fuzz_loader.c, fuzz_tokenizer.c) in every build, any compiler:
 *   fuzz_replay_<target> DIR_OR_FILE...
 * calls LLVMFuzzerInitialize once, then LLVMFuzzerTestOneInput on every regular file
 * (directories are read one level deep, in name order, so a failure names the same file
 * each time). A target signals a bad input by aborting, so any crash fails the ctest that
 * runs this; an empty corpus fails too (a replay of nothing proves nothing). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static long g_inputs;

static void run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!b || (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)) {
        fprintf(stderr, "%s: cannot read\n", path);
        exit(1);
    }
    fclose(f);
    /* The name first: if the target aborts, the log says which input did it. */
    fprintf(stderr, "replay %s (%ld bytes)\n", path, n);
    LLVMFuzzerTestOneInput(b, (size_t)n);
    free(b);
    g_inputs++;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            run_file(argv[i]);
            continue;
        }
        struct dirent **es;
        int n = scandir(argv[i], &es, NULL, by_name);
        for (int k = 0; k < n; k++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], es[k]->d_name);
            if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) run_file(p);
            free(es[k]);
        }
        free(es);
    }
    printf("%ld inputs replayed, none crashed\n", g_inputs);
    return g_inputs > 0 ? 0 : 1;
}
