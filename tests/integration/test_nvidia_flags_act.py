"""NVIDIA's run_pretraining.py / run_squad.py / create_pretraining_data.py flags acting in
real runs: --steps_this_run as NVIDIA's absolute cap (phase 1 and phase 2), --profile,
--disable_jit_fusions, the one-line notes, --eval_script, one HDF5 file from a directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_fixtures import REPO, base_args, make_dataset, run_cli, write_config  # noqa: E402

from bertforge.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("nvflags")
    return write_config(root / "micro.json"), make_dataset(root / "data", shards=2, per_shard=48)


def _steps(out: Path) -> list[int]:
    return [n for n, _ in list_checkpoints(out)]


def test_steps_this_run_is_nvidias_absolute_cap(world, tmp_path) -> None:
    """Both NVIDIA generations stop once the phase's step reaches --steps_this_run (their
    `global_step >= args.steps_this_run`), counted from the phase start, not from this run."""
    cfg, data = world
    out = tmp_path / "out"
    args = base_args(data, out, cfg, steps=8, extra=("--num_steps_per_checkpoint=100",))
    run_cli(args + ["--steps_this_run=3"])
    assert _steps(out) == [3]
    # NVIDIA's closing lines: {"final_loss"} at (epoch, step), then the () summary; elapsedtime
    from bertforge.runlog import read_dllogger

    recs = [r for r in read_dllogger(out / "dllogger.json") if r["type"] == "LOG"]
    assert all("elapsedtime" in r for r in recs)
    (last_step,) = [r for r in recs if set(r["data"]) == {"final_loss"}]
    assert last_step["step"][1] == 3 and recs[-1]["step"] == [] and "final_loss" in recs[-1]["data"]
    run_cli(args + ["--resume_from_checkpoint", "--steps_this_run=5"])  # resumed at 3: 2 steps
    assert _steps(out) == [3, 5]
    p = run_cli(args + ["--resume_from_checkpoint", "--steps_this_run=4"])  # already past it
    assert _steps(out) == [3, 5] and "global_step 5" in p.stdout
    run_cli(args + ["--resume_from_checkpoint"])  # -1: --max_steps
    assert _steps(out)[-1] == 8
    # phase 2: the cap counts phase-2 steps, as NVIDIA's global_step (minus phase1_end_step) does
    p2 = base_args(data, out, cfg, steps=6, extra=("--phase2", "--resume_from_checkpoint",
                                                   "--num_steps_per_checkpoint=100"))
    run_cli(p2 + ["--steps_this_run=2"])
    ck = load_checkpoint(out / "ckpt_10.pt")
    assert (ck["phase"], ck["step"], ck["global_step"]) == (2, 2, 10)
    run_cli(p2 + ["--resume_phase2", "--steps_this_run=4"])
    assert load_checkpoint(out / "ckpt_12.pt")["step"] == 4


def _trace_names(path: Path) -> set[str]:
    return {e.get("name", "") for e in json.loads(path.read_text())["traceEvents"]}


def test_profile_trace_and_disable_jit_fusions(world, tmp_path) -> None:
    cfg, data = world
    fused = tmp_path / "fused"
    p = run_cli(base_args(data, fused, cfg, steps=4, extra=("--profile", "--profile-start=1")))
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("profile:")]
    assert line == [f"profile: optimizer steps 2-4 recorded in {fused}/profile_rank0.json"
                    + line[0].split(".json", 1)[1]] and "most self CPU time" in line[0]
    names = _trace_names(fused / "profile_rank0.json")
    assert {"_FeedForward", "_TiedDecoder", "_CrossEntropy"} <= names  # our fused blocks ran
    plain = tmp_path / "plain"
    run_cli(base_args(data, plain, cfg, steps=2, extra=("--profile", "--disable_jit_fusions")))
    names = _trace_names(plain / "profile_rank0.json")
    assert not {n for n in names if n.lstrip("_").startswith(("FeedForward", "TiedDecoder",
                                                              "CrossEntropy", "Attention"))}


def test_inert_pretraining_flags_say_why_once(world, tmp_path) -> None:
    cfg, data = world
    p = run_cli(base_args(data, tmp_path / "o", cfg, steps=1, extra=(
        "--use_env", "--bert_model=bert-large-uncased", "--num_train_epochs=2", "--tf32",
        "--cuda_graphs", "--loss_scale=128", "--profile-start=3")))
    notes = [ln.split(" has no effect")[0] for ln in p.stdout.splitlines() if ln.startswith("note:")]
    assert notes == ["note: --use_env", "note: --bert_model", "note: --num_train_epochs",
                     "note: --loss_scale", "note: --profile-start", "note: --tf32", "note: --cuda_graphs"]


def test_dry_run_checks_and_stops(world, tmp_path) -> None:
    cfg, data = world
    out = tmp_path / "o"
    p = run_cli(base_args(data, out, cfg, steps=5, extra=("--dry_run", "--fp16")))
    assert "flags and inputs OK" in p.stdout and "--fp16 needs a CUDA device" in p.stdout
    assert not out.exists()
    bad = run_cli(base_args(data, out, cfg, steps=5, batch=6, accum=4, extra=("--dry_run",)), check=False)
    assert bad.returncode == 2 and "not divisible" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli(base_args(empty, out, cfg, steps=5, extra=("--dry_run",)), check=False)
    assert bad.returncode == 2 and "no shards" in bad.stderr and str(empty) in bad.stderr


def test_create_pretraining_data_dir_to_one_hdf5_file(tmp_path, real_data) -> None:
    """NVIDIA's form: --input_file DIR (of .txt) --output_file X.hdf5 writes one file."""
    vocab = real_data("vocab/bert-base-uncased-vocab.txt")
    src = tmp_path / "txt"
    src.mkdir()
    text = ("The Normans were the people who in the 10th and 11th centuries gave their name to "
            "Normandy, a region in France.\nThey were descended from Norse raiders.\n\n"
            "Computational complexity theory is a branch of the theory of computation.\n"
            "It focuses on classifying problems by their difficulty.\n\n")
    for i in range(3):
        (src / f"part{i}.txt").write_text(text * (i + 2))
    out = tmp_path / "phase1" / "training.hdf5"
    out.parent.mkdir()
    p = subprocess.run([sys.executable, "create_pretraining_data.py", f"--input_file={src}",
                        f"--output_file={out}", f"--vocab_file={vocab}", "--do_lower_case",
                        "--max_seq_length=128", "--max_predictions_per_seq=20", "--masked_lm_prob=0.15",
                        "--random_seed=12345", "--dupe_factor=5"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    # one file, nothing half-written beside it; the hidden lock file (bertforge.outputs) stays
    assert sorted(x.name for x in out.parent.iterdir()) == [".training.hdf5.lock", "training.hdf5"]
    with h5py.File(out) as f:
        assert f["input_ids"].shape[1] == 128 and f["masked_lm_positions"].shape[1] == 20
        assert len(f["input_ids"]) >= 5 * 3


def test_eval_script_is_run_as_nvidia_runs_it(tmp_path, real_data) -> None:
    """run_squad.py --do_eval --eval_script F runs `python F predict_file predictions.json`
    (NVIDIA's call) and reports the EM/F1 it prints; a missing F says so on one line."""
    import torch

    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForQuestionAnswering
    from bertforge.model.convert import save_bertforge

    torch.manual_seed(0)
    ckpt = save_bertforge(BertForQuestionAnswering(ModelConfig.from_json_file(REPO / "bert_configs/tiny.json")),
                          tmp_path / "tiny.pt")
    data = json.loads(real_data("squad/dev-v1.1-sample.json").read_text())
    data["data"] = data["data"][:1]
    para = data["data"][0]["paragraphs"][:3]
    data["data"][0]["paragraphs"] = para
    dev = tmp_path / "dev-v1.1.json"
    dev.write_text(json.dumps(data))
    base = [sys.executable, "run_squad.py", f"--init_checkpoint={ckpt}", "--do_predict", "--do_eval",
            f"--predict_file={dev}", f"--vocab_file={real_data('vocab/bert-base-uncased-vocab.txt')}",
            "--do_lower_case", "--max_seq_length=128", "--doc_stride=64", "--bert_model=bert-large-uncased"]
    official = REPO / "bertforge/evaluate_squad.py"  # prints what evaluate-v1.1.py prints
    runs = {}
    for name, script in (("script", official), ("missing", tmp_path / "evaluate-v1.1.py")):
        p = subprocess.run(base + [f"--output_dir={tmp_path / name}", f"--eval_script={script}"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        runs[name] = (json.loads((tmp_path / name / "eval_results.json").read_text()), p.stdout)
    (with_script, out1), (without, out2) = runs["script"], runs["missing"]
    assert with_script["eval_script"] == str(official)
    assert (with_script["exact_match"], with_script["F1"]) == (without["exact_match"], without["F1"])
    assert "note: --eval_script" not in out1
    assert [ln for ln in out2.splitlines() if ln.startswith("note:")] == [
        f"note: --eval_script {tmp_path / 'evaluate-v1.1.py'} has no effect: no such file; EM/F1 come "
        "from bertforge's transcription of the official formulas"]
