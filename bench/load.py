#!/usr/bin/env python3
"""load.py — how quickly recalld answers quick requests while it ingests (issue 17).

For each recalld binary given (--recalld, repeatable: e.g. this tree's and main's, to
compare), starts it on tiny-fot with a fresh data directory and runs
`load_driver latency`: --ingesters clients ingest --chunk-bytes chunks at full speed while
--requests health then stats requests are timed one at a time. With --disk-pressure a
background writer dirties and fsyncs 64 MiB at a time on the same file system, which makes
every commit's fsync slow (as the large rows of a real model would). --repeat runs each
binary that many times, interleaved. --mixed SECONDS also runs the 64-client mixed load
(`load_driver mixed`) for that long. Prints a table and writes results.json to --out.

  bench/load.py --recalld build/daemon/recalld --recalld /path/to/main/recalld \\
                --disk-pressure --repeat 3

Only the standard library; load_driver and the model come from --build."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import e2e_cli as e  # noqa: E402  (corpus text, free ports, the daemon harness)


def pressure(path, stop):
    """Dirties 64 MiB and fsyncs it, again and again, until stop is set."""
    block = os.urandom(1 << 20)
    while not stop.is_set():
        with open(path, "wb") as f:
            for _ in range(64):
                f.write(block)
                if stop.is_set():
                    break
            f.flush()
            os.fsync(f.fileno())
    try:
        os.unlink(path)
    except OSError:
        pass


def run_one(recalld, driver, model, work, text, args, mode_args):
    ep = "tcp://127.0.0.1:%d" % e.free_port()
    data = tempfile.mkdtemp(dir=work)
    log = open(os.path.join(work, "recalld.log"), "ab")
    proc = subprocess.Popen([recalld, "--model", model, "--data", data, "--listen", ep],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            r = subprocess.run([e.RECALL, "health", "--connect", ep, "--timeout", "2"],
                               capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        stop = threading.Event()
        t = None
        if args.disk_pressure:
            t = threading.Thread(target=pressure, args=(os.path.join(work, "pressure.bin"), stop))
            t.start()
            time.sleep(1)
        r = subprocess.run([driver, *mode_args[:1], ep, text, *mode_args[1:]],
                           capture_output=True, text=True, timeout=1800)
        stop.set()
        if t:
            t.join()
        if r.returncode != 0:
            print("load_driver failed:", r.stderr, file=sys.stderr)
        return json.loads(r.stdout) if r.stdout.strip() else None
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--recalld", action="append", help="recalld binaries to compare")
    ap.add_argument("--ingesters", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--chunk-bytes", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--disk-pressure", action="store_true")
    ap.add_argument("--mixed", type=float, default=0, help="seconds of the 64-client mixed load")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "build",
                                                                          "load-out"))
    args = ap.parse_args()
    driver = os.path.join(args.build, "tests", "load_driver")
    model = os.path.join(args.build, "tests", "data", "tiny-fot")
    e.RECALL = os.path.join(args.build, "clients", "recall")
    bins = args.recalld or [os.path.join(args.build, "daemon", "recalld")]
    if not os.path.exists(os.path.join(model, "config.json")):
        sys.exit("no tiny-fot in %s: run `ctest -R make_tiny_models` first" % model)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="load-", dir=os.path.join(ROOT, "build"))
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        f.write(e.corpus_text(400000))
    results = []
    for rep in range(args.repeat):
        for b in bins:
            j = run_one(b, driver, model, work, text, args,
                        ["latency", "--ingesters", str(args.ingesters), "--requests",
                         str(args.requests), "--chunk-bytes", str(args.chunk_bytes)])
            if j:
                j["recalld"] = b
                results.append(j)
                print("%-50s health p50 %7.2f p99 %7.2f max %7.2f | stats p50 %7.2f p99 %7.2f "
                      "max %7.2f ms | %d chunks" % (b[-50:], j["health"]["p50_ms"],
                                                    j["health"]["p99_ms"], j["health"]["max_ms"],
                                                    j["stats"]["p50_ms"], j["stats"]["p99_ms"],
                                                    j["stats"]["max_ms"], j["chunks"]), flush=True)
            if args.mixed:
                j = run_one(b, driver, model, work, text, args,
                            ["mixed", "--clients", "64", "--seconds", str(args.mixed),
                             "--chunk-bytes", "512"])
                if j:
                    j["recalld"] = b
                    results.append(j)
                    print("%-50s mixed: %d requests, %.1f/s, p50 %.1f p99 %.1f ms"
                          % (b[-50:], j["requests"], j["requests_per_s"], j["all"]["p50_ms"],
                             j["all"]["p99_ms"]), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"disk_pressure": args.disk_pressure, "runs": results}, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
