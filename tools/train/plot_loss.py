#!/usr/bin/python3
"""Draws loss curves (loss.tsv files from train.py, one per stage, steps continued) as a
PNG with PIL (matplotlib is not installed here).

    plot_loss.py OUT.png A.tsv [gap:STEPS] [B.tsv ...]

gap:STEPS stands for a stage whose log was not kept: its steps pass with no line drawn."""
import sys
from PIL import Image, ImageDraw

out, files = sys.argv[1], sys.argv[2:]
segs, off, bounds = [], 0, []
for fn in files:
    if fn.startswith("gap:"):
        off += int(fn[4:])
    else:
        rows = [l.split("\t") for l in open(fn).read().split("\n")[1:] if l.strip()]
        segs.append([(off + int(r[0]), float(r[3]), float(r[4])) for r in rows])
        off = segs[-1][-1][0]
    bounds.append(off)
W, H, m = 900, 420, 60
img = Image.new("RGB", (W, H), "white")
d = ImageDraw.Draw(img)
xmax = off
ymax = max(p[1] for s in segs for p in s)
X = lambda s: m + (W - 2 * m) * s / xmax
Y = lambda v, top: H - m - (H - 2 * m) * v / top
d.rectangle([m, m, W - m, H - m], outline="black")
for pts in segs:
    for i in range(1, len(pts)):
        d.line([X(pts[i - 1][0]), Y(pts[i - 1][1], ymax), X(pts[i][0]), Y(pts[i][1], ymax)],
               fill="blue", width=2)
        d.line([X(pts[i - 1][0]), Y(pts[i - 1][2], 1.0), X(pts[i][0]), Y(pts[i][2], 1.0)],
               fill="red", width=2)
for b in bounds[:-1]:
    d.line([X(b), m, X(b), H - m], fill="gray")
d.text((m, 10), "blue: LM loss (left axis, 0..%.2f)   red: answer-token accuracy (0..1)   "
       "gray: stage boundary" % ymax, fill="black")
d.text((m, H - m + 10), "0", fill="black")
d.text((W - m - 40, H - m + 10), "step %d" % xmax, fill="black")
img.save(out)
