#!/usr/bin/python3
"""e2e_diskfull.py — a real full disk under recalld: ingest fails cleanly, nothing is
half-written, and ingest goes on from where it stopped once space returns.

test_faults.c covers the injected kinds (EIO on the N-th write or sync, EFBIG from
RLIMIT_FSIZE); this one fills a real filesystem, so the daemon meets ENOSPC where the
kernel gives it (row files, LMDB pages, the directory entries of a new session):

  1. a tmpfs of 8 MiB is mounted for recalld's --data (as root; else, where user namespaces
     are allowed, the test re-runs itself under `unshare --user --map-root-user --mount`;
     else it is skipped, exit 77, and says why: no privileges to mount anything);
  2. a filler file takes all but FREE bytes; chunks are ingested one by one (each one
     `recall ingest` call) until one fails;
  3. the failure: exit 1, a message that says the disk is full (no space), the session's
     info unchanged (seq, tokens) from before that chunk, `recall verify` passes, its
     committed rows equal a clean ingest's byte for byte, and it answers a question;
     another session cannot be created either, and fails as cleanly; a retry fails the same;
  4. the filler is deleted: the same chunk goes in, and the rest; the session ends exactly
     as a clean ingest of all the chunks (tokens, rows, verify); after a restart too.

Environment as e2e_cli.py (set by ctest). Prints "N passed, N failed"; exits 1 on failure."""
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402
from e2e_cli import check  # noqa: E402
from e2e_soak import cli, Daemon, WINDOW_BYTES  # noqa: E402

FS_BYTES = 8 << 20
FREE = 1200 << 10          # about five chunks of rows
CHUNK_BYTES = 512
N_CHUNKS = 24
ROW_FILES = ("L0.keys", "L0.values", "L1.keys", "L1.values")


