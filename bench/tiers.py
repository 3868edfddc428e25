#!/usr/bin/env python3
"""tiers.py — the memory tiers benchmark (issue 13): start-up against data size, the first
question on a session cold (its rows on disk) and warm, and recalld's peak RSS against its
host budget while questions cycle over more sessions than the budget holds.

Sessions are written by bench_tiers_fill (bench/tiers_fill.c): a real ingest makes a
template session, then large sessions with the template's options and random rows are
committed straight into the data directory the way an ingest commits them. Start-up, bring-in
and ask times are therefore real; what the answers say is not the point.

  bench/tiers.py [options] startup   1, 10, 100 sessions (--sizes) of --tokens tokens each:
                                     recalld's start to its first health, sessions and info
                                     answers, its RSS then; the first ask (cold) and a second
                                     one (warm) on one session
  bench/tiers.py [options] cycle     --cycle-sessions sessions, asks cycled over them --rounds
                                     times under --host-memory-budget (and once with none):
                                     peak RSS (VmHWM) against the budget, the idle RSS of
                                     the same daemon, loads and evictions
  bench/tiers.py [options] reopen    one session of each --reopen-tokens length: restart to
                                     the first answer (the fast-restart target), also with the
                                     page cache dropped where the machine allows it

Options: --build DIR (default build), --model DIR (default: tests' tiny-fot-bf16, made if
missing), --work DIR (data dirs; default build/tiers-work), --out DIR (results.md and
results.json; default $OUT or build/tiers-out), --memory exact|knn, --device DEV, --keep
(leave the data dirs). Only the standard library; binaries from --build."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTION = "What does the text say about the memory of the model?"


def now():
    return time.monotonic()


class Daemon:
    def __init__(self, a, data, port, extra=()):
        self.a, self.data, self.extra = a, data, list(extra)
        self.ep = "tcp://127.0.0.1:%d" % port
        self.proc = None
        self.log = os.path.join(a.out, "recalld-%s.log" % os.path.basename(data))

    def cli(self, *args, timeout=3600):
        t0 = now()
        r = subprocess.run([self.a.recall, "--connect", self.ep, "--timeout", "3600", *args],
                           capture_output=True, text=True, timeout=timeout)
        return r, now() - t0

    def start(self):
        """Starts recalld; returns seconds from exec to its first health answer."""
        cmd = [self.a.recalld, "--model", self.a.model, "--data", self.data, "--listen", self.ep]
        if self.a.device:
            cmd += ["--device", self.a.device]
        t0 = now()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd + self.extra, stdout=log, stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                sys.exit("recalld exited with %d; see %s" % (self.proc.returncode, self.log))
            r = subprocess.run([self.a.recall, "--connect", self.ep, "--timeout", "1", "health"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return now() - t0
            if now() - t0 > 600:
                sys.exit("recalld did not answer health in 600 s; see " + self.log)
            time.sleep(0.01)

    def status(self, key):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def stats(self):
        r, _ = self.cli("--json", "stats")
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(600)
            self.proc = None


def mib(b):
    return b / 1048576.0


def ask(dm, name, tokens=8):
    r, s = dm.cli("--json", "ask", name, QUESTION, "--max-tokens", str(tokens), "--ignore-eos")
    if r.returncode != 0:
        sys.exit("ask %s failed: %s %s" % (name, r.stdout, r.stderr))
    return s


def make_template(a, data, port):
    """A real session made by an ingest: the options and row files the fill copies."""
    if os.path.isdir(os.path.join(data, "rows", "template")):
        return
    os.makedirs(data, exist_ok=True)
    dm = Daemon(a, data, port)
    dm.start()
    text = os.path.join(a.out, "template.txt")
    with open(os.path.join(ROOT, "tests", "data", "corpus.txt")) as f:
        body = f.read()
    with open(text, "w") as f:  # a few windows of the largest models' (2048 tokens)
        f.write(body[:24000])
    r, _ = dm.cli("-q", "ingest", "template", text, "--memory", a.memory)
    dm.stop()
    if r.returncode != 0:
        sys.exit("template ingest failed: " + r.stderr)


def fill(a, data, prefix, count, tokens):
    t0 = now()
    r = subprocess.run([a.fill, data, "template", prefix, str(count), str(tokens)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("bench_tiers_fill failed: " + r.stderr)
    print("  " + r.stdout.strip() + " (%.1f s)" % (now() - t0), flush=True)


def disk_bytes(path):
    total = 0
    for dp, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dp, f))
    return total


def drop_caches():
    """1 when the page cache could be dropped (root on a machine that allows it)."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return 1
    except OSError:
        return 0


