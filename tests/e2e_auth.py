#!/usr/bin/python3
"""e2e_auth.py — issue 17: CURVE authentication and per-client limits, end to end.

On the tiny-fot model (window 64, vocab 512, f32 rows: 64 KiB on disk per window):

keys       recall keygen writes a pair whose files round-trip (the secret derives the
           public key, independently of recall: pyzmq's curve_public), with modes 0600 and
           0644, and never overwrites; a secret-key file of mode 0644 is refused by recalld
           and by recall, naming the file and the mode.
listen     a non-loopback --listen without CURVE is refused (exit 2, nothing created) and
           says what to do; --insecure lets it run. --allow without --curve-secret and a bad
           allow-list line are refused.
curve      recalld --curve-secret --allow: a listed key works (ingest, ask, info shows the
           key's name as owner); an unlisted key and no key are refused with messages that
           say so, and counted in Stats.auth_refused (and /metrics); the HTTP gateway works
           under CURVE (its sessions are owned by "http"); raw pyzmq peers with a wrong key
           get nothing.
limits     each limit's refusal names the limit and its flag and changes nothing (sessions,
           tokens, windows, disk bytes and the rows on disk): sessions per client (another
           client is not affected), tokens per session, disk per client, requests in
           flight (pipelined Scores; the count comes back to 0), ask tokens (question and
           max_tokens), message bytes; "local" is one identity for clients without keys.
restart    the quotas hold after a restart: owners are in the session records; a record
           written before owners were kept (rewritten with mdb_dump / mdb_load) reads as
           "local" and does not count against the key's quota.

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA, RECALL_SOURCE_DIR.
Prints "N passed, N failed"; exits 1 on any failure."""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_env import DATA, MODEL, RECALL, RECALLD, SRC, BUILD, check, free_port, summary  # noqa: E402,F401

WINDOW = 64
WINDOW_DISK = 64 * 1024  # 2 memory layers x (k, v) x 64 tokens x 4 kv heads x 16 x f32



def run(args, timeout=120, env=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def recall(ep, keys, *args, json_out=True, timeout=120):
    """Runs the CLI; keys = (client key path, server public key path) or None."""
    cmd = [RECALL, "--connect", ep, "--timeout", "30"]
    if keys:
        cmd += ["--curve-keys", keys[0], "--server-key", keys[1]]
    if json_out:
        cmd.append("--json")
    r = run(cmd + list(args), timeout=timeout)
    out = None
    if json_out and r.stdout.strip():
        try:
            out = json.loads(r.stdout)
        except ValueError:
            out = None
    return r, out


def zpl_key(path, which):
    with open(path) as f:
        m = re.search(r'%s-key = "(.{40})"' % which, f.read())
    return m.group(1) if m else None


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


class Daemon:
    def __init__(self, tmp, name, extra=(), keys=None, http=False):
        self.data = os.path.join(tmp, name)
        self.endpoint = "tcp://127.0.0.1:%d" % free_port()
        self.port = free_port() if http else None
        self.log_path = os.path.join(tmp, name + ".log")
        self.extra = list(extra)
        self.keys = keys  # what the harness's own health check connects with
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        args = [RECALLD, "--model", MODEL, "--data", self.data, "--listen", self.endpoint,
                "--threads", "1"] + self.extra
        if self.port:
            args += ["--http", "127.0.0.1:%d" % self.port]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("recalld exited with %d:\n%s" % (self.proc.returncode,
                                                                     self.log()))
            r, _ = recall(self.endpoint, self.keys, "health")
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("recalld did not answer health:\n" + self.log())

    def stop(self):
        if not self.proc:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "hung"
        self.proc = None
        return rc

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def http(self, method, path, body=None):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method,
                                     data=body.encode() if isinstance(body, str) else body)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


# ---- a raw peer: pyzmq + protoc's recall_pb2 ---------------------------------------------

pb = None


def load_proto(tmp):
    global pb
    out = os.path.join(tmp, "pb")
    os.makedirs(out)
    r = run(["protoc", "--python_out", out, "-I", os.path.join(SRC, "proto"), "recall.proto"])
    if r.returncode != 0:
        raise RuntimeError("protoc: " + r.stderr)
    sys.path.insert(0, out)
    import recall_pb2
    pb = recall_pb2


