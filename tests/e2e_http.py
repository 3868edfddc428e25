#!/usr/bin/python3
"""e2e_http.py — recalld's HTTP gateway end to end, on the tiny-fot model (window 64).

Starts recalld --http on free ports and drives it with curl and Python's http.client:
ingest over HTTP (checked against `recall ingest` of the same text), sessions, models and
info; completions plain and streamed (the SSE events' joined text equals the plain answer
and `recall ask`'s answer for the same session, prompt and seed, greedy and sampled); chat
completions through the documented template; stop strings; /metrics parsed line by line
(every line valid, every name recall_*, HELP and TYPE for each family, counters grow after
requests; the daemon's own families too: readiness, queue, ingest time and speed, prefill
and append histograms, GPU memory); every error status with OpenAI's error shape (400, 401, 404, 405, 413); start-up
refusals (bad address, port in use); drop.

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA, RECALL_SOURCE_DIR.
Prints "N passed, N failed"; exits 1 on any failure."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_env import DATA, MODEL, RECALL, RECALLD, SRC, BUILD, check, free_port, summary  # noqa: E402,F401
CURL = shutil.which("curl")
MAX_BODY = 65536

class Daemon:
    def __init__(self, tmp, name, extra=()):
        self.data = os.path.join(tmp, name)
        self.endpoint = "tcp://127.0.0.1:%d" % free_port()
        self.port = free_port()
        self.log_path = os.path.join(tmp, name + ".log")
        self.extra = list(extra)
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [RECALLD, "--model", MODEL, "--data", self.data, "--listen", self.endpoint,
             "--http", "127.0.0.1:%d" % self.port, "--http-max-body", str(MAX_BODY),
             "--threads", "2"] + self.extra, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("recalld exited with %d:\n%s" % (self.proc.returncode, self.log()))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health", headers=self.auth())
                r = c.getresponse()
                r.read()
                if r.status in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the HTTP gateway did not answer within 120 s:\n" + self.log())

    def auth(self):
        return {}

    def stop(self):
        if self.proc:
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

    def req(self, method, path, body=None, headers=None, timeout=300):
        """(status, headers, body bytes) over http.client."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def json(self, method, path, body=None, headers=None):
        st, h, data = self.req(method, path, body, headers)
        try:
            return st, json.loads(data)
        except ValueError:
            return st, {"unparsed": data.decode("utf-8", "replace")}

    def curl(self, *args, stdin=None):
        """Runs curl against the gateway; returns (exit code, stdout text)."""
        r = subprocess.run([CURL, "-sS", *args], capture_output=True, input=stdin, timeout=300)
        return r.returncode, r.stdout.decode("utf-8", "replace")

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)


def recall(d, *args):
    r = subprocess.run([RECALL, *args, "--connect", d.endpoint, "--json"], capture_output=True,
                       text=True, timeout=300)
    try:
        return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return r.returncode, {"stderr": r.stderr, "stdout": r.stdout}


def corpus_text(nbytes):
    with open(os.path.join(SRC, "tests", "data", "corpus.txt"), encoding="ascii") as f:
        lines = f.read().splitlines(keepends=True)
    out, size, i = [], 0, 0
    while size < nbytes:
        out.append(lines[i % len(lines)])
        size += len(lines[i % len(lines)])
        i += 1
    return "".join(out)


def error_shape(st, body, status, code):
    e = body.get("error") if isinstance(body, dict) else None
    return st == status and isinstance(e, dict) and isinstance(e.get("message"), str) and \
        e.get("message") and isinstance(e.get("type"), str) and e.get("code") == code


def sse_events(text):
    """The data payloads of an SSE stream; checks the framing as it goes."""
    events = []
    check(text.endswith("\n\n"), "SSE stream ends with a blank line", text[-200:])
    for block in text.split("\n\n"):
        if not block:
            continue
        check(block.startswith("data: ") and "\n" not in block, "SSE event is one data line", block)
        events.append(block[len("data: "):])
    return events


