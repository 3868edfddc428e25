#!/usr/bin/python3
"""e2e_tiers.py — the memory tiers through recalld and the recall CLI, on tiny-fot.

1. Budgets: three sessions under a --host-memory-budget that holds one of them. Questions
   cycled over them move the least recently used to disk and bring them back; every answer
   equals the answer of a daemon without a budget, at most one session is in host memory at
   a time, and recalld's resident memory stays under the budget plus a fixed overhead.
2. Lazy open: after a restart every session is on disk ("tier": "disk") and the first
   question brings it in.
3. Faults: a flipped byte in one session's rows, a truncated row file in another, and a
   session written with another model: the daemon starts and serves the rest; `recall
   sessions` flags them, asking fails with code -14 (unavailable) and a message naming the
   damage, `recall verify` exits 1; with the byte put back, verify passes and the session
   answers as before.
4. kill -9 while sessions are being evicted and brought back and another one ingests, first
   at named places (RECALL_CRASH_AT, common/crash.h: during an eviction, during a re-open,
   between syncing a chunk's rows and committing them, between committing and acknowledging),
   then at random moments: after each restart every session verifies and answers, the
   ingesting session holds at least what was acknowledged, and its rows are byte for byte
   those of a clean ingest of the same chunks.

Environment as e2e_cli.py (set by ctest). Prints "N passed, N failed"; exits 1 on failure."""
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402  (the daemon harness, CLI runner and checks)
from e2e_cli import check, recall, info  # noqa: E402

ROW_BYTES = 4 * 16 * 4                      # tiny-fot: a row of 4 kv heads x 16, f32
WINDOW_BYTES = 64 * ROW_BYTES               # one window of one layer's keys (or values)
BUDGET = 16 << 20                           # one 12k-token session (~12 MiB) fits, two do not
SLACK = 16 << 20                            # scratch beyond the idle daemon's own memory


class Daemon(e.Daemon):
    def __init__(self, data_dir, endpoint, log_path, extra=(), model=None):
        super().__init__(data_dir, endpoint, log_path)
        self.extra, self.model = list(extra), model

    def start(self):
        # e2e_cli's start with our flags: temporarily wrap Popen's argument list.
        real = subprocess.Popen
        extra, model = self.extra, self.model

        def popen(cmd, *a, **kw):
            if cmd and cmd[0] == e.RECALLD:
                cmd = list(cmd) + extra
                if model:
                    cmd[cmd.index("--model") + 1] = model
            return real(cmd, *a, **kw)
        subprocess.Popen = popen
        try:
            super().start()
        finally:
            subprocess.Popen = real

    def rss(self):
        """(VmRSS, VmHWM) in bytes."""
        out = {}
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
        return out.get("VmRSS", 0), out.get("VmHWM", 0)


