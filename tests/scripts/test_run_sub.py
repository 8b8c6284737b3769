"""run.sub's logic, checked in seconds without a cluster.

run.sub runs under bash with the SLURM_* variables a batch job would have, and fake
`srun`/`scontrol`/`scancel` on PATH that record their arguments. Covered: variable
precedence (current > legacy > phase default), validation errors, phase 2 finding phase
1's checkpoint through the job dependency, resume inside the job's folder, the pyxis
container launch, and the data-preparation steps. The real thing runs in tests/slurm/.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE = """#!/bin/bash
{ printf '%s\\n' "$(basename "$0")" "$@"; echo; } >> "$FAKE_LOG"
if [[ $(basename "$0") == scontrol && $1 == show ]]; then printf 'node7\\nnode8\\n'; fi
exit 0
"""


@pytest.fixture
def env(tmp_path: Path) -> dict:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("srun", "scontrol", "scancel"):
        (bindir / name).write_text(FAKE)
        (bindir / name).chmod(0o755)
    submit = tmp_path / "submit"
    (submit / "data").mkdir(parents=True)
    # a stand-in checkout: run.sub checks that the entry points and configs exist
    code = tmp_path / "code"
    (code / "bert_configs").mkdir(parents=True)
    (code / "bert_configs" / "large.json").write_text("{}")
    for name in ("run_pretraining.py", "create_pretraining_data.py"):
        (code / name).write_text("")
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e.update(
        PATH=f"{bindir}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "calls.log"),
        SLURM_JOB_ID="500",
        SLURM_JOB_NODELIST="node[7-8]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NTASKS_PER_NODE="8(x2)",
        SLURM_SUBMIT_DIR=str(submit),
        BERT_DIR=str(code),
        PYTHON="/usr/bin/python3",
    )
    return e


def shards(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / ".num_samples.json").write_text("{}")
    return path


def run(env: dict, **extra: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    proc = subprocess.run(["bash", str(REPO / "run.sub")], env={**env, **extra},
                          capture_output=True, text=True, timeout=60)
    log = Path(env["FAKE_LOG"])
    calls = [c.splitlines() for c in log.read_text().split("\n\n") if c.strip()] if log.exists() else []
    if log.exists():
        log.unlink()
    return proc, calls


def srun_calls(calls: list[list[str]]) -> list[list[str]]:
    return [c[1:] for c in calls if c[0] == "srun"]


def flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for a in argv:
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v
    return out


def test_phase1_defaults_and_legacy_precedence(env: dict, tmp_path: Path) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    data = shards(submit / "data/pretrain/phase1/bin_size_64/parquet")
    proc, calls = run(env, BATCHSIZE="2048", LR="1e-3", GRADIENT_STEPS="64",
                      TRAIN_BATCH_SIZE="4096")
    assert proc.returncode == 0, proc.stderr
    (train,) = srun_calls(calls)
    f = flags(train)
    assert f["--train_batch_size"] == "4096"            # current name beats legacy
    assert "TRAIN_BATCH_SIZE=4096 wins over legacy BATCHSIZE=2048" in proc.stderr
    assert f["--learning_rate"] == "1e-3"               # legacy beats phase default
    assert f["--gradient_accumulation_steps"] == "64"
    assert f["--max_seq_length"] == "128" and f["--max_steps"] == "7038"   # phase 1 defaults
    assert f["--num_steps_per_checkpoint"] == "2500" and f["--warmup_proportion"] == "0.2843"
    assert f["--input_dir"] == str(data)
    assert f["--output_dir"] == str(submit / "results/500")
    # 2 nodes x 8 tasks, --ntasks explicit (srun ignores a --ntasks-per-node that
    # disagrees with the job's task count)
    assert f["--ntasks-per-node"] == "8" and f["--ntasks"] == "16"
    assert "--fp16" in f and "--phase2" not in f
    assert "--resume_from_checkpoint" not in f
    assert "--vocab_file" not in f            # no vocab at the default path: not passed
    assert train[train.index("-u") - 1] == "/usr/bin/python3"
    # rendezvous on the first node of the allocation, port from the job id
    assert "master node7:20500" in proc.stderr


def test_phase1_resumes_from_its_own_folder(env: dict) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    shards(submit / "data/pretrain/phase1/bin_size_64/parquet")
    out = submit / "results/500"
    out.mkdir(parents=True)
    (out / "ckpt_40.pt").write_bytes(b"x")
    vocab = submit / "data/vocab/vocab.txt"
    vocab.parent.mkdir(parents=True)
    vocab.write_text("[PAD]\n")
    proc, calls = run(env, SLURM_RESTART_COUNT="1", PRECISION="bf16", STEPS_THIS_RUN="50")
    assert proc.returncode == 0, proc.stderr
    f = flags(srun_calls(calls)[0])
    assert "--resume_from_checkpoint" in f and "--bf16" in f and "--fp16" not in f
    assert f["--steps_this_run"] == "50" and f["--vocab_file"] == str(vocab)
    assert "resuming phase 1 from" in proc.stderr


def test_phase2_finds_phase1_checkpoint_through_dependency(env: dict) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    data2 = shards(submit / "data/pretrain/phase2/bin_size_64/parquet")
    p1 = submit / "results/311"
    p1.mkdir(parents=True)
    for step in (5, 12, 9):
        (p1 / f"ckpt_{step}.pt").write_bytes(b"x")
    proc, calls = run(env, PHASE="2", SLURM_JOB_DEPENDENCY="afterok:311")
    assert proc.returncode == 0, proc.stderr
    f = flags(srun_calls(calls)[0])
    assert f["--init_checkpoint"] == str(p1 / "ckpt_12.pt")   # the newest one
    assert f["--phase1_end_step"] == "12"                     # inferred from its step
    assert f["--input_dir"] == str(data2)
    assert "--phase2" in f and "--resume_phase2" not in f
    # NVIDIA's run.sub defaults: the same batch and accumulation in both phases, its
    # checkpoint interval, binned shards, the log named summary.json
    assert f["--max_seq_length"] == "512" and f["--train_batch_size"] == "8192"
    assert f["--gradient_accumulation_steps"] == "32" and f["--num_steps_per_checkpoint"] == "1000"
    assert f["--json-summary"] == str(submit / "results/500/summary.json")
    # requeued phase 2: resumes its own checkpoints, same step numbering
    out = submit / "results/500"  # made by the first run
    (out / "ckpt_20.pt").write_bytes(b"x")
    proc, calls = run(env, PHASE="2", SLURM_JOB_DEPENDENCY="afterok:311")
    f = flags(srun_calls(calls)[0])
    assert "--resume_phase2" in f and "--init_checkpoint" not in f
    assert f["--phase1_end_step"] == "12"


def test_phase2_without_a_checkpoint_is_a_clear_error(env: dict) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    shards(submit / "data/pretrain/phase2/bin_size_64/parquet")
    proc, calls = run(env, PHASE="2")
    assert proc.returncode == 2 and not srun_calls(calls)
    assert "PHASE=2 needs phase 1's checkpoint" in proc.stderr
    proc, _ = run(env, PHASE="2", INIT_CHECKPOINT="/nonexistent/ckpt_3.pt")
    assert proc.returncode == 2 and "INIT_CHECKPOINT=/nonexistent/ckpt_3.pt" in proc.stderr


@pytest.mark.parametrize("bad, message", [
    ({"PHASE": "3"}, "PHASE must be one of: 1 2"),
    ({"PRECISION": "fp8"}, "PRECISION must be one of"),
    ({"TRAIN_BATCH_SIZE": "100", "GRADIENT_ACCUMULATION_STEPS": "7"}, "not divisible"),
    ({"BATCHSIZE": "-4"}, "TRAIN_BATCH_SIZE must be a non-negative integer"),
    ({"LR": "fast"}, "LEARNING_RATE must be a number"),
    ({"CONFIG": "huge"}, "CONFIG=huge: no file"),
    ({"SLURM_JOB_ID": ""}, "submit with sbatch"),
])
def test_bad_settings_fail_with_one_line(env: dict, bad: dict, message: str) -> None:
    shards(Path(env["SLURM_SUBMIT_DIR"]) / "data/pretrain/phase1/bin_size_64/parquet")
    proc, calls = run(env, **bad)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not srun_calls(calls)


def test_container_mode_through_pyxis(env: dict, tmp_path: Path) -> None:
    data = shards(tmp_path / "lustre/phase1")
    env = {k: v for k, v in env.items() if k not in ("BERT_DIR", "PYTHON")}
    proc, calls = run(env, IMAGE_VERSION="24.12", DATADIR=str(data),
                      CONTAINER_MOUNTS="/scratch:/scratch")
    assert proc.returncode == 0, proc.stderr
    (train,) = srun_calls(calls)
    f = flags(train)
    assert f["--container-image"] == "bertforge:24.12"
    mounts = f["--container-mounts"].split(",")
    assert f"{data}:{data}" in mounts and "/scratch:/scratch" in mounts
    results = Path(env["SLURM_SUBMIT_DIR"]) / "results"
    assert f"{results}:{results}" in mounts
    assert f["--container-workdir"] == "/workspace/bert"
    assert "python" in train and "/workspace/bert/run_pretraining.py" in train
    assert f["--config_file"] == "/workspace/bert/bert_configs/large.json"


def test_data_preparation_runs_on_all_tasks_then_balances(env: dict, tmp_path: Path) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    text = submit / "data/wikipedia/source"
    text.mkdir(parents=True)
    vocab = submit / "data/vocab/vocab.txt"
    vocab.parent.mkdir(parents=True)
    vocab.write_text("[PAD]\n")
    proc, calls = run(env, DASK_TASKS_PER_NODE="16", NUM_SHARDS_PER_WORKER="2", NUM_WORKERS="3",
                      MASKING="dynamic", BIN_SIZE="32", DATA_ONLY="true")
    assert proc.returncode == 0, proc.stderr
    prep, balance = srun_calls(calls)
    fp, fb = flags(prep), flags(balance)
    assert fp["--ntasks-per-node"] == "16" and fp["--ntasks"] == "32" and "--balance" not in fp
    assert prep[prep.index("--num_shards") + 1] == str(2 * 3 * 2 * 8)  # per worker x workers x nodes x gpus
    assert prep[prep.index("--bin_size") + 1] == "32"
    assert prep[prep.index("--masking") + 1] == "none"
    out = prep[prep.index("--output_file") + 1]
    assert out == str(submit / "data/pretrain/phase1/bin_size_32/parquet")
    assert fb["--ntasks"] == "1" and "--balance" in fb
    assert "DATA_ONLY=true" in proc.stderr


def test_missing_data_and_text_is_a_clear_error(env: dict) -> None:
    proc, calls = run(env)
    assert proc.returncode == 2 and not srun_calls(calls)
    assert "no shards in" in proc.stderr and "TEXT_DIR" in proc.stderr


def test_single_task_data_preparation_needs_no_balance(env: dict) -> None:
    submit = Path(env["SLURM_SUBMIT_DIR"])
    (submit / "data/wikipedia/source").mkdir(parents=True)
    (submit / "data/vocab").mkdir(parents=True)
    (submit / "data/vocab/vocab.txt").write_text("[PAD]\n")
    proc, calls = run(env, SLURM_JOB_NUM_NODES="1", DASK_TASKS_PER_NODE="1", DATA_ONLY="true")
    assert proc.returncode == 0, proc.stderr
    (prep,) = srun_calls(calls)
    assert "--balance" not in prep and prep[prep.index("--masking") + 1] == "static"
    assert flags(prep)["--ntasks"] == "1"  # even inside a job with more tasks
    assert prep[prep.index("--num_shards") + 1] == "4096"   # NVIDIA's default block count


def test_warmup_updates_is_nvidias_2020_name(env: dict) -> None:
    shards(Path(env["SLURM_SUBMIT_DIR"]) / "data/pretrain/phase1/bin_size_64/parquet")
    proc, calls = run(env, WARMUP_UPDATES="0.1")
    assert proc.returncode == 0, proc.stderr
    assert flags(srun_calls(calls)[0])["--warmup_proportion"] == "0.1"
    proc, calls = run(env, WARMUP_UPDATES="0.1", WARMUP_PROPORTION="0.3")
    assert flags(srun_calls(calls)[0])["--warmup_proportion"] == "0.3"
    assert "WARMUP_PROPORTION=0.3 wins over legacy WARMUP_UPDATES=0.1" in proc.stderr


def test_global_batch_size_holds_for_any_task_count(env: dict) -> None:
    """GLOBAL_BATCH_SIZE: the per-task batch and the accumulation follow the job's task count
    (a requeue onto other nodes), the micro-batch TRAIN_BATCH_SIZE / GRADIENT_ACCUMULATION_STEPS
    stays; without it TRAIN_BATCH_SIZE is per task whatever the count."""
    env = {**env, "DATADIR": str(shards(Path(env["SLURM_SUBMIT_DIR"]) / "p1"))}
    for nodes, per_node, batch, accum in (("2", "8(x2)", "4096", "16"), ("1", "8", "8192", "32"),
                                          ("1", "2", "32768", "128")):
        proc, calls = run(env, GLOBAL_BATCH_SIZE="65536", SLURM_JOB_NUM_NODES=nodes,
                          SLURM_NTASKS_PER_NODE=per_node)
        assert proc.returncode == 0, proc.stderr
        f = flags(srun_calls(calls)[0])
        assert (f["--train_batch_size"], f["--gradient_accumulation_steps"]) == (batch, accum), nodes
        assert f"GLOBAL_BATCH_SIZE=65536 TRAIN_BATCH_SIZE={batch} " in proc.stderr
    proc, calls = run(env, SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2")
    assert flags(srun_calls(calls)[0])["--train_batch_size"] == "8192"
    # requeued after `scontrol update NumTasks=1 TasksPerNode=1`: Slurm sets the job's new
    # SLURM_TASKS_PER_NODE, the environment sbatch stored keeps SLURM_NTASKS_PER_NODE=2
    proc, calls = run(env, GLOBAL_BATCH_SIZE="65536", SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2",
                      SLURM_NTASKS="2", SLURM_TASKS_PER_NODE="1", SLURM_RESTART_COUNT="1")
    f = flags(srun_calls(calls)[0])
    assert (f["--ntasks"], f["--ntasks-per-node"], f["--train_batch_size"]) == ("1", "1", "65536")
    for bad, message in (("1000", "GLOBAL_BATCH_SIZE=1000 is not a multiple of 16 task(s) x micro-batch 256"),
                         ("0", "GLOBAL_BATCH_SIZE must be positive")):
        proc, calls = run(env, GLOBAL_BATCH_SIZE=bad)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not srun_calls(calls)
