#!/usr/bin/python3
"""Seeded synthetic training documents for the FoT model, tokenized to exact lengths.

Each document is one training row of n_windows * window + 1 tokens (BOS first). Kinds:
  passkey  a number hidden in filler, asked for at the end; intros, key sentences,
           questions, names for the key and fillers vary. REFERENCE.md's exact passkey
           sentences (FORBIDDEN) never appear: the test measures generalization.
  kv       many "X's Y is N." facts spread through filler; several questions at the end.
  digits   a long digit string early, copied at the end.
  english  plain documentation prose (language modelling).
Answers (the digits a question asks for) get a larger loss weight.

Documents are built as text, tokenized whole (so the tokens are what the daemon's
tokenizer makes of such a text), then cut to length by removing tokens from the inside of
filler regions (token offsets from SentencePiece's immutable proto; text is ASCII).
"""
import random

import numpy as np

FORBIDDEN = [
    "There is an important info hidden inside a lot of irrelevant text",
    "Find it and memorize them",
    "I will quiz you about the important information there",
    "The pass key is {K}. Remember it. {K} is the pass key.",
    "What is the pass key? The pass key is",
    "The grass is green", "The sky is blue", "The sun is yellow", "Here we go",
    "There and back again",
]

INTROS = [
    "", "", "Read the following text carefully.",
    "A number is hidden somewhere in the text below. Remember it; you will be asked for it.",
    "Somewhere in this long document there is a code. Keep it in mind.",
    "The text below is mostly noise, but one line matters.",
    "Important: a secret value appears once in the following notes.",
    "Below is a long log. Pay attention to any numbers you are told to remember.",
    "There is a key hidden in a lot of unimportant text. Find it and remember it.",
    "You will be quizzed on a number that appears in the text.",
]
NAMES = ["pass key", "pass key", "passkey", "secret code", "access code", "magic number",
         "secret number", "PIN", "password", "key number", "special number", "lucky number",
         "door code", "pass code", "vault number", "ticket number"]
KEY_LINES = [
    "The {n} is {K}.",
    "The {n} is {K}. Keep it in mind.",
    "Remember this: the {n} is {K}.",
    "{K} is the {n}. Do not forget it.",
    "The {n} is {K}. Remember it. The {n} is {K}.",
    "Note that the {n} is {K}. {K} is the {n}.",
    "The {n} is {K}. Memorize it. {K} is the {n}.",
    "The {n} is {K}. Remember it. {K} is the {n}.",
    "Attention: the {n} is {K}. Again, the {n} is {K}.",
    "Your {n} is {K}.",
    "The {n} you need is {K}. It is {K}.",
    "the {n} is {K}",
]
QUESTIONS = [
    "What is the {n}? The {n} is",
    "What is the {n}? The {n} is",
    "What was the {n}? The {n} was",
    "Tell me the {n}. The {n} is",
    "Question: what is the {n}? Answer: the {n} is",
    "Do you remember the {n}? The {n} is",
    "The {n} is",
    "Recall the {n}. The {n} is",
    "What is the {n}? It is",
]
NOUNS = ["river", "tree", "house", "road", "cloud", "stone", "bird", "lamp", "field", "door",
         "ship", "hill", "garden", "window", "bridge", "forest", "train", "table", "moon",
         "lake", "city", "book", "wall", "horse", "flower", "ocean", "mountain", "cat"]
ADJS = ["red", "quiet", "old", "tall", "cold", "bright", "wide", "slow", "dark", "warm",
        "small", "heavy", "soft", "young", "round", "empty", "calm", "far", "new", "long"]
VERB_LINES = ["We walk on.", "Time passes.", "Nothing happens.", "The day goes by.",
              "Keep going.", "All is well.", "And so on.", "Back and forth we go.",
              "Let us continue.", "The story goes on."]
SYLL = ["ka", "lo", "mi", "ren", "ta", "vo", "zu", "bel", "cor", "dan", "fi", "gor", "ha",
        "jun", "kel", "mar", "nor", "pel", "qui", "ros", "sa", "tor", "ul", "ven", "wi", "yo"]
ATTRS = ["phone number", "room number", "account number", "locker code", "order number",
         "badge number", "flight number", "seat number", "zip code", "score"]


def forbidden_in(text):
    for f in FORBIDDEN:
        if "{K}" in f:
            head = f.split("{K}")[0]
            if head and head in text and "Remember it. " in text:
                # Only the exact full sentence is forbidden; checked with the key pattern.
                import re
                pat = re.escape(f).replace(re.escape("{K}"), r"\d+")
                if re.search(pat, text):
                    return True
        elif f in text:
            return True
    return False


