/* weights.c — the worker's first step: the model's weights, the backend and the GPU budget.
 *
 * recalld listens as soon as it has read the config, the tokenizer and the session
 * catalogue (main.c); checking a large checkpoint's weights, opening the backend (which
 * uploads them to the GPU, or converts them to fp32 for the CPU) take seconds, so they run
 * here, on the worker, before its first job. Quick
 * requests are answered meanwhile (health says "loading"); jobs wait in the queue. */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "daemon/daemon.h"
#include "daemon/notify.h"

/* The share of the GPU memory left free by the weights that sessions' rows may use by
 * default; the rest is for the streams' local caches and scratch. */
#define GPU_BUDGET_DEFAULT_PERCENT 80

/* The daemon's GPU budget from the flag (0: default, SIZE_MAX: none): 0 (no limit) on the
 * CPU backend or for none; the default is GPU_BUDGET_DEFAULT_PERCENT of the free memory. */
static size_t gpu_default(model_backend_t *be, int on_device, size_t flag)
{
    if (!on_device || flag == SIZE_MAX) return 0;
    if (flag) return flag;
    size_t free_b = 0, total = 0;
    if (model_backend_device_memory(be, &free_b, &total)) {
        log_warn("cannot read the GPU's free memory; no GPU memory budget");
        return 0;
    }
    return free_b / 100 * GPU_BUDGET_DEFAULT_PERCENT;
}

rc_t daemon_load_weights(daemon_t *d)
{
    char err[1024] = "";
    const double t0 = clock_now_s();
    model_backend_t *be = NULL;
    /* Every tensor found and of its shape first, so a broken checkpoint is named as such;
     * then the backend, which converts the weights to fp32 only if it is the CPU's. */
    rc_t rc = model_check_weights(d->model, err, sizeof err);
    if (!rc) rc = model_backend_open(d->model, d->cfg.device, &be, err, sizeof err);
    if (rc) {
        log_error("cannot load the model in %s on device %s: %s", d->cfg.model_dir,
                  d->cfg.device ? d->cfg.device : "auto", err);
        goto fail;
    }
    const int on_device = strncmp(model_backend_describe(be), "cuda", 4) == 0;
    if (d->gpu_budget_flag && !on_device)
        log_warn("--gpu-memory-budget has no effect: the %s backend keeps session memory in "
                 "host memory",
                 model_backend_describe(be));
    const size_t gpu_budget = gpu_default(be, on_device, d->gpu_budget_flag);
    pthread_mutex_lock(&d->mu);
    d->backend = be;
    d->cfg.gpu_budget = gpu_budget;
    memory_tiers_set_gpu_budget(d->tiers, gpu_budget);
    pthread_mutex_unlock(&d->mu);
    __atomic_store_n(&d->ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&d->mu); /* ordered with main.c's READY=1 (notify.h) */
    daemon_notify_status("serving %zu session%s on %s", d->n_sessions,
                         d->n_sessions == 1 ? "" : "s", model_backend_describe(be));
    pthread_mutex_unlock(&d->mu);
    log_info("model ready in %.2f s on %s; GPU memory budget %s%.1f MiB", clock_now_s() - t0,
             model_backend_describe(be), gpu_budget || !on_device ? "" : "none, ",
             (double)gpu_budget / 1048576.0);
    return RC_OK;
fail:
    daemon_notify_status("cannot load the weights: %s", err);
    pthread_mutex_lock(&d->mu);
    d->load_failed = 1;
    pthread_mutex_unlock(&d->mu);
    kill(getpid(), SIGTERM); /* the main thread takes it (the worker blocks it) and stops */
    return rc;
}