def python_client(tmp):
    """clients/python's package, importable from tmp with its generated messages."""
    dst = os.path.join(tmp, "py", "recall")
    if not os.path.exists(dst):
        shutil.copytree(os.path.join(SRC, "clients", "python", "recall"), dst)
        shutil.copy(os.path.join(tmp, "pb", "recall_pb2.py"), dst)
        sys.path.insert(0, os.path.join(tmp, "py"))
    import recall as py
    return py


class Raw:
    """A DEALER with optional CURVE keys (Z85 strings) that sends Requests and reads
    Responses by id."""

    def __init__(self, ep, pub=None, sec=None, server=None):
        self.ctx = zmq.Context()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.linger = 0
        self.s.sndtimeo = 3000  # a refused peer has no connection to queue to
        if pub:
            self.s.curve_publickey = pub.encode()
            self.s.curve_secretkey = sec.encode()
            self.s.curve_serverkey = server.encode()
        self.s.connect(ep)
        self.next = 1

    def close(self):
        self.s.close()
        self.ctx.term()

    def send(self, field, **kw):
        req = pb.Request()
        req.id = self.next
        self.next += 1
        body = getattr(req, field)
        body.SetInParent()
        for k, v in kw.items():
            if isinstance(v, list):
                getattr(body, k).extend(v)
            else:
                setattr(body, k, v)
        try:
            self.s.send(req.SerializeToString())
        except zmq.Again:
            return None
        return req.id

    def final(self, rid, timeout_ms=30000):
        """The final Response to request rid, or None on timeout (or an unsent request)."""
        if rid is None:
            return None
        deadline = time.time() + timeout_ms / 1000
        while time.time() < deadline:
            if not self.s.poll(max(1, int((deadline - time.time()) * 1000))):
                return None
            r = pb.Response.FromString(self.s.recv())
            if r.id == rid and not r.more:
                return r
        return None

    def finals(self, rids, timeout_ms=60000):
        """The final Responses to every request in rids (in that order; None for those
        that did not come), whatever order they arrive in."""
        got = {}
        deadline = time.time() + timeout_ms / 1000
        while len(got) < len(rids) and time.time() < deadline:
            if not self.s.poll(max(1, int((deadline - time.time()) * 1000))):
                break
            r = pb.Response.FromString(self.s.recv())
            if r.id in rids and not r.more:
                got[r.id] = r
        return [got.get(i) for i in rids]

    def call(self, field, timeout_ms=30000, **kw):
        return self.final(self.send(field, **kw), timeout_ms)


def tokens(n, start=0):
    return [10 + (start + i) * 7 % 490 for i in range(n)]


# ---- parts -------------------------------------------------------------------------------

