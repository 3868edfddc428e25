#!/usr/bin/python3
"""e2e_tiers_gpu.py — the daemon-wide GPU memory budget, through recalld on a GPU (label gpu).

1. Default: with no --gpu-memory-budget, recalld's budget (stats) is a share of the GPU's
   memory: more than 0, less than all of it.
2. Three exact tiny-fot-d64-bf16 sessions (head_dim 64: the GPU attention takes no less) under a --gpu-memory-budget that holds one session's
   rows: questions cycled over them move the least recently used off the GPU (to host
   memory) and back; every answer equals that of a daemon without a GPU budget, at most one
   session is on the GPU at a time, and stats count the evictions.
3. A knn session larger than the budget is served, not refused: its stream keeps at most the
   budget on the device (the rest spills to host memory).
4. So is an exact one: the rows past the budget stream through the device each forward.

Without a GPU it prints "skipped: no GPU" and exits 77. Environment as e2e_cli.py."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_cli as e  # noqa: E402
from e2e_cli import check, recall, info  # noqa: E402
from e2e_tiers import Daemon, ask, reference_answers, tiers_of, write  # noqa: E402

GPU_BUDGET = 16 << 20  # one ~11 MiB session (bf16 rows, head_dim 64) fits, two do not


def have_gpu():
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def gpu_total():
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                        "-i", "0"], capture_output=True, text=True)
    return int(r.stdout.split()[0]) << 20


def run(tmp):
    model = os.path.join(e.DATA, "tiny-fot-d64-bf16")
    names = ["a", "b", "c"]
    docs = {n: write(tmp, n + ".txt", e.corpus_text(24000, offset=300 * i))
            for i, n in enumerate(names)}
    cuda = ["--device", "cuda", "--host-memory-budget", "none"]

    # --- reference (and 1): the default budget --------------------------------------------
    ref_ep = "tcp://127.0.0.1:%d" % e.free_port()
    ref = Daemon(os.path.join(tmp, "ref"), ref_ep, os.path.join(tmp, "ref.log"), cuda,
                 model=model)
    os.makedirs(ref.data_dir)
    ref.start()
    try:
        # The GPU budget is set once the weights are in (health says ready).
        for _ in range(600):
            rc, h, err = recall(ref_ep, "health")
            if rc == 0 and h and h.get("ready"):
                break
            time.sleep(0.1)
        rc, st, err = recall(ref_ep, "stats")
        total = gpu_total()
        check(rc == 0 and 0 < st.get("gpu_budget", 0) < total,
              "the default GPU budget is a share of the GPU's %.1f GiB" % (total / 2**30), st)
        want = reference_answers(ref_ep, names, docs)
    finally:
        ref.stop()

    # --- 2. three sessions, a GPU budget that holds one ------------------------------------
    ep = "tcp://127.0.0.1:%d" % e.free_port()
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    d = Daemon(data, ep, os.path.join(tmp, "recalld.log"),
               cuda + ["--gpu-memory-budget", os.environ.get("E2E_TIERS_GPU_BUDGET",
                                                             str(GPU_BUDGET))], model=model)
    d.start()
    try:
        for n in names:
            rc, j, err = recall(ep, "ingest", n, docs[n], "--chunk-bytes", "2K")
            check(rc == 0, "ingest %s under the GPU budget" % n, err)
        sizes = {n: info(ep, n).get("memory_bytes_disk", 0) for n in names}
        check(all(GPU_BUDGET / 2 < s < GPU_BUDGET for s in sizes.values()),
              "each session alone fits the GPU budget, two do not", sizes)
        for rnd in range(2):
            for n in names:
                rc, a, err = ask(ep, n)
                check(rc == 0 and a and a.get("tokens") == want[n],
                      "round %d: %s answers as without a GPU budget" % (rnd, n),
                      (a, want[n], err))
                t = tiers_of(ep)
                on_gpu = [k for k, v in t.items() if v == "gpu"]
                check(on_gpu == [n], "round %d: only %s is on the GPU" % (rnd, n), t)
                check(all(v in ("gpu", "host") for v in t.values()),
                      "round %d: the others wait in host memory" % rnd, t)
        rc, st, err = recall(ep, "stats")
        check(rc == 0 and st.get("gpu_budget") == GPU_BUDGET and st.get("evictions", 0) >= 5,
              "stats: the daemon's GPU budget and the evictions", st)

        # --- 3. a knn session larger than the budget -----------------------------------
        big = write(tmp, "big.txt", e.corpus_text(60000, offset=5000))
        rc, j, err = recall(ep, "ingest", "big", big, "--memory", "knn", "--chunk-bytes", "8K")
        check(rc == 0, "a knn session larger than the GPU budget ingests", err)
        i = info(ep, "big")
        check(i.get("memory_bytes_disk", 0) > GPU_BUDGET and
              0 < i.get("memory_bytes_device", 0) <= GPU_BUDGET,
              "its rows pass the budget; the device holds at most the budget", i)
        rc, a, err = ask(ep, "big")
        check(rc == 0 and a and a.get("tokens"), "and it answers", err)

        # --- 4. an exact session larger than the budget --------------------------------
        rc, j, err = recall(ep, "ingest", "bigx", big, "--chunk-bytes", "8K")
        check(rc == 0, "an exact session larger than the GPU budget ingests (not refused)", err)
        i = info(ep, "bigx")
        check(i.get("memory_bytes_disk", 0) > GPU_BUDGET and
              0 < i.get("memory_bytes_device", 0) <= GPU_BUDGET,
              "its rows pass the budget; the device holds at most the budget", i)
        rc, a, err = ask(ep, "bigx")
        check(rc == 0 and a and a.get("tokens"), "and it answers (the rest streamed through)",
              err)
    finally:
        if e.failed:
            print("--- recalld.log (tail) ---\n" + d.log())
        d.stop()


def main():
    if not have_gpu():
        print("skipped: no GPU")
        return 77
    tmp = tempfile.mkdtemp(prefix="recall-tiers-gpu-")
    try:
        run(tmp)
    except Exception as x:
        check(False, "e2e_tiers_gpu run", "%s: %s" % (type(x).__name__, x))
    print("%d passed, %d failed" % (e.passed, e.failed))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if e.failed else 0


if __name__ == "__main__":
    sys.exit(main())
