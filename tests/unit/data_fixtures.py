"""Shared helpers of the data tests: a small synthetic corpus and a vocab trained on it."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the of and to in a is was for on as with by he at from his an were are which "
         "this be or has had first one their its new after who they two her she been other "
         "when there all during into school time may years more most only over city some "
         "world would where later up such used many can state about national out known "
         "university united then made government international between american university "
         "antidisestablishmentarianism photosynthesis electromagnetic counterrevolutionary "
         "unbelievable reconstruction parliamentary transcontinental").split()


def write_corpus(path: Path, n_docs: int = 30, seed: int = 0, min_sent: int = 2,
                 max_sent: int = 30) -> Path:
    """Google-format text: n_docs documents of random sentences."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(rng.randint(min_sent, max_sent)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            sents.append(" ".join(words).capitalize() + ".")
        docs.append("\n".join(sents))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def make_text_dir(root: Path, n_files: int = 3, n_docs: int = 20) -> Path:
    d = root / "text"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        write_corpus(d / f"part-{i:05d}.txt", n_docs=n_docs, seed=i)
    return d


def make_vocab(root: Path, text_dir: Path) -> Path:
    from bertforge.data.vocab import train_wordpiece_vocab

    out = root / "vocab.txt"
    if not out.exists():
        train_wordpiece_vocab(sorted(text_dir.glob("*.txt")), out, vocab_size=400,
                              min_frequency=1)
    return out
