#!/usr/bin/python3
"""e2e_soak.py — kill -9 soak: recalld is killed again and again while clients ingest into
several sessions, ask, drop and re-create them, under a host-memory budget small enough that
sessions keep moving to disk and back; after every restart everything acknowledged is there.

Each round starts recalld (on tiny-fot, --host-memory-budget 3M: two sessions at most are in
host memory), lets two writer threads (each owning two session names) and one asker thread
work on it, and kills it with SIGKILL: either from outside after a random delay, or at a
named crash point (common/crash.h, RECALL_CRASH_AT=NAME:N: evict, reopen, commit-synced,
commit-done, create-committed, drop-committed, drop-renamed). Then it restarts recalld and
checks, for every session name, against what the clients were told:

  - a session whose creation or last chunk was acknowledged is listed; one whose drop was
    acknowledged is not; one with an operation cut by the kill may be either, but if it is
    there it holds a whole number of chunks between the acknowledged and the sent ones;
  - its token count is exactly that of a clean ingest of the same chunks (no half chunk),
    its windows and pending tokens agree, `recall verify` passes (row checksums), and the
    rows of every committed window equal a clean ingest's byte for byte;
  - the data directory's rows/ holds no directory of a session that is not listed (a
    dropped session's files are gone, moved aside or swept at the start);
  - every session answers a question.

Each session name has its own text; every incarnation of a name ingests the same chunks in
the same order from seq 1, so one clean reference ingest per name (a second daemon, no
kills, chunk by chunk) gives the token count after every chunk and the rows.

  e2e_soak.py [--kills N] [--seed S] [--max-seconds T] [--keep]
Defaults: 20 kills, every other one at a crash point (8 under AddressSanitizer, whose daemon
is several times slower: one at each crash point, then a random one), seed 1;
RECALL_SOAK_KILLS / RECALL_SOAK_SEED override them. Prints the seed first, so a failing run
can be replayed (the kill moments are random in time, so a replay is close, not exact).
Prints "N passed, N failed" and a figures line; exits 1 on any failure."""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402  (paths, corpus, chunking, check)
from e2e_cli import check  # noqa: E402

ROW_BYTES = 4 * 16 * 4                  # tiny-fot: a row of 4 kv heads x 16, f32
WINDOW_BYTES = 64 * ROW_BYTES           # one window of one layer's keys (or values)
CHUNK_BYTES = 512                       # about 220 tokens, 3-4 windows
N_CHUNKS = 24                           # chunks in each name's text
BUDGET = "3M"                           # a full session is ~5 MiB of rows: evictions galore
NAMES = [["a0", "a1"], ["b0", "b1"]]    # writer thread -> the names it owns
POINTS = ["evict", "reopen", "commit-synced", "commit-done", "create-committed",
          "drop-committed", "drop-renamed"]


