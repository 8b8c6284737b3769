"""BERT pretraining (MLM + NSP): setup, resume logic, the step loop, evaluation, shutdown.

The optimizer step itself (accumulation, autocast, no_sync, clipping) is
:class:`bertforge.train.loop.TrainStep`; this module decides *what* to start from and
*when* to log, evaluate, checkpoint and stop.

Exit statuses of :func:`run`: 0 done (``--max_steps`` or ``--steps_this_run`` reached, or
nothing left to do); :data:`PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL) after SIGTERM, once a
checkpoint is saved: requeue the job with ``--resume_from_checkpoint`` to continue;
2 for user errors (bad flag, missing or corrupt file, non-finite loss).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bertforge.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    find_latest,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bertforge.config import ModelConfig
from bertforge.distributed import DistInfo, barrier, cleanup, init_distributed, rank0_output_lock
from bertforge.errors import CheckpointError, ConfigError, DataError, UserError
from bertforge.files import ensure_dir
from bertforge.memory import require_model_memory
from bertforge.nvidia_checkpoint import (
    is_nvidia_checkpoint,
    master_weights,
    moments_by_name,
    nvidia_step,
    optimizer_state_for,
)
from bertforge.optim import PolyWarmUpScheduler, build_optimizer
from bertforge.precision import Precision
from bertforge.profiling import StepProfiler
from bertforge.runlog import Logger, require_tensorboard
from bertforge.train.loop import TrainStep
from bertforge.train.numerics import differences as numerics_differences
from bertforge.train.numerics import environment as numerics_environment

__all__ = ["run", "micro_batch_size", "global_batch_size", "PretrainingLoss",
           "NonFiniteLossError", "PeerFailureError", "PREEMPTED_EXIT_CODE", "evaluate_mlm"]

#: Seed of the held-out batches: the same for every run, so evaluations are comparable.
EVAL_SEED = 12345

#: Exit status after a SIGTERM (Slurm preemption / time limit) once the checkpoint is written.
PREEMPTED_EXIT_CODE = 75


class NonFiniteLossError(UserError):
    """The training loss became NaN/inf (fp32/bf16): the run stops, earlier checkpoints are kept."""


class PeerFailureError(UserError):
    """A collective failed: another rank died, hung past ``--dist_timeout`` or is unreachable."""

    exit_code = 1  # not a bad input: the job can be resubmitted as it is


def _is_comm_failure(e: BaseException) -> bool:
    """True for the errors gloo/NCCL raise when a peer dies (connection reset) or hangs (timeout)."""
    if isinstance(e, dist.DistError):
        return True
    msg = str(e)
    return any(s in msg for s in ("gloo", "NCCL", "Connection reset by peer",
                                  "Connection closed by peer", "Timed out"))


def _peer_failure(e: BaseException, args, info: DistInfo) -> PeerFailureError:
    first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    first = first.split("] ", 1)[-1] if first.startswith("[") else first  # drop "[file.cc:537] "
    first = first.split(". ", 1)[0]  # gloo appends generic advice
    latest = find_latest(args.output_dir)
    return PeerFailureError(
        f"rank {info.rank} of {info.world_size}: communication with the other ranks failed "
        f"({first.strip()[:160]}): another rank died, hung longer than --dist_timeout "
        f"{args.dist_timeout:g}s or is unreachable; see its log, then resume with "
        f"--resume_from_checkpoint (latest checkpoint: {latest.name if latest else 'none'})")


# -- derived values (computed, never written back into args) ---------------------------------
def micro_batch_size(args: argparse.Namespace) -> int:
    """Sequences per forward/backward on one rank."""
    return args.train_batch_size // args.gradient_accumulation_steps


def global_batch_size(args: argparse.Namespace, world_size: int) -> int:
    """Sequences per optimizer step over all ranks."""
    return args.train_batch_size * world_size


def validate_args(args: argparse.Namespace) -> None:
    """One-line ConfigErrors naming the flags that do not go together (each flag's own range
    is checked by the parser: bertforge.cli.pretrain.LIMITS)."""
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise ConfigError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                          f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if not (math.isfinite(args.max_steps) and args.max_steps >= 1):
        raise ConfigError(f"--max_steps must be a finite number >= 1, got {args.max_steps}")
    if not (math.isfinite(args.log_freq) and args.log_freq > 0):
        raise ConfigError(f"--log_freq must be a positive number, got {args.log_freq}")
    if args.resume_phase2 and not args.phase2:
        raise ConfigError("--resume_phase2 needs --phase2")
    if args.resume_step != -1 and not args.resume_from_checkpoint:
        raise ConfigError("--resume_step needs --resume_from_checkpoint")
    if not Path(args.input_dir).is_dir() and args.do_train:
        raise DataError(f"--input_dir {args.input_dir} is not a directory")
    if args.eval_dir is not None and not Path(args.eval_dir).is_dir():
        raise DataError(f"--eval_dir {args.eval_dir} is not a directory")
    if not args.do_train and args.eval_dir is None:
        raise ConfigError("nothing to do: pass --do_train to train (or --eval_dir to only evaluate)")
    if args.tensorboard_dir is not None:
        require_tensorboard()
    if args.vocab_file is not None and not Path(args.vocab_file).is_file():
        raise DataError(f"--vocab_file {args.vocab_file} does not exist")


# -- loss ----------------------------------------------------------------------------------
class PretrainingLoss:
    """``loss_fn(model, batch)`` for TrainStep: MLM + NSP; keeps the last parts for logging.

    With ``dense_sequence_output`` (default) the model computes MLM logits only at the masked
    positions ([M, V]); otherwise at every position ([B, L, V]) with ignored labels.
    """

    def __init__(self, dense_sequence_output: bool = True, fused: bool = True) -> None:
        from bertforge.model.bert import pretraining_loss

        self._loss = pretraining_loss
        self.dense = dense_sequence_output
        self.fused = fused
        self.last_mlm: torch.Tensor | None = None
        self.last_nsp: torch.Tensor | None = None

    def __call__(self, model, batch: dict) -> torch.Tensor:
        labels = batch["masked_lm_labels"]
        scores, nsp_scores = model(batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"],
                                   masked_lm_labels=labels if self.dense else None)
        total, mlm, nsp = self._loss(scores, nsp_scores, labels, batch["next_sentence_labels"],
                                     fused=self.fused)
        self.last_mlm, self.last_nsp = mlm.detach(), nsp.detach()
        return total


# -- data ----------------------------------------------------------------------------------
def _make_loader(input_dir: str, args, batch_size: int, info: DistInfo, seed: int):
    from bertforge.data.loader import PretrainingDataLoader, discover_shards
    from bertforge.data.vocab import check_shards_vocab

    files = discover_shards(input_dir)
    if not files:
        raise DataError(f"no training shards (.hdf5/.h5/.parquet) in {input_dir}")
    check_shards_vocab(input_dir, args.vocab_file)
    return PretrainingDataLoader(
        files, batch_size=batch_size, vocab_file=args.vocab_file, rank=info.rank,
        world_size=info.world_size, seed=seed, masking=args.masking,
        max_predictions_per_seq=args.max_predictions_per_seq, num_workers=args.num_workers)


def _to_device(batch: dict, device: torch.device, max_seq_length: int, source: str) -> dict:
    length = batch["input_ids"].shape[1]
    if length > max_seq_length:
        raise DataError(f"{source} has sequences of length {length} > --max_seq_length "
                        f"{max_seq_length}")
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) for k, v in batch.items()}


@torch.no_grad()
def evaluate_mlm(model, eval_dir: str, args, info: DistInfo, precision: Precision,
                 batch_size: int) -> dict:
    """Held-out MLM accuracy / loss and NSP accuracy over ``--num_eval_batches`` batches per rank.

    The loader is rebuilt with a fixed seed (:data:`EVAL_SEED`, not ``--seed``) every time, so
    every evaluation, of this run or of another run on the same held-out shards and number of
    ranks, sees the same sequences and masks. Counts are summed over ranks.
    """
    from bertforge.model.bert import masked_rows

    was_training = model.training
    model.eval()
    core = model.module if hasattr(model, "module") else model
    loader = _make_loader(eval_dir, args, batch_size, info, seed=EVAL_SEED)
    it = iter(loader)
    sums = torch.zeros(5, dtype=torch.float64)  # correct, masked, loss*masked, nsp correct, seqs
    for _ in range(args.num_eval_batches):
        batch = _to_device(next(it), info.device, args.max_seq_length, f"--eval_dir {eval_dir}")
        labels = batch["masked_lm_labels"]
        with precision.autocast():
            scores, nsp = core(batch["input_ids"], batch["token_type_ids"],
                               batch["attention_mask"], masked_lm_labels=labels)
        target = labels.flatten().index_select(0, masked_rows(labels)).long()  # [M]
        scores = scores.float()
        loss = torch.nn.functional.cross_entropy(scores, target, reduction="sum")
        sums += torch.tensor([
            float((scores.argmax(-1) == target).sum()), float(target.numel()), float(loss),
            float((nsp.float().argmax(-1) == batch["next_sentence_labels"].long()).sum()),
            float(labels.shape[0])], dtype=torch.float64)
    if hasattr(loader, "close"):
        loader.close()
    if info.distributed:
        sums = sums.to(info.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train(was_training)
    correct, masked, loss_sum, nsp_correct, seqs = sums.tolist()
    return {"eval_mlm_accuracy": correct / max(masked, 1.0),
            "eval_mlm_loss": loss_sum / max(masked, 1.0),
            "eval_nsp_accuracy": nsp_correct / max(seqs, 1.0),
            "eval_masked_tokens": int(masked)}


# -- resume --------------------------------------------------------------------------------
@dataclass
class StartPoint:
    """What the run starts from; ``restore_all`` means an exact resume (data, RNG, schedule)."""

    checkpoint: dict | None = None
    source: str | None = None
    restore_all: bool = False
    keep_moments: bool = False
    phase1_end_step: int = 0
    nothing_to_do: str | None = None


def _resolve_start(args, phase: int) -> StartPoint:
    """Decide the checkpoint and how much of it applies (NVIDIA's phase logic, made explicit).

    - phase 1 + --resume_from_checkpoint: the latest (or --resume_step) checkpoint in
      --output_dir, restored exactly; none there: --init_checkpoint or fresh weights.
    - phase 2 + --resume_from_checkpoint: a phase-1 checkpoint starts phase 2 (weights and
      LAMB moments kept, step, LR schedule, loss scale and data position reset); a phase-2
      checkpoint is continued exactly with --resume_phase2 and refused without it.
    - --init_checkpoint (no checkpoint in --output_dir): its weights; its optimizer moments
      too when it is a bertforge training checkpoint and --phase2 is given.
    """
    out = Path(args.output_dir)
    ckpt_path = None
    if args.resume_from_checkpoint:
        if args.resume_step != -1:
            ckpt_path = out / checkpoint_name(args.resume_step)
            if not ckpt_path.is_file():
                raise CheckpointError(f"--resume_step {args.resume_step}: {ckpt_path} does not exist")
        else:
            ckpt_path = find_latest(out)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if is_nvidia_checkpoint(ckpt):
            return _nvidia_start(ckpt, ckpt_path, args, phase)
        for key in ("model", "step", "phase"):
            if key not in ckpt:
                raise CheckpointError(f"checkpoint {ckpt_path} has no {key!r}: not a training checkpoint")
        ck_phase = int(ckpt["phase"])
        if phase == 1:
            if ck_phase == 2:
                return StartPoint(nothing_to_do=f"phase 1 is complete: {ckpt_path} is a phase-2 checkpoint")
            return StartPoint(ckpt, str(ckpt_path), restore_all=True)
        if ck_phase == 2:
            if not args.resume_phase2:
                raise CheckpointError(
                    f"{ckpt_path} is a phase-2 checkpoint; pass --resume_phase2 to continue it")
            end = args.phase1_end_step if args.phase1_end_step is not None else int(ckpt.get("phase1_end_step", 0))
            return StartPoint(ckpt, str(ckpt_path), restore_all=True, phase1_end_step=end)
        end = args.phase1_end_step if args.phase1_end_step is not None else int(ckpt["step"])
        return StartPoint(ckpt, str(ckpt_path), keep_moments=True, phase1_end_step=end)
    if phase == 1 and not args.resume_from_checkpoint and find_latest(out) is not None:
        raise ConfigError(f"--output_dir {out} already holds checkpoints ({find_latest(out).name}); "
                          "pass --resume_from_checkpoint or use another --output_dir")
    if args.init_checkpoint:
        return StartPoint(None, args.init_checkpoint, keep_moments=args.phase2,
                          phase1_end_step=args.phase1_end_step or 0)
    if phase == 2:
        raise CheckpointError(f"--phase2 needs phase 1's checkpoint in {out} (with "
                              "--resume_from_checkpoint) or --init_checkpoint")
    return StartPoint(phase1_end_step=0)


def _nvidia_start(ckpt: dict, path: Path, args, phase: int) -> StartPoint:
    """NVIDIA's ckpt_<N>.pt in --output_dir (its training checkpoint or an NGC model-only
    file): phase 2 starts from it as NVIDIA's run_pretraining.py does (weights and LAMB
    moments kept, step and schedule reset; step numbers after --phase1_end_step, default N)."""
    n = nvidia_step(path)
    if phase == 1 or args.resume_phase2:
        raise CheckpointError(
            f"{path} is NVIDIA's checkpoint: bertforge continues NVIDIA's runs from phase 2 on (its "
            "data position and RNG state are not in the file); start phase 2 from it with --phase2, "
            "or pass it as --init_checkpoint")
    ours = {"model": master_weights(ckpt), "nvidia_moments": moments_by_name(ckpt), "step": 0,
            "phase": 1}
    end = args.phase1_end_step if args.phase1_end_step is not None else n
    return StartPoint(ours, str(path), keep_moments=True, phase1_end_step=end)


def _load_init_weights(model, path: str, device) -> dict | None:
    """Weights from --init_checkpoint (any supported format); returns the raw dict if it is a
    bertforge training checkpoint (so its optimizer state can be used)."""
    from bertforge.model.convert import (
        load_state_dict_strict,
        normalize_state_dict,
        read_state_dict,
    )

    sd, _ = read_state_dict(path)
    p = Path(path)
    obj = None
    if p.is_file():
        try:
            obj = load_checkpoint(p)
        except CheckpointError:
            obj = None
    if obj is not None and is_nvidia_checkpoint(obj):  # NVIDIA's: fp32 masters, moments by name
        sd = master_weights(obj)
        obj = {"nvidia_moments": moments_by_name(obj)} if obj.get("optimizer") else None
    load_state_dict_strict(model, normalize_state_dict(sd, model), source=f"--init_checkpoint {path}")
    return obj if obj is not None and ("optimizer" in obj or "nvidia_moments" in obj) else None


def _restore_loader(loader, state: dict, source: str | None, micro_batch: int) -> None:
    """Continue the data where the checkpoint left it; a checkpoint of a run with other data
    flags is refused in one line naming them."""
    from bertforge.data.loader import LoaderStateMismatch

    try:
        loader.load_state_dict(state)
    except LoaderStateMismatch as e:
        what = {"batch_size": f"--train_batch_size / --gradient_accumulation_steps (micro-batches "
                              f"of {e.saved} sequences then, {micro_batch} now)",
                "seed": f"--seed ({e.saved} then, {e.current} now)",
                "world_size": f"the number of processes ({e.saved} then, {e.current} now)",
                }.get(e.key, f"--input_dir (other shards: {e.saved} then, {e.current} now)")
        raise CheckpointError(
            f"checkpoint {source} was written by a run with another {what}; resume with the "
            "flags it was written with, or start a new run in another --output_dir") from None


def _reset_for_new_phase(opt_state: dict, lr: float) -> dict:
    """NVIDIA's phase-2 start: keep the moments, restart the step count and learning rate."""
    for g in opt_state["param_groups"]:
        if "step" in g:
            g["step"] = 0 if not torch.is_tensor(g["step"]) else torch.zeros_like(g["step"])
        g["lr"] = lr
        g.pop("initial_lr", None)
    for st in opt_state["state"].values():  # torch AdamW keeps the step per parameter
        if "step" in st:
            st["step"] = torch.zeros_like(st["step"]) if torch.is_tensor(st["step"]) else 0
    return opt_state