def part_keys(tmp):
    kd = os.path.join(tmp, "keys-a")
    r, j = recall("tcp://127.0.0.1:1", None, "keygen", kd)
    check(r.returncode == 0 and j and len(j.get("public_key", "")) == 40, "keygen --json",
          r.stdout + r.stderr)
    key, pubf = os.path.join(kd, "client.key"), os.path.join(kd, "client.pub")
    if not check(os.path.exists(key) and os.path.exists(pubf), "keygen wrote client.key/.pub"):
        return
    check(stat.S_IMODE(os.stat(key).st_mode) == 0o600, "client.key is mode 0600",
          oct(os.stat(key).st_mode))
    check(stat.S_IMODE(os.stat(pubf).st_mode) == 0o644, "client.pub is mode 0644",
          oct(os.stat(pubf).st_mode))
    pub, sec = zpl_key(key, "public"), zpl_key(key, "secret")
    check(pub == j["public_key"] and zpl_key(pubf, "public") == pub,
          "the printed, .key and .pub public keys agree", (pub, j, zpl_key(pubf, "public")))
    check(sec and zmq.curve_public(sec.encode()).decode() == pub,
          "the secret key derives the public key (pyzmq's curve_public)")
    with open(pubf) as f:
        check("secret" not in f.read().replace("**Secret**", ""), ".pub holds no secret key")
    before = open(key).read()
    r, _ = recall("tcp://127.0.0.1:1", None, "keygen", kd)
    check(r.returncode != 0 and "never overwritten" in r.stdout + r.stderr and
          open(key).read() == before, "keygen refuses to overwrite a key", r.stdout + r.stderr)
    r, j2 = recall("tcp://127.0.0.1:1", None, "keygen", kd, "--name", "server")
    check(r.returncode == 0 and os.path.exists(os.path.join(kd, "server.key")) and
          j2["public_key"] != pub, "keygen --name server makes a second, different pair")

    # A secret key readable by others: refused by recalld and by recall, naming the mode.
    loose = os.path.join(tmp, "loose.key")
    shutil.copy(os.path.join(kd, "server.key"), loose)
    os.chmod(loose, 0o644)
    allow = os.path.join(tmp, "allow-a")
    with open(allow, "w") as f:
        f.write("%s alice\n" % pub)
    data = os.path.join(tmp, "never")
    r = run([RECALLD, "--model", MODEL, "--data", data, "--listen",
             "tcp://127.0.0.1:%d" % free_port(), "--curve-secret", loose, "--allow", allow])
    check(r.returncode == 2 and loose in r.stderr and "0644" in r.stderr and
          "chmod 600" in r.stderr, "recalld refuses a 0644 secret key file", r.stderr)
    check(not os.path.exists(data), "nothing created after the refusal")
    r, _ = recall("tcp://127.0.0.1:1", (loose, pubf), "health")
    check(r.returncode == 2 and "0644" in r.stderr, "recall refuses a 0644 key file", r.stderr)
    r = run([RECALL, "--connect", "tcp://127.0.0.1:1", "--curve-keys", key, "health"])
    check(r.returncode == 2 and "--server-key" in r.stderr,
          "--curve-keys without --server-key is a usage error", r.stderr)

    # --allow alone, a bad allow-list line, --curve-secret alone.
    r = run([RECALLD, "--model", MODEL, "--data", data, "--allow", allow])
    check(r.returncode == 2 and "--curve-secret" in r.stderr, "--allow needs --curve-secret",
          r.stderr)
    bad = os.path.join(tmp, "allow-bad")
    with open(bad, "w") as f:
        f.write("# ok\n%s alice\nnot-a-key bob\n" % pub)
    r = run([RECALLD, "--model", MODEL, "--data", data, "--curve-secret",
             os.path.join(kd, "server.key"), "--allow", bad])
    check(r.returncode == 2 and "line 3" in r.stderr, "a bad allow-list line is named", r.stderr)
    check(not os.path.exists(data), "nothing created after the refusals")


def part_listen(tmp):
    data = os.path.join(tmp, "open")
    for ep in ("tcp://0.0.0.0:%d" % free_port(), "tcp://*:%d" % free_port()):
        r = run([RECALLD, "--model", MODEL, "--data", data, "--listen", ep])
        check(r.returncode == 2 and "--insecure" in r.stderr and "--curve-secret" in r.stderr
              and "127.0.0.1" in r.stderr, "listen on %s without CURVE is refused" % ep,
              r.stderr)
    r = run([RECALLD, "--model", MODEL, "--data", data, "--listen",
             "tcp://127.0.0.1:%d" % free_port(), "--http", "0.0.0.0:%d" % free_port()])
    check(r.returncode == 2 and "--http-token" in r.stderr,
          "HTTP on a non-loopback address without a token is refused", r.stderr)
    check(not os.path.exists(data), "nothing created by the refused starts")
    # --insecure runs; and without keys every client is the one identity "local".
    d = Daemon(tmp, "insecure", ["--insecure", "--max-sessions-per-client", "1"])
    port = d.endpoint.rsplit(":", 1)[1]
    d.extra += ["--listen", "tcp://0.0.0.0:%s" % port]
    try:
        d.start()
        check("--insecure" in d.log(), "--insecure is logged as a warning", d.log())
        r1 = Raw(d.endpoint)
        a = r1.call("create_session", session="one")
        r2 = Raw(d.endpoint)
        b = r2.call("create_session", session="two")
        check(a and a.status.code == 0 and a.create_session.info.owner == "local",
              "first session of 'local'", a)
        check(b and b.status.code == -7 and "'local'" in b.status.message and
              "--max-sessions-per-client 1" in b.status.message,
              "another keyless client is the same identity: refused", b)
        r1.close()
        r2.close()
    finally:
        check(d.stop() == 0, "insecure recalld exits 0")


