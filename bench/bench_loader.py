"""Pretraining data loader vs the training step it feeds, in one run.

    .venv/bin/python bench/bench_loader.py --data results/data [--write docs/benchmarks.md]

The loader is measured in the global sample order as a training rank uses it, on the real
shards of data/create_datasets_from_start.sh: one process reading the whole global batch,
and rank 0 of 8 (it opens only its lanes' shards), with the masks from the HDF5 shards and
with dynamic masking (one RNG per sequence), and the phase-2 Parquet shards when present.
The training step is bertforge's BERT-base step (TrainStep + LAMB, fp32, CPU) on real
phase-1 batches of ``--step_batch`` sequences, median of ``--step_repeats``. The loader is timed
from its start, shard reads included, single-threaded (``num_workers`` 0). The headroom is
the loader's sequences/s over the step's sequences/s (the loader must stay >= 100x ahead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import provenance, provenance_line, publish  # noqa: E402

from bertforge.data.loader import PretrainingDataLoader, discover_shards  # noqa: E402

MARKER = "bench_loader"


def _find(data: Path, sub: str) -> Path | None:
    cands = [p for p in sorted(data.rglob("*")) if p.is_dir() and sub in p.name and "holdout" not in p.name]
    return cands[0] if cands else None


def loader_case(folder: Path, vocab: Path | None, *, batch: int, world: int, masking: str,
                preds: int, n: int) -> dict:
    """Micro-batches of ``batch`` on rank 0 of ``world`` (global batch batch x world)."""
    ld = PretrainingDataLoader(discover_shards(folder), batch_size=batch, rank=0, world_size=world,
                               vocab_file=str(vocab) if vocab else None, masking=masking,
                               max_predictions_per_seq=preds, seed=2)
    n = min(n, max(1, ld.samples_per_epoch // batch))  # at most one epoch
    # timed from a fresh loader: the shard reads count (every lane opens its first shard at
    # the start, so a short run counts more reads per batch than a whole epoch does)
    t = time.perf_counter()
    it = iter(ld)
    for _ in range(n):
        next(it)
    dt = time.perf_counter() - t
    return {"folder": folder.name, "batch": batch, "world": world, "masking": masking,
            "lanes": ld.lanes, "batches": n, "batches_per_s": n / dt, "sequences_per_s": n * batch / dt}


def step_seconds(folder: Path, vocab: Path | None, config: str, batch: int, repeats: int) -> float:
    """Median seconds of bertforge's training step on real batches (after one warm-up step)."""
    import bench_train as bt

    cfg = bt.model_config(config)
    ld = PretrainingDataLoader(discover_shards(folder), batch_size=batch,
                               vocab_file=str(vocab) if vocab else None, max_predictions_per_seq=20, seed=1)
    it = iter(ld)
    batches = [next(it) for _ in range(repeats + 1)]
    torch.manual_seed(0)
    from bertforge.model.bert import BertForPreTraining

    ours = bt.Ours(cfg, BertForPreTraining(cfg).state_dict())
    times = []
    for b in batches:
        t = time.perf_counter()
        ours.step(b)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def markdown(r: dict) -> str:
    lines = [provenance_line(r), "",
             f"Training step ({r['config']}, real phase-1 batch of {r['step_batch']}): "
             f"{r['step_s']:.3f} s, {r['step_batch'] / r['step_s']:.2f} sequences/s.", "",
             "| shards | masking | rank of | lanes | micro-batch | batches timed | loader batches/s | loader sequences/s | headroom |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in r["loader"]:
        lines.append(f"| {c['folder']} | {c['masking']} | 0 of {c['world']} | {c['lanes']} | {c['batch']} | "
                     f"{c['batches']} | {c['batches_per_s']:.1f} | {c['sequences_per_s']:.0f} | "
                     f"**{c['headroom']:.0f}x** |")
    least = min(c["headroom"] for c in r["loader"])
    lines += ["", "Headroom: the loader's sequences/s (one thread, from its start, shard reads included) "
              f"over the training step's; >= 100x needed, least here {least:.0f}x "
              f"({'met' if least >= 100 else 'NOT met'})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="output folder of data/create_datasets_from_start.sh")
    p.add_argument("--config", default="base", help="bert_configs/<name>.json of the training step")
    p.add_argument("--step_batch", type=int, default=16)
    p.add_argument("--step_repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=1000,
                   help="loader batches timed per case from the start, shard reads included (at most an epoch)")
    p.add_argument("--write", help="update this markdown file's section (e.g. docs/benchmarks.md)")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args(argv)
    data = Path(args.data)
    p1 = _find(data, "phase1")
    if p1 is None:
        raise SystemExit(f"error: --data {data}: no phase1 shard folder (make it with: bash "
                         f"data/create_datasets_from_start.sh sample {data})")
    p2 = _find(data, "phase2")
    vocab = next(iter(sorted(data.rglob("vocab.txt"))), None)
    r = {**provenance("bench/bench_loader.py", list(argv if argv is not None else sys.argv[1:])),
         "config": args.config, "step_batch": args.step_batch, "loader": []}
    cases = [(p1, 32, 1, "static", 20), (p1, 32, 8, "static", 20)]
    if vocab is not None:
        cases.append((p1, 32, 8, "dynamic", 20))
        if p2 is not None:
            cases.append((p2, 8, 8, "static", 80))
    for folder, batch, world, masking, preds in cases:
        c = loader_case(folder, vocab, batch=batch, world=world, masking=masking, preds=preds, n=args.batches)
        r["loader"].append(c)
        print(json.dumps(c), flush=True)
    r["step_s"] = step_seconds(p1, vocab, args.config, args.step_batch, args.step_repeats)
    for c in r["loader"]:
        c["headroom"] = c["sequences_per_s"] / (args.step_batch / r["step_s"])
    r["load_end"] = round(os.getloadavg()[0], 2)
    text = markdown(r)
    publish(text, r, MARKER, json_path=args.json, write=args.write)
    return r


if __name__ == "__main__":
    main()
