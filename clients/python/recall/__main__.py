"""python3 -m recall: a small command line over recall.Client, for scripts and checks.

    python3 -m recall [--connect EP] [--timeout S] [--json] COMMAND ...

Commands: health, stats, sessions, info NAME, drop NAME, verify NAME,
ingest NAME FILE... [--chunk-bytes N] [session options], ask NAME QUESTION [--max-tokens N]
[--temperature T] [--top-p P] [--seed N] [--stop S]... [--append] [--chat [--system TEXT]],
ppl NAME | ppl --text FILE [session options].

Session options are flags named as SessionOptions' fields in proto/recall.proto
(--window 4096 --memory knn --k 128 ...), made from the schema itself. Output is JSON with
--json (one object), else short text. Exit status as the C `recall`: 0 ok, 1 the daemon
refused, 2 usage, 3 no connection or no answer in time. The C CLI remains the full tool
(progress bars, passkey, bench); this one exists so Python users need nothing else.
"""

import argparse
import json
import pathlib
import sys

from google.protobuf.descriptor import FieldDescriptor

from . import Client, InvalidArgument, ProtocolError, RecallError, Timeout
from .messages import OPTION_ALIASES, pb


def _option_flags(p):
    """One --flag per SessionOptions field (and the CLI's --nlist/--nprobe spellings)."""
    kinds = {FieldDescriptor.TYPE_FLOAT: float, FieldDescriptor.TYPE_DOUBLE: float,
             FieldDescriptor.TYPE_STRING: str}
    for f in pb.SessionOptions.DESCRIPTOR.fields:
        names = ["--" + f.name.replace("_", "-")]
        names += ["--" + a for a, target in OPTION_ALIASES.items() if target == f.name]
        if f.type == FieldDescriptor.TYPE_BOOL:
            p.add_argument(*names, dest="opt_" + f.name, action="store_const", const=True)
        elif f.name == "gpu_memory_budget":
            p.add_argument(*names, dest="opt_" + f.name, metavar="SIZE")
        else:
            p.add_argument(*names, dest="opt_" + f.name, type=kinds.get(f.type, int))


def _options(a):
    return {k[4:]: v for k, v in vars(a).items() if k.startswith("opt_") and v is not None}


def _parser():
    p = argparse.ArgumentParser(prog="python3 -m recall", description=__doc__.split("\n\n")[0])
    p.add_argument("--connect", default=None, help="endpoint (default $RECALL_CONNECT, else "
                   "tcp://127.0.0.1:5555)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per answer")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("health", "stats", "sessions"):
        sub.add_parser(name)
    for name in ("info", "drop", "verify"):
        sub.add_parser(name).add_argument("session")
    s = sub.add_parser("ingest")
    s.add_argument("session")
    s.add_argument("files", nargs="+", type=pathlib.Path)
    s.add_argument("--chunk-bytes", type=int, default=64 * 1024)
    _option_flags(s)
    s = sub.add_parser("ask")
    s.add_argument("session")
    s.add_argument("question")
    s.add_argument("--max-tokens", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-p", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--stop", action="append")
    s.add_argument("--append", action="store_true")
    s.add_argument("--chat", action="store_true")
    s.add_argument("--system")
    s = sub.add_parser("ppl")
    s.add_argument("session", nargs="?")
    s.add_argument("--text", type=pathlib.Path)
    _option_flags(s)
    return p


def _run(c, a):
    """The command's result as a JSON-able value, and its text for people."""
    if a.cmd in ("health", "stats"):
        r = getattr(c, a.cmd)()
        return r, "\n".join("%-22s %s" % kv for kv in r.items())
    if a.cmd == "sessions":
        r = c.sessions()
        return {"sessions": r}, "\n".join("%-20s %10d tokens  %s" % (s["name"], s["tokens"],
                                          s["tier"]) for s in r) or "no sessions"
    if a.cmd == "info":
        r = c.info(a.session)
        return r, "\n".join("%-22s %s" % kv for kv in r.items())
    if a.cmd == "drop":
        c.drop(a.session)
        return {"dropped": a.session}, "dropped session '%s'" % a.session
    if a.cmd == "verify":
        r = c.verify(a.session)
        return r, ("intact" if r["ok"] else "DAMAGED: " + r["problem"])
    if a.cmd == "ingest":
        n = c.ingest(a.session, list(a.files), chunk_bytes=a.chunk_bytes,
                     progress=sys.stderr.isatty() and not a.json, **_options(a))
        i = c.info(a.session)
        return ({"session": a.session, "tokens_added": n, "tokens": i["tokens"],
                 "windows": i["windows"], "last_seq": i["last_seq"]},
                "ingested %d tokens into '%s'; session now %d tokens" % (n, a.session,
                                                                         i["tokens"]))
    if a.cmd == "ask":
        kw = dict(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p,
                  seed=a.seed, stop=a.stop, append=a.append)
        if a.system is not None and not a.chat:
            raise InvalidArgument(-1, "--system goes with --chat", False)
        if a.chat:  # the question as a user's message, as the C CLI's --chat
            msgs = ([{"role": "system", "content": a.system}] if a.system is not None else []) + \
                [{"role": "user", "content": a.question}]
            ask = lambda **k: c.chat(a.session, msgs, **k)  # noqa: E731
        else:
            ask = lambda **k: c.ask(a.session, a.question, **k)  # noqa: E731
        if a.json:
            ans = ask(**kw)
        else:  # text: show the answer as it streams
            s = ask(stream=True, **kw)
            for piece in s:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return None, None
        return ({"session": a.session, "question": a.question, "answer": ans.text,
                 "tokens": ans.tokens, "generated": ans.generated,
                 "stop_reason": ans.stop_reason, "prompt_tokens": ans.prompt_tokens,
                 **({"chat_template": ans.chat_template} if a.chat else {})}, None)
    # ppl
    r = c.ppl(a.session, text=a.text, **_options(a))
    return r, "ppl %.2f over %d tokens" % (r["ppl"], r["tokens"])


def main(argv=None):
    a = _parser().parse_args(argv)
    if a.cmd == "ppl" and (a.session is None) == (a.text is None):
        print("recall: give either SESSION or --text FILE", file=sys.stderr)
        return 2
    try:
        with Client(a.connect, timeout=a.timeout) as c:
            out, text = _run(c, a)
    except RecallError as e:
        if a.json:
            print(json.dumps({"error": {"code": e.code, "name": e.name, "message": e.message}}))
        print("recall: %s" % e.message, file=sys.stderr)
        if isinstance(e, Timeout):
            return 3
        return 1 if e.remote or isinstance(e, ProtocolError) else 2
    if a.json:
        print(json.dumps(out))
    elif text is not None:
        print(text)
    return 1 if a.cmd == "verify" and not out["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
