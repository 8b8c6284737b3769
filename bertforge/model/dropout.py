"""Dropout with a fast random source on the CPU.

PyTorch's CPU dropout draws every mask element from a scalar Mersenne-Twister loop; BERT-base
training at seq 128 draws ~150 M mask elements per step, a large share of a CPU step. Here the
mask comes from numpy's SFC64 generator (``random_raw``: 16 random bits per element, a
fraction of the cost per element), seeded from torch's default
generator, so ``torch.manual_seed`` and saved/restored torch RNG states reproduce masks exactly
(resume stays bit-exact). The mask is drawn, thresholded and scaled in cache-sized chunks
straight into the output (one pass, instead of ``Generator.bytes`` plus a separate scaling pass).
The keep threshold has 16-bit resolution: an element is dropped with probability
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

__all__ = ["FastDropout", "fast_dropout", "dropout_add", "dropout_mask", "scaled_mask"]

_RES = 65536
CHUNK = 1 << 18
"""Elements drawn, compared and scaled per pass (cache-sized temporaries, no mask-sized ones)."""


def _mask(shape: tuple[int, ...], p: float, dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    """(keep, scale): with ``dtype`` None keep is a uint8 mask; with a numpy float dtype it is
    keep * scale already in that dtype. One draw from torch's default CPU generator seeds the
    SFC64 stream; each element takes 16 of its bits."""
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
    n = 1
    for s in shape:
        n *= int(s)
    threshold = int(round(p * _RES))
    scale = _RES / (_RES - threshold)
    out = torch.empty(n, dtype=torch.uint8 if dtype is None else dtype)
    flat = out.numpy()
    factor = None if dtype is None else flat.dtype.type(scale)
    bitgen = np.random.SFC64(seed)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        keep = bitgen.random_raw((stop - start + 3) // 4).view(np.uint16)[: stop - start] >= threshold
        if factor is None:
            flat[start:stop] = keep
        else:
            np.multiply(keep, factor, out=flat[start:stop])
    return out.view(shape), scale


def dropout_mask(shape: tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A keep-mask of ``shape`` (uint8, 1 = keep) and the scale 1 / P(keep)."""
    return _mask(shape, p, None)


def scaled_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """keep * (1 / P(keep)) as a ``dtype`` tensor: the one factor forward and backward multiply by."""
    if dtype in (torch.float32, torch.float64, torch.float16):
        return _mask(shape, p, dtype)[0]  # scaled while drawn, no extra pass
    keep, scale = _mask(shape, p, None)
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
    return _MaskedScale.apply(x, scaled_mask(tuple(x.shape), p, x.dtype))


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``residual + F.dropout(x, p, training)``; on CPU one fused pass with the fast mask."""
    if not training or p == 0.0:
        return x + residual
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True) + residual
    return _MaskedScaleAdd.apply(x, residual, scaled_mask(tuple(x.shape), p, x.dtype))


class FastDropout(nn.Dropout):
    """Drop-in for ``nn.Dropout`` (same attribute ``p``, no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)