def make_keys(tmp):
    kd = os.path.join(tmp, "k")
    for name in ("server", "alice", "bob", "mallory"):
        r = run([RECALL, "keygen", kd, "--name", name, "--quiet"])
        assert r.returncode == 0, r.stderr
    allow = os.path.join(tmp, "allow")
    with open(allow, "w") as f:
        f.write("# the clients let in\n\n")
        f.write("%s alice   # Alice's laptop\n" % zpl_key(os.path.join(kd, "alice.pub"), "public"))
        f.write("%s bob\n" % zpl_key(os.path.join(kd, "bob.pub"), "public"))
    k = {}
    for name in ("server", "alice", "bob", "mallory"):
        k[name] = {"key": os.path.join(kd, name + ".key"), "pub": os.path.join(kd, name + ".pub"),
                   "public": zpl_key(os.path.join(kd, name + ".key"), "public"),
                   "secret": zpl_key(os.path.join(kd, name + ".key"), "secret")}
    return k, allow


def stats(d, keys):
    r, j = recall(d.endpoint, keys, "stats")
    return j or {}


def part_curve(tmp, k, allow):
    spub = k["server"]["pub"]
    alice = (k["alice"]["key"], spub)
    d = Daemon(tmp, "curve", ["--curve-secret", k["server"]["key"], "--allow", allow],
               keys=alice, http=True)
    try:
        d.start()
        check(k["server"]["public"] in d.log(), "the daemon logs its public key")
        s0 = stats(d, alice)
        check(s0.get("auth_refused") == 0, "auth_refused starts at 0", s0)
        text = os.path.join(tmp, "t.txt")
        with open(text, "w") as f:
            f.write("The quick brown fox jumps over the lazy dog. " * 20)
        r, j = recall(d.endpoint, alice, "ingest", "notes", text)
        check(r.returncode == 0, "an allowed key ingests", r.stderr)
        r, j = recall(d.endpoint, alice, "info", "notes")
        check(r.returncode == 0 and j and j.get("owner") == "alice" and j.get("tokens", 0) > 0,
              "the session's owner is the key's name", j)
        r, j = recall(d.endpoint, alice, "ask", "notes", "What jumps?", "-n", "4",
                      "--temperature", "0")
        check(r.returncode == 0, "an allowed key asks", r.stderr)
        # The environment is the other way to give the keys.
        env = dict(os.environ, RECALL_CURVE_KEYS=k["bob"]["key"], RECALL_SERVER_KEY=spub)
        r = run([RECALL, "--connect", d.endpoint, "health"], env=env)
        check(r.returncode == 0, "RECALL_CURVE_KEYS / RECALL_SERVER_KEY connect", r.stderr)

        r, _ = recall(d.endpoint, (k["mallory"]["key"], spub), "health")
        check(r.returncode == 3 and "refused this client's CURVE key" in r.stderr,
              "an unlisted key is refused, and told so", r.stderr)
        r, _ = recall(d.endpoint, None, "sessions")
        check(r.returncode == 3 and "requires CURVE" in r.stderr,
              "a client without keys is refused, and told to use CURVE", r.stderr)
        r, _ = recall(d.endpoint, (k["alice"]["key"], k["bob"]["pub"]), "health")
        check(r.returncode == 3 and "--server-key" in r.stderr,
              "a wrong server key fails its handshake, and says so", r.stderr)
        # Raw peers get no answer at all.
        for what, raw in (("unlisted key", Raw(d.endpoint, k["mallory"]["public"],
                                               k["mallory"]["secret"], k["server"]["public"])),
                          ("no key", Raw(d.endpoint))):
            rid = raw.send("list_sessions")
            check(raw.final(rid, 1500) is None, "a raw peer with %s gets no answer" % what)
            raw.close()
        good = Raw(d.endpoint, k["bob"]["public"], k["bob"]["secret"], k["server"]["public"])
        resp = good.call("health")
        check(resp is not None and resp.status.code == 0 and resp.health.ok,
              "a raw peer with a listed key is answered", resp)
        good.close()
        # The Python client (clients/python) with the same key files.
        py = python_client(tmp)
        with py.Client(d.endpoint, curve_keys=k["bob"]["key"], server_key=spub) as c:
            h = c.health()
            check(h.get("ok") if isinstance(h, dict) else getattr(h, "ok", False),
                  "the Python client connects with CURVE keys", h)
        try:
            with py.Client(d.endpoint, connect_timeout=1, curve_keys=k["mallory"]["key"],
                           server_key=spub) as c:
                c.health()
            check(False, "the Python client with an unlisted key is refused")
        except py.RecallError:
            check(True, "the Python client with an unlisted key is refused")
        time.sleep(0.3)
        s1 = stats(d, alice)
        check(s1.get("auth_refused", 0) >= 4, "refusals are counted in Stats.auth_refused", s1)
        check("refused" in d.log() and k["mallory"]["public"] in d.log(),
              "a refused key is logged", d.log())
        lines = [ln for ln in d.log().splitlines() if "refused" in ln]
        check(len(lines) <= 10, "refusals are logged rate-limited (%d lines)" % len(lines))

        # The HTTP gateway is a client of the CURVE socket: it works, as "http".
        st, body = d.http("GET", "/health")
        check(st == 200 and json.loads(body).get("ok"), "HTTP /health under CURVE", body)
        st, body = d.http("GET", "/v1/sessions")
        check(st == 200 and "notes" in body, "HTTP lists the sessions under CURVE", body)
        st, body = d.http("POST", "/v1/sessions/web/ingest", "Some text from the web. " * 8)
        check(st == 200, "HTTP ingest under CURVE", body)
        r, j = recall(d.endpoint, alice, "info", "web")
        check(j and j.get("owner") == "http", "the gateway's sessions are owned by 'http'", j)
        st, body = d.http("POST", "/v1/completions",
                          json.dumps({"model": "web", "prompt": "The quick", "max_tokens": 3}))
        check(st == 200 and "choices" in body, "HTTP completion under CURVE", body)
        st, body = d.http("GET", "/metrics")
        m = re.search(r"^recall_auth_refused_total (\d+)", body, re.M)
        check(m and int(m.group(1)) >= 4, "/metrics has recall_auth_refused_total", body[-500:])
    finally:
        check(d.stop() == 0, "CURVE recalld exits 0 on SIGTERM", d.log())


