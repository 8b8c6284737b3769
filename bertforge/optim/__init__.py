"""Optimizers and learning-rate schedules.

:func:`build_optimizer` is the one way the trainers make an optimizer: it applies the one
weight-decay rule of :mod:`bertforge.optim.param_groups` and picks the implementation.
"""

from __future__ import annotations

import torch

from bertforge.optim.adamw import BertAdam, make_adamw
from bertforge.optim.grads import global_grad_norm
from bertforge.optim.lamb import LAMB, make_lamb
from bertforge.optim.param_groups import is_decayed, param_groups
from bertforge.optim.schedulers import (
    ConstantWarmUpScheduler,
    CosineWarmUpScheduler,
    LinearWarmUpScheduler,
    PolyWarmUpScheduler,
)

__all__ = [
    "build_optimizer", "LAMB", "BertAdam", "make_lamb", "make_adamw", "global_grad_norm",
    "param_groups", "is_decayed", "PolyWarmUpScheduler", "LinearWarmUpScheduler",
    "ConstantWarmUpScheduler", "CosineWarmUpScheduler", "OPTIMIZERS",
]

OPTIMIZERS = ("lamb", "adamw", "bertadam")


def build_optimizer(model_or_params, name: str = "lamb", lr: float = 1e-3,
                    weight_decay: float = 0.01, *, betas=(0.9, 0.999), eps: float = 1e-6,
                    max_grad_norm: float = 1.0) -> torch.optim.Optimizer:
    """Make the named optimizer over ``model_or_params`` with the one no-decay rule.

    Args:
        model_or_params: an ``nn.Module`` or an iterable of parameters / (name, parameter).
        name: ``"lamb"`` (apex FusedLAMB semantics; FusedLAMB itself on CUDA when apex is
            importable), ``"adamw"`` (torch AdamW, foreach) or ``"bertadam"`` (Google's BERT
            Adam: no bias correction).
        lr: base learning rate (a scheduler then drives ``group["lr"]``).
        weight_decay: decoupled decay for tensors with dim >= 2; 0 for the others.
        max_grad_norm: LAMB (apex semantics) and BertAdam clip inside their update with it;
            AdamW's gradients are clipped before its update (see
            :func:`bertforge.optim.grads.clip_to_global_norm`).
    """
    groups = param_groups(model_or_params, weight_decay)
    if not groups:
        raise ValueError("build_optimizer: no trainable parameters")
    key = name.lower()
    if key == "lamb":
        return make_lamb(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         max_grad_norm=max_grad_norm)
    if key == "adamw":
        return make_adamw(groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if key == "bertadam":
        return BertAdam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
