#!/usr/bin/python3
"""REFERENCE.md's passkey test on an exported checkpoint, in PyTorch, with exact or kNN memory.

    eval_passkey.py --model models/default --lengths 16384,262144 --depths 10 --trials 2 \\
                    [--knn 0,32,128] [--out eval.json]

REFERENCE.md's template, `recall passkey`'s scoring and recall's memory semantics
(train.py's eval_passkey); meant for the GPU host, where a 256k-token trial takes seconds.
--knn 0 is exact memory; each k > 0 runs kNN memory with that k. Depths are spread evenly
over [0, 1] as `recall passkey --depths N` spreads them. One difference: a prompt here is
exactly LENGTH tokens, a whole number of windows when LENGTH is, so the answer starts a fresh
window (the hard case); `recall passkey`'s prompts land a few tokens short of LENGTH.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, FoTModel  # noqa: E402
from train import eval_passkey, load_exported  # noqa: E402


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="exported checkpoint directory")
    ap.add_argument("--lengths", default="16384,65536,262144")
    ap.add_argument("--depths", type=int, default=10, help="depths spread over [0, 1]")
    ap.add_argument("--trials", type=int, default=1, help="trials per depth")
    ap.add_argument("--knn", default="128", help="comma list of k (0: exact memory)")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    if a.depths < 1 or a.trials < 1:
        ap.error("--depths and --trials must be at least 1")

    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.model, "tokenizer.model"))
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = Config.from_hf(json.load(f))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = FoTModel(cfg)
    model.load_hf_state({k: torch.from_numpy(v) for k, v in load_exported(a.model).items()})
    model = model.to(dev).eval()
    depths = [i / (a.depths - 1) if a.depths > 1 else 0.5 for i in range(a.depths)]
    t0 = time.time()

    def log(msg):
        print("[%7.1fs] %s" % (time.time() - t0, msg), flush=True)

    res = {}
    for k in [int(x) for x in a.knn.split(",")]:
        res["exact" if k == 0 else "knn%d" % k] = eval_passkey(
            model, sp, [int(x) for x in a.lengths.split(",")], depths, a.trials, a.seed, log,
            knn_k=k)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