def startup(a, res):
    data = os.path.join(a.work, "startup")
    make_template(a, data, a.port)
    rows = []
    for n in a.sizes:
        print("startup: %d sessions of %d tokens" % (n, a.tokens), flush=True)
        fill(a, data, "s", n, a.tokens)
        dm = Daemon(a, data, a.port, ["--host-memory-budget", a.budget])
        t_health = dm.start()
        _, t_sessions = dm.cli("sessions")
        _, t_info = dm.cli("info", "s000")
        rss_start = dm.status("VmRSS")
        cached = drop_caches()
        t_cold = ask(dm, "s000")
        t_warm = ask(dm, "s000")
        st = dm.stats()
        dm.stop()
        row = {"sessions": n + 1, "tokens": (n * a.tokens), "disk_gib": disk_bytes(data) / 2**30,
               "health_s": t_health, "sessions_s": t_sessions, "info_s": t_info,
               "rss_start_mib": mib(rss_start), "ask_cold_s": t_cold, "ask_warm_s": t_warm,
               "page_cache_dropped": bool(cached), "loads": st.get("loads")}
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
    res["startup"] = rows
    if not a.keep:
        shutil.rmtree(data)


def cycle(a, res):
    data = os.path.join(a.work, "cycle")
    make_template(a, data, a.port + 1)
    n = a.cycle_sessions
    print("cycle: %d sessions of %d tokens" % (n, a.tokens), flush=True)
    fill(a, data, "c", n, a.tokens)
    out = []
    for budget in (a.cycle_budget, "none"):
        dm = Daemon(a, data, a.port + 1, ["--host-memory-budget", budget])
        dm.start()
        idle = dm.status("VmRSS")
        times = []
        for _ in range(a.rounds):
            for i in range(n):
                times.append(ask(dm, "c%03d" % i))
        peak = dm.status("VmHWM")
        st = dm.stats()
        dm.stop()
        row = {"budget": budget, "sessions": n, "tokens_each": a.tokens,
               "rows_mib_each": mib(disk_bytes(os.path.join(data, "rows", "c000"))),
               "asks": len(times), "ask_mean_s": sum(times) / len(times),
               "ask_max_s": max(times), "idle_rss_mib": mib(idle), "peak_rss_mib": mib(peak),
               "loads": st.get("loads"), "evictions": st.get("evictions")}
        print("  " + json.dumps(row), flush=True)
        out.append(row)
    res["cycle"] = out
    if not a.keep:
        shutil.rmtree(data)


def reopen(a, res):
    out = []
    for tokens in a.reopen_tokens:
        data = os.path.join(a.work, "reopen-%d" % tokens)
        make_template(a, data, a.port + 2)
        print("reopen: one session of %d tokens" % tokens, flush=True)
        fill(a, data, "r", 1, tokens)
        for cold in (0, 1):
            dropped = drop_caches() if cold else 0
            if cold and not dropped:
                print("  (cannot drop the page cache here: no cold-cache run)", flush=True)
                break
            t0 = now()
            dm = Daemon(a, data, a.port + 2, a.reopen_flags)
            t_health = dm.start()
            t_ask = ask(dm, "r000", 1)
            t_first = now() - t0
            t_again = ask(dm, "r000", 1)
            peak = dm.status("VmHWM")
            dm.stop()
            row = {"tokens": tokens,
                   "rows_gib": disk_bytes(os.path.join(data, "rows", "r000")) / 2**30,
                   "page_cache": "dropped" if cold else "warm", "health_s": t_health,
                   "first_ask_s": t_ask, "start_to_first_answer_s": t_first,
                   "next_ask_s": t_again, "peak_rss_mib": mib(peak)}
            print("  " + json.dumps(row), flush=True)
            out.append(row)
        if not a.keep:
            shutil.rmtree(data)
    res["reopen"] = out


