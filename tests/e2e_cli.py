#!/usr/bin/python3
"""e2e_cli.py — recalld and the recall CLI end to end, on the tiny-fot model (window 64).

Starts recalld on a temporary data directory and a free port, then drives it only through
`recall`: ingest a text several windows long, info, greedy ask (twice, identical), ppl of
the session and of a file, sessions; SIGTERM and restart (the session, its info and its
greedy answer survive); a second ingest continues the seq numbers; drop. Then kill -9 in
the middle of a big ingest, restart, and check that the session holds exactly the chunks
the daemon committed: at least everything acknowledged, and token for token what the same
chunks give when ingested cleanly (no half chunk, no half window).

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA, RECALL_SOURCE_DIR.
Prints "N passed, N failed"; exits 1 on any failure."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

SRC = os.environ.get("RECALL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("RECALL_BUILD_DIR", os.path.join(SRC, "build"))
RECALL = os.environ.get("RECALL_BIN", os.path.join(BUILD, "clients", "recall"))
RECALLD = os.environ.get("RECALLD_BIN", os.path.join(BUILD, "daemon", "recalld"))
DATA = os.environ.get("RECALL_TEST_DATA", os.path.join(BUILD, "tests", "data"))
MODEL = os.path.join(DATA, "tiny-fot")
WINDOW = 64  # tiny-fot's context window

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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    def __init__(self, data_dir, endpoint, log_path):
        self.data_dir, self.endpoint, self.log_path = data_dir, endpoint, log_path
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [RECALLD, "--model", MODEL, "--data", self.data_dir, "--listen", self.endpoint],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("recalld exited with %d:\n%s" % (self.proc.returncode, self.log()))
            r = subprocess.run([RECALL, "health", "--connect", self.endpoint, "--timeout", "2",
                                "--json"], capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("recalld did not answer health within 120 s:\n" + self.log())

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if not self.proc:
            return None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            rc = "hung (killed)"
        self.proc = None
        return rc

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""


def recall(endpoint, *args, json_out=True, stdin=None, timeout=300):
    """Runs recall; returns (exit code, parsed JSON or stdout text, stderr)."""
    cmd = [RECALL, *args, "--connect", endpoint]
    if json_out:
        cmd.append("--json")
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=timeout)
    out = r.stdout
    if json_out:
        lines = [l for l in out.splitlines() if l.strip()]
        if len(lines) != 1:
            check(False, "one JSON object from recall %s" % " ".join(args), out + r.stderr)
            return r.returncode, None, r.stderr
        try:
            out = json.loads(lines[0])
        except ValueError as e:
            check(False, "valid JSON from recall %s" % " ".join(args), "%s: %s" % (e, lines[0]))
            return r.returncode, None, r.stderr
    return r.returncode, out, r.stderr


def chunk_text(text, max_bytes):
    """The CLI's chunking (clients/chunker.c) for ASCII text: cut after the last newline
    within max_bytes, or at max_bytes when a line is longer."""
    chunks, pos, n = [], 0, len(text)
    while pos < n:
        if n - pos <= max_bytes:
            chunks.append(text[pos:])
            break
        piece = text[pos:pos + max_bytes]
        cut = piece.rfind("\n")
        k = cut + 1 if cut >= 0 else max_bytes
        chunks.append(text[pos:pos + k])
        pos += k
    return chunks


def corpus_text(nbytes, offset=0):
    with open(os.path.join(SRC, "tests", "data", "corpus.txt"), encoding="ascii") as f:
        lines = f.read().splitlines(keepends=True)
    out, size, i = [], 0, offset
    while size < nbytes:
        line = lines[i % len(lines)]
        out.append(line)
        size += len(line)
        i += 1
    return "".join(out)


def info(ep, name):
    rc, j, err = recall(ep, "info", name)
    check(rc == 0 and isinstance(j, dict), "info %s" % name, err)
    return j if isinstance(j, dict) else {}


def consistent(i, what):
    """tokens, windows and pending tokens agree with each other and the window size."""
    w = i.get("options", {}).get("window", 0)
    ok = w == WINDOW and i["windows"] == i["tokens"] // w and \
        i["pending_tokens"] == i["tokens"] - i["windows"] * w
    check(ok, "%s: tokens/windows/pending consistent with window %d" % (what, WINDOW), i)


def main():
    for p in (RECALL, RECALLD):
        if not os.access(p, os.X_OK):
            print("FAIL: %s is not built" % p)
            print("0 passed, 1 failed")
            return 1
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        print("FAIL: no tiny-fot model in %s (run the make_tiny_models test first)" % DATA)
        print("0 passed, 1 failed")
        return 1

    tmp = tempfile.mkdtemp(prefix="recall-e2e-")
    data_dir = os.path.join(tmp, "data")
    os.makedirs(data_dir)
    ep = "tcp://127.0.0.1:%d" % free_port()
    d = Daemon(data_dir, ep, os.path.join(tmp, "recalld.log"))
    try:
        d.start()
        run_all(d, ep, tmp)
    except Exception as e:  # a crash of the test itself is a failure, with the daemon's log
        check(False, "e2e run", "%s: %s\n--- recalld log ---\n%s" % (type(e).__name__, e, d.log()))
    finally:
        if d.proc:
            d.stop(signal.SIGKILL)
    if failed:
        print("--- recalld log (tail) ---\n" + d.log())
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def run_all(d, ep, tmp):
    rc, h, err = recall(ep, "health")
    check(rc == 0 and h and h.get("ok") is True, "health ok", (rc, h, err))

    # --- ingest a text several windows long, in several chunks ---------------------------
    text1 = corpus_text(12000)
    f1 = os.path.join(tmp, "one.txt")
    with open(f1, "w") as f:
        f.write(text1)
    chunks1 = chunk_text(text1, 2048)
    rc, ing, err = recall(ep, "ingest", "book", f1, "--chunk-bytes", "2K")
    check(rc == 0 and ing, "ingest exit 0", (rc, ing, err))
    if not ing or "tokens" not in ing:
        return
    check(ing["created"] is True, "ingest created the session", ing)
    check(ing["chunks"] == len(chunks1), "ingest sent %d chunks" % len(chunks1), ing)
    check(ing["last_seq"] == len(chunks1), "seq numbers 1..%d" % len(chunks1), ing)
    check(ing["tokens"] > 5 * WINDOW, "text is longer than 5 windows", ing)
    check(ing["tokens_added"] == ing["tokens"], "tokens_added = session tokens", ing)
    check(ing["windows"] == ing["tokens"] // WINDOW, "windows = tokens // 64", ing)
    check(ing["bytes"] == len(text1.encode()), "every byte acknowledged", ing)

    i1 = info(ep, "book")
    check(i1.get("name") == "book", "info name", i1)
    check(i1.get("tokens") == ing["tokens"] and i1.get("windows") == ing["windows"],
          "info tokens/windows match ingest", (i1, ing))
    check(i1.get("last_seq") == len(chunks1), "info last_seq", i1)
    check(i1.get("ingest_chunks") == len(chunks1), "info ingest_chunks (nothing resent)", i1)
    check(i1.get("memory_tokens") == i1.get("windows", -1) * WINDOW,
          "memory holds every full window", i1)
    check(i1.get("created_unix", 0) > 1.6e9, "created_unix is a time", i1)
    for k in ("positional", "memory", "mem_dtype"):
        check(i1.get("options", {}).get(k), "options.%s resolved" % k, i1)
    consistent(i1, "info")

    # text output of info and ingest, for people
    rc, out, err = recall(ep, "info", "book", json_out=False)
    check(rc == 0 and "tokens" in out and str(i1.get("tokens")) in out, "info text", out)
    rc, out, err = recall(ep, "ingest", "book", f1, "--quiet", json_out=False)
    # (that appended the text again as one 64 KiB chunk; remember the new totals)
    i1 = info(ep, "book")
    check(rc == 0 and i1.get("last_seq") == len(chunks1) + 1, "second ingest continues seq",
          (rc, i1, err))
    check(i1.get("tokens", 0) > ing["tokens"], "second ingest added tokens", (i1, ing))
    check(out == "", "--quiet ingest prints nothing on stdout", out)

    # --- ask, greedy: same answer twice -------------------------------------------------
    q = "Who left the map near the harbour?"
    rc, a1, err = recall(ep, "ask", "book", q, "--temperature", "0", "--max-tokens", "12")
    rc2, a2, err2 = recall(ep, "ask", "book", q, "--temperature", "0", "--max-tokens", "12")
    check(rc == 0 and rc2 == 0 and a1 and a2, "ask exit 0", (rc, err, rc2, err2))
    if a1 and a2:
        check(a1["session"] == "book", "ask session", a1)
        check(a1["generated"] >= 1 and a1["generated"] <= 12, "ask generated 1..12", a1)
        check(len(a1["tokens"]) == a1["generated"], "one token id per generated token", a1)
        check(a1["stop_reason"] in ("eos", "length"), "stop_reason", a1)
        check(a1["stop_reason"] != "length" or a1["generated"] == 12, "length means 12", a1)
        check(a1["answer"] == a2["answer"] and a1["tokens"] == a2["tokens"],
              "greedy ask twice gives the same answer", (a1, a2))
        rc, txt, err = recall(ep, "ask", "book", q, "--temperature", "0", "--max-tokens", "12",
                              json_out=False)
        check(rc == 0 and txt == a1["answer"] + "\n", "ask text output is the answer + newline",
              (txt, a1["answer"]))
    i_after_ask = info(ep, "book")
    check(i_after_ask.get("tokens") == i1.get("tokens"), "ask without --append changes nothing",
          (i_after_ask, i1))

    # --- ppl -----------------------------------------------------------------------------
    rc, p, err = recall(ep, "ppl", "book")
    check(rc == 0 and p and isinstance(p.get("ppl"), (int, float)) and math.isfinite(p["ppl"])
          and p["ppl"] > 1, "ppl SESSION finite and > 1", (rc, p, err))
    if p:
        check(p.get("tokens") == i1.get("tokens"), "ppl scores every session token", (p, i1))
    rc, out, err = recall(ep, "ppl", "book", json_out=False)
    check(rc == 0 and out.startswith("ppl ") and " over %d tokens" % i1.get("tokens") in out,
          "ppl text output", out)
    rc, pt, err = recall(ep, "ppl", "--text", f1)
    check(rc == 0 and pt and isinstance(pt.get("ppl"), (int, float)) and
          math.isfinite(pt["ppl"]) and pt["ppl"] > 1 and pt.get("tokens", 0) > 5 * WINDOW,
          "ppl --text finite over > 5 windows", (rc, pt, err))
    rc, pt2, err = recall(ep, "ppl", "--text", "-", stdin=text1)
    check(rc == 0 and pt2 and pt and pt2.get("ppl") == pt.get("ppl"), "ppl --text - (stdin)",
          (pt, pt2, err))

    # --- sessions, errors ---------------------------------------------------------------
    rc, s, err = recall(ep, "sessions")
    names = [x.get("name") for x in (s or {}).get("sessions", [])]
    check(rc == 0 and names == ["book"], "sessions lists book", (rc, s, err))
    rc, out, err = recall(ep, "sessions", json_out=False)
    check(rc == 0 and "book" in out and "TOKENS" in out, "sessions table", out)
    rc, e, err = recall(ep, "info", "nosuch")
    check(rc == 1 and e and e.get("error", {}).get("name") == "NOT_FOUND" and
          e["error"].get("code") == -4 and "nosuch" in e["error"].get("message", ""),
          "info of an unknown session: exit 1, NOT_FOUND", (rc, e, err))
    rc, out, err = recall(ep, "ask", "nosuch", "q", json_out=False)
    check(rc == 1 and err.startswith("recall: ") and "nosuch" in err, "ask unknown: recall: msg",
          (rc, err))
    rc, e, err = recall(ep, "ingest", "bad name/..", f1)
    check(rc == 1 and e and e.get("error", {}).get("code", 0) < 0, "unsafe session name refused",
          (rc, e, err))
    bad = os.path.join(tmp, "bad.txt")
    with open(bad, "wb") as f:
        f.write(b"fine line\n\xff\xfe not utf-8\n")
    rc, e, err = recall(ep, "ingest", "badutf", bad)
    check(rc == 2 and e and "UTF-8" in e.get("error", {}).get("message", ""),
          "invalid UTF-8 refused by the CLI", (rc, e, err))
    rc, e, err = recall(ep, "info", "badutf")
    check(rc == 1, "refused input created no session", (rc, e))
    rc, st, err = recall(ep, "stats")
    check(rc == 0 and st and st.get("sessions", 0) >= 1 and st.get("tokens_ingested", 0) >=
          i1.get("tokens", 1), "stats", (rc, st, err))

    # --- restart: everything survives ---------------------------------------------------
    rc = d.stop(signal.SIGTERM)
    check(rc == 0, "recalld exits 0 on SIGTERM", rc)
    d.start()
    rc, s, err = recall(ep, "sessions")
    names = [x.get("name") for x in (s or {}).get("sessions", [])]
    check(rc == 0 and "book" in names, "session listed after restart", (s, err))
    i2 = info(ep, "book")
    # Where memory lives (device, host or disk) changes with a restart: sessions open
    # lazily, so after it the rows are on disk until a question needs them. Everything else
    # the session says about itself must not change. The disk figure is checked on its own
    # so that a difference there is named as such.
    volatile = ("memory_bytes_device", "memory_bytes_host", "memory_bytes_disk", "tier")
    check({k: v for k, v in i2.items() if k not in volatile} ==
          {k: v for k, v in i1.items() if k not in volatile}, "info identical after restart",
          (i1, i2))
    check(i1.get("tier") in ("host", "gpu") and i2.get("tier") == "disk" and
          i2.get("memory_bytes_host", 0) + i2.get("memory_bytes_device", 0) == 0,
          "after a restart the session's rows stay on disk until used", (i1, i2))
    check(i2.get("memory_bytes_disk") == i1.get("memory_bytes_disk"),
          "memory_bytes_disk identical after restart",
          "%s before, %s after" % (i1.get("memory_bytes_disk"), i2.get("memory_bytes_disk")))
    if a1:
        rc, a3, err = recall(ep, "ask", "book", q, "--temperature", "0", "--max-tokens", "12")
        check(rc == 0 and a3 and a3["tokens"] == a1["tokens"] and a3["answer"] == a1["answer"],
              "same greedy answer after restart", (a1, a3, err))
        i3 = info(ep, "book")
        check(i3.get("tier") in ("host", "gpu") and
              i3.get("memory_bytes_host", 0) + i3.get("memory_bytes_device", 0) ==
              i1.get("memory_bytes_host", 0) + i1.get("memory_bytes_device", 0),
              "the question brought the rows back: memory bytes as before the restart", (i1, i3))

    # --- a second file: seq continues ---------------------------------------------------
    text2 = corpus_text(5000, offset=50)
    f2 = os.path.join(tmp, "two.txt")
    with open(f2, "w") as f:
        f.write(text2)
    chunks2 = chunk_text(text2, 1024)
    rc, ing2, err = recall(ep, "ingest", "book", f2, "--chunk-bytes", "1024", "--window", "32")
    check(rc == 0 and ing2 and ing2["created"] is False, "ingest into existing session", (ing2, err))
    check("keeps its own options" in err, "note that options of an existing session are kept", err)
    if ing2:
        check(ing2["last_seq"] == i2.get("last_seq", 0) + len(chunks2), "seq continues",
              (ing2, i2))
        check(ing2["tokens"] == i2.get("tokens", 0) + ing2["tokens_added"], "tokens add up",
              (ing2, i2))
    i3 = info(ep, "book")
    check(i3.get("options", {}).get("window") == WINDOW, "window option unchanged", i3)
    consistent(i3, "after second ingest")

    # --- drop ----------------------------------------------------------------------------
    rc, dr, err = recall(ep, "drop", "book")
    check(rc == 0 and dr == {"dropped": "book"}, "drop", (rc, dr, err))
    rc, s, err = recall(ep, "sessions")
    check(rc == 0 and s == {"sessions": []}, "no sessions after drop", s)
    rc, e, err = recall(ep, "info", "book")
    check(rc == 1 and e and e["error"]["name"] == "NOT_FOUND", "dropped session is gone", e)
    d.stop(signal.SIGTERM)
    d.start()
    rc, s, err = recall(ep, "sessions")
    check(rc == 0 and s == {"sessions": []}, "drop survives a restart", s)

    kill_during_ingest(d, ep, tmp)


def kill_during_ingest(d, ep, tmp):
    """kill -9 while chunks are in flight; what is left must be exactly whole chunks."""
    chunk_bytes = 1024
    size = 200000
    for attempt in range(4):
        name = "big%d" % attempt
        big = corpus_text(size, offset=7 * attempt)
        fb = os.path.join(tmp, name + ".txt")
        with open(fb, "w") as f:
            f.write(big)
        chunks = chunk_text(big, chunk_bytes)
        cli = subprocess.Popen([RECALL, "ingest", name, fb, "--chunk-bytes", str(chunk_bytes),
                                "--connect", ep, "--json", "--timeout", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill once a few windows are committed (another client may ask meanwhile: the
        # daemon answers info while its worker ingests), or after a time limit.
        t0 = time.time()
        while cli.poll() is None and time.time() - t0 < 30:
            r = subprocess.run([RECALL, "info", name, "--connect", ep, "--json", "--timeout", "2"],
                               capture_output=True, text=True)
            if r.returncode == 0 and json.loads(r.stdout).get("windows", 0) >= 16:
                break
            time.sleep(0.05)
        if cli.poll() is not None:
            # Too fast to catch: a bigger file next time.
            cli.communicate()
            size *= 4
            continue
        d.stop(signal.SIGKILL)
        try:
            out, err = cli.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            cli.kill()
            out, err = cli.communicate()
            check(False, "recall exits after the daemon dies", err)
        check(cli.returncode == 3, "ingest exits 3 when the daemon dies", (cli.returncode, err))
        j = json.loads(out) if out.strip() else {}
        part = j.get("partial", {})
        check("error" in j and part.get("last_seq", 0) >= 1, "error JSON says what was acked", j)
        acked_seq, acked_tokens = part.get("last_seq", 0), part.get("tokens", 0)
        print("kill -9: client acknowledged seq %d (%d tokens) of %d chunks" %
              (acked_seq, acked_tokens, len(chunks)), flush=True)

        d.start()
        i = info(d.endpoint, name)
        seq, tokens = i.get("last_seq", -1), i.get("tokens", -1)
        print("kill -9: after restart the session has seq %d, %d tokens" % (seq, tokens),
              flush=True)
        check(seq >= acked_seq and tokens >= acked_tokens,
              "nothing acknowledged is lost (acked seq %d, %d tokens)" % (acked_seq, acked_tokens), i)
        check(seq - acked_seq <= 8, "at most the credit committed beyond the last ack", (i, part))
        check(seq < len(chunks), "the kill came before the end", (seq, len(chunks)))
        consistent(i, "after kill -9")
        check(i.get("ingest_chunks") == seq, "one committed chunk per seq", i)
        # The same chunks ingested cleanly give the same session, token for token.
        ref_text = "".join(chunks[:seq])
        fr = os.path.join(tmp, name + ".ref.txt")
        with open(fr, "w") as f:
            f.write(ref_text)
        rc, ri, err = recall(ep, "ingest", name + "ref", fr, "--chunk-bytes", str(chunk_bytes))
        check(rc == 0 and ri and ri["last_seq"] == seq and ri["tokens"] == tokens and
              ri["windows"] == i.get("windows"),
              "committed state = first %d chunks ingested cleanly (no half chunk or window)" % seq,
              (ri, i, err))
        # The interrupted session still works: resume with the rest of the file.
        rest = os.path.join(tmp, name + ".rest.txt")
        with open(rest, "w") as f:
            f.write("".join(chunks[seq:seq + 20]))
        rc, rj, err = recall(ep, "ingest", name, rest, "--chunk-bytes", str(chunk_bytes))
        check(rc == 0 and rj and rj["last_seq"] == seq + len(chunks[seq:seq + 20]),
              "ingest resumes after the crash", (rj, err))
        rc, p, err = recall(ep, "ppl", name)
        check(rc == 0 and p and math.isfinite(p.get("ppl") or float("nan")), "ppl after crash",
              (p, err))
        return
    check(False, "kill -9 during ingest", "ingest finished too fast every time to interrupt it")


if __name__ == "__main__":
    sys.exit(main())
