"""The fine-tuning driver shared by SQuAD and GLUE.

A task hands over its features as a dict of equally long numpy arrays (``input_ids``,
``token_type_ids``, ``attention_mask`` [N, L] and its labels) and a
``loss_fn(model, batch) -> scalar``; this module does the rest:

* :class:`BatchLoader`     shuffled (per seed and epoch), rank-sharded batches, each cut to
  its longest sequence (dynamic padding: attention ignores padding, so outputs at real
  positions are unchanged and a CPU does much less work);
* :func:`train`            epochs / ``max_steps``, NVIDIA's optimizer for fine-tuning
  (BertAdam: Adam without bias correction, linear warmup then linear decay), the shared
  :class:`~bertforge.train.loop.TrainStep` (accumulation, AMP, clipping, DDP);
* :func:`predict`          batched inference with per-batch latencies;
* :func:`save_finetuned`   the fine-tuned weights as NVIDIA names them (``pytorch_model.bin``
  + ``bert_config.json``), written atomically, loadable by ``load_pretrained``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bertforge.config import FinetuneConfig, LaunchConfig, ModelConfig, PrecisionConfig
from bertforge.errors import ConfigError
from bertforge.files import atomic_write_json
from bertforge.memory import require_model_memory
from bertforge.model.convert import save_bertforge
from bertforge.optim import build_optimizer
from bertforge.optim.schedulers import LinearWarmUpScheduler
from bertforge.precision import Precision, configure_tf32
from bertforge.train.loop import TrainStep

__all__ = [
    "FinetuneConfig",
    "TrainSummary",
    "BatchLoader",
    "check_inputs_fit",
    "train",
    "predict",
    "latency_stats",
    "save_finetuned",
    "setup_runtime",
    "Runtime",
    "to_device",
    "trim_batch",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
]

WEIGHTS_NAME = "pytorch_model.bin"  # NVIDIA's names for the fine-tuned model
CONFIG_NAME = "bert_config.json"


@dataclass
class TrainSummary:
    global_step: int
    final_loss: float
    average_loss: float
    train_time_s: float
    sequences_per_second: float
    skipped_steps: int


# --------------------------------------------------------------------------- model loading


def check_inputs_fit(config: ModelConfig, *, max_seq_length: int, tokenizer, vocab_file,
                     pairs: bool = True) -> None:
    """ConfigError (one line, naming the flag) unless ``max_seq_length``-token windows, every
    id of the vocab and (``pairs``: text pairs) token types 0 and 1 fit the model: otherwise
    the forward pass would fail mid-run."""
    if pairs and config.type_vocab_size < 2:
        raise ConfigError(f"the model's type_vocab_size is {config.type_vocab_size}: text pairs "
                          "(question + context, sentence A + B) need token types 0 and 1")
    if max_seq_length > config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {max_seq_length} exceeds max_position_embeddings "
                          f"{config.max_position_embeddings} of the model")
    n = tokenizer.get_vocab_size()
    if n > config.vocab_size:
        raise ConfigError(f"--vocab_file {vocab_file} has {n} tokens but the model has only "
                          f"{config.vocab_size} embeddings")


def save_finetuned(model: torch.nn.Module, output_dir: str | Path, **extra) -> Path:
    """``pytorch_model.bin`` ({"model", "config", ...}) and ``bert_config.json``, atomically."""
    model = getattr(model, "module", model)
    out = Path(output_dir)
    path = save_bertforge(model, out / WEIGHTS_NAME, **extra)
    atomic_write_json(out / CONFIG_NAME, model.config.to_dict())
    return path


# --------------------------------------------------------------------------- batching


def trim_batch(batch: dict[str, np.ndarray], key: str = "attention_mask") -> dict[str, np.ndarray]:
    """Cut [B, L] arrays to the longest sequence of the batch (dynamic padding)."""
    if key not in batch:
        return batch
    width = int(batch[key].sum(axis=1).max()) if len(batch[key]) else 0
    width = max(width, 1)
    L = batch[key].shape[1]
    return {k: (v[:, :width] if v.ndim == 2 and v.shape[1] == L else v) for k, v in batch.items()}


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy -> torch on ``device``; integer arrays become int64 (token ids are torch.long)."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if not torch.is_floating_point(t):
            t = t.long()
        out[k] = t.to(device, non_blocking=True)
    return out


class BatchLoader:
    """Batches of ``batch_size`` rows for one process, reshuffled every epoch.

    Like ``DistributedSampler``: the permutation depends only on (seed, epoch), the index
    list is padded (by wrapping) to a multiple of ``world_size`` and rank r takes every
    world_size-th index from r, so ranks see disjoint rows and the same number of steps.
    Global batch s (the s-th batch of every rank) is then positions [s G, (s+1) G) of the
    padded permutation, G = batch_size x world_size: the same examples for any split of G.
    Each batch has ``example_mask`` [B] float: 0 marks a wrapped-around padding row, which the
    global-batch normalisation leaves out (so the last global batch too is split-independent).
    """

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        lens = {len(v) for v in arrays.values()}
        if len(lens) != 1:
            raise ValueError(f"arrays of different lengths: {sorted(lens)}")
        self.arrays = arrays
        self.n = lens.pop()
        if self.n == 0:
            raise ConfigError("no training examples")
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle

    def indices(self, epoch: int) -> np.ndarray:
        return self._indices(epoch)[0]

    def _indices(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's example indices and whether each is real (not wrap-around padding)."""
        idx = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
               else np.arange(self.n))
        total = math.ceil(self.n / self.world_size) * self.world_size
        idx = np.resize(idx, total)  # wraps around to pad
        real = np.arange(total) < self.n
        return idx[self.rank::self.world_size], real[self.rank::self.world_size]

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.n / self.world_size) / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        idx, real = self._indices(epoch)
        for i in range(0, len(idx), self.batch_size):
            order = np.argsort(idx[i:i + self.batch_size], kind="stable")  # contiguous reads
            sel = idx[i:i + self.batch_size][order]
            batch = {k: v[sel] for k, v in self.arrays.items()}
            batch["example_mask"] = real[i:i + self.batch_size][order].astype(np.float32)
            yield batch


