"""Time to accuracy of pretraining: bertforge against Hugging Face Trainer, same text, same clock.

    make bench-quality     # data (once), then all runs, the table and the plot (~1.5 h on 2 cores)
    .venv/bin/python bench/bench_quality.py --data results/qualitydata [--write docs/benchmarks.md]

Both sides pretrain the same BERT (--config, default bert_configs/small.json) from scratch on
the same text (the phase-1 shards that `data/create_datasets_from_start.sh sample` makes from
the real Wikipedia sample, Google's uncased vocab) for the same wall-clock budget, and are
evaluated at the same wall-clock points with the same code on the same held-out sequences:

* bertforge: its own recipe through the real CLI, run_pretraining.py under torchrun
  (--bf_procs single-thread processes, LAMB, poly warm-up/decay, static masks from the shards);
* Hugging Face: transformers.Trainer with BertForPreTraining (MLM + NSP), masking by
  DataCollatorForLanguageModeling (15%, 80/10/10, new masks every epoch) on the shards' original
  tokens and NSP labels, AdamW with linear warm-up/decay, one process with every core; once per
  learning rate of --hf_lrs, the best final accuracy counts.

Each side's number of steps is set so that its schedule ends at the budget: a short calibration
run of each side measures its start-up and step time (or give --bf_steps / --hf_steps). A run
still going at the budget is stopped. The clock of a run starts when its process is launched
(imports, data loading and model creation count) and includes its snapshots. The state "at"
wall time t is the last one reached by then: for Hugging Face the weights after the last
optimizer step completed by t (a callback keeps them); for bertforge its last checkpoint written
by t (--bf_ckpt_every steps apart, so it is up to that many steps older: a handicap for bertforge).

Evaluation, after all runs: each snapshot's weights in transformers.BertForPreTraining, on the
first --eval_rows sequences of the held-out shards with their static masks: MLM accuracy and
loss over the masked tokens, NSP accuracy over the sequences. The result: the best Hugging Face
run's final MLM accuracy, the wall time at which it reached it and the wall time at which
bertforge first reached it (first evaluation point at or above it), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import provenance, provenance_line, publish, save_figure  # noqa: E402

from bertforge.data.hdf5 import read_hdf5_shard  # noqa: E402
from bertforge.data.loader import discover_shards  # noqa: E402

MARKER = "bench_quality"
SCRIPT = "bench/bench_quality.py"


# -- data ----------------------------------------------------------------------------------------
def read_shards(directory: Path, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """The six NVIDIA HDF5 arrays of every shard in ``directory`` (in order), concatenated."""
    parts: list[dict[str, np.ndarray]] = []
    n = 0
    for path in discover_shards(directory):
        a = read_hdf5_shard(path)
        parts.append(a)
        n += len(a["input_ids"])
        if max_rows is not None and n >= max_rows:
            break
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if max_rows is not None:
        out = {k: v[:max_rows] for k, v in out.items()}
    return out


def original_tokens(a: dict[str, np.ndarray]) -> np.ndarray:
    """input_ids with the static masks undone: each masked position gets its label back."""
    ids = a["input_ids"].astype(np.int64).copy()
    rows, slots = np.nonzero(a["masked_lm_positions"])  # position 0 ([CLS]) is the padding value
    ids[rows, a["masked_lm_positions"][rows, slots]] = a["masked_lm_ids"][rows, slots]
    return ids


class UnmaskedPairs(torch.utils.data.Dataset):
    """The training shards as Hugging Face examples: the sentence pair's tokens (unmasked, no
    padding), segment ids and the NSP label, for DataCollatorForLanguageModeling to mask."""

    def __init__(self, directory: Path):
        a = read_shards(directory)
        ids = original_tokens(a)
        lengths = a["input_mask"].astype(np.int64).sum(1)
        self.rows = [{"input_ids": ids[i, :n].tolist(), "token_type_ids": a["segment_ids"][i, :n].tolist(),
                      "next_sentence_label": int(a["next_sentence_labels"][i])}
                     for i, n in enumerate(lengths)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


# -- evaluation: one function for both sides --------------------------------------------------
def hf_model(config_file: Path):
    from transformers import BertConfig, BertForPreTraining

    return BertForPreTraining(BertConfig(**json.loads(config_file.read_text())))


def load_weights(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; only the decoder's tie to the word embeddings may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise SystemExit(f"error: {source}: weights do not fit the model (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    model.tie_weights()


def snapshot_state(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["model"] if isinstance(obj, dict) and "model" in obj else obj


@torch.no_grad()
def evaluate(model, ev: dict[str, np.ndarray], batch: int = 64) -> dict:
    """Held-out MLM accuracy/loss over the masked tokens and NSP accuracy over the sequences.
    The MLM head runs on the masked positions only (the same numbers as on every position)."""
    model.eval()
    correct = masked = nsp_correct = 0
    loss_sum = 0.0
    n = len(ev["input_ids"])
    for i in range(0, n, batch):
        ids = torch.from_numpy(ev["input_ids"][i:i + batch]).long()
        mask = torch.from_numpy(ev["input_mask"][i:i + batch]).long()
        seg = torch.from_numpy(ev["segment_ids"][i:i + batch]).long()
        pos = ev["masked_lm_positions"][i:i + batch]
        rows, slots = np.nonzero(pos)
        target = torch.from_numpy(ev["masked_lm_ids"][i:i + batch][rows, slots]).long()
        seq_out, pooled = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=seg)[:2]
        hidden = seq_out[torch.from_numpy(rows), torch.from_numpy(pos[rows, slots]).long()]  # [M, H]
        scores = model.cls.predictions(hidden).float()  # [M, V]
        correct += int((scores.argmax(-1) == target).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(scores, target, reduction="sum"))
        masked += len(target)
        nsp = model.cls.seq_relationship(pooled)
        labels = torch.from_numpy(ev["next_sentence_labels"][i:i + batch]).long()
        nsp_correct += int((nsp.argmax(-1) == labels).sum())
    return {"mlm_accuracy": correct / max(masked, 1), "mlm_loss": loss_sum / max(masked, 1),
            "nsp_accuracy": nsp_correct / max(n, 1), "masked_tokens": masked, "sequences": n}


# -- snapshots at wall-clock points ------------------------------------------------------------
def eval_points(budget: float, n: int) -> list[float]:
    return [budget * k / n for k in range(1, n + 1)]


def assign(times: list[float], points: list[float]) -> list[int | None]:
    """For each point, the index of the last of the (sorted) ``times`` at or before it."""
    out, j = [], -1
    for t in points:
        while j + 1 < len(times) and times[j + 1] <= t:
            j += 1
        out.append(j if j >= 0 else None)
    return out


# -- the Hugging Face side (a child process: its own clock, threads and memory) -----------------
def hf_child(args) -> None:
    import transformers
    from transformers import (
        BertTokenizerFast,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    launch = args.launch_time
    torch.set_num_threads(args.hf_threads or os.cpu_count() or 1)
    transformers.set_seed(args.seed)
    out = Path(args.hf_child)
    out.mkdir(parents=True, exist_ok=True)
    points = [] if args.calibrate else eval_points(args.budget, args.eval_points)
    model = hf_model(Path(args.config))
    tokenizer = BertTokenizerFast(vocab_file=str(args.vocab_file), do_lower_case=True)
    dataset = UnmaskedPairs(Path(args.data) / "phase1_hdf5")
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=0.15)
    log = {"lr": args.hf_lr, "max_steps": args.hf_steps, "batch": args.hf_batch, "step_end": [],
           "snapshots": [], "threads": torch.get_num_threads(), "dataset_rows": len(dataset)}

    class Snapshots(TrainerCallback):
        """Keeps the weights after the latest step; when a wall-clock point passes, saves the
        weights of the last step completed by then."""

        def __init__(self):
            self.prev = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.prev_step, self.prev_t = 0, 0.0
            self.k = 0

        def _flush(self, now: float) -> None:
            while self.k < len(points) and points[self.k] < now:
                f = out / f"t{self.k + 1:03d}.pt"
                torch.save(self.prev, f)
                log["snapshots"].append({"point": points[self.k], "file": str(f), "step": self.prev_step,
                                         "reached": self.prev_t})
                self.k += 1

        def on_step_end(self, targs, state, control, **kw):
            now = time.time() - launch
            log["step_end"].append(now)
            self._flush(now)
            if points:
                for k, v in model.state_dict().items():
                    self.prev[k].copy_(v)
            self.prev_step, self.prev_t = state.global_step, now
            if not args.calibrate and now >= args.budget:
                control.should_training_stop = True

        def on_train_end(self, targs, state, control, **kw):
            self._flush(math.inf)  # stopped or finished early: later points keep the last state

    targs = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=args.hf_batch, learning_rate=args.hf_lr,
        weight_decay=0.01, warmup_steps=round(args.hf_warmup * args.hf_steps), max_steps=args.hf_steps,
        lr_scheduler_type="linear", optim="adamw_torch", max_grad_norm=1.0, seed=args.seed,
        dataloader_num_workers=0, logging_strategy="no", save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                      callbacks=[Snapshots()])
    trainer.train()
    log["end"] = time.time() - launch
    (out / "run.json").write_text(json.dumps(log, indent=1))


def launch_hf(args, out: Path, lr: float, steps: int, calibrate: bool, log_file: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf_child", str(out), "--hf_lr", repr(lr),
           "--hf_steps", str(steps), "--data", str(args.data), "--config", str(args.config),
           "--vocab_file", str(args.vocab_file), "--budget", str(args.budget), "--eval_points", str(args.eval_points),
           "--hf_batch", str(args.hf_batch), "--hf_warmup", str(args.hf_warmup), "--seed", str(args.seed),
           "--hf_threads", str(args.hf_threads)]
    if calibrate:
        cmd.append("--calibrate")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    launch = time.time()
    with open(log_file, "w") as log:
        proc = subprocess.Popen([*cmd, "--launch_time", repr(launch)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=REPO)
        # the child stops itself at the budget; this is the backstop
        _wait(proc, None if calibrate else args.budget + 600, log_file)
    return json.loads((out / "run.json").read_text())


# -- the bertforge side: the real CLI --------------------------------------------------------------
def bertforge_cmd(args, out: Path, steps: int, ckpt_every: int, calibrate: bool) -> list[str]:
    launch = [sys.executable]
    if args.bf_procs > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.bf_procs}"]
    flags = [f"--input_dir={Path(args.data) / 'phase1_hdf5'}", f"--config_file={args.config}",
             f"--output_dir={out / 'checkpoints'}", f"--vocab_file={args.vocab_file}",
             f"--train_batch_size={args.bf_batch}", "--max_seq_length=128", "--max_predictions_per_seq=20",
             f"--learning_rate={args.bf_lr}", f"--warmup_proportion={args.bf_warmup}", f"--max_steps={steps}",
             "--optimizer=lamb", f"--seed={args.seed}", f"--num_workers={args.bf_workers}", "--do_train",
             "--disable_progress_bar", f"--json-summary={out / 'dllogger.json'}",
             f"--log_freq={1 if calibrate else 10}"]
    flags += ["--skip_checkpoint"] if calibrate else [f"--num_steps_per_checkpoint={ckpt_every}",
                                                      "--keep_checkpoints=3"]
    return [*launch, str(REPO / "run_pretraining.py"), *flags]


def bertforge_env(args) -> dict:
    threads = args.bf_threads or max(1, (os.cpu_count() or 1) // args.bf_procs)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _wait(proc: subprocess.Popen, deadline_s: float | None, log_file: Path, launch: float | None = None,
          poll=None) -> None:
    """Wait for ``proc`` (calling ``poll`` every 0.2 s); stop its process group at the deadline."""
    launch = time.time() if launch is None else launch
    while proc.poll() is None:
        if poll:
            poll()
        if deadline_s is not None and time.time() - launch > deadline_s:
            _stop(proc)
            break
        time.sleep(0.2)
    if poll:
        poll()
    if proc.returncode != 0 and not getattr(proc, "stopped", False):
        tail = log_file.read_text()[-3000:] if log_file.exists() else ""
        raise SystemExit(f"error: {proc.args[1] if len(proc.args) > 1 else proc.args[0]} failed "
                         f"(exit {proc.returncode}); log {log_file}:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    proc.stopped = True
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_bertforge(args, out: Path, steps: int, ckpt_every: int, points: list[float]) -> dict:
    """One timed run; its checkpoints are hard-linked into snapshots/ as they appear (the trainer
    keeps only its last 3), with the time they were written; those no point needs are dropped."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "checkpoints").mkdir(parents=True)
    snaps = out / "snapshots"
    snaps.mkdir()
    seen: list[tuple[float, int, Path]] = []  # (written at, step, link)

    def needed(i: int) -> bool:  # checkpoint i is the last one written by some point
        lo = seen[i][0]
        hi = seen[i + 1][0] if i + 1 < len(seen) else math.inf
        return any(lo <= t < hi for t in points)

    def poll() -> None:
        for f in (out / "checkpoints").glob("ckpt_*.pt"):
            link = snaps / f.name
            if link.exists():
                continue
            try:
                os.link(f, link)
                written = link.stat().st_mtime - launch
            except FileNotFoundError:  # removed by keep_checkpoints before we saw it
                continue
            seen.append((written, int(f.stem.split("_")[1]), link))
            seen.sort()
            for i in range(len(seen) - 1):  # settled: a later checkpoint exists
                if seen[i][2].exists() and not needed(i):
                    seen[i][2].unlink()

    log_file = out / "run.log"
    cmd = bertforge_cmd(args, out, steps, ckpt_every, calibrate=False)
    launch = time.time()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=bertforge_env(args),
                                start_new_session=True, cwd=REPO)
        _wait(proc, args.budget, log_file, launch=launch, poll=poll)
    end = time.time() - launch
    times = [w for w, _, _ in seen]
    snapshots = []
    for t, i in zip(points, assign(times, points), strict=True):
        if i is None:
            snapshots.append({"point": t, "file": None, "step": 0, "reached": None})
        else:
            snapshots.append({"point": t, "file": str(seen[i][2]), "step": seen[i][1], "reached": seen[i][0]})
    return {"command": " ".join(cmd), "max_steps": steps, "ckpt_every": ckpt_every, "end": end,
            "stopped_at_budget": bool(getattr(proc, "stopped", False)), "checkpoints_written": len(seen),
            "last_step": seen[-1][1] if seen else 0, "snapshots": snapshots}


