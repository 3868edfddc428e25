#!/usr/bin/python3
"""e2e_model_defaults.py — a checkpoint's own session defaults (config.json
"recall_session_defaults", model/config.h) through recalld.

A copy of tiny-fot whose config.json says {"memory": "knn", "k": 16}: a session created with
no options is a knn session with k 16; one that asks for exact memory gets it; with recalld's
own --memory exact the checkpoint's memory default gives way (its k stays, unused by exact
sessions); and a checkpoint whose section is malformed is refused at start-up with the field
named. Environment as e2e_cli.py."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402
from e2e_cli import check, recall, info  # noqa: E402
from e2e_tiers import Daemon, write  # noqa: E402


def model_copy(tmp, name, section):
    src = os.path.join(e.DATA, "tiny-fot")
    dst = os.path.join(tmp, name)
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg["recall_session_defaults"] = section
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def opts(ep, name):
    return info(ep, name).get("options", {})


def main():
    tmp = tempfile.mkdtemp(prefix="recall-mdef-")
    try:
        model = model_copy(tmp, "knn16", {"memory": "knn", "k": 16})
        doc = write(tmp, "doc.txt", e.corpus_text(3000))
        for extra, want_mem in (([], "knn"), (["--memory", "exact"], "exact")):
            ep = "tcp://127.0.0.1:%d" % e.free_port()
            data = os.path.join(tmp, "data-%s" % want_mem)
            log = os.path.join(tmp, "recalld-%s.log" % want_mem)
            d = Daemon(data, ep, log, extra, model=model)
            d.start()
            try:
                rc, j, err = recall(ep, "ingest", "plain", doc)
                check(rc == 0, "ingest with no session options (%s)" % (extra or "no flags"), err)
                o = opts(ep, "plain")
                check(o.get("memory") == want_mem, "recalld %s: a new session's memory is %s"
                      % (" ".join(extra) or "with no flags", want_mem), o)
                if want_mem == "knn":
                    check(o.get("k") == 16, "and its k is the checkpoint's 16", o)
                    rc, j, err = recall(ep, "ingest", "asked", doc, "--memory", "exact")
                    check(rc == 0 and opts(ep, "asked").get("memory") == "exact",
                          "a session that asks for exact memory gets it", (err, opts(ep, "asked")))
                    with open(log) as f:
                        check("session defaults from the checkpoint's config.json: memory knn, k 16"
                              in f.read(), "recalld says where the defaults came from")
            finally:
                if e.failed:
                    print("--- recalld.log ---\n" + d.log())
                d.stop()
        bad = model_copy(tmp, "bad", {"memory": "fast"})
        r = subprocess.run([e.RECALLD, "--model", bad, "--data", os.path.join(tmp, "bad-data"),
                            "--listen", "tcp://127.0.0.1:%d" % e.free_port(), "--no-config"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode != 0 and "recall_session_defaults" in r.stderr,
              "a malformed recall_session_defaults is refused at start-up, named", r.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (e.passed, e.failed))
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
