#!/usr/bin/python3
"""e2e_config.py — recalld's config file (daemon/config.h) and --check-config.

The config file: its values reach the daemon (recalld started with only --config listens
where the file says, and `recall health` answers there); a flag on the command line wins
over the file (--check-config reports the flag's value, marked "flag"); the default file
($RECALLD_CONFIG stands in for /etc/recall/recalld.conf) is read without --config and not
with --no-config; every kind of bad line is refused with exit 2 and FILE:LINE (unknown key,
no '=', bad value as the flag's own parser sees it, duplicate key, duplicate through an
alias, bad switch value, command-line-only key, unterminated quote); comments, quotes and
switches parse.

--check-config: a good configuration exits 0 and prints every setting once with its source
(the output is itself a config file that --check-config accepts); a missing model, a model
directory without config.json, an unwritable data directory, a malformed --listen or
--http exit 1 naming each problem (several at once); it never creates the data directory
and never binds (it passes while the test holds the --listen port itself).

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA.
Prints "N passed, N failed"; exits 1 on any failure."""
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_env import DATA, MODEL, RECALL, RECALLD, SRC, BUILD, check, free_port, summary  # noqa: E402,F401




def run(args, env_extra=None, timeout=120):
    env = dict(os.environ)
    env.pop("RECALLD_CONFIG", None)
    env.pop("RECALL_MODEL", None)
    env.update(env_extra or {})
    p = subprocess.run([RECALLD] + args, capture_output=True, text=True, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout, p.stderr


def settings(out):
    """{key: (value, source)} from --check-config's stdout (commented-out lines skipped)."""
    r = {}
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        kv, _, src = line.partition("    # ")
        k, _, v = kv.partition(" = ")
        r[k.strip()] = (v.strip(), src.strip())
    return r


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        print("skipped: no tiny-fot model at %s (run the make_tiny_models fixture)" % MODEL)
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-config-")

    # ---- the file's values reach the daemon ------------------------------------------
    sock = os.path.join(tmp, "d.sock")
    conf = write(os.path.join(tmp, "recalld.conf"),
                 "# a recalld config\n"
                 "\n"
                 "model = %s\n"
                 "data = %s   # the data directory\n"
                 "listen = \"ipc://%s\"\n"
                 "threads = 2\n"
                 "max-sessions = 7\n"
                 "no-chunk-scale = false\n" % (MODEL, os.path.join(tmp, "data"), sock))
    env = dict(os.environ)
    env.pop("RECALLD_CONFIG", None)
    log = open(os.path.join(tmp, "d.log"), "wb")
    proc = subprocess.Popen([RECALLD, "--config", conf], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    ok = False
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        h = subprocess.run([RECALL, "--connect", "ipc://" + sock, "health"],
                           capture_output=True, text=True)
        if h.returncode == 0:
            ok = True
            break
        time.sleep(0.2)
    check(ok, "recalld --config FILE listens where the file says (recall health answers)")
    proc.terminate()
    check(proc.wait(60) == 0, "that recalld stops cleanly")
    log.close()

    # ---- flags win; sources are reported ---------------------------------------------
    rc, out, err = run(["--config", conf, "--check-config", "--max-sessions", "9"])
    s = settings(out)
    check(rc == 0, "--check-config of a good file exits 0", err)
    check(s.get("max-sessions") == ("9", "flag"), "a flag wins over the file", s.get("max-sessions"))
    check(s.get("threads") == ("2", "file %s:6" % conf), "a file value is reported with FILE:LINE",
          s.get("threads"))
    check(s.get("data", ("", ""))[0] == os.path.join(tmp, "data"),
          "a trailing comment is not part of the value", s.get("data"))
    check(s.get("listen", ("", ""))[0] == "ipc://" + sock, "quotes are stripped", s.get("listen"))
    check(s.get("max-chunk-bytes") == ("1M", "default"), "defaults are reported as such",
          s.get("max-chunk-bytes"))
    check("no-chunk-scale" in s and s["no-chunk-scale"][0] == "false",
          "a switch set false stays off", s.get("no-chunk-scale"))
    keys = [l.split(" = ")[0].lstrip("# ").strip() for l in out.splitlines()
            if " = " in l or l.rstrip().endswith(" =") or " =    #" in l]
    check(len(keys) == len(set(keys)), "every setting is printed once", keys)
    # The report is a config file itself.
    again = write(os.path.join(tmp, "again.conf"), out)
    rc2, out2, err2 = run(["--config", again, "--check-config"])
    check(rc2 == 0 and settings(out2).get("max-sessions", ("",))[0] == "9",
          "--check-config's output is a config file --check-config accepts", err2)

    # ---- the default file ------------------------------------------------------------
    deff = write(os.path.join(tmp, "default.conf"), "model = %s\nmax-sessions = 3\n" % MODEL)
    rc, out, err = run(["--check-config"], {"RECALLD_CONFIG": deff})
    check(rc == 0 and settings(out).get("max-sessions", ("",))[0] == "3",
          "without --config the default file is read", out + err)
    check(("# config file: %s" % deff) in out, "the report names the file read", out[:300])
    rc, out, err = run(["--check-config", "--no-config", "--model", MODEL],
                       {"RECALLD_CONFIG": deff})
    check(rc == 0 and settings(out).get("max-sessions") == ("1024", "default"),
          "--no-config skips the default file", out + err)
    check(run(["--config", os.path.join(tmp, "missing.conf"), "--check-config"])[0] == 2,
          "a --config file that is not there is an error (exit 2)")

    # ---- bad lines: exit 2 with FILE:LINE --------------------------------------------
    bad = [
        ("unknown key", "model = %s\nbogus-key = 1\n" % MODEL, ":2:", "unknown key"),
        ("no '='", "model %s\n" % MODEL, ":1:", "key = value"),
        ("bad value", "# c\nmax-sessions = many\n", ":2:", "max-sessions"),
        ("bad size", "host-memory-budget = lots\n", ":1:", "host-memory-budget"),
        ("duplicate", "threads = 1\nthreads = 2\n", ":2:", "line 1"),
        ("alias duplicate", "memory-dtype = bf16\nmem-dtype = f32\n", ":2:", "line 1"),
        ("bad switch", "no-chunk-scale = maybe\n", ":1:", "true or false"),
        ("command-line key", "check-config = true\n", ":1:", "command line"),
        ("unterminated quote", "data = \"abc\n", ":1:", "quote"),
        ("empty value", "data =\n", ":1:", "no value"),
    ]
    for name, text, line, word in bad:
        p = write(os.path.join(tmp, "bad.conf"), text)
        rc, out, err = run(["--config", p, "--check-config"])
        check(rc == 2 and (p + line) in err and word in err,
              "a config file with %s: exit 2 naming FILE%s" % (name, line), (rc, err))
        rc, out, err = run(["--config", p, "--data", os.path.join(tmp, "never")])
        check(rc == 2 and (p + line) in err, "recalld itself refuses it too (%s)" % name, (rc, err))
    check(not os.path.exists(os.path.join(tmp, "never")), "a refused start created nothing")

    # ---- --check-config: problems exit 1, nothing bound or created ------------------
    port = free_port()
    held = socket.socket()
    held.bind(("127.0.0.1", port))
    held.listen(1)
    fresh = os.path.join(tmp, "fresh-data")
    rc, out, err = run(["--no-config", "--check-config", "--model", MODEL, "--data", fresh,
                        "--listen", "tcp://127.0.0.1:%d" % port])
    held.close()
    check(rc == 0, "--check-config passes while another process holds the port (it binds nothing)",
          err)
    check(not os.path.exists(fresh), "--check-config does not create the data directory")

    nomodel = os.path.join(tmp, "empty-model")
    os.mkdir(nomodel)
    ro = os.path.join(tmp, "ro")
    os.mkdir(ro)
    os.chmod(ro, 0o500)
    rc, out, err = run(["--no-config", "--check-config", "--model", nomodel,
                        "--data", os.path.join(ro, "sub", "data"),
                        "--listen", "tcp://127.0.0.1:notaport", "--http", "localhost"])
    expect = 4  # the data directory's parent does not exist, so this fails for root too
    check(rc == 1, "--check-config with problems exits 1", (rc, err))
    check("config.json" in err or "cannot load the model" in err,
          "it names the model directory's problem", err)
    check("--listen" in err and "port" in err, "it names the bad --listen", err)
    check("--http" in err, "it names the bad --http", err)
    check(("%d problem" % expect) in err, "it counts every problem (%d)" % expect, err)
    check(not os.path.exists(os.path.join(ro, "sub")), "nothing was created")
    rc, out, err = run(["--no-config", "--check-config", "--model", MODEL,
                        "--listen", "ipc://%s/no-such-dir/d.sock" % tmp])
    check(rc == 1 and "--listen" in err and "no-such-dir" in err,
          "an ipc:// endpoint in a directory that is not there is a problem", (rc, err))
    rc, out, err = run(["--no-config", "--check-config", "--model", MODEL,
                        "--listen", "ipc://@recall-abstract"])
    check(rc == 0, "an abstract ipc:// endpoint needs no directory", (rc, err))
    rc, out, err = run(["--no-config", "--check-config", "--model", MODEL, "--window", "100000"])
    check(rc == 1 and "session defaults" in err, "session defaults are checked against the model",
          (rc, err))
    os.chmod(ro, 0o700)

    return summary()


if __name__ == "__main__":
    sys.exit(main())
