"""`sbatch run.sub` on a real one-node Slurm cluster: bare-metal mode, CPU, 2 tasks.

1. Data preparation with 1 task and with 2 srun tasks (+ the balance step) gives the same
   final shard set.
2. Phase 1 then phase 2 as two Slurm jobs chained with --dependency=afterok (phase 2 finds
   phase 1's checkpoint itself), once undisturbed and once interrupted mid-run in each
   phase (phase 1: `scontrol requeue`, as preemption does; phase 2: the USR1 that
   `--signal=B:USR1@300` sends before a time limit); the interrupted jobs resume from their
   SIGTERM checkpoint and end with exactly the checkpoints of the undisturbed chain.
3. A job requeued onto another task count (2 -> 1 and 1 -> 2 tasks, GLOBAL_BATCH_SIZE kept)
   ends within 1e-5 of the undisturbed job (issue 20: one global batch, however split).

The model is bert_configs/tiny.json with its vocabulary cut to the test corpus (512
entries) so that a step takes ~0.1 s on a shared 2-core machine.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.faults.helpers import numerics_changes
from tests.slurm.corpus import write_corpus

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
RUN_SUB = REPO / "run.sub"
P1_STEPS, P2_STEPS, CKPT_EVERY = 20, 12, 4


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("runsub")
    text_dir, vocab = write_corpus(root)
    cfg = json.loads((REPO / "bert_configs" / "tiny.json").read_text())
    cfg.update(vocab_size=512, max_position_embeddings=128)
    (root / "tiny-512.json").write_text(json.dumps(cfg))
    return {
        "root": root,
        "env": {
            "TEXT_DIR": str(text_dir), "VOCAB_FILE": str(vocab), "CONFIG": str(root / "tiny-512.json"),
            "RESULTS_DIR": str(root / "results"), "PRECISION": "fp32", "SEED": "42",
            "NUM_WORKERS": "0", "NUM_SHARDS_PER_WORKER": "2", "GPUS": "2",
            "DASK_TASKS_PER_NODE": "2", "VENV": str(REPO / ".venv"),
        },
    }


def shard_set(folder: Path) -> dict[str, object]:
    """{file name: table} of every shard plus the sample counts."""
    files = sorted(p for p in folder.iterdir() if p.name.startswith("shard-"))
    assert files, f"no shards in {folder}"
    out: dict[str, object] = {p.name: pq.read_table(p) for p in files}
    out[".num_samples.json"] = json.loads((folder / ".num_samples.json").read_text())
    return out


@pytest.fixture(scope="module")
def prepared(slurm, work: dict) -> dict:
    """Phase-1 shards (seq 64) made by DATA_ONLY jobs with 1 task and with 2 srun tasks."""
    root = work["root"]
    env = {**work["env"], "DATA_ONLY": "true", "MAX_SEQ_LENGTH": "64", "MAX_PREDICTIONS_PER_SEQ": "10"}
    one = slurm.sbatch(RUN_SUB, root / "prep1.out", "--ntasks=1",
                       env={**env, "DASK_TASKS_PER_NODE": "1", "DATADIR": str(root / "prep1")})
    two = slurm.sbatch(RUN_SUB, root / "prep2.out", "--nodes=1", "--ntasks-per-node=2",
                       env={**env, "DATADIR": str(root / "prep2")})
    assert one.wait() == "COMPLETED", one.log()
    assert two.wait() == "COMPLETED", two.log()
    return {"one": one, "two": two, "dir1": root / "prep1", "dir2": root / "prep2"}


def test_data_prep_one_task_equals_two_srun_tasks(prepared: dict) -> None:
    one, two = prepared["one"], prepared["two"]
    # the 2-task job really split the files over two srun tasks, then balanced
    log2 = two.log()
    assert re.search(r"^0: task 0/2: \d+ instances", log2, re.M), log2
    assert re.search(r"^1: task 1/2: \d+ instances", log2, re.M), log2
    assert "balanced" in log2 and "task 0/1" not in one.log()
    a, b = shard_set(prepared["dir1"]), shard_set(prepared["dir2"])
    assert a.keys() == b.keys() and len(a) == 2 * 2 + 1   # NUM_SHARDS_PER_WORKER x GPUS shards
    for name in a:
        assert a[name] == b[name] if name.startswith(".") else a[name].equals(b[name]), name
    sizes = list(a[".num_samples.json"].values())
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) > 1000
    assert not (prepared["dir2"] / ".parts").exists()


def _phase_env(work: dict, phase: int, phase1_data: Path) -> dict:
    common = {**work["env"], "PHASE": str(phase), "NUM_STEPS_PER_CHECKPOINT": str(CKPT_EVERY),
              "DATADIR": str(phase1_data), "DATADIR_PHASE2": str(work["root"] / "p2")}
    if phase == 1:
        return {**common, "TRAIN_BATCH_SIZE": "8", "GRADIENT_ACCUMULATION_STEPS": "2",
                "LEARNING_RATE": "1e-3", "WARMUP_PROPORTION": "0.1", "MAX_SEQ_LENGTH": "64",
                "MAX_PREDICTIONS_PER_SEQ": "10", "MAX_STEPS": str(P1_STEPS)}
    # legacy names on purpose: BATCHSIZE / LR / GRADIENT_STEPS; the phase-2 shards are
    # made by one task (the 2-task path is covered above and costs two more starts)
    return {**common, "DASK_TASKS_PER_NODE": "1", "BATCHSIZE": "4", "GRADIENT_STEPS": "1", "LR": "5e-4",
            "WARMUP_PROPORTION": "0.2", "MAX_SEQ_LENGTH": "128", "MAX_PREDICTIONS_PER_SEQ": "20",
            "MAX_STEPS": str(P2_STEPS)}


def _interrupt_when(slurm, job, ckpt: Path, how: str, timeout: float = 240) -> None:
    """Interrupt the job as soon as `ckpt` exists (the job is mid-run then).

    how="requeue": `scontrol requeue` (what preemption does: SIGTERM to every task, rerun);
    how="timelimit": USR1 to the batch shell, as `#SBATCH --signal=B:USR1@300` sends it
    before the time limit; run.sub then stops the ranks and requeues the job itself.
    """
    deadline = time.monotonic() + timeout
    while not ckpt.exists():
        assert time.monotonic() < deadline, f"{ckpt} never appeared:\n{job.log()}"
        assert job.state() in ("PENDING", "RUNNING", "CONFIGURING"), job.log()
        time.sleep(0.1)
    if how == "requeue":
        proc = slurm.run(["scontrol", "requeue", job.job_id])
    else:
        proc = slurm.run(["scancel", "--batch", "--signal=USR1", job.job_id])
    assert proc.returncode == 0, proc.stderr


def _same_checkpoint(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["step"] == cb["step"] and ca["phase"] == cb["phase"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), \
            f"{k} differs between {a} and {b}; {numerics_changes(a, b)}"
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for name, t in sa[pid].items():
            if torch.is_tensor(t):
                assert torch.equal(t, sb[pid][name]), f"optimizer {pid}/{name} differs"


@pytest.mark.exact_resume
def test_phase1_phase2_chain_with_requeue_matches_undisturbed(slurm, work: dict, prepared: dict) -> None:
    root = work["root"]
    results = root / "results"
    opts = ("--nodes=1", "--ntasks-per-node=2")
    data1 = prepared["dir2"]  # phase 1 trains on the 2-task shards; phase 2 makes its own
    # undisturbed chain
    p1 = slurm.sbatch(RUN_SUB, root / "p1.out", *opts, env=_phase_env(work, 1, data1))
    p2 = slurm.sbatch(RUN_SUB, root / "p2.out", *opts, f"--dependency=afterok:{p1.job_id}",
                      env=_phase_env(work, 2, data1))
    # the same chain, requeued mid-run in each phase (runs after the first one)
    q1 = slurm.sbatch(RUN_SUB, root / "q1.out", *opts, f"--dependency=afterok:{p2.job_id}",
                      env=_phase_env(work, 1, data1))
    q2 = slurm.sbatch(RUN_SUB, root / "q2.out", *opts, f"--dependency=afterok:{q1.job_id}",
                      env=_phase_env(work, 2, data1))

    _interrupt_when(slurm, q1, results / q1.job_id / f"ckpt_{CKPT_EVERY}.pt", "requeue")
    _interrupt_when(slurm, q2, results / q2.job_id / f"ckpt_{P1_STEPS + CKPT_EVERY}.pt", "timelimit")
    for job in (p1, p2, q1, q2):
        assert job.wait() == "COMPLETED", job.log()

    # phase 2 found phase 1's last checkpoint through the dependency
    p1_final = results / p1.job_id / f"ckpt_{P1_STEPS}.pt"
    assert f"phase 2 starts from {p1_final} (phase 1 ended at step {P1_STEPS})" in p2.log()
    q1_final = results / q1.job_id / f"ckpt_{P1_STEPS}.pt"
    assert f"phase 2 starts from {q1_final}" in q2.log()
    # phase 1 found its shards ready; phase 2 made the seq-128 shards inside its job first
    assert "data prep" not in p1.log() and "data prep" in p2.log()
    assert (root / "p2" / ".num_samples.json").is_file()
    # legacy names reached the trainer: phase 2 ran with BATCHSIZE=4, GRADIENT_STEPS=1
    assert "TRAIN_BATCH_SIZE=4 GRADIENT_ACCUMULATION_STEPS=1 LEARNING_RATE=5e-4" in p2.log()

    # each requeued job: stopped by SIGTERM mid-phase at a checkpoint, rerun, resumed there
    for job, first, last, what in ((q1, CKPT_EVERY, P1_STEPS, "phase 1"),
                                   (q2, P1_STEPS + CKPT_EVERY, P1_STEPS + P2_STEPS, "phase 2")):
        log = job.log()
        assert job.field("Restarts") == "1", log
        m = re.search(r"SIGTERM: checkpoint saved at step (\d+)", log)
        assert m, log
        stopped = int(m.group(1))
        assert first <= stopped < last, log
        assert f"resuming {what} from {results / job.job_id / f'ckpt_{stopped}.pt'}" in log, log
        assert "job " + job.job_id + " restart 1:" in log
    # the time-limit path: run.sub itself stopped the ranks and requeued the job
    assert "time limit near" in q2.log() and f"requeueing job {q2.job_id}" in q2.log()

    # the final checkpoints equal those of the undisturbed chain, bit for bit
    _same_checkpoint(p1_final, q1_final)
    _same_checkpoint(results / p2.job_id / f"ckpt_{P1_STEPS + P2_STEPS}.pt",
                     results / q2.job_id / f"ckpt_{P1_STEPS + P2_STEPS}.pt")
    # rank 0 logs through srun -l for a 2-rank world; the dllogger summary has the final entry
    assert re.search(r"^0: PARAMETER \| phase 1 \| world_size 2 ", p1.log(), re.M), p1.log()
    assert re.search(r"^0: final .*final_loss", p1.log(), re.M), p1.log()
    summary = (results / q2.job_id / "summary.json").read_text()
    assert "final_loss" in summary


def _elastic_env(work: dict, data: Path) -> dict:
    """Phase 1, 12 steps, 8 sequences per step over all tasks (GLOBAL_BATCH_SIZE) in
    micro-batches of 4: 2 tasks x 4, or 1 task x 8 in 2 micro-batches. GPUS is left to follow
    the job's task count, as it does by default."""
    env = {k: v for k, v in work["env"].items() if k != "GPUS"}
    return {**env, "PHASE": "1", "DATADIR": str(data),
            "CONFIG": str(work["root"] / "tiny-512-nodropout.json"), "GLOBAL_BATCH_SIZE": "8",
            "TRAIN_BATCH_SIZE": "4", "GRADIENT_ACCUMULATION_STEPS": "1", "LEARNING_RATE": "1e-3",
            "WARMUP_PROPORTION": "0.1", "MAX_SEQ_LENGTH": "64", "MAX_PREDICTIONS_PER_SEQ": "10",
            "MAX_STEPS": str(ELASTIC_STEPS), "NUM_STEPS_PER_CHECKPOINT": "3"}


