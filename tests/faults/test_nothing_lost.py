"""One run can never destroy another's data: the output lock, tested with two real runs.

A first run is started as its own process and stopped (SIGSTOP, by the injector) at the
moment a complete output file is about to get its final name: it holds its output's lock
and has written nothing final yet. A second run of the same command on the same folder
must refuse at once, naming the first (its pid), and leave everything alone; the first,
continued (SIGCONT), must end exactly as an undisturbed run does. The same for
pretraining, data creation and fine-tuning (SQuAD, GLUE); for a second *job* of two ranks
(only its rank 0 looks at the lock, and both ranks stop with its verdict); for a lock
left by a killed run (taken over, with a note); and for a rank that never starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.helpers import (
    PYTHON,
    REPO,
    assert_checkpoints_complete,
    assert_same_weights,
    assert_user_error,
    check,
    cli_env,
    command,
    error_line,
    pretrain_args,
    temp_files,
)

pytestmark = pytest.mark.timeout(600)


def start_stopped(script: str, args: list[str], victim: str) -> subprocess.Popen:
    """Start ``script`` as its own process; return once it has stopped itself just before
    renaming its complete ``victim`` file (it then holds its output's lock)."""
    fault = {"stop_in_write": {"name": victim}}
    env = cli_env(BERTFORGE_FAULT=json.dumps(fault))
    p = subprocess.Popen(command(script, [str(a) for a in args], fault), cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"{script} ended ({p.returncode}) before stopping:\n{err[-3000:]}")
        try:
            state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "?"
        if state == "T":
            return p
        time.sleep(0.05)
    p.kill()
    pytest.fail(f"{script} never reached {victim}")


def finish(p: subprocess.Popen) -> subprocess.CompletedProcess:
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def dllogger_records(path: Path) -> list[dict]:
    """Every line must be one whole dllogger record (two writers would mix lines)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and all(ln.startswith("DLLL {") for ln in lines), lines[:3]
    return [json.loads(ln[5:]) for ln in lines]


def test_second_pretraining_run_is_refused_and_the_first_ends_as_if_alone(world, cli, reference, tmp_path):
    out = tmp_path / "out"
    first = start_stopped("run_pretraining.py", pretrain_args(world, out), "ckpt_4.pt")
    second = cli.run("run_pretraining.py", pretrain_args(world, out))
    assert_user_error(second, f"--output_dir {out} is in use by another run (pid {first.pid} on",
                      "run_pretraining.py")
    assert first.poll() is None, "the second run waited for the first"
    check(finish(first))
    assert assert_checkpoints_complete(out) == [4, 8] and temp_files(out) == []
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")
    records = dllogger_records(out / "dllogger.json")
    assert sum(1 for r in records if r.get("step") == [] and "final_loss" in r.get("data", {})) == 1
    assert (out / ".bertforge.lock").read_text() == "", "a clean end releases the record"
    # an evaluation of the result in the same folder adds to its log (it used to truncate it)
    check(cli.run("run_pretraining.py", [
        f"--input_dir={world.hdf5}", f"--eval_dir={world.hdf5}", f"--config_file={world.config}",
        f"--output_dir={out}", f"--init_checkpoint={out / 'ckpt_8.pt'}", "--num_eval_batches=1",
        "--eval_batch_size=4", "--max_seq_length=64", "--max_predictions_per_seq=10", "--num_workers=0"]))
    after = dllogger_records(out / "dllogger.json")
    assert after[:len(records)] == records and "eval_mlm_accuracy" in after[-1]["data"]


def _create_args(world, out: Path) -> list[str]:
    return ["--input_file", str(world.text), "--vocab_file", str(world.vocab),
            "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "2",
            "--progress", "false", "--output_file", str(out)]


def test_second_create_run_is_refused_and_the_first_ends_as_if_alone(world, cli, tmp_path):
    out = tmp_path / "shards"
    first = start_stopped("create_pretraining_data.py", _create_args(world, out),
                          "training_shard_00001.hdf5")
    second = cli.run("create_pretraining_data.py", [*_create_args(world, out), "--overwrite"])
    assert_user_error(second, f"--output_file {out} is in use by another run (pid {first.pid} on")
    assert first.poll() is None
    assert not out.exists(), "nothing under the final name before the dataset is complete"
    check(finish(first))
    ref = world.hdf5
    assert {p.name: p.read_bytes() for p in out.iterdir()} == \
        {p.name: p.read_bytes() for p in ref.iterdir()}


@pytest.fixture(scope="module")
def finetune_fx(cli_fixtures):
    return cli_fixtures


def _squad_args(fx: dict, out: Path) -> list[str]:
    return ["--init_checkpoint", str(fx["qa"]), "--vocab_file", str(fx["vocab"]),
            "--output_dir", str(out), "--do_train", "--train_file", str(fx["squad"]),
            "--max_seq_length", "64", "--doc_stride", "32", "--max_query_length", "16",
            "--train_batch_size", "4", "--max_steps", "2", "--skip_cache"]


def _glue_args(fx: dict, out: Path) -> list[str]:
    return ["--task_name", "sst-2", "--data_dir", str(fx["glue"]), "--init_checkpoint",
            str(fx["pretrain_ckpt"]), "--vocab_file", str(fx["vocab"]), "--output_dir", str(out),
            "--do_train", "--do_eval", "--max_seq_length", "32", "--train_batch_size", "4",
            "--max_steps", "2"]


@pytest.mark.parametrize("script, args_for", [("run_squad.py", _squad_args), ("run_glue.py", _glue_args)],
                         ids=["squad", "glue"])
def test_second_finetuning_run_is_refused_and_the_first_ends_as_if_alone(finetune_fx, cli, tmp_path,
                                                                         script, args_for):
    out, alone = tmp_path / "out", tmp_path / "alone"
    check(cli.run(script, args_for(finetune_fx, alone)))  # the same run, undisturbed
    first = start_stopped(script, args_for(finetune_fx, out), "pytorch_model.bin")
    second = cli.run(script, args_for(finetune_fx, out))
    assert_user_error(second, f"--output_dir {out} is in use by another run (pid {first.pid} on")
    assert first.poll() is None
    check(finish(first))
    assert_same_weights(alone / "pytorch_model.bin", out / "pytorch_model.bin")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in alone.iterdir())
    dllogger_records(out / "dllogger.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_second_job_of_two_ranks_is_refused_on_every_rank(world, cli, reference, tmp_path):
    """Only rank 0 of a job takes the lock; its verdict reaches the job's other ranks through
    their own process group, so no rank of a second job touches the folder."""
    out = tmp_path / "out"
    first = start_stopped("run_pretraining.py", pretrain_args(world, out), "ckpt_4.pt")
    port = str(_free_port())
    ranks = [subprocess.Popen([PYTHON, "run_pretraining.py", *pretrain_args(world, out, "--dist_timeout=60")],
                              cwd=REPO, env=cli_env(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=300) for p in ranks]
    lines = set()
    for p, (so, se) in zip(ranks, results, strict=True):
        assert p.returncode == 2, se[-2000:]
        lines.add(error_line(se, so))
    (line,) = lines  # the same verdict on both ranks
    assert f"--output_dir {out} is in use by another run (pid {first.pid} on" in line
    assert first.poll() is None
    check(finish(first))
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")


def test_lock_of_a_killed_run_is_taken_over_with_a_note(world, cli, reference, tmp_path):
    out = tmp_path / "out"
    first = start_stopped("run_pretraining.py", pretrain_args(world, out), "ckpt_4.pt")
    first.kill()  # kill -9: the kernel drops the lock, the record stays
    first.communicate()
    record = json.loads((out / ".bertforge.lock").read_text())
    assert record["pid"] == first.pid
    again = check(cli.run("run_pretraining.py", pretrain_args(world, out, "--resume_from_checkpoint")))
    assert (f"note: --output_dir {out} was locked by pid {first.pid} on {record['host']}" in again.stderr
            and "which has ended without releasing it (killed?); taking the lock over" in again.stderr)
    assert_same_weights(reference / "ckpt_8.pt", out / "ckpt_8.pt")


def test_a_rank_that_never_starts_is_named_within_dist_timeout(world, cli, tmp_path):
    """WORLD_SIZE=2 but rank 1 is never started: rank 0 stops with one line (exit 1, an
    environment failure, documented), not a rendezvous traceback."""
    p = cli.run("run_pretraining.py", pretrain_args(world, tmp_path / "out", "--dist_timeout=5"),
                env={"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": str(_free_port())})
    line = assert_user_error(p, "rank 0 of 2: the 2 processes did not all join at 127.0.0.1:",
                             "within 5s", "start every rank", code=1)
    assert "Traceback" not in p.stderr, line