def stream_text(d, path, body, chat):
    """POSTs a streamed completion with curl -N; returns (joined text, finish, chunks)."""
    rc, out = d.curl("-N", "-H", "Content-Type: application/json", "-d", json.dumps(body),
                     d.url(path))
    check(rc == 0, "curl stream exit 0", out)
    ev = sse_events(out)
    check(ev and ev[-1] == "[DONE]", "stream ends with [DONE]", ev[-3:])
    chunks = [json.loads(e) for e in ev[:-1]]
    obj = "chat.completion.chunk" if chat else "text_completion"
    check(all(c.get("object") == obj for c in chunks), "every chunk is a " + obj, chunks[:2])
    check(len({c.get("id") for c in chunks}) == 1, "one id for the stream's chunks")
    text, finish = "", None
    for c in chunks:
        if not c.get("choices"):
            continue
        ch = c["choices"][0]
        text += (ch.get("delta", {}).get("content") or "") if chat else ch.get("text", "")
        if ch.get("finish_reason"):
            finish = ch["finish_reason"]
    return text, finish, chunks


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"'
                         r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*)?\})? '
                         r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def parse_metrics(text):
    """Text exposition format -> {(name, labels): value}; every line must be valid."""
    samples, helps, types = {}, set(), {}
    check(text.endswith("\n"), "metrics end with a newline")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            check(len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram"),
                  "TYPE line valid", line)
            types[parts[2]] = parts[3]
            continue
        m = METRIC_LINE.match(line)
        if not check(m is not None, "metric line valid", line):
            continue
        name = m.group(1)
        check(name.startswith("recall_"), "metric named recall_*", line)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        check(family in helps and family in types, "HELP and TYPE for " + family, line)
        samples[(name, m.group(3) or "")] = float(m.group(7))
    return samples, types


