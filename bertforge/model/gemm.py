"""fp32 CPU matrix products through oneDNN or PyTorch's own (MKL) GEMM, chosen per machine.

PyTorch sends fp32 ``F.linear``/``addmm``/``mm`` on the CPU to MKL's sgemm. oneDNN's JIT GEMM
(the library behind PyTorch's mkldnn ops) picks its kernels from the CPU's feature flags; which
of the two is faster depends on the CPU (docs/benchmarks.md has the measurements). Weight
gradients (g^T x, a long reduction over tokens) stay on MKL (``g.t().mm(x)``) either way.

Choosing the backend (once per process, before the first fp32 CPU product):

* policy ``onednn`` or ``aten``: that backend;
* policy ``auto`` (the default): a short measurement (~1 s) of BERT's own layer products at
  BERT-base's shapes (fused QKV, both feed-forward products, their input gradients; 1024
  tokens) on both backends, cached per CPU (model and feature flags) and torch version in
  ``$XDG_CACHE_HOME/bertforge/cpu_gemm.json`` (``~/.cache/...``). Every later process on the
  machine reuses it, whatever its model size or thread count, so separate processes of one
  run (a run and its resume, ranks, a test and the CLI it starts) make the same choice.
  Concurrent processes wait for one measurement (a file lock). Without a writable cache
  directory nothing is measured and oneDNN is used, for the same reason.

The policy comes from the command line (``--cpu_gemm``, else ``BERTFORGE_CPU_GEMM``, read by
:mod:`bertforge.cli.environment`, else ``auto``; ``PrecisionConfig.cpu_gemm``) through
:func:`configure`. The choice and its reason are printed once per process on stderr (rank 0).
:func:`choose_backend` holds the selection logic; :func:`set_backend` / :func:`backend` force a
backend (tests, A/B timing).

A training run fixes its backend before its first product with :func:`settle`: in a
distributed run rank 0 chooses and every rank adopts its choice (ranks never compute with
different backends, whatever their CPUs or caches say), and under ``auto`` a resume adopts the
backend its checkpoint records (``numerics``, bertforge.train.numerics), so a later
measurement cannot change the products of a resumed (or continued) run; an explicit policy wins over the
record (the resume's numerics note then names the change).

Used where the operands are fp32 CPU tensors, mkldnn is available and enabled
(``torch.backends.mkldnn``), and nothing is tracing, scripting, compiling, exporting or
autocasting (those see the plain ``F.linear``); everything else, CUDA included, takes PyTorch's
own ops. Results equal PyTorch's up to float reassociation (tests/unit/test_gemm.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bertforge.config import CPU_GEMM_BACKENDS, CPU_GEMM_POLICIES
from bertforge.errors import ConfigError

__all__ = ["Linear", "linear", "linear_nt", "matmul", "column_sums", "set_backend", "backend", "get_backend",
           "POLICIES", "Choice", "choose_backend", "configure",
           "measure_backends", "linear_gelu", "default_cache_dir", "describe", "cpu_model", "settle"]

_BACKENDS = CPU_GEMM_BACKENDS
POLICIES = CPU_GEMM_POLICIES
"""Values of ``--cpu_gemm`` / ``BERTFORGE_CPU_GEMM``: 'auto', 'onednn', 'aten'."""
_FALLBACK = "onednn"
"""The backend of ``auto`` when no choice can be cached (and the backend before choices existed)."""
_CACHE_NAME = "cpu_gemm.json"
_SHAPES = (768, 3072)
"""(hidden, intermediate) of the products ``auto`` times: BERT-base's."""
_state: dict = {"backend": None, "policy": None, "choice": None, "log": None}
"""``log``: a choice :func:`settle` made, printed at the first fp32 CPU product (after the run's own checks)."""


def configure(policy: str = "auto") -> None:
    """Set this process's policy ('auto', 'onednn' or 'aten'; the command line's
    ``PrecisionConfig.cpu_gemm``). The backend is chosen at the next fp32 CPU product (or by
    :func:`settle`); an entry point calls this before any product runs, so one process makes
    one choice (a choice made under another policy, e.g. by an earlier in-process call of an
    entry point, is dropped)."""
    if policy not in POLICIES:
        raise ConfigError(f"cpu_gemm {policy!r}: expected one of {', '.join(POLICIES)}")
    _state["policy"] = policy
    chosen = _state["choice"]
    if chosen is None or chosen.policy != policy:
        _state["backend"], _state["choice"], _state["log"] = None, None, None


def _policy() -> str:
    return _state["policy"] or "auto"


