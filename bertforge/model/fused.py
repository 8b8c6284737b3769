"""Training fast paths that write backward intermediates in place.

Autograd gives every backward op a fresh output tensor. On the CPU a fresh multi-megabyte
tensor is new pages to fault in (glibc hands large freed blocks back to the system between
steps), which costs as much as the arithmetic of an element-wise op. These functions own the
intermediate gradients of a whole block, so they can reuse one buffer for several backward
ops: same formulas, same saved tensors, fewer allocations. Each has a parity test against the
plain autograd composition (tests/unit/test_fused.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from bertforge.model.gemm import column_sums, linear_nt, matmul

__all__ = ["feed_forward", "attention", "cross_entropy", "TiedGradient", "embedding_lookup", "tied_decoder",
           "GELU_APPROXIMATE"]

GELU_APPROXIMATE = {"gelu": "none", "bias_gelu": "none", "gelu_tanh": "tanh", "gelu_new": "tanh",
                    "gelu_pytorch_tanh": "tanh"}
"""Config activation names the fused feed-forward handles -> F.gelu's ``approximate``."""


class _FeedForward(torch.autograd.Function):
    """y = gelu(x W1^T + b1) W2^T + b2 for 2-D x [T, H]. Saves x, the pre-activation h and the
    activation a, as autograd would; backward turns dL/da into dL/dh in place (one [T, I]
    buffer instead of two)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, approximate):
        h = linear_nt(x, w1, b1)  # [T, I]
        a = F.gelu(h, approximate=approximate)
        ctx.approximate = approximate
        ctx.save_for_backward(x, w1, w2, h, a)
        return linear_nt(a, w2, b2)  # [T, H]

    @staticmethod
    @once_differentiable  # the backward's in-place ops are not themselves differentiable
    def backward(ctx, gy):
        x, w1, w2, h, a = ctx.saved_tensors
        gy = gy.contiguous()
        need = ctx.needs_input_grad
        gw2 = gy.t().mm(a) if need[3] else None
        gb2 = column_sums(gy) if need[4] else None
        g = matmul(gy, w2)  # dL/da [T, I], ours alone
        torch.ops.aten.gelu_backward.grad_input(g, h, approximate=ctx.approximate, grad_input=g)  # dL/dh
        gw1 = g.t().mm(x) if need[1] else None
        gb1 = column_sums(g) if need[2] else None
        gx = matmul(g, w1) if need[0] else None
        return gx, gw1, gb1, gw2, gb2, None


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 approximate: str = "none") -> torch.Tensor:
    """BERT's feed-forward block without its dropout/residual/LayerNorm: x [T, H] -> [T, H]."""
    return _FeedForward.apply(x, w1, b1, w2, b2, approximate)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b batched over all leading dims (contiguous operands, or their last-two-dims transposes)."""
    return torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])).view(*a.shape[:-1], b.shape[-1])


class _Attention(torch.autograd.Function):
    """softmax(q k^T [masked]) * drop @ v for pre-scaled q. The softmax runs in place on the
    scores; backward applies the dropout mask and the softmax backward in place on dL/dprobs.
    Saves contiguous q, k, v, the probabilities, the mask and the dropped probabilities
    (what autograd's bmm/softmax/multiply chain saves)."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, drop):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        probs = _bmm(q, k.transpose(-1, -2))  # scores [..., m, n]
        if key_mask is not None:
            probs.masked_fill_(~key_mask, torch.finfo(probs.dtype).min)
        torch.ops.aten._softmax.out(probs, -1, False, out=probs)
        dropped = probs * drop
        ctx.save_for_backward(q, k, v, probs, drop, dropped)
        return _bmm(dropped, v)  # [..., m, hd]

    @staticmethod
    @once_differentiable  # the backward's in-place ops are not themselves differentiable
    def backward(ctx, gctx):
        q, k, v, probs, drop, dropped = ctx.saved_tensors
        gctx = gctx.contiguous()
        gv = _bmm(dropped.transpose(-1, -2), gctx)
        g = _bmm(gctx, v.transpose(-1, -2))  # dL/d(dropped), ours alone
        g.mul_(drop)  # dL/dprobs
        torch.ops.aten._softmax_backward_data.out(g, probs, -1, probs.dtype, grad_input=g)  # dL/dscores
        return _bmm(g, k), _bmm(g.transpose(-1, -2), q), gv, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
              drop: torch.Tensor) -> torch.Tensor:
    """Dot-product attention with dropout on the probabilities. q [..., m, hd] (pre-scaled),
    k, v [..., n, hd]; key_mask [..., 1, n] bool (True = attend) or None; drop [..., m, n] the
    scaled keep-mask (0 or 1 / P(keep)). -> [..., m, hd]"""
    return _Attention.apply(q, k, v, key_mask, drop)


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy over rows whose label is not ``ignore_index``, their mean (``reduction``
    "mean") or sum ("sum"); backward turns the saved log-probabilities into dL/dlogits in place
    (no zero-filled one-hot gradient, no second [N, V] buffer). The saved buffer is consumed: a
    second backward through the same graph raises autograd's "modified by an inplace
    operation" error instead of a wrong gradient."""

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, reduction="mean"):
        logp = torch.log_softmax(logits, -1)  # [N, V]
        valid = labels != ignore_index
        target = labels.masked_fill(~valid, 0)[:, None]  # [N, 1]
        if reduction == "sum":
            loss = -(logp.gather(1, target).squeeze(1) * valid).sum()
            count = torch.ones((), dtype=torch.long, device=logits.device)
        else:
            count = valid.sum()
            loss = -(logp.gather(1, target).squeeze(1) * valid).sum() / count
        ctx.save_for_backward(logp, target, valid, count)
        return loss

    @staticmethod
    @once_differentiable  # the backward's in-place ops are not themselves differentiable
    def backward(ctx, g):
        logp, target, valid, count = ctx.saved_tensors
        grad = logp.exp_()  # softmax
        grad.scatter_add_(1, target, torch.full_like(target, -1, dtype=grad.dtype))  # - one-hot
        grad.mul_((valid * (g / count)).to(grad.dtype)[:, None])
        return grad, None, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)`` for
    logits [N, V]; ``reduction`` "mean" or "sum"."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return _CrossEntropy.apply(logits, labels, ignore_index, reduction)