# -- calibration -----------------------------------------------------------------------------------
def step_timing(ends: list[float], skip: int = 3) -> tuple[float, float]:
    """(start-up, seconds per step) from the wall times at which steps 1..n ended."""
    if len(ends) < skip + 3:
        raise SystemExit(f"error: calibration gave {len(ends)} steps; use more --calib_steps")
    tail = ends[skip:]
    per_step = (tail[-1] - tail[0]) / (len(tail) - 1)
    return max(0.0, ends[skip] - (skip + 1) * per_step), per_step


def steps_for_budget(startup: float, per_step: float, budget: float, margin: float) -> int:
    return max(1, int(margin * (budget - startup) / per_step))


def calibrate_bertforge(args, work: Path) -> tuple[int, dict]:
    from bertforge.runlog import read_dllogger

    out = work / "calibrate_bertforge"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = bertforge_cmd(args, out, args.calib_steps, 0, calibrate=True)
    launch = time.time()
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=bertforge_env(args),
                                start_new_session=True, cwd=REPO)
        _wait(proc, None, out / "run.log")
    ends = {}
    for r in read_dllogger(out / "dllogger.json"):
        if r.get("type") == "LOG" and isinstance(r.get("step"), list) and len(r["step"]) == 2 \
                and "average_loss" in r.get("data", {}):
            ends[r["step"][1]] = float(r["timestamp"]) - launch
    startup, per_step = step_timing([ends[k] for k in sorted(ends)])
    steps = steps_for_budget(startup, per_step, args.budget, args.margin)
    return steps, {"startup_s": startup, "step_s": per_step, "steps": steps}


