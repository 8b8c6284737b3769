"""fp32 CPU matrix products through oneDNN, the library behind PyTorch's mkldnn ops.

PyTorch sends fp32 ``F.linear``/``addmm``/``mm`` on the CPU to MKL's sgemm. oneDNN's JIT GEMM
picks its kernels from the CPU's feature flags and, on the AMD EPYC CPUs the benchmarks run on,
computes BERT's x W^T and dL/dx products faster than MKL (docs/benchmarks.md). Weight gradients
(g^T x, a long reduction over tokens) are not faster on oneDNN inside a training step, so they
stay on MKL (``g.t().mm(x)``).

Used where the operands are fp32 CPU tensors, mkldnn is available and enabled
(``torch.backends.mkldnn``), and nothing is tracing, scripting, compiling, exporting or
autocasting (those see the plain ``F.linear``); everything else, CUDA included, takes PyTorch's
own ops. Results equal PyTorch's up to float reassociation (tests/unit/test_gemm.py).

:func:`set_backend` turns it off for the process (the command lines: ``BERTFORGE_CPU_GEMM=aten``,
read by :mod:`bertforge.cli.environment`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["Linear", "linear", "linear_nt", "matmul", "column_sums", "set_backend", "backend", "get_backend"]

_BACKENDS = ("onednn", "aten")
_state = {"backend": "onednn"}


def get_backend() -> str:
    """The fp32 CPU GEMM backend in use: 'onednn' or 'aten' (PyTorch's MKL path)."""
    return _state["backend"]


def set_backend(name: str) -> None:
    """Select the fp32 CPU GEMM backend for this process: 'onednn' (default) or 'aten'."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown CPU GEMM backend {name!r}: expected one of {', '.join(_BACKENDS)}")
    _state["backend"] = name


@contextlib.contextmanager
def backend(name: str):
    """Run a block with another CPU GEMM backend (parity tests, A/B timing)."""
    before = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(before)


_ONEDNN = (getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
           if torch.backends.mkldnn.is_available() else None)
"""oneDNN's x W^T (+ b) for dense tensors; None in a torch build without oneDNN."""


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return _ONEDNN(x, w, b, "none", [], "")  # no fused activation


def _plain_context() -> bool:
    """True while the model is being traced, scripted, compiled or exported: those need ATen ops."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def use_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether x @ w^T goes through oneDNN here (fp32 CPU operands, eager, no autocast)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and w.dim() == 2 and _ONEDNN is not None and get_backend() == "onednn"
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and not _plain_context())


def linear_nt(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ w[N, K]^T (+ b [N]) -> [..., N], not differentiable (for use inside
    autograd Functions). Any strides."""
    if use_onednn(x, w):
        return _onednn_linear(x, w, b)
    return F.linear(x, w, b)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N], not differentiable (an input gradient g @ W)."""
    return linear_nt(a, b.t())


def column_sums(g: torch.Tensor) -> torch.Tensor:
    """g [T, N] -> [N], a bias gradient, as a matrix-vector product (BLAS gemv), which on the
    CPU is faster than the reduction ``g.sum(0)`` for BERT's shapes."""
    return torch.mv(g.t(), g.new_ones(g.shape[0]))


class _Linear(torch.autograd.Function):
    """y = x W^T + b with the forward and dL/dx on oneDNN, dL/dW on MKL."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _onednn_linear(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = gy.reshape(-1, gy.shape[-1])
        gx = matmul(g, w).view(*gy.shape[:-1], w.shape[1]) if need[0] else None
        gw = g.t().mm(x.reshape(-1, x.shape[-1])) if need[1] else None  # MKL: as fast here
        gb = column_sums(g) if ctx.has_bias and need[2] else None
        return gx, gw, gb


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, b)``, differentiable, on oneDNN where :func:`use_onednn` allows."""
    if not use_onednn(x, w):
        return F.linear(x, w, b)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _Linear.apply(x, w, b)
    return _onednn_linear(x, w, b)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose product runs through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
