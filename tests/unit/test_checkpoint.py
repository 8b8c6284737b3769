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
    FORMAT_VERSION,
    Checkpointer,
    StartPoint,
    TrainState,
    capture_rng_state,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    read_training_checkpoint,
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


# -- schema versions and the checkpointable parts ----------------------------------------------
def test_format0_is_upgraded_and_a_newer_format_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt_3.pt", model={"w": torch.zeros(2)}, step=3, phase=2,
                    args={"seed": 1})
    ck = read_training_checkpoint(tmp_path / "ckpt_3.pt")
    assert ck["format_version"] == FORMAT_VERSION
    assert (ck["phase1_end_step"], ck["global_step"], ck["skipped_steps"], ck["grad_scaler"]) == (0, 3, 0, {})
    save_checkpoint(tmp_path / "ckpt_4.pt", model={}, step=4, phase=1, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="newer than this bertforge reads"):
        read_training_checkpoint(tmp_path / "ckpt_4.pt")
    save_checkpoint(tmp_path / "ckpt_5.pt", model={})
    with pytest.raises(CheckpointError, match="has no 'step': not a training checkpoint"):
        read_training_checkpoint(tmp_path / "ckpt_5.pt")


class _Loader:
    def __init__(self, pos=0):
        self.pos = pos

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _run_parts(seed=0):
    from bertforge.optim import PolyWarmUpScheduler, build_optimizer
    from bertforge.precision import Precision
    from bertforge.train.loop import TrainStep

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = build_optimizer(model, "lamb", lr=0.1)
    sched = PolyWarmUpScheduler(opt, warmup=0.25, total_steps=8)
    # fp16 is CUDA-only for users; the scaler's state is checked with a CPU GradScaler
    prec = Precision("fp16", torch.device("cpu"), torch.amp.GradScaler("cpu", init_scale=2.0**8))
    step = TrainStep(model, opt, sched, prec, loss_normalization="micro_batch")  # plain mean losses
    return model, opt, sched, prec, step


def _checkpointer(tmp_path, model, opt, sched, prec, step, state, loader):
    from bertforge.config import CheckpointConfig
    from bertforge.distributed import DistInfo
    from bertforge.rng import RNGState
    from bertforge.train.pretrain import ModelState

    return Checkpointer(CheckpointConfig(str(tmp_path)), DistInfo(0, 0, 1, torch.device("cpu")),
                        parts={"model": ModelState(model), "optimizer": opt, "lr_scheduler": sched,
                               "grad_scaler": prec, "data": loader},
                        flat_parts=(state, step), rank_parts={"rng": RNGState()},
                        record={"run_config": {"note": "test"}})


def test_checkpointer_restores_every_part_exactly(tmp_path):
    """Save after 3 steps (one skipped on overflow), restore into fresh parts: optimizer, the
    scheduler's position and rate, the loss scale, the skipped count, the train state, the
    loader position and the generators all come back."""
    loss = lambda m, b: ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean()  # noqa: E731
    x, y = torch.randn(6, 4), torch.randn(6)
    model, opt, sched, prec, step = _run_parts()
    state, loader = TrainState(phase=2, phase1_end_step=10), _Loader()
    for i, target in enumerate((y, y * float("inf"), y)):
        r = step.step([{"x": x, "y": target}], loss)
        state.step += 0 if r.skipped else 1
        loader.pos += 1
        assert r.skipped == (i == 1)
    path = _checkpointer(tmp_path, model, opt, sched, prec, step, state, loader).save(state.global_step())
    assert path.name == "ckpt_12.pt"
    expect_rand = torch.rand(3)

    torch.manual_seed(123)
    model2, opt2, sched2, prec2, step2 = _run_parts(seed=1)
    state2, loader2 = TrainState(phase=2), _Loader()
    ck = read_training_checkpoint(path)
    from bertforge.train.pretrain import ModelState

    ModelState(model2).load_state_dict(ck["model"])
    _checkpointer(tmp_path, model2, opt2, sched2, prec2, step2, state2, loader2).restore(
        StartPoint(str(path), ck, exact=True), "lamb", 0.1)
    assert torch.equal(torch.rand(3), expect_rand)  # the generators, restored last
    assert (state2.step, state2.phase1_end_step, state2.global_step()) == (2, 10, 12)
    assert step2.skipped_steps == 1 and loader2.pos == 3
    assert prec2.loss_scale == prec.loss_scale == 2.0**7
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] > 0
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][name]), name
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters(), strict=True))
    assert ck["run_config"] == {"note": "test"} and ck["format_version"] == FORMAT_VERSION


def test_new_phase_keeps_moments_and_restarts_step_and_rate(tmp_path):
    model, opt, sched, prec, step = _run_parts()
    x, y = torch.randn(6, 4), torch.randn(6)
    for _ in range(3):
        step.step([{"x": x, "y": y}], lambda m, b: ((m(b["x"]).squeeze(-1) - b["y"]) ** 2).mean())
    saved = opt.state_dict()
    model2, opt2, sched2, prec2, step2 = _run_parts()
    cp = _checkpointer(tmp_path, model2, opt2, sched2, prec2, step2, TrainState(phase=2), _Loader())
    cp.restore(StartPoint("phase-1 ckpt", moments=saved, phase1_end_step=3), "lamb", 0.1)
    assert [g["step"] for g in opt2.param_groups] == [0, 0]
    assert sched2.last_epoch == 0 and opt2.param_groups[0]["lr"] == 0.0  # warmup starts at 0
    assert sched2.base_lrs == [0.1, 0.1] and opt2.param_groups[0]["initial_lr"] == 0.1
    first = next(iter(opt2.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(opt.state.values()))["exp_avg"])


def test_scheduler_load_state_dict_sets_the_rate():
    _, opt, sched, _, _ = _run_parts()
    _, opt2, sched2, _, _ = _run_parts()
    for _ in range(3):
        sched.step()
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] > 0
