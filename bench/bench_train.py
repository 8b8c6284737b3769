"""Pretraining-step benchmark: bertforge vs Hugging Face on identical batches.

    .venv/bin/python bench/bench_train.py --data results/data [--write docs/benchmarks.md]

Cases (fp32, CPU, all in one run, ours and the baseline alternating after warm-up):
  base-p1    BERT-base, seq 128, 20 masked per sequence, full-length sequences
  base-p1r   BERT-base, real phase-1 batches from the Wikipedia sample's HDF5 shards
  base-p2    BERT-base, real phase-2 batches (seq <= 512, 80 masked) from the Parquet shards
  small-p1   4 layers, hidden 256, seq 128, 20 masked, full-length sequences
Ours: BertForPreTraining (unpadding, masked-only MLM head and last layer, fast dropout, oneDNN
GEMMs on the CPU) + LAMB + poly warm-up through the real TrainStep. Baseline:
transformers.BertForPreTraining (sdpa attention) + torch.optim.AdamW + linear warm-up, as a
user of Hugging Face would run it. Both see the same padded batch tensors and start from the
same weights.

Also: useful-FLOP utilization (model FLOPs on real tokens, masked-only head and last layer, over a large
fp32 matmul's rate measured in this run), peak RSS of each side (separate child processes),
and the data loader's batches/s against the training step's consumption. Fine-tuning and QA
inference are measured by bench/bench_finetune.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import git_commit, publish  # noqa: E402

from bertforge.config import ModelConfig  # noqa: E402
from bertforge.model.bert import BertForPreTraining  # noqa: E402
from bertforge.model.gemm import cpu_model  # noqa: E402

CASES = {
    # name: (config, seq, predictions, batch, source)
    "base-p1": ("base", 128, 20, 16, "synthetic"),
    "base-p1r": ("base", 128, 20, 16, "hdf5"),
    "base-p2": ("base", 512, 80, 4, "parquet"),
    "small-p1": ("small", 128, 20, 32, "synthetic"),
    # GPU cases, the shapes of NVIDIA's DGX A100 tables (BERT-large; not in the CPU default run)
    "large-p1": ("large", 128, 20, 64, "synthetic"),
    "large-p2": ("large", 512, 80, 8, "synthetic"),
}
DEFAULT_CASES = ("base-p1", "base-p1r", "base-p2", "small-p1")

RUN = {"device": torch.device("cpu"), "precision": "fp32"}
"""Device and precision of this run (--device, --precision); both sides use the same."""

# NVIDIA's published BERT-large pretraining throughput on 1x A100 80GB (DGX A100), from the
# README of DeepLearningExamples/PyTorch/LanguageModeling/BERT: (case, precision) -> seq/s,
# with their per-GPU batch (128 TF32 / 256 mixed at seq 128; 16 / 32 at seq 512).
NVIDIA_A100_1GPU = {("large-p1", "tf32"): 317, ("large-p1", "fp16"): 580,
                    ("large-p2", "tf32"): 110, ("large-p2", "fp16"): 210}


def sync() -> None:
    if RUN["device"].type == "cuda":
        torch.cuda.synchronize()


def half_dtype() -> torch.dtype | None:
    """The 16-bit compute dtype of --precision fp16/bf16, None for fp32/tf32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(RUN["precision"])


def autocast():
    """The mixed-precision context both sides run their forward in (none for fp32/tf32)."""
    import contextlib

    dtype = half_dtype()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(RUN["device"].type, dtype=dtype)


def model_config(name: str) -> ModelConfig:
    return ModelConfig.from_json_file(REPO / "bert_configs" / f"{name}.json")


# ---- batches ---------------------------------------------------------------------------------

