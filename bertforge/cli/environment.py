"""The environment variables bertforge reads, read in this one place, at the command line.

Library code takes these settings as arguments (:class:`bertforge.config.PrecisionConfig`,
:class:`bertforge.config.LaunchConfig`); the entry points read the environment once, here,
and pass them on. The rank layout of torchrun and Slurm (``RANK``, ``WORLD_SIZE``,
``SLURM_PROCID``, ...) is the launchers' protocol and stays in :mod:`bertforge.distributed`.

- ``BERTFORGE_CPU_GEMM``: ``auto``, ``onednn`` or ``aten``, the fp32 CPU matrix products
  (:mod:`bertforge.model.gemm`), when ``--cpu_gemm`` is not given (unset: ``auto``).
- ``BERTFORGE_DIST_TIMEOUT``: seconds a collective waits for a dead rank, for the entry
  points without ``--dist_timeout`` and as that flag's default.
- ``TOKENIZERS_PARALLELISM`` is written, not read: see :func:`one_tokenizer_thread_per_process`.

Other variables belong to a protocol or a single command and are read where that lives: the
launchers' rank layout (bertforge.distributed, ``SLURM_NTASKS``/``SLURM_PROCID`` also in
data/create.py's ``resolve_rank``, ``LOCAL_WORLD_SIZE`` in bertforge.memory's per-node
estimate), the job's id in an output folder's lock record (``SLURM_JOB_ID``,
``TORCHELASTIC_RUN_ID``: bertforge.outputs), the library variables a checkpoint records
as part of its numerics (bertforge.train.numerics, read to be recorded, never to decide),
``XDG_CACHE_HOME`` (where bertforge.model.gemm caches its per-machine choice, the XDG protocol), ``LOCAL_RANK`` as the default of the fine-tuning commands'
``--local_rank``, ``BERTFORGE_CACHE`` (cli/prepare_wiki_sample.py), and the serving side's
``BERTFORGE_TRITON_PYTHON``, ``BERTFORGE_REAL_DATA`` and the Triton access token (serving/).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from bertforge.config import CPU_GEMM_POLICIES
from bertforge.errors import ConfigError

__all__ = ["Environment", "read_environment", "one_tokenizer_thread_per_process", "use_cpu_gemm",
           "cpu_gemm_policy", "add_cpu_gemm_flag"]


@dataclass(frozen=True)
class Environment:
    cpu_gemm: str | None = None
    """BERTFORGE_CPU_GEMM: the fp32 CPU GEMM policy (None: unset)."""
    dist_timeout: float | None = None
    """BERTFORGE_DIST_TIMEOUT: collective timeout in seconds (None: unset)."""


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """The settings of ``environ`` (default ``os.environ``); ConfigError names a bad variable."""
    env = os.environ if environ is None else environ
    gemm = env.get("BERTFORGE_CPU_GEMM", "").strip().lower() or None
    if gemm is not None and gemm not in CPU_GEMM_POLICIES:
        raise ConfigError(f"environment variable BERTFORGE_CPU_GEMM={gemm!r}: expected one of "
                          f"{', '.join(CPU_GEMM_POLICIES)}")
    timeout = None
    raw = env.get("BERTFORGE_DIST_TIMEOUT", "").strip()
    if raw:
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise ConfigError(f"environment variable BERTFORGE_DIST_TIMEOUT={raw!r}: expected a "
                              "positive number of seconds")
    return Environment(cpu_gemm=gemm, dist_timeout=timeout)


def add_cpu_gemm_flag(add) -> None:
    """``--cpu_gemm`` on a parser or argument group (``add``: its ``add_argument``)."""
    add("--cpu_gemm", choices=CPU_GEMM_POLICIES, default=None,
        help="fp32 CPU matrix products: auto (the faster of oneDNN and MKL, measured once per machine "
             "and cached; a resume keeps its checkpoint's), onednn or aten (MKL); default: "
             "$BERTFORGE_CPU_GEMM, else auto")


def cpu_gemm_policy(flag: str | None, env: Environment) -> str:
    """The fp32 CPU GEMM policy: ``--cpu_gemm``, else ``BERTFORGE_CPU_GEMM``, else ``auto``."""
    return flag or env.cpu_gemm or "auto"


def use_cpu_gemm(env: Environment, flag: str | None = None) -> None:
    """Set this process's fp32 CPU GEMM policy (entry points that run a model outside a
    training run; the trainers take it from their PrecisionConfig). The backend is chosen at
    the first fp32 CPU product."""
    from bertforge.model import gemm

    gemm.configure(cpu_gemm_policy(flag, env))


def one_tokenizer_thread_per_process() -> None:
    """Make the ``tokenizers`` library single-threaded in this process and its children.

    With several worker processes each tokenizing, one thread each uses the cores without
    oversubscribing them, and processes forked after tokenizing do not trip the library's
    fork warning. Set before the first worker starts (``--num_workers`` > 1).
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
