#include "common/rc.h"

#include <stdarg.h>
#include <stdio.h>

static const struct {
    rc_t rc;
    const char *name;
    const char *text;
} table[] = {
    {RC_OK, "OK", "ok"},
    {RC_ERR_INVALID, "INVALID", "invalid argument"},
    {RC_ERR_NOMEM, "NOMEM", "out of memory"},
    {RC_ERR_IO, "IO", "input/output error"},
    {RC_ERR_NOT_FOUND, "NOT_FOUND", "not found"},
    {RC_ERR_EXISTS, "EXISTS", "already exists"},
    {RC_ERR_FORMAT, "FORMAT", "malformed data"},
    {RC_ERR_LIMIT, "LIMIT", "over a configured limit"},
    {RC_ERR_UNSUPPORTED, "UNSUPPORTED", "not supported"},
    {RC_ERR_BUSY, "BUSY", "busy, try again"},
    {RC_ERR_SEQUENCE, "SEQUENCE", "out-of-order sequence number"},
    {RC_ERR_SHUTDOWN, "SHUTDOWN", "shutting down"},
    {RC_ERR_DEVICE, "DEVICE", "device error"},
    {RC_ERR_INTERNAL, "INTERNAL", "internal error"},
    {RC_ERR_UNAVAILABLE, "UNAVAILABLE", "session unavailable"},
};

const char *rc_strerror(rc_t rc)
{
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].rc == rc) return table[i].text;
    return "unknown error";
}

const char *rc_name(rc_t rc)
{
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i].rc == rc) return table[i].name;
    return "UNKNOWN";
}

rc_t rc_errf(rc_t rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}
