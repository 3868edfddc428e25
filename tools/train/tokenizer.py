#!/usr/bin/python3
"""Prepares the training inputs that are made on this machine (no network, Debian only):

    tokenizer.py --out build-train/data [--vocab 2048] [--seed 0]

1. English text: documentation prose from installed Debian packages whose copyright files
   grant permissive terms (SOURCES below; each entry names the license read from
   /usr/share/doc/PKG/copyright), plus the project's own tests/data/corpus.txt. Code blocks
   and non-ASCII characters are dropped (ASCII keeps byte offsets equal to character
   offsets in data.py). Written to OUT/english.txt, with OUT/sources.json listing what was
   used.
2. A SentencePiece BPE tokenizer (LLaMA-like: byte fallback, split digits, identity
   normalization, whitespace kept as written, unk 0 / bos 1 / eos 2, no pad), trained on
   that English text plus seeded synthetic task text from data.py, with one thread so the
   same inputs give the same model. Written to OUT/tokenizer.model.
"""
import argparse
import glob
import gzip
import io
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

# (package, glob patterns under /usr/share/doc/PKG, license as its copyright file states)
SOURCES = [
    ("nodejs", ["*.md", "api/*.md"], "MIT (Node.js contributors / Joyent)"),
    ("python3.11", ["README.rst.gz", "README.venv", "README.Debian"], "PSF-2.0 (Python Software Foundation License)"),
    ("libxml2", ["README.md", "NEWS.gz"], "MIT"),
    ("xz-utils", ["README.gz", "faq.txt.gz", "history.txt.gz"], "public domain (xz-utils docs)"),
    ("python3-pip", ["*.rst", "*.md", "*/*.rst", "*/*.md", "*/*/*.rst", "*/*/*.md"], "Expat (MIT)"),
]
PROJECT_CORPUS = os.path.join(ROOT, "tests", "data", "corpus.txt")


def read_any(path):
    with open(path, "rb") as f:
        b = f.read()
    if path.endswith(".gz"):
        b = gzip.decompress(b)
    return b.decode("utf-8", errors="replace")


def clean(text):
    """Prose only: drops fenced code blocks, HTML comments, table rows and lines that are
    mostly punctuation; squeezes runs of blank lines; keeps ASCII."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    out = []
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("|") or s.startswith("    ") and not s:
            continue
        letters = sum(c.isalpha() for c in s)
        if s and letters < 0.5 * len(s):
            continue
        out.append(line.rstrip())
    text = "\n".join(out)
    text = text.encode("ascii", errors="ignore").decode("ascii")
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text


def collect_english(out_dir):
    used, parts = [], []
    for pkg, pats, lic in SOURCES:
        base = os.path.join("/usr/share/doc", pkg)
        if not os.path.isfile(os.path.join(base, "copyright")):
            continue
        files = sorted(set(p for pat in pats for p in glob.glob(os.path.join(base, pat))))
        n = 0
        for p in files:
            if os.path.isfile(p):
                t = clean(read_any(p))
                if len(t) > 200:
                    parts.append(t)
                    n += len(t)
        if n:
            used.append({"package": pkg, "files": [os.path.relpath(p, base) for p in files],
                         "license": lic, "chars": n})
    t = clean(read_any(PROJECT_CORPUS))
    parts.append(t)
    used.append({"package": "recall (this project)", "files": ["tests/data/corpus.txt"],
                 "license": "the project's own", "chars": len(t)})
    text = "\n\n".join(parts)
    with open(os.path.join(out_dir, "english.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "sources.json"), "w") as f:
        json.dump(used, f, indent=2)
    return text, used


def train_tokenizer(lines, vocab, dest):
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
        vocab_size=vocab, byte_fallback=True, split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, num_threads=1, minloglevel=2,
        max_sentence_length=16384, input_sentence_size=0, shuffle_input_sentence=False)
    with open(dest, "wb") as f:
        f.write(buf.getvalue())


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build-train", "data"))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    text, used = collect_english(a.out)
    import data
    rng = random.Random(a.seed)
    synth = [data.synthetic_text(rng, data.English(text)) for _ in range(300)]
    # Paragraph-sized sentences keep the trainer's view of newlines inside text.
    lines = [p for p in re.split(r"\n\s*\n", text) if p.strip()] + synth
    train_tokenizer(lines, a.vocab, os.path.join(a.out, "tokenizer.model"))
    print("tokenizer.py: %d chars of English from %d sources, %d synthetic texts -> %s"
          % (len(text), len(used), len(synth), a.out))


if __name__ == "__main__":
    main(sys.argv[1:])