def write(tmp, name, text):
    p = os.path.join(tmp, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def ask(ep, name, q="What happened next?"):
    """(exit code, answer JSON, error text: stderr or the JSON error's message)."""
    rc, a, err = recall(ep, "ask", name, q, "--temperature", "0", "--max-tokens", "8")
    if isinstance(a, dict) and "error" in a:
        err = (err or "") + a["error"].get("message", "")
    return rc, a, err


def tiers_of(ep):
    rc, s, err = recall(ep, "sessions")
    return {x["name"]: x.get("tier") for x in (s or {}).get("sessions", [])}


def reference_answers(ep, names, docs):
    """Ingests each doc into its session on the daemon at ep; returns each one's answer."""
    want = {}
    for n in names:
        rc, j, err = recall(ep, "ingest", n, docs[n], "--chunk-bytes", "2K")
        check(rc == 0, "reference ingest %s" % n, err)
    for n in names:
        rc, a, err = ask(ep, n)
        check(rc == 0 and a, "reference ask %s" % n, err)
        want[n] = a and a.get("tokens")
    return want


def run(tmp):
    names = ["a", "b", "c"]
    docs = {n: write(tmp, n + ".txt", e.corpus_text(24000, offset=300 * i))
            for i, n in enumerate(names)}

    # --- the reference: no budget ---------------------------------------------------------
    ref_ep = "tcp://127.0.0.1:%d" % e.free_port()
    ref = Daemon(os.path.join(tmp, "ref"), ref_ep, os.path.join(tmp, "ref.log"),
                 ["--host-memory-budget", "none"])
    os.makedirs(ref.data_dir)
    ref.start()
    want = reference_answers(ref_ep, names, docs)
    check(set(tiers_of(ref_ep).values()) == {"host"}, "without a budget every session stays in "
          "host memory", tiers_of(ref_ep))

    # --- 1. budgets -------------------------------------------------------------------------
    ep = "tcp://127.0.0.1:%d" % e.free_port()
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    # E2E_TIERS_BUDGET=none shows that the checks below fail without the budget.
    d = Daemon(data, ep, os.path.join(tmp, "recalld.log"),
               ["--host-memory-budget", os.environ.get("E2E_TIERS_BUDGET", str(BUDGET))])
    d.start()
    idle = d.rss()[1]  # the daemon's own memory: model, libraries, LMDB, threads
    try:
        for n in names:
            rc, j, err = recall(ep, "ingest", n, docs[n], "--chunk-bytes", "2K")
            check(rc == 0, "ingest %s under the budget" % n, err)
        sizes = {n: info(ep, n).get("memory_bytes_disk", 0) for n in names}
        check(all(BUDGET / 2 < s < BUDGET * 0.9 for s in sizes.values()),
              "each session alone fits the budget, two do not", sizes)
        peak_tiers = 0
        for rnd in range(2):
            for n in names:
                rc, a, err = ask(ep, n)
                check(rc == 0 and a and a.get("tokens") == want[n],
                      "round %d: %s answers as without a budget" % (rnd, n), (a, want[n], err))
                t = tiers_of(ep)
                in_host = [k for k, v in t.items() if v in ("host", "gpu")]
                peak_tiers = max(peak_tiers, len(in_host))
                check(in_host == [n], "round %d: only %s is in host memory" % (rnd, n), t)
        rc, st, err = recall(ep, "stats")
        check(rc == 0 and st.get("evictions", 0) >= 6 and st.get("loads", 0) >= 6 and
              st.get("host_budget") == BUDGET, "stats count loads and evictions", st)
        rss, hwm = d.rss()
        # AddressSanitizer's shadow memory and quarantine make RSS meaningless: not counted.
        if os.environ.get("ASAN_OPTIONS"):
            print("tiers: peak RSS not checked under AddressSanitizer (not counted as a pass)")
        else:
            check(hwm < idle + BUDGET + SLACK,
                  "peak RSS %.1f MiB under the idle daemon's %.1f MiB + the budget %.1f MiB + "
                  "%.0f MiB" % (hwm / 2**20, idle / 2**20, BUDGET / 2**20, SLACK / 2**20),
                  (rss, hwm))
        print("tiers: idle RSS %.1f MiB; peak RSS %.1f MiB with 3 sessions of %.1f MiB under a "
              "budget of %.1f MiB; evictions %s, loads %s"
              % (idle / 2**20, hwm / 2**20, sum(sizes.values()) / 2**20, BUDGET / 2**20,
                 st.get("evictions"), st.get("loads")), flush=True)

        # --- 2. lazy open -----------------------------------------------------------------
        check(d.stop() == 0, "recalld exits 0")
        t0 = time.time()
        d.start()
        t_start = time.time() - t0
        check(set(tiers_of(ep).values()) == {"disk"}, "after a restart every session is on disk",
              tiers_of(ep))
        print("tiers: restart to first health reply %.2f s" % t_start)
        rc, a, err = ask(ep, "b")
        check(rc == 0 and a and a.get("tokens") == want["b"], "b answers after the restart",
              (a, err))
        check(tiers_of(ep).get("b") == "host", "the question brought b in", tiers_of(ep))
        check(d.stop() == 0, "recalld exits 0")

        # --- 3. faults --------------------------------------------------------------------
        bkeys = os.path.join(data, "rows", "b", "L0.keys")
        off = 5 * WINDOW_BYTES + 17  # a byte in window 5 of memory layer 0
        with open(bkeys, "r+b") as f:
            f.seek(off)
            orig = f.read(1)
            f.seek(off)
            f.write(bytes([orig[0] ^ 0x20]))
        cvals = os.path.join(data, "rows", "c", "L1.values")
        os.truncate(cvals, os.path.getsize(cvals) // 2)
        d.start()
        rc, s, err = recall(ep, "sessions")
        check(rc == 0 and len(s.get("sessions", [])) == 3, "the daemon starts with damaged "
              "sessions and lists all three", (s, err))
        rc, a, err = ask(ep, "a")
        check(rc == 0 and a and a.get("tokens") == want["a"], "a is served", err)
        rc, a, err = ask(ep, "b")
        check(rc == 1 and "window 5 of memory layer 0" in err and "checksum" in err,
              "asking b fails, naming the damaged window", (rc, err))
        i = info(ep, "b")
        check(i.get("tier") == "unavailable" and "checksum" in i.get("problem", ""),
              "info shows b unavailable and why", i)
        rc, a, err = ask(ep, "c")
        check(rc == 1 and "truncated" in err, "asking c fails, naming the truncated file", err)
        rc, txt, err = recall(ep, "sessions", json_out=False)
        check("UNAVAILABLE" in txt and "b: UNAVAILABLE" in txt, "recall sessions flags them", txt)
        rc, v, err = recall(ep, "verify", "b")
        check(rc == 1 and v and v.get("ok") is False and v.get("bad_windows") == 1,
              "verify b finds one bad window", (rc, v, err))
        rc, v, err = recall(ep, "verify", "a")
        check(rc == 0 and v and v.get("ok") is True and v.get("windows", 0) > 0,
              "verify a passes", (rc, v, err))
        rc, a, err = ask(ep, "a")
        check(rc == 0 and a and a.get("tokens") == want["a"], "a still answers", err)
        with open(bkeys, "r+b") as f:
            f.seek(off)
            f.write(orig)
        rc, v, err = recall(ep, "verify", "b")
        check(rc == 0 and v and v.get("ok") is True, "verify b passes once repaired", (v, err))
        rc, a, err = ask(ep, "b")
        check(rc == 0 and a and a.get("tokens") == want["b"], "b answers again, as before",
              (a, err))
        rc, j, err = recall(ep, "drop", "c")
        check(rc == 0 and not os.path.exists(os.path.dirname(cvals)),
              "a damaged session can be dropped; its files go", err)
        check(d.stop() == 0, "recalld exits 0")

        # A daemon with another model starts, and lists these sessions as unavailable.
        other = Daemon(data, ep, os.path.join(tmp, "other.log"), [],
                       model=os.path.join(e.DATA, "tiny-llama"))
        other.start()
        rc, s, err = recall(ep, "sessions")
        probs = [x.get("problem", "") for x in (s or {}).get("sessions", [])]
        check(rc == 0 and len(probs) == 2 and all("another model" in p for p in probs),
              "another model's daemon lists the sessions as unavailable", s)
        rc, a, err = ask(ep, "a")
        check(rc == 1 and "another model" in err, "and refuses to answer from them", err)
        check(other.stop() == 0, "recalld exits 0")

        # --- 4. kill -9 during evictions, re-opens and an ingest ---------------------------
        big_text = e.corpus_text(60000, offset=900)
        big = write(tmp, "big.txt", big_text)
        chunks = e.chunk_text(big_text, 1024)
        rc, j, err = recall(ref_ep, "ingest", "big", big, "--chunk-bytes", "1024")
        check(rc == 0, "reference ingest of the big file", err)
        rng = random.Random(7)
        acked = committed = 0
        # Kills at named places first (common/crash.h: the daemon sends itself SIGKILL on
        # the N-th pass through the point), while the file still has chunks to commit; then
        # kills at random moments.
        rounds = [("evict", 1), ("reopen", 2), ("commit-synced", 2), ("commit-done", 2),
                  (None, 0), (None, 0), (None, 0)]
        for k, (point, nth) in enumerate(rounds):
            label = "kill %d (%s)" % (k, "crash point %s:%d" % (point, nth) if point
                                      else "kill -9 at a random moment")
            if point:
                os.environ["RECALL_CRASH_AT"] = "%s:%d" % (point, nth)
            try:
                d.start()
            finally:
                os.environ.pop("RECALL_CRASH_AT", None)
            # Each round goes on where the session stands, so it stays the file's chunks in
            # order (chunks are tokenized one by one: the same chunks give the same tokens).
            rest = write(tmp, "rest%d.txt" % k, "".join(chunks[committed:]))
            ing = subprocess.Popen([e.RECALL, "ingest", "big", rest, "--chunk-bytes", "1024",
                                    "--connect", ep, "--json", "--timeout", "5"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            asker = subprocess.Popen(
                ["bash", "-c", "for i in 1 2 3 4 5 6 7 8; do for s in a b; do %s ask $s "
                 "'What happened next?' --max-tokens 4 --connect %s > /dev/null 2>&1; done; "
                 "done" % (e.RECALL, ep)], start_new_session=True)
            if point:
                try:
                    d.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    d.proc.send_signal(signal.SIGKILL)
                    d.proc.wait()
                check(d.proc.returncode == -signal.SIGKILL and
                      "crash point %s:%d" % (point, nth) in d.log(),
                      "%s: recalld died there" % label, d.proc.returncode)
            else:
                time.sleep(0.4 + rng.random() * 1.2)
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
            d.proc = None
            os.killpg(asker.pid, signal.SIGKILL)  # its questions matter only while it runs
            asker.wait()
            out, _ = ing.communicate(timeout=60)
            j = e.json.loads(out) if out.strip() else {}
            # A finished ingest prints its result; a cut one, what was acknowledged.
            acked = max(acked, j.get("last_seq", 0), j.get("partial", {}).get("last_seq", 0))
            d.start()
            i = info(ep, "big")
            committed = i.get("last_seq", 0)
            check(i.get("last_seq", 0) >= acked,
                  "%s: nothing acknowledged is lost (acked seq %d)" % (label, acked), i)
            for n in ("a", "b", "big"):
                if n == "big" and not i:
                    continue
                rc, v, err = recall(ep, "verify", n)
                check(rc == 0 and v and v.get("ok"), "%s: %s verifies" % (label, n), (v, err))
            # The rows of every committed window equal a clean ingest's.
            wins = i.get("windows", 0)
            n_bytes = wins * WINDOW_BYTES
            for f in ("L0.keys", "L1.values"):
                with open(os.path.join(data, "rows", "big", f), "rb") as x, \
                        open(os.path.join(ref.data_dir, "rows", "big", f), "rb") as y:
                    check(x.read(n_bytes) == y.read(n_bytes),
                          "%s: %s of %d windows equal a clean ingest's" % (label, f, wins))
            # Every session answers after the kill.
            for n in ("a", "b"):
                rc, a, err = ask(ep, n)
                check(rc == 0 and a and a.get("tokens") is not None,
                      "%s: %s answers" % (label, n), err)
            check(d.stop() == 0, "recalld exits 0")
        print("tiers: %d kills; 'big' acknowledged %d of %d chunks" % (len(rounds), acked,
                                                                       len(chunks)))
    finally:
        for x in (d, ref):
            if x.proc:
                x.stop(signal.SIGKILL)


def main():
    if not os.path.exists(os.path.join(e.MODEL, "config.json")):
        print("FAIL: no tiny-fot model in %s" % e.DATA)
        return 1
    tmp = tempfile.mkdtemp(prefix="recall-tiers-")
    try:
        run(tmp)
    except Exception as x:
        check(False, "e2e_tiers run", "%s: %s" % (type(x).__name__, x))
        for log in ("recalld.log", "ref.log", "other.log"):
            p = os.path.join(tmp, log)
            if os.path.exists(p):
                print("--- %s (tail) ---\n%s" % (log, open(p, errors="replace").read()[-3000:]))
    print("%d passed, %d failed" % (e.passed, e.failed))
    subprocess.run(["rm", "-rf", tmp])
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
