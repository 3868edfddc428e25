#!/usr/bin/env python3
"""Perplexity of one long text under rope, Self-Extend, DCA and RoPE scalings at windows of
1x, 2x, 4x and 8x a model's trained length, measured through recalld with `recall ppl --text`
(issue 5's evaluation). Prints a markdown table, writes it and a plot (PNG, if matplotlib is
installed) next to --out.

  bench/eval_positional.py --model DIR [--build build] [--text FILE] [--out bench/positional_ppl]

Plain RoPE past the trained length is refused by recall (positions it never saw): its cells
say so. Self-Extend uses W = L/4 and the smallest group G that reaches the window; DCA its
defaults (S = 3L/4, w = L/8).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run_recall(recall, endpoint, args):
    p = subprocess.run([recall, "--connect", endpoint, "--json", *args],
                       capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": {"message": (p.stderr or p.stdout).strip()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--build", default="build")
    ap.add_argument("--text", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                   "data", "corpus.txt"))
    ap.add_argument("--tokens", type=int, default=0,
                    help="cut the text to about this many tokens (default 16 x L)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "positional_ppl"))
    ap.add_argument("--title", default="")
    a = ap.parse_args()

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    L = int(cfg["max_position_embeddings"])
    n_tok = a.tokens or 16 * L
    text = open(a.text, encoding="utf-8").read()
    # ~4 bytes a token for English BPE; recall reports the real count.
    text = text[: n_tok * 4]
    tmp = tempfile.mkdtemp(prefix="recall-eval-")
    text_path = os.path.join(tmp, "text.txt")
    open(text_path, "w", encoding="utf-8").write(text)
    recalld = os.path.join(a.build, "daemon", "recalld")
    recall = os.path.join(a.build, "clients", "recall")
    endpoint = "ipc://" + os.path.join(tmp, "sock")
    log = open(os.path.join(tmp, "recalld.log"), "w")
    daemon = subprocess.Popen([recalld, "--model", a.model, "--data", os.path.join(tmp, "db"),
                               "--listen", endpoint, "--device", "cpu"], stderr=log)
    try:
        for _ in range(100):
            if "error" not in run_recall(recall, endpoint, ["health"]):
                break
            time.sleep(0.2)
        factors = [1, 2, 4, 8]
        schemes = {
            "rope": lambda f: [],
            # The smallest group that reaches the window: (L − W)·G + W ≥ f·L.
            "self-extend": lambda f: ["--positional", "self-extend", "--group",
                                      str(max(1, -(-(f * L - L // 4) // (L - L // 4)))),
                                      "--neighbor", str(L // 4)],
            "dca": lambda f: ["--positional", "dca"],
            "linear (PI)": lambda f: ["--rope-scaling", "linear", "--rope-factor", str(f)],
            "yarn": lambda f: ["--rope-scaling", "yarn", "--rope-factor", str(f)],
        }
        rows, tokens = {}, None
        for name, extra in schemes.items():
            rows[name] = []
            for f in factors:
                t0 = time.time()
                r = run_recall(recall, endpoint, ["ppl", "--text", text_path,
                                                  "--window", str(f * L), *extra(f)])
                if "ppl" in r:
                    rows[name].append(r["ppl"])
                    tokens = r.get("tokens", tokens)
                    print(f"{name:12s} {f}x (window {f * L}): ppl {r['ppl']:.3f} "
                          f"({time.time() - t0:.1f} s)", flush=True)
                else:
                    msg = r.get("error", {}).get("message", "?")
                    rows[name].append(None)
                    print(f"{name:12s} {f}x (window {f * L}): refused: {msg}", flush=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)

    head = f"| scheme | " + " | ".join(f"{f}× L ({f * L})" for f in factors) + " |"
    lines = [head, "|" + " --- |" * (len(factors) + 1)]
    for name, vals in rows.items():
        cells = [f"{v:.2f}" if v is not None else "refused" for v in vals]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    desc = (f"{a.title or os.path.basename(os.path.normpath(a.model))}: L = {L}, "
            f"{tokens} tokens of {os.path.basename(a.text)}, recall ppl --text (CPU)")
    print("\n" + desc + "\n\n" + table)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    open(a.out + ".md", "w").write(desc + "\n\n" + table + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        for name, vals in rows.items():
            xs = [f for f, v in zip(factors, vals) if v is not None]
            ys = [v for v in vals if v is not None]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"{f}×" for f in factors])
        ax.set_xlabel(f"window / trained length (L = {L})")
        ax.set_ylabel("perplexity")
        ax.set_title(desc, fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(a.out + ".png")
        print(f"wrote {a.out}.md and {a.out}.png")
    except ImportError:
        print(f"wrote {a.out}.md (no matplotlib: no plot)")


if __name__ == "__main__":
    sys.exit(main())
