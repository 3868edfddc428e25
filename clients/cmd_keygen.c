/* cmd_keygen.c — `recall keygen DIR`: a CURVE key pair for a client (or for recalld).
 *
 * It needs no daemon. The key pair goes to DIR/NAME.key (mode 0600) and the public key to
 * DIR/NAME.pub; the line to add to recalld's --allow file is printed, since that is the
 * next thing a user does with a client key. */
#include "clients/cli.h"

#include <string.h>

#include "clients/keys.h"

const cli_command cli_cmd_keygen = {
    "keygen", "recall keygen DIR [--name NAME]",
    "write a CURVE key pair (DIR/NAME.key, DIR/NAME.pub)",
    "Makes a key pair for CURVE authentication and writes DIR/NAME.key (both keys,\n"
    "readable by you only) and DIR/NAME.pub (the public key). NAME is client unless\n"
    "--name says otherwise; existing keys are never overwritten. Files are in ZeroMQ's\n"
    "certificate form (Z85 text), the same as CZMQ's.\n"
    "\n"
    "A client connects with --curve-keys DIR --server-key SERVER.pub (or sets\n"
    "RECALL_CURVE_KEYS and RECALL_SERVER_KEY); the daemon runs with\n"
    "--curve-secret server.key --allow FILE, FILE holding one line per client: its\n"
    "public key and a name (the line printed here).\n"
    "\n"
    "Examples:\n"
    "  recall keygen ~/.recall                    # ~/.recall/client.key, client.pub\n"
    "  recall keygen /etc/recall --name server    # recalld's own key pair\n",
    NULL};

int cli_keygen(const cli_args *a)
{
    if (a->n_pos != 1) return cli_usage_error(CMD_KEYGEN, "keygen takes one DIR");
    const char *dir = a->pos[0];
    const char *name = a->vals[O_NAME] ? a->vals[O_NAME] : "client";
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return cli_usage_error(CMD_KEYGEN,
                                   "--name '%s': use letters, digits, '-', '_' and '.' only", name);
    if (!name[0] || name[0] == '.') return cli_usage_error(CMD_KEYGEN, "--name needs a name");
    recall_keypair kp;
    char err[1024];
    rc_t rc = recall_keys_generate(dir, name, &kp, err, sizeof err);
    if (rc) return cli_report(rc == RC_ERR_INVALID ? EXIT_USAGE : EXIT_REMOTE, rc, "%s", err);
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.key", dir, name);
        cJSON_AddStringToObject(o, "secret_file", path);
        snprintf(path, sizeof path, "%s/%s.pub", dir, name);
        cJSON_AddStringToObject(o, "public_file", path);
        cJSON_AddStringToObject(o, "public_key", kp.public_key);
        cli_json_print(o);
    } else if (!cli_quiet) {
        printf("wrote %s/%s.key (secret: keep it private) and %s/%s.pub\n", dir, name, dir, name);
        printf("the line for recalld's --allow file:\n%s %s\n", kp.public_key, name);
    }
    memset(&kp, 0, sizeof kp);
    return EXIT_OK;
}
