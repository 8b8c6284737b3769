"""Dropout with a fast random source on the CPU.

PyTorch's CPU dropout draws every mask element from a scalar Mersenne-Twister loop, about
40-60 ns per element: in BERT-base training at seq 128 that is ~150 M draws per step, several
seconds, a large share of a CPU step. Here the mask comes from numpy's SFC64 generator
(vectorised, ~1.5 ns per element), seeded from torch's default generator, so
``torch.manual_seed`` and saved/restored torch RNG states reproduce masks exactly (resume stays
bit-exact). The keep threshold has 16-bit resolution: an element is dropped with probability
``round(p * 65536) / 65536`` (|error| <= 7.6e-6) and kept ones are scaled by the exact inverse of
the keep probability, so the expectation is preserved exactly. CUDA tensors use PyTorch's
(fast, Philox-based) dropout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastDropout", "fast_dropout", "dropout_mask"]

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


def _apply(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # uint8 -> float is a fast vectorised cast (bool -> float and bool masks are not, on CPU)
    return x * keep.to(x.dtype).mul_(scale)


class _MaskedScale(torch.autograd.Function):
    """y = x * keep * scale, storing only the 1-byte mask for backward (as native dropout)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _apply(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _apply(grad, keep, ctx.scale), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` semantics; the fast mask on CPU, PyTorch's dropout elsewhere."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep, scale = dropout_mask(tuple(x.shape), p)
    return _MaskedScale.apply(x, keep, scale)


class FastDropout(nn.Dropout):
    """Drop-in for ``nn.Dropout`` (same attribute ``p``, no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
