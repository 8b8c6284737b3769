"""Dropout with a fast random source on the CPU.

PyTorch's CPU dropout draws every mask element from a scalar Mersenne-Twister loop, about
40-60 ns per element: in BERT-base training at seq 128 that is ~150 M draws per step, several
seconds, a large share of a CPU step. Here the mask comes from numpy's SFC64 generator
(vectorised, ~1.5 ns per element), seeded from torch's default generator, so
``torch.manual_seed`` and saved/restored torch RNG states reproduce masks exactly (resume stays
bit-exact). The keep threshold has 16-bit resolution: an element is dropped with probability
``round(p * 65536) / 65536`` (|error| <= 7.6e-6) and kept ones are scaled by the exact inverse of
the keep probability, so the expectation is preserved exactly. The mask is saved for backward
already scaled, in the activation's dtype (0 or 1 / P(keep)), so forward and backward are one
multiply each; ``dropout_add`` also folds the residual add of BERT's output blocks into that pass.
CUDA tensors use PyTorch's (fast, Philox-based) dropout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDropout", "fast_dropout", "dropout_add", "dropout_mask"]

_RES = 65536


def dropout_mask(shape: tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A keep-mask of ``shape`` (uint8, 1 = keep) and the scale 1 / P(keep).

    One draw from torch's default CPU generator seeds a numpy SFC64 stream.
    """
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
    n = 1
    for s in shape:
        n *= int(s)
    bits = np.frombuffer(np.random.Generator(np.random.SFC64(seed)).bytes(2 * n), dtype=np.uint16)
    threshold = int(round(p * _RES))
    keep = torch.from_numpy((bits >= threshold).view(np.uint8)).view(shape)
    return keep, _RES / (_RES - threshold)


def _scaled_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """keep * (1 / P(keep)) as a ``dtype`` tensor: the one factor forward and backward multiply by."""
    keep, scale = dropout_mask(shape, p)
    if dtype == torch.float32:
        return torch.mul(keep, scale)  # uint8 x Python float -> float32 in one pass
    return keep.to(dtype).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """y = x * mask; backward multiplies by the same saved mask (one pass each way)."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class _MaskedScaleAdd(torch.autograd.Function):
    """y = residual + x * mask in one pass (dropout fused with the residual add)."""

    @staticmethod
    def forward(ctx, x, residual, mask):
        ctx.save_for_backward(mask)
        return torch.addcmul(residual, x, mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, grad, None


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` semantics; the fast mask on CPU, PyTorch's dropout elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, _scaled_mask(tuple(x.shape), p, x.dtype))


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``residual + F.dropout(x, p, training)``; on CPU one fused pass with the fast mask."""
    if not training or p == 0.0:
        return x + residual
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True) + residual
    return _MaskedScaleAdd.apply(x, residual, _scaled_mask(tuple(x.shape), p, x.dtype))


class FastDropout(nn.Dropout):
    """Drop-in for ``nn.Dropout`` (same attribute ``p``, no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
