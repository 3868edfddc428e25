/* test_keys.c — CURVE key files (clients/keys.h): what keygen writes reads back, the
 * forms a key file may take (zcert lines, a bare key, comments), and what is refused: a
 * secret key others can read, a file whose public key is not its secret's, a line that is
 * not Z85, a missing secret, an existing key pair. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "check.h"
#include "clients/keys.h"
#include "common/rc.h"

static char dir[256];

static void write_file(const char *name, const char *text, mode_t mode, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

int main(void)
{
    if (!recall_keys_curve_available()) {
        printf("skipped: this libzmq has no CURVE\n");
        return CHECK_SKIP;
    }
    snprintf(dir, sizeof dir, "/tmp/recall-keys-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    char err[1024], kdir[300], path[600], text[1024];
    recall_keypair made, got;

    /* keygen into a directory it creates; both files read back; the directory form. */
    snprintf(kdir, sizeof kdir, "%s/k", dir);
    CHECK_RC(recall_keys_generate(kdir, "client", &made, err, sizeof err), RC_OK);
    CHECK(recall_keys_valid(made.public_key) && recall_keys_valid(made.secret_key));
    struct stat st;
    snprintf(path, sizeof path, "%s/client.key", kdir);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_OK);
    CHECK(!strcmp(got.public_key, made.public_key) && !strcmp(got.secret_key, made.secret_key));
    CHECK_RC(recall_keys_read(kdir, 1, &got, err, sizeof err), RC_OK); /* DIR/client.key */
    CHECK(!strcmp(got.secret_key, made.secret_key));
    CHECK_RC(recall_keys_read(kdir, 0, &got, err, sizeof err), RC_OK); /* DIR/client.pub */
    CHECK(!strcmp(got.public_key, made.public_key) && got.secret_key[0] == 0);
    /* The secret derives the public key (libzmq, independently of the file). */
    char derived[41];
    CHECK(zmq_curve_public(derived, made.secret_key) == 0 && !strcmp(derived, made.public_key));
    /* Never overwritten. */
    recall_keypair again;
    CHECK_RC(recall_keys_generate(kdir, "client", &again, err, sizeof err), RC_ERR_EXISTS);
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_OK);
    CHECK(!strcmp(got.secret_key, made.secret_key));

    /* A bare key with comments around it is a public key. */
    char pub[41], sec[41];
    CHECK(zmq_curve_keypair(pub, sec) == 0);
    snprintf(text, sizeof text, "# the daemon's key\n\n   %s\n", pub);
    write_file("bare.pub", text, 0644, path, sizeof path);
    CHECK_RC(recall_keys_read(path, 0, &got, err, sizeof err), RC_OK);
    CHECK(!strcmp(got.public_key, pub));
    /* ... but not a secret one. */
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_ERR_INVALID); /* 0644 */
    chmod(path, 0600);
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_ERR_FORMAT);
    CHECK_MSG(strstr(err, "secret-key") != NULL, "%s", err);

    /* A secret key others can read: refused with the file and its mode. */
    snprintf(text, sizeof text, "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n", pub,
             sec);
    write_file("loose.key", text, 0640, path, sizeof path);
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_ERR_INVALID);
    CHECK_MSG(strstr(err, path) && strstr(err, "0640") && strstr(err, "chmod 600"), "%s", err);
    CHECK(got.secret_key[0] == 0);
    /* Read for its public key only, the mode does not matter and the secret is not kept. */
    CHECK_RC(recall_keys_read(path, 0, &got, err, sizeof err), RC_OK);
    CHECK(!strcmp(got.public_key, pub) && got.secret_key[0] == 0);

    /* A public key that is not the secret's. */
    snprintf(text, sizeof text, "curve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
             made.public_key, sec);
    write_file("mixed.key", text, 0600, path, sizeof path);
    CHECK_RC(recall_keys_read(path, 1, &got, err, sizeof err), RC_ERR_FORMAT);
    CHECK_MSG(strstr(err, "not the one of its secret key") != NULL, "%s", err);

    /* Not Z85 (a space is not in the alphabet), named by line. */
    snprintf(text, sizeof text, "# x\ncurve\n    public-key = \"%.39s \"\n", pub);
    write_file("bad.pub", text, 0644, path, sizeof path);
    CHECK_RC(recall_keys_read(path, 0, &got, err, sizeof err), RC_ERR_FORMAT);
    CHECK_MSG(strstr(err, "line 3") != NULL, "%s", err);

    /* Missing files and empty ones. */
    snprintf(path, sizeof path, "%s/none.key", dir);
    CHECK_RC(recall_keys_read(path, 0, &got, err, sizeof err), RC_ERR_NOT_FOUND);
    write_file("empty.pub", "# nothing\n", 0644, path, sizeof path);
    CHECK_RC(recall_keys_read(path, 0, &got, err, sizeof err), RC_ERR_FORMAT);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_summary();
}
