"""LAMB with apex ``FusedLAMB`` semantics, written with multi-tensor ``torch._foreach_*`` ops.

The algorithm (You et al., "Large Batch Optimization for Deep Learning", 2019, as NVIDIA's
apex ``multi_tensor_lamb`` kernel implements it), for every parameter tensor ``p`` with
gradient ``g`` at step ``t`` (``t`` counts *taken* steps, per param group):

1. Global clip, over every gradient of every group: ``n = ||(g_1, ..., g_k)||_2`` and
   ``g <- g / max(n / max_grad_norm, 1)``. In data-parallel training the gradients are
   already all-reduced here, so ``n`` is the norm of the global gradient.
2. Moments: ``m <- b1 m + (1 - b1) g``; ``v <- b2 v + (1 - b2) g^2``.
3. Adam direction with bias correction:
   ``u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * p`` (decoupled decay, adam_w_mode).
4. Trust ratio per tensor, only where weight decay applies (apex's default ``use_nvlamb=False``):
   ``r = ||p|| / ||u||`` (1 when either norm is 0); ``p <- p - lr * r * u``.
   Where ``wd == 0`` (biases, LayerNorm): ``p <- p - lr * u``.

A skipped step (fp16 overflow, see :mod:`bertforge.precision`) never reaches :meth:`LAMB.step`
(``GradScaler.step`` does not call it), so neither moments nor ``t`` advance.

On CUDA, :func:`make_lamb` returns apex's ``FusedLAMB`` when apex is importable. On the CPU
the moments and the Adam direction go through PyTorch's fused CPU Adam kernel (one pass over
gradient, moments and update instead of a dozen ``_foreach`` passes); the generic
``_foreach`` path is the reference it is tested against.
"""

from __future__ import annotations

import math

import torch

from bertforge.optim.grads import densify_sparse_grads, global_grad_norm, sum_of_squares

__all__ = ["LAMB", "make_lamb"]


