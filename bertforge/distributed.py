"""Process-group helpers with a real CPU path: gloo on CPU, nccl on CUDA.

The rank layout comes from ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) or, under
``srun``, from ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS`` (with ``MASTER_ADDR`` and
``MASTER_PORT`` set by the job script). Without either, the run is a single process and
no process group is created. Collectives time out after ``timeout_s`` (default 1800 s; the
command lines pass ``--dist_timeout`` or ``BERTFORGE_DIST_TIMEOUT``) so a dead rank makes the
others fail instead of hanging forever.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from bertforge.errors import ConfigError, UserError

__all__ = ["DistInfo", "init_distributed", "get_dist_info", "is_main", "print0", "barrier",
           "cleanup", "all_reduce_mean", "env_rank_layout", "rank0_output_lock", "RendezvousError",
           "gather_objects", "any_rank", "control_group", "is_comm_failure", "wrap_ddp",
           "run_as_process"]

DEFAULT_TIMEOUT_S = 1800.0

#: True once this process has joined a process group (see :func:`run_as_process`).
_joined = False


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
    A rank outside [0, world size) is a ConfigError naming the variables.
    """
    world = _int_env("WORLD_SIZE")
    if world is not None:
        rank = _int_env("RANK") or 0
        local = _int_env("LOCAL_RANK")
        if local is None:
            local = local_rank_arg if local_rank_arg is not None and local_rank_arg >= 0 else 0
        return _checked(rank, local, world, "RANK", "LOCAL_RANK", "WORLD_SIZE")
    world = _int_env("SLURM_NTASKS")
    if world is not None and world > 1:
        return _checked(_int_env("SLURM_PROCID") or 0, _int_env("SLURM_LOCALID") or 0, world,
                        "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")
    return 0, 0, 1


def _checked(rank: int, local: int, world: int, rank_var: str, local_var: str,
             world_var: str) -> tuple[int, int, int]:
    if world < 1:
        raise ConfigError(f"environment variable {world_var}={world}: must be >= 1")
    if not 0 <= rank < world:
        raise ConfigError(f"environment variable {rank_var}={rank} is outside [0, {world_var}={world})")
    if local < 0:
        raise ConfigError(f"environment variable {local_var}={local}: must be >= 0")
    return rank, local, world


class RendezvousError(UserError):
    """The processes of a multi-process run could not all meet (exit status 1: not a bad
    input; start every process, or run one without WORLD_SIZE)."""

    exit_code = 1


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
    global _joined
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
            timeout_s = DEFAULT_TIMEOUT_S
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigError(f"{world} processes but {var} is not set (torchrun sets it; "
                                  "under Slurm export it in the job script)")
        backend = backend or ("nccl" if use_cuda else "gloo")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("LOCAL_RANK", str(local))
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
            _joined = True
        except (dist.DistError, RuntimeError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise RendezvousError(
                f"rank {rank} of {world}: the {world} processes did not all join at {where} "
                f"within {timeout_s:g}s ({first}); start every rank (torchrun and srun do), "
                "or unset WORLD_SIZE to run one process") from None
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
    """Destroy the process group if there is one.

    ``destroy_process_group`` frees the group (and joins gloo's worker threads) only when its
    last handle goes; DistributedDataParallel and the control group of a finished trainer hold
    handles, and the trainer sits in reference cycles. Its garbage is collected first, so the
    group does not outlive this call and its threads never meet interpreter shutdown.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def run_as_process(main: Callable[[], object]) -> NoReturn:
    """Run an entry point's ``main()`` as the whole process and exit with its status (an int
    it returns or raises with SystemExit; a returned result that is not an int is status 0).

    A process that joined a process group ends as Python's multiprocessing ends its children:
    exit handlers run and stdout/stderr are flushed, then ``os._exit`` skips interpreter
    shutdown. A gloo worker thread that still holds a group handle when the interpreter shuts
    down (a handle kept alive by an exception's traceback, say) needs the GIL to release its
    tensors and is stopped with ``terminate called without an active exception`` (SIGABRT),
    turning a complete run's exit status 0, or a peer failure's 1, into -6. A process that
    never joined a group exits normally.
    """
    try:
        status = main()
    except SystemExit as e:
        status = e.code
    except BaseException:
        if not _joined:
            raise
        traceback.print_exc()
        status = 1
    else:  # main's return value: an exit status, or a result (fine-tuning's metrics): 0
        status = status if isinstance(status, int) else 0
    if not _joined:
        raise SystemExit(status)
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:  # SystemExit("message"): printed, exit 1, as Python does
        print(status, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code & 0xFF)


@contextlib.contextmanager
def rank0_output_lock(folder, flag: str, info: DistInfo) -> Iterator[None]:
    """Hold the lock of output ``folder`` (:func:`bertforge.outputs.output_lock`) for a run.

    Only rank 0 takes it: every rank of one job shares the folder. The other ranks get rank
    0's verdict through their own process group (a broadcast), so all ranks of a second job
    started on the same folder stop with the same one-line error, and no rank of it can
    write there; ranks of the same job are, by construction, the members of one group.
    Collective: every rank must call it.
    """
    from bertforge.outputs import output_lock

    lock, error = None, None
    if info.rank == 0:
        try:
            lock = output_lock(folder, flag).acquire()
        except UserError as e:
            error = e
    if info.world_size > 1:
        verdict = [None if error is None else str(error)]
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None and error is None:
            error = UserError(verdict[0])
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def wrap_ddp(model: torch.nn.Module, device: torch.device, world_size: int, *,
             gradient_as_bucket_view: bool = False, fp16_allreduce: bool = False) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when more than one process runs, else ``model``.

    ``fp16_allreduce`` all-reduces the gradients in fp16 (half the traffic, fp16 rounding).
    """
    if world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              gradient_as_bucket_view=gradient_as_bucket_view)
    if fp16_allreduce:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    return ddp


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order; a collective: all ranks call it."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def control_group(info: DistInfo):
    """A CPU (gloo) group for small control messages such as a stop flag, so agreeing on them
    never waits for the GPU; None in a single process."""
    if not info.distributed:
        return None
    return dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD


def any_rank(flag: bool, group) -> bool:
    """True if ``flag`` is set on any rank (a tiny all-reduce on ``group``, see control_group)."""
    if group is None:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def is_comm_failure(e: BaseException) -> bool:
    """True for the errors gloo/NCCL raise when a peer dies (connection reset) or hangs (timeout)."""
    if isinstance(e, dist.DistError):
        return True
    msg = str(e)
    return any(s in msg for s in ("gloo", "NCCL", "Connection reset by peer",
                                  "Connection closed by peer", "Timed out"))
