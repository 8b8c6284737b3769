"""One optimizer step: gradient accumulation, autocast, loss scaling, all-reduce, clipping.

:class:`TrainStep` is shared by pretraining and fine-tuning (SQuAD, GLUE): the tasks only
supply a ``loss_fn(model, batch) -> loss`` and the micro-batches of one step.

Sync points (places where the host waits for the device) per step: none in fp32/bf16; one
in fp16 (reading the overflow flag, which ``GradScaler.step`` needs anyway). The loss and
grad norm come back as tensors; reading ``StepResult.loss`` converts them (a sync), so a
trainer reads them only every ``log_freq`` steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from bertforge.optim.grads import (
    check_clipping,
    clip_to_global_norm,
    densify_sparse_grads,
    global_grad_norm,
)
from bertforge.precision import Precision

__all__ = ["TrainStep", "StepResult"]


class StepResult:
    """The outcome of one optimizer step.

    ``loss`` (mean of the micro-batch losses on this rank) and ``grad_norm`` (global L2 norm of
    the all-reduced, unscaled gradient, before clipping) are floats read lazily from the
    tensors ``loss_tensor`` / ``grad_norm_tensor``, so building a result never syncs.
    ``skipped`` is True when an fp16 overflow skipped the update. ``loss_scale`` is the fp16
    loss scale after the step (None otherwise).
    """

    __slots__ = ("loss_tensor", "grad_norm_tensor", "skipped", "loss_scale", "_loss", "_norm")

    def __init__(self, loss_tensor: torch.Tensor, skipped: bool, grad_norm_tensor: torch.Tensor,
                 loss_scale: float | None) -> None:
        self.loss_tensor = loss_tensor
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
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler,
                 precision: Precision, *, accumulation_steps: int = 1, max_grad_norm: float = 1.0,
                 allreduce_post_accumulation: bool = True) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
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

    def step(self, micro_batches: Sequence[dict],
             loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]) -> StepResult:
        """Forward/backward every micro-batch, then one optimizer update.

        Args:
            micro_batches: 1..accumulation_steps batches (dicts of tensors on the device).
            loss_fn: ``loss_fn(model, batch)`` -> scalar loss, the mean over that micro-batch.

        Returns:
            A :class:`StepResult`; the loss is the mean of the micro-batch losses.
        """
        n = len(micro_batches)
        if not 1 <= n <= self.accumulation_steps:
            raise ValueError(f"got {n} micro-batches for accumulation_steps={self.accumulation_steps}")
        is_ddp = isinstance(self.model, DDP)
        total = None
        for i, batch in enumerate(micro_batches):
            # DDP all-reduces gradients in backward. Between micro-batches of one step the
            # gradients are only partial sums, so with no_sync we let them accumulate locally
            # and pay for one all-reduce, in the backward of the last micro-batch.
            sync = (i == n - 1) or not self.allreduce_post_accumulation
            ctx = self.model.no_sync() if (is_ddp and not sync) else contextlib.nullcontext()
            with ctx:
                with self.precision.autocast():
                    loss = loss_fn(self.model, batch)
                # Each micro-batch loss is a mean over its own samples; dividing by n makes the
                # accumulated gradient the gradient of the mean over all n micro-batches. DDP
                # then averages over ranks, so N ranks x n micro-batches give exactly the update
                # of 1 rank x N*n micro-batches.
                self.precision.scale(loss.float() / n).backward()
            total = loss.detach().float() if total is None else total + loss.detach().float()
        mean_loss = total / n
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
        return StepResult(mean_loss, skipped, norm, self.precision.loss_scale)
