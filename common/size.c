#include "common/size.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

rc_t size_parse(const char *s, uint64_t max, uint64_t *out)
{
    if (!s) return RC_ERR_FORMAT;
    if (!strcmp(s, "none")) {
        *out = 0;
        return RC_OK;
    }
    char *end;
    errno = 0;
    size_t digits = strspn(s, "0123456789."); /* no sign, exponent, hex, inf or nan */
    double v = strtod(s, &end);
    if (errno || !digits || end != s + digits || !(v >= 0)) return RC_ERR_FORMAT;
    double mul = 1;
    const char *units = "KMGT";
    const char *u = *end ? strchr(units, toupper((unsigned char)*end)) : NULL;
    if (u) {
        mul = (double)(1ull << (10 * (u - units + 1)));
        end++;
        if (*end && strcmp(end, "B") != 0 && strcmp(end, "iB") != 0) return RC_ERR_FORMAT;
    } else if (*end && strcmp(end, "B") != 0) {
        return RC_ERR_FORMAT;
    }
    if (v * mul > (double)max) return RC_ERR_LIMIT;
    if (v > 0 && v * mul < 1) return RC_ERR_INVALID;
    *out = (uint64_t)(v * mul);
    return RC_OK;
}
