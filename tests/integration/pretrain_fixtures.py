"""Helpers for the pretraining tests: NVIDIA-schema HDF5 shards written directly with h5py
(independent of our writer, so they also check that we read NVIDIA's files) and a micro
BERT config with dropout 0 (so runs are deterministic and distributed runs comparable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

MICRO_CONFIG = {
    "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
    "max_position_embeddings": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
    "type_vocab_size": 2, "vocab_size": 256,
}


def write_config(path: Path, **overrides) -> Path:
    path.write_text(json.dumps({**MICRO_CONFIG, **overrides}, indent=2))
    return path


def write_nvidia_hdf5(path: Path, n: int, seq_len: int = 32, max_pred: int = 5,
                      vocab: int = 256, seed: int = 0, fixed_masks: bool = False) -> Path:
    """One shard in NVIDIA's HDF5 schema with variable-length, padded sequences.

    Sequences follow a learnable pattern (token i+1 = token i + 1 mod a small range), so a
    model can get better than chance at the masked positions. ``fixed_masks``: every
    sequence has exactly ``max_pred`` masked tokens, so even NVIDIA's per-micro-batch mean
    (``--loss_normalization micro_batch``) weighs tokens equally (the default normalisation
    needs no such data: tests/integration/test_split_invariance.py uses real text).
    """
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, seq_len), np.int32)
    mask = np.zeros((n, seq_len), np.int8)
    seg = np.zeros((n, seq_len), np.int8)
    pos = np.zeros((n, max_pred), np.int32)
    lab = np.zeros((n, max_pred), np.int32)
    nsl = rng.integers(0, 2, n).astype(np.int8)
    for i in range(n):
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        start = int(rng.integers(10, vocab - 40))
        toks = 10 + (start - 10 + np.arange(length)) % (vocab - 10)
        toks[0], toks[length - 1] = 2, 3  # [CLS] ... [SEP]
        ids[i, :length] = toks
        mask[i, :length] = 1
        seg[i, length // 2:length] = 1
        k = max_pred if fixed_masks else int(rng.integers(1, max_pred + 1))
        p = np.sort(rng.choice(np.arange(1, length - 1), size=k, replace=False))
        pos[i, :k] = p
        lab[i, :k] = ids[i, p]
        ids[i, p] = 4  # [MASK]
    with h5py.File(path, "w") as f:
        for name, arr in (("input_ids", ids), ("input_mask", mask), ("segment_ids", seg),
                          ("masked_lm_positions", pos), ("masked_lm_ids", lab),
                          ("next_sentence_labels", nsl)):
            f.create_dataset(name, data=arr, compression="gzip")
    return path


def make_dataset(root: Path, shards: int = 2, per_shard: int = 64, seed: int = 0, **kw) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        write_nvidia_hdf5(root / f"shard_{s}.hdf5", per_shard, seed=seed * 100 + s, **kw)
    return root


def earlier_code(commit: str, dest: Path) -> Path:
    """The repository's files at ``commit`` (``git archive``) in ``dest``, whose run_pretraining.py
    imports that commit's bertforge (a script's own folder comes first on sys.path).

    "Today's code reaches the numbers an earlier version computed, bit for bit" can only be
    checked on one machine: oneDNN and MKL choose their kernels per CPU (instruction set,
    vendor), so a number written on one CPU differs in its last bits on another. Tests run the
    earlier version here, on the same inputs, instead of comparing with numbers pinned elsewhere.
    """
    if not (dest / "run_pretraining.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                                 capture_output=True, timeout=120)
        if archive.returncode != 0:
            raise AssertionError(f"git archive {commit}: {archive.stderr.decode().strip()} (these tests run the "
                                 "earlier commit's code, so they need the repository's history)")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)
    return dest


# Before 6d7408e and d51c99f a rank of a finished distributed run could abort while its
# interpreter shut down (gloo's worker thread, "terminate called without an active exception";
# about 1 run in 70). Today's code is tested for that (tests/faults/test_process_exit.py); an
# earlier version run for its numbers keeps the defect, which comes after its last output.
EXIT_ABORT = "terminate called without an active exception"


def _earlier_exit_abort(p: subprocess.CompletedProcess, repo: Path, nproc: int) -> bool:
    """An earlier version's distributed run that completed (its ``final`` line printed) and
    then lost a rank to that exit abort: its outputs are whole, so they count."""
    return (repo != REPO and nproc > 1 and EXIT_ABORT in p.stderr
            and any(line.startswith("final |") for line in p.stdout.splitlines()))


def run_cli(args: list[str], *, nproc: int = 1, timeout: int = 300, env: dict | None = None,
            check: bool = True, repo: Path = REPO) -> subprocess.CompletedProcess:
    """Run run_pretraining.py with python (nproc 1) or torchrun (gloo), from the root of ``repo``
    (this checkout, or an earlier version from :func:`earlier_code`)."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    e.pop("WORLD_SIZE", None)
    if nproc == 1:
        cmd = [PYTHON, "run_pretraining.py", *args]
    else:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "run_pretraining.py", *args]
    p = subprocess.run(cmd, cwd=repo, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0 and not _earlier_exit_abort(p, repo, nproc):
        raise AssertionError(f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-3000:]}\nSTDERR:\n{p.stderr[-3000:]}")
    return p


def base_args(data: Path, out: Path, config: Path, *, steps: int, batch: int = 8, accum: int = 1,
              lr: float = 1e-3, extra: tuple[str, ...] = ()) -> list[str]:
    return [f"--input_dir={data}", f"--config_file={config}", f"--output_dir={out}",
            f"--train_batch_size={batch}", f"--gradient_accumulation_steps={accum}",
            f"--max_steps={steps}", f"--learning_rate={lr}", "--warmup_proportion=0.2",
            "--max_seq_length=64", "--max_predictions_per_seq=5", "--num_workers=0",
            "--do_train", "--disable_progress_bar", "--seed=7", *extra]
