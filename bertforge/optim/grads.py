"""Gradient helpers of the optimizer step: the global norm, sparse-to-dense, global-norm clipping.

The training step (:class:`bertforge.train.loop.TrainStep`) computes the global gradient norm
once per step (it also detects fp16 overflow and is logged) and hands it to
:func:`clip_to_global_norm`, the one place that clips. LAMB clips inside its own update, as
apex's FusedLAMB does (the gradients are divided by ``max(norm / max_grad_norm, 1)`` in the
same pass that updates the moments), so for LAMB the norm is passed to ``optimizer.step``; the
Adam variants get their gradients scaled here, before their update.
"""

from __future__ import annotations

import torch

__all__ = ["global_grad_norm", "densify_sparse_grads", "sum_of_squares", "clip_to_global_norm",
           "check_clipping"]

_HALF = (torch.float16, torch.bfloat16)
_ALIGN = 64  # bytes: PyTorch's CPU allocator aligns every new tensor to this


def _blas_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.is_contiguous()


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares of ``t`` (0-dim). Contiguous fp32/fp64 CPU tensors go through BLAS dot
    (faster than ``vector_norm`` on the CPU); others through the norm, in fp32 for 16-bit ones."""
    if _blas_ok(t):
        flat = t.view(-1)
        if flat.data_ptr() % _ALIGN:
            # BLAS dot sums in an order that depends on where the vector lies (MKL: the address
            # mod 16 bytes), and a gradient can be a view at any offset of a DDP bucket: an
            # aligned copy makes the sum depend on the values only
            flat = flat.clone()
        return torch.dot(flat, flat)
    return torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype in _HALF else None).square()


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``grads`` taken together, as a 0-dim fp32 tensor (no host sync).

    Non-finite gradients give a non-finite norm, which is how overflow is detected.
    """
    if not grads:
        return torch.zeros(())
    if all(_blas_ok(g) for g in grads):
        return torch.stack([sum_of_squares(g).float() for g in grads]).sum().sqrt()
    # Per tensor, multi-tensor kernel; 16-bit gradients accumulate in fp32 (their own dtype
    # would round each norm to 3 significant digits), the others in their own precision.
    half = [g for g in grads if g.dtype in _HALF]
    rest = [g for g in grads if g.dtype not in _HALF]
    norms = list(torch._foreach_norm(half, 2, dtype=torch.float32)) if half else []
    norms += [n.float() for n in torch._foreach_norm(rest)] if rest else []
    return torch.linalg.vector_norm(torch.stack(norms))


def densify_sparse_grads(params) -> None:
    """Make sparse ``.grad`` tensors dense in place. A tied word embedding returns a sparse
    gradient that the MLM decoder's dense one absorbs in backward; it stays sparse only when
    a loss left the decoder out, and norms, clipping and the optimizers need dense tensors."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


def _clips_inside(optimizer) -> bool:
    """True for optimizers that clip inside their own update (LAMB, apex FusedLAMB)."""
    return bool(getattr(optimizer, "clips_grad_norm", False))


def check_clipping(optimizer, max_grad_norm: float) -> None:
    """ValueError unless an optimizer that clips by itself clips at ``max_grad_norm``."""
    if _clips_inside(optimizer):
        inner = getattr(optimizer, "max_grad_norm", optimizer.defaults.get("max_grad_norm"))
        if inner is not None and float(inner) != float(max_grad_norm):
            raise ValueError(f"the optimizer clips at {inner} but TrainStep was given "
                             f"max_grad_norm={max_grad_norm}")


def clip_to_global_norm(optimizer, grads: list[torch.Tensor], norm: torch.Tensor,
                        max_grad_norm: float) -> dict:
    """Clip ``grads`` (all of ``optimizer``'s gradients) to the global norm ``max_grad_norm``.

    ``norm`` is their global norm (:func:`global_grad_norm`). Returns the keyword arguments for
    ``optimizer.step``: for an optimizer that clips inside its update (``clips_grad_norm``) the
    gradients are left alone and the norm goes to its ``step`` when it takes one
    (``accepts_grad_norm``); for the others they are scaled in place by
    ``max_grad_norm / max(norm, max_grad_norm)`` (no host sync). 0 disables clipping.
    """
    if _clips_inside(optimizer):
        return {"grad_norm": norm} if getattr(optimizer, "accepts_grad_norm", False) else {}
    if max_grad_norm > 0 and grads:
        coef = max_grad_norm / torch.clamp(norm, min=max_grad_norm)
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return {}
