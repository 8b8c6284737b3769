"""Checkpoint files: atomic writes, keep-last-k, safe loading, RNG capture."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from bertforge.checkpoint import (
    capture_rng_state,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bertforge.errors import CheckpointError


def _state(step):
    return {"model": {"w": torch.full((4,), float(step))}, "step": step, "phase": 1}


def test_keep_last_k_and_find_latest(tmp_path):
    for s in (2, 4, 6, 8, 10):
        save_checkpoint(tmp_path / f"ckpt_{s}.pt", keep_last=3, **_state(s))
    assert [n for n, _ in list_checkpoints(tmp_path)] == [6, 8, 10]
    assert find_latest(tmp_path).name == "ckpt_10.pt"
    assert load_checkpoint(find_latest(tmp_path))["step"] == 10
    assert find_latest(tmp_path / "missing") is None
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "ckpt_1.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)


def test_truncated_file_is_a_clear_error(tmp_path):
    p = save_checkpoint(tmp_path / "ckpt_1.pt", **_state(1))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ckpt_1\.pt cannot be read"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_kill_9_during_write_keeps_previous_checkpoint(tmp_path):
    """A writer killed (SIGKILL) in the middle of torch.save leaves the old checkpoint intact."""
    save_checkpoint(tmp_path / "ckpt_2.pt", keep_last=3, **_state(2))
    code = f"""
import time, torch
import bertforge.checkpoint as ck
from bertforge.checkpoint import save_checkpoint
orig = ck.torch_save
def half_then_hang(obj, f):
    orig(obj, f)
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)          # a half-written file ...
    print("writing", flush=True)
    time.sleep(600)                      # ... when the process is killed
ck.torch_save = half_then_hang
save_checkpoint({str(tmp_path / 'ckpt_4.pt')!r}, keep_last=3,
                model={{"w": torch.zeros(100000)}}, step=4, phase=1)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers, "the killed writer should have left its temp file"
    assert find_latest(tmp_path).name == "ckpt_2.pt"
    assert load_checkpoint(find_latest(tmp_path))["step"] == 2
    save_checkpoint(tmp_path / "ckpt_6.pt", keep_last=3, **_state(6))  # next save cleans up
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.exact_resume
def test_rng_roundtrip_through_a_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(3), np.random.rand(2), random.random()
    save_checkpoint(tmp_path / "ckpt_1.pt", rng=capture_rng_state(), step=1)
    expect = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    restore_rng_state(load_checkpoint(tmp_path / "ckpt_1.pt")["rng"])
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1])
    assert expect[2] == got[2]
