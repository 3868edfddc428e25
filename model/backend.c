/* backend.c — choosing and opening a backend by device name. */
#define BACKEND_INTERNAL
#include "model/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* "cpu" → cpu; "cuda" → cuda:0; "cuda:N" → cuda:N. Returns -1 for anything else. */
static int parse_device(const char *d, const backend_ops_t **ops, int *index)
{
    *index = 0;
    if (!strcmp(d, "cpu")) {
        *ops = &backend_cpu_ops;
        return 0;
    }
    if (strncmp(d, "cuda", 4)) return -1;
#ifdef RECALL_HAVE_CUDA
    *ops = &backend_cuda_ops;
#else
    *ops = NULL;
#endif
    if (d[4] == '\0') return 0;
    if (d[4] != ':' || !d[5]) return -1;
    char *end;
    long n = strtol(d + 5, &end, 10);
    if (*end || n < 0 || n > 255) return -1;
    *index = (int)n;
    return 0;
}

/* The weights in the form the backend reads: fp32 for the CPU, the stored tensors for the
 * others (which keep their own copy on the device). */
static rc_t ready_weights(model_t *m, const backend_ops_t *ops, char *err, size_t errlen)
{
    return ops == &backend_cpu_ops ? model_load_weights(m, err, errlen)
                                   : model_check_weights(m, err, errlen);
}

rc_t model_backend_open(model_t *m, const char *device, model_backend_t **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    model_backend_t *b = calloc(1, sizeof *b);
    if (!b) return RC_ERR_NOMEM;
    b->model = m;
    rc_t rc;
    if (!device || !strcmp(device, "auto")) {
#ifdef RECALL_HAVE_CUDA
        char why[256];
        b->ops = &backend_cuda_ops;
        rc = ready_weights(m, b->ops, err, errlen);
        if (rc) goto fail; /* the checkpoint's fault: no backend would do better */
        rc = b->ops->open(m, 0, &b->ctx, why, sizeof why);
        if (rc == RC_OK) goto done;
        log_info("backend: no usable GPU (%s); using the CPU", why);
#endif
        b->ops = &backend_cpu_ops;
        rc = ready_weights(m, b->ops, err, errlen);
        if (!rc) rc = b->ops->open(m, 0, &b->ctx, err, errlen);
    } else {
        int index;
        if (parse_device(device, &b->ops, &index)) {
            snprintf(err, errlen, "unknown device '%s' (use cpu, cuda or cuda:N)", device);
            free(b);
            return RC_ERR_INVALID;
        }
        if (!b->ops) {
            snprintf(err, errlen, "device '%s': this build of recall has no CUDA backend",
                     device);
            free(b);
            return RC_ERR_UNSUPPORTED;
        }
        rc = ready_weights(m, b->ops, err, errlen);
        if (!rc) rc = b->ops->open(m, index, &b->ctx, err, errlen);
    }
#ifdef RECALL_HAVE_CUDA
fail:
#endif
    if (rc) {
        free(b);
        return rc;
    }
#ifdef RECALL_HAVE_CUDA
done:
#endif
    *out = b;
    return RC_OK;
}

void model_backend_close(model_backend_t **pb)
{
    if (!pb || !*pb) return;
    (*pb)->ops->close((*pb)->ctx);
    free(*pb);
    *pb = NULL;
}

const char *model_backend_describe(const model_backend_t *b)
{
    return b->ops->describe(b->ctx);
}

const model_t *model_backend_model(const model_backend_t *b)
{
    return b->model;
}

rc_t model_backend_device_memory(const model_backend_t *b, size_t *free_bytes, size_t *total)
{
    if (!b->ops->device_memory) return RC_ERR_UNSUPPORTED;
    return b->ops->device_memory(b->ctx, free_bytes, total);
}