def main():
    for p in (RECALL, RECALLD):
        if not os.access(p, os.X_OK):
            print("missing %s" % p)
            return 1
    if not os.path.isfile(os.path.join(MODEL, "config.json")):
        print("missing tiny model %s (run the make_tiny_models fixture)" % MODEL)
        return 1
    if not CURL:
        print("skipped: no curl (scripts/deps.sh installs it)")
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-e2e-http-")
    d = Daemon(tmp, "a")
    try:
        d.start()
        run_all(d, tmp)
    finally:
        d.stop()
    startup_refusals(tmp, d)
    token_checks(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return summary()


def run_all(d, tmp):
    # --- ingest over HTTP (curl, streamed upload), checked against recall ingest ---------
    text = corpus_text(4000)
    path = os.path.join(tmp, "book.txt")
    with open(path, "w") as f:
        f.write(text)
    rc, out = d.curl("-X", "POST", "--data-binary", "@" + path, d.url("/v1/sessions/book/ingest"))
    j = json.loads(out) if rc == 0 and out.startswith("{") else {}
    check(rc == 0 and j.get("session") == "book" and j.get("bytes") == len(text),
          "HTTP ingest answers with the bytes taken", out)
    check(j.get("tokens_added", 0) > 64 and j.get("tokens") == j.get("tokens_added") and
          j.get("windows") == j.get("tokens", 0) // 64 and j.get("last_seq") == j.get("chunks"),
          "HTTP ingest counts", j)
    rc, r = recall(d, "ingest", "ref", path)
    rc, ref = recall(d, "info", "ref")
    check(rc == 0 and ref.get("tokens") == j.get("tokens"),
          "HTTP ingest gives the tokens recall ingest gives", (ref, j))
    # A second upload continues the session (seq numbers go on).
    st, j2 = d.json("POST", "/v1/sessions/book/ingest", "More text.\n")
    check(st == 200 and j2.get("tokens") == j["tokens"] + j2.get("tokens_added", -1) and
          j2.get("last_seq") == j["last_seq"] + 1, "second HTTP ingest appends", j2)
    st, bad = d.json("POST", "/v1/sessions/book/ingest", b"\xff\xfe not utf-8")
    check(error_shape(st, bad, 400, "invalid_text"), "ingest of invalid UTF-8: 400", (st, bad))
    st, bad = d.json("POST", "/v1/sessions/bad%20name!/ingest", "x")
    check(error_shape(st, bad, 400, "invalid_request"), "ingest into a bad name: 400", (st, bad))

    # --- sessions, info, models -----------------------------------------------------------
    st, ls = d.json("GET", "/v1/sessions")
    names = [s.get("name") for s in ls.get("sessions", [])]
    check(st == 200 and sorted(names) == ["book", "ref"], "GET /v1/sessions lists both", ls)
    st, info = d.json("GET", "/v1/sessions/book")
    check(st == 200 and info.get("name") == "book" and info.get("tokens") == j2.get("tokens") and
          info.get("options", {}).get("window") == 64, "GET /v1/sessions/book", info)
    st, models = d.json("GET", "/v1/models")
    check(st == 200 and models.get("object") == "list" and
          sorted(m.get("id") for m in models.get("data", [])) == ["book", "ref"] and
          all(m.get("object") == "model" for m in models["data"]), "GET /v1/models", models)
    st, h = d.json("GET", "/health")
    check(st == 200 and h.get("ok") is True and h.get("model"), "GET /health", h)

    # --- metrics before ---------------------------------------------------------------------
    st, hdr, m0 = d.req("GET", "/metrics")
    check(st == 200 and hdr.get("Content-Type", "").startswith("text/plain"), "GET /metrics", hdr)
    before, types = parse_metrics(m0.decode())
    check(before.get(("recall_up", "")) == 1, "recall_up 1", before.get(("recall_up", "")))
    for fam, t in (("recall_requests_total", "counter"), ("recall_ingest_tokens_total", "counter"),
                   ("recall_memory_bytes", "gauge"), ("recall_evictions_total", "counter"),
                   ("recall_gpu_memory_used_bytes", "gauge"),
                   ("recall_gpu_memory_budget_bytes", "gauge"),
                   ("recall_request_duration_seconds", "histogram"),
                   ("recall_http_requests_total", "counter"),
                   ("recall_http_request_duration_seconds", "histogram"),
                   # issue 18 point 4: ingest speed, readiness, queue, worker latency, GPU
                   ("recall_ingest_seconds_total", "counter"),
                   ("recall_ingest_tokens_per_second", "gauge"),
                   ("recall_ingest_append_seconds", "histogram"),
                   ("recall_ask_prefill_seconds", "histogram"),
                   ("recall_commits_total", "counter"),
                   ("recall_commit_seconds_total", "counter"),
                   ("recall_ready", "gauge"), ("recall_queue_jobs", "gauge"),
                   ("recall_worker_busy", "gauge"),
                   ("recall_replies_dropped_total", "counter"),
                   ("recall_gpu_device_memory_bytes", "gauge")):
        check(types.get(fam) == t, "metric family %s is a %s" % (fam, t), types.get(fam))
    # The book was ingested twice before this scrape: its time, speed and appends are there.
    check(before.get(("recall_ingest_seconds_total", ""), 0) > 0, "ingest seconds counted",
          before.get(("recall_ingest_seconds_total", "")))
    check(before.get(("recall_ingest_tokens_per_second", ""), 0) > 0, "ingest speed reported",
          before.get(("recall_ingest_tokens_per_second", "")))
    check(before.get(("recall_ingest_append_seconds_count", ""), 0) >= 2 and
          before.get(("recall_commits_total", ""), 0) >= 2, "appends observed",
          (before.get(("recall_ingest_append_seconds_count", "")),
           before.get(("recall_commits_total", ""))))
    check(before.get(("recall_ready", "")) == 1, "recall_ready 1 once the weights are in")
    check(before.get(("recall_queue_jobs", "")) == 0, "nothing queued at rest")
    gpu = {st: before.get(("recall_gpu_device_memory_bytes", 'state="%s"' % st))
           for st in ("total", "free", "used")}
    if h.get("device", "").startswith("cpu"):
        check(gpu == {"total": 0, "free": 0, "used": 0}, "no GPU memory on the CPU backend", gpu)
    else:
        check(gpu["total"] > 0 and gpu["used"] == gpu["total"] - gpu["free"], "GPU memory", gpu)
    check(before.get(("recall_ingest_tokens_total", "")) >= ref["tokens"] * 2,
          "ingest tokens counted", before.get(("recall_ingest_tokens_total", "")))
    for tier in ("device", "host", "disk"):
        check(('recall_memory_bytes', 'tier="%s"' % tier) in before, "memory bytes of " + tier)

    # --- completions: plain == streamed == recall ask ---------------------------------------
    q = "What happened next?"
    for temp, seed in ((0, 0), (0.9, 7)):
        body = {"model": "book", "prompt": q, "max_tokens": 12, "temperature": temp, "seed": seed}
        st, c = d.json("POST", "/v1/completions", body)
        ok = check(st == 200 and c.get("object") == "text_completion" and c.get("model") == "book" and
                   c.get("choices") and c["choices"][0].get("finish_reason") in ("stop", "length"),
                   "completion t=%g" % temp, c)
        if not ok:
            continue
        plain = c["choices"][0]["text"]
        u = c.get("usage", {})
        check(u.get("completion_tokens", 0) >= 1 and u.get("completion_tokens") <= 12 and
              u.get("prompt_tokens", 0) > 0 and
              u.get("total_tokens") == u["prompt_tokens"] + u["completion_tokens"], "usage", u)
        streamed, finish, chunks = stream_text(d, "/v1/completions", dict(body, stream=True), False)
        check(streamed == plain, "streamed text == plain text (t=%g)" % temp, (streamed, plain))
        check(finish == c["choices"][0]["finish_reason"], "same finish_reason", (finish, c))
        check(len([x for x in chunks if x["choices"][0]["text"]]) >= 2 or len(plain) < 2,
              "one event per token, not one blob", len(chunks))
        args = ["ask", "book", q, "--max-tokens", "12", "--temperature", str(temp)]
        if seed:
            args += ["--seed", str(seed)]
        rc, a = recall(d, *args)
        check(rc == 0 and a.get("answer") == plain, "recall ask == HTTP (t=%g)" % temp, (a, plain))
        check(a.get("generated") == u.get("completion_tokens") and
              a.get("prompt_tokens") == u.get("prompt_tokens"), "usage == recall ask counts",
              (a, u))
    # The session extension wins over model.
    st, c2 = d.json("POST", "/v1/completions",
                    {"model": "gpt-3.5-turbo-instruct", "session": "book", "prompt": q,
                     "max_tokens": 12})
    check(st == 200 and c2["choices"][0]["text"] == a_greedy(d, q, 12),
          "session field names the session", c2)
    # Asking changes nothing in the session.
    st, info2 = d.json("GET", "/v1/sessions/book")
    check(info2.get("tokens") == info.get("tokens"), "completions leave the session as it was")

    # --- concurrent streams, and a client that leaves mid-stream ------------------------------
    greedy = a_greedy(d, q, 12)
    body = {"model": "book", "prompt": q, "max_tokens": 12, "stream": True}
    results = [None] * 3

    def one(i):
        try:
            results[i] = stream_text(d, "/v1/completions", body, False)[0]
        except Exception as e:  # reported by the check below
            results[i] = repr(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    check(results == [greedy] * 3, "three concurrent streams each get the answer", results)
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=300)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, max_tokens=40)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first = r.readline()
    check(r.status == 200 and r.getheader("Content-Type") == "text/event-stream" and
          first.startswith(b"data: {"), "http.client reads a stream's first event", first)
    c.close()  # gone before the end: the gateway drops the rest
    st, after_leave = d.json("POST", "/v1/completions", dict(body, stream=False))
    check(st == 200 and after_leave["choices"][0]["text"] == greedy,
          "a completion after a client left mid-stream", after_leave)

    # --- stop strings ------------------------------------------------------------------------
    full = a_greedy(d, q, 12)
    stop = next((full[i:i + 2] for i in range(1, len(full) - 1) if full[i:i + 2].strip()), None)
    if check(stop is not None, "a stop string to use", full):
        want = full[:full.index(stop)]
        body = {"model": "book", "prompt": q, "max_tokens": 12, "stop": [stop, "\x01never"]}
        st, c = d.json("POST", "/v1/completions", body)
        check(st == 200 and c["choices"][0]["text"] == want and
              c["choices"][0]["finish_reason"] == "stop", "stop string cuts the answer",
              (c, want, stop))
        check(c.get("usage", {}).get("prompt_tokens", 0) > 0,
              "usage is complete after a stop string", c.get("usage"))
        s_text, s_finish, _ = stream_text(d, "/v1/completions", dict(body, stream=True), False)
        check(s_text == want and s_finish == "stop", "stop string cuts the stream",
              (s_text, want))

    # --- chat ----------------------------------------------------------------------------------
    msgs = [{"role": "system", "content": "Answer from the book."},
            {"role": "user", "content": "Who was there?"}]
    body = {"model": "book", "messages": msgs, "max_tokens": 10}
    st, c = d.json("POST", "/v1/chat/completions", body)
    ok = check(st == 200 and c.get("object") == "chat.completion" and
               c["choices"][0]["message"]["role"] == "assistant", "chat completion", c)
    if ok:
        content = c["choices"][0]["message"]["content"]
        prompt = "System: Answer from the book.\nUser: Who was there?\nAssistant:"
        check(content == a_greedy(d, prompt, 10), "chat == recall ask of the template", content)
        s_text, finish, chunks = stream_text(d, "/v1/chat/completions", dict(body, stream=True,
                                             stream_options={"include_usage": True}), True)
        check(chunks[0]["choices"][0]["delta"].get("role") == "assistant",
              "first chat chunk has the role", chunks[0])
        check(s_text == content, "chat streamed == plain", (s_text, content))
        check(chunks[-1].get("usage", {}).get("completion_tokens") ==
              c["usage"]["completion_tokens"] and chunks[-1]["choices"] == [],
              "include_usage: a last chunk with usage", chunks[-1])

    # --- errors ----------------------------------------------------------------------------------
    st, e = d.json("POST", "/v1/completions", "{not json")
    check(error_shape(st, e, 400, "invalid_json"), "bad JSON: 400", (st, e))
    st, e = d.json("POST", "/v1/completions", {"prompt": "x"})
    check(error_shape(st, e, 400, "missing_field"), "no model: 400", (st, e))
    st, e = d.json("POST", "/v1/completions", {"model": "book"})
    check(error_shape(st, e, 400, "missing_field"), "no prompt: 400", (st, e))
    st, e = d.json("POST", "/v1/chat/completions", {"model": "book", "messages": "hi"})
    check(error_shape(st, e, 400, "invalid_value"), "bad messages: 400", (st, e))
    st, e = d.json("POST", "/v1/completions", {"model": "book", "prompt": "x", "temperature": -1})
    check(error_shape(st, e, 400, "invalid_value"), "negative temperature: 400", (st, e))
    st, e = d.json("POST", "/v1/completions", {"model": "nosuch", "prompt": "x"})
    check(error_shape(st, e, 404, "session_not_found"), "unknown session: 404", (st, e))
    st, e = d.json("POST", "/v1/completions", {"model": "nosuch", "prompt": "x", "stream": True})
    check(error_shape(st, e, 404, "session_not_found"), "unknown session, streamed: 404", (st, e))
    st, e = d.json("GET", "/v1/sessions/nosuch")
    check(error_shape(st, e, 404, "session_not_found"), "info of unknown session: 404", (st, e))
    st, e = d.json("DELETE", "/v1/sessions/nosuch")
    check(error_shape(st, e, 404, "session_not_found"), "drop of unknown session: 404", (st, e))
    st, e = d.json("GET", "/v1/nothing")
    check(error_shape(st, e, 404, "not_found"), "unknown path: 404", (st, e))
    st, e = d.json("GET", "/v1/chat/completions")
    check(error_shape(st, e, 405, "method_not_allowed"), "GET on completions: 405", (st, e))
    st, e = d.json("POST", "/metrics", "x")
    check(error_shape(st, e, 405, "method_not_allowed"), "POST on metrics: 405", (st, e))
    big = {"model": "book", "prompt": "a" * (MAX_BODY + 10)}
    st, e = d.json("POST", "/v1/completions", big)
    check(error_shape(st, e, 413, "body_too_large"), "body over --http-max-body: 413", (st, e))
    rc, out = d.curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", d.url("/v1/models"))
    check(rc == 0 and out == "405", "curl PUT /v1/models: 405", out)

    # --- metrics after: counters grew ------------------------------------------------------------
    st, hdr, m1 = d.req("GET", "/metrics")
    after, _ = parse_metrics(m1.decode())
    ask_ok = ("recall_requests_total", 'kind="ask",outcome="ok"')
    check(after.get(ask_ok, 0) >= before.get(ask_ok, 0) + 8, "asks counted",
          (before.get(ask_ok), after.get(ask_ok)))
    nf = ("recall_requests_total", 'kind="ask",outcome="not_found"')
    check(after.get(nf, 0) >= 2, "not found asks counted", after.get(nf))
    comp = ("recall_http_requests_total", 'route="completions",code="200"')
    check(after.get(comp, 0) >= before.get(comp, 0) + 6, "HTTP completions counted",
          (before.get(comp), after.get(comp)))
    for code in ("400", "404", "405", "413"):
        check(after.get(("recall_http_requests_total", 'route="completions",code="%s"' % code), 0)
              + after.get(("recall_http_requests_total", 'route="chat_completions",code="%s"' % code), 0)
              + after.get(("recall_http_requests_total", 'route="other",code="%s"' % code), 0)
              + after.get(("recall_http_requests_total", 'route="session",code="%s"' % code), 0)
              + after.get(("recall_http_requests_total", 'route="metrics",code="%s"' % code), 0)
              >= 1, "HTTP %s counted" % code)
    cnt = ("recall_request_duration_seconds_count", 'kind="ask"')
    check(after.get(cnt, 0) > before.get(cnt, 0), "ask latency observed")
    inf = ("recall_request_duration_seconds_bucket", 'kind="ask",le="+Inf"')
    check(after.get(inf) == after.get(cnt), "+Inf bucket == count")
    check(after.get(("recall_generated_tokens_total", ""), 0) >
          before.get(("recall_generated_tokens_total", ""), 0), "generated tokens grew")
    pre = ("recall_ask_prefill_seconds_count", "")
    check(after.get(pre, 0) >= before.get(pre, 0) + 8, "ask prefills observed",
          (before.get(pre), after.get(pre)))
    check(after.get(("recall_ask_prefill_seconds_bucket", 'le="+Inf"')) == after.get(pre),
          "prefill +Inf bucket == count")

    # --- drop -------------------------------------------------------------------------------
    st, dj = d.json("DELETE", "/v1/sessions/ref")
    check(st == 200 and dj.get("deleted") is True, "DELETE /v1/sessions/ref", dj)
    st, e = d.json("GET", "/v1/sessions/ref")
    check(st == 404, "dropped session is gone", (st, e))
    st, models = d.json("GET", "/v1/models")
    check([m["id"] for m in models.get("data", [])] == ["book"], "models after drop", models)


