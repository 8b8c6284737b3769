"""The test helpers that run an earlier version's code: what they accept as its output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_fixtures import EXIT_ABORT, REPO, _earlier_exit_abort  # noqa: E402

FINAL = "epoch 0 step 4 | step_loss 1.0\nfinal | e2e_train_time 1.5 | global_step 4\n"


def _done(stdout: str, stderr: str, code: int = 1) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, stderr)


def test_an_earlier_runs_abort_after_its_last_output_is_accepted(tmp_path):
    assert _earlier_exit_abort(_done(FINAL, f"{EXIT_ABORT}\nrank 1 exitcode -6"), tmp_path, 2)


@pytest.mark.parametrize("case", ["todays code", "one process", "not finished", "another error"])
def test_anything_else_is_still_a_failure(tmp_path, case):
    repo, nproc, out, err = tmp_path, 2, FINAL, f"{EXIT_ABORT}\n"
    if case == "todays code":  # fixed in d51c99f: today's code must exit cleanly
        repo = REPO
    elif case == "one process":
        nproc = 1
    elif case == "not finished":
        out = "epoch 0 step 3 | step_loss 1.0\n"
    else:
        err = "RuntimeError: Connection reset by peer\n"
    assert not _earlier_exit_abort(_done(out, err), repo, nproc)
