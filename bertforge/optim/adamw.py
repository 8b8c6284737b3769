"""Adam variants for fine-tuning: torch's AdamW (foreach) and Google/NVIDIA's BertAdam.

``BertAdam`` is the optimizer of Google's original BERT (``AdamWeightDecayOptimizer``) and of
NVIDIA's fine-tuning scripts: Adam moments **without bias correction**, decoupled weight
decay, ``p <- p - lr * (m / (sqrt(v) + eps) + wd * p)``. It clips globally, like LAMB:
``g <- g / max(n / max_grad_norm, 1)`` with ``n`` the norm of all gradients, which
:class:`bertforge.train.loop.TrainStep` computes after the all-reduce and hands over
(``accepts_grad_norm``); the learning-rate schedule is :mod:`bertforge.optim.schedulers`'.

On the CPU (fp32, dense gradients) ``BertAdam`` runs through PyTorch's fused AdamW kernel:
one pass over parameter, gradient and both moments instead of nine ``_foreach`` passes and two
model-sized temporaries; the clipping divisor goes into that pass too (the kernel's
``grad_scale``), instead of a read-modify-write pass over every gradient before it. The kernel's bias corrections ``1 - beta^t`` are exactly 1 for the
step count it is handed (2^60: ``beta^t`` underflows to 0), which leaves BertAdam's update,
``p <- p (1 - lr wd) - lr m / (sqrt(v) + eps)``, equal to the ``_foreach`` reference up to
float reassociation (tests/unit/test_adamw.py).
"""

from __future__ import annotations

import torch

from bertforge.optim.lamb import global_grad_norm

__all__ = ["BertAdam", "make_adamw"]


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction and with decoupled weight decay (Google's BERT optimizer).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: (b1, b2).
        eps: denominator term (Google uses 1e-6).
        weight_decay: decoupled decay of groups that do not set their own.
        max_grad_norm: global gradient clipping threshold; 0 disables clipping.
    """

    clips_grad_norm = True
    accepts_grad_norm = True
    _NO_BIAS_CORRECTION_STEP = 2.0**60
    """The step count handed to the fused kernel: beta^t == 0 in double, so 1 - beta^t == 1."""

    def __init__(self, params, lr: float = 5e-5, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0, fused: bool | None = None) -> None:
        """``fused``: None uses PyTorch's fused kernel where it applies (CPU fp32 tensors),
        False always the ``_foreach`` reference."""
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or max_grad_norm < 0:
            raise ValueError(f"BertAdam: invalid lr={lr} betas={betas} eps={eps} max_grad_norm={max_grad_norm}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.fused = fused
        self.max_grad_norm = float(max_grad_norm)
        self._kernel_steps: list[torch.Tensor] = []

    def _use_fused(self, params: list[torch.Tensor]) -> bool:
        return (self.fused is not False and hasattr(torch, "_fused_adamw_")
                and all(p.device.type == "cpu" and p.dtype == torch.float32 and p.grad.dtype == torch.float32
                        and not p.grad.is_sparse for p in params))

    @torch.no_grad()
    def step(self, closure=None, *, grad_norm: torch.Tensor | None = None):
        """One update of every parameter with a gradient; ``grad_norm``: the global L2 norm of all
        gradients when already known (else computed here when clipping)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip_div = None  # max(n / max_grad_norm, 1), a 0-dim tensor: no host sync
        if self.max_grad_norm > 0:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                if grad_norm is None:
                    grad_norm = global_grad_norm(grads)
                clip_div = torch.clamp(grad_norm.to(grads[0].device).float() / self.max_grad_norm, min=1.0)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            ms, vs = [], []
            for p in params:
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                ms.append(st["exp_avg"])
                vs.append(st["exp_avg_sq"])
            grads = [p.grad for p in params]
            if self._use_fused(params):
                if len(self._kernel_steps) < len(params):  # read-only step counts, shared by groups
                    self._kernel_steps = [torch.tensor(self._NO_BIAS_CORRECTION_STEP) for _ in params]
                torch._fused_adamw_(params, grads, ms, vs, [], self._kernel_steps[:len(params)], lr=group["lr"],
                                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                                    eps=group["eps"], amsgrad=False, maximize=False, grad_scale=clip_div,
                                    found_inf=None)
                continue
            if clip_div is not None:
                torch._foreach_div_(grads, clip_div)  # in place: the loop zeroes them after the step
            torch._foreach_mul_(ms, beta1)
            torch._foreach_add_(ms, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(ms, denom)  # m / (sqrt(v) + eps): no bias correction
            del denom
            if group["weight_decay"] != 0:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def make_adamw(params, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999),
               eps: float = 1e-6) -> torch.optim.Optimizer:
    """torch's AdamW (bias-corrected, decoupled decay) with the multi-tensor implementation."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             foreach=True)
