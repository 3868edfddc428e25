#!/usr/bin/python3
"""e2e_systemd.py — recalld under systemd's rules, without systemd running.

sd_notify (daemon/notify.h): recalld started with $NOTIFY_SOCKET pointing at a unix
datagram socket this test owns (a path, then Linux's abstract namespace '@...') sends
READY=1 with a STATUS; by the time READY=1 arrives a Health request is answered (one try,
no retry loop); a later STATUS says "serving N sessions" with the real count; SIGTERM brings
STOPPING=1 and a clean exit; the count follows new sessions. --check-config sends nothing.

The unit (packaging/systemd/recalld.service): has Type=notify, DynamicUser, StateDirectory,
ProtectSystem=strict, ProtectHome, PrivateTmp, NoNewPrivileges, and starts recalld with
--config /etc/recall/recalld.conf --data ${STATE_DIRECTORY}; `systemd-analyze verify` on it
(its binary path pointed at the build) prints nothing, and prints a complaint for a copy
with a broken line (so the check can fail). Without systemd-analyze that check is reported
as skipped and not counted. The sample packaging/recalld.conf passes --check-config.

Environment (set by ctest): RECALL_BIN, RECALLD_BIN, RECALL_TEST_DATA, RECALL_SOURCE_DIR.
Prints "N passed, N failed"; exits 1 on any failure."""
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

UNIT = os.path.join(SRC, "packaging", "systemd", "recalld.service")
CONF = os.path.join(SRC, "packaging", "recalld.conf")



def env_without(*names, **extra):
    env = dict(os.environ)
    for n in names:
        env.pop(n, None)
    env.update(extra)
    return env


