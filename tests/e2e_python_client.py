#!/usr/bin/python3
"""e2e_python_client.py — the Python client package (clients/python) installed and used.

Outer part (the system python3): copies clients/python and proto/ into a temporary tree of
the repository's layout, makes a venv with --system-site-packages and installs the package
into it with pip, offline (--no-build-isolation --no-index), exactly as the README says.
Then it runs this file again under the venv's python ("--inner MODE"), so that `import
recall` is the installed package and nothing from the source tree.

  --part proto   the installed recall_pb2 module is protoc's output for proto/recall.proto
                 as it is now (its serialized descriptor equals a fresh `protoc
                 --descriptor_set_out`), and the comparison does see a changed schema; the
                 source tree holds no generated copy; the chunker cuts as the C client's.
  --part e2e     against a real recalld on tiny-fot: create, ingest (with progress), ask
                 (streamed and not, equal to each other and to `recall ask`), sessions,
                 info (equal to `recall info --json`), ppl (equal to `recall ppl`), verify,
                 drop, stats, health; errors (unknown session, bad arguments, timeouts,
                 damaged session) raise the right exception with the daemon's message.

Environment as e2e_cli.py (set by ctest). Prints "N passed, N failed"; exits 1 on failure.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e_cli as e  # noqa: E402  (the daemon harness, CLI runner and checks)
from e2e_cli import check  # noqa: E402

SRC = e.SRC
PROTO = os.path.join(SRC, "proto", "recall.proto")


def outer(part):
    tmp = tempfile.mkdtemp(prefix="recall-py-")
    try:
        tree = os.path.join(tmp, "src")
        shutil.copytree(os.path.join(SRC, "clients", "python"),
                        os.path.join(tree, "clients", "python"),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                      "recall_pb2.py"))
        os.makedirs(os.path.join(tree, "proto"))
        shutil.copy(PROTO, os.path.join(tree, "proto"))
        venv = os.path.join(tmp, "venv")
        r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv],
                           capture_output=True, text=True)
        if not check(r.returncode == 0, "python3 -m venv --system-site-packages", r.stderr):
            return
        py = os.path.join(venv, "bin", "python")
        env = dict(os.environ, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   PIP_NO_CACHE_DIR="1")  # nothing written outside the temporary tree
        r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index",
                            os.path.join(tree, "clients", "python")],
                           capture_output=True, text=True, env=env, timeout=300)
        if not check(r.returncode == 0, "pip install --no-build-isolation --no-index "
                     "./clients/python (offline, dependencies from Debian)",
                     r.stdout[-3000:] + r.stderr[-3000:]):
            return
        r = subprocess.run([py, os.path.abspath(__file__), "--inner", part, tmp], env=env,
                           timeout=1200)
        check(r.returncode == 0, "the %s checks under the venv's python" % part,
              "exit %d" % r.returncode)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- inner: proto ------------------------------------------------------------------------

def fresh_descriptor(proto_path, tmp):
    """recall.proto's FileDescriptorProto as protoc compiles it now (serialized), in the
    form protoc's python generator embeds it: without the json_name of each field, which
    --descriptor_set_out adds and --python_out leaves out."""
    from google.protobuf import descriptor_pb2
    out = os.path.join(tmp, "recall.desc")
    subprocess.run(["protoc", "-I", os.path.dirname(proto_path), "--descriptor_set_out", out,
                    os.path.basename(proto_path)], check=True)
    fds = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        fds.ParseFromString(f.read())
    fd = fds.file[0]

    def strip(messages):
        for m in messages:
            for fld in m.field:
                fld.ClearField("json_name")
            strip(m.nested_type)
    strip(fd.message_type)
    return fd.SerializeToString(deterministic=True)


def part_proto(tmp):
    import recall
    from recall import recall_pb2
    from recall.ingest import chunk_split, iter_chunks
    import io
    check(recall.__file__.startswith(tmp), "recall is imported from the venv, not the tree",
          recall.__file__)
    check(not os.path.exists(os.path.join(SRC, "clients", "python", "recall", "recall_pb2.py")),
          "no generated recall_pb2.py is kept in the source tree")

    # The installed module is protoc's compilation of the schema as it is now.
    want = fresh_descriptor(PROTO, tmp)
    from google.protobuf import descriptor_pb2
    installed = descriptor_pb2.FileDescriptorProto.FromString(recall_pb2.DESCRIPTOR.serialized_pb)
    check(len(want) > 1000 and installed.SerializeToString(deterministic=True) == want,
          "installed recall_pb2 matches a fresh protoc of proto/recall.proto")
    # ... and that comparison notices a change: one field more in SessionOptions.
    changed = os.path.join(tmp, "changed", "recall.proto")
    os.makedirs(os.path.dirname(changed))
    with open(PROTO) as f:
        text = f.read()
    anchor = "message SessionOptions {\n"
    check(anchor in text, "the schema has a SessionOptions message")
    with open(changed, "w") as f:
        f.write(text.replace(anchor, anchor + "  string test_only_field = 999;\n"))
    check(installed.SerializeToString(deterministic=True) != fresh_descriptor(changed, tmp),
          "the comparison tells a changed schema apart")
    # Every message of the schema is a class of the module, with the schema's fields.
    names = set(recall_pb2.DESCRIPTOR.message_types_by_name)
    for m in ("Request", "Response", "SessionOptions", "IngestRequest", "AskResponse",
              "ScoreRequest", "Progress", "Status"):
        check(m in names, "recall_pb2 has %s" % m)
    # Session options come from the schema's field list, not a copy of it.
    opts = set(recall_pb2.SessionOptions.DESCRIPTOR.fields_by_name)
    try:
        recall.messages.session_options({"no_such_option": 1})
        check(False, "an unknown session option is refused")
    except recall.InvalidArgument as ex:
        check(all(o in ex.message for o in opts), "the refusal lists the schema's options",
              ex.message)

    # Chunking: e2e_cli's model of the C chunker for ASCII, and UTF-8 long lines cut
    # between characters.
    corpus = e.corpus_text(20000)
    ours = [c.decode() for _, c in iter_chunks(io.BytesIO(corpus.encode()), 2048)]
    check(ours == e.chunk_text(corpus, 2048), "ASCII chunks equal the CLI's chunking",
          (len(ours), len(e.chunk_text(corpus, 2048))))
    wide = ("é日本語🙂" * 400).encode()  # one line of 2-, 3- and 4-byte characters
    pieces = [c for _, c in iter_chunks(io.BytesIO(wide), 100)]
    check(b"".join(pieces) == wide and all(len(p) <= 100 for p in pieces),
          "a long line is cut into pieces of at most chunk_bytes")
    ok = True
    for p in pieces:
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
    check(ok, "every piece of a long UTF-8 line is whole characters")
    check(chunk_split(b"ab\ncd", 5, 16, False) == 0, "a short chunk waits for more input")
    # clients/chunker.c's rules at their edges (recall_chunk_split):
    cases = [((b"ab\ncdef", 7, 4, False), 3, "a chunk ends after its last newline"),
             ((b"ab\ncd\nef", 8, 6, False), 6, "a newline as the chunk's last byte is kept"),
             ((b"abcdef", 6, 4, False), 4, "a line without newline is cut at max_bytes"),
             ((b"ab", 2, 4, True), 2, "at the end, what is left is one chunk"),
             ((b"", 0, 4, True), 0, "nothing left: no chunk"),
             ((b"ab\xe6\x97\xa5cd", 7, 4, False), 2, "a 3-byte character that does not fit "
              "whole goes to the next chunk"),
             ((b"a\xe6\x97\xa5cd", 6, 4, False), 4, "one that fits exactly stays"),
             ((b"\xf0\x9f\x99\x82\xf0\x9f", 6, 5, False), 4, "a 4-byte character is not split")]
    for args, want, what in cases:
        got = chunk_split(*args)
        check(got == want, "chunk_split: " + what, (args, got, want))


# ---- inner: e2e --------------------------------------------------------------------------

def expect_error(cls, what, fn, contains=None, remote=None):
    """Runs fn; checks that it raises cls (with `contains` in its message); returns it."""
    import recall
    try:
        fn()
    except recall.RecallError as ex:
        ok = isinstance(ex, cls) and (contains is None or contains in ex.message) and \
            (remote is None or ex.remote == remote)
        check(ok, what, repr(ex))
        return ex
    except Exception as ex:  # noqa: BLE001  (any other exception is the failure reported)
        check(False, what, "raised %r" % ex)
        return None
    check(False, what, "nothing raised")
    return None


def part_e2e(tmp):
    import signal
    work = os.path.join(tmp, "e2e")
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    ep = "tcp://127.0.0.1:%d" % e.free_port()
    d = e.Daemon(data_dir, ep, os.path.join(work, "recalld.log"))
    try:
        d.start()
        run_e2e(d, ep, work)
    except Exception as ex:  # a crash of the test itself is a failure, with the daemon's log
        import traceback
        check(False, "e2e run", "%s\n--- recalld log ---\n%s" % (traceback.format_exc(), d.log()))
        del ex
    finally:
        if d.proc:
            d.stop(signal.SIGKILL)
    if e.failed:
        print("--- recalld log (tail) ---\n" + d.log())


def close(a, b):
    """Equal up to the CLI's JSON printing of doubles (cJSON keeps 15 significant digits
    when they read back within its tolerance)."""
    return isinstance(a, float) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * abs(b)


def run_e2e(d, ep, work):
    import pathlib
    import time
    import recall

    c = recall.Client(ep, timeout=120)
    h = c.health()
    rc, hj, err = e.recall(ep, "health")
    check(h.get("ok") is True and h == {k: hj.get(k) for k in h}, "health() as recall health",
          (h, hj))

    # --- ingest: a text several windows long, in chunks, with progress -----------------
    text = e.corpus_text(9000) + ("é日本語 " * 120) + "\n" + e.corpus_text(3000, 7)
    path = os.path.join(work, "book.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    size = os.path.getsize(path)
    seen = []
    added = c.ingest("pybook", pathlib.Path(path), progress=seen.append, chunk_bytes=2048)
    i = c.info("pybook")
    check(added > 3 * e.WINDOW and added == i["tokens"], "ingest returns the tokens added",
          (added, i.get("tokens")))
    rc, cli_ing, err = e.recall(ep, "ingest", "clibook", path, "--chunk-bytes", "2K")
    ci = e.info(ep, "clibook")
    check(rc == 0 and ci.get("tokens") == i["tokens"] and ci.get("last_seq") == i["last_seq"]
          and i["last_seq"] > size // 2048, "the same chunks and tokens as recall ingest "
          "--chunk-bytes 2K (text with a long line of multi-byte characters)", (i, ci, err))
    check(len(seen) >= i["last_seq"] + 1, "progress called at least once per chunk and at the "
          "end", len(seen))
    mono = all(a.bytes_done <= b.bytes_done and a.tokens_added <= b.tokens_added and
               a.chunks_acked <= b.chunks_acked for a, b in zip(seen, seen[1:]))
    check(mono, "progress counts never decrease",
          [(p.bytes_done, p.tokens_added) for p in seen])
    check(seen and seen[-1].final and not any(p.final for p in seen[:-1]) and
          seen[-1].bytes_done == size and seen[-1].bytes_total == size and
          seen[-1].tokens_added == added and seen[-1].chunks_acked == i["last_seq"],
          "the last progress call is final, with every byte and token", seen[-1:])
    check(seen[0].tokens_added < added, "progress starts before the end", seen[:1])
    # A second ingest continues the session's seqs.
    more = "and then one more line about the weather\n"
    import warnings
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        added2 = c.ingest("pybook", more, window=32)
    i2 = c.info("pybook")
    check(len(warned) == 1 and "keeps its own options" in str(warned[0].message) and
          i2["options"]["window"] == e.WINDOW,
          "options given to ingest into an existing session: a warning, options kept",
          ([str(w.message) for w in warned], i2["options"]))
    check(i2["tokens"] == i["tokens"] + added2 and i2["last_seq"] == i["last_seq"] + 1,
          "a second ingest continues the seqs", (i, i2))
    rc, _, err = e.recall(ep, "ingest", "clibook", "-", stdin=more, json_out=False)
    check(e.info(ep, "clibook").get("tokens") == i2["tokens"], "and matches the CLI's", err)

    # --- info / sessions ----------------------------------------------------------------
    rc, cj, err = e.recall(ep, "info", "pybook")
    same = rc == 0 and all(cj[k] == i2[k] for k in cj if k != "options") and \
        all(v == i2["options"][k] for k, v in cj["options"].items()) and "problem" in i2
    check(same, "info() equals recall info --json", (i2, cj))
    ss = c.sessions()
    names = sorted(s["name"] for s in ss)
    check(names == ["clibook", "pybook"], "sessions() lists both", names)
    check([s for s in ss if s["name"] == "pybook"] == [c.info("pybook")],
          "a sessions() entry equals info()")
    cr = c.create("pybook", if_not_exists=True, window=32)
    check(cr.get("created") is False and cr["options"]["window"] == e.WINDOW,
          "create(if_not_exists) keeps the existing session and its options", cr)
    cr = c.create("made", memory="exact")
    check(cr.get("created") is True and cr["tokens"] == 0 and cr["options"]["memory"] == "exact",
          "create() makes an empty session", cr)

    # --- ask: streamed, not streamed, and the CLI agree -----------------------------------
    q = "What did the report say?"
    for label, kw, flags in (("greedy", dict(max_tokens=12),
                              ["--max-tokens", "12"]),
                             ("sampled", dict(max_tokens=12, temperature=0.8, top_p=0.9, seed=7),
                              ["--max-tokens", "12", "--temperature", "0.8", "--top-p", "0.9",
                               "--seed", "7"])):
        a = c.ask("pybook", q, **kw)
        check(isinstance(a, recall.Answer) and 1 <= a.generated <= 12 and
              len(a.tokens) == a.generated and a.stop_reason in ("eos", "length") and
              a.prompt_tokens > 0, "%s ask() answers" % label, a)
        s = c.ask("pybook", q, stream=True, **kw)
        pieces = list(s)
        check("".join(pieces) == a.text and s.answer is not None and
              s.answer.tokens == a.tokens and s.answer.text == a.text,
              "%s: streamed pieces joined equal the answer" % label, (pieces, a))
        check(len(pieces) >= a.generated, "%s: one piece per token" % label, pieces)
        rc, cj, err = e.recall(ep, "ask", "pybook", q, *flags)
        check(rc == 0 and cj and cj.get("answer") == a.text and cj.get("tokens") == a.tokens,
              "%s: the answer equals recall ask's" % label, (a, cj, err))
    check(c.info("pybook")["tokens"] == i2["tokens"], "ask without append changes nothing")
    a = c.ask("pybook", q, max_tokens=12)
    if len(a.text) > 4:
        stop = a.text[2:4]
        cut = a.text[:a.text.find(stop)]
        sa = c.ask("pybook", q, max_tokens=12, stop=stop)
        check(sa.text == cut and sa.stop_reason == "stop", "stop= cuts before the stop string",
              (sa, stop, a.text))
        st = c.ask("pybook", q, max_tokens=12, stop=[stop, "\x01"], stream=True)
        check("".join(st) == cut, "a streamed answer stops there too")
        # The daemon stopped generating (issue 18): fewer tokens than the whole answer's,
        # and the same answer and count as recall ask --stop.
        check(sa.generated < a.generated, "stop=: the daemon generated fewer tokens",
              (sa.generated, a.generated))
        rc, cj, err = e.recall(ep, "ask", "pybook", q, "--max-tokens", "12", "--stop", stop)
        check(rc == 0 and cj.get("answer") == sa.text and cj.get("generated") == sa.generated,
              "stop=: the same as recall ask --stop", (sa, cj, err))
    # --- chat: the daemon's chat template, as recall ask --chat ---------------------------
    ch = c.chat("pybook", [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": q}], max_tokens=8)
    rc, cj, err = e.recall(ep, "ask", "pybook", q, "--chat", "--system", "Be brief.",
                           "--max-tokens", "8")
    check(rc == 0 and cj.get("answer") == ch.text and cj.get("prompt_tokens") == ch.prompt_tokens
          and cj.get("chat_template") == ch.chat_template != "",
          "chat() equals recall ask --chat", (ch, cj, err))
    check(ch.prompt_tokens != a.prompt_tokens, "chat() formats the messages (not the bare question)",
          (ch.prompt_tokens, a.prompt_tokens))
    expect_error(recall.InvalidArgument, "chat() with no messages is refused",
                 lambda: c.chat("pybook", []), "message", remote=False)
    # An abandoned stream: its late tokens do not leak into the next request.
    s = c.ask("pybook", q, max_tokens=12, stream=True)
    next(s)
    expect_error(recall.InvalidArgument, "a request while a stream is open is refused",
                 lambda: c.info("pybook"), "stream", remote=False)
    s.close()
    check(c.ask("pybook", q, max_tokens=12).tokens == a.tokens,
          "after close() of a stream the next answer is whole and the same")
    ap = c.ask("made", "hello there", max_tokens=3, append=True)
    check(c.info("made")["tokens"] >= ap.prompt_tokens + ap.generated - 1,
          "append=True adds the question and answer", (ap, c.info("made")))

    # --- ppl ----------------------------------------------------------------------------
    p = c.ppl("pybook")
    rc, cj, err = e.recall(ep, "ppl", "pybook")
    check(rc == 0 and close(p["ppl"], cj["ppl"]) and close(p["nll"], cj["nll"]) and
          p["tokens"] == cj["tokens"] == i2["tokens"] and p["scored"] == cj["scored"],
          "ppl(session) equals recall ppl", (p, cj))
    calls = []
    pt = c.ppl(text=pathlib.Path(path), logprobs=True, progress=lambda a, b: calls.append((a, b)))
    rc, cj, err = e.recall(ep, "ppl", "--text", path)
    check(rc == 0 and close(pt["ppl"], cj["ppl"]) and pt["tokens"] == cj["tokens"],
          "ppl(text=Path) equals recall ppl --text", (pt["ppl"], cj))
    check(len(pt["logprobs"]) == pt["scored"] and
          abs(-sum(pt["logprobs"]) - pt["nll"]) < 1e-3 * abs(pt["nll"]),
          "logprobs: one per scored token, summing to -nll", (len(pt["logprobs"]), pt["scored"]))
    check(all(a <= b for (a, _), (b, _) in zip(calls, calls[1:])), "score progress increases",
          calls)
    pw = c.ppl(text=text, window=32)
    rc, cj, err = e.recall(ep, "ppl", "--text", path, "--window", "32")
    check(rc == 0 and close(pw["ppl"], cj["ppl"]) and not close(pw["ppl"], pt["ppl"]),
          "ppl with a session option equals the CLI's and differs from the default", (pw, cj))
    ids = c.tokenize(text, add_bos=True)
    check(len(ids) == pt["tokens"], "tokenize(add_bos) counts what ppl(text) scored")
    check(c.ppl(tokens=ids)["ppl"] == pt["ppl"], "ppl(tokens=) of those ids is the same")
    n = c.ingest_tokens("bytokens", ids[:200], chunk_tokens=64)
    check(n == 200 and c.info("bytokens")["tokens"] == 200 and
          c.info("bytokens")["last_seq"] == 4, "ingest_tokens: 200 ids in 4 chunks")

    # --- python3 -m recall --------------------------------------------------------------
    def pyrecall(*args):
        r = subprocess.run([sys.executable, "-m", "recall", "--connect", ep, *args],
                           capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout, r.stderr
    rc, out, err = pyrecall("--json", "info", "pybook")
    check(rc == 0 and json.loads(out) == c.info("pybook"), "python3 -m recall info", (out, err))
    rc, out, err = pyrecall("--json", "ask", "pybook", q, "--chat", "--system", "Be brief.",
                            "--max-tokens", "8")
    pj = json.loads(out) if rc == 0 else {}
    check(pj.get("answer") == ch.text and pj.get("chat_template") == ch.chat_template,
          "python3 -m recall ask --chat", (rc, out, err))
    rc, out, err = pyrecall("ask", "pybook", q, "--max-tokens", "12")
    check(rc == 0 and out == a.text + "\n", "python3 -m recall ask streams the answer",
          (out, a.text, err))
    rc, out, err = pyrecall("--json", "ppl", "pybook")
    check(rc == 0 and json.loads(out)["ppl"] == p["ppl"], "python3 -m recall ppl", (out, err))
    rc, out, err = pyrecall("--json", "ingest", "viacli", path, "--window", "32",
                            "--chunk-bytes", "4096")
    check(rc == 0 and json.loads(out)["tokens"] == i["tokens"] and
          c.info("viacli")["options"]["window"] == 32,
          "python3 -m recall ingest, with a session option flag made from the schema",
          (out, err))
    c.drop("viacli")
    rc, out, err = pyrecall("--json", "ask", "nosuch", "q")
    check(rc == 1 and json.loads(out)["error"]["code"] == -4 and "nosuch" in err,
          "python3 -m recall: the daemon's error, exit 1", (rc, out, err))

    # --- errors -------------------------------------------------------------------------
    rc, cj, err = e.recall(ep, "ask", "nosuch", "q")
    want = cj.get("error", {}).get("message") if cj else None
    ex = expect_error(recall.NotFound, "ask on an unknown session raises NotFound",
                      lambda: c.ask("nosuch", "q"), remote=True)
    check(ex is not None and ex.message == want and ex.code == -4 and ex.name == "NOT_FOUND" and
          isinstance(ex, recall.UnknownSession) and isinstance(ex, LookupError),
          "with the daemon's message and code (as recall ask --json shows)", (ex, want))
    expect_error(recall.NotFound, "info(unknown)", lambda: c.info("nosuch"), "nosuch")
    expect_error(recall.NotFound, "drop(unknown)", lambda: c.drop("nosuch"), "nosuch")
    expect_error(recall.NotFound, "ppl(unknown)", lambda: c.ppl("nosuch"), "nosuch")
    expect_error(recall.NotFound, "verify(unknown)", lambda: c.verify("nosuch"), "nosuch")
    expect_error(recall.NotFound, "ingest(create=False) into an unknown session",
                 lambda: c.ingest("nosuch", "text", create=False))
    expect_error(recall.AlreadyExists, "create() of an existing session",
                 lambda: c.create("pybook"), "pybook", remote=True)
    ex = expect_error(recall.InvalidArgument, "a session option the daemon refuses",
                      lambda: c.create("bad", memory="bogus"), "bogus", remote=True)
    check(ex is not None and isinstance(ex, ValueError), "InvalidArgument is a ValueError")
    expect_error(recall.InvalidArgument, "an unknown option name", lambda: c.create("bad", wnd=3),
                 "wnd", remote=False)
    expect_error(recall.InvalidArgument, "an option of the wrong type",
                 lambda: c.create("bad", window="big"), "window", remote=False)
    expect_error(recall.InvalidArgument, "temperature < 0",
                 lambda: c.ask("pybook", q, temperature=-1), "temperature", remote=False)
    expect_error(recall.InvalidArgument, "max_tokens not a number",
                 lambda: c.ask("pybook", q, max_tokens="x"), "max_tokens", remote=False)
    expect_error(recall.InvalidArgument, "a prompt that is not a str",
                 lambda: c.ask("pybook", b"q"), remote=False)
    expect_error(recall.InvalidArgument, "ppl with a session and a text",
                 lambda: c.ppl("pybook", text="x"), remote=False)
    expect_error(recall.InvalidArgument, "ppl(session) with session options",
                 lambda: c.ppl("pybook", window=32), remote=False)
    before = c.info("pybook")["tokens"]
    bad = os.path.join(work, "bad.txt")
    with open(bad, "wb") as f:
        f.write(b"fine line\n" * 50 + b"\xff\xfe broken\n")
    expect_error(recall.InvalidArgument, "a file that is not UTF-8",
                 lambda: c.ingest("pybook", [pathlib.Path(path), pathlib.Path(bad)]),
                 "not UTF-8 text (bad byte at offset 500)", remote=False)
    expect_error(recall.NotFound, "a missing file",
                 lambda: c.ingest("pybook", [pathlib.Path(path), pathlib.Path(bad + ".nope")]),
                 "cannot read", remote=False)
    expect_error(recall.InvalidArgument, "text with a NUL",
                 lambda: c.ingest("pybook", "a\0b"), "offset 1", remote=False)
    expect_error(recall.InvalidArgument, "an unpaired surrogate",
                 lambda: c.ingest("pybook", "a\ud800b"), remote=False)
    expect_error(recall.InvalidArgument, "something that is not text",
                 lambda: c.ingest("pybook", 42), "int", remote=False)
    check(c.info("pybook")["tokens"] == before, "bad input sent nothing")
    expect_error(recall.InvalidArgument, "a bad endpoint", lambda: recall.Client("http://x"))
    # Timeouts: nobody listening (connect), and a peer that never answers (receive).
    t0 = time.time()
    dead = recall.Client("tcp://127.0.0.1:%d" % e.free_port(), connect_timeout=0.5)
    ex = expect_error(recall.Timeout, "no daemon: Timeout", dead.health, "cannot connect",
                      remote=False)
    check(ex is not None and isinstance(ex, TimeoutError) and time.time() - t0 < 10,
          "quickly, as a TimeoutError", time.time() - t0)
    dead.close()
    import zmq
    ctx = zmq.Context()
    mute = ctx.socket(zmq.ROUTER)
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    with recall.Client("tcp://127.0.0.1:%d" % port, timeout=0.5) as slow:
        expect_error(recall.Timeout, "a peer that never answers: Timeout", slow.stats,
                     "no answer", remote=False)
    mute.close(0)
    ctx.term()
    check(slow._sock is None, "the context manager closed the client")
    expect_error(recall.InvalidArgument, "a closed client refuses requests", slow.health)

    # --- stats, verify, drop ------------------------------------------------------------
    st = c.stats()
    check(st["sessions"] == 4 and st["tokens_ingested"] >= 2 * i2["tokens"] and
          st["errors"] > 0 and st["device"] == h["device"], "stats()", st)
    v = c.verify("pybook")
    check(v["ok"] is True and v["windows"] == i2["windows"] and v["problem"] == "",
          "verify() of an intact session", v)
    c.drop("clibook")
    expect_error(recall.NotFound, "a dropped session is gone", lambda: c.info("clibook"))
    check("clibook" not in [s["name"] for s in c.sessions()], "and not listed")

    # --- a damaged session: Unavailable, verify finds it, repair brings it back ----------
    keys = os.path.join(d.data_dir, "rows", "pybook", "L0.keys")
    if check(os.path.exists(keys), "pybook's rows are at %s" % keys):
        c.close()
        check(d.stop() == 0, "recalld exits 0")
        off = 2 * 64 * (4 * 16 * 4) + 5   # a byte in window 2
        with open(keys, "r+b") as f:
            f.seek(off)
            orig = f.read(1)
            f.seek(off)
            f.write(bytes([orig[0] ^ 0x20]))
        d.start()
        c = recall.Client(ep, timeout=120)
        ex = expect_error(recall.Unavailable, "asking a damaged session raises Unavailable",
                          lambda: c.ask("pybook", q, max_tokens=2), "checksum", remote=True)
        check(ex is not None and ex.code == -14, "code -14")
        check(c.info("pybook")["tier"] == "unavailable", "info() shows it unavailable")
        v = c.verify("pybook")
        check(v["ok"] is False and v["bad_windows"] == 1 and "checksum" in v["problem"],
              "verify() reports the damage without raising", v)
        with open(keys, "r+b") as f:
            f.seek(off)
            f.write(orig)
        check(c.verify("pybook")["ok"] is True, "verify() passes once repaired")
        check(c.ask("pybook", q, max_tokens=12).tokens == a.tokens,
              "the repaired session answers as before")
    c.drop("pybook")
    c.close()

    # --- the README's example runs as written ------------------------------------------
    with open(os.path.join(SRC, "clients", "python", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    with open(os.path.join(work, "app.log"), "w") as f:
        f.write(e.corpus_text(3000))
    r = subprocess.run([sys.executable, "-c", example], cwd=work, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, RECALL_CONNECT=ep))
    check(r.returncode == 0 and "-4 no session named 'nope'" in r.stdout and
          "\nppl " in r.stdout, "the README example runs", r.stdout[-2000:] + r.stderr[-2000:])


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--inner":
        part, tmp = sys.argv[2], sys.argv[3]
        if part == "proto":
            part_proto(tmp)
        else:
            for p in (e.RECALL, e.RECALLD):
                if not os.access(p, os.X_OK):
                    check(False, "%s is built" % p)
                    break
            else:
                part_e2e(tmp)
    else:
        part = sys.argv[sys.argv.index("--part") + 1] if "--part" in sys.argv else "e2e"
        outer(part)
    print("%d passed, %d failed" % (e.passed, e.failed))
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