def a_greedy(d, q, n):
    rc, a = recall(d, "ask", "book", q, "--max-tokens", str(n), "--temperature", "0")
    check(rc == 0, "recall ask", a)
    return a.get("answer")


def startup_refusals(tmp, running):
    """A bad --http address and a port in use stop recalld with a clear message."""
    for addr, want in (("8080", "HOST:PORT"), ("127.0.0.1:70000", "port"),
                       ("127.0.0.1:%d" % running.port, None)):
        d = Daemon(tmp, "refuse")
        if want is None:  # the port in use: hold it while recalld starts
            holder = socket.socket()
            holder.bind(("127.0.0.1", 0))
            holder.listen(1)
            addr = "127.0.0.1:%d" % holder.getsockname()[1]
            want = "in use"
        else:
            holder = None
        r = subprocess.run([RECALLD, "--model", MODEL, "--data", d.data, "--listen", d.endpoint,
                            "--http", addr], capture_output=True, text=True, timeout=120)
        if holder:
            holder.close()
        check(r.returncode != 0 and want in r.stderr and addr in r.stderr,
              "recalld --http %s refused" % addr, (r.returncode, r.stderr))
    r = subprocess.run([RECALLD, "--model", MODEL, "--http", "127.0.0.1:1", "--http-token",
                        os.path.join(tmp, "no-such-token")], capture_output=True, text=True)
    check(r.returncode == 2 and "--http-token" in r.stderr, "missing token file refused",
          r.stderr)


