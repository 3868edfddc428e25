#!/usr/bin/python3
"""e2e_passkey.py — `recall passkey` end to end with recalld on the tiny-fot model.

A random tiny model finds no keys, so this checks the harness, not accuracy: the --json
object's shape and ranges, every trial's prompt rebuilt here from REFERENCE.md's template
and tokenized with Python's sentencepiece (its length must be the one reported), keys in
[1, 50000) and reproducible from --seed, the pass flag consistent with the answer, the
table, the heatmap PNG (chunk CRCs, header, inflated size), sessions dropped afterwards (and
kept with --keep, holding exactly the prompt minus the question), session options passed
through (--memory knn), and usage errors.

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA.
Prints "N passed, N failed"; exits 1 on any failure, 77 when the tiny model is missing."""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib

SRC = os.environ.get("RECALL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("RECALL_BUILD_DIR", os.path.join(SRC, "build"))
RECALL = os.environ.get("RECALL_BIN", os.path.join(BUILD, "clients", "recall"))
RECALLD = os.environ.get("RECALLD_BIN", os.path.join(BUILD, "daemon", "recalld"))
DATA = os.environ.get("RECALL_TEST_DATA", os.path.join(BUILD, "tests", "data"))
MODEL = os.path.join(DATA, "tiny-fot")

# REFERENCE.md, "Passkey test".
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
         "memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"

passed = 0
failed = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL %s%s" % (what, (": " + str(detail)) if detail != "" else ""), flush=True)
    return cond


def prompt(key, filler_chars, depth):
    inf = " ".join([FILLER] * (filler_chars // len(FILLER) + 2))
    prefix = int(math.floor(depth * filler_chars + 0.5))  # C's llround: halves away from 0
    suffix = filler_chars - prefix
    return "\n".join([INTRO, inf[:prefix],
                      "The pass key is %d. Remember it. %d is the pass key." % (key, key),
                      inf[:suffix], QUESTION])


def recall(endpoint, *args, json_out=True, timeout=300):
    cmd = [RECALL, *args, "--connect", endpoint] + (["--json"] if json_out else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not json_out:
        return r.returncode, r.stdout, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    if len(lines) != 1:
        check(False, "one JSON object from recall %s" % " ".join(args), r.stdout + r.stderr)
        return r.returncode, None, r.stderr
    try:
        return r.returncode, json.loads(lines[0]), r.stderr
    except ValueError as e:
        check(False, "valid JSON from recall %s" % " ".join(args), "%s: %s" % (e, lines[0]))
        return r.returncode, None, r.stderr


def png_ok(path):
    """Parses a PNG: signature, chunk CRCs, IHDR, and the inflated rows' size. Returns
    (width, height) or raises."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", "signature"
    at, idat, ihdr, types = 8, b"", None, []
    while at < len(b):
        (n,) = struct.unpack(">I", b[at:at + 4])
        t, data = b[at + 4:at + 8], b[at + 8:at + 8 + n]
        (crc,) = struct.unpack(">I", b[at + 8 + n:at + 12 + n])
        assert zlib.crc32(t + data) & 0xFFFFFFFF == crc, "CRC of %r" % t
        types.append(t)
        if t == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif t == b"IDAT":
            idat += data
        at += 12 + n
    assert types[0] == b"IHDR" and types[-1] == b"IEND", types
    w, h, depth, ctype = ihdr[:4]
    assert depth == 8 and ctype == 2, ihdr
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w), (len(raw), w, h)
    assert all(raw[y * (1 + 3 * w)] <= 4 for y in range(h)), "filter bytes"
    return w, h


def main():
    if not os.path.exists(os.path.join(MODEL, "tokenizer.model")):
        print("skipped: no tiny-fot model at %s" % MODEL)
        return 77
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(MODEL, "tokenizer.model"))

    tmp = tempfile.mkdtemp(prefix="e2e_passkey.")
    endpoint = "ipc://%s/sock" % tmp
    log = open(os.path.join(tmp, "recalld.log"), "wb")
    d = subprocess.Popen([RECALLD, "--model", MODEL, "--data", os.path.join(tmp, "data"),
                          "--listen", endpoint], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if subprocess.run([RECALL, "health", "--connect", endpoint, "--timeout", "2"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            check(False, "recalld answers health")
            return 1
        run_checks(endpoint, tmp, sp)
    finally:
        d.terminate()
        try:
            d.wait(30)
        except subprocess.TimeoutExpired:
            d.kill()
        log.close()
        if failed:
            with open(os.path.join(tmp, "recalld.log"), "rb") as f:
                print(f.read()[-3000:].decode("utf-8", "replace"))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def run_checks(endpoint, tmp, sp):
    png = os.path.join(tmp, "heat.png")
    rc, o, err = recall(endpoint, "passkey", "--tokens", "256,512", "--depths", "3",
                        "--trials", "2", "--seed", "5", "--png", png)
    if not check(rc == 0 and o is not None, "passkey --json runs", err):
        return
    acc = o.get("accuracy")
    check(isinstance(acc, (int, float)) and 0 <= acc <= 1, "accuracy in [0, 1]", acc)
    check(o.get("trials") == 2, "trials", o.get("trials"))
    check(o.get("depths") == [0, 0.5, 1], "depths d/(D-1)", o.get("depths"))
    check(sorted(o.get("by_length", {}).keys()) == ["256", "512"], "by_length keys",
          o.get("by_length"))
    cells = o.get("cells", [])
    check(len(cells) == 2 and all(len(r) == 3 for r in cells) and
          all(0 <= x <= 1 for r in cells for x in r), "cells 2 x 3 in [0, 1]", cells)
    check(o.get("target_tokens") == [256, 512], "target_tokens", o.get("target_tokens"))
    toks = o.get("tokens", [])
    check(len(toks) == 2 and abs(toks[0] - 256) <= 8 and abs(toks[1] - 512) <= 8,
          "actual lengths near the targets", toks)
    check(o.get("total") == 12 and len(o.get("results", [])) == 12, "12 trials", o.get("total"))
    check(o.get("png") == png, "png path in the JSON", o.get("png"))
    fill = o.get("filler_chars", [0, 0])
    mean_by_len = {}
    for i, t in enumerate(o.get("results", [])):
        li = [256, 512].index(t["target"])
        key = t["key"]
        check(1 <= key < 50000, "key in [1, 50000)", key)
        # The prompt, rebuilt from the template, has exactly the reported length.
        ids = [sp.bos_id()] + sp.encode(prompt(key, fill[li], t["depth"]))
        check(len(ids) == t["tokens"], "trial %d: prompt length from the template" % i,
              (len(ids), t["tokens"]))
        q_ids = sp.encode(QUESTION)
        check(1 <= t["question_tokens"] <= len(q_ids) + 2, "trial %d: question tokens" % i,
              t["question_tokens"])
        answer_ids = sp.encode(str(key))
        check(t["generated"] == len(answer_ids), "trial %d: generated as many as the key" % i,
              (t["generated"], len(answer_ids)))
        check(t["pass"] == (t["answer"] == str(key)) or not t["pass"],
              "trial %d: a pass is the key" % i, t)
        mean_by_len.setdefault(li, []).append(t["tokens"])
    for li, v in mean_by_len.items():
        check(round(sum(v) / len(v)) == toks[li], "mean length of %d" % li, (v, toks))
    try:
        w, h = png_ok(png)
        check(w > 100 and h > 50, "heatmap size", (w, h))
    except Exception as e:  # noqa: BLE001 — any decoding problem is the failure
        check(False, "heatmap PNG decodes", e)
    if os.path.exists("/usr/bin/file"):
        r = subprocess.run(["file", png], capture_output=True, text=True)
        check("PNG image data" in r.stdout, "file(1) calls it a PNG", r.stdout)

    # Sessions are dropped afterwards.
    rc, s, _ = recall(endpoint, "sessions")
    check(rc == 0 and s is not None and s["sessions"] == [], "no sessions left",
          s and [x["name"] for x in s["sessions"]])

    # Reproducible: the same seed gives the same key and greedy answer for the same cell,
    # whatever else is in the run (depth 0 of 2 is depth 0 of 3).
    rc, o2, err = recall(endpoint, "passkey", "--tokens", "256", "--depths", "2", "--trials",
                         "1", "--seed", "5")
    if check(rc == 0 and o2 is not None, "second run", err):
        a = [t for t in o["results"] if t["target"] == 256 and t["depth"] == 0 and t["trial"] == 0]
        b = [t for t in o2["results"] if t["depth"] == 0]
        check(len(a) == 1 and len(b) == 1 and a[0]["key"] == b[0]["key"] and
              a[0]["answer"] == b[0]["answer"] and a[0]["tokens"] == b[0]["tokens"],
              "same seed, same cell: same key, prompt and answer", (a, b))
    rc, o3, _ = recall(endpoint, "passkey", "--tokens", "256", "--depths", "2", "--trials",
                       "1", "--seed", "6")
    if o3 and o2:
        check([t["key"] for t in o3["results"]] != [t["key"] for t in o2["results"]],
              "another seed, other keys")

    # The table.
    rc, out, err = recall(endpoint, "passkey", "--tokens", "300", "--depths", "2", "--trials",
                          "1", json_out=False)
    check(rc == 0, "table run", err)
    lines = out.splitlines()
    check(any(l.split()[:1] == ["tokens"] and "0%" in l and "100%" in l and "all" in l
              for l in lines), "table header", out)
    check(any(l.split()[:1] == ["300"] for l in lines), "table row for 300", out)
    check(any(l.startswith("overall 0/2") or l.startswith("overall 1/2") or
              l.startswith("overall 2/2") for l in lines), "overall line", out)

    # --keep: the session holds the prompt minus the question; session options pass through.
    rc, k, err = recall(endpoint, "passkey", "--tokens", "256", "--depths", "1", "--trials", "1",
                        "--session-prefix", "pk-keep", "--keep", "--memory", "knn", "--k", "4")
    if check(rc == 0 and k is not None, "--keep --memory knn run", err):
        t = k["results"][0]
        check(t["session"] == "pk-keep-256-d0-t0" and t["depth"] == 0.5, "session name, one depth",
              t)
        rc, info, _ = recall(endpoint, "info", t["session"])
        check(rc == 0 and info and info["tokens"] == t["tokens"] - t["question_tokens"],
              "kept session holds the prompt before the question", (info, t))
        check(info and info["options"]["memory"] == "knn" and info["options"]["k"] == 4,
              "session options reach the trial's session", info and info["options"])
        # A second run with the same prefix refuses to reuse a leftover session.
        rc, e, _ = recall(endpoint, "passkey", "--tokens", "256", "--depths", "1", "--trials",
                          "1", "--session-prefix", "pk-keep")
        check(rc == 1 and e and "already exists" in e["error"]["message"],
              "leftover session is an error", e)
        recall(endpoint, "drop", t["session"])

    # Usage errors: exit 2, a message that names the problem, nothing left behind.
    for args, want in [(["--tokens", "12q"], "12q"), (["--tokens", "4k,,8k"], "empty"),
                       (["--tokens", "256", "--depths", "0"], "--depths"),
                       (["--tokens", "256", "--trials", "0"], "--trials"),
                       ([], "--tokens"), (["--tokens", "8"], "too short"),
                       (["--tokens", "256", "--session-prefix", "a/b"], "--session-prefix"),
                       (["--tokens", "256", "--memory", "fast"], "--memory")]:
        rc, e, _ = recall(endpoint, "passkey", *args)
        check(rc == 2 and e and "error" in e and want in e["error"]["message"],
              "usage error for %s" % " ".join(args), (rc, e))
    rc, s, _ = recall(endpoint, "sessions")
    check(rc == 0 and s is not None and s["sessions"] == [], "still no sessions",
          s and [x["name"] for x in s["sessions"]])
    rc, out, _ = recall(endpoint, "help", "passkey", json_out=False)
    check(rc == 0 and "The pass key is KEY" in out and "--tokens" in out and "d/(D-1)" in out,
          "help teaches the template and options", out[:200])


if __name__ == "__main__":
    sys.exit(main())
