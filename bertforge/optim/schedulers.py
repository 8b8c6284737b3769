"""Learning-rate schedules of NVIDIA's BERT (``schedulers.py``), as small stateful objects.

Every schedule is a function ``f(progress)`` of ``progress = step / total_steps`` that
multiplies each group's base learning rate. Convention (NVIDIA's order): the training
loop calls :meth:`step` right *before* each optimizer update, so update ``k`` (1-based)
runs with ``lr = base_lr * f(k / total_steps)``; a skipped (overflow) update does not call
it, so the schedule does not advance. On construction the rate is ``base_lr * f(0)``.

``state_dict()`` holds the step count and base rates, which is all a resume needs.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "WarmupScheduler", "PolyWarmUpScheduler", "LinearWarmUpScheduler",
    "ConstantWarmUpScheduler", "CosineWarmUpScheduler", "warmup_linear", "warmup_poly",
]


def warmup_poly(progress: float, warmup: float, degree: float = 0.5) -> float:
    """Linear warmup to 1 over ``warmup`` (a fraction of training), then ``(1 - progress)^degree``."""
    if progress < warmup:
        return progress / warmup
    return max(1.0 - progress, 0.0) ** degree


def warmup_linear(progress: float, warmup: float) -> float:
    """NVIDIA's ``warmup_linear``: linear warmup, then linear decay to 0 at ``progress = 1``."""
    if progress < warmup:
        return progress / warmup
    return max((1.0 - progress) / (1.0 - warmup), 0.0)  # +0.0 at the end (no "-0.0" in logs)


def warmup_constant(progress: float, warmup: float) -> float:
    return progress / warmup if progress < warmup else 1.0


def warmup_cosine(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class WarmupScheduler:
    """Base class: sets ``group["lr"] = base_lr * factor(step / total_steps)``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` is driven.
        warmup: warmup length as a fraction of ``total_steps`` (NVIDIA's ``warmup_proportion``).
        total_steps: number of optimizer updates of the whole schedule (> 0).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup proportion must be in [0, 1), got {warmup}")
        self.optimizer = optimizer
        self.warmup = float(warmup)
        self.total_steps = int(total_steps)
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs, strict=True):
            g["initial_lr"] = lr
        self.last_epoch = 0  # number of step() calls so far (torch's name)
        self._apply()

    def factor(self, progress: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch / self.total_steps)
        return [lr * f for lr in self.base_lrs]

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            g["lr"] = lr

    def step(self) -> None:
        """Advance one update and set the rate that this update uses."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "warmup": self.warmup, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.warmup = float(state["warmup"])
        self.total_steps = int(state["total_steps"])
        self._apply()


class PolyWarmUpScheduler(WarmupScheduler):
    """NVIDIA's pretraining schedule: linear warmup, then ``base_lr * (1 - progress)^degree``."""

    def __init__(self, optimizer, warmup: float, total_steps: int, degree: float = 0.5) -> None:
        self.degree = float(degree)
        super().__init__(optimizer, warmup, total_steps)

    def factor(self, progress: float) -> float:
        return warmup_poly(progress, self.warmup, self.degree)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "degree": self.degree}

    def load_state_dict(self, state: dict) -> None:
        self.degree = float(state.get("degree", self.degree))
        super().load_state_dict(state)


class LinearWarmUpScheduler(WarmupScheduler):
    """Fine-tuning schedule (NVIDIA's ``warmup_linear``): warmup, then linear decay to 0."""

    def factor(self, progress: float) -> float:
        return warmup_linear(progress, self.warmup)


class ConstantWarmUpScheduler(WarmupScheduler):
    """Warmup, then the base rate."""

    def factor(self, progress: float) -> float:
        return warmup_constant(progress, self.warmup)


class CosineWarmUpScheduler(WarmupScheduler):
    """Warmup, then half a cosine to 0."""

    def factor(self, progress: float) -> float:
        return warmup_cosine(progress, self.warmup)
