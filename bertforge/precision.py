"""Numeric precision of training, chosen in ONE place: fp32, bf16 autocast, fp16 autocast + GradScaler.

- ``fp32``: no autocast, no scaling.
- ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` on CUDA or CPU; bf16 has fp32's range,
  so no loss scaling is needed. On a CPU without native bf16 instructions it works but is
  slower than fp32 (a warning says so).
- ``fp16``: CUDA only. ``torch.autocast(dtype=torch.float16)`` plus a dynamic loss scale
  (``torch.amp.GradScaler``, starting at ``--init_loss_scale``, halved on overflow, doubled
  after 2000 clean steps). An overflowing step is skipped: no optimizer update, no LR-schedule
  step, counted in ``skipped_steps``. ``--fp16`` on a machine without CUDA is a user error
  (decision: we do not silently switch to bf16, so a run's numerics are always the ones asked for).
  ``--loss_scale S`` (S > 0, NVIDIA's 2020 flag) keeps the scale at S instead: overflowing
  steps are still skipped, the scale never changes.
- ``--tf32``: fp32 matmuls and convolutions on TF32 tensor cores (CUDA, Ampere or newer),
  :func:`configure_tf32`; without it fp32 on CUDA is full fp32.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

from bertforge.errors import ConfigError

__all__ = ["Precision", "cpu_has_native_bf16", "configure_tf32"]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def configure_tf32(enabled: bool, device: torch.device | str) -> str | None:
    """Allow (or forbid) TF32 math for fp32 matmuls and cuDNN convolutions on a CUDA device.

    Returns None when the setting acts, else the one-line reason it cannot (not a CUDA
    device, or a GPU without TF32 units) for the caller to print.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return (f"TF32 is a tensor-core mode of NVIDIA GPUs (Ampere or newer); this run is on "
                f"{device.type}, in fp32") if enabled else None
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if enabled and torch.cuda.get_device_capability(device)[0] < 8:
        return f"{torch.cuda.get_device_name(device)} has no TF32 units (Ampere or newer needed)"
    return None


class _StaticGradScaler(torch.amp.GradScaler):
    """NVIDIA's ``--loss_scale S``: a fixed scale; steps with inf/nan gradients are skipped."""

    def __init__(self, scale: float, device: str = "cuda") -> None:
        super().__init__(device, init_scale=scale)
        self._static_scale = float(scale)

    def update(self, new_scale=None) -> None:
        super().update(self._static_scale)


@dataclass
class Precision:
    """The precision of a run.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: the device the model runs on (autocast's device type is taken from it).
        scaler: a ``GradScaler`` for fp16, else None.
    """

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def from_flags(cls, fp16: bool, bf16: bool, device: torch.device | str,
                   init_loss_scale: float = 2.0**20, growth_interval: int = 2000,
                   loss_scale: float = 0.0) -> Precision:
        """Build from the ``--fp16/--amp``, ``--bf16`` and ``--loss_scale`` flags.

        Raises:
            ConfigError: both flags, or fp16 without CUDA.
        """
        device = torch.device(device)
        if fp16 and bf16:
            raise ConfigError("--fp16/--amp and --bf16 are mutually exclusive")
        if fp16:
            if device.type != "cuda":
                raise ConfigError(
                    f"--fp16/--amp needs a CUDA device (running on {device.type}); "
                    "use --bf16 or fp32 on a CPU")
            if init_loss_scale <= 0:
                raise ConfigError(f"--init_loss_scale must be positive, got {init_loss_scale}")
            if loss_scale < 0:
                raise ConfigError(f"--loss_scale must be 0 (dynamic) or positive, got {loss_scale}")
            if loss_scale > 0:
                return cls("fp16", device, _StaticGradScaler(loss_scale))
            scaler = torch.amp.GradScaler("cuda", init_scale=float(init_loss_scale),
                                          growth_interval=growth_interval)
            return cls("fp16", device, scaler)
        if bf16:
            if device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise ConfigError("--bf16: this GPU does not support bfloat16")
            if device.type == "cpu" and not cpu_has_native_bf16():
                warnings.warn("--bf16 on a CPU without native bf16 instructions: correct but "
                              "slower than fp32", stacklevel=2)
            return cls("bf16", device)
        return cls("fp32", device)

    @property
    def dtype(self) -> torch.dtype:
        """The autocast compute dtype (float32 when there is no autocast)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self):
        """A context manager for the forward pass (and the loss)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on (multiplied by the loss scale in fp16)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