def _split(batch: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(batch.values())))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


# --------------------------------------------------------------------------- training


def train(model: torch.nn.Module, arrays: dict[str, np.ndarray],
          loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor], cfg: FinetuneConfig, *,
          precision: Precision, rank: int = 0, world_size: int = 1, logger=None,
          on_step: Callable[[int], None] | None = None) -> TrainSummary:
    """Fine-tune ``model`` in place on ``arrays`` (rows = examples/windows).

    ``on_step(n)`` (e.g. a --profile recorder) is called with 0 before the first step and
    with the number of completed steps after each.

    ``model`` is on its device (and DDP-wrapped when ``world_size > 1``). ``loss_fn(model,
    batch)`` gets a dict of tensors on that device (a micro-batch) and returns its mean loss.
    Logs ``step_loss`` and ``learning_rate`` every ``log_freq`` steps, NVIDIA's keys.
    """
    device = precision.device
    require_model_memory(getattr(model, "module", model).config, what="the model", training=True,
                         device=device, already_allocated=True)
    loader = BatchLoader(arrays, cfg.train_batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
    total = cfg.total_steps(loader.n, world_size)
    optimizer = build_optimizer(model, "bertadam", lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                max_grad_norm=cfg.max_grad_norm)
    scheduler = LinearWarmUpScheduler(optimizer, warmup=cfg.warmup_proportion, total_steps=total)
    stepper = TrainStep(model, optimizer, scheduler, precision,
                        accumulation_steps=cfg.gradient_accumulation_steps, max_grad_norm=cfg.max_grad_norm,
                        loss_normalization=cfg.loss_normalization)
    if logger is not None:
        logger.log("PARAMETER", {"training_examples": loader.n, "train_batch_size": cfg.train_batch_size,
                                 "steps": total, "world_size": world_size})
    model.train()
    step, seqs, last = 0, 0, float("nan")
    # this rank's shares of each step's global-batch loss, summed on the device (no sync per
    # step); summed over ranks when read
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    epoch = 0
    if on_step is not None:
        on_step(0)
    while step < total:
        for batch in loader.epoch(epoch):
            micro = [to_device(trim_batch(mb), device) for mb in _split(batch, cfg.gradient_accumulation_steps)]
            result = stepper.step(micro, loss_fn)
            step += 1
            seqs += len(batch["input_ids"])
            loss_sum += result.share_tensor[0].double()
            if on_step is not None:
                on_step(step)
            if step % cfg.log_freq == 0 or step == total:
                # the global batch's loss (an all-reduce with several processes, and a sync:
                # only every log_freq steps, on every rank)
                last = float(stepper.global_sum(result.share_tensor[0].double()))
                if logger is not None:
                    logger.log((epoch, step), {"step_loss": last,
                                               "learning_rate": optimizer.param_groups[0]["lr"]})
            if step >= total:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return TrainSummary(global_step=step, final_loss=last,
                        average_loss=float(stepper.global_sum(loss_sum)) / max(step, 1),
                        train_time_s=elapsed, sequences_per_second=seqs * world_size / max(elapsed, 1e-9),
                        skipped_steps=stepper.skipped_steps)


# --------------------------------------------------------------------------- inference


@torch.inference_mode()
def predict(model: torch.nn.Module, arrays: dict[str, np.ndarray], batch_size: int,
            forward: Callable[[torch.nn.Module, dict], tuple | torch.Tensor], *,
            precision: Precision, on_batch: Callable[[int], None] | None = None
            ) -> tuple[list[np.ndarray], list[float]]:
    """Run ``forward(model, batch)`` over ``arrays`` in order, ``batch_size`` rows at a time.

    ``on_batch(n)`` is called with 0 first and with the number of finished batches after each.

    Returns the outputs (each output of ``forward`` concatenated over batches as float32,
    [N, ...]; sequence outputs are padded back to the full length with -1e4) and the
    per-batch latencies in milliseconds (device-synchronised).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    n = len(arrays["input_ids"])
    L = arrays["input_ids"].shape[1]
    chunks: list[list[np.ndarray]] = []
    latencies = []
    cuda = precision.device.type == "cuda"
    try:
        if on_batch is not None:
            on_batch(0)
        for i in range(0, n, batch_size):
            batch = to_device(trim_batch({k: v[i:i + batch_size] for k, v in arrays.items()}), precision.device)
            t0 = time.perf_counter()
            with precision.autocast():
                out = forward(model, batch)
            if cuda:
                torch.cuda.synchronize(precision.device)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            outs = out if isinstance(out, tuple) else (out,)
            for j, o in enumerate(outs):
                o = o.float().cpu().numpy()
                if o.ndim == 2 and o.shape[1] < L and o.shape[1] == batch["input_ids"].shape[1]:
                    o = np.pad(o, ((0, 0), (0, L - o.shape[1])), constant_values=-1e4)
                if len(chunks) <= j:
                    chunks.append([])
                chunks[j].append(o)
            if on_batch is not None:
                on_batch(len(latencies))
    finally:
        model.train(was_training)
    return [np.concatenate(c) for c in chunks], latencies


def latency_stats(latencies_ms: list[float], batch_size: int) -> dict[str, float]:
    """NVIDIA's inference keys: latency percentiles (ms), mean, std, sum, throughput."""
    lat = sorted(latencies_ms)
    if not lat:
        return {}

    def pct(q):
        i = min(max(int(len(lat) * q) - 1, 0), len(lat) - 1)
        return lat[i]

    mean = float(np.mean(lat))
    return {
        "infer:latency(ms):50%": pct(0.5), "infer:latency(ms):90%": pct(0.9),
        "infer:latency(ms):95%": pct(0.95), "infer:latency(ms):99%": pct(0.99),
        "infer:latency(ms):100%": pct(1.0), "infer:latency(ms):avg": mean,
        "infer:latency(ms):std": float(np.std(lat)), "infer:latency(ms):sum": float(np.sum(lat)),
        "infer:throughput(samples/s):avg": batch_size / (mean / 1000.0) if mean > 0 else 0.0,
    }


# --------------------------------------------------------------------------- run setup


@dataclass
class Runtime:
    """What a fine-tuning entry point needs to know about where it runs."""

    rank: int
    world_size: int
    device: torch.device
    precision: Precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(*, seed: int, precision: PrecisionConfig, launch: LaunchConfig) -> Runtime:
    """Initialise distributed training (torchrun / Slurm variables), device, precision and seeds.

    ``precision.tf32`` allows TF32 math on CUDA (one line says it has no effect elsewhere);
    ``precision.loss_scale`` > 0 is a static fp16 loss scale (NVIDIA's ``--loss_scale``).

    Seeds python, numpy and torch with ``seed`` (the same on every rank: the model's new
    head starts identical everywhere; the data order comes from the loader's own seed).
    """
    from bertforge.distributed import init_distributed
    from bertforge.model import gemm
    from bertforge.rng import seed_everything

    gemm.configure(precision.cpu_gemm)
    info = init_distributed(local_rank=launch.local_rank, device=launch.device,
                            timeout_s=launch.dist_timeout)
    gemm.settle()  # one CPU GEMM backend on every rank, before any product
    prec = Precision.from_flags(precision.fp16, precision.bf16, info.device,
                                init_loss_scale=precision.init_loss_scale, loss_scale=precision.loss_scale)
    why = configure_tf32(precision.tf32, info.device)
    if why and info.is_main:
        print(f"note: --tf32 has no effect: {why}", flush=True)
    seed_everything(seed)
    return Runtime(info.rank, info.world_size, info.device, prec)
