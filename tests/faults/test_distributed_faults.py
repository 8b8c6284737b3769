"""One of two distributed ranks dies or hangs (gloo, CPU).

* Under ``torchrun``: its agent sees the dead worker and stops the other one (its own
  behaviour, checked here); the last checkpoint is complete and a torchrun resume ends
  exactly where an uninterrupted torchrun run ends.
* Launched without an agent (as ``srun`` does, each rank its own process): the survivor
  must stop by itself with one clear line within ``--dist_timeout``, whether the peer died
  (connection reset) or hangs (SIGSTOP: the collective times out).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.faults.helpers import (
    INJECT,
    PYTHON,
    REPO,
    assert_checkpoints_complete,
    assert_same_state,
    check,
    cli_env,
    error_line,
    final_files,
    pretrain_args,
    temp_files,
)

pytestmark = pytest.mark.timeout(600)

TIMEOUT_S = 15  # --dist_timeout: long enough for a slow start on a loaded machine


def _torchrun(args: list[str], fault: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = cli_env()
    if fault is not None:
        env["BERTFORGE_FAULT"] = json.dumps(fault)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *([INJECT] if fault else []), "run_pretraining.py", *args]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    return p, time.time() - t0


@pytest.mark.exact_resume
def test_torchrun_rank_killed_then_resume_is_exact(world, tmp_path):
    args = lambda out: pretrain_args(world, out, f"--dist_timeout={TIMEOUT_S}")  # noqa: E731
    ref = tmp_path / "ref"
    check(_torchrun(args(ref))[0])
    out = tmp_path / "out"
    # rank 1 is killed (kill -9) in micro-batch 1 of step 6, mid all-reduce for rank 0
    p, seconds = _torchrun(args(out), fault={"signal": {"call": 11, "sig": "SIGKILL", "rank": 1}})
    assert p.returncode == 1, p.stderr[-3000:]
    log = p.stdout + p.stderr
    assert "FAULT: SIGKILL at micro-batch 11" in log
    assert "exitcode  : -9" in log and "rank      : 1" in log  # torchrun names the dead rank
    assert seconds < 300
    assert final_files(out) == ["ckpt_4.pt", "dllogger.json"] and temp_files(out) == []
    assert assert_checkpoints_complete(out) == [4]
    assert_same_state(ref / "ckpt_4.pt", out / "ckpt_4.pt")
    check(_torchrun(args(out) + ["--resume_from_checkpoint"])[0])
    assert_same_state(ref / "ckpt_8.pt", out / "ckpt_8.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSTOP"], ids=["dies", "hangs"])
def test_survivor_exits_with_a_clear_error_within_dist_timeout(world, tmp_path, sig):
    out = tmp_path / "out"
    args = pretrain_args(world, out, f"--dist_timeout={TIMEOUT_S}")
    port = _free_port()
    procs, logs = [], []
    for rank in (0, 1):
        env = cli_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [PYTHON, "run_pretraining.py", *args]
        if rank == 1:
            env["BERTFORGE_FAULT"] = json.dumps({"signal": {"call": 11, "sig": sig}})
            cmd = [PYTHON, INJECT, "run_pretraining.py", *args]
        logs.append(tmp_path / f"rank{rank}.log")
        with open(logs[-1], "w") as fh:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT))
    r0, r1 = procs
    try:
        t0 = time.time()
        while "FAULT:" not in logs[1].read_text():
            assert r1.poll() is None or sig == "SIGKILL", logs[1].read_text()[-2000:]
            assert time.time() - t0 < 300, "rank 1 never reached the fault"
            time.sleep(0.1)
        t_fault = time.time()
        code = r0.wait(timeout=TIMEOUT_S + 120)  # a hang here fails the test
        waited = time.time() - t_fault
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)  # also ends a stopped process
                p.wait()
    text = logs[0].read_text()
    assert code == 1, text[-3000:]
    line = error_line(text)
    assert line.startswith("error: rank 0 of 2: communication with the other ranks failed"), line
    assert f"--dist_timeout {TIMEOUT_S}s" in line and "latest checkpoint: ckpt_4.pt" in line
    # dead peer: the connection resets at once; hung peer: the collective's timeout fires
    assert waited < TIMEOUT_S + 30, f"rank 0 needed {waited:.0f}s after the fault"
    assert ("Timed out" in line) == (sig == "SIGSTOP"), line
    assert assert_checkpoints_complete(out) == [4] and temp_files(out) == []