def _load_optimizer(optimizer, state: dict, source: str | None, name: str) -> None:
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"the optimizer state of {source} does not fit --optimizer {name} "
                              f"and this model: {str(e).splitlines()[0]}") from None


# -- signals -------------------------------------------------------------------------------
class _StopFlag:
    """Set by SIGTERM; read once per step (and agreed on by every rank)."""

    def __init__(self) -> None:
        self.requested = False
        self._prev = None

    def install(self) -> None:
        def handler(signum, frame):
            self.requested = True
        self._prev = signal.signal(signal.SIGTERM, handler)

    def uninstall(self) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
            self._prev = None


def _any_rank(flag: bool, group) -> bool:
    """True if ``flag`` is set on any rank (a tiny all-reduce on a CPU gloo group)."""
    if group is None:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def _gather(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (collective: all ranks call it)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device_flags(args, model, info: DistInfo) -> None:
    """--tf32 and --cuda_graphs act on CUDA; elsewhere one line each says why they cannot."""
    from bertforge.precision import configure_tf32

    why = configure_tf32(bool(getattr(args, "tf32", False)), info.device)
    if why and info.is_main:
        print(f"note: --tf32 has no effect: {why}", flush=True)
    if getattr(args, "cuda_graphs", False):
        if info.device.type == "cuda":
            model.compile(mode="reduce-overhead")  # CUDA graphs through torch.compile
        elif info.is_main:
            print("note: --cuda_graphs has no effect: CUDA graphs need a CUDA device; this run is "
                  f"on {info.device.type}", flush=True)


def dry_run(args: argparse.Namespace) -> int:
    """``--dry_run``: check the flags and the files they name, say what would run, stop."""
    from bertforge.data.loader import discover_shards

    validate_args(args)
    if args.fp16 and args.bf16:
        raise ConfigError("--fp16/--amp and --bf16 are mutually exclusive")
    config = ModelConfig.from_json_file(args.config_file)
    if args.max_seq_length > config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {args.max_seq_length} exceeds max_position_embeddings "
                          f"{config.max_position_embeddings} of {args.config_file}")
    for flag in ("input_dir", "eval_dir"):
        d = getattr(args, flag)
        if d is not None and Path(d).is_dir() and not discover_shards(d):
            raise DataError(f"no training shards (.hdf5/.h5/.parquet) in --{flag} {d}")
    if args.do_train:
        _check_vocab_of_shards(args.input_dir, args.vocab_file)
    if args.init_checkpoint and not Path(args.init_checkpoint).exists():
        raise CheckpointError(f"--init_checkpoint {args.init_checkpoint} does not exist")
    phase = 2 if args.phase2 else 1
    latest = find_latest(args.output_dir)
    if phase == 1 and latest is not None and not args.resume_from_checkpoint:
        raise ConfigError(f"--output_dir {args.output_dir} already holds checkpoints ({latest.name}); "
                          "pass --resume_from_checkpoint or use another --output_dir")
    start = (latest.name if latest is not None and args.resume_from_checkpoint else
             args.init_checkpoint or ("phase 1's last checkpoint in --output_dir" if phase == 2
                                      else "random weights"))
    if args.fp16 and not torch.cuda.is_available() and args.device != "cuda":
        print("dry run: note: --fp16 needs a CUDA device, which this machine lacks", flush=True)
    print(f"dry run: phase {phase}, {args.max_steps} steps of {args.train_batch_size} sequences per "
          f"rank ({args.gradient_accumulation_steps} micro-batches), {config.num_hidden_layers} "
          f"layers x {config.hidden_size}, data {args.input_dir}, start from {start}, "
          f"checkpoints in {args.output_dir}: flags and inputs OK", flush=True)
    return 0


