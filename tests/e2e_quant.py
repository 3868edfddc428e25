#!/usr/bin/python3
"""e2e_quant.py — quantized memory rows (fp8, int8) through recalld and the recall CLI.

On tiny-fot (window 64, 4 kv heads of 16, memory layers 1 and 2), CPU device:
1. The same text goes into sessions whose rows are fp8, int8 and bf16 (--memory-dtype), and
   fp8 with knn memory. Info shows each dtype; the row files hold exactly
   windows x 64 rows of dtype_row_bytes (fp8/int8: 4 x (16 + 4) bytes, bf16: 4 x 16 x 2);
   their perplexities stay within 2 % of bf16's.
2. The fp8 session answers greedily; after a restart it still says fp8, answers the same
   tokens and scores the same perplexity.
3. Ingesting into it with another --memory-dtype is refused, naming both dtypes, and adds
   nothing; ingesting with the same dtype or none goes on.
4. A daemon with --memory-dtype fp8 makes new sessions fp8; an unknown dtype is refused.

Environment as e2e_cli.py (set by ctest). Prints "N passed, N failed"; exits 1 on failure."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402  (the daemon harness, CLI runner and checks)
from e2e_cli import check, recall, info  # noqa: E402

KV, HD, WINDOW, LAYERS = 4, 16, 64, 2
ROW = {"fp8": KV * (HD + 4), "int8": KV * (HD + 4), "bf16": KV * HD * 2}


class Daemon(e.Daemon):
    def __init__(self, data_dir, endpoint, log_path, extra=()):
        super().__init__(data_dir, endpoint, log_path)
        self.extra = ["--device", "cpu"] + list(extra)

    def start(self):
        real = subprocess.Popen
        extra = self.extra

        def popen(cmd, *a, **kw):
            if cmd and cmd[0] == e.RECALLD:
                cmd = list(cmd) + extra
            return real(cmd, *a, **kw)
        subprocess.Popen = popen
        try:
            super().start()
        finally:
            subprocess.Popen = real


def row_file_bytes(data_dir, name):
    return [os.path.getsize(os.path.join(data_dir, "rows", name, "L%d.%s" % (l, kind)))
            for l in range(LAYERS) for kind in ("keys", "values")]


def ask(ep, name):
    rc, a, err = recall(ep, "ask", name, "What came next?", "--temperature", "0",
                        "--max-tokens", "12")
    check(rc == 0 and isinstance(a, dict) and a.get("tokens"), "ask %s" % name, (rc, a, err))
    return a.get("tokens") if isinstance(a, dict) else None


def ppl(ep, name):
    rc, p, err = recall(ep, "ppl", name)
    check(rc == 0 and isinstance(p, dict) and p.get("ppl", 0) > 1, "ppl %s" % name, (rc, p, err))
    return p.get("ppl", 0.0) if isinstance(p, dict) else 0.0


def run(tmp):
    doc = os.path.join(tmp, "doc.txt")
    with open(doc, "w") as f:
        f.write(e.corpus_text(9000))
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    ep = "tcp://127.0.0.1:%d" % e.free_port()
    d = Daemon(data, ep, os.path.join(tmp, "recalld.log"))
    d.start()

    # --- 1. the dtypes side by side ---------------------------------------------------------
    sessions = {"q8": ["--memory-dtype", "fp8"], "i8": ["--memory-dtype", "int8"],
                "b16": ["--memory-dtype", "bf16"],
                "q8k": ["--memory-dtype", "fp8", "--memory", "knn", "--k", "16"],
                "b16k": ["--memory-dtype", "bf16", "--memory", "knn", "--k", "16"]}
    for name, opts in sessions.items():
        rc, j, err = recall(ep, "ingest", name, doc, *opts)
        check(rc == 0, "ingest %s %s" % (name, " ".join(opts)), err)
    dt = {"q8": "fp8", "i8": "int8", "b16": "bf16", "q8k": "fp8", "b16k": "bf16"}
    windows = {}
    for name in sessions:
        i = info(ep, name)
        got = i.get("options", {}).get("mem_dtype")
        check(got == dt[name], "info %s shows mem_dtype %s" % (name, dt[name]), got)
        windows[name] = i.get("windows", 0)
        check(windows[name] >= 4, "%s: several windows in memory" % name, windows[name])
        want = windows[name] * WINDOW * ROW[dt[name]]
        sizes = row_file_bytes(data, name)
        check(all(s == want for s in sizes), "%s: each row file holds %d bytes (%d windows of "
              "%d-byte rows)" % (name, want, windows[name], ROW[dt[name]]), sizes)
    q8, b16 = sum(row_file_bytes(data, "q8")), sum(row_file_bytes(data, "b16"))
    check(q8 * 16 == b16 * 10, "fp8 rows take 80/128 of bf16's bytes at head_dim 16 (about "
          "half at real head sizes)", (q8, b16))
    p = {name: ppl(ep, name) for name in sessions}
    for name, ref in (("q8", "b16"), ("i8", "b16"), ("q8k", "b16k")):
        rel = abs(p[name] / p[ref] - 1) if p[ref] else 1
        check(rel < 0.02, "ppl %s within 2%% of %s" % (name, ref), (p[name], p[ref]))
    check(p["q8"] != p["b16"], "fp8 rows are really read (ppl differs from bf16's)", p)
    # Score of a text with fp8 rows, no session.
    rc, t, err = recall(ep, "ppl", "--text", doc, "--memory-dtype", "fp8")
    check(rc == 0 and isinstance(t, dict) and t.get("ppl", 0) > 1, "ppl --text --memory-dtype fp8",
          (rc, t, err))

    a1 = ask(ep, "q8")
    a1k = ask(ep, "q8k")

    # --- 2. restart --------------------------------------------------------------------------
    check(d.stop() == 0, "recalld stops cleanly")
    d.start()
    i = info(ep, "q8")
    check(i.get("options", {}).get("mem_dtype") == "fp8", "after a restart q8 is still fp8", i)
    check(ask(ep, "q8") == a1, "after a restart q8 answers the same tokens")
    check(ask(ep, "q8k") == a1k, "after a restart q8k (knn) answers the same tokens")
    check(ppl(ep, "q8") == p["q8"], "after a restart q8 scores the same perplexity")

    # --- 3. changing the dtype is refused -----------------------------------------------------
    before = info(ep, "q8").get("tokens")
    for other in ("bf16", "int8"):
        rc, j, err = recall(ep, "ingest", "q8", doc, "--memory-dtype", other, json_out=False)
        check(rc != 0 and "fp8" in err and other in err and "cannot change" in err,
              "ingest into fp8 session with --memory-dtype %s is refused, naming both" % other,
              (rc, err))
    check(info(ep, "q8").get("tokens") == before, "a refused ingest adds nothing")
    rc, j, err = recall(ep, "ingest", "q8", doc, "--memory-dtype", "fp8")
    check(rc == 0, "ingest with the session's own dtype goes on", err)
    rc, j, err = recall(ep, "ingest", "q8", doc)
    check(rc == 0, "ingest without --memory-dtype goes on", err)
    check(info(ep, "q8").get("tokens", 0) > before, "those ingests added tokens")
    rc, j, err = recall(ep, "ingest", "bad", doc, "--memory-dtype", "fp4", json_out=False)
    check(rc != 0 and "fp4" in err, "an unknown --memory-dtype is a usage error", (rc, err))
    check(d.stop() == 0, "recalld stops cleanly")

    # --- 4. the daemon's default ---------------------------------------------------------------
    d2 = Daemon(data, ep, os.path.join(tmp, "recalld.log"), ["--memory-dtype", "fp8"])
    d2.start()
    rc, j, err = recall(ep, "ingest", "dflt", doc)
    check(rc == 0, "ingest under recalld --memory-dtype fp8", err)
    check(info(ep, "dflt").get("options", {}).get("mem_dtype") == "fp8",
          "a new session takes the daemon's --memory-dtype")
    check(info(ep, "b16").get("options", {}).get("mem_dtype") == "bf16",
          "an existing session keeps its own dtype")
    check(d2.stop() == 0, "recalld stops cleanly")
    bad = subprocess.run([e.RECALLD, "--model", e.MODEL, "--data", data, "--listen", ep,
                          "--memory-dtype", "fp4"], capture_output=True, text=True, timeout=120)
    check(bad.returncode != 0 and "fp4" in bad.stderr, "recalld refuses --memory-dtype fp4",
          bad.stderr[-500:])


def main():
    if not os.path.exists(os.path.join(e.MODEL, "config.json")):
        print("FAIL: no tiny-fot model in %s" % e.DATA)
        return 1
    tmp = tempfile.mkdtemp(prefix="recall-quant-")
    try:
        run(tmp)
    except Exception as x:
        check(False, "e2e_quant run", "%s: %s" % (type(x).__name__, x))
        p = os.path.join(tmp, "recalld.log")
        if os.path.exists(p):
            print("--- recalld.log (tail) ---\n%s" % open(p, errors="replace").read()[-3000:])
    print("%d passed, %d failed" % (e.passed, e.failed))
    subprocess.run(["rm", "-rf", tmp])
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
