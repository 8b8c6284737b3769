"""A small deterministic text corpus and its vocabulary for the Slurm tests.

The Slurm tests check the machinery (ranks, jobs, requeue, shard sets), not language, so
the text is generated: `num_files` files in Google's format (one sentence per line, a
blank line between documents) over a 400-word lexicon whose words are all whole
WordPieces of the vocabulary written next to them. Same arguments -> same bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def lexicon(size: int = 400) -> list[str]:
    """`size` distinct lower-case pseudo-words, e.g. 'bako', 'tiremu'."""
    rng = random.Random(1234)
    cons, vows = "bdfgklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(1, 3))))
    return sorted(words)


def write_corpus(root: Path, num_files: int = 6, docs_per_file: int = 30, seed: int = 7) -> tuple[Path, Path]:
    """Write `root/text/part-<i>.txt` and `root/vocab.txt`; returns (text dir, vocab file)."""
    words = lexicon()
    text_dir = root / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(num_files):
        docs = []
        for _ in range(docs_per_file):
            sents = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) + " ."
                     for _ in range(rng.randint(4, 10))]
            docs.append("\n".join(sents))
        (text_dir / f"part-{i:02d}.txt").write_text("\n\n".join(docs) + "\n")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + [".", *words]) + "\n")
    return text_dir, vocab
