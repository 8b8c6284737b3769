"""One optimizer step: gradient accumulation, autocast, loss scaling, all-reduce, clipping.

:class:`TrainStep` is shared by pretraining and fine-tuning (SQuAD, GLUE): the tasks only
supply a loss (:class:`SummedLoss`) and the micro-batches of one step.

Loss normalisation (``loss_normalization``):

* ``"global_batch"`` (default): each loss term is summed over every micro-batch of every
  rank and divided by its count over the whole global batch (masked tokens for MLM,
  sequences for NSP, examples for SQuAD/GLUE). The counts come from the labels before the
  first backward, one all-reduce of a few numbers per step. The update is then that of the
  global batch, however it is split into ranks and micro-batches.
* ``"micro_batch"``: NVIDIA's: each micro-batch's loss is the mean over its own tokens, the
  micro-batch losses are averaged, and DDP averages over ranks. A micro-batch with fewer
  masked tokens weighs each of them more, so the update depends on the split.

Sync points (places where the host waits for the device) per step: none in fp32/bf16; one
in fp16 (reading the overflow flag, which ``GradScaler.step`` needs anyway). The loss and
grad norm come back as tensors; reading ``StepResult.loss`` converts them (a sync), so a
trainer reads them only every ``log_freq`` steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from bertforge.config import LOSS_NORMALIZATIONS
from bertforge.optim.grads import (
    check_clipping,
    clip_to_global_norm,
    densify_sparse_grads,
    global_grad_norm,
)
from bertforge.precision import Precision

__all__ = ["TrainStep", "StepResult", "SummedLoss", "LOSS_NORMALIZATIONS"]

class SummedLoss:
    """What a task gives :class:`TrainStep`: a loss made of terms, each a sum over items
    (masked tokens, sequences, examples) divided by the number of items.

    Subclasses implement ``counts(batch)`` -> float tensor [T] (items per term, from the
    labels alone, before any forward pass) and ``sums(model, batch)`` -> float tensor [T]
    (each term summed over its items). ``__call__(model, batch)`` -> the micro-batch mean,
    used by ``loss_normalization="micro_batch"``; by default sums / counts added up.
    """

    def counts(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def sums(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return (self.sums(model, batch) / self.counts(batch).clamp_min(1)).sum()



class StepResult:
    """The outcome of one optimizer step.

    ``loss`` (this rank's loss of the step) and ``grad_norm`` (global L2 norm of the
    all-reduced, unscaled gradient, before clipping) are floats read lazily from the tensors
    ``loss_tensor`` / ``grad_norm_tensor``, so building a result never syncs.
    ``share_tensor`` [1 + T] holds this rank's share of the global batch's loss and of each
    term: summed over ranks (:meth:`TrainStep.global_sum`) it gives the step's loss over the
    global batch, whatever the normalisation (with one process it is the loss itself).
    ``skipped`` is True when an fp16 overflow skipped the update. ``loss_scale`` is the fp16
    loss scale after the step (None otherwise).
    """

    __slots__ = ("loss_tensor", "grad_norm_tensor", "skipped", "loss_scale", "share_tensor",
                 "_loss", "_norm")

    def __init__(self, loss_tensor: torch.Tensor, skipped: bool, grad_norm_tensor: torch.Tensor,
                 loss_scale: float | None, share_tensor: torch.Tensor | None = None) -> None:
        self.loss_tensor = loss_tensor
        self.share_tensor = share_tensor if share_tensor is not None else loss_tensor.reshape(1)
        self.grad_norm_tensor = grad_norm_tensor
        self.skipped = skipped
        self.loss_scale = loss_scale
        self._loss: float | None = None
        self._norm: float | None = None

    @property
    def loss(self) -> float:
        if self._loss is None:
            self._loss = float(self.loss_tensor)
        return self._loss

    @property
    def grad_norm(self) -> float:
        if self._norm is None:
            self._norm = float(self.grad_norm_tensor)
        return self._norm

    def __repr__(self) -> str:
        return (f"StepResult(loss={self.loss:.6g}, skipped={self.skipped}, "
                f"grad_norm={self.grad_norm:.6g}, loss_scale={self.loss_scale})")


class TrainStep:
    """Runs one optimizer step over a list of micro-batches.

    Args:
        model: the model, possibly wrapped in ``DistributedDataParallel``.
        optimizer: from :func:`bertforge.optim.build_optimizer`. Clipping to the global norm
            is :func:`bertforge.optim.grads.clip_to_global_norm`'s (LAMB clips inside its
            update, at its own threshold, which must equal ``max_grad_norm``).
        lr_scheduler: a :mod:`bertforge.optim.schedulers` scheduler, or None.
        precision: a :class:`bertforge.precision.Precision`.
        accumulation_steps: the number of micro-batches of a full step.
        max_grad_norm: global gradient clipping threshold (0 disables).
        allreduce_post_accumulation: all-reduce gradients once, after the last micro-batch
            (DDP ``no_sync`` on the others). False all-reduces after every micro-batch
            (same result, more communication).
        loss_normalization: "global_batch" or "micro_batch" (module docstring). With
            "global_batch" the loss must be a :class:`SummedLoss`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler,
                 precision: Precision, *, accumulation_steps: int = 1, max_grad_norm: float = 1.0,
                 allreduce_post_accumulation: bool = True,
                 loss_normalization: str = "global_batch") -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, "
                             f"got {loss_normalization!r}")
        self.loss_normalization = loss_normalization
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.precision = precision
        self.accumulation_steps = int(accumulation_steps)
        self.max_grad_norm = float(max_grad_norm)
        self.allreduce_post_accumulation = allreduce_post_accumulation
        check_clipping(optimizer, self.max_grad_norm)
        self.skipped_steps = 0
        # every parameter the optimizer updates, in its order (one summation order for the norm)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """The count of skipped (fp16 overflow) steps: a checkpoint's ``skipped_steps``."""
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))

    @property
    def world_size(self) -> int:
        """Ranks whose gradients DDP averages (1 without DDP)."""
        return dist.get_world_size() if isinstance(self.model, DDP) else 1

    def global_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (a collective: every rank calls it at the same point)."""
        if self.world_size == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def step(self, micro_batches: Sequence[dict], loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
             ) -> StepResult:
        """Forward/backward every micro-batch, then one optimizer update.

        Args:
            micro_batches: 1..accumulation_steps batches (dicts of tensors on the device).
            loss_fn: a :class:`SummedLoss`; with ``"micro_batch"`` normalisation any
                ``loss_fn(model, batch)`` -> scalar mean over that micro-batch will do.

        Returns:
            A :class:`StepResult`.
        """
        n = len(micro_batches)
        if not 1 <= n <= self.accumulation_steps:
            raise ValueError(f"got {n} micro-batches for accumulation_steps={self.accumulation_steps}")
        if self.loss_normalization == "global_batch":
            mean_loss, share = self._backward_global(micro_batches, loss_fn)
        else:
            mean_loss, share = self._backward_micro(micro_batches, loss_fn)
        return self._update(mean_loss, share)

    def _micro_contexts(self, n: int):
        """One context per micro-batch: DDP ``no_sync`` on all but the last (see __init__)."""
        is_ddp = isinstance(self.model, DDP)
        for i in range(n):
            # DDP all-reduces gradients in backward. Between micro-batches of one step the
            # gradients are only partial sums, so with no_sync we let them accumulate locally
            # and pay for one all-reduce, in the backward of the last micro-batch.
            sync = (i == n - 1) or not self.allreduce_post_accumulation
            yield self.model.no_sync() if (is_ddp and not sync) else contextlib.nullcontext()

    def _backward_global(self, micro_batches: Sequence[dict], loss_fn: SummedLoss):
        """Every term summed over the global batch / its global count (one all-reduce)."""
        if not (hasattr(loss_fn, "counts") and hasattr(loss_fn, "sums")):
            raise TypeError("loss_normalization='global_batch' needs a SummedLoss (counts and "
                            f"sums), got {type(loss_fn).__name__}; or use 'micro_batch'")
        counts = torch.stack([loss_fn.counts(b).float() for b in micro_batches]).sum(0)  # [T]
        counts = self.global_sum(counts).clamp_min(1)
        # DDP divides the summed gradients by the number of ranks; multiplying by it here
        # leaves exactly d(sum over the global batch / count)/dw after the all-reduce.
        weight = self.world_size / counts  # [T]
        share = torch.zeros_like(counts)
        for batch, ctx in zip(micro_batches, self._micro_contexts(len(micro_batches)), strict=True):
            with ctx:
                with self.precision.autocast():
                    sums = loss_fn.sums(self.model, batch)  # [T]
                self.precision.scale((sums.float() * weight).sum()).backward()
            share += sums.detach().float() / counts
        total = share.sum()
        # this rank's loss as if it were the whole batch (the global loss with one process)
        return total * self.world_size, torch.cat([total.reshape(1), share])

    def _backward_micro(self, micro_batches: Sequence[dict], loss_fn):
        """NVIDIA's normalisation: the mean of the micro-batch means; DDP averages ranks."""
        n = len(micro_batches)
        total = None
        parts = None
        for batch, ctx in zip(micro_batches, self._micro_contexts(n), strict=True):
            with ctx:
                with self.precision.autocast():
                    loss = loss_fn(self.model, batch)
                # Each micro-batch loss is a mean over its own samples; dividing by n makes the
                # accumulated gradient the gradient of the mean over all n micro-batches. DDP
                # then averages over ranks, so N ranks x n micro-batches give the update of
                # 1 rank x N*n micro-batches when every micro-batch has as many items.
                self.precision.scale(loss.float() / n).backward()
            total = loss.detach().float() if total is None else total + loss.detach().float()
            last = getattr(loss_fn, "last_parts", None)
            if last is not None:
                parts = last.float() if parts is None else parts + last.float()
        mean_loss = total / n
        share = mean_loss.reshape(1) if parts is None else torch.cat([mean_loss.reshape(1), parts / n])
        return mean_loss, share / self.world_size

    def _update(self, mean_loss: torch.Tensor, share: torch.Tensor) -> StepResult:
        densify_sparse_grads(self._params)  # before the norm (a tied embedding without its decoder)

        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # grads now hold true values (inf/nan on overflow)
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = global_grad_norm(grads)  # of the all-reduced gradient: DDP reduced in backward
        # fp16: a non-finite norm means overflow; the step is skipped and the scale lowered.
        skipped = bool(scaler is not None and not torch.isfinite(norm))
        kwargs = {}
        if not skipped:
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()  # the rate of this update (NVIDIA's order)
            kwargs = clip_to_global_norm(self.optimizer, grads, norm, self.max_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer, **kwargs)  # does nothing on overflow
            scaler.update()
        else:
            self.optimizer.step(**kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += 1
        return StepResult(mean_loss, skipped, norm, self.precision.loss_scale, share)