# -- the run -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Pretrain as the flags say; returns the process exit status (see module docstring)."""
    validate_args(args)
    config = ModelConfig.from_json_file(args.config_file)
    if args.max_seq_length > config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {args.max_seq_length} exceeds max_position_embeddings "
                          f"{config.max_position_embeddings} of {args.config_file}")
    if config.type_vocab_size < 2:
        raise ConfigError(f"config file {args.config_file}: type_vocab_size "
                          f"{config.type_vocab_size}: sentence pairs need token types 0 and 1")
    info = init_distributed(local_rank=args.local_rank, timeout_s=args.dist_timeout,
                            device=args.device)
    try:
        require_model_memory(config, what=f"config file {args.config_file}",
                             training=args.do_train, device=info.device)
        with rank0_output_lock(args.output_dir, "--output_dir", info):
            status = _Trainer(args, config, info).run()
        barrier()  # no rank tears its connections down while a peer still finishes its work
        return status
    except RuntimeError as e:
        if info.distributed and _is_comm_failure(e):
            raise _peer_failure(e, args, info) from None
        raise
    finally:
        cleanup()


class _Trainer:
    def __init__(self, args, config: ModelConfig, info: DistInfo) -> None:
        self.args, self.config, self.info = args, config, info
        self.phase = 2 if args.phase2 else 1

    # .. setup ..................................................................................
    def _build(self) -> StartPoint | None:
        args, info = self.args, self.info
        from bertforge.model.bert import BertForPreTraining

        start = _resolve_start(args, self.phase) if args.do_train else StartPoint()
        if start.nothing_to_do:
            return start
        # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        _seed_everything(args.seed)
        model = BertForPreTraining(self.config)
        if args.checkpoint_activations:
            model.bert.encoder.gradient_checkpointing = True
        if getattr(args, "disable_jit_fusions", False):  # NVIDIA's flag: our fused blocks off
            model.set_fused(False)
        init_opt = None
        if start.checkpoint is not None:
            from bertforge.model.convert import load_state_dict_strict, normalize_state_dict

            load_state_dict_strict(model, normalize_state_dict(start.checkpoint["model"], model),
                                   source=f"checkpoint {start.source}")
        elif args.init_checkpoint:
            init_opt = _load_init_weights(model, args.init_checkpoint, info.device)
        model.to(info.device)
        self.model_core = model
        self.precision = Precision.from_flags(args.fp16, args.bf16, info.device,
                                              init_loss_scale=args.init_loss_scale,
                                              loss_scale=getattr(args, "loss_scale", 0.0))
        _device_flags(args, model, info)
        self.start = start
        self.init_opt = init_opt
        # Dropout (and dynamic masking in worker-less loaders) differ per rank, as NVIDIA seeds.
        _seed_everything(args.seed + info.rank)
        return start

    def _build_training(self) -> None:
        args, info, start = self.args, self.info, self.start
        model = self.model_core
        self.optimizer = build_optimizer(model, args.optimizer, lr=args.learning_rate,
                                         weight_decay=args.weight_decay,
                                         max_grad_norm=args.max_grad_norm)
        self.scheduler = PolyWarmUpScheduler(self.optimizer, warmup=args.warmup_proportion,
                                             total_steps=args.max_steps)
        self.step = 0
        self.phase1_end_step = start.phase1_end_step
        if (self.phase == 2 and args.phase1_end_step is None and self.init_opt is not None
                and start.checkpoint is None):
            # phase 2 from --init_checkpoint = a phase-1 training checkpoint: number after it
            self.phase1_end_step = int(self.init_opt.get("global_step", self.init_opt.get("step", 0)))
        self.skipped_total = 0
        loader_state = None
        ck = start.checkpoint
        if ck is not None and start.restore_all:
            _load_optimizer(self.optimizer, ck["optimizer"], start.source, args.optimizer)
            self.scheduler.load_state_dict(ck["lr_scheduler"])
            # The flags decide the schedule (as in NVIDIA's code); with the flags of the
            # interrupted run this changes nothing and the resume stays exact.
            self.scheduler.base_lrs = [args.learning_rate] * len(self.scheduler.base_lrs)
            self.scheduler.warmup, self.scheduler.total_steps = args.warmup_proportion, args.max_steps
            self.scheduler.load_state_dict(self.scheduler.state_dict())  # re-applies the rate
            self.precision.load_state_dict(ck.get("grad_scaler"))
            self.step = int(ck["step"])
            self.skipped_total = int(ck.get("skipped_steps", 0))
            data, rng = ck.get("data"), ck.get("rng")
            if isinstance(data, list):
                if len(data) != info.world_size:
                    raise CheckpointError(
                        f"checkpoint {start.source} was written by {len(data)} ranks; resume "
                        f"with the same number of processes (now {info.world_size})")
                loader_state = data[info.rank]
            if isinstance(rng, list) and len(rng) == info.world_size:
                self._rng_to_restore = rng[info.rank]
            self._note_numerics_change(ck.get("numerics"), start.source)
        elif start.keep_moments:
            src = ck if ck is not None else (self.init_opt or {})
            opt_state = src.get("optimizer")
            if src.get("nvidia_moments"):  # NVIDIA's LAMB moments, moved onto our parameters
                from bertforge.model.convert import normalize_state_dict

                opt_state = optimizer_state_for(src["nvidia_moments"], self.model_core, self.optimizer,
                                                normalize_state_dict)
            if opt_state is not None:
                _load_optimizer(self.optimizer, _reset_for_new_phase(opt_state, args.learning_rate),
                                start.source, args.optimizer)
                self.scheduler = PolyWarmUpScheduler(self.optimizer, warmup=args.warmup_proportion,
                                                     total_steps=args.max_steps)
        model = self.model_core
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                        gradient_as_bucket_view=True)
            if args.allreduce_post_accumulation_fp16:
                from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

                model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        self.model = model
        self.loss_fn = PretrainingLoss(dense_sequence_output=not args.no_dense_sequence_output,
                                       fused=not getattr(args, "disable_jit_fusions", False))
        self.train_step = TrainStep(model, self.optimizer, self.scheduler, self.precision,
                                    accumulation_steps=args.gradient_accumulation_steps,
                                    max_grad_norm=args.max_grad_norm,
                                    allreduce_post_accumulation=args.allreduce_post_accumulation)
        self.loader = _make_loader(args.input_dir, args, micro_batch_size(args), info,
                                   seed=args.seed + (1000 if self.phase == 2 else 0))
        if loader_state is not None:
            _restore_loader(self.loader, loader_state, start.source, micro_batch_size(args))
        # A separate CPU group for the stop flag: agreeing on it never waits for the GPU.
        self.ctrl_group = None
        if info.distributed:
            self.ctrl_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" \
                else dist.group.WORLD

    # .. helpers ...............................................................................
    def _note_numerics_change(self, recorded, source: str | None) -> None:
        """One line when this process computes with other kernels than the one that wrote the
        checkpoint (another CPU, thread count, GEMM backend, library setting): the state is
        restored exactly, but the rest of the run matches an uninterrupted one only to float
        tolerance. Checkpoints without the record (older ones) say nothing."""
        info = self.info
        if not isinstance(recorded, list) or not recorded:
            return
        mine = recorded[info.rank] if len(recorded) == info.world_size else recorded[0]
        changed = numerics_differences(mine, numerics_environment(info.device))
        if changed and info.is_main:
            print(f"note: {source} was written with other numerics ({'; '.join(changed)}): the "
                  "run continues from its exact state, but from here on it matches an "
                  "uninterrupted run only to float tolerance, not bit for bit", flush=True)

    def _epoch(self) -> int:
        return int(self.loader.state_dict().get("epoch", 0))

    def global_step(self) -> int:
        return self.step + (self.phase1_end_step if self.phase == 2 else 0)

    def _save(self, logger: Logger) -> None:
        """Collect every rank's data position and RNG, write on rank 0, wait for it."""
        args, info = self.args, self.info
        data = _gather(self.loader.state_dict(), info)
        rng = _gather(capture_rng_state(), info)
        numerics = _gather(numerics_environment(info.device), info)
        if info.is_main and not args.skip_checkpoint:
            path = Path(args.output_dir) / checkpoint_name(self.global_step())
            save_checkpoint(
                path, keep_last=args.keep_checkpoints,
                model={k: v.detach().cpu() for k, v in self.model_core.state_dict().items()},
                optimizer=self.optimizer.state_dict(),
                grad_scaler=self.precision.state_dict(),
                lr_scheduler=self.scheduler.state_dict(),
                step=self.step, phase=self.phase, global_step=self.global_step(),
                phase1_end_step=self.phase1_end_step, skipped_steps=self.skipped_total,
                data=data, rng=rng, numerics=numerics, config=self.config.to_dict(),
                args={k: v for k, v in vars(args).items()
                      if isinstance(v, (str, int, float, bool, type(None)))})
            logger.log(step="PARAMETER", data={"checkpoint": str(path)})
        if info.distributed:
            dist.barrier()

    def _check_finite(self, loss: float, weights: bool = False) -> None:
        """Stop on a non-finite loss (or, before a save, non-finite weights)."""
        what = None
        if not math.isfinite(loss):
            what = f"the training loss is {loss}"
        elif weights:
            params = [p for p in self.model_core.parameters()]
            norms = torch.stack(torch._foreach_norm(params))
            if not bool(torch.isfinite(norms).all()):  # one sync per checkpoint
                what = "the weights are no longer finite"
        if what is not None:
            latest = find_latest(self.args.output_dir)
            kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written"
            raise NonFiniteLossError(
                f"{what} at step {self.global_step()} ({self.precision.name}); stopping: {kept}. "
                "Lower --learning_rate, check the data, or use loss scaling (--fp16)")

    # .. main ..................................................................................
    def run(self) -> int:
        args, info = self.args, self.info
        t_start = time.time()
        start = self._build()
        if start.nothing_to_do:
            if info.is_main:
                print(start.nothing_to_do, flush=True)
            return 0
        if info.is_main and args.do_train:
            ensure_dir(args.output_dir)
        json_path = args.json_summary or os.path.join(args.output_dir, "dllogger.json")
        logger = Logger(json_path if info.is_main else None, stdout=info.is_main,
                        # a resumed run and phase 2 continue the file (one curve for both
                        # phases); an evaluation-only run adds to the training run's log
                        append=bool(start.restore_all) or self.phase == 2 or not args.do_train,
                        tensorboard_dir=args.tensorboard_dir if info.is_main else None)
        for metric, unit in (("e2e_train_time", "s"), ("training_sequences_per_second", "sequences/s"),
                             ("final_loss", None), ("raw_train_time", "s")):
            logger.metadata(metric, {"unit": unit})
        eval_bs = args.eval_batch_size or micro_batch_size(args)
        try:
            if not args.do_train:
                res = evaluate_mlm(self.model_core, args.eval_dir, args, info, self.precision, eval_bs)
                logger.log(step=(), data=res)
                return 0
            return self._train(logger, t_start, eval_bs)
        finally:
            logger.close()

    def _train(self, logger: Logger, t_start: float, eval_bs: int) -> int:
        args, info = self.args, self.info
        self._rng_to_restore = None
        self._build_training()
        world = info.world_size
        logger.log(step="PARAMETER", data={
            "phase": self.phase, "world_size": world, "device": str(info.device),
            "precision": self.precision.name, "optimizer": args.optimizer,
            "train_batch_size": args.train_batch_size, "micro_batch_size": micro_batch_size(args),
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "global_batch_size": global_batch_size(args, world), "learning_rate": args.learning_rate,
            "max_steps": args.max_steps, "start_step": self.step,
            "start_from": self.start.source or "random init"})
        if self.step == 0 and args.eval_dir:
            res = evaluate_mlm(self.model_core, args.eval_dir, args, info, self.precision, eval_bs)
            logger.log(step=(0, self.global_step()), data=res)
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)  # last: after anything that draws numbers
        stop = _StopFlag()
        stop.install()
        self.model.train()
        progress = None
        if info.is_main and not args.disable_progress_bar:
            from tqdm import tqdm

            progress = tqdm(total=args.max_steps, initial=self.step, desc=f"phase {self.phase}",
                            unit="step", dynamic_ncols=True)
        it = iter(self.loader)
        # NVIDIA's --steps_this_run is an absolute cap on this phase's step (both generations
        # compare it with the phase's global step after each step); -1 means --max_steps.
        end_step = args.max_steps if args.steps_this_run < 0 else min(args.max_steps, args.steps_this_run)
        source = f"--input_dir {args.input_dir}"
        A = args.gradient_accumulation_steps
        window_loss = torch.zeros((), dtype=torch.float64, device=info.device)
        window_steps, attempted, consecutive_skips = 0, 0, 0
        window_t = train_t0 = time.time()
        last_loss = float("nan")
        preempted = False
        profiler = StepProfiler(args.output_dir, start=getattr(args, "profile_start", 0),
                                rank=info.rank, enabled=getattr(args, "profile", False),
                                what="optimizer steps")
        profiler.step(self.step)
        try:
            while self.step < end_step:
                micro = [_to_device(next(it), info.device, args.max_seq_length, source) for _ in range(A)]
                if attempted == 0:  # one-time checks of the data against the flags (host syncs)
                    vmax = int(micro[0]["input_ids"].max())
                    if vmax >= self.config.padded_vocab_size:
                        raise DataError(f"{source}: token id {vmax} is outside the vocabulary of "
                                        f"{args.config_file} ({self.config.padded_vocab_size})")
                    npred = int((micro[0]["masked_lm_labels"] != -1).sum(1).max())
                    if npred > args.max_predictions_per_seq:
                        raise DataError(f"{source}: a sequence has {npred} masked tokens > "
                                        f"--max_predictions_per_seq {args.max_predictions_per_seq}")
                result = self.train_step.step(micro, self.loss_fn)
                attempted += 1
                if result.skipped:
                    self.skipped_total += 1
                    consecutive_skips += 1
                    if consecutive_skips >= 100:
                        raise NonFiniteLossError(f"100 consecutive fp16 overflows at step {self.global_step()}")
                else:
                    consecutive_skips = 0
                    self.step += 1
                    window_loss += result.loss_tensor.double()
                    window_steps += 1
                    if progress is not None:
                        progress.update(1)
                    profiler.step(self.step)
                done = self.step >= end_step
                if not result.skipped and (self.step % args.log_freq == 0 or done):
                    last_loss = result.loss  # host sync, once per log interval
                    avg = float(window_loss) / max(window_steps, 1)
                    self._check_finite(avg)
                    self._check_finite(last_loss)
                    now = time.time()
                    data = {"average_loss": avg, "step_loss": last_loss,
                            "mlm_loss": float(self.loss_fn.last_mlm), "nsp_loss": float(self.loss_fn.last_nsp),
                            "learning_rate": self.optimizer.param_groups[0]["lr"],
                            "grad_norm": result.grad_norm, "skipped_steps": self.skipped_total,
                            "sequences_per_second": global_batch_size(args, world) * window_steps / max(now - window_t, 1e-9)}
                    if result.loss_scale is not None:
                        data["loss_scale"] = result.loss_scale
                    logger.log(step=(self._epoch(), self.global_step()), data=data)
                    window_loss.zero_()
                    window_steps, window_t = 0, now
                if args.eval_dir and args.eval_freq and self.step % args.eval_freq == 0 and not result.skipped and not done:
                    res = evaluate_mlm(self.model_core, args.eval_dir, args, info, self.precision, eval_bs)
                    logger.log(step=(self._epoch(), self.global_step()), data=res)
                preempted = _any_rank(stop.requested, self.ctrl_group)
                periodic = (not result.skipped and self.step % args.num_steps_per_checkpoint == 0)
                if periodic or done or preempted:
                    last_loss = result.loss
                    self._check_finite(last_loss, weights=True)  # never save a NaN model
                    self._save(logger)
                if preempted:
                    break
        finally:
            profiler.close()
            stop.uninstall()
            if progress is not None:
                progress.close()
            if hasattr(self.loader, "close"):
                self.loader.close()
        raw = time.time() - train_t0
        final = {"e2e_train_time": time.time() - t_start,
                 "training_sequences_per_second": global_batch_size(args, world) * attempted / max(raw, 1e-9),
                 "final_loss": last_loss, "raw_train_time": raw, "skipped_steps": self.skipped_total,
                 "global_step": self.global_step()}
        if args.eval_dir and not preempted:
            final.update(evaluate_mlm(self.model_core, args.eval_dir, args, info, self.precision, eval_bs))
        # NVIDIA's two closing lines: final_loss at the last (epoch, step), then the summary
        logger.log(step=(self._epoch(), self.global_step()), data={"final_loss": last_loss})
        logger.log(step=(), data=final)
        if preempted:
            if info.is_main:
                saved = "no checkpoint (--skip_checkpoint)" if args.skip_checkpoint else "checkpoint saved"
                print(f"SIGTERM: {saved} at step {self.global_step()}; exiting with "
                      f"status {PREEMPTED_EXIT_CODE} (resume with --resume_from_checkpoint)", flush=True)
            return PREEMPTED_EXIT_CODE
        return 0
