#!/usr/bin/python3
"""Reference answers for test_tokenizer from python3-sentencepiece.

    tokenizer_ref.py TOKENIZER_MODEL REQUESTS

Each request line is "E <hex>" (encode these UTF-8 bytes), "D <id> <id> ..." (decode ids)
or "V <hex>" (are these bytes valid UTF-8?). One answer line per request, in order:
    E -> "<id> <id> ...|<hex of decode(encode(text))>"
    D -> "<hex of decode(ids)>"
    V -> "1" or "0"  (Python's strict UTF-8 decoder)
"""
import sys

import sentencepiece as spm


def main(model, requests):
    sp = spm.SentencePieceProcessor(model_file=model)
    out = []
    with open(requests, encoding="ascii") as f:
        for line in f:
            kind, _, arg = line.rstrip("\n").partition(" ")
            if kind == "E":
                text = bytes.fromhex(arg).decode("utf-8")
                ids = sp.encode(text)
                out.append(" ".join(map(str, ids)) + "|" + sp.decode(ids).encode("utf-8").hex())
            elif kind == "D":
                ids = [int(x) for x in arg.split()]
                out.append(sp.decode(ids).encode("utf-8").hex())
            elif kind == "V":
                try:
                    bytes.fromhex(arg).decode("utf-8", errors="strict")
                    out.append("1")
                except UnicodeDecodeError:
                    out.append("0")
            else:
                raise SystemExit("tokenizer_ref.py: bad request line %r" % line)
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
