/* config.c — the config file as command-line arguments: see config.h. */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void config_args_free(config_args_t *a)
{
    if (!a) return;
    for (int i = 0; i < a->argc; i++) {
        if (a->argv) free(a->argv[i]);
        if (a->origin) free(a->origin[i]);
    }
    free(a->argv);
    free(a->origin);
    memset(a, 0, sizeof *a);
}

/* Appends one argument (copied) with its origin (copied; NULL: the command line). */
static int push(config_args_t *a, size_t *cap, const char *arg, const char *origin)
{
    if ((size_t)a->argc + 2 > *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        char **v = realloc(a->argv, c * sizeof *v);
        if (!v) return -1;
        a->argv = v;
        char **o = realloc(a->origin, c * sizeof *o);
        if (!o) return -1;
        a->origin = o;
        *cap = c;
    }
    char *s = strdup(arg), *o = origin ? strdup(origin) : NULL;
    if (!s || (origin && !o)) {
        free(s);
        free(o);
        return -1;
    }
    a->argv[a->argc] = s;
    a->origin[a->argc] = o;
    a->argc++;
    a->argv[a->argc] = NULL;
    return 0;
}

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t l = strlen(s);
    while (l && isspace((unsigned char)s[l - 1]))
        s[--l] = 0;
    return s;
}

static int bool_word(const char *v, int *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i])) return *out = 1, 0;
        if (!strcasecmp(v, no[i])) return *out = 0, 0;
    }
    return -1;
}

/* Reads the file's lines into a as "--key=value" arguments. */
static rc_t read_file(const char *path, const struct option *lo, const char *const *refused,
                      config_args_t *a, size_t *cap, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return rc_errf(RC_ERR_IO, err, errlen, "cannot read the config file %s: %s", path,
                       strerror(errno));
    size_t n_opts = 0;
    while (lo[n_opts].name)
        n_opts++;
    /* The line that set each option (by its val, so that aliases are one key); 0: unset. */
    int *set_at = calloc(n_opts ? n_opts : 1, sizeof *set_at);
    char *line = NULL, where[4200], arg[8192];
    size_t lcap = 0;
    int lineno = 0;
    rc_t rc = RC_OK;
    if (!set_at) {
        fclose(f);
        return rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
    }
    while (getline(&line, &lcap, f) >= 0) {
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen,
                         "%s: expected 'key = value' (a long flag without --), not '%s'", where, s);
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        if (val[0] == '"') {
            char *close = strrchr(val + 1, '"');
            char *rest = close ? trim(close + 1) : NULL;
            if (!close || (*rest && *rest != '#')) {
                rc = rc_errf(RC_ERR_INVALID, err, errlen,
                             "%s: the value of '%s' opens a quote it does not close", where, key);
                break;
            }
            *close = 0;
            val++;
        } else {
            /* A comment after a value needs a blank before '#', so "a#b" stays a value. */
            for (char *h = val; *h; h++)
                if (*h == '#' && h > val && isspace((unsigned char)h[-1])) {
                    *h = 0;
                    val = trim(val);
                    break;
                }
        }
        if (!strncmp(key, "--", 2)) key += 2;
        size_t i = 0;
        for (; i < n_opts; i++)
            if (!strcmp(lo[i].name, key)) break;
        int is_refused = 0;
        for (const char *const *r = refused; r && *r; r++)
            if (!strcmp(*r, key)) is_refused = 1;
        if (i == n_opts || is_refused) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen,
                         is_refused ? "%s: '%s' can only be given on the command line"
                                    : "%s: unknown key '%s' (the keys are recalld's long flags "
                                      "without --; see recalld --help)",
                         where, key);
            break;
        }
        /* Aliases share a val: the first entry with this val stands for all of them. */
        size_t canon = i;
        for (size_t j = 0; j < n_opts; j++)
            if (lo[j].val == lo[i].val) {
                canon = j;
                break;
            }
        if (set_at[canon]) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen,
                         "%s: '%s' is already set on line %d of this file", where, key,
                         set_at[canon]);
            break;
        }
        set_at[canon] = lineno;
        if (!*val) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen, "%s: '%s' has no value", where, key);
            break;
        }
        if (lo[i].has_arg == no_argument) {
            int on;
            if (bool_word(val, &on)) {
                rc = rc_errf(RC_ERR_INVALID, err, errlen,
                             "%s: '%s' is a switch: its value must be true or false, not '%s'",
                             where, key, val);
                break;
            }
            if (!on) continue;
            snprintf(arg, sizeof arg, "--%s", key);
        } else if ((size_t)snprintf(arg, sizeof arg, "--%s=%s", key, val) >= sizeof arg) {
            rc = rc_errf(RC_ERR_INVALID, err, errlen, "%s: the value of '%s' is too long", where,
                         key);
            break;
        }
        if (push(a, cap, arg, where)) {
            rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
            break;
        }
        a->n_file++;
    }
    if (!rc && ferror(f))
        rc = rc_errf(RC_ERR_IO, err, errlen, "cannot read the config file %s: %s", path,
                     strerror(errno));
    free(line);
    free(set_at);
    fclose(f);
    return rc;
}

rc_t config_file_merge(const char *path, int argc, char **argv, const struct option *longopts,
                       const char *const *refused, config_args_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    size_t cap = 0;
    rc_t rc = RC_OK;
    if (push(out, &cap, argc > 0 ? argv[0] : "recalld", NULL)) goto oom;
    if (path && (rc = read_file(path, longopts, refused, out, &cap, err, errlen))) goto fail;
    for (int i = 1; i < argc; i++)
        if (push(out, &cap, argv[i], NULL)) goto oom;
    return RC_OK;
oom:
    rc = rc_errf(RC_ERR_NOMEM, err, errlen, "out of memory");
fail:
    config_args_free(out);
    return rc;
}