def cli(ep, *args, timeout=60):
    """Runs recall --json; (exit code, parsed JSON or None, stderr). Never counts a check:
    during a round the daemon may die under it at any moment."""
    try:
        r = subprocess.run([e.RECALL, *args, "--connect", ep, "--json"], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, None, "timed out after %d s" % timeout
    j = None
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    if len(lines) == 1:
        try:
            j = json.loads(lines[0])
        except ValueError:
            pass
    return r.returncode, j, r.stderr


class Daemon:
    def __init__(self, data, ep, log):
        self.data, self.ep, self.log_path, self.proc = data, ep, log, None

    def start(self, crash_at=None):
        env = dict(os.environ)
        env.pop("RECALL_CRASH_AT", None)
        if crash_at:
            env["RECALL_CRASH_AT"] = crash_at
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [e.RECALLD, "--model", e.MODEL, "--data", self.data, "--listen", self.ep,
                 "--host-memory-budget", BUDGET], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("recalld exited with %d:\n%s" % (self.proc.returncode,
                                                                    self.tail()))
            rc, j, err = cli(self.ep, "health", "--timeout", "2", timeout=10)
            if rc == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("recalld did not answer health within 120 s:\n" + self.tail())

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait() if self.proc else None
        self.proc = None
        return rc

    def tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


class Name:
    """What the clients know about one session name. Between rounds it is exact
    (exists, lo == hi == last_seq); an operation cut by a kill leaves a range."""

    def __init__(self, name, chunks):
        self.name, self.chunks = name, chunks
        self.exists = False      # True, False, or None: a create or drop was cut
        self.lo = self.hi = 0    # committed seq is in [lo, hi]


class Soak:
    def __init__(self, tmp, seed, kills, max_seconds):
        self.tmp, self.seed, self.kills_wanted, self.max_seconds = tmp, seed, kills, max_seconds
        self.rng = random.Random(seed)
        self.names = {}
        self.ref_tokens = {}     # name -> [tokens after 0, 1, ... N_CHUNKS chunks]
        self.faults = []         # failures seen by the worker threads (main thread reports)
        self.lock = threading.Lock()
        self.stats = {"kills": 0, "random": 0, "acked_chunks": 0, "drops": 0, "creates": 0,
                      "asks": 0, "restarts": 0, "checked_sessions": 0}
        self.fired = {p: 0 for p in POINTS}
        self.verbose = False

    # ---- reference ---------------------------------------------------------------------
    def reference(self):
        ep = "tcp://127.0.0.1:%d" % e.free_port()
        self.ref = Daemon(os.path.join(self.tmp, "ref"), ep, os.path.join(self.tmp, "ref.log"))
        os.makedirs(self.ref.data)
        self.ref.start()
        for i, n in enumerate(sum(NAMES, [])):
            text = e.corpus_text(CHUNK_BYTES * (N_CHUNKS + 2), offset=97 * i + 5)
            chunks = e.chunk_text(text, CHUNK_BYTES)[:N_CHUNKS]
            self.names[n] = Name(n, chunks)
            toks = [0]
            for k, c in enumerate(chunks):
                f = self.write("ref-%s-%d.txt" % (n, k), c)
                rc, j, err = cli(ep, "ingest", n, f, "--chunk-bytes", str(CHUNK_BYTES))
                if not check(rc == 0 and j and j.get("last_seq") == k + 1,
                             "reference ingest %s chunk %d" % (n, k + 1), (rc, j, err)):
                    raise RuntimeError("no reference")
                toks.append(j["tokens"])
            self.ref_tokens[n] = toks
        self.ref.kill()  # its files are complete: every ingest was acknowledged
        print("soak: reference: %d names x %d chunks, %d..%d tokens each"
              % (len(self.names), N_CHUNKS, min(t[-1] for t in self.ref_tokens.values()),
                 max(t[-1] for t in self.ref_tokens.values())), flush=True)

    def write(self, fname, text):
        p = os.path.join(self.tmp, fname)
        with open(p, "w") as f:
            f.write(text)
        return p

    # ---- workers -----------------------------------------------------------------------
    def fault(self, what):
        with self.lock:
            self.faults.append(what)

    def writer(self, ep, owned, rng, stop, tag):
        """Ingests, drops and re-creates its own names until the daemon dies or stop is
        set. The first operation that fails ends it: the daemon is gone (exit code 3) or
        something is wrong (any other code, reported)."""
        while not stop.is_set():
            x = self.names[rng.choice(owned)]
            if x.exists and (x.lo == N_CHUNKS or rng.random() < 0.18):
                rc, j, err = cli(ep, "drop", x.name, "--timeout", "2", timeout=30)
                if rc == 0:
                    x.exists, x.lo, x.hi = False, 0, 0
                    with self.lock:
                        self.stats["drops"] += 1
                    continue
                x.exists = None  # lo == hi: if it is still there it is whole
                if rc != 3:
                    self.fault("%s: drop %s: exit %d: %s %s" % (tag, x.name, rc, j, err))
                return
            # Ingest the next 1..6 chunks (creates the session if needed).
            s = x.lo
            k = min(N_CHUNKS - s, rng.randint(1, 6))
            f = self.write("%s-%s-%d.txt" % (tag, x.name, s), "".join(x.chunks[s:s + k]))
            existed = x.exists
            rc, j, err = cli(ep, "ingest", x.name, f, "--chunk-bytes", str(CHUNK_BYTES),
                             "--timeout", "2", timeout=60)
            if rc == 0 and j:
                ok = j.get("last_seq") == s + k and \
                    j.get("tokens") == self.ref_tokens[x.name][s + k]
                if not ok:
                    self.fault("%s: ingest %s chunks %d..%d acknowledged %s, want seq %d and "
                               "%d tokens" % (tag, x.name, s + 1, s + k, j, s + k,
                                              self.ref_tokens[x.name][s + k]))
                x.exists, x.lo, x.hi = True, s + k, s + k
                with self.lock:
                    self.stats["acked_chunks"] += k
                    self.stats["creates"] += 0 if existed else 1
                continue
            acked = ((j or {}).get("partial") or {}).get("last_seq", 0)
            x.hi = s + k
            if acked > s:
                x.lo = acked
                x.exists = True
                with self.lock:
                    self.stats["acked_chunks"] += acked - s
            elif not existed:
                x.exists = None
            if rc != 3:
                self.fault("%s: ingest %s: exit %d: %s %s" % (tag, x.name, rc, j, err))
            return

    def asker(self, ep, rng, stop):
        """Questions to random names: under the budget they bring sessions in from disk and
        push others out (eviction and re-open crash points). Only an error other than
        'gone' counts: a session may be dropped under the question, the daemon killed."""
        all_names = list(self.names)
        while not stop.is_set():
            n = rng.choice(all_names)
            rc, j, err = cli(ep, "ask", n, "What happened next?", "--max-tokens", "2",
                             "--temperature", "0", "--timeout", "2", timeout=30)
            if rc == 3:
                return
            if rc == 0:
                with self.lock:
                    self.stats["asks"] += 1
                continue
            msg = json.dumps(j) if j else err
            if "NOT_FOUND" in msg or "was dropped" in msg:
                continue
            self.fault("asker: ask %s: exit %d: %s" % (n, rc, msg))
            return

    # ---- one round ---------------------------------------------------------------------
    def round(self, k, d, point):
        rng = random.Random(self.rng.random())
        # The N-th pass: creates and drops come seldom, so early ones.
        nth = rng.randint(1, 2 if point and point.startswith(("create", "drop")) else 3)
        crash_at = "%s:%d" % (point, nth) if point else None
        t0 = time.time()
        d.start(crash_at)
        t1 = time.time()
        stop = threading.Event()
        threads = [threading.Thread(target=self.writer,
                                    args=(d.ep, owned, random.Random(rng.random()), stop,
                                          "w%d" % i)) for i, owned in enumerate(NAMES)]
        threads.append(threading.Thread(target=self.asker,
                                        args=(d.ep, random.Random(rng.random()), stop)))
        for t in threads:
            t.start()
        label = "kill %d (%s)" % (k, "crash point " + crash_at if point else "random moment")
        if point:
            try:
                d.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            if d.proc.poll() is None:
                # Not reached in time (the workload is random): an outside kill instead.
                label = "kill %d (random moment; %s not reached in 20 s)" % (k, crash_at)
                point = None
        else:
            time.sleep(0.2 + rng.random() * 1.8)
        rc = d.kill()
        stop.set()
        for t in threads:
            t.join(120)
            if t.is_alive():
                self.fault("%s: a client thread did not end" % label)
        self.stats["kills"] += 1
        if point:
            self.fired[point] += 1
            check(rc == -signal.SIGKILL and ("crash point " + crash_at) in d.tail(4000),
                  "%s: recalld died there by SIGKILL" % label, rc)
        else:
            self.stats["random"] += 1
            check(rc == -signal.SIGKILL, "%s: recalld died by SIGKILL, not before" % label, rc)
        with self.lock:
            faults, self.faults = self.faults, []
        for f in faults:
            check(False, "%s: client" % label, f)
        t2 = time.time()
        d.start()
        self.stats["restarts"] += 1
        self.verify(d, label)
        if self.verbose:
            print("soak: %s: start %.1f s, clients until the kill %.1f s, restart and checks "
                  "%.1f s" % (label, t1 - t0, t2 - t1, time.time() - t2), flush=True)
        check(d.proc.poll() is None, "%s: recalld still up after the checks" % label)
        d.kill()  # the next round's start; a kill between rounds costs nothing to count

    # ---- after a restart ---------------------------------------------------------------
    def verify(self, d, label):
        rc, s, err = cli(d.ep, "sessions")
        listed = {x["name"] for x in (s or {}).get("sessions", [])}
        if not check(rc == 0 and s is not None, "%s: recall sessions" % label, (rc, s, err)):
            return
        check(listed <= set(self.names), "%s: no session that was never created" % label,
              listed)
        rows = os.path.join(d.data, "rows")
        on_disk = set(os.listdir(rows)) if os.path.isdir(rows) else set()
        # (A session that has committed no chunk yet has no row files at all.)
        check(on_disk <= listed, "%s: rows/ holds only listed sessions' files" % label,
              (sorted(on_disk), sorted(listed)))
        for n, x in self.names.items():
            here = n in listed
            if x.exists is True:
                check(here, "%s: %s (acknowledged, seq >= %d) is listed" % (label, n, x.lo),
                      sorted(listed))
            elif x.exists is False:
                check(not here, "%s: %s (dropped or never created) is not listed" % (label, n),
                      sorted(listed))
            if not here:
                x.exists, x.lo, x.hi = False, 0, 0
                continue
            lo = x.lo  # 0 for a cut create; for a cut drop, all it had
            rc, i, err = cli(d.ep, "info", n)
            if not check(rc == 0 and i, "%s: info %s" % (label, n), (rc, i, err)):
                continue
            seq, toks, wins = i.get("last_seq", -1), i.get("tokens", -1), i.get("windows", -1)
            check(lo <= seq <= x.hi,
                  "%s: %s holds seq %d: at least the acknowledged %d, at most the sent %d"
                  % (label, n, seq, lo, x.hi), i)
            seq = max(0, min(seq, N_CHUNKS))
            want = self.ref_tokens[n][seq]
            check(toks == want and i.get("ingest_chunks") == seq,
                  "%s: %s has %d tokens in %s chunks; %d chunks ingested cleanly give %d"
                  % (label, n, toks, i.get("ingest_chunks"), seq, want), i)
            check(wins == toks // e.WINDOW and i.get("pending_tokens") == toks - wins * e.WINDOW,
                  "%s: %s windows and pending tokens agree" % (label, n), i)
            rc, v, err = cli(d.ep, "verify", n)
            check(rc == 0 and v and v.get("ok") is True and v.get("windows") == wins,
                  "%s: recall verify %s" % (label, n), (rc, v, err))
            nb = max(wins, 0) * WINDOW_BYTES
            check(wins <= 0 or n in on_disk, "%s: %s has its row files" % (label, n), on_disk)
            for f in () if wins <= 0 else ("L0.keys", "L0.values", "L1.keys", "L1.values"):
                try:
                    with open(os.path.join(rows, n, f), "rb") as a, \
                            open(os.path.join(self.ref.data, "rows", n, f), "rb") as b:
                        same = a.read(nb) == b.read(nb)
                except OSError as x_:
                    same = x_
                check(same is True, "%s: %s %s: %d windows equal a clean ingest's"
                      % (label, n, f, wins), same)
            rc, a, err = cli(d.ep, "ask", n, "What happened next?", "--max-tokens", "2",
                             "--temperature", "0", "--timeout", "30")
            check(rc == 0 and a and len(a.get("tokens", [])) >= 1, "%s: %s answers" % (label, n),
                  (rc, a, err))
            x.exists, x.lo, x.hi = True, seq, seq
            self.stats["checked_sessions"] += 1

    def run(self):
        self.reference()
        ep = "tcp://127.0.0.1:%d" % e.free_port()
        data = os.path.join(self.tmp, "data")
        os.makedirs(data)
        d = Daemon(data, ep, os.path.join(self.tmp, "recalld.log"))
        self.daemon = d
        t0 = time.time()
        k = 0
        try:
            while self.stats["kills"] < self.kills_wanted:
                if self.max_seconds and time.time() - t0 > self.max_seconds:
                    print("soak: stopping at the time limit of %d s" % self.max_seconds)
                    break
                # Every other kill at a named point, cycling through them; the rest random.
                # A short run (under ASan) goes through every point first instead.
                if self.kills_wanted < 2 * len(POINTS):
                    point = POINTS[k] if k < len(POINTS) else None
                else:
                    point = POINTS[(k // 2) % len(POINTS)] if k % 2 else None
                f0 = e.failed
                self.round(k, d, point)
                if e.failed > f0:
                    print("--- recalld log (tail) ---\n" + d.tail(), flush=True)
                    if e.failed > 20:
                        break
                k += 1
                if k % 10 == 0:
                    print("soak: %d kills in %.0f s" % (k, time.time() - t0), flush=True)
        finally:
            d.kill()
        el = time.time() - t0
        if self.kills_wanted >= 2 * len(POINTS):
            never = [p for p in POINTS if not self.fired[p]]
            check(not never, "every crash point fired at least once", never)
        check(self.stats["kills"] >= self.kills_wanted, "%d kills done, %d wanted"
              % (self.stats["kills"], self.kills_wanted))
        print("soak: seed %d: %d kills survived (%d at random moments, crash points %s) in "
              "%.0f s; %d chunks acknowledged, %d creates, %d drops, %d answers during the "
              "rounds, %d session checks after restarts"
              % (self.seed, self.stats["kills"], self.stats["random"],
                 ", ".join("%s %d" % (p, n) for p, n in self.fired.items()), el,
                 self.stats["acked_chunks"], self.stats["creates"], self.stats["drops"],
                 self.stats["asks"], self.stats["checked_sessions"]), flush=True)


def main():
    asan = bool(os.environ.get("ASAN_OPTIONS"))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int,
                   default=int(os.environ.get("RECALL_SOAK_KILLS", 8 if asan else 20)))
    p.add_argument("--seed", type=int, default=int(os.environ.get("RECALL_SOAK_SEED", 1)))
    p.add_argument("--max-seconds", type=float, default=0,
                   help="stop early (and fail: too few kills) after this long; 0: no limit")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--verbose", action="store_true", help="a line with timings per kill")
    a = p.parse_args()
    print("soak: seed %d, %d kills%s (replay: e2e_soak.py --seed %d --kills %d)"
          % (a.seed, a.kills, " (AddressSanitizer)" if asan else "", a.seed, a.kills),
          flush=True)
    for b in (e.RECALL, e.RECALLD):
        if not os.access(b, os.X_OK):
            print("FAIL: %s is not built\n0 passed, 1 failed" % b)
            return 1
    if not os.path.exists(os.path.join(e.MODEL, "config.json")):
        print("FAIL: no tiny-fot model in %s\n0 passed, 1 failed" % e.DATA)
        return 1
    tmp = tempfile.mkdtemp(prefix="recall-soak-")
    s = Soak(tmp, a.seed, a.kills, a.max_seconds)
    s.verbose = a.verbose
    try:
        s.run()
    except Exception as x:
        check(False, "soak run", "%s: %s" % (type(x).__name__, x))
        if getattr(s, "daemon", None):
            print("--- recalld log (tail) ---\n" + s.daemon.tail())
    print("%d passed, %d failed" % (e.passed, e.failed))
    if a.keep or e.failed:
        print("soak: files kept in %s" % tmp)
    else:
        subprocess.run(["rm", "-rf", tmp])
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
