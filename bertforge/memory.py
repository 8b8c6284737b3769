"""Will the model fit? One estimate from the config, checked before anything is allocated.

A model is built from its config (a file, or the config stored inside a checkpoint), so a
config asking for 10^9 positions or a hidden size of 65536 would otherwise end in an
allocator traceback after trying to allocate hundreds of GB, or in a machine swapping to
death. :func:`require_model_memory` compares what the parameters (and, to train, their
gradients and the optimizer's moments) need with the memory this process can still get,
and refuses in one line naming the size:

    weights        4 bytes per parameter (fp32 master weights, also under autocast)
    training       + 4 (gradient) + 8 (two optimizer moments: LAMB, AdamW, BertAdam)

Activations come on top and are not counted, so a refusal is certain and a pass is not a
promise. Available memory: the CUDA device's free memory, or on the host the kernel's
``MemAvailable`` capped by the cgroup (container) limit, shared by the ranks of this node.
"""

from __future__ import annotations

import os
from pathlib import Path

from bertforge.errors import ConfigError

__all__ = ["available_bytes", "require_model_memory", "BYTES_PER_PARAMETER"]

#: bytes per parameter: the fp32 weight alone, or weight + gradient + two optimizer moments
BYTES_PER_PARAMETER = {"weights": 4, "training": 16}


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, or None without a limit."""
    try:
        rel = next((ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                    if ln.startswith("0::")), None)
        if rel is None:
            return None
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((base / "memory.current").read_text().strip()), 0)
    except (OSError, ValueError):
        return None


def available_bytes(device=None) -> int | None:
    """Memory this process can still allocate on ``device`` (None: unknown, don't check)."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    host = [b for b in (_meminfo_available(), _cgroup_room()) if b is not None]
    return min(host) if host else None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e12 else f"{n / 1e12:.1f} TB"


def require_model_memory(config, *, what: str, training: bool = False, device=None,
                         already_allocated: bool = False) -> None:
    """ConfigError unless the model of ``config`` fits the memory available on ``device``.

    Args:
        config: a :class:`bertforge.config.ModelConfig`.
        what: where the config comes from, for the message (``config file x.json``).
        training: count gradients and optimizer moments, not only the weights.
        already_allocated: the weights exist already (count only what training adds).
    """
    n = config.num_parameters()
    per = BYTES_PER_PARAMETER["training" if training else "weights"]
    if already_allocated:
        per -= BYTES_PER_PARAMETER["weights"]
    need = n * per
    ranks = 1
    if device is None or getattr(device, "type", str(device)) != "cuda":
        try:  # the ranks of this node share its memory
            ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
        except ValueError:
            ranks = 1
    have = available_bytes(device)
    if have is None or need * ranks <= have:
        return
    parts = "weights, gradients and optimizer state" if training else "weights"
    ranks_note = f" x {ranks} ranks on this node" if ranks > 1 else ""
    where = "on the GPU" if device is not None and getattr(device, "type", "") == "cuda" else "here"
    raise ConfigError(
        f"{what}: the model has {n:,} parameters, whose {parts} need {_gb(need)}{ranks_note}, "
        f"more than the {_gb(have)} of memory available {where}; use a smaller config")
