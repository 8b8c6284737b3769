"""The run configuration: built once from NVIDIA's flags at the command line, typed and frozen
below it, every flag carried into it; the shape rules of the training package."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from bertforge.cli.environment import Environment
from bertforge.cli.pretrain import build_parser, config_from_args
from bertforge.config import FinetuneConfig, PretrainConfig, TrainingConfig
from bertforge.errors import ConfigError
from tests.conftest import REPO

BASE = ["--input_dir=shards", "--config_file=bert.json", "--output_dir=out"]

# A value other than the default for every flag of run_pretraining.py.
CHANGED = {
    "--input_dir": "other", "--config_file": "other.json", "--output_dir": "elsewhere",
    "--vocab_file": "vocab.txt", "--init_checkpoint": "init.pt", "--max_seq_length": "128",
    "--max_predictions_per_seq": "20", "--masking": "dynamic", "--dynamic_masking": None,
    "--num_workers": "0", "--eval_dir": "held", "--eval_freq": "5", "--num_eval_batches": "3",
    "--eval_batch_size": "4", "--train_batch_size": "64", "--gradient_accumulation_steps": "2",
    "--learning_rate": "1e-3", "--max_steps": "7", "--warmup_proportion": "0.2",
    "--optimizer": "adamw", "--weight_decay": "0.1", "--max_grad_norm": "2.0", "--seed": "3",
    "--fp16": None, "--amp": None, "--bf16": None, "--init_loss_scale": "1024",
    "--checkpoint_activations": None, "--no_dense_sequence_output": None,
    "--allreduce_post_accumulation": None, "--no-allreduce_post_accumulation": None,
    "--allreduce_post_accumulation_fp16": None, "--resume_from_checkpoint": None,
    "--num_steps_per_checkpoint": "9", "--keep_checkpoints": "5", "--skip_checkpoint": None,
    "--phase2": None, "--resume_phase2": None, "--phase1_end_step": "11", "--steps_this_run": "2",
    "--do_train": None, "--log_freq": "4", "--json-summary": "log.json", "--json_summary": "log.json",
    "--tensorboard_dir": "tb", "--disable_progress_bar": None, "--local_rank": "1",
    "--local-rank": "1", "--dist_timeout": "60", "--device": "cpu", "--loss_scale": "128",
    "--tf32": None, "--disable_jit_fusions": None, "--cuda_graphs": None, "--profile": None,
    "--profile-start": "3", "--profile_start": "3", "--loss_normalization": "micro_batch",
    "--cpu_gemm": "aten",
}
NEEDS = {"--resume_step": ["--resume_from_checkpoint"], "--resume_phase2": ["--phase2"]}
# NVIDIA's flags that cannot act here: each prints one note line instead (bertforge.cli.nvidia);
# --dry_run stops before the run (tests/integration/test_nvidia_flags_act.py runs it).
NOTE_ONLY = {"--use_env": None, "--bert_model": "bert-base-uncased", "--num_train_epochs": "2"}
NOT_SETTINGS = {"--dry_run"}


def _config(argv, env: Environment | None = None) -> PretrainConfig:
    return config_from_args(build_parser().parse_args(argv), env or Environment())


def test_every_flag_reaches_the_config():
    """A flag parsed and ignored is a defect: changing any flag changes the run's config."""
    parser = build_parser()
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    known = set(CHANGED) | set(NEEDS) | set(NOTE_ONLY) | NOT_SETTINGS
    assert set(flags) <= known, sorted(set(flags) - known)
    base = ["--do_train", *BASE]
    for flag in flags:
        if flag in NOTE_ONLY or flag in NOT_SETTINGS:
            continue
        extra = NEEDS.get(flag, [])
        before = _config(base + [e for e in extra if e != flag])
        value = CHANGED.get(flag, "6")
        if flag == "--allreduce_post_accumulation":  # default on: compare with it off
            before = _config(base + ["--no-allreduce_post_accumulation"])
        if flag == "--do_train":
            base_eval = [*BASE, "--eval_dir=held"]
            assert _config(base_eval + ["--do_train"]) != _config(base_eval), flag
            continue
        after = _config(base + extra + ([flag] if value is None else [f"{flag}={value}"]))
        assert after != before, f"{flag} does not reach the run config"


