"""Build a `data=text` task that no bag of words can solve: bigram shift (BShift, Conneau et al. 2018, "What you can
cram into a single vector", ACL; SentEval's probing task). Each example is one sentence from the standard library's
docstrings; in half of them two adjacent words are swapped. Label `original` or `inverted`: both classes have the
same words, so only word order decides, the way sentiment depends on how words combine, not on which appear.

Sentences come only from the pydocs *validation and test* docstrings, which `ptcli pretrain data=pydocs` never
trains on (it trains on the train split), so a pre-trained model cannot have memorised them.

    python scripts/make_bshift.py OUT_DIR        # OUT_DIR/{train,validation,test}.csv (columns text,label)
    ptcli finetune data=text data.train=OUT_DIR/train.csv data.validation=OUT_DIR/validation.csv \
        data.test=OUT_DIR/test.csv data.labels_per_class=16 pretrained=RUN

Deterministic for a given Python standard library (fixed seed, sorted sources).
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import zlib
from pathlib import Path

from ptcli.data.pydocs import extract_docstrings

MIN_WORDS, MAX_WORDS = 6, 40
# A sentence ends at . ! or ? followed by whitespace; docstring line breaks are not sentence ends.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Prose only: code, doctest lines, signatures and tables would make the inversion trivial or meaningless.
PROSE_WORD = re.compile(r"^[('\"]?[A-Za-z][A-Za-z0-9'_.-]*[)'\"]?[,;:]?$")


def sentences(doc: str) -> list[str]:
    flat = " ".join(line.strip() for line in doc.splitlines() if line.strip() and not line.strip().startswith(">>>"))
    out = []
    for s in SENTENCE_END.split(flat):
        words = s.rstrip(".!?").split()
        if MIN_WORDS <= len(words) <= MAX_WORDS and all(PROSE_WORD.match(w) for w in words):
            out.append(" ".join(words) + ".")
    return out


def invert(sentence: str, rng: random.Random) -> str | None:
    """The sentence with two adjacent, different words swapped (punctuation stays on its word); None if none."""
    words = sentence.rstrip(".").split()
    spots = [i for i in range(len(words) - 1) if words[i].lower() != words[i + 1].lower()]
    if not spots:
        return None
    i = rng.choice(spots)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    docs = extract_docstrings()
    unique = sorted({s for split in ("validation", "test") for doc in docs[split]["text"] for s in sentences(doc)})
    rng = random.Random(args.seed)
    rows: list[tuple[str, str, str]] = []
    for s in unique:
        inverted = rng.random() < 0.5
        text = invert(s, rng) if inverted else s
        if text is not None:
            rows.append((s, text, "inverted" if inverted else "original"))
    # Split by a hash of the original sentence, so a sentence never lands in two splits.
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "test": []}
    for s, text, label in rows:
        bucket = zlib.crc32(s.encode()) % 10
        splits["test" if bucket < 3 else "validation" if bucket < 4 else "train"].append((text, label))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with open(args.out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(split)
        counts = {lab: sum(1 for _, y in split if y == lab) for lab in ("original", "inverted")}
        print(f"{name}: {len(split)} sentences {counts}")


if __name__ == "__main__":
    main()
