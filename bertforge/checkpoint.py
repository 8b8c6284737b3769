"""Training checkpoints: the file and its schema, the named stateful parts of a run, the resume rules.

A pretraining checkpoint ``<output_dir>/ckpt_<N>.pt`` (``N`` = the global step, NVIDIA's naming;
in phase 2, ``N = phase1_end_step + step``) is one torch file holding a dict, format 2::

    format_version   2 (a file without it is format 0, upgraded when read)
    model            state_dict with HF/NVIDIA parameter names
    optimizer        optimizer.state_dict()
    lr_scheduler     scheduler.state_dict() (step count, base rates, warmup, total steps)
    grad_scaler      GradScaler state (fp16) or {}
    step             optimizer steps taken in this phase                 \\
    phase            1 or 2                                               | TrainState
    phase1_end_step  phase 1's last step (the offset of phase-2 numbers)  |
    global_step      N                                                   /
    skipped_steps    fp16 steps skipped on overflow (TrainStep's count)
    data             the data loader's position in the global sample order (one for all ranks)
    rng              per rank: torch / numpy / python / cuda generator states
    numerics         per rank: what decides the kernels it ran (torch, CPU, threads, GEMM
                     backend, library variables; bertforge.train.numerics)
    config           the bert_config dict
    run_config       the run's PretrainConfig as plain values (for the record)

Format 1 held one loader position per rank (a list in rank order, NVIDIA's rank-sharded
order), which the loader still reads (it continues that order, with any number of ranks);
format 0 (no ``format_version``) held the same parts as format 1, with the flags under
``args`` instead of ``run_config``. :func:`read_training_checkpoint` upgrades every older format to the current
one, so the rest of the code reads one schema.

Each part is saved from, and restored into, an object with ``state_dict()`` /
``load_state_dict()`` (torchtitan's checkpointer does the same): the model
(``bertforge.train.pretrain.ModelState``), the optimizer, the scheduler,
:class:`bertforge.precision.Precision` (the grad scaler), the data loader,
:class:`bertforge.rng.RNGState`, :class:`bertforge.train.numerics.NumericsRecord`, :class:`TrainState` and the training step (its skipped-step
count).
:class:`Checkpointer` writes and reads them; :func:`plan_start` holds the resume rules, including
the start of phase 2 from phase 1's last checkpoint.

Files are written to a temporary name and renamed (a kill -9 mid-write leaves the previous
checkpoint intact and at most a ``.ckpt_<N>.pt.tmp-*`` file, removed by the next save). They
are read with ``torch.load(weights_only=True)``: a file whose unpickling would run code is
refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertforge.config import CheckpointConfig, PhaseConfig
from bertforge.distributed import DistInfo, barrier, gather_objects
from bertforge.errors import CheckpointError, ConfigError
from bertforge.files import atomic_path, torch_save, unpickling_refusal
from bertforge.nvidia_checkpoint import (
    is_nvidia_checkpoint,
    master_weights,
    moments_by_name,
    nvidia_step,
)
from bertforge.rng import capture_rng_state, restore_rng_state

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "read_training_checkpoint",
           "upgrade", "find_latest", "list_checkpoints", "prune_checkpoints", "checkpoint_name",
           "capture_rng_state", "restore_rng_state", "TrainState",
           "Checkpointer", "StartPoint", "plan_start", "new_phase_optimizer_state"]

FORMAT_VERSION = 2
"""The schema version :class:`Checkpointer` writes (see the module docstring)."""

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


# -- files ------------------------------------------------------------------------------------
def checkpoint_name(global_step: int) -> str:
    return f"ckpt_{int(global_step)}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``ckpt_<N>.pt`` in ``directory``, by increasing ``N``."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the largest step in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (and stale temp files); return the deleted."""
    removed = []
    d = Path(directory)
    if keep_last > 0:
        for _, p in list_checkpoints(d)[:-keep_last]:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    for p in d.glob(".ckpt_*.pt.tmp-*"):  # left by a writer that was killed
        with contextlib.suppress(OSError):
            p.unlink()
    return removed


