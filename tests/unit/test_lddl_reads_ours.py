"""LDDL's own loader (PyPI `lddl`, NVIDIA's; installed without its dependencies by `make
install`) reads every bin of our Parquet output, for several data set sizes, including bins
whose instances divide evenly into the shards (LDDL's loader asserts that a bin's files hold
m and m + 1 samples: `min + 1 == max`).

Real text: the contexts of the SQuAD sample (real Wikipedia paragraphs), Google's vocab.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
try:
    import lddl.torch as lddl_torch
except ImportError:  # a check that cannot run fails, it does not skip
    lddl_torch = None


def _text(real_data, n_paragraphs: int, path: Path) -> Path:
    data = json.loads(real_data("squad/dev-v2.0-sample.json").read_text())
    paras = [p["context"] for a in data["data"] for p in a["paragraphs"]][:n_paragraphs]
    docs = []
    for p in paras:  # one sentence per line, blank line between documents
        docs.append("\n".join(s.strip() + "." for s in p.split(". ") if s.strip()))
    path.write_text("\n\n".join(docs) + "\n")
    return path


def _make(tmp: Path, text: Path, vocab: Path, shards: int, bin_size: int, seq: int) -> Path:
    out = tmp / f"pq_{shards}_{bin_size}_{seq}"
    p = subprocess.run([sys.executable, "create_pretraining_data.py", f"--input_file={text}",
                        f"--output_file={out}", f"--vocab_file={vocab}", "--output_format=parquet",
                        f"--bin_size={bin_size}", f"--max_seq_length={seq}",
                        f"--max_predictions_per_seq={seq // 6}", "--dupe_factor=2",
                        f"--num_shards={shards}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return out


def _lddl_count(path: Path, vocab: Path) -> int:
    """Samples LDDL's loader yields from a directory of binned shards (one epoch)."""
    loader = lddl_torch.get_bert_pretrain_data_loader(
        str(path), vocab_file=str(vocab), data_loader_kwargs={"batch_size": 4, "num_workers": 1},
        log_level=logging.WARNING, base_seed=1)
    seen = 0
    for batch in loader:
        assert batch["input_ids"].shape == batch["labels"].shape
        seen += int(batch["input_ids"].shape[0])
    return seen


@pytest.mark.timeout(900)
def test_lddl_loader_reads_every_bin_of_our_parquet(tmp_path, real_data) -> None:
    from bertforge.data.create import create_instance_sets, input_units
    from bertforge.data.instances import InstanceConfig
    from bertforge.data.parquet import bin_ids_for

    if lddl_torch is None:
        pytest.fail("lddl is not installed: `make install` installs it (pip install --no-deps lddl==0.1.0)")
    vocab = real_data("vocab/bert-base-uncased-vocab.txt")
    os.environ.pop("WORLD_SIZE", None)
    evenly = 0
    for n_paragraphs, shards, bin_size, seq in ((12, 2, 64, 128), (40, 3, 64, 256), (70, 4, 32, 128)):
        text = _text(real_data, n_paragraphs, tmp_path / f"text_{n_paragraphs}.txt")
        out = _make(tmp_path, text, vocab, shards, bin_size, seq)
        # the instances before sharding, counted independently of the writer
        cfg = InstanceConfig(max_seq_length=seq, max_predictions_per_seq=seq // 6, dupe_factor=2)
        sets, _ = create_instance_sets(input_units([str(text)]), cfg, vocab_file=str(vocab))
        tokens = np.concatenate([s.num_tokens for _, s in sets])
        per_bin = np.bincount(bin_ids_for(tokens, bin_size, seq), minlength=seq // bin_size)
        sizes = json.loads((out / ".num_samples.json").read_text())
        for b, n in enumerate(per_bin):
            files = sorted(f for f in sizes if f.endswith(f".parquet_{b}"))
            assert len(files) == shards
            got = [sizes[f] for f in files]
            assert got == [len(pq.read_table(out / f)) for f in files]
            if n == 0:
                continue
            assert max(got) == min(got) + 1, (b, got)  # LDDL's condition
            if n % shards == 0:
                evenly += 1
                assert sum(got) == n - 1  # an evenly dividing bin gives up one instance
            else:
                assert sum(got) == n
        assert all(per_bin > 0), per_bin  # every bin is populated, so LDDL can read them all
        expected = sum(min(sizes[f] for f in sizes if f.endswith(f".parquet_{b}")) * shards
                       for b in range(seq // bin_size))
        assert _lddl_count(out, vocab) == expected
    assert evenly >= 1, "no bin divided evenly: the case this test is about was not exercised"