def info_of(c, name):
    r = c.call("session_info", session=name)
    return r.session_info.info if r and r.status.code == 0 else None


def part_limits(tmp, k, allow):
    spub = k["server"]["public"]
    alice_cli = (k["alice"]["key"], k["server"]["pub"])
    extra = ["--curve-secret", k["server"]["key"], "--allow", allow,
             "--max-sessions-per-client", "2", "--max-tokens-per-session", "1000",
             "--max-disk-per-client", "150K", "--max-requests-per-client", "2",
             "--max-ask-tokens", "40", "--max-message-bytes", "64K"]
    d = Daemon(tmp, "limits", extra, keys=alice_cli)
    d.start()
    alice = Raw(d.endpoint, k["alice"]["public"], k["alice"]["secret"], spub)
    bob = Raw(d.endpoint, k["bob"]["public"], k["bob"]["secret"], spub)
    rows = os.path.join(d.data, "rows")
    try:
        help_ = run([RECALLD, "--help"]).stdout
        for flag in ("--max-sessions-per-client", "--max-tokens-per-session",
                     "--max-disk-per-client", "--max-requests-per-client", "--max-ask-tokens",
                     "--max-message-bytes", "--curve-secret", "--allow", "--insecure"):
            check(flag in help_, "recalld --help lists %s" % flag)
        check("(default 128)" in help_ and "(default 64;" in help_ and "(default 8192)" in help_,
              "recalld --help gives the defaults")

        # Sessions per client.
        for name in ("a1", "a2"):
            r = alice.call("create_session", session=name)
            check(r and r.status.code == 0 and r.create_session.info.owner == "alice",
                  "alice creates %s" % name, r)
        n0 = len(alice.call("list_sessions").list_sessions.sessions)
        r = alice.call("create_session", session="a3")
        check(r and r.status.code == -7 and "--max-sessions-per-client 2" in r.status.message
              and "'alice'" in r.status.message, "a third session is refused, naming the limit",
              r)
        ls = alice.call("list_sessions").list_sessions.sessions
        check(len(ls) == n0 and "a3" not in [s.name for s in ls],
              "the refused create changed nothing")
        r = bob.call("create_session", session="b1")
        check(r and r.status.code == 0, "bob is not held to alice's count", r)

        # Disk per client: 2 windows (128 KiB, and the tokens and record) fit in 150K, a
        # third window does not.
        r = alice.call("ingest", session="a1", seq=1, tokens=tokens(2 * WINDOW + 5))
        check(r and r.status.code == 0 and r.ingest.windows == 2, "alice ingests 2 windows", r)
        before, rows_before = info_of(alice, "a1"), dir_bytes(rows)
        r = alice.call("ingest", session="a1", seq=2, tokens=tokens(WINDOW, 200))
        check(r and r.status.code == -7 and "--max-disk-per-client" in r.status.message,
              "a chunk that would pass the disk quota is refused, naming it", r)
        after = info_of(alice, "a1")
        check(after.tokens == before.tokens and after.windows == before.windows and
              after.memory_bytes_disk == before.memory_bytes_disk and
              after.last_seq == before.last_seq and dir_bytes(rows) == rows_before,
              "the refused chunk wrote nothing", (before, after))
        r = alice.call("ingest", session="a1", seq=2, tokens=tokens(10, 300))
        check(r and r.status.code == 0, "a chunk that completes no window still fits", r)
        # The other client's disk is its own.
        r = bob.call("ingest", session="b1", seq=1, tokens=tokens(2 * WINDOW))
        check(r and r.status.code == 0, "bob's disk quota is his own", r)

        # Tokens per session (1000), checked before the disk quota.
        r = bob.call("create_session", session="b2")
        before, rows_before = info_of(bob, "b2"), dir_bytes(rows)
        r = bob.call("ingest", session="b2", seq=1, tokens=tokens(1001))
        check(r and r.status.code == -7 and "--max-tokens-per-session" in r.status.message and
              "1000" in r.status.message, "a session past 1000 tokens is refused", r)
        after = info_of(bob, "b2")
        check(after.tokens == 0 and after.last_seq == 0 and
              after.memory_bytes_disk == before.memory_bytes_disk and
              dir_bytes(rows) == rows_before, "the refused chunk wrote nothing", after)

        # Ask length: max_tokens and question tokens.
        r = alice.call("ask", session="a1", question="hi", max_tokens=41)
        check(r and r.status.code == -7 and "--max-ask-tokens" in r.status.message and
              "41" in r.status.message, "max_tokens 41 > 40 is refused", r)
        r = alice.call("ask", session="a1", question_tokens=tokens(41), max_tokens=2)
        check(r and r.status.code == -7 and "41 tokens" in r.status.message,
              "a 41-token question is refused", r)
        r = alice.call("ask", session="a1", question="x " * 200, max_tokens=2)
        check(r and r.status.code == -7 and "--max-ask-tokens" in r.status.message,
              "a long text question is refused (tokenized to count)", r)
        r = alice.call("ask", session="a1", question_tokens=tokens(40), max_tokens=40,
                       ignore_eos=True)
        check(r and r.status.code == 0 and r.ask.generated == 40,
              "a 40-token question with 40 tokens to generate runs", r)
        check(info_of(alice, "a1").tokens == 2 * WINDOW + 5 + 10,
              "asks without append change no session")

        # Message size: 64K.
        r = alice.call("ingest", session="a1", seq=3, text="a" * (70 * 1024))
        check(r and r.status.code == -7 and "--max-message-bytes" in r.status.message,
              "a 70K message is refused, naming --max-message-bytes", r)

        # Requests in flight: 6 Scores pipelined, at most 2 run or wait at once.
        ids = [alice.send("score", tokens=tokens(900), want_logprobs=False) for _ in range(6)]
        res = alice.finals(ids)
        ok = [r for r in res if r and r.status.code == 0]
        busy = [r for r in res if r and r.status.code == -9 and
                "--max-requests-per-client 2" in r.status.message]
        check(len(ok) >= 2 and len(busy) >= 1 and len(ok) + len(busy) == 6,
              "pipelined requests past 2 in flight are refused as busy (%d ok, %d busy)" %
              (len(ok), len(busy)), [(r.status.code, r.status.message) for r in res if r])
        ids = [alice.send("score", tokens=tokens(100)) for _ in range(2)]
        res = alice.finals(ids)
        check(all(r and r.status.code == 0 for r in res),
              "the in-flight count comes back down: 2 more run", res)

        s = stats(d, alice_cli)
        check(s.get("limit_refused", 0) >= 8, "Stats.limit_refused counts the refusals", s)
    finally:
        alice.close()
        bob.close()
        check(d.stop() == 0, "limits recalld exits 0", d.log())

    # After a restart the quotas still hold: the owners are in the records.
    d.start()
    alice = Raw(d.endpoint, k["alice"]["public"], k["alice"]["secret"], spub)
    try:
        i = info_of(alice, "a1")
        check(i is not None and i.owner == "alice", "owner survives the restart", i)
        r = alice.call("create_session", session="a3")
        check(r and r.status.code == -7 and "--max-sessions-per-client" in r.status.message,
              "sessions per client still hold after a restart", r)
        r = alice.call("ingest", session="a1", seq=3, tokens=tokens(WINDOW, 400))
        check(r and r.status.code == -7 and "--max-disk-per-client" in r.status.message,
              "disk per client still holds after a restart", r)
        r = alice.call("drop_session", session="a2")
        r = alice.call("create_session", session="a3")
        check(r and r.status.code == 0, "after a drop there is room again", r)
    finally:
        alice.close()
        check(d.stop() == 0, "restarted recalld exits 0", d.log())


