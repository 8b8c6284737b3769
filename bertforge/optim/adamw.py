"""Adam variants for fine-tuning: torch's AdamW (foreach) and Google/NVIDIA's BertAdam.

``BertAdam`` is the optimizer of Google's original BERT (``AdamWeightDecayOptimizer``) and of
NVIDIA's fine-tuning scripts: Adam moments **without bias correction**, decoupled weight
decay, ``p <- p - lr * (m / (sqrt(v) + eps) + wd * p)``. Gradient clipping (global, after the
all-reduce) is :func:`bertforge.optim.grads.clip_to_global_norm`'s, before the update;
the learning-rate schedule by :mod:`bertforge.optim.schedulers`.
"""

from __future__ import annotations

import torch

__all__ = ["BertAdam", "make_adamw"]


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction and with decoupled weight decay (Google's BERT optimizer).

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: (b1, b2).
        eps: denominator term (Google uses 1e-6).
        weight_decay: decoupled decay of groups that do not set their own.
    """

    def __init__(self, params, lr: float = 5e-5, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01) -> None:
        if lr < 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"BertAdam: invalid lr={lr} betas={betas} eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
