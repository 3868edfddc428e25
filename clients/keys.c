/* keys.c — CURVE key files: see keys.h for the format. */
#include "clients/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

int recall_keys_curve_available(void)
{
    return zmq_has("curve");
}

int recall_keys_valid(const char *k)
{
    uint8_t raw[32];
    return k && strlen(k) == RECALL_KEY_Z85_LEN && zmq_z85_decode(raw, k) != NULL;
}

/* The value of `NAME = "VALUE"` on line (blanks allowed around), or NULL. */
static const char *zpl_value(const char *line, const char *name, char *val, size_t n)
{
    size_t nl = strlen(name);
    if (strncmp(line, name, nl) != 0) return NULL;
    const char *p = line + nl;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '=') return NULL;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p++ != '"') return NULL;
    const char *end = strchr(p, '"');
    if (!end || (size_t)(end - p) >= n) return NULL;
    memcpy(val, p, (size_t)(end - p));
    val[end - p] = 0;
    return val;
}

rc_t recall_keys_read(const char *path, int want_secret, recall_keypair *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof *out);
    char file[PATH_MAX];
    struct stat st;
    if (stat(path, &st) != 0)
        return rc_errf(errno == ENOENT ? RC_ERR_NOT_FOUND : RC_ERR_IO, err, errlen,
                       "cannot read key file %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        snprintf(file, sizeof file, "%s/%s", path, want_secret ? "client.key" : "client.pub");
        if (stat(file, &st) != 0)
            return rc_errf(errno == ENOENT ? RC_ERR_NOT_FOUND : RC_ERR_IO, err, errlen,
                           "cannot read key file %s: %s (recall keygen %s writes one)", file,
                           strerror(errno), path);
    } else {
        snprintf(file, sizeof file, "%s", path);
    }
    /* Checked on the file we open, before its secret is read. */
    if (want_secret && (st.st_mode & 077))
        return rc_errf(RC_ERR_INVALID, err, errlen,
                       "secret key file %s has mode %04o: it must be readable by its owner "
                       "only (chmod 600 %s)",
                       file, (unsigned)(st.st_mode & 07777), file);
    FILE *f = fopen(file, "r");
    if (!f)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot read key file %s: %s", file,
                       strerror(errno));
    char line[1024], val[128];
    rc_t rc = RC_OK;
    int lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        p[strcspn(p, "\r\n")] = 0;
        if (!*p || *p == '#') continue;
        char *key = NULL;
        if (zpl_value(p, "public-key", val, sizeof val)) {
            key = out->public_key;
        } else if (zpl_value(p, "secret-key", val, sizeof val)) {
            key = out->secret_key;
        } else if (strlen(p) == RECALL_KEY_Z85_LEN && !out->public_key[0]) {
            snprintf(val, sizeof val, "%s", p);
            key = out->public_key; /* a bare key: a public one pasted into a file */
        } else {
            continue; /* zcert's "metadata" and "curve" section names, and the like */
        }
        if (!recall_keys_valid(val)) {
            rc = rc_errf(RC_ERR_FORMAT, err, errlen,
                         "key file %s, line %d: not a 40-character Z85 key", file, lineno);
            break;
        }
        memcpy(key, val, RECALL_KEY_Z85_LEN + 1);
    }
    fclose(f);
    if (rc) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    if (want_secret) {
        char derived[RECALL_KEY_Z85_LEN + 1];
        if (!out->secret_key[0]) {
            memset(out, 0, sizeof *out);
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                           "key file %s holds no secret-key line (a .pub file? give the .key)",
                           file);
        }
        if (zmq_curve_public(derived, out->secret_key) != 0) {
            memset(out, 0, sizeof *out);
            return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                           "cannot use CURVE keys: this libzmq was built without CURVE");
        }
        if (out->public_key[0] && strcmp(derived, out->public_key) != 0) {
            memset(out, 0, sizeof *out);
            return rc_errf(RC_ERR_FORMAT, err, errlen,
                           "key file %s: its public key is not the one of its secret key", file);
        }
        memcpy(out->public_key, derived, sizeof derived);
    } else {
        memset(out->secret_key, 0, sizeof out->secret_key); /* not wanted: not kept */
        if (!out->public_key[0])
            return rc_errf(RC_ERR_FORMAT, err, errlen, "key file %s holds no public key", file);
    }
    return RC_OK;
}

/* Writes text to path, created with mode (never over an existing file). */
static rc_t write_new(const char *path, mode_t mode, const char *text, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0)
        return rc_errf(errno == EEXIST ? RC_ERR_EXISTS : RC_ERR_IO, err, errlen,
                       "cannot create %s: %s%s", path, strerror(errno),
                       errno == EEXIST ? " (keys are never overwritten: move it away first)" : "");
    size_t n = strlen(text);
    /* The umask may have taken bits away, never added them; make the mode exact. */
    int ok = fchmod(fd, mode) == 0 && write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        unlink(path);
        return rc_errf(RC_ERR_IO, err, errlen, "cannot write %s: %s", path, strerror(e));
    }
    return RC_OK;
}

rc_t recall_keys_generate(const char *dir, const char *name, recall_keypair *out, char *err,
                          size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!recall_keys_curve_available())
        return rc_errf(RC_ERR_UNSUPPORTED, err, errlen,
                       "this libzmq was built without CURVE (libsodium): no keys can be made");
    if (!name[0] || strchr(name, '/'))
        return rc_errf(RC_ERR_INVALID, err, errlen, "bad key name '%s'", name);
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT || mkdir(dir, 0700) != 0)
            return rc_errf(RC_ERR_IO, err, errlen, "cannot create directory %s: %s", dir,
                           strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        return rc_errf(RC_ERR_INVALID, err, errlen, "%s is not a directory", dir);
    }
    char keyp[PATH_MAX], pubp[PATH_MAX];
    snprintf(keyp, sizeof keyp, "%s/%s.key", dir, name);
    snprintf(pubp, sizeof pubp, "%s/%s.pub", dir, name);
    if (access(keyp, F_OK) == 0 || access(pubp, F_OK) == 0)
        return rc_errf(RC_ERR_EXISTS, err, errlen,
                       "%s or %s already exists: keys are never overwritten (move them away, "
                       "or pick another --name)",
                       keyp, pubp);
    if (zmq_curve_keypair(out->public_key, out->secret_key) != 0)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot make a key pair: %s",
                       zmq_strerror(zmq_errno()));
    char stamp[64];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&now, &tm));
    char text[1024];
    snprintf(text, sizeof text,
             "#   ****  Generated on %s by recall keygen  ****\n"
             "#   ZeroMQ CURVE **Secret** Certificate\n"
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
             "\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n"
             "    secret-key = \"%s\"\n",
             stamp, out->public_key, out->secret_key);
    rc_t rc = write_new(keyp, 0600, text, err, errlen);
    if (rc) return rc;
    snprintf(text, sizeof text,
             "#   ****  Generated on %s by recall keygen  ****\n"
             "#   ZeroMQ CURVE Public Certificate\n"
             "#   Exchange securely, or use a secure mechanism to verify the contents\n"
             "#   of this file after exchange. Store public certificates in your home\n"
             "#   directory, in the .curve subdirectory.\n"
             "\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n",
             stamp, out->public_key);
    rc = write_new(pubp, 0644, text, err, errlen);
    if (rc) unlink(keyp); /* all or nothing */
    return rc;
}
