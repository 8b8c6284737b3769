"""Shared helpers of the fault-injection suite and the bad-input table.

A *world* is a tiny but real setup made with the project's own tools: a few documents of
text, a WordPiece vocab trained on them, NVIDIA-HDF5 and LDDL-Parquet shards made by
``create_pretraining_data.py`` and a model config from ``bert_configs/tiny.json`` (2 layers,
hidden 128, dropout on) with the vocab's size. ``run`` starts the real CLIs in
subprocesses, through ``inject.py`` when a fault is asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bertforge.runlog import read_dllogger

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
INJECT = "tests/faults/inject.py"
FORKRUN = REPO / "tests/faults/forkrun.py"


@dataclass(frozen=True)
class World:
    root: Path
    text: Path      # folder of Google-format text files
    vocab: Path     # vocab.txt trained on the text
    hdf5: Path      # HDF5 shards (static masking), seq 64, 10 predictions
    parquet: Path   # Parquet shards (static masking)
    config: Path    # tiny.json with vocab_size = len(vocab)
    n_vocab: int


def make_world(root: Path) -> World:
    """Text, vocab, HDF5 + Parquet shards (through the create CLI's ``main``) and a config."""
    from bertforge.cli.create_pretraining_data import main as create_main
    from tests.unit.data_fixtures import make_text_dir, make_vocab

    root.mkdir(parents=True, exist_ok=True)
    text = make_text_dir(root, n_files=2, n_docs=10)
    vocab = make_vocab(root, text)
    common = ["--input_file", str(text), "--vocab_file", str(vocab), "--max_seq_length", "64",
              "--max_predictions_per_seq", "10", "--dupe_factor", "2", "--progress", "false"]
    assert create_main([*common, "--output_file", str(root / "hdf5")]) == 0
    assert create_main([*common, "--output_file", str(root / "parquet"),
                        "--output_format", "parquet"]) == 0
    n_vocab = len(vocab.read_text(encoding="utf-8").splitlines())
    cfg = json.loads((REPO / "bert_configs/tiny.json").read_text())
    cfg["vocab_size"] = n_vocab
    config = root / "tiny.json"
    config.write_text(json.dumps(cfg, indent=2))
    return World(root, text, vocab, root / "hdf5", root / "parquet", config, n_vocab)


def pretrain_args(world: World, out: Path, *extra: str, steps: int = 8) -> list[str]:
    """The pretraining run every fault test shares: 8 steps of 2 micro-batches of 4
    sequences, dropout on, a checkpoint every 4 steps. Same flags => same result."""
    return [f"--input_dir={world.hdf5}", f"--config_file={world.config}", f"--output_dir={out}",
            "--train_batch_size=8", "--gradient_accumulation_steps=2", f"--max_steps={steps}",
            "--max_seq_length=64", "--max_predictions_per_seq=10", "--num_workers=0",
            "--learning_rate=1e-3", "--warmup_proportion=0.25", "--seed=3",
            "--num_steps_per_checkpoint=4", "--keep_checkpoints=3", "--do_train",
            "--disable_progress_bar", *extra]


def cli_env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", **extra}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                "SLURM_NTASKS", "SLURM_PROCID", "BERTFORGE_FAULT"):
        if var not in extra:
            env.pop(var, None)
    return env


def command(script: str, args: list[str], fault: dict | None = None) -> list[str]:
    """``python SCRIPT ARGS`` (``python -m MOD`` for a dotted name), via inject.py with a fault."""
    if fault is not None:
        return [PYTHON, INJECT, script, *args]
    if script.endswith(".py"):
        return [PYTHON, script, *args]
    return [PYTHON, "-m", script, *args]


def run(script: str, args: list[str], *, fault: dict | None = None, timeout: float = 300,
        env: dict | None = None) -> subprocess.CompletedProcess:
    e = cli_env(**(env or {}))
    if fault is not None:
        e["BERTFORGE_FAULT"] = json.dumps(fault)
    return subprocess.run(command(script, args, fault), cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=timeout)


def check(p: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert p.returncode == code, (f"exit {p.returncode}, expected {code}\nSTDOUT:\n{p.stdout[-2500:]}"
                                  f"\nSTDERR:\n{p.stderr[-2500:]}")
    return p


def error_line(stderr: str, stdout: str = "") -> str:
    """The one error line of a failed CLI; asserts there is no traceback and only one error."""
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("usage:")]
    assert len(errors) == 1, f"expected one error line, got:\n{stderr[-3000:]}"
    return errors[0]


def assert_user_error(p: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\n{p.stderr[-3000:]}"
    line = error_line(p.stderr, p.stdout)
    assert line.startswith("error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def weights(path: Path) -> dict:
    from bertforge.checkpoint import load_checkpoint

    return load_checkpoint(path)["model"]


def numerics_changes(a: Path, b: Path) -> str:
    """What differed between the processes that wrote checkpoints ``a`` and ``b`` (their
    ``numerics`` records, rank by rank), for the message of a failed bit-exact comparison:
    a resume that ran other kernels (another CPU after a VM migration, a thread count, a
    library variable) cannot be bit-exact, and the failure should say so."""
    from bertforge.checkpoint import load_checkpoint
    from bertforge.train.numerics import differences

    ra, rb = (load_checkpoint(p).get("numerics") for p in (a, b))
    if not (isinstance(ra, list) and isinstance(rb, list)):
        return "no numerics record to compare"
    pairs = enumerate(zip(ra, rb, strict=False))  # other world sizes: the common ranks
    changed = [f"rank {r}: {'; '.join(d)}" for r, (x, y) in pairs if (d := differences(x, y))]
    return ("written with other numerics: " + " | ".join(changed)) if changed else \
        "written with the same recorded numerics (torch, CPU, threads, GEMM backend, variables)"


def step_losses(run_dir: Path) -> dict[int, float]:
    """Each step's logged loss in ``run_dir``'s dllogger.json (a resumed run appends to it:
    the last line of a step counts)."""
    log = run_dir / "dllogger.json"
    return {int(rec["step"][1]): rec["data"]["step_loss"] for rec in (read_dllogger(log) if log.exists() else [])
            if isinstance(rec.get("step"), list) and len(rec["step"]) == 2 and "step_loss" in rec.get("data", {})}


def first_divergence(a: Path, b: Path) -> str:
    """Where two runs' logged losses part (their folders), for a failed comparison's message."""
    la, lb = step_losses(a), step_losses(b)
    for s in sorted(set(la) & set(lb)):
        if la[s] != lb[s]:
            return f"the logged losses first differ at step {s} ({la[s]!r} vs {lb[s]!r})"
    return f"the logged losses of steps {sorted(set(la) & set(lb))} are equal"


def assert_same_weights(a: Path, b: Path) -> None:
    """Bit-exact equality of two checkpoints' model weights."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, (f"{len(diff)} of {len(wa)} tensors differ, e.g. {diff[:3]}; "
                      f"{numerics_changes(a, b)}; {first_divergence(a.parent, b.parent)}")


def _differing(x, y, where: str = "") -> list[str]:
    """Paths at which two checkpoint values differ (tensors bit for bit)."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        same = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype \
            and x.shape == y.shape and torch.equal(x, y)
        return [] if same else [where]
    if isinstance(x, dict) and isinstance(y, dict):
        if x.keys() != y.keys():
            return [f"{where} keys"]
        return [d for k in x for d in _differing(x[k], y[k], f"{where}/{k}")]
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return [f"{where} length"]
        return [d for i, (u, v) in enumerate(zip(x, y, strict=True)) for d in _differing(u, v, f"{where}/{i}")]
    return [] if x == y else [where]


# What two equal runs' checkpoints need not share: the processes' numerics records (compared
# by numerics_changes) and the run config, which names the output folder.
RUN_RECORD_KEYS = ("numerics", "run_config")


def assert_same_state(a: Path, b: Path) -> None:
    """Everything an exact resume restores (weights, optimizer moments, schedule, RNG streams,
    data position, counters) equal bit for bit in checkpoints ``a`` and ``b``."""
    from bertforge.checkpoint import load_checkpoint

    ca, cb = load_checkpoint(a), load_checkpoint(b)
    keep = lambda c: {k: v for k, v in c.items() if k not in RUN_RECORD_KEYS}  # noqa: E731
    diff = _differing(keep(ca), keep(cb))
    assert not diff, (f"{len(diff)} entries differ, e.g. {diff[:4]}; {numerics_changes(a, b)}; "
                      f"{first_divergence(a.parent, b.parent)}")


def make_read_only(d: Path):
    """Make folder ``d`` unwritable, for root too (chmod 555, and ``chattr +i`` when root:
    root ignores permission bits). Returns the function that undoes it (call it before the
    folder is deleted)."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o555)
    immutable = False
    if os.geteuid() == 0:
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    assert not os.access(d, os.W_OK), f"cannot make {d} read-only here"

    def undo() -> None:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
        os.chmod(d, 0o755)

    return undo


def final_files(d: Path) -> list[str]:
    """Names in ``d`` that are not hidden temp files."""
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def temp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


def assert_checkpoints_complete(d: Path) -> list[int]:
    """Every ``ckpt_<N>.pt`` in ``d`` loads (no partial file under a final name); their N."""
    from bertforge.checkpoint import list_checkpoints, load_checkpoint

    steps = []
    for n, p in list_checkpoints(d):
        ck = load_checkpoint(p)
        assert ck["global_step"] == n and all(torch.isfinite(v).all() for v in ck["model"].values())
        steps.append(n)
    return steps


def forkrun(cases: list[dict], preload: list[str], timeout: float = 600) -> dict:
    """Run CLI cases through forkrun.py (one interpreter, one fork per case)."""
    spec = json.dumps({"preload": preload, "cases": cases})
    p = subprocess.run([PYTHON, str(FORKRUN)], input=spec, cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


class ForkServer:
    """A forkrun.py server: ``run`` executes a CLI in a fresh forked process (torch already
    imported) and returns a CompletedProcess. One per test session."""

    def __init__(self, preload: list[str]) -> None:
        self.proc = subprocess.Popen([PYTHON, str(FORKRUN), "--serve", *preload], cwd=REPO,
                                     env=cli_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.n = 0

    def run(self, script: str, args: list[str], *, fault: dict | None = None,
            env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        self.n += 1
        case = {"id": str(self.n), "argv": [str(a) for a in args], "timeout": timeout,
                "env": env or {}, "fault": fault,
                ("script" if script.endswith(".py") else "module"): script}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        r = json.loads(line)
        assert r["code"] != "timeout", f"{script} timed out after {timeout}s:\n{r['stderr'][-2000:]}"
        return subprocess.CompletedProcess([script, *args], r["code"], r["stdout"], r["stderr"])

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_on_small_disk(unshare: str | None, size: int, args_for, tmp_path: Path, cli, script: str,
                      before: dict[str, Path] | None = None,
                      **kw) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``script`` with its output on a ``size``-byte disk; returns (process, a copy of the
    output folder as the run left it). ``before`` (name -> folder) is copied onto the disk
    first (an earlier dataset the run replaces).

    With a tmpfs (mounted in a private mount namespace, so nothing leaks out) the kernel
    itself reports ENOSPC; without one the injector fakes it at the same quota (less what
    ``before`` holds).
    """
    after = tmp_path / "after"
    if unshare is None:
        used = 0
        for name, src in (before or {}).items():
            shutil.copytree(src, after / name)
            used += sum(p.stat().st_size for p in (after / name).rglob("*") if p.is_file())
        return cli.run(script, args_for(after), fault={"enospc": {"quota": size - used}}, **kw), after
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    after.mkdir()
    args = " ".join(f"'{a}'" for a in args_for(mnt))
    copies = "".join(f"cp -a '{src}' '{mnt}/{name}' || exit 98\n" for name, src in (before or {}).items())
    sh = (f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 99\n{copies}"
          f"{PYTHON} {script} {args}\nrc=$?\ncp -a {mnt}/. {after}/\nexit $rc\n")
    p = subprocess.run(["unshare", *unshare.split(), "sh", "-c", sh], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode not in (98, 99), p.stderr
    return p, after
