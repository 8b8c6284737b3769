"""BERT pretraining (MLM + NSP): what a run starts from, and when it logs, evaluates, saves and stops.

:func:`run` takes a :class:`bertforge.config.PretrainConfig`. The :class:`Trainer` builds every
part of the run (model, optimizer, schedule, precision, training step, loader) and brings them to
the start :func:`bertforge.checkpoint.plan_start` decides; its loop is the policy: take a step,
then log, evaluate, save or stop when it is time. The optimizer step itself (accumulation,
autocast, no_sync, clipping) is :class:`bertforge.train.loop.TrainStep`; the loss, the data
checks and the held-out evaluation are in :mod:`bertforge.train.mlm`; the checkpoint's parts
and schema in :mod:`bertforge.checkpoint`.

Exit statuses of :func:`run`: 0 done (``--max_steps`` or ``--steps_this_run`` reached, or
nothing left to do); :data:`PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL) after SIGTERM, once a
checkpoint is saved: requeue the job with ``--resume_from_checkpoint`` to continue;
2 for user errors (bad flag, missing or corrupt file, non-finite loss).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import torch

from bertforge.checkpoint import (
    Checkpointer,
    StartPoint,
    TrainState,
    find_latest,
    load_checkpoint,
    plan_start,
)
from bertforge.config import ModelConfig, PretrainConfig
from bertforge.distributed import (
    DistInfo,
    any_rank,
    barrier,
    cleanup,
    control_group,
    init_distributed,
    is_comm_failure,
    rank0_output_lock,
    wrap_ddp,
)
from bertforge.errors import CheckpointError, ConfigError, DataError, UserError
from bertforge.files import ensure_dir
from bertforge.memory import require_model_memory
from bertforge.nvidia_checkpoint import is_nvidia_checkpoint, master_weights, optimizer_state_for
from bertforge.optim import PolyWarmUpScheduler, build_optimizer
from bertforge.precision import Precision, configure_tf32
from bertforge.profiling import StepProfiler
from bertforge.rng import RNGState, seed_everything
from bertforge.runlog import Logger, require_tensorboard
from bertforge.train.loop import StepResult, TrainStep
from bertforge.train.mlm import (
    EVAL_SEED,
    PretrainingLoss,
    check_first_batch,
    evaluate_mlm,
    make_loader,
    to_device,
)
from bertforge.train.numerics import NumericsRecord

__all__ = ["run", "dry_run", "Trainer", "ModelState", "LoaderState", "PretrainingLoss", "NonFiniteLossError", "PeerFailureError",
           "PREEMPTED_EXIT_CODE", "EVAL_SEED", "evaluate_mlm"]

#: Exit status after a SIGTERM (Slurm preemption / time limit) once the checkpoint is written.
PREEMPTED_EXIT_CODE = 75

#: fp16 overflows in a row after which the run stops (the loss scale cannot recover).
MAX_CONSECUTIVE_SKIPS = 100


class NonFiniteLossError(UserError):
    """The training loss became NaN/inf (fp32/bf16): the run stops, earlier checkpoints are kept."""


class PeerFailureError(UserError):
    """A collective failed: another rank died, hung past ``--dist_timeout`` or is unreachable."""

    exit_code = 1  # not a bad input: the job can be resubmitted as it is


def run(config: PretrainConfig) -> int:
    """Pretrain as ``config`` says; returns the process exit status (see module docstring)."""
    _check_paths(config)
    model_config = _model_config(config)
    if model_config.type_vocab_size < 2:
        raise ConfigError(f"config file {config.model.config_file}: type_vocab_size "
                          f"{model_config.type_vocab_size}: sentence pairs need token types 0 and 1")
    info = init_distributed(local_rank=config.launch.local_rank,
                            timeout_s=config.launch.dist_timeout, device=config.launch.device)
    try:
        require_model_memory(model_config, what=f"config file {config.model.config_file}",
                             training=config.training.do_train, device=info.device)
        with rank0_output_lock(config.checkpoint.output_dir, "--output_dir", info):
            status = Trainer(config, model_config, info).run()
        barrier()  # no rank tears its connections down while a peer still finishes its work
        return status
    except RuntimeError as e:
        if info.distributed and is_comm_failure(e):
            raise _peer_failure(e, config, info) from None
        raise
    finally:
        cleanup()


def dry_run(config: PretrainConfig) -> int:
    """``--dry_run``: check the settings and the files they name, say what would run, stop."""
    from bertforge.data.loader import discover_shards
    from bertforge.data.vocab import check_shards_vocab

    if config.precision.fp16 and config.precision.bf16:
        raise ConfigError("--fp16/--amp and --bf16 are mutually exclusive")
    model_config = _model_config(config)
    for flag, d in (("input_dir", config.data.input_dir), ("eval_dir", config.eval.eval_dir)):
        if d is not None and Path(d).is_dir() and not discover_shards(d):
            raise DataError(f"no training shards (.hdf5/.h5/.parquet) in --{flag} {d}")
    if config.training.do_train:
        check_shards_vocab(config.data.input_dir, config.data.vocab_file)
    init = config.model.init_checkpoint
    if init and not Path(init).exists():
        raise CheckpointError(f"--init_checkpoint {init} does not exist")
    cp, phase = config.checkpoint, config.phase.phase
    latest = find_latest(cp.output_dir)
    if phase == 1 and latest is not None and not cp.resume_from_checkpoint:
        raise ConfigError(f"--output_dir {cp.output_dir} already holds checkpoints ({latest.name}); "
                          "pass --resume_from_checkpoint or use another --output_dir")
    start = (latest.name if latest is not None and cp.resume_from_checkpoint else
             init or ("phase 1's last checkpoint in --output_dir" if phase == 2 else "random weights"))
    if config.precision.fp16 and not torch.cuda.is_available() and config.launch.device != "cuda":
        print("dry run: note: --fp16 needs a CUDA device, which this machine lacks", flush=True)
    t = config.training
    print(f"dry run: phase {phase}, {t.max_steps} steps of {t.train_batch_size} sequences per "
          f"rank ({t.gradient_accumulation_steps} micro-batches), {model_config.num_hidden_layers} "
          f"layers x {model_config.hidden_size}, data {config.data.input_dir}, start from {start}, "
          f"checkpoints in {cp.output_dir}: flags and inputs OK", flush=True)
    return 0


def _model_config(config: PretrainConfig) -> ModelConfig:
    """--config_file, checked against --max_seq_length."""
    model_config = ModelConfig.from_json_file(config.model.config_file)
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {config.data.max_seq_length} exceeds "
                          f"max_position_embeddings {model_config.max_position_embeddings} of "
                          f"{config.model.config_file}")
    return model_config


def _check_paths(config: PretrainConfig) -> None:
    """One-line errors naming the flag of a missing input."""
    if config.training.do_train and not Path(config.data.input_dir).is_dir():
        raise DataError(f"--input_dir {config.data.input_dir} is not a directory")
    if config.eval.eval_dir is not None and not Path(config.eval.eval_dir).is_dir():
        raise DataError(f"--eval_dir {config.eval.eval_dir} is not a directory")
    if config.logging.tensorboard_dir is not None:
        require_tensorboard()
    if config.data.vocab_file is not None and not Path(config.data.vocab_file).is_file():
        raise DataError(f"--vocab_file {config.data.vocab_file} does not exist")


def _peer_failure(e: BaseException, config: PretrainConfig, info: DistInfo) -> PeerFailureError:
    first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    first = first.split("] ", 1)[-1] if first.startswith("[") else first  # drop "[file.cc:537] "
    first = first.split(". ", 1)[0]  # gloo appends generic advice
    latest = find_latest(config.checkpoint.output_dir)
    return PeerFailureError(
        f"rank {info.rank} of {info.world_size}: communication with the other ranks failed "
        f"({first.strip()[:160]}): another rank died, hung longer than --dist_timeout "
        f"{config.launch.dist_timeout:g}s or is unreachable; see its log, then resume with "
        f"--resume_from_checkpoint (latest checkpoint: {latest.name if latest else 'none'})")


class _StopFlag:
    """Set by SIGTERM while installed (a ``with`` block); read once per step."""

    def __init__(self) -> None:
        self.requested = False
        self._prev = None

    def __enter__(self) -> _StopFlag:
        def handler(signum, frame):
            self.requested = True
        self._prev = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)


class _LogWindow:
    """The optimizer steps since the last log line: this rank's shares of their global-batch
    losses, summed on the device (adding one is no host sync; the log line sums them over the
    ranks), and how long they took."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.steps, self.t0 = 0, time.time()

    def add(self, result: StepResult) -> None:
        self.loss += result.share_tensor[0].double()
        self.steps += 1

    def reset(self) -> float:
        """Start a new window; returns the seconds the old one took."""
        now = time.time()
        seconds, self.t0 = now - self.t0, now
        self.loss.zero_()
        self.steps = 0
        return seconds


