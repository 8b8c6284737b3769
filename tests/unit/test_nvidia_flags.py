"""NVIDIA's flag tables (tests/nvidia/flags.json, read from NVIDIA's sources by
tests/nvidia/extract_flags.py) against our five parsers.

For every flag of every entry point of both NVIDIA generations: our parser accepts it with a
value of NVIDIA's type (and every NVIDIA choice), gives back that value, and has NVIDIA's
default, unless the difference is listed, with its reason, in docs/nvidia.md's table.
Flags that cannot act here print exactly one line saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bertforge.cli import create_pretraining_data, glue, inference, pretrain, squad

REPO = Path(__file__).resolve().parents[2]
TABLES = json.loads((REPO / "tests/nvidia/flags.json").read_text())
PARSERS = {"run_pretraining.py": pretrain.build_parser, "run_squad.py": squad.build_parser,
           "run_glue.py": glue.build_parser, "inference.py": inference.build_parser,
           "create_pretraining_data.py": create_pretraining_data.build_parser}
# The flags our parsers require, with placeholder values (parsing only: nothing is read).
REQUIRED = {"run_pretraining.py": ["--input_dir", "d", "--config_file", "c", "--output_dir", "o"],
            "run_squad.py": ["--init_checkpoint", "i", "--output_dir", "o"],
            "run_glue.py": ["--data_dir", "d", "--task_name", "mrpc", "--init_checkpoint", "i",
                            "--output_dir", "o"],
            "inference.py": ["--init_checkpoint", "i"],
            "create_pretraining_data.py": ["--output_file", "o", "--vocab_file", "v"]}
SAMPLE = {"int": "8", "float": "2.5", "str": "x"}


def _documented_differences() -> set[tuple[str, str]]:
    """(entry point, flag) of each row of docs/nvidia.md's difference table."""
    rows = set()
    for line in (REPO / "docs/nvidia.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].endswith(".py"):
            for flag in re.findall(r"`(--[\w-]+)", cells[1]):
                for ep in re.findall(r"[\w]+\.py", cells[0]):
                    rows.add((ep, flag))
    return rows


DOCUMENTED = _documented_differences()
CASES = [(ep, gen, f) for ep, gens in TABLES["entry_points"].items() for gen, flags in gens.items()
         for f in flags]


def _action(parser, option):
    for a in parser._actions:
        if option in a.option_strings:
            return a
    return None


def _id(case) -> str:
    ep, gen, f = case
    return f"{ep}:{gen}:{f['options'][0]}"


def test_tables_cover_both_generations_of_all_five_entry_points() -> None:
    assert set(TABLES["entry_points"]) == set(PARSERS)
    for gens in TABLES["entry_points"].values():
        assert set(gens) == {"head", "2020"}
    names = {f["options"][0] for f in TABLES["entry_points"]["run_pretraining.py"]["head"]}
    assert {"--cuda_graphs", "--profile-start", "--disable_jit_fusions", "--steps_this_run"} <= names
    assert len(CASES) > 250


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_flag_is_accepted_with_nvidias_type(case) -> None:
    ep, gen, f = case
    parser = PARSERS[ep]()
    option = f["options"][0]
    action = _action(parser, option)
    assert action is not None, f"{ep} has no {option} (NVIDIA {gen})"
    base = list(REQUIRED[ep])
    values = f["choices"] or ([None] if f["type"] == "bool" else [SAMPLE.get(f["type"], "x")])
    if f["type"] == "str" and isinstance(f["default"], int):  # untyped, e.g. 2020 --local_rank
        values = ["8"]
    if f["type"] == "float":
        # a fraction and NVIDIA's exponent form; within (0, 1) for flags whose range is there
        # (a range check is not a type check: NVIDIA's warmup_proportion 2.5 is nonsense too)
        values = ["2.5", "1e3"]
        try:
            parser.parse_args(list(REQUIRED[ep]) + [option, "2.5"])
        except SystemExit:
            values = ["0.5", "5e-1"]
    for value in values:
        argv = base + ([option] if value is None else [option, str(value)])
        if option in base:  # a flag we require: replace its placeholder
            i = base.index(option)
            argv = base[:i] + base[i + 2:] + [option, str(value)]
        ns = parser.parse_args(argv)
        got = getattr(ns, action.dest)
        if isinstance(got, list):  # ours takes several (--input_file A B), NVIDIA's one
            assert got == [value]
        elif f["type"] == "bool":
            assert got is True
        elif f["type"] in ("int", "float"):
            assert float(got) == float(value), (option, value, got)
        else:
            assert str(got) == str(value)


@pytest.mark.parametrize("case", [c for c in CASES if not c[2]["required"]], ids=_id)
def test_default_is_nvidias_or_documented(case) -> None:
    ep, gen, f = case
    parser = PARSERS[ep]()
    option = f["options"][0]
    ns = parser.parse_args(REQUIRED[ep])
    got = getattr(ns, _action(parser, option).dest)
    want = f["default"]
    same = got == want or (isinstance(want, (int, float)) and isinstance(got, (int, float))
                           and float(got) == float(want))
    if not same:
        assert (ep, option) in DOCUMENTED, (
            f"{ep} {option}: default {got!r}, NVIDIA ({gen}) {want!r}; list it in docs/nvidia.md")


def test_documented_rows_name_real_nvidia_flags() -> None:
    known = {(ep, o) for ep, gen, f in CASES for o in f["options"]}
    stale = sorted(row for row in DOCUMENTED if row not in known)
    assert not stale, f"docs/nvidia.md lists flags NVIDIA does not have: {stale}"


def test_float_counts_accept_what_nvidia_accepts() -> None:
    ns = pretrain.build_parser().parse_args(REQUIRED["run_pretraining.py"] + ["--max_steps", "1e3",
                                                                               "--log_freq", "0.5"])
    assert ns.max_steps == 1000 and isinstance(ns.max_steps, int) and ns.log_freq == 0.5


def _run(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_inert_flags_print_one_line_each(tmp_path) -> None:
    """Flags that cannot act here say so, once each, on a real (dry) run."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    (tmp_path / "in.txt").write_text("the the.\n")
    p = _run("create_pretraining_data.py", "--input_file", str(tmp_path / "in.txt"), "--output_file",
             str(tmp_path / "x.hdf5"), "--vocab_file", str(vocab), "--bert_model", "bert-large-uncased",
             "--dry_run")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("note:")]
    assert lines == [f"note: --bert_model has no effect: the tokenizer is --vocab_file {vocab} with "
                     "--do_lower_case true"]
    assert not (tmp_path / "x.hdf5").exists()
    qa = [sys.executable, "inference.py", "--init_checkpoint", str(tmp_path), "--verbose_logging",
          "--dry_run"]
    p = subprocess.run(qa, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [ln for ln in p.stdout.splitlines() if ln.startswith("note:")] == [
        "note: --verbose_logging has no effect: answers are cut from the context by character "
        "offsets, so there is no answer-text alignment whose failures it would log"]


def test_tf32_is_set_on_cuda_and_refused_with_a_reason_on_cpu(monkeypatch) -> None:
    import torch

    from bertforge.precision import configure_tf32

    assert "this run is on cpu" in configure_tf32(True, "cpu")
    assert configure_tf32(False, "cpu") is None
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    try:
        assert configure_tf32(True, "cuda") is None
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
        assert "Tesla V100 has no TF32 units" in configure_tf32(True, "cuda")
        assert configure_tf32(False, "cuda") is None
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_static_loss_scale_keeps_its_scale_and_skips_overflows() -> None:
    """NVIDIA's --loss_scale S (2020): a fixed scale; a step with inf gradients is skipped."""
    import torch

    from bertforge.precision import _StaticGradScaler

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = _StaticGradScaler(128.0, device="cpu")
    for bad in (False, True, False):
        opt.zero_grad()
        scaler.scale((w * (float("inf") if bad else 1.0)).sum()).backward()
        before = w.detach().clone()
        scaler.step(opt)
        scaler.update()
        assert float(scaler.get_scale()) == 128.0
        assert torch.equal(w.detach(), before) == bad  # the overflowing step changed nothing
