#!/usr/bin/python3
"""e2e_chat.py — chat templates and stop strings through recalld, with real clients.

On a copy of the tiny-fot model with a tokenizer_config.json this test writes:

chat (issue 18 point 5)
  - with Llama-2-chat's template in tokenizer_config.json, /v1/chat/completions (curl) and
    `recall ask --chat --system` give the same answer, the same prompt token count, and say
    the template is llama2; the prompt token count is the session's pending tail plus the
    template's prompt tokenized independently here (Python sentencepiece, each text part
    between BOS/EOS on its own, BOS as its id);
  - --chat-template longllama-instruct overrides it: the same agreement, and the count of
    LongLLaMA-Instruct's pieces tokenized one by one;
  - a template recall does not know: recalld logs a warning and chat uses plain;
  - the llama2 template's refusal (roles that do not alternate) is a 400 over HTTP and an
    error from recall, not an answer.

stop strings (the daemon stops generating)
  - `recall ask --stop S` and HTTP "stop": the answer is the unstopped answer cut before
    the first S, stop_reason / finish_reason "stop", and fewer tokens generated than
    without (the daemon stopped, it did not just trim); streamed SSE gives the same text;
  - --append with a stop string appends the question and only the answer's tokens before it.

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA.
Prints "N passed, N failed"; exits 1 on any failure, 77 when it cannot run."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_env import DATA, MODEL, RECALL, RECALLD, SRC, BUILD, check, free_port, summary  # noqa: E402,F401

CURL = shutil.which("curl")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = "
          "messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception("
          "'Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
          "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
          "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "
          "'[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
OPENING = ("A chat between a user (denoted as USER:) and an artificial intelligence assistant "
           "(denoted as ASSISTANT:). The assistant gives helpful, detailed, and polite answers "
           "to the user's questions.\n\n")
SYSTEM = "Answer briefly."
QUESTION = "What is the pass key?"



class Daemon:
    def __init__(self, tmp, model, data, extra=()):
        self.endpoint = "ipc://%s/d-%d.sock" % (tmp, free_port())
        self.port = free_port()
        self.log_path = os.path.join(tmp, "recalld-%d.log" % self.port)
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("RECALLD_CONFIG", None)
        self.proc = subprocess.Popen(
            [RECALLD, "--no-config", "--model", model, "--data", data, "--listen", self.endpoint,
             "--http", "127.0.0.1:%d" % self.port, "--threads", "2"] + list(extra),
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("recalld exited: " + self.log())
            if self.recall("health")[0] == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("recalld did not answer: " + self.log())

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def recall(self, *args):
        p = subprocess.run([RECALL, "--connect", self.endpoint] + list(args),
                           capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr

    def rjson(self, *args):
        rc, out, err = self.recall("--json", *args)
        if rc:
            raise RuntimeError("recall %s: %d %s" % (args, rc, err))
        return json.loads(out)

    def post(self, path, body):
        """(status, body bytes): with curl, the client a user pastes from the README, when
        it is installed (scripts/deps.sh installs it); else http.client."""
        if CURL:
            p = subprocess.run([CURL, "-sS", "-o", "-", "-w", "\n%{http_code}",
                                "http://127.0.0.1:%d%s" % (self.port, path),
                                "-H", "Content-Type: application/json",
                                "--data-binary", json.dumps(body)],
                               capture_output=True, timeout=300)
            out, _, code = p.stdout.rpartition(b"\n")
            return int(code or 0), out
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def sse_text(data):
    text = ""
    for line in data.decode().split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            o = json.loads(line[6:])
            for ch in o.get("choices", []):
                text += ch.get("text") or (ch.get("delta") or {}).get("content") or ""
    return text


def main():
    try:
        import sentencepiece
    except ImportError:
        print("skipped: no sentencepiece for %s (python3-sentencepiece)" % sys.executable)
        return 77
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        print("skipped: no tiny-fot model at %s" % MODEL)
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-chat-")
    model = os.path.join(tmp, "model")
    shutil.copytree(MODEL, model)
    with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": LLAMA2}, f)
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(model, "tokenizer.model"))
    doc = os.path.join(tmp, "doc.txt")
    with open(doc, "w") as f:
        f.write("The pass key is 4711. Remember it.\n")

    def count(parts):
        """Tokens of a prompt given as parts: "BOS", "EOS" or text encoded on its own."""
        return sum(1 if p in ("BOS", "EOS") else len(sp.encode(p)) for p in parts)

    d = Daemon(tmp, model, os.path.join(tmp, "data"))
    try:
        check(d.recall("-q", "ingest", "doc", doc)[0] == 0, "ingest")
        pending = d.rjson("info", "doc")["pending_tokens"]

        # ---- llama2 from tokenizer_config.json: HTTP and CLI agree ---------------------
        st, body = d.post("/v1/chat/completions", {
            "model": "doc", "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": QUESTION}]})
        check(st == 200, "chat completion answers", body[:300])
        h = json.loads(body) if st == 200 else {}
        cli = d.rjson("ask", "doc", QUESTION, "--chat", "--system", SYSTEM, "--max-tokens", "12")
        check(cli.get("chat_template") == "llama2", "recall ask --chat says llama2", cli)
        h_text = h.get("choices", [{}])[0].get("message", {}).get("content")
        check(h_text == cli.get("answer"), "HTTP chat and recall ask --chat give the same answer",
              (h_text, cli.get("answer")))
        check(h.get("usage", {}).get("prompt_tokens") == cli.get("prompt_tokens"),
              "... and the same prompt tokens", (h.get("usage"), cli.get("prompt_tokens")))
        want = pending + count(["BOS", "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]"
                                % (SYSTEM, QUESTION)])
        check(cli.get("prompt_tokens") == want,
              "the llama2 prompt is the template's, tokenized between specials", (cli, want))
        plain = d.rjson("ask", "doc", QUESTION, "--max-tokens", "12")
        check(plain.get("prompt_tokens") == pending + len(sp.encode(QUESTION)),
              "a plain ask is the question alone", plain)

        st, body = d.post("/v1/chat/completions", {
            "model": "doc", "messages": [{"role": "user", "content": "a"},
                                         {"role": "user", "content": "b"}]})
        check(st == 400 and b"alternate" in body, "llama2 refuses roles that do not alternate",
              (st, body[:300]))

        # ---- stop strings: the daemon stops -------------------------------------------
        full = d.rjson("ask", "doc", QUESTION, "--max-tokens", "24")
        ans = full["answer"]
        stop = None
        # a short stop string that first occurs in the middle of the answer
        for k in range(len(ans) // 3, len(ans) - 2):
            cand = ans[k:k + 2]
            if cand.isprintable() and cand.strip() and ans.find(cand) == k:
                stop = cand
                break
        if not check(stop is not None, "the unstopped answer has a usable stop string", ans):
            stop = ans[-1:]
        cut = ans[:ans.find(stop)]
        r = d.rjson("ask", "doc", QUESTION, "--max-tokens", "24", "--stop", "ZZZQ",
                    "--stop", stop)
        check(r["answer"] == cut, "recall ask --stop ends the answer before the stop string",
              (r["answer"], cut, stop))
        check(r["stop_reason"] == "stop", "stop_reason is stop", r["stop_reason"])
        check(r["generated"] < full["generated"],
              "the daemon generated fewer tokens with the stop string",
              (r["generated"], full["generated"]))
        st, body = d.post("/v1/completions", {"model": "doc", "prompt": QUESTION,
                                              "max_tokens": 24, "stop": [stop]})
        o = json.loads(body) if st == 200 else {}
        text = o.get("choices", [{}])[0].get("text")
        check(st == 200 and text == cut, "HTTP stop: the same answer, cut before the stop string",
              (text, cut))
        check(o.get("choices", [{}])[0].get("finish_reason") == "stop" and
              o.get("usage", {}).get("completion_tokens") == r["generated"],
              "HTTP stop: finish_reason stop, usage counts what the daemon generated", o)
        st, body = d.post("/v1/completions", {"model": "doc", "prompt": QUESTION,
                                              "max_tokens": 24, "stop": stop, "stream": True})
        check(st == 200 and sse_text(body) == cut, "streamed with a stop string: the same text",
              (sse_text(body), cut))

        # --append keeps the question and the answer's tokens before the stop string.
        before = d.rjson("info", "doc")["tokens"]
        ra = d.rjson("ask", "doc", QUESTION, "--max-tokens", "24", "--stop", stop,
                     "--append")
        after = d.rjson("info", "doc")["tokens"]
        nq = ra["prompt_tokens"] - pending
        check(ra["answer"] == cut, "--append with --stop answers the same", ra["answer"])
        check(nq <= after - before < nq + ra["generated"],
              "--append keeps only the tokens before the stop string",
              (before, after, nq, ra["generated"]))
    finally:
        check(d.stop() == 0, "recalld stops cleanly")

    # ---- --chat-template longllama-instruct -------------------------------------------
    d = Daemon(tmp, model, os.path.join(tmp, "data2"), ["--chat-template", "longllama-instruct"])
    try:
        d.recall("-q", "ingest", "doc", doc)
        pending = d.rjson("info", "doc")["pending_tokens"]
        cli = d.rjson("ask", "doc", QUESTION, "--chat", "--max-tokens", "12")
        st, body = d.post("/v1/chat/completions", {
            "model": "doc", "max_tokens": 12,
            "messages": [{"role": "user", "content": QUESTION}]})
        h = json.loads(body) if st == 200 else {}
        check(cli.get("chat_template") == "longllama-instruct", "the flag wins", cli)
        check(h.get("usage", {}).get("prompt_tokens") == cli.get("prompt_tokens") and
              h["choices"][0]["message"]["content"] == cli.get("answer"),
              "longllama-instruct: HTTP and CLI agree", (h, cli))
        want = pending + count(["BOS", OPENING, "\nUSER: ", QUESTION, "\nASSISTANT: "])
        check(cli.get("prompt_tokens") == want,
              "the longllama-instruct prompt is its pieces tokenized one by one", (cli, want))
        check(all(s not in cli.get("answer", "") for s in ("USER:", "ASSISTANT:")),
              "the template's stop strings apply", cli.get("answer"))
    finally:
        check(d.stop() == 0, "recalld stops cleanly (longllama-instruct)")

    # ---- a template recall does not know -------------------------------------------
    with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}"
                                    "<|im_end|>{% endfor %}"}, f)
    d = Daemon(tmp, model, os.path.join(tmp, "data3"))
    try:
        d.recall("-q", "ingest", "doc", doc)
        cli = d.rjson("ask", "doc", QUESTION, "--chat", "--max-tokens", "4")
        check(cli.get("chat_template") == "plain", "an unknown template falls back to plain", cli)
        check("not one recall knows" in d.log(), "recalld warns about it", d.log()[-2000:])
    finally:
        check(d.stop() == 0, "recalld stops cleanly (unknown template)")
    shutil.rmtree(tmp, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
