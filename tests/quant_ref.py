#!/usr/bin/python3
"""quant_ref.py — common/quant.h's codec against a reference written from the definitions.

The reference shares nothing with the C code: it lists the e4m3fn values from the format's
definition (1 sign, 4 exponent bits with bias 7, 3 mantissa bits, subnormals, 0x7f / 0xff
NaN, no infinities) as exact fractions, and encodes a value by searching for the nearest one
(ties to the even code, beyond the largest finite value: saturation, NaN keeps its sign).
Row encodings are recomputed with numpy's fp32 arithmetic (scale = amax / 448 or / 127,
x / scale) and compared byte for byte.

(torch.float8_e4m3fn would be another reference, but Debian's python3-torch 1.13 predates
it; the e4m3fn tables here are the ones torch and the OCP FP8 specification define.)

Usage: quant_ref.py TEST_QUANT_TOOL. Prints "N passed, N failed"; exits 1 on failure."""
import bisect
import struct
import subprocess
import sys
from fractions import Fraction

import numpy as np

TOOL = sys.argv[1]
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL", what)


def e4m3_value(c):
    """The exact value of code c (None for NaN)."""
    s, e, m = c >> 7, (c >> 3) & 15, c & 7
    if e == 15 and m == 7:
        return None
    v = Fraction(m, 8) * Fraction(2) ** -6 if e == 0 else (1 + Fraction(m, 8)) * Fraction(2) ** (e - 7)
    return -v if s else v


VALUES = [(e4m3_value(c), c) for c in range(128) if e4m3_value(c) is not None]  # magnitudes
VALUES_SORTED = sorted(VALUES)
MAGS = [v for v, _ in VALUES_SORTED]


def ref_encode(x):
    """x: a numpy float32. The nearest code, ties to even, saturating; NaN -> 0x7f|sign."""
    sign = 0x80 if np.signbit(x) else 0
    if np.isnan(x):
        return sign | 0x7F
    if np.isinf(x):
        return sign | 0x7E
    a = abs(Fraction(float(x)))
    i = bisect.bisect_left(MAGS, a)  # the candidates: the values either side of a
    best = None
    for v, c in VALUES_SORTED[max(i - 1, 0):i + 1]:
        d = abs(v - a)
        if best is None or d < best[0] or (d == best[0] and c % 2 == 0):
            best = (d, c)
    return sign | best[1]


def run(args, data=b""):
    return subprocess.run([TOOL] + args, input=data, capture_output=True, check=True).stdout


# 1. Every code's decoding.
dec = run(["decode"]).decode().split("\n")
bad = 0
for line in dec:
    if not line:
        continue
    c, bits = line.split()
    c = int(c)
    got = struct.unpack("<f", struct.pack("<I", int(bits, 16)))[0]
    want = e4m3_value(c)
    if want is None:
        bad += got == got  # must be NaN
    elif Fraction(got) != want or (want == 0 and (c >> 7) != (int(bits, 16) >> 31)):
        bad += 1
check(bad == 0 and len([x for x in dec if x]) == 256, "decodings of all 256 codes (%d wrong)" % bad)

# 2. Encodings: every value and its neighbours, every midpoint and its neighbours, random
#    magnitudes over the whole range and beyond, and special values.
xs = []
mags = sorted(v for v, _ in VALUES)
for i, v in enumerate(mags):
    f = np.float32(float(v))
    xs += [f, np.nextafter(f, np.float32(0)), np.nextafter(f, np.float32(1e9))]
    if i + 1 < len(mags):
        mid = np.float32(float((v + mags[i + 1]) / 2))  # exact in fp32
        xs += [mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(1e9))]
rng = np.random.default_rng(5)
xs += list((2.0 ** rng.uniform(-14, 10, 20000)).astype(np.float32))
xs += list(rng.normal(0, 3, 5000).astype(np.float32))
xs += [np.float32(v) for v in (0.0, 448.0, 464.0, 479.99, 480.0, 500.0, 1e30, 3.4e38,
                               1e-45, 1e-40, 2.0 ** -10, np.inf, np.nan)]
xs = np.array(xs, dtype=np.float32)
xs = np.concatenate([xs, -xs])
got = run(["encode"], xs.tobytes())
want = bytes(ref_encode(x) for x in xs)
wrong = [i for i in range(len(xs)) if got[i] != want[i]]
check(len(got) == len(xs) and not wrong,
      "encodings of %d values: %d differ, e.g. %s" % (len(xs), len(wrong), [
          (float(xs[i]), hex(got[i]), hex(want[i])) for i in wrong[:5]]))

# 3. Rows: per-head scales and codes, byte for byte.
KV, HD, N = 4, 48, 300
rows = (rng.normal(0, 1, (N, KV, HD)) * (10.0 ** rng.uniform(-3, 3, (N, KV, 1)))).astype(np.float32)
rows[0, 1] = 0  # a zero head
rows[1, 2, 5] = np.inf
rows[1, 2, 6] = -np.inf
rows[1, 3, 7] = np.nan
for name, top in (("fp8", 448.0), ("int8", 127.0)):
    got = run(["rows", name, str(KV), str(HD)], rows.tobytes())
    want = bytearray()
    for r in rows:
        codes, scales = bytearray(), bytearray()
        for h in r:
            fin = h[np.isfinite(h)]
            amax = np.float32(np.max(np.abs(fin))) if fin.size else np.float32(0)
            scale = np.float32(amax / np.float32(top))
            scales += struct.pack("<f", scale)
            for x in h:
                if np.isnan(x) or scale == 0:
                    q = np.float32(0)
                else:
                    q = np.float32(x / scale) if np.isfinite(x) else x
                if name == "fp8":
                    codes.append(ref_encode(np.float32(q)))
                else:
                    r_ = np.clip(np.rint(q), -127, 127)  # rint: ties to even
                    codes.append(int(r_) & 0xFF)
        want += codes + scales
    check(len(got) == N * KV * (HD + 4), "%s: %d bytes for %d rows" % (name, len(got), N))
    diff = sum(1 for a, b in zip(got, want) if a != b)
    check(got == bytes(want), "%s rows: %d bytes differ from the reference" % (name, diff))

print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