def try_mount(mnt):
    """'' if a tmpfs is mounted on mnt, else why not."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % FS_BYTES, "tmpfs", mnt],
                       capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip() or "mount exited %d" % r.returncode)


def rows_equal(data, ref_data, name, wins):
    nb = wins * WINDOW_BYTES
    for f in ROW_FILES:
        try:
            with open(os.path.join(data, "rows", name, f), "rb") as a, \
                    open(os.path.join(ref_data, "rows", name, f), "rb") as b:
                if a.read(nb) != b.read(nb):
                    return "%s differs in its first %d windows" % (f, wins)
        except OSError as x:
            if wins:
                return str(x)
    return True


def state(ep, name):
    rc, i, err = cli(ep, "info", name)
    i = i if rc == 0 and i else {}
    return i.get("last_seq", -1), i.get("tokens", -1), i.get("windows", -1)


def run(tmp, mnt):
    text = e.corpus_text(CHUNK_BYTES * (N_CHUNKS + 2), offset=11)
    chunks = e.chunk_text(text, CHUNK_BYTES)[:N_CHUNKS]
    files = []
    for k, c in enumerate(chunks):
        p = os.path.join(tmp, "c%02d.txt" % k)
        with open(p, "w") as f:
            f.write(c)
        files.append(p)

    # The reference on an ordinary disk: tokens after every chunk, and the rows.
    ref = Daemon(os.path.join(tmp, "ref"), "tcp://127.0.0.1:%d" % e.free_port(),
                 os.path.join(tmp, "ref.log"))
    os.makedirs(ref.data)
    ref.start()
    toks = [0]
    for k, p in enumerate(files):
        rc, j, err = cli(ref.ep, "ingest", "s", p, "--chunk-bytes", str(CHUNK_BYTES))
        if not check(rc == 0 and j and j.get("last_seq") == k + 1, "reference chunk %d" % k,
                     (rc, j, err)):
            return
        toks.append(j["tokens"])
    ref.kill()

    data = os.path.join(mnt, "data")
    os.makedirs(data)
    d = Daemon(data, "tcp://127.0.0.1:%d" % e.free_port(), os.path.join(tmp, "recalld.log"))
    d.start()
    try:
        # A session that exists before the disk fills, so its create is not what fails.
        rc, j, err = cli(d.ep, "ingest", "s", files[0], "--chunk-bytes", str(CHUNK_BYTES))
        check(rc == 0, "first chunk on the empty filesystem", (rc, j, err))
        st = os.statvfs(mnt)
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - FREE))
        st = os.statvfs(mnt)
        print("diskfull: %d KiB free on the %d KiB tmpfs after the filler"
              % (st.f_bavail * st.f_frsize >> 10, st.f_blocks * st.f_frsize >> 10), flush=True)

        # Chunks one at a time until the disk refuses one.
        k, fail = 1, None
        while k < N_CHUNKS:
            before = state(d.ep, "s")
            rc, j, err = cli(d.ep, "ingest", "s", files[k], "--chunk-bytes", str(CHUNK_BYTES))
            if rc != 0:
                fail = (rc, j, err, before)
                break
            check(j and j.get("tokens") == toks[k + 1], "chunk %d: tokens as the reference" % k,
                  (j, toks[k + 1]))
            k += 1
        if not check(fail is not None and 1 < k < N_CHUNKS,
                     "the full disk stopped an ingest after some chunks went in", k):
            return
        rc, j, err, before = fail
        msg = ((j or {}).get("error") or {}).get("message", "") + err
        print("diskfull: chunk %d refused: exit %d: %s" % (k + 1, rc, msg.strip()), flush=True)
        check(rc == 1 and d.proc.poll() is None, "the ingest fails with exit 1 and recalld "
              "stays up", (rc, d.proc.poll()))
        low = msg.lower()
        check("no space" in low or "full disk" in low or "disk is full" in low,
              "the error says the disk is full", msg)
        check(before == (k, toks[k], toks[k] // e.WINDOW), "the session was at seq %d" % k,
              before)
        after = state(d.ep, "s")
        check(after == before, "nothing of the refused chunk shows (seq, tokens, windows)",
              (before, after))
        rc, v, err = cli(d.ep, "verify", "s")
        check(rc == 0 and v and v.get("ok") is True and v.get("windows") == after[2],
              "verify passes on the full disk", (rc, v, err))
        check(rows_equal(data, ref.data, "s", after[2]) is True,
              "the committed rows equal a clean ingest's",
              rows_equal(data, ref.data, "s", after[2]))
        rc, a, err = cli(d.ep, "ask", "s", "What next?", "--max-tokens", "2", "--temperature",
                         "0")
        check(rc == 0 and a and a.get("tokens"), "the session answers on the full disk",
              (rc, a, err))
        rc, j2, err2 = cli(d.ep, "ingest", "s", files[k], "--chunk-bytes", str(CHUNK_BYTES))
        check(rc == 1 and state(d.ep, "s") == before, "a retry fails the same clean way",
              (rc, j2, err2))
        # Not a byte left: a new session is refused (or created empty), never half there.
        st = os.statvfs(mnt)
        filler2 = os.path.join(mnt, "filler2")
        with open(filler2, "wb") as f:
            try:
                f.write(b"\0" * (st.f_bavail * st.f_frsize))
                f.flush()
            except OSError:
                pass
        rc, j3, err3 = cli(d.ep, "ingest", "t", files[0], "--chunk-bytes", str(CHUNK_BYTES))
        rc4, i4, _ = cli(d.ep, "info", "t")
        msg3 = ((j3 or {}).get("error") or {}).get("message", "") + err3
        print("diskfull: a new session on a disk with 0 bytes free: exit %d: %s"
              % (rc, msg3.strip()), flush=True)
        check(rc == 1 and (rc4 == 1 or (i4 and i4.get("tokens") == 0 and
                                        i4.get("last_seq") == 0)),
              "a new session's first chunk is refused and leaves nothing half there",
              (rc, j3, err3, rc4, i4))
        if rc4 == 0:
            rc, v, err = cli(d.ep, "verify", "t")
            check(rc == 0 and v and v.get("ok"), "the empty new session verifies", (v, err))
        os.unlink(filler2)

        # Space returns: the same chunk and the rest go in.
        os.unlink(filler)
        for i in range(k, N_CHUNKS):
            rc, j, err = cli(d.ep, "ingest", "s", files[i], "--chunk-bytes", str(CHUNK_BYTES))
            if not check(rc == 0 and j and j.get("last_seq") == i + 1 and
                         j.get("tokens") == toks[i + 1],
                         "after space returns: chunk %d goes in as seq %d" % (i, i + 1),
                         (rc, j, err)):
                break
        check(state(d.ep, "s") == (N_CHUNKS, toks[-1], toks[-1] // e.WINDOW),
              "the session holds every chunk once", state(d.ep, "s"))
        check(d.stop() == 0, "recalld exits 0")
        d.start()
        final = state(d.ep, "s")
        check(final == (N_CHUNKS, toks[-1], toks[-1] // e.WINDOW), "and after a restart", final)
        rc, v, err = cli(d.ep, "verify", "s")
        check(rc == 0 and v and v.get("ok") is True, "verify passes at the end", (v, err))
        check(rows_equal(data, ref.data, "s", final[2]) is True,
              "all the rows equal a clean ingest's", rows_equal(data, ref.data, "s", final[2]))
        rc, a, err = cli(d.ep, "ask", "s", "What next?", "--max-tokens", "2", "--temperature",
                         "0")
        check(rc == 0 and a and a.get("tokens"), "the session answers", (rc, a, err))
    finally:
        if d.proc:
            print("--- recalld log (tail) ---\n" + d.tail(2000) if e.failed else "", end="")
            d.kill()


def stop(self):
    self.proc.send_signal(signal.SIGTERM)
    rc = self.proc.wait(60)
    self.proc = None
    return rc


Daemon.stop = stop


def main():
    if not os.path.exists(os.path.join(e.MODEL, "config.json")):
        print("FAIL: no tiny-fot model in %s\n0 passed, 1 failed" % e.DATA)
        return 1
    tmp = tempfile.mkdtemp(prefix="recall-diskfull-")
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    why = try_mount(mnt)
    if why:
        os.rmdir(mnt)
        os.rmdir(tmp)
        if os.environ.get("RECALL_DISKFULL_INSIDE"):
            print("skipped: cannot mount a tmpfs even in a user namespace: %s" % why)
            return 77
        # Not root, or a container without CAP_SYS_ADMIN: a user namespace may still mount
        # a tmpfs of its own.
        env = dict(os.environ, RECALL_DISKFULL_INSIDE="1")
        try:
            rc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount",
                                 sys.executable, os.path.abspath(__file__)], env=env).returncode
        except OSError as x:
            rc, why = None, why + "; unshare: %s" % x
        # The run inside exits 0, 3 (failed) or 77; unshare itself failing exits 1.
        if rc in (0, 3, 77):
            return {0: 0, 3: 1, 77: 77}[rc]
        why += "; unshare --user --mount exited %s" % rc
        print("skipped: cannot mount a tmpfs (%s); test_faults' RLIMIT_FSIZE case covers a "
              "full disk by injection" % why)
        return 77
    print("diskfull: tmpfs of %d MiB at %s" % (FS_BYTES >> 20, mnt), flush=True)
    try:
        run(tmp, mnt)
    except Exception as x:
        check(False, "diskfull run", "%s: %s" % (type(x).__name__, x))
    finally:
        subprocess.run(["umount", mnt])
    print("%d passed, %d failed" % (e.passed, e.failed))
    subprocess.run(["rm", "-rf", tmp])
    return (3 if os.environ.get("RECALL_DISKFULL_INSIDE") else 1) if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