def calibrate_hf(args, work: Path) -> tuple[int, dict]:
    out = work / "calibrate_hf"
    run = launch_hf(args, out, args.hf_lrs[0], args.calib_steps, True, work / "calibrate_hf.log")
    startup, per_step = step_timing(run["step_end"])
    steps = steps_for_budget(startup, per_step, args.budget, args.margin)
    return steps, {"startup_s": startup, "step_s": per_step, "steps": steps}


# -- results ----------------------------------------------------------------------------------------
def first_reach(curve: list[float | None], points: list[float], target: float) -> float | None:
    for t, a in zip(points, curve, strict=True):
        if a is not None and a >= target - 1e-12:
            return t
    return None


def summarize(runs: list[dict], points: list[float]) -> dict:
    bf = next(r for r in runs if r["side"] == "bertforge")
    hf_runs = [r for r in runs if r["side"] == "hf"]
    acc = lambda r: [e["mlm_accuracy"] if e else None for e in r["evals"]]  # noqa: E731
    best = max(hf_runs, key=lambda r: acc(r)[-1] if acc(r)[-1] is not None else -1)
    target = acc(best)[-1]
    t_hf = first_reach(acc(best), points, target)
    t_bf = first_reach(acc(bf), points, target)
    return {"best_hf_lr": best["lr"], "target_accuracy": target, "hf_time_to_target": t_hf,
            "bertforge_time_to_target": t_bf,
            "ratio": (t_bf / t_hf) if (t_bf is not None and t_hf) else None,
            "bertforge_final_accuracy": acc(bf)[-1]}


