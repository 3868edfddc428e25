/* keys.h — CURVE key files, for recall (the client) and recalld (the server).
 *
 * A key is 32 bytes written as 40 characters of Z85 text, the form zmq_curve_keypair
 * gives. Files are CZMQ's certificate form (zcert), so keys made by CZMQ tools work here
 * and ours work there:
 *
 *     #   ZeroMQ CURVE **Secret** Certificate
 *     metadata
 *     curve
 *         public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
 *         secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
 *
 * A public-key file (NAME.pub) has only the public-key line; a file holding nothing but a
 * bare 40-character key on a line is read as a public key too. A line whose first
 * non-blank character is '#' is a comment ('#' is also a Z85 character, so not elsewhere).
 * A file holding a secret key must not be readable by group or others: reading one that
 * is refuses it, naming the file and its mode. */
#ifndef RECALL_CLIENTS_KEYS_H
#define RECALL_CLIENTS_KEYS_H

#include <stddef.h>

#include "common/rc.h"

#define RECALL_KEY_Z85_LEN 40

typedef struct recall_keypair {
    char public_key[RECALL_KEY_Z85_LEN + 1]; /* Z85, NUL-terminated */
    char secret_key[RECALL_KEY_Z85_LEN + 1]; /* Z85, or "" when only the public key is known */
} recall_keypair;

/* Non-zero when this libzmq can do CURVE (it was built with libsodium or tweetnacl). */
int recall_keys_curve_available(void);

/* Non-zero when k is 40 characters of valid Z85. */
int recall_keys_valid(const char *k);

/* Reads a key file into *out. want_secret: the file must hold a secret key (its public
 * key is derived, and checked against a public-key line if there is one) and must have no
 * group or other permissions; otherwise only the public key is read (from a .key file
 * too). path may be a directory: DIR/client.key (want_secret) or DIR/client.pub is read.
 * RC_ERR_NOT_FOUND, RC_ERR_IO, RC_ERR_FORMAT (no key, or not Z85) or RC_ERR_INVALID (the
 * mode), with err saying which file and why. */
rc_t recall_keys_read(const char *path, int want_secret, recall_keypair *out, char *err,
                      size_t errlen);

/* Makes a new key pair and writes DIR/NAME.key (both keys, mode 0600) and DIR/NAME.pub
 * (public, mode 0644), creating DIR (mode 0700) if it is missing. Never overwrites: an
 * existing NAME.key or NAME.pub is RC_ERR_EXISTS. The keys also go into *out. */
rc_t recall_keys_generate(const char *dir, const char *name, recall_keypair *out, char *err,
                          size_t errlen);

#endif