def _recorded_gemm(start: StartPoint, info: DistInfo) -> str | None:
    """The CPU GEMM backend the checkpoint the run continues from (a resume, or phase 2 from
    phase 1's) was computed with: this rank's ``numerics`` record (bertforge.train.numerics;
    the first rank's when the rank count differs), oneDNN for a checkpoint written before
    records existed (every earlier version of bertforge computed with it by default); None for
    a fresh start or --init_checkpoint."""
    if start.checkpoint is None:
        return None
    numerics = start.checkpoint.get("numerics")
    if not isinstance(numerics, list) or not numerics:
        return "onednn"
    mine = numerics[info.rank] if len(numerics) == info.world_size else numerics[0]
    return mine.get("cpu_gemm") if isinstance(mine, dict) else None


class Trainer:
    """One pretraining run: :meth:`run` builds it from its start point and trains."""

    def __init__(self, config: PretrainConfig, model_config: ModelConfig, info: DistInfo) -> None:
        self.cfg, self.model_config, self.info = config, model_config, info
        self.state = TrainState(phase=config.phase.phase)
        self.last_loss = float("nan")
        self.attempted = 0  # optimizer steps tried in this run, skipped ones included
        self.consecutive_skips = 0
        self.progress = None

    # .. setup ....................................................................................
    def run(self) -> int:
        cfg, info = self.cfg, self.info
        t_start = time.time()
        start = plan_start(cfg.checkpoint, cfg.phase, cfg.model.init_checkpoint) \
            if cfg.training.do_train else StartPoint()
        if start.nothing_to_do:
            if info.is_main:
                print(start.nothing_to_do, flush=True)
            return 0
        self._build_model(start)
        if info.is_main and cfg.training.do_train:
            ensure_dir(cfg.checkpoint.output_dir)
        # a resumed run and phase 2 continue the file (one curve for both phases); an
        # evaluation-only run adds to the training run's log
        logger = self._open_logger(append=start.exact or self.state.phase == 2
                                   or not cfg.training.do_train)
        try:
            if not cfg.training.do_train:
                logger.log(step=(), data=self._evaluate(self.model_core))
                return 0
            self._build_training(start)
            return self._train(logger, t_start)
        finally:
            logger.close()

    def _build_model(self, start: StartPoint) -> None:
        """The model with its start weights, on the device; the precision; the seeds."""
        from bertforge.model import gemm
        from bertforge.model.bert import BertForPreTraining

        cfg = self.cfg
        # Before any product: one CPU GEMM backend on every rank; a continued run keeps the recorded one
        gemm.configure(cfg.precision.cpu_gemm)
        gemm.settle(recorded=_recorded_gemm(start, self.info), source=start.source)
        # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(cfg.training.seed)
        model = BertForPreTraining(self.model_config)
        if cfg.model.checkpoint_activations:
            model.bert.encoder.gradient_checkpointing = True
        if not cfg.model.fused:  # --disable_jit_fusions: plain PyTorch ops
            model.set_fused(False)
        if start.checkpoint is not None:
            ModelState(model).load_state_dict(start.checkpoint["model"], source=f"checkpoint {start.source}")
        elif cfg.model.init_checkpoint:
            _load_init_weights(model, cfg.model.init_checkpoint)
        self.model_core = model.to(self.info.device)
        self.precision = Precision.from_flags(cfg.precision.fp16, cfg.precision.bf16, self.info.device,
                                              init_loss_scale=cfg.precision.init_loss_scale,
                                              loss_scale=cfg.precision.loss_scale)
        self._device_modes(model)
        # Dropout (and dynamic masking in worker-less loaders) differ per rank, as NVIDIA seeds.
        seed_everything(cfg.training.seed + self.info.rank)

    def _device_modes(self, model: torch.nn.Module) -> None:
        """--tf32 and --cuda_graphs act on CUDA; elsewhere one line each says why they cannot."""
        cfg, info = self.cfg, self.info
        why = configure_tf32(cfg.precision.tf32, info.device)
        if why and info.is_main:
            print(f"note: --tf32 has no effect: {why}", flush=True)
        if cfg.model.cuda_graphs:
            if info.device.type == "cuda":
                model.compile(mode="reduce-overhead")  # CUDA graphs through torch.compile
            elif info.is_main:
                print("note: --cuda_graphs has no effect: CUDA graphs need a CUDA device; this run "
                      f"is on {info.device.type}", flush=True)

    def _build_training(self, start: StartPoint) -> None:
        """Optimizer, schedule, training step and loader, brought to ``start``."""
        cfg, info = self.cfg, self.info
        opt = cfg.optimizer
        self.optimizer = build_optimizer(self.model_core, opt.name, lr=opt.learning_rate,
                                         weight_decay=opt.weight_decay, max_grad_norm=opt.max_grad_norm)
        self.scheduler = PolyWarmUpScheduler(self.optimizer, warmup=opt.warmup_proportion,
                                             total_steps=cfg.training.max_steps)
        self.state.phase1_end_step = start.phase1_end_step
        self.model = wrap_ddp(self.model_core, info.device, info.world_size, gradient_as_bucket_view=True,
                              fp16_allreduce=cfg.launch.allreduce_post_accumulation_fp16)
        self.loss_fn = PretrainingLoss(dense_sequence_output=cfg.model.dense_sequence_output,
                                       fused=cfg.model.fused)
        t = cfg.training
        self.train_step = TrainStep(self.model, self.optimizer, self.scheduler, self.precision,
                                    accumulation_steps=t.gradient_accumulation_steps,
                                    max_grad_norm=opt.max_grad_norm,
                                    allreduce_post_accumulation=cfg.launch.allreduce_post_accumulation,
                                    loss_normalization=t.loss_normalization)
        self.loader = make_loader(cfg.data.input_dir, cfg.data, t.micro_batch_size(), info,
                                  seed=cfg.phase.data_seed(t.seed),
                                  accumulation_steps=t.gradient_accumulation_steps,
                                  rank_order=self._rank_order())
        self.ctrl_group = control_group(info)  # the stop flag is agreed on over the CPU
        self.start = start
        self.checkpointer = Checkpointer(
            cfg.checkpoint, info,
            parts={"model": ModelState(self.model_core), "optimizer": self.optimizer,
                   "lr_scheduler": self.scheduler, "grad_scaler": self.precision,
                   "data": LoaderState(self.loader, start.source)},  # one global position
            flat_parts=(self.state, self.train_step),
            rank_parts={"numerics": NumericsRecord(info.device, info.is_main, start.source),
                        "rng": RNGState()},
            record={"config": self.model_config.to_dict(), "run_config": cfg.to_dict()})
        self.checkpointer.restore(self._in_optimizer_order(start), opt.name, opt.learning_rate)
        if start.exact and isinstance(start.checkpoint.get("data"), list) and info.is_main \
                and not self._rank_order():
            print(f"note: {start.source} was written before --loss_normalization existed (its run "
                  "normalised the loss per micro-batch); this run continues it with global_batch, "
                  "so its updates differ from the earlier code's: resume with --loss_normalization "
                  "micro_batch and as many processes to continue it exactly", flush=True)

    def _rank_order(self) -> bool:
        """--loss_normalization micro_batch: NVIDIA's per-rank sample order and masks too."""
        return self.cfg.training.loss_normalization == "micro_batch"
    def _in_optimizer_order(self, start: StartPoint) -> StartPoint:
        """NVIDIA's LAMB moments (by parameter name) as a state of this run's optimizer."""
        if start.moments_by_name is None:
            return start
        from bertforge.model.convert import normalize_state_dict

        moments = optimizer_state_for(start.moments_by_name, self.model_core, self.optimizer,
                                      normalize_state_dict)
        return dataclasses.replace(start, moments=moments, moments_by_name=None)

    def _open_logger(self, append: bool) -> Logger:
        main = self.info.is_main
        logger = Logger(self.cfg.json_summary() if main else None, stdout=main, append=append,
                        tensorboard_dir=self.cfg.logging.tensorboard_dir if main else None)
        for metric, unit in (("e2e_train_time", "s"), ("training_sequences_per_second", "sequences/s"),
                             ("final_loss", None), ("raw_train_time", "s")):
            logger.metadata(metric, {"unit": unit})
        return logger

    # .. the loop: policy ........................................................................
    def _train(self, logger: Logger, t_start: float) -> int:
        self._log_parameters(logger)
        if self.state.step == 0 and self.cfg.eval.eval_dir:
            logger.log(step=(0, self.state.global_step()), data=self._evaluate(self.model_core))
        end_step = self.cfg.training.end_step()
        self.model.train()
        self.window = _LogWindow(self.info.device)
        train_t0 = time.time()
        preempted = False
        log = self.cfg.logging
        profiler = StepProfiler(self.cfg.checkpoint.output_dir, start=log.profile_start, rank=self.info.rank,
                                enabled=log.profile, what="optimizer steps")
        profiler.step(self.state.step)
        with _StopFlag() as stop:
            self._open_progress_bar()
            it = iter(self.loader)
            try:
                while self.state.step < end_step:
                    result = self._step(it)
                    profiler.step(self.state.step)
                    done = self.state.step >= end_step
                    if self._time_to_log(result, done):
                        self._log(logger, result)
                    if self._time_to_evaluate(result, done):
                        logger.log(step=self._log_step(), data=self._evaluate(self.model_core))
                    preempted = any_rank(stop.requested, self.ctrl_group)
                    if self._time_to_save(result, done) or preempted:
                        self._save(logger, result)
                    if preempted:
                        break
            finally:
                profiler.close()
                self._close_progress_bar()
                if hasattr(self.loader, "close"):
                    self.loader.close()
        return self._finish(logger, t_start, train_t0, preempted)

    def _time_to_log(self, result: StepResult, done: bool) -> bool:
        return not result.skipped and (self.state.step % self.cfg.logging.log_freq == 0 or done)

    def _time_to_evaluate(self, result: StepResult, done: bool) -> bool:
        ev = self.cfg.eval
        return bool(ev.eval_dir and ev.eval_freq and not result.skipped and not done
                    and self.state.step % ev.eval_freq == 0)

    def _time_to_save(self, result: StepResult, done: bool) -> bool:
        every = self.cfg.checkpoint.num_steps_per_checkpoint
        return done or (not result.skipped and self.state.step % every == 0)

    # .. what the policy does ....................................................................
    def _step(self, it) -> StepResult:
        """One optimizer step over the next micro-batches; counts it (or its skip)."""
        cfg = self.cfg
        source = f"--input_dir {cfg.data.input_dir}"
        micro = [to_device(next(it), self.info.device, cfg.data.max_seq_length, source)
                 for _ in range(cfg.training.gradient_accumulation_steps)]
        if self.attempted == 0:
            check_first_batch(micro[0], vocab_size=self.model_config.padded_vocab_size,
                              config_file=cfg.model.config_file,
                              max_predictions_per_seq=cfg.data.max_predictions_per_seq, source=source)
        result = self.train_step.step(micro, self.loss_fn)
        self.attempted += 1
        if result.skipped:
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise NonFiniteLossError(f"{MAX_CONSECUTIVE_SKIPS} consecutive fp16 overflows at "
                                         f"step {self.state.global_step()}")
            return result
        self.consecutive_skips = 0
        self.state.step += 1
        self.window.add(result)
        if self.progress is not None:
            self.progress.update(1)
        return result

    def _log(self, logger: Logger, result: StepResult) -> None:
        """The log line of the steps since the last one (NVIDIA's keys). The losses are the
        global batch's: every rank's shares summed (one small all-reduce per line, on every
        rank; a host sync, once per log interval)."""
        vals = self.train_step.global_sum(torch.cat([
            self.window.loss.reshape(1), result.share_tensor.double()])).tolist()
        avg = vals[0] / max(self.window.steps, 1)
        self.last_loss = vals[1]
        self._check_finite(avg)
        self._check_finite(self.last_loss)
        steps = self.window.steps
        seconds = self.window.reset()
        data = {"average_loss": avg, "step_loss": self.last_loss,
                **dict(zip(PretrainingLoss.terms, vals[2:], strict=False)),
                "learning_rate": self.optimizer.param_groups[0]["lr"],
                "grad_norm": result.grad_norm, "skipped_steps": self.train_step.skipped_steps,
                "sequences_per_second": self._global_batch() * steps / max(seconds, 1e-9)}
        if result.loss_scale is not None:
            data["loss_scale"] = result.loss_scale
        logger.log(step=self._log_step(), data=data)

    def _evaluate(self, model) -> dict:
        return evaluate_mlm(model, self.cfg.eval, self.cfg.data, self.info, self.precision,
                            self.cfg.eval_batch_size(), rank_order=self._rank_order())

    def _save(self, logger: Logger, result: StepResult) -> None:
        # the global batch's loss of this step (every rank saves at the same step)
        self.last_loss = float(self.train_step.global_sum(result.share_tensor[0].double()))
        self._check_finite(self.last_loss, weights=True)  # never save a NaN model
        path = self.checkpointer.save(self.state.global_step())
        if path is not None:
            logger.log(step="PARAMETER", data={"checkpoint": str(path)})

    def _finish(self, logger: Logger, t_start: float, train_t0: float, preempted: bool) -> int:
        raw = time.time() - train_t0
        final = {"e2e_train_time": time.time() - t_start,
                 "training_sequences_per_second": self._global_batch() * self.attempted / max(raw, 1e-9),
                 "final_loss": self.last_loss, "raw_train_time": raw,
                 "skipped_steps": self.train_step.skipped_steps, "global_step": self.state.global_step()}
        if self.cfg.eval.eval_dir and not preempted:
            final.update(self._evaluate(self.model_core))
        # NVIDIA's two closing lines: final_loss at the last (epoch, step), then the summary
        logger.log(step=self._log_step(), data={"final_loss": self.last_loss})
        logger.log(step=(), data=final)
        if not preempted:
            return 0
        if self.info.is_main:
            saved = "no checkpoint (--skip_checkpoint)" if self.cfg.checkpoint.skip_checkpoint \
                else "checkpoint saved"
            print(f"SIGTERM: {saved} at step {self.state.global_step()}; exiting with "
                  f"status {PREEMPTED_EXIT_CODE} (resume with --resume_from_checkpoint)", flush=True)
        return PREEMPTED_EXIT_CODE

    # .. helpers .................................................................................
    def _log_parameters(self, logger: Logger) -> None:
        cfg, world = self.cfg, self.info.world_size
        logger.log(step="PARAMETER", data={
            "phase": self.state.phase, "world_size": world, "device": str(self.info.device),
            "precision": self.precision.name, "optimizer": cfg.optimizer.name,
            "train_batch_size": cfg.training.train_batch_size,
            "micro_batch_size": cfg.training.micro_batch_size(),
            "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
            "global_batch_size": self._global_batch(),
            "loss_normalization": cfg.training.loss_normalization,
            "learning_rate": cfg.optimizer.learning_rate,
            "max_steps": cfg.training.max_steps, "start_step": self.state.step,
            "start_from": self.start.source or "random init"})

    def _global_batch(self) -> int:
        return self.cfg.training.global_batch_size(self.info.world_size)

    def _log_step(self) -> tuple[int, int]:
        """dllogger's (epoch, global step) of a training-time record."""
        return int(self.loader.state_dict().get("epoch", 0)), self.state.global_step()

    def _open_progress_bar(self) -> None:
        if self.info.is_main and self.cfg.logging.progress_bar:
            from tqdm import tqdm

            self.progress = tqdm(total=self.cfg.training.max_steps, initial=self.state.step,
                                 desc=f"phase {self.state.phase}", unit="step", dynamic_ncols=True)

    def _close_progress_bar(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def _check_finite(self, loss: float, weights: bool = False) -> None:
        """Stop on a non-finite loss (or, before a save, non-finite weights)."""
        what = None
        if not math.isfinite(loss):
            what = f"the training loss is {loss}"
        elif weights:
            norms = torch.stack(torch._foreach_norm(list(self.model_core.parameters())))
            if not bool(torch.isfinite(norms).all()):  # one sync per checkpoint
                what = "the weights are no longer finite"
        if what is not None:
            latest = find_latest(self.cfg.checkpoint.output_dir)
            kept = f"the last good checkpoint {latest} is kept" if latest else "no checkpoint was written"
            raise NonFiniteLossError(
                f"{what} at step {self.state.global_step()} ({self.precision.name}); stopping: {kept}. "
                "Lower --learning_rate, check the data, or use loss scaling (--fp16)")


class ModelState:
    """The model as a checkpoint part: CPU copies of its tensors, loaded back strictly by name
    (a missing or unexpected tensor is a CheckpointError naming ``source``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        from bertforge.model.convert import load_state_dict_strict, normalize_state_dict

        load_state_dict_strict(self.model, normalize_state_dict(state, self.model), source=source)


class LoaderState:
    """The data loader as a checkpoint part: one global position, which any number of ranks
    continues (the per-rank positions of format-1 checkpoints too); the position of a run with
    another global batch or other data flags is refused in one line naming them."""

    def __init__(self, loader, source: str | None) -> None:
        self.loader, self.source = loader, source

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict | list) -> None:
        from bertforge.data.loader import LoaderStateMismatch

        try:
            self.loader.load_state_dict(state)
        except LoaderStateMismatch as e:
            what = {"global_batch_size": f"global batch (--train_batch_size x processes: {e.saved} "
                                         f"sequences then, {e.current} now)",
                    "seed": f"--seed ({e.saved} then, {e.current} now)",
                    }.get(e.key, f"--input_dir (other shards: {e.saved} then, {e.current} now)")
            raise CheckpointError(
                f"checkpoint {self.source} was written by a run with another {what}; resume with "
                "the flags it was written with, or start a new run in another --output_dir") from None


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    """Weights from --init_checkpoint, in any format :func:`read_state_dict` reads (from
    NVIDIA's training checkpoints their fp32 master weights)."""
    from bertforge.model.convert import (
        load_state_dict_strict,
        normalize_state_dict,
        read_state_dict,
    )

    sd = None
    if Path(path).is_file():
        try:
            obj = load_checkpoint(path)
        except CheckpointError:
            obj = None
        if is_nvidia_checkpoint(obj):  # NVIDIA's: the fp32 master weights of a 2020 file
            sd = master_weights(obj)
    if sd is None:
        sd, _ = read_state_dict(path)
    load_state_dict_strict(model, normalize_state_dict(sd, model), source=f"--init_checkpoint {path}")
