/* cmd_daemon.c — the commands about the daemon itself: `recall health` and `recall stats`. */
#include "clients/cli.h"

static int cmd_health(recall_client *c, const cli_args *a);
static int cmd_stats(recall_client *c, const cli_args *a);

const cli_command cli_cmd_health = {
    "health", "recall health", "is the daemon up? version, model, device",
    "Exits 0 when the daemon answers and is healthy, 3 when it cannot be\n"
    "reached. A daemon that has just started answers at once and says\n"
    "\"loading\" until its model's weights are in; asks and ingests sent\n"
    "meanwhile wait for them.\n"
    "\n"
    "Example:\n"
    "  recall health --connect ipc:///run/recall.sock\n",
    cmd_health};

const cli_command cli_cmd_stats = {"stats", "recall stats",
                                   "daemon counters: requests, tokens, memory",
                                   "Example:\n"
                                   "  recall stats --json\n",
                                   cmd_stats};

static int cmd_health(recall_client *c, const cli_args *a)
{
    if (a->n_pos) return cli_usage_error(CMD_HEALTH, "health takes no arguments");
    Recall__HealthRequest hr = RECALL__HEALTH_REQUEST__INIT;
    Recall__Response *r;
    int e =
        cli_simple_call(c, RECALL__REQUEST__BODY_HEALTH, &hr, RECALL__RESPONSE__BODY_HEALTH, &r);
    if (e >= 0) return e;
    const Recall__HealthResponse *h = r->health;
    int ok = h->ok;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", ok);
        cJSON_AddStringToObject(o, "version", cli_str_or(h->version, ""));
        cJSON_AddStringToObject(o, "model", cli_str_or(h->model, ""));
        cJSON_AddStringToObject(o, "device", cli_str_or(h->device, ""));
        cJSON_AddBoolToObject(o, "ready", h->ready);
        cJSON_AddStringToObject(o, "endpoint", recall_client_endpoint(c));
        cli_json_print(o);
    } else {
        printf("%s: recalld %s at %s\nmodel:  %s\ndevice: %s\n", ok ? "ok" : "NOT OK",
               cli_str_or(h->version, "?"), recall_client_endpoint(c), cli_str_or(h->model, "?"),
               h->ready ? cli_str_or(h->device, "?") : "loading the weights");
    }
    recall__response__free_unpacked(r, NULL);
    return ok ? EXIT_OK : EXIT_REMOTE;
}

static int cmd_stats(recall_client *c, const cli_args *a)
{
    if (a->n_pos) return cli_usage_error(CMD_STATS, "stats takes no arguments");
    Recall__StatsRequest sr = RECALL__STATS_REQUEST__INIT;
    Recall__Response *r;
    int e = cli_simple_call(c, RECALL__REQUEST__BODY_STATS, &sr, RECALL__RESPONSE__BODY_STATS, &r);
    if (e >= 0) return e;
    const Recall__StatsResponse *s = r->stats;
    if (cli_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "uptime_s", s->uptime_s);
        cJSON_AddNumberToObject(o, "sessions", s->sessions);
        cJSON_AddNumberToObject(o, "requests", (double)s->requests);
        cJSON_AddNumberToObject(o, "errors", (double)s->errors);
        cJSON_AddNumberToObject(o, "tokens_ingested", (double)s->tokens_ingested);
        cJSON_AddNumberToObject(o, "tokens_generated", (double)s->tokens_generated);
        cJSON_AddNumberToObject(o, "memory_tokens", (double)s->memory_tokens);
        cJSON_AddNumberToObject(o, "memory_bytes_device", (double)s->memory_bytes_device);
        cJSON_AddNumberToObject(o, "memory_bytes_host", (double)s->memory_bytes_host);
        cJSON_AddNumberToObject(o, "memory_bytes_disk", (double)s->memory_bytes_disk);
        cJSON_AddStringToObject(o, "device", cli_str_or(s->device, ""));
        cJSON_AddStringToObject(o, "model", cli_str_or(s->model, ""));
        cJSON_AddNumberToObject(o, "host_budget", (double)s->host_budget);
        cJSON_AddNumberToObject(o, "gpu_budget", (double)s->gpu_budget);
        cJSON_AddNumberToObject(o, "sessions_gpu", (double)s->sessions_gpu);
        cJSON_AddNumberToObject(o, "sessions_host", (double)s->sessions_host);
        cJSON_AddNumberToObject(o, "sessions_disk", (double)s->sessions_disk);
        cJSON_AddNumberToObject(o, "sessions_unavailable", (double)s->sessions_unavailable);
        cJSON_AddNumberToObject(o, "loads", (double)s->loads);
        cJSON_AddNumberToObject(o, "evictions", (double)s->evictions);
        cJSON_AddNumberToObject(o, "replies_dropped", (double)s->replies_dropped);
        cJSON_AddNumberToObject(o, "auth_refused", (double)s->auth_refused);
        cJSON_AddNumberToObject(o, "limit_refused", (double)s->limit_refused);
        cli_json_print(o);
    } else {
        char up[32], bd[32], bh[32], bk[32], hb[32] = "none";
        if (s->host_budget) cli_human_bytes(hb, sizeof hb, (double)s->host_budget);
        cli_human_duration(up, sizeof up, s->uptime_s);
        cli_human_bytes(bd, sizeof bd, (double)s->memory_bytes_device);
        cli_human_bytes(bh, sizeof bh, (double)s->memory_bytes_host);
        cli_human_bytes(bk, sizeof bk, (double)s->memory_bytes_disk);
        printf("uptime           %s\n", up);
        printf("model            %s\n", cli_str_or(s->model, "?"));
        printf("device           %s\n", cli_str_or(s->device, "?"));
        printf("sessions         %u\n", s->sessions);
        printf("requests         %llu (%llu errors)\n", (unsigned long long)s->requests,
               (unsigned long long)s->errors);
        printf("tokens ingested  %llu\n", (unsigned long long)s->tokens_ingested);
        printf("tokens generated %llu\n", (unsigned long long)s->tokens_generated);
        printf("memory tokens    %llu\n", (unsigned long long)s->memory_tokens);
        printf("memory bytes     device %s, host %s, disk %s\n", bd, bh, bk);
        printf("host budget      %s\n", hb);
        printf("sessions by tier gpu %llu, host %llu, disk %llu, unavailable %llu\n",
               (unsigned long long)s->sessions_gpu, (unsigned long long)s->sessions_host,
               (unsigned long long)s->sessions_disk, (unsigned long long)s->sessions_unavailable);
        printf("rows moved       %llu loads from disk, %llu evictions\n",
               (unsigned long long)s->loads, (unsigned long long)s->evictions);
        printf("refused          %llu connections (CURVE), %llu requests over a limit\n",
               (unsigned long long)s->auth_refused, (unsigned long long)s->limit_refused);
        if (s->replies_dropped)
            printf("replies dropped  %llu (clients that stopped reading)\n",
                   (unsigned long long)s->replies_dropped);
    }
    recall__response__free_unpacked(r, NULL);
    return EXIT_OK;
}