def synthetic_batches(cfg: ModelConfig, B: int, L: int, P: int, n: int, seed: int = 0) -> list[dict]:
    """Full-length sequences ([CLS] A [SEP] B [SEP]) with P masked positions each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1000, cfg.vocab_size, (B, L), generator=g)
        ids[:, 0], ids[:, L // 2], ids[:, -1] = 101, 102, 102
        tt = torch.zeros_like(ids)
        tt[:, L // 2 + 1:] = 1
        labels = torch.full_like(ids, -1)
        for b in range(B):
            pos = torch.randperm(L - 3, generator=g)[:P] + 1
            pos = pos[pos != L // 2]
            labels[b, pos] = ids[b, pos]
            ids[b, pos] = 103
        out.append(dict(input_ids=ids, token_type_ids=tt, attention_mask=torch.ones_like(ids),
                        masked_lm_labels=labels, next_sentence_labels=torch.randint(0, 2, (B,), generator=g)))
    return out


def real_batches(data_dir: Path, kind: str, B: int, P: int, n: int) -> list[dict]:
    from bertforge.data.loader import PretrainingDataLoader, discover_shards

    sub = {"hdf5": "phase1", "parquet": "phase2"}[kind]
    cands = [p for p in sorted(data_dir.rglob("*")) if p.is_dir() and sub in p.name]
    if not cands:
        raise SystemExit(f"error: no {sub} shard directory under {data_dir} "
                         f"(make it with: bash data/create_datasets_from_start.sh sample {data_dir})")
    files = discover_shards(cands[0])
    vocab = next(iter(sorted(data_dir.rglob("vocab.txt"))), None)
    loader = PretrainingDataLoader(files, batch_size=B, vocab_file=str(vocab) if vocab else None,
                                   max_predictions_per_seq=P, seed=1)
    it = iter(loader)
    return [next(it) for _ in range(n)]


# ---- the two training steps ------------------------------------------------------------------

class Ours:
    name = "bertforge"

    def __init__(self, cfg, state_dict):
        from bertforge.optim import PolyWarmUpScheduler, build_optimizer
        from bertforge.precision import Precision
        from bertforge.train.loop import TrainStep
        from bertforge.train.mlm import PretrainingLoss

        self.model = BertForPreTraining(cfg).train()
        self.model.load_state_dict(state_dict)
        self.model.to(RUN["device"])
        opt = build_optimizer(self.model, "lamb", lr=6e-3, weight_decay=0.01)
        sched = PolyWarmUpScheduler(opt, warmup=0.2843, total_steps=7038)
        prec = Precision.from_flags(RUN["precision"] == "fp16", RUN["precision"] == "bf16", RUN["device"])
        self.step_fn = TrainStep(self.model, opt, sched, prec)  # normalised over the global batch
        self.loss_fn = PretrainingLoss()

    def step(self, batch) -> float:
        return self.step_fn.step([batch], self.loss_fn).loss


class HF:
    name = "transformers"

    def __init__(self, cfg, state_dict):
        import transformers

        hf_cfg = transformers.BertConfig(**cfg.to_hf_dict())
        hf_cfg._attn_implementation = "sdpa"
        self.model = transformers.BertForPreTraining(hf_cfg).train()
        self.model.load_state_dict(state_dict)
        self.model.to(RUN["device"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.sched = transformers.get_linear_schedule_with_warmup(self.opt, 100, 10000)
        # fp16 as a Hugging Face user runs it: autocast + a dynamic loss scale
        self.scaler = torch.amp.GradScaler("cuda") if RUN["precision"] == "fp16" else None

    def step(self, b) -> float:
        labels = b["masked_lm_labels"].masked_fill(b["masked_lm_labels"] == -1, -100)
        with autocast():
            out = self.model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                             attention_mask=b["attention_mask"], labels=labels,
                             next_sentence_label=b["next_sentence_labels"])
        if self.scaler is not None:
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            out.loss.backward()
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())


def flops_per_step(cfg: ModelConfig, batch: dict) -> float:
    """Useful model FLOPs of one training step (forward + backward = 3 x forward): real tokens
    only, attention on real tokens, the MLM head on masked tokens only, and in the last layer
    only what the heads read (keys and values of every token; queries, output projection and
    feed-forward at [CLS] and the masked tokens). Work outside this count is not credited."""
    H, Isz, Lyr, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.padded_vocab_size
    lengths = batch["attention_mask"].sum(1).double()
    tokens = lengths.sum().item()
    attn = (lengths ** 2).sum().item()
    per_seq = (batch["masked_lm_labels"] != -1).sum(1).double()  # masked tokens per sequence
    masked = int(per_seq.sum())
    B = batch["input_ids"].shape[0]
    fwd = (Lyr - 1) * (2 * tokens * (4 * H * H + 2 * H * Isz) + 4 * attn * H)
    queries = masked + B  # the last layer's rows the heads read: masked tokens and [CLS]
    fwd += 2 * tokens * 2 * H * H + 2 * queries * (2 * H * H + 2 * H * Isz)
    fwd += 4 * H * ((per_seq + 1) * lengths).sum().item()
    fwd += 2 * masked * (H * H + H * V) + 2 * B * (H * H + 2 * H)
    return 3.0 * fwd


def matmul_rate(n: int = 4096, repeats: int = 5) -> float:
    """The machine's large-matmul FLOP/s on this run's device, in its compute dtype (fp32 on
    the CPU): the faster of PyTorch's ``a @ b`` (MKL on the CPU) and, where bertforge uses it,
    the same product on oneDNN (bertforge.model.gemm), so utilization is measured against the
    best GEMM available here, not against the slower library."""
    from bertforge.model import gemm

    dtype = half_dtype() or torch.float32
    a = torch.randn(n, n, device=RUN["device"]).to(dtype)
    b = torch.randn(n, n, device=RUN["device"]).to(dtype)
    products = [lambda: a @ b]
    with gemm.backend("onednn"):
        onednn = gemm.use_onednn(a, b)
    if onednn:
        def on_onednn():
            with gemm.backend("onednn"):
                return gemm.matmul(a, b)
        products.append(on_onednn)
    best = 0.0
    for product in products:
        product()
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            product()
            sync()
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def gemm_line() -> str:
    """Which fp32 CPU GEMM bertforge used in this run and why (bertforge.model.gemm)."""
    from bertforge.model import gemm

    return gemm.describe().removeprefix("bertforge: ")


def summary(times: list[float]) -> dict:
    return dict(min=min(times), median=statistics.median(times), max=max(times))


def run_case(name: str, args) -> dict:
    cfg_name, L, P, B, source = CASES[name]
    cfg = model_config(cfg_name)
    n = args.distinct_batches
    if args.batch_size:
        B = args.batch_size
    batches = (synthetic_batches(cfg, B, L, P, n) if source == "synthetic"
               else real_batches(Path(args.data), source, B, P, n))
    batches = [{k: v.to(RUN["device"]) for k, v in b.items()} for b in batches]
    torch.manual_seed(0)
    init = BertForPreTraining(cfg).state_dict()
    sides = [Ours(cfg, init), HF(cfg, init)]
    for s in sides:  # warm-up: allocator, oneDNN primitives, optimizer state
        for b in batches[: args.warmup]:
            s.step(b)
    sync()
    times = {s.name: [] for s in sides}
    seqs = []
    for r in range(args.repeats):
        b = batches[r % n]
        seqs.append(b["input_ids"].shape[0])
        for s in (sides if r % 2 == 0 else sides[::-1]):  # alternate the order
            t = time.perf_counter()
            s.step(b)
            sync()
            times[s.name].append(time.perf_counter() - t)
    flops = statistics.mean(flops_per_step(cfg, batches[r % n]) for r in range(args.repeats))
    res = {"case": name, "config": cfg_name, "seq": L, "pred": P, "batch": B, "source": source,
           "mean_real_tokens_per_seq": statistics.mean(
               float(b["attention_mask"].sum(1).float().mean()) for b in batches),
           "padded_len": statistics.mean(b["input_ids"].shape[1] for b in batches),
           "flops_per_step": flops}
    for k, v in times.items():
        res[k] = summary(v)
        res[k]["times"] = v
        res[k]["seq_per_s_total"] = B * len(v) / sum(v)
    # Headline: the median over repeats of the per-repeat ratio. Both sides of a repeat ran the
    # same batch back to back, so the ratio is immune to batches of different cost (real
    # phase-2 lengths vary 4x) and to the machine's speed drifting over minutes; the ratio of
    # the two medians and of total times are reported beside it.
    paired = [h / o for h, o in zip(times["transformers"], times["bertforge"], strict=True)]
    res["paired_speedup"] = summary(paired)
    res["speedup_median"] = res["paired_speedup"]["median"]
    res["speedup_of_medians"] = res["transformers"]["median"] / res["bertforge"]["median"]
    res["speedup_total_time"] = sum(times["transformers"]) / sum(times["bertforge"])
    del sides
    return res


# ---- peak memory (one child process per side) --------------------------------------------------

def child_memory(case: str, side: str, steps: int, data: str | None, batch_size: int | None = None) -> None:
    cfg_name, L, P, B, source = CASES[case]
    B = batch_size or B
    cfg = model_config(cfg_name)
    batches = (synthetic_batches(cfg, B, L, P, 1) if source == "synthetic"
               else real_batches(Path(data), source, B, P, 1))
    batches = [{k: v.to(RUN["device"]) for k, v in b.items()} for b in batches]
    torch.manual_seed(0)
    init = BertForPreTraining(cfg).state_dict()
    s = (Ours if side == "ours" else HF)(cfg, init)
    del init
    for _ in range(steps):
        s.step(batches[0])
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of this large
    # process would report the parent's peak.
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    cuda = torch.cuda.max_memory_allocated() / 2**20 if RUN["device"].type == "cuda" else None
    print(json.dumps({"peak_rss_mb": hwm / 1024, "peak_cuda_mb": cuda}))


def peak_memory(case: str, args) -> dict:
    out = {}
    for side in ("ours", "hf"):
        cmd = [sys.executable, __file__, "--memory-child", case, side,
               "--device", str(RUN["device"]), "--precision", RUN["precision"]]
        if args.data:
            cmd += ["--data", args.data]
        if args.batch_size:
            cmd += ["--batch_size", str(args.batch_size)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = json.loads(r.stdout.strip().splitlines()[-1])
        out[side] = m["peak_cuda_mb"] if RUN["device"].type == "cuda" else m["peak_rss_mb"]
    return out


# ---- data loader throughput ----------------------------------------------------------------------

def loader_rate(args, n: int = 200) -> float | None:
    if not args.data:
        return None
    from bertforge.data.loader import PretrainingDataLoader, discover_shards

    cands = [p for p in sorted(Path(args.data).rglob("*")) if p.is_dir() and "phase1" in p.name]
    if not cands:
        return None
    loader = PretrainingDataLoader(discover_shards(cands[0]), batch_size=32, max_predictions_per_seq=20, seed=2)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - t)


# ---- report ------------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = ["## Pretraining step", "",
             "`bench/bench_train.py`: bertforge vs Hugging Face `transformers` on identical",
             "batches, fp32, CPU, ours and the baseline alternating after warm-up, in one run:", "",
             "```", results["command"], "```", "",
             f"Commit {results.get('commit', 'unknown')}. Machine: {results['machine']}; torch {results['torch']}, transformers {results['transformers']},",
             f"{results['threads']} threads. Load average at start/end: {results['load_start']} / {results['load_end']}.",
             f"Device {results.get('device', 'cpu')}, precision {results.get('precision', 'fp32')} (both sides).",
             *([f"bertforge's {results['cpu_gemm']}."] if results.get("cpu_gemm") else []),
             "", "Each repeat runs one batch through both sides back to back (the order alternates); seq/s",
             "is sequences over total time. Real batches differ in length, so their min/max span batches.",
             "", "| case | batch x seq | mean real tokens/seq | bertforge s/step min/med/max | transformers s/step min/med/max "
             "| bertforge seq/s | transformers seq/s | speedup: median of per-repeat ratios (min-max) "
             "| ratio of medians | ratio of total times |",
             "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["cases"]:
        o, h = r["bertforge"], r["transformers"]
        lines.append(f"| {r['case']} ({r['config']}, {r['source']}) | {r['batch']} x {r['seq']} "
                     f"(padded to {r['padded_len']:.0f}) | {r['mean_real_tokens_per_seq']:.1f} | "
                     f"{o['min']:.3f} / {o['median']:.3f} / {o['max']:.3f} | "
                     f"{h['min']:.3f} / {h['median']:.3f} / {h['max']:.3f} | "
                     f"{o['seq_per_s_total']:.2f} | {h['seq_per_s_total']:.2f} | **{r['speedup_median']:.2f}x** "
                     f"({r['paired_speedup']['min']:.2f}-{r['paired_speedup']['max']:.2f}) | "
                     f"{r['speedup_of_medians']:.2f}x | {r['speedup_total_time']:.2f}x |")
    prec = results.get("precision", "fp32")
    lines += ["", f"{prec} matmul rate (4096^3, median of 5, the faster of PyTorch's and oneDNN's GEMM): {results['matmul_gflops']:.1f} GFLOP/s at the start, "
              f"{results.get('matmul_gflops_end', float('nan')):.1f} at the end of the training cases "
              "(utilization uses the start figure).", ""]
    for r in results["cases"]:
        ref = NVIDIA_A100_1GPU.get((r["case"], "fp16" if prec in ("fp16", "bf16") else prec))
        if ref and str(results.get("device", "")).startswith("cuda"):
            lines.append(f"- {r['case']}: bertforge {r['bertforge']['seq_per_s_total']:.1f} seq/s; NVIDIA's published "
                         f"1x A100 80GB figure for this shape: {ref} seq/s (their mixed precision / TF32 tables).")
    for r in results["cases"]:
        mean_step = statistics.mean(r["bertforge"]["times"])  # FLOPs are the mean over the same repeats
        util = r["flops_per_step"] / mean_step / (results["matmul_gflops"] * 1e9)
        lines.append(f"- {r['case']}: useful model FLOPs per step {r['flops_per_step'] / 1e12:.3f} TFLOP, "
                     f"bertforge utilization {100 * util:.1f}% of the matmul rate.")
    if results.get("memory"):
        what = ("Peak CUDA memory allocated" if str(results.get("device", "")).startswith("cuda") else "Peak RSS")
        lines += ["", f"{what} (separate child processes, one full training step each, optimizer state included):", ""]
        for case, m in results["memory"].items():
            lines.append(f"- {case}: bertforge {m['ours']:.0f} MB, transformers {m['hf']:.0f} MB "
                         f"(ratio {m['ours'] / m['hf']:.2f}).")
    if results.get("loader_batches_per_s"):
        step = next((r for r in results["cases"] if r["case"] == "base-p1r"), results["cases"][0])
        consume = 1.0 / step["bertforge"]["median"]
        lines += ["", f"Data loader (phase-1 HDF5, batch 32): {results['loader_batches_per_s']:.1f} batches/s; "
                  f"the {step['case']} training step consumes {consume:.3f} batches/s: "
                  f"**{results['loader_batches_per_s'] / consume:.0f}x** headroom."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", help="comma-separated subset of " + ", ".join(CASES)
                   + " (default: " + ",".join(DEFAULT_CASES) + " on the CPU, large-p1,large-p2 on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "fp16", "bf16"),
                   help="fp32 (default); on CUDA also tf32, fp16 (autocast + dynamic loss scale), bf16")
    p.add_argument("--batch_size", type=int, help="override every case's batch size (sequences per step)")
    p.add_argument("--data", help="output folder of data/create_datasets_from_start.sh (real batches)")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--distinct_batches", type=int, default=3)
    p.add_argument("--no_memory", action="store_true")
    p.add_argument("--write", help="update this markdown file's section (e.g. docs/benchmarks.md)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--memory-child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: no CUDA device is available")
    if device.type != "cuda" and args.precision in ("tf32", "fp16"):
        raise SystemExit(f"error: --precision {args.precision} needs --device cuda")
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f"error: --batch_size must be positive, got {args.batch_size}")
    RUN["device"], RUN["precision"] = device, args.precision
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    if args.memory_child:
        child_memory(*args.memory_child, steps=1, data=args.data, batch_size=args.batch_size)
        return
    default = DEFAULT_CASES if device.type == "cpu" else ("large-p1", "large-p2")
    cases = [c for c in (args.cases or ",".join(default)).split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"error: --cases: unknown case {c!r}")
        if CASES[c][4] != "synthetic" and not args.data:
            raise SystemExit(f"error: case {c} needs --data (real shards)")
    import transformers

    results = {"command": "python bench/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores",
               "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "load_start": round(os.getloadavg()[0], 2), "cases": [],
               "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
               "precision": args.precision, "commit": git_commit()}
    results["matmul_gflops"] = matmul_rate() / 1e9
    print(f"matmul {results['matmul_gflops']:.1f} GFLOP/s", flush=True)
    for c in cases:
        r = run_case(c, args)
        results["cases"].append(r)
        print(f"{c}: ours {r['bertforge']['median']:.3f}s  hf {r['transformers']['median']:.3f}s  "
              f"speedup {r['speedup_median']:.2f}x (paired; of medians {r['speedup_of_medians']:.2f}x)", flush=True)
    results["matmul_gflops_end"] = matmul_rate() / 1e9
    results["cpu_gemm"] = gemm_line()
    if not args.no_memory:
        results["memory"] = {c: peak_memory(c, args) for c in cases if CASES[c][4] == "synthetic" or c == "base-p2"}
        print("memory", results["memory"], flush=True)
    results["loader_batches_per_s"] = loader_rate(args)
    results["load_end"] = round(os.getloadavg()[0], 2)
    text = markdown(results)
    publish(text, results, "bench_train", json_path=args.json, write=args.write)


if __name__ == "__main__":
    main()