def _s(t: float) -> str:
    """Seconds for the tables: one decimal at most."""
    return f"{t:.1f}".rstrip("0").rstrip(".")


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def markdown(res: dict, png_rel: str | None) -> str:
    a = res["args"]
    points, runs, s = res["points"], res["runs"], res["summary"]
    name = lambda r: "bertforge" if r["side"] == "bertforge" else f"HF Trainer, lr {r['lr']:g}"  # noqa: E731
    lines = ["## Time to accuracy: pretraining against Hugging Face Trainer", "",
             f"Written by `{SCRIPT}` (`make bench-quality`); the script's docstring says what is measured.", "",
             provenance_line(res["provenance"]), "",
             f"Model `{a['config']}` ({res['parameters'] / 1e6:.1f} M parameters), vocab `{Path(a['vocab_file']).name}`; "
             f"training text: the phase-1 shards of `{a['data']}` ({res['train_sequences']:,} sequences of <= 128 "
             f"tokens); held-out: {res['eval']['sequences']:,} sequences of the held-out articles with "
             f"{res['eval']['masked_tokens']:,} masked tokens (static masks), every snapshot evaluated by the same "
             f"code (transformers' BertForPreTraining with the snapshot's weights). Budget {_s(a['budget'])} s of wall "
             f"time per run, evaluated every {_s(points[0])} s.", "",
             "| run | recipe | steps done | sequences per wall s (start-up included) | final MLM accuracy | MLM loss | NSP accuracy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        fin = r["evals"][-1] or {}
        lines.append(f"| {name(r)} | {r['recipe']} | {r['steps_done']:,} | {r['sequences_per_s']:.1f} | "
                     f"{_pct(fin.get('mlm_accuracy'))} | {fin.get('mlm_loss', float('nan')):.3f} | "
                     f"{_pct(fin.get('nsp_accuracy'), 1)} |")
    t_bf, t_hf = s["bertforge_time_to_target"], s["hf_time_to_target"]
    verdict = ("not reached within the budget" if t_bf is None else
               f"at **{_s(t_bf)} s**, {s['ratio']:.3f} of the {_s(t_hf)} s the best Hugging Face run took "
               f"(goal <= 0.25: {'met' if s['ratio'] <= 0.25 else 'not met'})")
    lines += ["", f"Target: the best Hugging Face run's (lr {s['best_hf_lr']:g}) final held-out MLM accuracy, "
              f"{_pct(s['target_accuracy'])}, which it first showed at {_s(t_hf)} s. bertforge first showed it "
              f"{verdict}. Resolution: one evaluation point, {_s(points[0])} s.", "",
              "Held-out MLM accuracy at the same wall-clock points:", "",
              "| wall s | " + " | ".join(name(r) for r in runs) + " |",
              "| ---: | " + " | ".join("---:" for _ in runs) + " |"]
    for k, t in enumerate(points):
        cells = [_pct(r["evals"][k]["mlm_accuracy"]) if r["evals"][k] else "no checkpoint yet" for r in runs]
        lines.append(f"| {_s(t)} | " + " | ".join(cells) + " |")
    if png_rel:
        lines += ["", f"![held-out MLM accuracy against wall time]({png_rel})"]
    return "\n".join(lines) + "\n"


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, s = res["points"], res["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in res["runs"]:
        xs = [t for t, e in zip(points, r["evals"], strict=True) if e]
        acc = [100 * e["mlm_accuracy"] for e in r["evals"] if e]
        loss = [e["mlm_loss"] for e in r["evals"] if e]
        style = dict(lw=2.5, color="C3", label="bertforge (LAMB)") if r["side"] == "bertforge" else \
            dict(lw=1.2, label=f"HF Trainer (AdamW, lr {r['lr']:g})")
        ax1.plot(xs, acc, marker=".", **style)
        ax2.plot(xs, loss, marker=".", **style)
    if s["target_accuracy"] is not None:
        ax1.axhline(100 * s["target_accuracy"], color="gray", ls="--", lw=0.8)
        if s["bertforge_time_to_target"] is not None:
            ax1.axvline(s["bertforge_time_to_target"], color="C3", ls=":", lw=0.8)
    ax1.set(xlabel="wall time (s)", ylabel="held-out MLM accuracy (%)")
    ax2.set(xlabel="wall time (s)", ylabel="held-out MLM loss")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    save_figure(fig, png, f"Pretraining {Path(res['args']['config']).name} on the Wikipedia sample, same wall clock",
                res["provenance"])


# -- main ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="output folder of data/create_datasets_from_start.sh sample "
                                  "(phase1_hdf5/, phase1_holdout_hdf5/), made with --vocab_file's vocab")
    p.add_argument("--vocab_file", help="the vocab of the shards (default: Google's uncased vocab in "
                                        "$BERTFORGE_REAL_DATA/vocab)")
    p.add_argument("--config", default=str(REPO / "bert_configs/small.json"), help="bert_config.json of both sides")
    p.add_argument("--budget", type=float, default=1200.0, help="wall-clock seconds per run [1200]")
    p.add_argument("--eval_points", type=int, default=24, help="evaluations per run, evenly spaced [24]")
    p.add_argument("--eval_rows", type=int, default=2048, help="held-out sequences evaluated [2048]")
    p.add_argument("--seed", type=int, default=12439)
    p.add_argument("--margin", type=float, default=0.95,
                   help="each side's schedule is set to end at this fraction of the budget left after start-up")
    p.add_argument("--calib_steps", type=int, default=12, help="steps of each calibration run [12]")
    g = p.add_argument_group("bertforge (run_pretraining.py)")
    g.add_argument("--bf_procs", type=int, default=2, help="processes (torchrun, gloo) [2]")
    g.add_argument("--bf_threads", type=int, default=0, help="threads per process [cores / processes]")
    g.add_argument("--bf_batch", type=int, default=32, help="sequences per process per step [32]")
    g.add_argument("--bf_lr", type=float, default=5e-3, help="LAMB learning rate [5e-3]")
    g.add_argument("--bf_warmup", type=float, default=0.1, help="warm-up proportion [0.1]")
    g.add_argument("--bf_workers", type=int, default=1, help="data loader workers per process [1]")
    g.add_argument("--bf_steps", type=int, default=0, help="steps (0: calibrate to end at the budget)")
    g.add_argument("--bf_ckpt_every", type=int, default=0,
                   help="steps between checkpoints (0: ~4 per evaluation interval)")
    g = p.add_argument_group("Hugging Face (transformers.Trainer)")
    g.add_argument("--hf_lrs", default="2e-5,5e-4,1e-3",
                   help="AdamW learning rates, one run each: the blogs' 2e-5 and larger [2e-5,5e-4,1e-3]")
    g.add_argument("--hf_batch", type=int, default=32, help="sequences per step [32]")
    g.add_argument("--hf_warmup", type=float, default=0.1, help="warm-up proportion [0.1]")
    g.add_argument("--hf_threads", type=int, default=0, help="torch threads [all cores]")
    g.add_argument("--hf_steps", type=int, default=0, help="steps (0: calibrate to end at the budget)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(REPO / "results/bench_quality"), help="work folder (snapshots, logs)")
    g.add_argument("--json", help="also write the raw results here")
    g.add_argument("--png", help="the plot (default: img/bench_quality.png beside --write, else in --out)")
    g.add_argument("--write", help="rewrite this markdown file's bench_quality section (docs/benchmarks.md)")
    g.add_argument("--keep_snapshots", action="store_true", help="keep the weight snapshots in --out")
    p.add_argument("--hf_child", help=argparse.SUPPRESS)
    p.add_argument("--hf_lr", type=float, help=argparse.SUPPRESS)
    p.add_argument("--launch_time", type=float, help=argparse.SUPPRESS)
    p.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    return p


def check_args(args) -> None:
    def fail(msg: str):
        raise SystemExit(f"error: {msg}")

    if not args.data:
        fail("--data is required (the output folder of data/create_datasets_from_start.sh sample)")
    for sub in ("phase1_hdf5", "phase1_holdout_hdf5"):
        if not (Path(args.data) / sub).is_dir():
            fail(f"--data {args.data}: no {sub}/ (make it with data/create_datasets_from_start.sh sample)")
    if args.vocab_file is None:
        root = os.environ.get("BERTFORGE_REAL_DATA")
        if not root:
            fail("--vocab_file not given and BERTFORGE_REAL_DATA is not set")
        args.vocab_file = str(Path(root) / "vocab/bert-base-uncased-vocab.txt")
    for flag, path in (("--vocab_file", args.vocab_file), ("--config", args.config)):
        if not Path(path).is_file():
            fail(f"{flag} {path}: no such file")
    if args.budget <= 0 or args.eval_points < 1 or args.eval_rows < 1:
        fail("--budget, --eval_points and --eval_rows must be positive")
    if args.bf_procs < 1 or not 0 < args.margin <= 1:
        fail("--bf_procs must be >= 1 and --margin in (0, 1]")
    try:
        args.hf_lrs = [float(x) for x in args.hf_lrs.split(",") if x.strip()]
    except ValueError:
        fail(f"--hf_lrs must be comma-separated numbers, got {args.hf_lrs!r}")
    if not args.hf_lrs:
        fail("--hf_lrs is empty")


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.hf_child:
        hf_child(args)
        return None
    check_args(args)
    info = provenance(SCRIPT, argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    points = eval_points(args.budget, args.eval_points)
    ev = read_shards(Path(args.data) / "phase1_holdout_hdf5", args.eval_rows)

    calibration = {}
    bf_steps, hf_steps = args.bf_steps, args.hf_steps
    if not bf_steps:
        bf_steps, calibration["bertforge"] = calibrate_bertforge(args, work)
        print(f"bertforge calibration: {calibration['bertforge']}", flush=True)
    if not hf_steps:
        hf_steps, calibration["hf"] = calibrate_hf(args, work)
        print(f"HF calibration: {calibration['hf']}", flush=True)
    ckpt_every = args.bf_ckpt_every or max(1, round(bf_steps / (4 * args.eval_points)))

    runs = []
    print(f"bertforge: {bf_steps} steps, a checkpoint every {ckpt_every}, budget {args.budget:g} s", flush=True)
    bf = run_bertforge(args, work / "bertforge", bf_steps, ckpt_every, points)
    global_batch = args.bf_batch * args.bf_procs
    last = max((s for s in bf["snapshots"] if s["reached"] is not None), key=lambda s: s["step"], default=None)
    bf.update(side="bertforge", lr=args.bf_lr, steps_done=bf["last_step"],
              sequences_per_s=(last["step"] * global_batch / last["reached"]) if last else 0.0,
              recipe=f"LAMB lr {args.bf_lr:g}, warm-up {args.bf_warmup:g}, {args.bf_procs} processes x "
                     f"{args.bf_batch} sequences, static masks, {bf_steps} steps scheduled")
    runs.append(bf)
    for lr in args.hf_lrs:
        print(f"HF Trainer lr {lr:g}: {hf_steps} steps, budget {args.budget:g} s", flush=True)
        d = work / f"hf_lr{lr:g}"
        run = launch_hf(args, d, lr, hf_steps, False, work / f"hf_lr{lr:g}.log")
        steps_done = len(run["step_end"])
        run.update(side="hf", steps_done=steps_done,
                   sequences_per_s=(steps_done * args.hf_batch / run["step_end"][-1]) if steps_done else 0.0,
                   recipe=f"AdamW lr {lr:g}, warm-up {args.hf_warmup:g}, linear decay, 1 process x "
                          f"{args.hf_batch} sequences, dynamic masks, {hf_steps} steps scheduled")
        runs.append(run)

    print("evaluating the snapshots", flush=True)
    model = hf_model(Path(args.config))
    for r in runs:
        r["evals"] = []
        for snap in r["snapshots"]:
            if snap["file"] is None:
                r["evals"].append(None)
                continue
            load_weights(model, snapshot_state(Path(snap["file"])), snap["file"])
            r["evals"].append(evaluate(model, ev))
    info["load_end"] = round(os.getloadavg()[0], 2)
    res = {"provenance": info, "args": {k: v for k, v in vars(args).items() if not k.startswith(("hf_child", "launch"))},
           "points": points, "calibration": calibration, "runs": runs,
           "parameters": sum(p.numel() for p in model.parameters()),
           "train_sequences": sum(json.loads((Path(args.data) / "phase1_hdf5/.num_samples.json").read_text()).values()),
           "eval": {"sequences": len(ev["input_ids"]), "masked_tokens": int((ev["masked_lm_positions"] > 0).sum())}}
    res["summary"] = summarize(runs, points)
    png = Path(args.png) if args.png else (Path(args.write).parent / "img/bench_quality.png" if args.write
                                           else work / "bench_quality.png")
    plot(res, png)
    png_rel = os.path.relpath(png, Path(args.write).parent) if args.write else str(png)
    text = markdown(res, png_rel)
    (work / "results.json").write_text(json.dumps(res, indent=1))
    publish(text, res, MARKER, json_path=args.json, write=args.write)
    if not args.keep_snapshots:
        for r in runs:
            for snap in r["snapshots"]:
                if snap["file"]:
                    Path(snap["file"]).unlink(missing_ok=True)
    return res


if __name__ == "__main__":
    main()