def token_checks(tmp):
    tok = os.path.join(tmp, "token")
    with open(tok, "w") as f:
        f.write("  t0ken-xyz \n")
    d = Daemon(tmp, "tok", ["--http-token", tok])
    d.auth = lambda: {"Authorization": "Bearer t0ken-xyz"}
    try:
        d.start()
        for hdrs, what in (({}, "no header"), ({"Authorization": "Bearer wrong"}, "wrong token"),
                           ({"Authorization": "Bearer t0ken-xy"}, "a prefix"),
                           ({"Authorization": "Basic t0ken-xyz"}, "not bearer")):
            st, e = d.json("GET", "/v1/models", headers=hdrs)
            check(error_shape(st, e, 401, "invalid_api_key"), "401 with " + what, (st, e))
        st, e = d.json("POST", "/v1/sessions/x/ingest", "text", headers={})
        check(error_shape(st, e, 401, "invalid_api_key"), "401 on ingest", (st, e))
        st, e = d.json("GET", "/v1/sessions", headers={})
        check(st == 401, "no session was created by the refused ingest (401 first)", st)
        st, ls = d.json("GET", "/v1/sessions", headers=d.auth())
        check(st == 200 and ls.get("sessions") == [], "refused ingest created nothing", ls)
        rc, out = d.curl("-H", "Authorization: Bearer t0ken-xyz", d.url("/v1/models"))
        check(rc == 0 and json.loads(out).get("object") == "list", "curl with the token", out)
    finally:
        d.stop()


if __name__ == "__main__":
    sys.exit(main())
