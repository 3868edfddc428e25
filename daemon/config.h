/* config.h — recalld's config file (/etc/recall/recalld.conf): long flags written as
 * `key = value` lines.
 *
 * Contract. The file is turned into command-line arguments and handed to recalld's one
 * flag parser (main.c), so every flag is a key, a key is checked exactly as its flag is,
 * and there is no second copy of any flag's validation to drift:
 *
 *   # comment                 a line whose first non-blank is '#'; blank lines are skipped
 *   key = value               becomes "--key=value"; key is a long flag without "--";
 *                             value runs to the end of the line (or to a " #" comment),
 *                             white space trimmed; "..." quotes keep inner spaces and '#'
 *   flag = true | false       for flags that take no value (no-chunk-scale): true gives
 *                             "--flag", false gives nothing (also yes/no, on/off, 1/0)
 *
 * Refused with a sentence naming FILE:LINE: a line without '=', an unknown key, a boolean
 * value that is not one of the words above, an empty value, the same key twice
 * (aliases count as the same key), and keys that only make sense on a command line
 * (config_file_merge's `refused`). A value the flag's own parser refuses is reported by
 * that parser, which gets each argument's origin from config_args_t.origin.
 *
 * The merged argument vector is argv[0], then the file's arguments in file order, then the
 * command line's: getopt_long takes the last value given for a flag, so flags on the
 * command line win over the file. */
#ifndef RECALL_DAEMON_CONFIG_H
#define RECALL_DAEMON_CONFIG_H

#include <getopt.h>
#include <stddef.h>

#include "common/rc.h"

/* The default config file, read when no --config is given and it exists. */
#define CONFIG_FILE_DEFAULT "/etc/recall/recalld.conf"

typedef struct config_args {
    int argc;
    char **argv;   /* [argc + 1], NULL-terminated; owned (config_args_free) */
    char **origin; /* [argc]: "FILE:LINE" for an argument from the file, NULL for one from
                      the command line; owned */
    int n_file;    /* how many of argv[1..] came from the file */
} config_args_t;

/* Reads the config file at path (NULL: none, only the command line is copied) and merges it
 * with argc/argv as described above. longopts is the flag table (getopt_long's; a key is an
 * entry's name). refused: NULL-terminated key names that may not appear in a file (--help,
 * --config, ...). On failure: RC_ERR_IO (the file cannot be read; err names it and why) or
 * RC_ERR_INVALID (err is "FILE:LINE: why"); *out is left empty. argv's strings are copied,
 * so *out does not borrow from argv. */
rc_t config_file_merge(const char *path, int argc, char **argv, const struct option *longopts,
                       const char *const *refused, config_args_t *out, char *err, size_t errlen);

/* Frees what config_file_merge made and zeroes *a. NULL-safe. */
void config_args_free(config_args_t *a);

#endif
