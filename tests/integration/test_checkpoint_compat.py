"""Checkpoints written by earlier versions of bertforge still load and resume exactly.

tests/fixtures/checkpoint_v0 holds a phase-1 checkpoint of format 0 (before checkpoints carried
a ``format_version``), written by commit 9919e66 (see its README). From it, that commit's code
(run here from ``git archive``, on this machine: the last bits of a product depend on the CPU's
kernels) and today's must reach the same weights, bit for bit: step 6 of the same phase-1 run,
and step 5 of a phase 2 started from it, with the loss normalised as that code did
(``--loss_normalization micro_batch``; the default normalises over the global batch and says so
when it continues such a checkpoint).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_fixtures import REPO, earlier_code, run_cli  # noqa: E402

from bertforge.checkpoint import FORMAT_VERSION, load_checkpoint  # noqa: E402

FIXTURE = REPO / "tests/fixtures/checkpoint_v0"
WRITER = "9919e66"
"""The commit that wrote the fixture: the last one before checkpoints carried ``format_version``."""

pytestmark = pytest.mark.timeout(300)


def _flags(out: Path, *extra: str) -> list[str]:
    return [f"--input_dir={FIXTURE / 'data'}", f"--config_file={FIXTURE / 'bert_config.json'}",
            f"--output_dir={out}", "--train_batch_size=4", "--gradient_accumulation_steps=2",
            "--max_steps=6", "--learning_rate=1e-2", "--warmup_proportion=0.2",
            "--max_seq_length=32", "--max_predictions_per_seq=3", "--num_workers=0", "--do_train",
            "--disable_progress_bar", "--seed=11", "--num_steps_per_checkpoint=3", "--log_freq=1",
            "--resume_from_checkpoint", *extra]


def _run(argv: list[str]) -> None:
    from bertforge.cli.pretrain import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was written with OMP_NUM_THREADS=1
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def _assert_weights(got: Path, expected: Path) -> None:
    a = load_checkpoint(got)["model"]
    b = torch.load(expected, weights_only=True)["model"]
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ from {expected} (written by {WRITER}), e.g. {diff[:3]}"


def _start(d: Path) -> Path:
    d.mkdir(parents=True)
    shutil.copy(FIXTURE / "ckpt_3.pt", d / "ckpt_3.pt")
    return d


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, Path]:
    """What 9919e66's code computes here from the fixture's checkpoint (its own format)."""
    root = tmp_path_factory.mktemp("format0")
    old = earlier_code(WRITER, root / "code")
    p1, p2 = _start(root / "phase1"), _start(root / "phase2")
    env = {"BERTFORGE_CPU_GEMM": "onednn"}  # that code's default backend, which the fixture was written with
    run_cli(_flags(p1), repo=old, env=env)
    run_cli(_flags(p2) + ["--phase2", "--max_steps=2", "--num_steps_per_checkpoint=2"], repo=old, env=env)
    return {"phase1_step6": p1 / "ckpt_6.pt", "phase2_step5": p2 / "ckpt_5.pt"}


@pytest.fixture
def out(tmp_path) -> Path:
    return _start(tmp_path / "out")


def test_format0_checkpoint_resumes_exactly(out, expected):
    _run(_flags(out, "--loss_normalization=micro_batch"))
    _assert_weights(out / "ckpt_6.pt", expected["phase1_step6"])
    ck = load_checkpoint(out / "ckpt_6.pt")
    assert (ck["phase"], ck["step"]) == (1, 6)
    # written in today's format, with the run's typed settings on record
    assert ck["format_version"] == FORMAT_VERSION and ck["run_config"]["training"]["max_steps"] == 6


def test_format0_checkpoint_starts_phase2_exactly(out, expected):
    _run(_flags(out, "--phase2", "--max_steps=2", "--num_steps_per_checkpoint=2",
                "--loss_normalization=micro_batch"))
    _assert_weights(out / "ckpt_5.pt", expected["phase2_step5"])
    ck = load_checkpoint(out / "ckpt_5.pt")
    assert (ck["phase"], ck["step"], ck["phase1_end_step"]) == (2, 2, 3)


def test_format0_checkpoint_continued_with_the_default_normalisation_says_so(out, capsys):
    _run(_flags(out, "--max_steps=4"))
    assert "was written before --loss_normalization existed" in capsys.readouterr().out
    assert load_checkpoint(out / "ckpt_4.pt")["data"]["version"] == 2  # one global position now