class LAMB(torch.optim.Optimizer):
    """Layer-wise Adaptive Moments optimizer for Batch training (apex FusedLAMB semantics).

    Args:
        params: parameters or param groups (see :func:`bertforge.optim.param_groups.param_groups`).
        lr: learning rate.
        betas: (b1, b2) of the moment averages.
        eps: added to the denominator (apex default 1e-6).
        weight_decay: decoupled weight decay of groups that do not set their own.
        bias_correction: divide the moments by (1 - b^t).
        max_grad_norm: global gradient clipping threshold; 0 disables clipping.
        use_nvlamb: apply the trust ratio to every tensor, also those without weight decay.

    ``step(grad_norm=...)`` accepts a precomputed global gradient norm (the training loop
    computes it anyway to detect overflow and to log it), so it is not computed twice.
    """

    #: Read by :func:`bertforge.optim.grads.clip_to_global_norm`: LAMB clips inside its update
    #: (nothing clips before it) and its ``step`` takes the precomputed global norm.
    clips_grad_norm = True
    accepts_grad_norm = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
        max_grad_norm: float = 1.0,
        use_nvlamb: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"LAMB: invalid learning rate {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"LAMB: invalid betas {betas}")
        if eps <= 0:
            raise ValueError(f"LAMB: invalid eps {eps}")
        if max_grad_norm < 0:
            raise ValueError(f"LAMB: invalid max_grad_norm {max_grad_norm}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, step=0)
        super().__init__(params, defaults)
        self.max_grad_norm = float(max_grad_norm)
        self.use_nvlamb = bool(use_nvlamb)

    @torch.no_grad()
    def step(self, closure=None, *, grad_norm: torch.Tensor | None = None):
        """One LAMB update of every parameter that has a gradient.

        Args:
            closure: optional, re-evaluates the loss (as in ``torch.optim``).
            grad_norm: the global L2 norm of all gradients, if already known.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        densify_sparse_grads(p for g in self.param_groups for p in g["params"])
        all_grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not all_grads:
            return loss

        # 1. Global clipping divisor max(n / max_norm, 1), a 0-dim tensor: no host sync.
        clip_div = None
        if self.max_grad_norm > 0:
            if grad_norm is None:
                grad_norm = global_grad_norm(all_grads)
            clip_div = torch.clamp(grad_norm.to(all_grads[0].device) / self.max_grad_norm, min=1.0)

        fused = all_grads[0].device.type == "cpu" and hasattr(torch, "_fused_adamw_")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            group["step"] += 1
            t = group["step"]
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            exp_avgs, exp_avg_sqs = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            if fused and group["bias_correction"]:
                self._fused_cpu_group(params, exp_avgs, exp_avg_sqs, t, lr, beta1, beta2, eps, wd, clip_div)
                continue
            bc1 = 1.0 - beta1**t if group["bias_correction"] else 1.0
            bc2 = 1.0 - beta2**t if group["bias_correction"] else 1.0
            grads = [p.grad for p in params]
            if clip_div is not None:
                # In place (no copy of every gradient): p.grad holds the clipped gradient after
                # the step, which the training loop zeroes anyway.
                torch._foreach_div_(grads, clip_div)

            # 2. Moments.
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            del grads

            # 3. Update direction u = m_hat / (sqrt(v_hat) + eps) + wd * p.
            # With the bias corrections folded into scalars (4 passes over the tensors):
            # m_hat / (sqrt(v_hat) + eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)).
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denom, eps * math.sqrt(bc2))
            step_size = math.sqrt(bc2) / bc1
            if wd != 0:
                update = torch._foreach_mul(params, wd)
                torch._foreach_addcdiv_(update, exp_avgs, denom, value=step_size)
            else:
                update = torch._foreach_div(exp_avgs, denom)
                torch._foreach_mul_(update, step_size)
            del denom

            # 4. Per-tensor trust ratio ||p|| / ||u|| (1 where a norm is 0), only with decay.
            if self.use_nvlamb or wd != 0:
                p_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(update))
                ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm,
                                    torch.ones_like(p_norm))
                torch._foreach_mul_(update, list(ratio.unbind()))
            torch._foreach_add_(params, update, alpha=-lr)
        return loss

    def _fused_cpu_group(self, params, exp_avgs, exp_avg_sqs, t, lr, beta1, beta2, eps, wd, clip_div):
        """The same update through PyTorch's fused CPU Adam kernel (one pass over g, m, v, u).

        The kernel computes the bias-corrected Adam direction m_hat / (sqrt(v_hat) + eps) of
        the clipped gradient (``grad_scale`` divides the gradients) into buffers that start at
        zero with ``lr = -1``; decay and the trust ratio are applied on top. Groups without
        decay (and no NVLAMB) need no trust ratio: the kernel updates the parameters directly.
        """
        grads = [p.grad for p in params]
        steps = [torch.tensor(float(t)) for _ in params]
        scale = clip_div.reshape(()).float() if clip_div is not None else None
        if not (self.use_nvlamb or wd != 0):
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1,
                                beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
                                grad_scale=scale, found_inf=None)
            return
        # One tensor at a time through a scratch buffer that lives across steps: the update of
        # every parameter at once would be a fresh model-sized allocation each step (for
        # BERT-base 440 MB of new pages to fault in and zero), the scratch is one tensor's size.
        scratch = self._scratch(max(p.numel() for p in params), params[0])
        for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
            u = scratch[: p.numel()].view_as(p)
            if wd != 0:
                # u = wd * p + direction in the kernel's own pass: it scales its "parameter" by
                # (1 - lr * weight_decay) = wd for lr = -1 and weight_decay = wd - 1, then adds
                # -lr * direction. Saves a read-modify-write pass over u and p per tensor.
                u.copy_(p)
            else:
                u.zero_()
            torch._fused_adamw_([u], [g], [m], [v], [], [s], lr=-1.0, beta1=beta1, beta2=beta2,
                                weight_decay=wd - 1.0 if wd != 0 else 0.0, eps=eps, amsgrad=False,
                                maximize=False, grad_scale=scale, found_inf=None)
            p_norm, u_norm = math.sqrt(float(sum_of_squares(p))), math.sqrt(float(sum_of_squares(u)))
            ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
            p.add_(u, alpha=-lr * ratio)

    def _scratch(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        buf = getattr(self, "_scratch_buf", None)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch_buf = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf


def make_lamb(params, **kwargs) -> torch.optim.Optimizer:
    """apex ``FusedLAMB`` when importable and the parameters are on CUDA, else :class:`LAMB`.

    ``kwargs`` are LAMB's (lr, betas, eps, weight_decay, bias_correction, max_grad_norm,
    use_nvlamb); FusedLAMB takes the same names.
    """
    params = list(params)
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    if first.is_cuda:
        try:
            from apex.optimizers import FusedLAMB  # type: ignore[import-not-found]
        except ImportError:
            FusedLAMB = None
        if FusedLAMB is not None:
            opt = FusedLAMB(params, **kwargs)
            # FusedLAMB clips inside its kernel with its own max_grad_norm.
            opt.clips_grad_norm = True
            return opt
    return LAMB(params, **kwargs)