def report(a, res):
    lines = ["# bench/tiers.py", "", "model %s, memory %s, device %s, %s" % (
        a.model, a.memory, a.device or "auto", time.strftime("%Y-%m-%d %H:%M"))]
    if "startup" in res:
        lines += ["", "| sessions | tokens of rows | disk GiB | first health s | sessions s | "
                  "info s | RSS at start MiB | first ask (cold) s | warm ask s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["startup"]:
            lines.append("| %d | %d | %.2f | %.3f | %.3f | %.3f | %.0f | %.3f | %.3f |" % (
                r["sessions"], r["tokens"], r["disk_gib"], r["health_s"], r["sessions_s"],
                r["info_s"], r["rss_start_mib"], r["ask_cold_s"], r["ask_warm_s"]))
    if "cycle" in res:
        lines += ["", "| host budget | sessions x MiB of rows | asks | mean s | max s | idle RSS MiB"
                  " | peak RSS MiB | loads | evictions |", "| --- | --- | --- | --- | --- | --- |"
                  " --- | --- | --- |"]
        for r in res["cycle"]:
            lines.append("| %s | %d x %.1f | %d | %.3f | %.3f | %.0f | %.0f | %s | %s |" % (
                r["budget"], r["sessions"], r["rows_mib_each"], r["asks"], r["ask_mean_s"],
                r["ask_max_s"], r["idle_rss_mib"], r["peak_rss_mib"], r["loads"],
                r["evictions"]))
    if "reopen" in res:
        lines += ["", "| tokens | rows GiB | page cache | first health s | first ask s | "
                  "start to first answer s | next ask s | peak RSS MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in res["reopen"]:
            lines.append("| %d | %.2f | %s | %.3f | %.3f | %.3f | %.3f | %.0f |" % (
                r["tokens"], r["rows_gib"], r["page_cache"], r["health_s"], r["first_ask_s"],
                r["start_to_first_answer_s"], r["next_ask_s"], r["peak_rss_mib"]))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("modes", nargs="+", choices=["startup", "cycle", "reopen"])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--model")
    p.add_argument("--work")
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--memory", default="exact", choices=["exact", "knn"])
    p.add_argument("--device")
    p.add_argument("--sizes", default="1,10,100", help="sessions per start-up step")
    p.add_argument("--tokens", type=int, default=200000, help="tokens per session")
    p.add_argument("--budget", default="none", help="--host-memory-budget for start-up")
    p.add_argument("--cycle-sessions", type=int, default=6)
    p.add_argument("--cycle-budget", default="256M")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reopen-tokens", default="262144", help="comma-separated lengths")
    p.add_argument("--reopen-flags", default="", help="extra recalld flags for reopen")
    p.add_argument("--port", type=int, default=5780)
    p.add_argument("--keep", action="store_true")
    a = p.parse_args()
    b = os.path.abspath(a.build)
    a.recall = os.path.join(b, "clients", "recall")
    a.recalld = os.path.join(b, "daemon", "recalld")
    a.fill = os.path.join(b, "bench", "bench_tiers_fill")
    for exe in (a.recall, a.recalld, a.fill):
        if not os.access(exe, os.X_OK):
            sys.exit("%s is missing: build first (cmake --build %s)" % (exe, b))
    if not a.model:
        models = os.path.join(b, "tests", "data")
        subprocess.run(["bash", os.path.join(ROOT, "tests", "make_tiny_models.sh"), models],
                       check=True, capture_output=True)
        a.model = os.path.join(models, "tiny-fot-bf16")
    a.work = os.path.abspath(a.work or os.path.join(b, "tiers-work"))
    a.out = os.path.abspath(a.out or os.path.join(b, "tiers-out"))
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    a.sizes = [int(x) for x in a.sizes.split(",")]
    a.reopen_tokens = [int(x) for x in a.reopen_tokens.split(",")]
    a.reopen_flags = a.reopen_flags.split()
    res = {}
    for m in a.modes:
        {"startup": startup, "cycle": cycle, "reopen": reopen}[m](a, res)
    report(a, res)


if __name__ == "__main__":
    main()