def notify_run(tmp, address, label):
    """Starts recalld with NOTIFY_SOCKET=address, follows its notifications."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if address.startswith("@"):
        sock.bind("\0" + address[1:])
    else:
        sock.bind(address)
    sock.settimeout(60)
    data = os.path.join(tmp, "data-" + label)
    # two sessions already there, so "serving N sessions" has a number to get right
    endpoint = "ipc://%s/%s.sock" % (tmp, label)
    log = open(os.path.join(tmp, label + ".log"), "wb")
    proc = subprocess.Popen([RECALLD, "--no-config", "--model", MODEL, "--data", data,
                             "--listen", endpoint, "--threads", "2"],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=env_without("RECALLD_CONFIG", NOTIFY_SOCKET=address))
    log.close()
    messages = []
    try:
        # STATUS lines may come first (the weights can be in before recalld reaches its
        # loop, and the worker says so); READY=1 is the one that matters.
        msg = ""
        while "READY=1" not in msg.split("\n"):
            msg = sock.recv(4096).decode()
            messages.append(msg)
        lines = msg.split("\n")
        check(any(l.startswith("STATUS=") for l in lines), "%s: READY=1 comes with a STATUS" % label,
              msg)
        check(all("READY=1" not in m for m in messages[:-1]), "%s: READY=1 once" % label, messages)
        # Health is answered by now: one try, no retries.
        h = subprocess.run([RECALL, "--connect", endpoint, "health"], capture_output=True,
                           text=True, timeout=30)
        check(h.returncode == 0, "%s: Health answers when READY=1 has arrived" % label,
              h.stdout + h.stderr)
        for name in ("a", "b"):
            subprocess.run([RECALL, "--connect", endpoint, "-q", "ingest", name, CONF],
                           capture_output=True, timeout=120)
        # The weights are in (the ingests ran): a "serving" status was sent, before or
        # with READY=1 (main.c orders them under the daemon's lock).
        serving = [m for m in messages if "STATUS=serving" in m]
        sock.settimeout(0.5)
        try:
            while not serving:
                m = sock.recv(4096).decode()
                messages.append(m)
                if "STATUS=serving" in m:
                    serving.append(m)
        except socket.timeout:
            pass
        check(serving and "serving 0 sessions" in serving[0],
              "%s: STATUS says serving 0 sessions (at start)" % label, messages)
        # The count follows the sessions: the ingests' jobs report 1, then 2.
        sock.settimeout(10)
        try:
            while not any("STATUS=serving 2 sessions" in m for m in messages):
                messages.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
        check(any("STATUS=serving 2 sessions" in m for m in messages),
              "%s: STATUS follows the session count (2 after two ingests)" % label, messages)
        proc.send_signal(signal.SIGTERM)
        sock.settimeout(60)
        stopping = False
        try:
            while not stopping:
                m = sock.recv(4096).decode()
                messages.append(m)
                stopping = "STOPPING=1" in m.split("\n")
        except socket.timeout:
            pass
        check(stopping, "%s: SIGTERM brings STOPPING=1" % label, messages)
        check(proc.wait(60) == 0, "%s: recalld exits 0" % label)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    # Restarted with the two sessions, its READY/serving status counts them.
    return data, endpoint


def main():
    if not os.path.exists(os.path.join(MODEL, "config.json")):
        print("skipped: no tiny-fot model at %s" % MODEL)
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-systemd-")

    # ---- sd_notify -----------------------------------------------------------------
    notify_run(tmp, os.path.join(tmp, "notify.sock"), "path")
    notify_run(tmp, "@recall-test-notify-%d" % os.getpid(), "abstract")

    # The session count is real: restart on the "path" data directory (2 sessions).
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = os.path.join(tmp, "notify2.sock")
    sock.bind(addr)
    sock.settimeout(60)
    proc = subprocess.Popen([RECALLD, "--no-config", "--model", MODEL,
                             "--data", os.path.join(tmp, "data-path"),
                             "--listen", "ipc://%s/r.sock" % tmp, "--threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env_without("RECALLD_CONFIG", NOTIFY_SOCKET=addr))
    seen = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any("STATUS=serving" in m for m in seen):
            seen.append(sock.recv(4096).decode())
    except socket.timeout:
        pass
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    check(any("STATUS=serving 2 sessions" in m for m in seen),
          "after a restart STATUS counts the 2 stored sessions", seen)
    # --check-config sends nothing.
    sock.settimeout(0.3)
    while True:  # drain what the stopped daemon sent
        try:
            sock.recv(4096)
        except socket.timeout:
            break
    subprocess.run([RECALLD, "--no-config", "--model", MODEL, "--check-config"],
                   capture_output=True, env=env_without("RECALLD_CONFIG", NOTIFY_SOCKET=addr))
    try:
        got = sock.recv(4096)
    except socket.timeout:
        got = None
    check(got is None, "--check-config notifies nothing", got)
    sock.close()

    # ---- the unit ------------------------------------------------------------------
    with open(UNIT) as f:
        unit = f.read()
    keys = {}
    for line in unit.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    for k, v in (("Type", "notify"), ("DynamicUser", "yes"), ("StateDirectory", "recall"),
                 ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                 ("NoNewPrivileges", "yes")):
        check(keys.get(k) == [v], "the unit sets %s=%s" % (k, v), keys.get(k))
    start = (keys.get("ExecStart") or [""])[0]
    check("--config /etc/recall/recalld.conf" in start and "--data ${STATE_DIRECTORY}" in start,
          "ExecStart reads /etc/recall/recalld.conf and keeps sessions in the state directory",
          start)
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        print("skipped (not counted): systemd-analyze verify: no systemd-analyze here "
              "(Debian package systemd)")
    else:
        d = os.path.join(tmp, "unit")
        os.mkdir(d)
        good = os.path.join(d, "recalld.service")
        with open(good, "w") as f:
            f.write(unit.replace("/usr/local/bin/recalld", os.path.abspath(RECALLD)))
        p = subprocess.run([analyze, "verify", good], capture_output=True, text=True)
        check(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
              "systemd-analyze verify accepts the unit without a word", p.stdout + p.stderr)
        bad_dir = os.path.join(tmp, "bad")
        os.mkdir(bad_dir)
        bad = os.path.join(bad_dir, "recalld.service")
        with open(bad, "w") as f:
            f.write(unit.replace("/usr/local/bin/recalld", os.path.abspath(RECALLD))
                    .replace("ProtectSystem=strict", "ProtectSystem=stricter"))
        p = subprocess.run([analyze, "verify", bad], capture_output=True, text=True)
        check("protect system" in (p.stdout + p.stderr).lower(),
              "systemd-analyze verify complains about a broken copy (the check can fail)",
              p.stdout + p.stderr)

    # ---- the sample config file ------------------------------------------------------
    p = subprocess.run([RECALLD, "--config", CONF, "--model", MODEL, "--data",
                        os.path.join(tmp, "conf-data"), "--check-config"],
                       capture_output=True, text=True, env=env_without("RECALLD_CONFIG"))
    check(p.returncode == 0, "packaging/recalld.conf passes --check-config (model overridden)",
          p.stderr)
    check("listen = tcp://127.0.0.1:5555    # file %s:" % CONF in p.stdout,
          "its listen = line is read", p.stdout[:2000])

    shutil.rmtree(tmp, ignore_errors=True)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