class TiedGradient:
    """Hands the MLM decoder's dense [V, H] weight gradient to the word-embedding lookup of the
    same forward pass. The decoder's backward always runs first (its input depends on the
    lookup's output), stores its gradient here and returns none for the shared weight; the
    lookup's backward adds its rows into that tensor in place and returns the sum as the
    weight's one gradient. Autograd would instead add the two contributions out of place (a
    fresh [V, H] tensor and a full copy per step)."""

    __slots__ = ("grad",)

    def __init__(self):
        self.grad: torch.Tensor | None = None


class _EmbeddingLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, padding_idx, tied):
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.tied, ctx.weight_shape = padding_idx, tied, weight.shape
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    @once_differentiable  # the backward's in-place ops are not themselves differentiable
    def backward(ctx, g):
        (ids,) = ctx.saved_tensors
        tied = ctx.tied
        grad, tied.grad = tied.grad, None
        if grad is None:  # the decoder was not in this backward: a plain dense gradient
            grad = g.new_zeros(ctx.weight_shape)
        ids, g = ids.reshape(-1), g.reshape(-1, g.shape[-1])
        if ctx.padding_idx is not None:
            keep = ids != ctx.padding_idx
            ids, g = ids[keep], g[keep]
        grad.index_add_(0, ids, g.to(grad.dtype))
        return None, grad, None, None


def embedding_lookup(ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None,
                     tied: TiedGradient) -> torch.Tensor:
    """``F.embedding(ids, weight, padding_idx)`` whose weight gradient absorbs the tied decoder's."""
    return _EmbeddingLookup.apply(ids, weight, padding_idx, tied)


class _TiedDecoder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, tied):
        ctx.save_for_backward(h, weight)
        ctx.tied = tied
        return linear_nt(h, weight, bias)  # [M, V]

    @staticmethod
    @once_differentiable  # the backward's in-place ops are not themselves differentiable
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        g = g.contiguous()
        gw = g.t().mm(h)  # [V, H], ours alone
        tied = ctx.tied
        if tied.grad is None:
            tied.grad = gw
        else:
            tied.grad.add_(gw)
        return matmul(g, weight), None, column_sums(g), None


def tied_decoder(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tied: TiedGradient) -> torch.Tensor:
    """The MLM decoder ``h W^T + b`` for 2-D h [M, H], W the word embeddings [V, H]."""
    return _TiedDecoder.apply(h, weight, bias, tied)