def strip_owners(data_dir):
    """Rewrites every session record in data_dir's catalogue without its owner, as recalld
    wrote them before owners were kept (mdb_dump / mdb_load from lmdb-utils). Returns the
    number of records rewritten."""
    r = run(["mdb_dump", "-s", "sessions", data_dir])
    if r.returncode != 0:
        raise RuntimeError("mdb_dump: " + r.stderr)
    lines = r.stdout.splitlines()
    end = lines.index("HEADER=END")
    out, n = lines[:end + 1], 0
    body = lines[end + 1:]
    i = 0
    while i < len(body):
        if body[i] == "DATA=END":
            out.append(body[i])
            break
        key, val = body[i], body[i + 1]
        rec = pb.SessionRecord.FromString(bytes.fromhex(val.strip()))
        rec.info.ClearField("owner")
        out += [key, " " + rec.SerializeToString().hex()]
        n += 1
        i += 2
    path = os.path.join(data_dir, "..", "sessions.dump")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    r = run(["mdb_load", "-s", "sessions", "-f", path, data_dir])
    if r.returncode != 0:
        raise RuntimeError("mdb_load: " + r.stderr)
    return n


def part_old_records(tmp, k, allow):
    if not (shutil.which("mdb_dump") and shutil.which("mdb_load")):
        print("skip: old records (no mdb_dump / mdb_load)")
        return
    spub = k["server"]["public"]
    d = Daemon(tmp, "old", ["--curve-secret", k["server"]["key"], "--allow", allow,
                            "--max-sessions-per-client", "1"],
               keys=(k["alice"]["key"], k["server"]["pub"]))
    d.start()
    alice = Raw(d.endpoint, k["alice"]["public"], k["alice"]["secret"], spub)
    r = alice.call("create_session", session="old")
    check(r and r.status.code == 0 and r.create_session.info.owner == "alice",
          "alice's session before the rewrite", r)
    alice.close()
    check(d.stop() == 0, "recalld exits 0 before the rewrite")
    check(strip_owners(d.data) == 1, "one record rewritten without its owner")
    d.start()
    alice = Raw(d.endpoint, k["alice"]["public"], k["alice"]["secret"], spub)
    try:
        i = info_of(alice, "old")
        check(i is not None and i.owner == "local" and i.tier != "unavailable",
              "a record without an owner reads as 'local' and stays available", i)
        r = alice.call("create_session", session="new")
        check(r and r.status.code == 0, "it does not count against alice's quota", r)
    finally:
        alice.close()
        check(d.stop() == 0, "recalld exits 0 after the rewrite", d.log())


def main():
    for p in (RECALL, RECALLD):
        if not os.path.exists(p):
            print("FAIL missing %s" % p)
            return 1
    if not zmq.has("curve"):
        print("SKIP: this libzmq has no CURVE")
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-auth-")
    try:
        load_proto(tmp)
        part_keys(tmp)
        part_listen(tmp)
        k, allow = make_keys(tmp)
        part_curve(tmp, k, allow)
        part_limits(tmp, k, allow)
        part_old_records(tmp, k, allow)
    except Exception as e:  # a harness failure is a failure, with its reason
        import traceback
        traceback.print_exc()
        check(False, "harness: %s" % e)
    finally:
        if os.environ.get("AUTH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