def test_derived_values_are_methods_and_the_config_is_frozen():
    cfg = _config(["--do_train", *BASE, "--train_batch_size=64", "--gradient_accumulation_steps=4"])
    assert cfg.training.micro_batch_size() == 16
    assert cfg.training.global_batch_size(world_size=8) == 512
    assert cfg.eval_batch_size() == 16 and cfg.json_summary() == "out/dllogger.json"
    # NVIDIA's --steps_this_run is an absolute cap on the phase's step
    assert TrainingConfig(max_steps=10, steps_this_run=3).end_step() == 3
    assert TrainingConfig(max_steps=10, steps_this_run=30).end_step() == 10
    assert TrainingConfig(max_steps=10).end_step() == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.max_steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        FinetuneConfig().learning_rate = 1.0
    assert cfg.to_dict()["optimizer"]["name"] == "lamb"


def test_dist_timeout_flag_then_environment_then_default():
    base = ["--do_train", *BASE]
    assert _config(base).launch.dist_timeout == 1800.0
    assert _config(base, Environment(dist_timeout=90.0)).launch.dist_timeout == 90.0
    assert _config(base + ["--dist_timeout=15"], Environment(dist_timeout=90.0)).launch.dist_timeout == 15.0
    assert _config(base).precision.cpu_gemm == "auto"
    assert _config(base, Environment(cpu_gemm="aten")).precision.cpu_gemm == "aten"
    assert _config(base + ["--cpu_gemm=onednn"], Environment(cpu_gemm="aten")).precision.cpu_gemm == "onednn"
    with pytest.raises(SystemExit):  # the parser's range check
        _config(base + ["--dist_timeout=0"])
    with pytest.raises(ConfigError, match="not divisible by --gradient_accumulation_steps 4"):
        _config(base + ["--train_batch_size=6", "--gradient_accumulation_steps=4"])


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_train_is_longer_than_60_lines():
    long = [f"{p.name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in sorted((REPO / "bertforge/train").glob("*.py")) for f in _functions(p)
            if f.end_lineno - f.lineno + 1 > 60]
    assert not long, long


def test_no_argparse_namespace_below_the_command_lines():
    """Flags are parsed by an entry point's ``main`` and turned into typed settings there; no
    other function takes the parsed ``args`` (outside bertforge/cli, where the builders of the
    configs live)."""
    offenders = []
    for p in sorted((REPO / "bertforge").rglob("*.py")):
        rel = p.relative_to(REPO / "bertforge").as_posix()
        if rel.startswith("cli/"):
            continue
        for f in _functions(p):
            params = [a.arg for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)]
            annotations = ast.unparse(f.args) if f.args.args else ""
            if f.name != "main" and ("args" in params or "Namespace" in annotations):
                offenders.append(f"{rel}:{f.name}")
            calls = [n for n in ast.walk(f) if isinstance(n, ast.Attribute) and n.attr == "parse_args"]
            if calls and f.name != "main":
                offenders.append(f"{rel}:{f.name} parses flags")
    assert not offenders, offenders


def test_flags_that_cannot_act_say_so(capsys):
    """NVIDIA's flags without an effect here print one note each, never parsed and ignored."""
    from bertforge.cli.pretrain import _notes

    for flag, value in NOTE_ONLY.items():
        argv = ["--do_train", *BASE, flag if value is None else f"{flag}={value}"]
        _notes(build_parser().parse_args(argv), argv)
        out = capsys.readouterr().out.splitlines()
        assert out == [next(line for line in out if line.startswith(f"note: {flag} has no effect: "))], (flag, out)