class English:
    """Random contiguous chunks of the English corpus, cut at line starts."""

    def __init__(self, text):
        self.text = text
        self.n = len(text)

    def chunk(self, rng, chars):
        if chars >= self.n:
            return (self.text * (chars // self.n + 1))[:chars]
        s = rng.randrange(0, self.n - chars)
        nl = self.text.find("\n", s, s + 200)
        if nl >= 0 and nl + 1 + chars <= self.n:
            s = nl + 1
        return self.text[s:s + chars]


class Filler:
    """One document's filler style: English prose, or a few short invented sentences
    repeated (like the passkey test's filler, never its sentences), or a mix."""

    def __init__(self, rng, english):
        self.rng, self.english = rng, english
        self.kind = rng.choice(["english", "english", "repeat", "repeat", "repeat", "mixed"])
        k = rng.randint(2, 6)
        sents = []
        while len(sents) < k:
            r = rng.random()
            if r < 0.7:
                s = "The %s is %s." % (rng.choice(NOUNS), rng.choice(ADJS))
            else:
                s = rng.choice(VERB_LINES)
            if s not in sents and not forbidden_in(s):
                sents.append(s)
        self.unit = " ".join(sents)

    def text(self, chars, restart=False):
        """restart: start again where this document's first filler started (Landmark's
        garbage_inf[:n] layout, where the filler after the key line restarts from the
        filler's first character); otherwise a fresh or continued stretch."""
        if chars <= 0:
            return ""
        if restart and getattr(self, "first", None) is not None:
            kind, start = self.first
            if kind == "english":
                return self.english.text[start:start + chars] if start + chars <= self.english.n \
                    else self.english.chunk(self.rng, chars)
            rep = (self.unit + " ") * (chars // (len(self.unit) + 1) + 2)
            return rep[start:start + chars]
        if self.kind == "english":
            t = self.english.chunk(self.rng, chars)
            if getattr(self, "first", None) is None:
                st = self.english.text.find(t[:200])
                self.first = ("english", st) if st >= 0 else None
            return t
        rep = (self.unit + " ") * (chars // (len(self.unit) + 1) + 1)
        if self.kind == "repeat":
            off = self.rng.randrange(len(self.unit) + 1) if self.rng.random() < 0.5 else 0
            if getattr(self, "first", None) is None:
                self.first = ("repeat", off)
            return (rep + rep[:off + 1])[off:off + chars]
        if getattr(self, "first", None) is None:
            self.first = ("repeat", 0)
        out, n = [], 0
        while n < chars:
            if self.rng.random() < 0.5:
                t = self.english.chunk(self.rng, self.rng.randint(200, 1500))
            else:
                t = rep[:self.rng.randint(200, 1500)]
            out.append(t)
            n += len(t) + 1
        return "\n".join(out)[:chars]


def rand_key(rng):
    r = rng.random()
    if r < 0.5:
        return str(rng.randrange(1, 50000))
    digits = rng.randint(2, 8)
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def entity(rng):
    return "".join(rng.choice(SYLL) for _ in range(rng.randint(2, 3))).capitalize()


# A document plan: list of segments (kind, text) with kind "fixed", "answer" (fixed, loss
# weighted) or "filler" (a share of the filler budget, text made by the Filler).

def plan_passkey(rng):
    name = rng.choice(NAMES)
    key = rand_key(rng)
    sep = rng.choice(["\n", "\n", " ", "\n\n"])
    key_line = rng.choice(KEY_LINES).format(n=name, K=key)
    q = rng.choice(QUESTIONS).format(n=name)
    if name.islower() and rng.random() < 0.2:
        q = q[0].upper() + q[1:]
    r = rng.random()
    # Depths: uniform, plus extra mass in the middle and at the ends (0 and 1 exactly).
    depth = (rng.random() if r < 0.6 else rng.uniform(0.3, 0.7) if r < 0.85
             else rng.choice([0.0, 1.0, rng.uniform(0.0, 0.05), rng.uniform(0.95, 1.0)]))
    intro = rng.choice(INTROS)
    # Own-line layout (intro, filler, key line, filler, question each on a line) in most
    # documents; the filler after the key line restarts from the filler's first character
    # in 60 % of them (as Landmark's prompt does) and continues otherwise.
    if rng.random() < 0.7:
        sep = "\n"
    restart = rng.random() < 0.6
    segs = []
    if intro:
        segs.append(("fixed", intro + sep))
    segs += [("filler", depth), ("fixed", sep + key_line + sep),
             ("filler_restart" if restart else "filler", 1.0 - depth),
             ("fixed", sep + q), ("answer", " " + key)]
    tail = rng.random()
    if tail < 0.5:
        segs.append(("fixed", "."))
    return segs


def plan_kv(rng):
    n = rng.randint(3, 16)
    attr = rng.choice(ATTRS)
    facts = []
    seen = set()
    while len(facts) < n:
        e = entity(rng)
        if e in seen:
            continue
        seen.add(e)
        facts.append((e, rand_key(rng)))
    cuts = sorted(rng.random() for _ in range(n))
    segs, prev = [], 0.0
    sep = rng.choice(["\n", " "])
    for (e, v), c in zip(facts, cuts):
        segs.append(("filler", c - prev))
        tpl = rng.choice(["%s's %s is %s.", "Note: %s's %s is %s.", "For %s, the %s is %s."])
        segs.append(("fixed", sep + tpl % (e, attr, v)))
        prev = c
    segs.append(("filler", 1.0 - prev))
    asked = rng.sample(facts, rng.randint(1, min(4, n)))
    for e, v in asked:
        segs.append(("fixed", sep + rng.choice(["What is %s's %s? %s's %s is",
                                                "Question: %s's %s? Answer: %s's %s is"])
                     % (e, attr, e, attr)))
        segs.append(("answer", " " + v))
        segs.append(("fixed", "."))
    return segs


def plan_digits(rng):
    s = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 20)))
    label = rng.choice(["number", "serial", "long number", "code", "sequence"])
    depth = rng.random()
    return [("filler", depth),
            ("fixed", "\nHere is the %s: %s.\n" % (label, s)),
            ("filler", 1.0 - depth),
            ("fixed", "\nRepeat the %s: it is" % label), ("answer", " " + s), ("fixed", ".")]


KINDS = [("passkey", 0.4), ("kv", 0.2), ("digits", 0.1), ("english", 0.3)]
# The restart fine-tune (train.py --kinds restart) leans on passkey documents.
KINDS_RESTART = [("passkey", 0.6), ("kv", 0.15), ("digits", 0.05), ("english", 0.2)]


def synthetic_text(rng, english, chars=3000):
    """A short task text (for the tokenizer's training set)."""
    kind = rng.choice(["passkey", "kv", "digits"])
    segs = {"passkey": plan_passkey, "kv": plan_kv, "digits": plan_digits}[kind](rng)
    fill = Filler(rng, english)
    return "".join(fill.text(int(t * chars), k == "filler_restart") if k.startswith("filler") else t
                   for k, t in segs)


class DocMaker:
    """Makes token rows of exactly `length` ids (BOS + text) and their loss weights."""

    def __init__(self, sp, english, length, answer_weight=4.0):
        self.sp, self.english, self.length = sp, english, length
        self.answer_weight = answer_weight
        self.tail_prob = 0.0  # share of task documents with text after the answer
        # Of those, the share whose first answer token is moved to within 5 tokens before a
        # window boundary (or onto it), so a window boundary falls inside the answer.
        self.boundary_prob = 0.0
        self.window = 256
        self.cpt = 3.2  # characters per token of filler; adapted as documents are made

    def _pieces(self, text):
        """Token ids with character offsets [begin, end) into text. Computed from the
        pieces (the immutable-proto API differs between sentencepiece versions): text is
        ASCII and normalization is identity, so the pieces spell "\u2581" + text with
        spaces as "\u2581" (the leading one is the dummy prefix) and a byte piece is one
        character."""
        class P:
            __slots__ = ("id", "begin", "end")
        out, pos = [], -1
        for i in self.sp.encode(text):
            s = self.sp.id_to_piece(i)
            n = 1 if self.sp.is_byte(i) else len(s)
            p = P()
            p.id, p.begin, p.end = i, max(0, pos), pos + n
            pos += n
            out.append(p)
        assert pos == len(text), "piece offsets do not cover the text"
        return out

    def _align_plan(self, rng, pieces, regions, inner, answer_char, excess):
        """Tokens to remove from each filler region so that the first answer token lands at
        a row position p with p mod window in {window-5 .. window-1, 0} (rows start with BOS
        at position 0, as a session does); None when the regions cannot do it."""
        a = next((i for i, p in enumerate(pieces) if p.end > answer_char), None)
        if a is None:
            return None
        before = [j for j, (s, e) in enumerate(regions) if e <= answer_char]
        after = [j for j in range(len(regions)) if j not in before]
        cap_pre = sum(len(inner[j]) for j in before)
        cap_post = sum(len(inner[j]) for j in after)
        W = self.window
        target = rng.randint(-5, 0) % W
        # After removing r tokens before the answer it sits at 1 + a - r (BOS first).
        need = (1 + a - target) % W
        r = min(cap_pre, excess)
        r -= (r - need) % W
        if r < 0 or excess - r > cap_post:
            return None
        plan = [0] * len(regions)
        for group, amount in ((before, r), (after, excess - r)):
            for j in group:
                take = min(amount, len(inner[j]))
                plan[j] = take
                amount -= take
        return plan

    def make(self, rng, kind):
        for _ in range(8):
            r = self._try(rng, kind)
            if r is not None:
                return r
        raise RuntimeError("data: cannot fit a %s document to %d tokens" % (kind, self.length))

    def _try(self, rng, kind):
        L = self.length - 1  # BOS takes one
        if kind == "english":
            segs = [("filler", 1.0)]
            fill = Filler(rng, self.english)
            fill.kind = "english"
        else:
            segs = {"passkey": plan_passkey, "kv": plan_kv, "digits": plan_digits}[kind](rng)
            fill = Filler(rng, self.english)
            align = False
            if self.tail_prob and rng.random() < self.tail_prob:
                align = self.boundary_prob and rng.random() < self.boundary_prob
                # Text after the answer, so the question and answer land anywhere in a
                # window, across window boundaries too (rows are whole windows, so without
                # it the answer always ends a window; recall's passkey prompts of exactly
                # 1k/2k/4k tokens put the answer at the start of a new window).
                segs += [("fixed", rng.choice(["\n", " ", "\n\n"])),
                         ("filler", rng.uniform(0.0, 0.3))]
        fixed_chars = sum(len(t) for k, t in segs if not k.startswith("filler"))
        budget = max(0, int((L * self.cpt - fixed_chars) * 1.2)) + 64
        text, regions, answers = [], [], []
        pos = 0
        for k, t in segs:
            if k.startswith("filler"):
                t = fill.text(int(budget * t), k == "filler_restart")
                regions.append((pos, pos + len(t)))
            elif k == "answer":
                answers.append((pos, pos + len(t)))
            text.append(t)
            pos += len(t)
        text = "".join(text)
        if forbidden_in(text):
            return None
        pieces = self._pieces(text)
        ids = [p.id for p in pieces]
        n = len(ids)
        fill_chars = sum(e - s for s, e in regions)
        if fill_chars > 1000:
            fill_tokens = sum(1 for p in pieces for s, e in regions if p.begin >= s and p.end <= e)
            if fill_tokens:
                self.cpt = 0.9 * self.cpt + 0.1 * (fill_chars / fill_tokens)
        excess = n - L
        if excess < 0:
            self.cpt *= 1.1
            return None
        keep = np.ones(n, dtype=bool)
        if excess:
            # Remove tokens from the interior of filler regions, in proportion to size.
            inner = []
            for s, e in regions:
                idx = [i for i, p in enumerate(pieces) if p.begin >= s and p.end <= e]
                inner.append(idx[2:-2] if len(idx) > 4 else [])
            total = sum(len(x) for x in inner)
            if total < excess:
                return None
            left = excess
            plan = None
            if kind != "english" and align and answers:
                plan = self._align_plan(rng, pieces, regions, inner, answers[0][0], excess)
            for j, idx in enumerate(inner):
                if plan is not None:
                    take = plan[j]
                else:
                    take = left if j == len(inner) - 1 else min(left, round(excess * len(idx) / total))
                take = min(take, len(idx))
                if take:
                    st = rng.randrange(0, len(idx) - take + 1)
                    keep[idx[st:st + take]] = False
                    left -= take
            if left:
                for idx in inner:
                    for i in idx:
                        if left and keep[i]:
                            keep[i] = False
                            left -= 1
            if left:
                return None
        w = np.ones(n, dtype=np.float32)
        for s, e in answers:
            for i, p in enumerate(pieces):
                if p.end > s and p.begin < e:
                    w[i] = self.answer_weight
        ids = np.asarray([1] + [x for x, k in zip(ids, keep) if k], dtype=np.int32)
        w = np.concatenate([[1.0], w[keep]]).astype(np.float32)
        assert ids.shape[0] == self.length
        return ids, w


class BatchMaker:
    """Whole batches: rows [0, n_task) are task or English documents drawn by KINDS;
    the last n_neg rows are English documents, the cross-batch negatives' source."""

    def __init__(self, sp, english, batch, length, n_english, seed):
        self.dm = DocMaker(sp, english, length)
        self.batch, self.n_english = batch, n_english
        self.rng = random.Random(seed)
        self.restart_mix = False

    def next(self):
        ids = np.zeros((self.batch, self.dm.length), dtype=np.int32)
        w = np.zeros((self.batch, self.dm.length), dtype=np.float32)
        kinds, probs = zip(*(KINDS_RESTART if self.restart_mix else KINDS))
        for b in range(self.batch):
            if b >= self.batch - self.n_english:
                kind = "english"
            else:
                kind = self.rng.choices(kinds, probs)[0]
            ids[b], w[b] = self.dm.make(self.rng, kind)
        return ids, w
