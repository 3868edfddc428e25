/* test_quant_tool.c — the codec of common/quant.h on stdin/stdout, for tests/quant_ref.py,
 * which checks it against an independent reference written from the formats' definitions.
 *   test_quant_tool decode              256 lines: code, then its e4m3 value's fp32 bits (hex)
 *   test_quant_tool encode              fp32 values (raw, native order) in, one byte each out
 *   test_quant_tool rows fp8|int8 KV HD rows of fp32 [KV*HD] in, encoded rows out */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/quant.h"

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "decode")) {
        for (int c = 0; c < 256; c++) {
            float v = quant_e4m3_decode((uint8_t)c);
            uint32_t u;
            memcpy(&u, &v, 4);
            printf("%d %08x\n", c, u);
        }
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "encode")) {
        float x;
        while (fread(&x, 4, 1, stdin) == 1) putchar(quant_e4m3_encode(x));
        return 0;
    }
    dtype_t t;
    if (argc == 5 && !strcmp(argv[1], "rows") && !dtype_parse_mem(argv[2], &t) &&
        dtype_is_quant(t)) {
        const int kv = atoi(argv[3]), hd = atoi(argv[4]);
        if (kv < 1 || hd < 1) return 2;
        float *x = malloc(sizeof(float) * kv * hd);
        unsigned char *row = malloc(dtype_row_bytes(t, kv, hd));
        while (fread(x, sizeof(float) * kv * hd, 1, stdin) == 1) {
            quant_row_encode(row, t, x, kv, hd);
            fwrite(row, dtype_row_bytes(t, kv, hd), 1, stdout);
        }
        free(x);
        free(row);
        return 0;
    }
    fprintf(stderr, "usage: test_quant_tool decode | encode | rows fp8|int8 KV HD\n");
    return 2;
}
