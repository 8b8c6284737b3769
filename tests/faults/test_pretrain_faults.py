"""Faults injected into real pretraining runs (run_pretraining.py, tiny config, CPU).

Every test runs the same 8-step job (2 micro-batches per step, dropout on, a checkpoint
every 4 steps) as the session's uninterrupted ``reference`` run, breaks it in one way, and
asserts what the issue asks: the files that exist, that no final name holds a partial
file, that the last good checkpoint loads (and equals the reference's), that the message
names the cause, and that resuming reproduces the reference's final weights bit for bit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.faults.helpers import (
    assert_checkpoints_complete,
    assert_same_weights,
    assert_user_error,
    check,
    final_files,
    pretrain_args,
    run,
    run_on_small_disk,
    temp_files,
)

pytestmark = pytest.mark.timeout(600)

PRETRAIN = "run_pretraining.py"


def _resume(cli, world, out: Path, reference: Path, *extra: str) -> subprocess.CompletedProcess:
    """Resume ``out`` to step 8 and check it ends exactly where the reference ended."""
    p = check(cli.run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint", *extra)))
    assert "other numerics" not in p.stdout, p.stdout  # same kernels as the reference run
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")
    assert temp_files(out) == [], "a resumed run must clean up the killed writer's temp file"
    return p


@pytest.mark.exact_resume
def test_sigterm_mid_step_saves_then_resume_is_exact(world, cli, reference, tmp_path):
    """SIGTERM during micro-batch 1 of step 3: the step finishes, ckpt_3 is saved, exit 75."""
    out = tmp_path / "out"
    p = cli.run(PRETRAIN, pretrain_args(world, out), fault={"signal": {"call": 5, "sig": "SIGTERM"}})
    check(p, 75)
    assert "SIGTERM: checkpoint saved at step 3" in p.stdout
    assert final_files(out) == ["ckpt_3.pt", "dllogger.json"] and temp_files(out) == []
    assert assert_checkpoints_complete(out) == [3]
    r = _resume(cli, world, out, reference)
    assert f"start_from {out / 'ckpt_3.pt'}" in r.stdout
    assert assert_checkpoints_complete(out) == [3, 4, 8]


@pytest.mark.exact_resume
def test_sigkill_mid_step_then_resume_is_exact(world, cli, reference, tmp_path):
    """kill -9 during micro-batch 1 of step 6: steps 5-6 are lost, ckpt_4 is intact."""
    out = tmp_path / "out"
    p = cli.run(PRETRAIN, pretrain_args(world, out), fault={"signal": {"call": 11, "sig": "SIGKILL"}})
    check(p, -9)
    assert final_files(out) == ["ckpt_4.pt", "dllogger.json"] and temp_files(out) == []
    assert assert_checkpoints_complete(out) == [4]
    assert_same_weights(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    r = _resume(cli, world, out, reference)
    assert f"start_from {out / 'ckpt_4.pt'}" in r.stdout
    assert "which has ended without releasing it (killed?); taking the lock over" in r.stderr


@pytest.mark.exact_resume
def test_sigkill_during_checkpoint_write_keeps_the_previous_one(world, cli, reference, tmp_path):
    """kill -9 when half of ckpt_8.pt is written: only a hidden temp file holds the half."""
    out = tmp_path / "out"
    p = cli.run(PRETRAIN, pretrain_args(world, out), fault={"kill_in_write": {"name": "ckpt_8.pt"}})
    check(p, -9)
    assert final_files(out) == ["ckpt_4.pt", "dllogger.json"]
    (tmp,) = temp_files(out)
    assert tmp.startswith(".ckpt_8.pt.tmp-")
    assert 0 < (out / tmp).stat().st_size < (reference / "ckpt_8.pt").stat().st_size
    assert assert_checkpoints_complete(out) == [4]
    _resume(cli, world, out, reference)  # also removes the temp file
    assert final_files(out) == ["ckpt_4.pt", "ckpt_8.pt", "dllogger.json"]


@pytest.mark.exact_resume
def test_full_disk_during_checkpoint_write(world, cli, reference, tmp_path, tmpfs_mounts):
    """The disk fills while ckpt_8.pt is written: one-line ENOSPC error, ckpt_4 intact, no
    partial file anywhere; with space again, the resume ends where the reference ended."""
    size = int((reference / "ckpt_4.pt").stat().st_size * 1.6)  # room for one checkpoint
    p, after = run_on_small_disk(tmpfs_mounts, size, lambda d: pretrain_args(world, d), tmp_path,
                                 cli, PRETRAIN)
    assert_user_error(p, "cannot write", "ckpt_8.pt", "No space left on device")
    assert final_files(after) == ["ckpt_4.pt", "dllogger.json"] and temp_files(after) == []
    assert assert_checkpoints_complete(after) == [4]
    assert_same_weights(reference / "ckpt_4.pt", after / "ckpt_4.pt")
    _resume(cli, world, after, reference)


@pytest.mark.parametrize("fault, call, message", [
    ("nan_grad", 15, "the weights are no longer finite at step 8"),  # loss finite, grads NaN
    ("inf_loss", 11, "the training loss is inf at step 6"),
])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(
        world, cli, reference, tmp_path, fault, call, message):
    out = tmp_path / "out"
    p = cli.run(PRETRAIN, pretrain_args(world, out), fault={fault: {"call": call}})
    line = assert_user_error(p, message, f"the last good checkpoint {out / 'ckpt_4.pt'} is kept")
    assert "(fp32)" in line
    assert final_files(out) == ["ckpt_4.pt", "dllogger.json"] and temp_files(out) == []
    assert assert_checkpoints_complete(out) == [4]  # never a checkpoint with NaN weights
    assert_same_weights(reference / "ckpt_4.pt", out / "ckpt_4.pt")


@pytest.mark.exact_resume
def test_truncated_checkpoint_is_named_and_the_previous_one_resumes(world, cli, reference, tmp_path):
    """A truncated latest checkpoint (e.g. a copy cut short) is refused by name; resuming
    from the one before it with --resume_step reproduces the reference."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("ckpt_4.pt", "ckpt_8.pt"):
        shutil.copy(reference / name, out / name)
    data = (out / "ckpt_8.pt").read_bytes()
    (out / "ckpt_8.pt").write_bytes(data[: len(data) // 2])
    p = cli.run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint"))
    assert_user_error(p, f"checkpoint {out / 'ckpt_8.pt'} cannot be read", "truncated or corrupt")
    assert (out / "ckpt_8.pt").stat().st_size == len(data) // 2  # nothing written over it yet
    r = _resume(cli, world, out, reference, "--resume_step=4")  # atomically replaces ckpt_8.pt
    assert f"start_from {out / 'ckpt_4.pt'}" in r.stdout


def test_checkpoint_of_another_config_is_refused(world, cli, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    other = tmp_path / "wide.json"
    other.write_text(world.config.read_text().replace('"hidden_size": 128', '"hidden_size": 64'))
    args = pretrain_args(world, out, "--resume_from_checkpoint")
    args = [a if not a.startswith("--config_file=") else f"--config_file={other}" for a in args]
    p = cli.run(PRETRAIN, args)
    assert_user_error(p, f"checkpoint {out / 'ckpt_4.pt'}", "wrong shapes", "bert.embeddings")
    assert (out / "ckpt_4.pt").read_bytes() == (reference / "ckpt_4.pt").read_bytes()
    assert final_files(out) == ["ckpt_4.pt"]


class _RunsCode:
    """Unpickling it calls ``open(marker, "w")``: the marker file appears iff code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_never_runs_code(world, cli, reference, tmp_path):
    """A planted ckpt_8.pt whose unpickling would run code: resume refuses it by name and
    the code does not run; only `convert --trust_checkpoint`, the explicit opt-in, runs it
    (which shows the file really is live)."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    marker = tmp_path / "code_ran"
    torch.save({"model": _RunsCode(str(marker)), "step": 8, "phase": 1}, out / "ckpt_8.pt")
    p = cli.run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint"))
    assert_user_error(p, "ckpt_8.pt", "GLOBAL io.open", "could run code; refused")
    p = cli.run(PRETRAIN, pretrain_args(world, tmp_path / "o2", f"--init_checkpoint={out / 'ckpt_8.pt'}"))
    assert_user_error(p, "ckpt_8.pt", "could run code; refused", "--trust_checkpoint")
    assert not marker.exists()
    cli.run("bertforge.convert", ["--from=bertforge", "--to=bertforge", "--trust_checkpoint",
                                  str(out / "ckpt_8.pt"), str(tmp_path / "x.pt")])
    assert marker.exists(), "the positive control: with --trust_checkpoint the pickle runs"


def test_hf_import_prefers_safetensors_over_a_malicious_pickle(world, cli, reference, tmp_path):
    """An HF directory with model.safetensors and a planted pytorch_model.bin: the import
    reads the safetensors file and never unpickles the .bin; without safetensors the .bin
    is refused by name."""
    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining
    from bertforge.model.convert import export_hf

    hf = tmp_path / "hf"
    model = BertForPreTraining(ModelConfig.from_json_file(world.config))
    model.load_state_dict(torch.load(reference / "ckpt_4.pt", weights_only=True)["model"])
    export_hf(model, hf, vocab_file=world.vocab)
    marker = tmp_path / "code_ran"
    torch.save({"bert.embeddings.word_embeddings.weight": _RunsCode(str(marker))}, hf / "pytorch_model.bin")
    check(cli.run("bertforge.convert", ["--from=hf", "--to=bertforge", str(hf), str(tmp_path / "a.pt")]))
    assert_same_weights(reference / "ckpt_4.pt", tmp_path / "a.pt")
    (hf / "model.safetensors").unlink()
    p = cli.run("bertforge.convert", ["--from=hf", "--to=bertforge", str(hf), str(tmp_path / "b.pt")])
    assert_user_error(p, "pytorch_model.bin", "could run code; refused")
    assert not marker.exists() and not (tmp_path / "b.pt").exists()


def test_resume_with_other_numerics_says_so(world, reference, tmp_path):
    """A resume whose process computes with other kernels (here: another thread count; on a
    requeue also another CPU or library setting) restores the state exactly but cannot
    reproduce the rest bit for bit: it says so in one line naming what changed."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    p = check(run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint"),
                  env={"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2"}))
    (line,) = [ln for ln in p.stdout.splitlines() if "other numerics" in ln]
    assert line.startswith(f"note: {out / 'ckpt_4.pt'} was written with other numerics ("), line
    assert "threads 1 -> 2" in line and "$ONEDNN_MAX_CPU_ISA unset -> AVX2" in line, line
    assert "$OMP_NUM_THREADS 1 -> 2" in line and "to float tolerance, not bit for bit" in line
    assert assert_checkpoints_complete(out) == [4, 8]


@pytest.mark.exact_resume
def test_garbage_in_fresh_memory_does_not_change_the_result(world, reference, tmp_path):
    """The reference run again with glibc filling every allocated and freed block with a
    byte pattern (MALLOC_PERTURB_): a read of uninitialised memory anywhere in a step
    (ours, torch's, MKL's, oneDNN's) would change the bits from run to run."""
    out = tmp_path / "out"
    check(run(PRETRAIN, pretrain_args(world, out), env={"MALLOC_PERTURB_": "165"}))
    assert_same_weights(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")


@pytest.mark.exact_resume
def test_resume_keeps_the_recorded_gemm_backend(world, reference, tmp_path):
    """Under --cpu_gemm auto a resume computes with the backend its checkpoint records, even
    where the machine's choice now names the other one (here: a cache that says so, as after a
    re-measurement), and ends bit-identical to the uninterrupted run; --cpu_gemm and
    BERTFORGE_CPU_GEMM win over the record, and the numerics note names the change."""
    import json

    from bertforge.checkpoint import load_checkpoint
    from bertforge.model.gemm import cache_key

    recorded = load_checkpoint(reference / "ckpt_4.pt")["numerics"][0]["cpu_gemm"]
    other = "aten" if recorded == "onednn" else "onednn"
    cache = tmp_path / "cache"
    (cache / "bertforge").mkdir(parents=True)
    (cache / "bertforge" / "cpu_gemm.json").write_text(json.dumps(
        {cache_key(): {"backend": other, "gflops": {other: 2.0, recorded: 1.0}}}))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(reference / "ckpt_4.pt", out / "ckpt_4.pt")
    p = check(run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint"),
                  env={"XDG_CACHE_HOME": str(cache)}))
    assert f"backend {recorded} (auto: the backend {out / 'ckpt_4.pt'} was computed with" in p.stderr, p.stderr
    assert "other numerics" not in p.stdout, p.stdout
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")
    for how, extra, env in (("flag", ["--cpu_gemm", other], {}), ("variable", [], {"BERTFORGE_CPU_GEMM": other})):
        out = tmp_path / how
        out.mkdir()
        shutil.copy(reference / "ckpt_4.pt", out / "ckpt_4.pt")
        p = check(run(PRETRAIN, pretrain_args(world, out, "--resume_from_checkpoint", *extra),
                      env={"XDG_CACHE_HOME": str(cache), **env}))
        (line,) = [ln for ln in p.stdout.splitlines() if "other numerics" in ln]
        assert f"cpu_gemm {recorded} -> {other}" in line, line
        assert f"backend {other} (--cpu_gemm/BERTFORGE_CPU_GEMM={other}" in p.stderr, p.stderr
        assert load_checkpoint(out / "ckpt_8.pt")["numerics"][0]["cpu_gemm"] == other
