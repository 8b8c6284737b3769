"""Pretraining shards made from real English text by the real create_pretraining_data CLI.

The text is the Wikipedia paragraphs of the SQuAD dev sample in $BERTFORGE_REAL_DATA (one
paragraph = one document, one sentence per line), the vocabulary Google's uncased one. The
shards therefore have what real data has: sequences of many lengths and a number of masked
tokens that differs from sequence to sequence.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

#: A micro BERT over Google's uncased vocabulary (dropout 0: runs are deterministic).
REAL_TEXT_CONFIG = {
    "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
    "max_position_embeddings": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "type_vocab_size": 2, "vocab_size": 30522,
}


def write_text(squad_json: Path, out: Path) -> Path:
    """Google's text format: one sentence per line, a blank line between paragraphs."""
    data = json.loads(squad_json.read_text())
    docs = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", para["context"]) if s.strip()]
            docs.append("\n".join(sents))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(docs) + "\n")
    return out


def create_shards(text: Path, vocab: Path, out: Path, *, fmt: str = "hdf5", shards: int = 2,
                  masking: str = "static", seq: int = 64, preds: int = 10, dupe: int = 2,
                  seed: int = 12345) -> Path:
    """Run create_pretraining_data.py (a subprocess, as a user would) and return ``out``."""
    cmd = [PYTHON, "create_pretraining_data.py", "--input_file", str(text), "--output_file", str(out),
           "--vocab_file", str(vocab), "--output_format", fmt, "--num_shards", str(shards),
           "--max_seq_length", str(seq), "--max_predictions_per_seq", str(preds),
           "--dupe_factor", str(dupe), "--random_seed", str(seed), "--progress", "false"]
    if fmt == "parquet":
        cmd += ["--masking", masking]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise AssertionError(f"create_pretraining_data failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return out


def write_real_config(path: Path, **overrides) -> Path:
    path.write_text(json.dumps({**REAL_TEXT_CONFIG, **overrides}, indent=2))
    return path
