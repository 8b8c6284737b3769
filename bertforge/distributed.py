"""Process-group helpers with a real CPU path: gloo on CPU, nccl on CUDA.

The rank layout comes from ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) or, under
``srun``, from ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` (with ``MASTER_ADDR`` and
``MASTER_PORT`` set by the job script). Without either, the run is a single process and
no process group is created. Collectives time out after ``timeout_s`` (default 1800 s,
``BERTFORGE_DIST_TIMEOUT`` overrides) so a dead rank makes the others fail instead of
hanging forever.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bertforge.errors import ConfigError

__all__ = ["DistInfo", "init_distributed", "get_dist_info", "is_main", "print0", "barrier",
           "cleanup", "all_reduce_mean", "env_rank_layout"]

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not an integer") from None


def env_rank_layout(local_rank_arg: int | None = None) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's or Slurm's variables, else (0, 0, 1).

    ``local_rank_arg`` is the legacy ``--local_rank`` of ``torch.distributed.launch``.
    """
    world = _int_env("WORLD_SIZE")
    if world is not None:
        rank = _int_env("RANK") or 0
        local = _int_env("LOCAL_RANK")
        if local is None:
            local = local_rank_arg if local_rank_arg is not None and local_rank_arg >= 0 else 0
        return rank, local, world
    world = _int_env("SLURM_NTASKS")
    if world is not None and world > 1:
        return _int_env("SLURM_PROCID") or 0, _int_env("SLURM_LOCALID") or 0, world
    return 0, 0, 1


def init_distributed(backend: str | None = None, timeout_s: float | None = None,
                     local_rank: int | None = None, device: str | None = None) -> DistInfo:
    """Initialise the default process group when more than one process runs.

    Args:
        backend: ``"gloo"``/``"nccl"``; default nccl when CUDA is available, else gloo.
        timeout_s: collective timeout in seconds.
        local_rank: legacy ``--local_rank`` value (used only when ``LOCAL_RANK`` is unset).
        device: ``"cpu"`` or ``"cuda"`` to force one; default CUDA when available.

    Returns:
        The :class:`DistInfo` of this process; ``device`` is ``cuda:<local_rank>`` or ``cpu``.
    """
    rank, local, world = env_rank_layout(local_rank)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("a CUDA device was asked for but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local % max(torch.cuda.device_count(), 1))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get("BERTFORGE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(f"{world} processes but {var} is not set (torchrun sets it; "
                                  "under Slurm export it in the job script)")
        backend = backend or ("nccl" if use_cuda else "gloo")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("LOCAL_RANK", str(local))
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, local, world, dev)


def get_dist_info() -> DistInfo:
    """The layout of an already initialised run (single process if none)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _int_env("LOCAL_RANK") or 0
    else:
        rank, local, world = 0, 0, 1
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() and \
        torch.cuda.is_initialized() else torch.device("cpu")
    return DistInfo(rank, local, world, dev)


def is_main() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only, flushed."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (``t`` itself in a single process). Returns a new tensor."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / dist.get_world_size()
    return t.detach()


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