ELASTIC_STEPS = 12


def test_requeue_onto_another_task_count(slurm, work: dict, prepared: dict) -> None:
    """Issue 20: a 2-task job requeued mid-run (`scontrol requeuehold`) and released with 1
    task (`scontrol update NumTasks=1 TasksPerNode=1`), and a 1-task job released with 2,
    continue the same global batch from their SIGTERM checkpoint; both end within 1e-5
    (relative, per tensor) of the undisturbed 2-task job. Dropout 0: dropout masks are
    per-rank random streams, which another task count cannot continue."""
    root = work["root"]
    results = root / "results"
    cfg = json.loads((root / "tiny-512.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (root / "tiny-512-nodropout.json").write_text(json.dumps(cfg))
    env = _elastic_env(work, prepared["dir2"])
    tasks_opt = {2: ("--nodes=1", "--ntasks-per-node=2"), 1: ("--nodes=1", "--ntasks-per-node=1")}
    ref = slurm.sbatch(RUN_SUB, root / "elastic-ref.out", *tasks_opt[2], env=env)
    assert ref.wait() == "COMPLETED", ref.log()
    want = torch.load(results / ref.job_id / f"ckpt_{ELASTIC_STEPS}.pt", map_location="cpu",
                      weights_only=True)["model"]
    for first, then in ((2, 1), (1, 2)):
        job = slurm.sbatch(RUN_SUB, root / f"elastic-{first}to{then}.out", *tasks_opt[first], env=env)
        out = results / job.job_id
        deadline = time.monotonic() + 240
        while not (out / "ckpt_3.pt").exists():
            assert time.monotonic() < deadline and job.state() in ("PENDING", "RUNNING", "CONFIGURING"), job.log()
            time.sleep(0.1)
        # what a requeue onto whatever nodes are free does: the same job, another task count
        assert slurm.run(["scontrol", "requeuehold", job.job_id]).returncode == 0
        while job.state() != "PENDING":
            assert time.monotonic() < deadline, job.log()
            time.sleep(0.2)
        m = re.search(r"SIGTERM: checkpoint saved at step (\d+)", job.log())
        assert m and 3 <= int(m.group(1)) < ELASTIC_STEPS, job.log()
        stopped = out / f"ckpt_{m.group(1)}.pt"
        ck = torch.load(stopped, map_location="cpu", weights_only=True)  # (a later one replaces it)
        assert len(ck["rng"]) == first and ck["data"]["version"] == 2  # one global data position
        upd = slurm.run(["scontrol", "update", f"JobId={job.job_id}", f"NumTasks={then}",
                         f"TasksPerNode={then}"])
        assert upd.returncode == 0, upd.stderr
        assert slurm.run(["scontrol", "release", job.job_id]).returncode == 0
        assert job.wait() == "COMPLETED", job.log()
        log = job.log()
        assert job.field("Restarts") == "1", log
        assert f"resuming phase 1 from {stopped}" in log, log
        for n in (first, then):  # each run's task count and its share of the global batch
            assert re.search(rf"PARAMETER \| phase 1 \| world_size {n} ", log), log
            assert f"GLOBAL_BATCH_SIZE=8 TRAIN_BATCH_SIZE={8 // n} GRADIENT_ACCUMULATION_STEPS={2 // n} " in log
        got = torch.load(out / f"ckpt_{ELASTIC_STEPS}.pt", map_location="cpu", weights_only=True)["model"]
        assert got.keys() == want.keys()
        worst = 0.0
        for k in want:
            if ".attention.self.key.bias" in k:  # gradient exactly 0: float noise in any run
                assert got[k].abs().max() < 1e-6 and want[k].abs().max() < 1e-6
                continue
            rel = float((got[k] - want[k]).norm() / want[k].norm().clamp_min(1e-12))
            assert rel <= 1e-5, (first, then, k, rel)
            worst = max(worst, rel)
        print(f"requeue {first} -> {then} tasks at step {m.group(1)}: worst relative difference {worst:.2e}")
