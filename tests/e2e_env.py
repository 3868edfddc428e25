"""e2e_env.py — what the end-to-end test scripts share: where the binaries, the sources and
the tiny models are (from ctest's environment, with build-tree defaults for a run by hand),
the pass/fail count that every check adds to, and a free loopback port.

A script imports what it uses and ends with `return summary()`, which prints
"N passed, N failed" and gives the exit status (1 on any failure)."""
import os
import socket

SRC = os.environ.get("RECALL_SOURCE_DIR",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BUILD = os.environ.get("RECALL_BUILD_DIR", os.path.join(SRC, "build"))
RECALL = os.environ.get("RECALL_BIN", os.path.join(BUILD, "clients", "recall"))
RECALLD = os.environ.get("RECALLD_BIN", os.path.join(BUILD, "daemon", "recalld"))
DATA = os.environ.get("RECALL_TEST_DATA", os.path.join(BUILD, "tests", "data"))
MODEL = os.path.join(DATA, "tiny-fot")


class _Counts:
    passed = 0
    failed = 0


counts = _Counts()


def check(cond, what, detail=""):
    """Counts one check; prints FAIL with what and the detail (cut at 3000 characters)."""
    if cond:
        counts.passed += 1
    else:
        counts.failed += 1
        print("FAIL %s%s" % (what, (": " + str(detail)[:3000]) if detail != "" else ""),
              flush=True)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def summary():
    print("%d passed, %d failed" % (counts.passed, counts.failed))
    return 1 if counts.failed else 0