@dataclass(frozen=True)
class Choice:
    """The backend chosen for a process and why."""

    backend: str
    policy: str
    reason: str
    """'forced' (policy names the backend), 'measured', 'cached', 'no cache' (auto without a
    writable cache: the fallback), 'no oneDNN' (a torch build, of this or another rank,
    without it) or 'checkpoint' (auto on resume: the backend the checkpoint records)."""
    gflops: dict | None = None
    """Measured GFLOP/s per backend over the model's products ('measured'/'cached')."""
    cache_file: str | None = None
    """The cache file ('measured', 'cached', 'no cache'), or the checkpoint ('checkpoint')."""

    def message(self) -> str:
        how = {"forced": f"--cpu_gemm/BERTFORGE_CPU_GEMM={self.policy}",
               "no oneDNN": "this torch build, or another rank's, has no oneDNN",
               "no cache": f"auto: no writable cache directory, so not measured ({self.cache_file})",
               "checkpoint": f"auto: the backend {self.cache_file} was computed with, kept so the "
                             "resume stays exact"}
        if self.reason in ("measured", "cached"):
            rates = ", ".join(f"{k} {v:.1f}" for k, v in self.gflops.items())
            detail = (f"auto, {self.reason}: {rates} GFLOP/s on BERT's layer products; "
                      f"{'saved to' if self.reason == 'measured' else 'from'} {self.cache_file}")
        else:
            detail = how[self.reason]
        return f"bertforge: fp32 CPU GEMM backend {self.backend} ({detail}; override with --cpu_gemm)"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bertforge`` (``~/.cache/bertforge``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "bertforge"


def _cpuinfo_field(*keys: str) -> str:
    """The first /proc/cpuinfo line starting with one of ``keys``, its value ("" if none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_features() -> str:
    """A short digest of the CPU's feature flags: two CPUs sold under one name (e.g.
    "Intel(R) Xeon(R) Processor" in a VM) can differ in AVX-512 or AMX, and so in kernels."""
    flags = " ".join(sorted(_cpuinfo_field("flags", "Features").split()))
    return hashlib.sha1(flags.encode()).hexdigest()[:8] if flags else "unknown"


def cache_key() -> str:
    """What a cached choice belongs to: the CPU model and features and the torch version."""
    return f"{cpu_model()} [{cpu_features()}] | torch {torch.__version__}"


def measure_backends(hidden: int = _SHAPES[0], intermediate: int = _SHAPES[1], rows: int = 1024,
                     repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of each backend over one layer's products at ``rows`` tokens: x W^T for the fused
    QKV [3H, H] and both feed-forward weights, and the input gradients g W of QKV and the first
    feed-forward. Backends alternate; each product's best of ``repeats`` counts. Uses a private
    random generator (the global RNG streams of the run are untouched)."""
    g = torch.Generator().manual_seed(0)
    H, inter, T = hidden, intermediate, rows
    x, a = torch.randn(T, H, generator=g), torch.randn(T, inter, generator=g)
    gq = torch.randn(T, 3 * H, generator=g)
    wq, w1, w2 = (torch.randn(3 * H, H, generator=g), torch.randn(inter, H, generator=g),
                  torch.randn(H, inter, generator=g))
    products = [(lambda: linear_nt(x, wq), 3 * H * H), (lambda: linear_nt(x, w1), inter * H),
                (lambda: linear_nt(a, w2), H * inter), (lambda: matmul(gq, wq), 3 * H * H),
                (lambda: matmul(a, w1), inter * H)]
    flops = 2.0 * T * sum(f for _, f in products)
    best = {b: [float("inf")] * len(products) for b in _BACKENDS}
    before = _state["backend"]
    try:
        with torch.no_grad():
            for r in range(repeats + 1):  # round 0 warms up (oneDNN creates its kernels)
                for b in (_BACKENDS if r % 2 == 0 else _BACKENDS[::-1]):
                    _state["backend"] = b
                    for i, (fn, _) in enumerate(products):
                        t = time.perf_counter()
                        fn()
                        if r:
                            best[b][i] = min(best[b][i], time.perf_counter() - t)
    finally:
        _state["backend"] = before
    return {b: flops / sum(t) / 1e9 for b, t in best.items()}


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on ``directory``/cpu_gemm.lock (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(directory / (_CACHE_NAME + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def choose_backend(policy: str, *, cache_dir: str | os.PathLike | None = None, measure=None) -> Choice:
    """The backend for ``policy`` ('auto', 'onednn' or 'aten'); see the module docstring.

    ``measure() -> {backend: GFLOP/s}`` is only called by ``auto`` on a
    cache miss (tests pass a fake); ``cache_dir`` defaults to :func:`default_cache_dir`.
    """
    if policy not in POLICIES:
        raise ConfigError(f"CPU GEMM policy {policy!r}: expected one of {', '.join(POLICIES)}")
    if _ONEDNN is None:
        return Choice("aten", policy, "no oneDNN")
    if policy != "auto":
        return Choice(policy, policy, "forced")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / _CACHE_NAME
    key = cache_key()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):  # one measurement even when several processes start at once
            entry = _read_cache(path).get(key)
            if isinstance(entry, dict) and entry.get("backend") in _BACKENDS:
                return Choice(entry["backend"], policy, "cached", entry.get("gflops"), str(path))
            rates = (measure or measure_backends)()
            chosen = max(_BACKENDS, key=lambda b: rates[b])
            data = _read_cache(path)
            data[key] = {"backend": chosen, "gflops": {b: round(v, 1) for b, v in rates.items()},
                         "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
            return Choice(chosen, policy, "measured", data[key]["gflops"], str(path))
    except OSError:
        return Choice(_FALLBACK, policy, "no cache", cache_file=str(path))


def settle(recorded: str | None = None, source: str | None = None) -> Choice:
    """Fix this process's backend for a training run, before its first product (the choice
    is printed at that product, so a run that stops on a bad input first prints only its error).

    ``recorded``: the backend the checkpoint the run continues from was computed with (its
    ``numerics`` record, ``source`` its path). Under ``auto`` it is adopted (no measurement);
    an explicit ``--cpu_gemm``/``BERTFORGE_CPU_GEMM`` wins over it.

    In a distributed run (a process group of more than one rank) only rank 0 chooses and
    every rank adopts its choice through one ``all_gather_object``: collective, every rank
    calls it. Ranks started with different policies stop with the same ConfigError; if any
    rank's torch build lacks oneDNN, all compute on MKL.
    """
    policy = _policy()
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    choice = None
    if rank == 0:
        if policy == "auto" and recorded in _BACKENDS and _ONEDNN is not None:
            choice = Choice(recorded, policy, "checkpoint", cache_file=source)
        else:
            choice = choose_backend(policy)
    if world > 1:
        everyone: list = [None] * world
        dist.all_gather_object(everyone, (policy, _ONEDNN is not None,
                                          None if choice is None else dataclasses.asdict(choice)))
        policies = [p for p, _, _ in everyone]
        if len(set(policies)) > 1:
            raise ConfigError("the ranks were started with different --cpu_gemm/BERTFORGE_CPU_GEMM "
                              f"({', '.join(f'rank {r} {p}' for r, p in enumerate(policies))}): "
                              "give every rank the same")
        choice = Choice(**everyone[0][2])
        if choice.backend == "onednn" and not all(has for _, has, _ in everyone):
            choice = Choice("aten", policy, "no oneDNN")
    if choice != _state["choice"]:  # logged once per process, at its first fp32 CPU product
        _state["log"] = choice
    _state["backend"], _state["choice"] = choice.backend, choice
    return choice


def _log_once(choice: Choice) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_rank() != 0:
        return
    print(choice.message(), file=sys.stderr, flush=True)


def get_backend() -> str:
    """The fp32 CPU GEMM backend in use: 'onednn' or 'aten' (PyTorch's MKL path). The first call
    chooses it (:func:`choose_backend` with this process's policy) and logs the choice."""
    if _state["backend"] is None:
        choice = choose_backend(_policy())
        _state["backend"], _state["choice"] = choice.backend, choice
        _log_once(choice)
    return _state["backend"]


def describe() -> str:
    """One line: the backend in use and why (choosing it now if no product has run yet)."""
    name = get_backend()
    chosen = _state["choice"]
    return chosen.message() if chosen is not None else f"bertforge: fp32 CPU GEMM backend {name} (set in code)"


def set_backend(name: str) -> None:
    """Force the fp32 CPU GEMM backend for this process: 'onednn' or 'aten' (no measurement)."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown CPU GEMM backend {name!r}: expected one of {', '.join(_BACKENDS)}")
    _state["backend"], _state["choice"], _state["log"] = name, None, None


@contextlib.contextmanager
def backend(name: str):
    """Run a block with another CPU GEMM backend (parity tests, A/B timing)."""
    before = _state["backend"], _state["choice"]
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"], _state["choice"] = before


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
            and w.dim() == 2 and _ONEDNN is not None and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not _plain_context()
            and _product_backend() == "onednn")  # last: the first such product chooses the backend


def _product_backend() -> str:
    """:func:`get_backend` for a product: prints a choice :func:`settle` made, once."""
    pending = _state.get("log")
    if pending is not None:
        _state["log"] = None
        _log_once(pending)
    return get_backend()


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
    """g [T, N] -> [N], a bias gradient. As a matrix-vector product (BLAS gemv): 2.5x faster
    than ``g.sum(0)`` on the CPU for [2048, 3072], 2.4x for the decoder's [320, 30522]."""
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


def linear_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, approximate: str) -> torch.Tensor:
    """``F.gelu(linear(x, w, b), approximate=...)``. Without gradients on oneDNN the GELU runs
    inside the product (a post-op: no second pass over the [T, I] result; equal to float rounding)."""
    if not torch.is_grad_enabled() and use_onednn(x, w):
        return _ONEDNN(x, w, b, "gelu", [], approximate)
    return F.gelu(linear(x, w, b), approximate=approximate)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose product runs through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