def save_checkpoint(path: str | os.PathLike, *, keep_last: int | None = None, **state: Any) -> Path:
    """Write ``state`` to ``path`` atomically; then keep only the ``keep_last`` newest checkpoints.

    Args:
        path: the final file name (``<dir>/ckpt_<N>.pt`` for pruning to apply).
        keep_last: number of ``ckpt_*.pt`` files to keep in ``path``'s directory (None: all).
        **state: the checkpoint dict (tensors, state_dicts and plain Python values).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch_save(state, tmp)
    if keep_last is not None:
        prune_checkpoints(path.parent, keep_last)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``), as it is in the file.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, not a dict, or would need
            arbitrary code to unpickle.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        with warnings.catch_warnings():  # a pickle that is no torch file: refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise unpickling_refusal(p, e) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {p} cannot be read (truncated or corrupt?): {msg}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, not a dict")
    return obj


# -- schema versions ----------------------------------------------------------------------------
def _upgrade_0_to_1(ck: dict) -> dict:
    """Format 0 (no version): the same parts; the flags under ``args``, optional bookkeeping."""
    ck.setdefault("phase1_end_step", 0)
    ck.setdefault("skipped_steps", 0)
    offset = int(ck["phase1_end_step"]) if int(ck["phase"]) == 2 else 0
    ck.setdefault("global_step", int(ck["step"]) + offset)
    ck.setdefault("grad_scaler", {})
    ck.setdefault("data", None)
    ck.setdefault("rng", None)
    ck.setdefault("numerics", None)
    ck.setdefault("run_config", None)
    return ck


def _upgrade_1_to_2(ck: dict) -> dict:
    """Format 1: ``data`` one position per rank. Kept as it is: the loader turns it into a global
    position itself (it needs the run's global batch to do so)."""
    return ck


_UPGRADES = {0: _upgrade_0_to_1, 1: _upgrade_1_to_2}
"""``_UPGRADES[v]`` turns a format-``v`` dict into format ``v + 1``."""


def upgrade(ck: dict, source: str | os.PathLike) -> dict:
    """A training checkpoint dict of any earlier format in the current one (in place)."""
    version = int(ck.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {source} has format {version}, newer than this bertforge "
                              f"reads ({FORMAT_VERSION}): update bertforge")
    while version < FORMAT_VERSION:
        ck = _UPGRADES[version](ck)
        version += 1
        ck["format_version"] = version
    return ck


def read_training_checkpoint(path: str | os.PathLike) -> dict:
    """A pretraining checkpoint, checked and upgraded to :data:`FORMAT_VERSION`."""
    return _training_checkpoint(load_checkpoint(path), path)


def _training_checkpoint(ck: dict, path: str | os.PathLike) -> dict:
    for key in ("model", "step", "phase"):
        if key not in ck:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not a training checkpoint")
    return upgrade(ck, path)


# -- the parts of a run that are not objects of their own -----------------------------------------
@dataclass
class TrainState:
    """Where the run is: its phase and the optimizer steps taken in it.

    Its ``state_dict`` keys are top-level keys of the checkpoint (``step``, ``phase``,
    ``phase1_end_step``, ``global_step``).
    """

    phase: int = 1
    step: int = 0
    """Optimizer steps taken in this phase (skipped fp16 steps not counted)."""
    phase1_end_step: int = 0
    """Phase 1's last step: phase-2 steps and checkpoint names are numbered after it."""

    def global_step(self) -> int:
        return self.step + (self.phase1_end_step if self.phase == 2 else 0)

    def state_dict(self) -> dict:
        return {"step": self.step, "phase": self.phase, "phase1_end_step": self.phase1_end_step,
                "global_step": self.global_step()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.phase = int(state["phase"])
        self.phase1_end_step = int(state["phase1_end_step"])


# -- saving and restoring a run -------------------------------------------------------------------
def new_phase_optimizer_state(opt_state: dict, lr: float) -> dict:
    """NVIDIA's phase-2 start: keep the moments, restart the step count and learning rate."""
    for g in opt_state["param_groups"]:
        if "step" in g:
            g["step"] = 0 if not torch.is_tensor(g["step"]) else torch.zeros_like(g["step"])
        g["lr"] = g["initial_lr"] = lr
    for st in opt_state["state"].values():  # torch AdamW keeps the step per parameter
        if "step" in st:
            st["step"] = torch.zeros_like(st["step"]) if torch.is_tensor(st["step"]) else 0
    return opt_state


class Checkpointer:
    """Saves the named parts of a run into ``ckpt_<N>.pt`` and restores them (one schema).

    Args:
        config: where and how often checkpoints are written, how many are kept.
        info: this process's rank layout; every rank calls :meth:`save` (it gathers the
            per-rank parts), rank 0 writes.
        parts: ``key -> part`` saved under ``key`` from rank 0 (``model``, ``optimizer``,
            ``lr_scheduler``, ``grad_scaler``, ``data``: the same on every rank).
        flat_parts: parts whose ``state_dict`` keys are top-level keys (TrainState, the
            training step's ``skipped_steps``).
        rank_parts: ``key -> part`` saved as a list over ranks (``numerics``, ``rng``).
        record: plain values written as they are (``config``, ``run_config``).
    """

    def __init__(self, config: CheckpointConfig, info: DistInfo, *, parts: dict[str, Any],
                 flat_parts: tuple = (), rank_parts: dict[str, Any] | None = None,
                 record: dict | None = None) -> None:
        self.config, self.info = config, info
        self.parts, self.flat_parts = parts, flat_parts
        self.rank_parts, self.record = rank_parts or {}, record or {}

    def path(self, global_step: int) -> Path:
        return Path(self.config.output_dir) / checkpoint_name(global_step)

    def save(self, global_step: int) -> Path | None:
        """Write ``ckpt_<global_step>.pt`` (unless --skip_checkpoint); every rank calls this."""
        per_rank = {key: gather_objects(part.state_dict(), self.info)
                    for key, part in self.rank_parts.items()}
        path = None
        if self.info.is_main and not self.config.skip_checkpoint:
            state: dict[str, Any] = {"format_version": FORMAT_VERSION}
            state.update({key: part.state_dict() for key, part in self.parts.items()})
            for part in self.flat_parts:
                state.update(part.state_dict())
            state.update(per_rank)
            state.update(self.record)
            path = save_checkpoint(self.path(global_step), keep_last=self.config.keep_checkpoints,
                                   **state)
        barrier()
        return path

    def restore(self, start: StartPoint, optimizer_name: str, learning_rate: float) -> None:
        """Bring the parts to ``start``: every part as saved for an exact resume (the model's
        weights are loaded when it is built), or only the optimizer's moments for a new phase.
        The random generators come last, so nothing draws from them before the first step."""
        ck = start.checkpoint
        if start.exact:
            for part in self.flat_parts:
                part.load_state_dict(ck)
            self._load_optimizer(ck["optimizer"], start.source, optimizer_name)
            self._set_schedule_position(int(ck["lr_scheduler"]["last_epoch"]))
            self.parts["grad_scaler"].load_state_dict(ck["grad_scaler"])
            if "data" in self.parts and ck.get("data") is not None:
                self.parts["data"].load_state_dict(ck["data"])
            for key in sorted(self.rank_parts, key=lambda k: k == "rng"):
                mine = self._this_rank(ck, key)
                if mine is not None:
                    self.rank_parts[key].load_state_dict(mine)
        elif start.moments is not None:
            self._load_optimizer(new_phase_optimizer_state(start.moments, learning_rate),
                                 start.source, optimizer_name)
            self._set_schedule_position(0)

    def _load_optimizer(self, state: dict, source: str | None, name: str) -> None:
        try:
            self.parts["optimizer"].load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state of {source} does not fit --optimizer {name} "
                                  f"and this model: {str(e).splitlines()[0]}") from None

    def _set_schedule_position(self, step: int) -> None:
        """The flags decide the schedule (as in NVIDIA's code), the checkpoint its position.
        Loading sets the rate of that step in the optimizer, whose loaded state held another."""
        scheduler = self.parts["lr_scheduler"]
        scheduler.load_state_dict({**scheduler.state_dict(), "last_epoch": step})

    def _this_rank(self, ck: dict, key: str):
        """This rank's entry of a per-rank part. Written by another number of ranks: the first
        rank's numerics record (what the resume is compared with); no random streams (per-rank
        streams cannot be remapped; fresh ones are fine)."""
        saved = ck.get(key)
        if not isinstance(saved, list) or not saved:
            return None
        if len(saved) != self.info.world_size:
            return saved[0] if key == "numerics" else None
        return saved[self.info.rank]


# -- resume rules -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartPoint:
    """What a run starts from, decided by :func:`plan_start`."""

    source: str | None = None
    """The checkpoint file or --init_checkpoint the weights come from (None: random init)."""
    checkpoint: dict | None = None
    """The (upgraded) checkpoint of --output_dir the run resumes or continues from."""
    exact: bool = False
    """Restore every part: an interrupted run continues as if it never stopped."""
    moments: dict | None = None
    """An optimizer state whose moments a new phase keeps (its step count and rate restart)."""
    moments_by_name: dict | None = None
    """NVIDIA's LAMB moments by parameter name (bertforge.nvidia_checkpoint), for a new phase
    to keep once the trainer has put them in its optimizer's order (then ``moments``)."""
    phase1_end_step: int = 0
    nothing_to_do: str | None = None
    """Set when the run has nothing to do (phase 1 over a phase-2 checkpoint)."""


def _resume_path(cp: CheckpointConfig) -> Path | None:
    out = Path(cp.output_dir)
    if not cp.resume_from_checkpoint:
        return None
    if cp.resume_step == -1:
        return find_latest(out)
    path = out / checkpoint_name(cp.resume_step)
    if not path.is_file():
        raise CheckpointError(f"--resume_step {cp.resume_step}: {path} does not exist")
    return path


def _from_checkpoint(path: Path, phase: PhaseConfig) -> StartPoint:
    raw = load_checkpoint(path)
    if is_nvidia_checkpoint(raw):
        return _from_nvidia_checkpoint(raw, path, phase)
    ck = _training_checkpoint(raw, path)
    ck_phase = int(ck["phase"])
    if phase.phase == 1:
        if ck_phase == 2:
            return StartPoint(nothing_to_do=f"phase 1 is complete: {path} is a phase-2 checkpoint")
        return StartPoint(str(path), ck, exact=True)
    if ck_phase == 2:
        if not phase.resume_phase2:
            raise CheckpointError(f"{path} is a phase-2 checkpoint; pass --resume_phase2 to continue it")
        if phase.phase1_end_step is not None:  # the flag renumbers the continued phase 2
            ck["phase1_end_step"] = phase.phase1_end_step
        return StartPoint(str(path), ck, exact=True, phase1_end_step=int(ck["phase1_end_step"]))
    end = phase.phase1_end_step if phase.phase1_end_step is not None else int(ck["step"])
    return StartPoint(str(path), ck, moments=ck["optimizer"], phase1_end_step=end)


def _from_nvidia_checkpoint(ck: dict, path: Path, phase: PhaseConfig) -> StartPoint:
    """NVIDIA's ckpt_<N>.pt in --output_dir (its training checkpoint or an NGC model-only
    file): phase 2 starts from it as NVIDIA's run_pretraining.py does (weights and LAMB
    moments kept, step and schedule anew; step numbers after --phase1_end_step, default N)."""
    if phase.phase == 1 or phase.resume_phase2:
        raise CheckpointError(
            f"{path} is NVIDIA's checkpoint: bertforge continues NVIDIA's runs from phase 2 on (its "
            "data position and RNG state are not in the file); start phase 2 from it with --phase2, "
            "or pass it as --init_checkpoint")
    end = phase.phase1_end_step if phase.phase1_end_step is not None else nvidia_step(path)
    return StartPoint(str(path), {"model": master_weights(ck)}, moments_by_name=moments_by_name(ck),
                      phase1_end_step=end)


def _from_init_checkpoint(init_checkpoint: str, phase: PhaseConfig) -> StartPoint:
    """--init_checkpoint's weights; in phase 2 also the optimizer moments of a bertforge
    training checkpoint (numbered after its step unless --phase1_end_step says otherwise) or
    of NVIDIA's (numbered after --phase1_end_step, default 0)."""
    end = phase.phase1_end_step or 0
    if phase.phase != 2 or not Path(init_checkpoint).is_file():
        return StartPoint(init_checkpoint, phase1_end_step=end)
    try:
        ck = load_checkpoint(init_checkpoint)
    except CheckpointError:
        return StartPoint(init_checkpoint, phase1_end_step=end)
    if is_nvidia_checkpoint(ck):
        moments = moments_by_name(ck) if ck.get("optimizer") else None
        return StartPoint(init_checkpoint, moments_by_name=moments, phase1_end_step=end)
    if "optimizer" not in ck:
        return StartPoint(init_checkpoint, phase1_end_step=end)
    if phase.phase1_end_step is None:
        end = int(ck.get("global_step", ck.get("step", 0)))
    return StartPoint(init_checkpoint, moments=ck["optimizer"], phase1_end_step=end)


def plan_start(cp: CheckpointConfig, phase: PhaseConfig, init_checkpoint: str | None) -> StartPoint:
    """Decide what the run starts from (NVIDIA's phase logic, made explicit).

    - phase 1 + --resume_from_checkpoint: the latest (or --resume_step) checkpoint in
      --output_dir, restored exactly; none there: --init_checkpoint or fresh weights.
    - phase 2 + --resume_from_checkpoint: a phase-1 checkpoint starts phase 2 (weights and
      optimizer moments kept; step, LR schedule, loss scale and data position start anew); a
      phase-2 checkpoint is continued exactly with --resume_phase2 and refused without it.
    - --init_checkpoint (no checkpoint in --output_dir): its weights; in phase 2 also its
      optimizer moments when it is a bertforge training checkpoint.
    - a fresh phase 1 into an --output_dir that holds checkpoints is refused, as NVIDIA does.
    """
    path = _resume_path(cp)
    if path is not None:
        return _from_checkpoint(path, phase)
    out = Path(cp.output_dir)
    latest = find_latest(out)
    if phase.phase == 1 and not cp.resume_from_checkpoint and latest is not None:
        raise ConfigError(f"--output_dir {out} already holds checkpoints ({latest.name}); "
                          "pass --resume_from_checkpoint or use another --output_dir")
    if init_checkpoint:
        return _from_init_checkpoint(init_checkpoint, phase)
    if phase.phase == 2:
        raise CheckpointError(f"--phase2 needs phase 1's checkpoint in {out} (with "
                              "--resume_from_checkpoint) or --init_checkpoint")
    return StartPoint()
