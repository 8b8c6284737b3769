"""What besides code, data and flags decides the float results of a training step.

A resumed run reproduces an uninterrupted one bit for bit only if every process computes
with the same kernels: the same torch build, the same CPU instruction set (ATen, MKL and
oneDNN each pick their kernels from the CPU's features when they first run, and kernels of
different vector widths sum in different orders), the same thread count (work is split per
thread), the same CPU GEMM backend (bertforge.model.gemm) and the same library settings
(``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``, ...). None of them varies from process to process on
one machine with one environment; all of them can vary when a job is requeued onto another
node, run from another container or started with other variables.

:func:`environment` records them (a training checkpoint keeps it) and :func:`differences`
names what changed, so a resume can say that it continues exactly but will match an
uninterrupted run only to float tolerance. See docs/reliability.md ("What is bit-exact").
"""

from __future__ import annotations

import os

import torch

__all__ = ["environment", "differences", "NumericsRecord", "LIBRARY_VARIABLES"]

LIBRARY_VARIABLES = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_NUM_THREADS", "MKL_DYNAMIC",
                     "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
                     "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "BERTFORGE_CPU_GEMM")
"""Environment variables that change which kernels the libraries run (recorded when set)."""


def environment(device: torch.device | str = "cpu") -> dict[str, str]:
    """The numerics environment of this process, as plain strings (checkpoint-safe)."""
    from bertforge.model import gemm

    env = {
        "torch": str(torch.__version__),
        "cpu": gemm.cpu_model(),
        "cpu_flags": gemm.cpu_features(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "threads": str(torch.get_num_threads()),
        "cpu_gemm": gemm.get_backend(),
    }
    for var in LIBRARY_VARIABLES:
        if os.environ.get(var):
            env[f"${var}"] = str(os.environ[var])
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = str(torch.cuda.get_device_name(dev))
        env["cuda"] = str(torch.version.cuda)
        env["tf32"] = str(torch.backends.cuda.matmul.allow_tf32)
    return env


def differences(recorded: dict | None, current: dict) -> list[str]:
    """``["threads 1 -> 2", "$ONEDNN_MAX_CPU_ISA unset -> AVX2", ...]``: what differs between
    a recorded environment and this one (empty when they match or nothing was recorded)."""
    if not isinstance(recorded, dict):
        return []
    out = []
    for key in sorted(set(recorded) | set(current), key=lambda k: (k.startswith("$"), k)):
        a, b = recorded.get(key), current.get(key)
        if a != b:
            out.append(f"{key} {a if a is not None else 'unset'} -> {b if b is not None else 'unset'}")
    return out


class NumericsRecord:
    """This process's numerics as a checkpoint part, one per rank: saved as
    :func:`environment`; restoring a record says in one line (on the first rank) when this
    process computes with other kernels than the one that wrote the checkpoint: the state is
    restored exactly, but the rest of the run matches an uninterrupted one only to float
    tolerance. Checkpoints without the record (older ones) say nothing."""

    def __init__(self, device: torch.device | str, is_main: bool, source: str | None) -> None:
        self.device, self.is_main, self.source = device, is_main, source

    def state_dict(self) -> dict[str, str]:
        return environment(self.device)

    def load_state_dict(self, recorded: dict | None) -> None:
        changed = differences(recorded, environment(self.device))
        if changed and self.is_main:
            print(f"note: {self.source} was written with other numerics ({'; '.join(changed)}): the "
                  "run continues from its exact state, but from here on it matches an "
                  "uninterrupted run only to float tolerance, not bit for bit", flush=True)
