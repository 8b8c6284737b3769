"""Training checkpoints: atomic save, keep-last-k, safe load, exact-resume RNG state.

A pretraining checkpoint ``<output_dir>/ckpt_<N>.pt`` (``N`` = the global step, NVIDIA's
naming; in phase 2, ``N = phase1_end_step + step``) is one torch file holding a dict::

    model         state_dict with HF/NVIDIA parameter names
    optimizer     optimizer.state_dict()
    grad_scaler   GradScaler state (fp16) or {}
    lr_scheduler  scheduler.state_dict()
    step          optimizer steps taken in this phase
    phase         1 or 2
    global_step   N
    data          the data loader's position (its state_dict)
    rng           torch / numpy / python / cuda generator states (per rank)
    numerics      what decides the kernels each rank ran (torch, CPU, threads, GEMM backend,
                  library variables; bertforge.train.numerics), per rank
    config        the bert_config dict
    args          the run's arguments (plain values, for the record)

Files are written to a temporary name and renamed (a kill -9 mid-write leaves the previous
checkpoint intact and at most a ``.ckpt_<N>.pt.tmp-*`` file, removed by the next save).
They are read with ``torch.load(weights_only=True)``: a file whose unpickling would run code
is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertforge.errors import CheckpointError
from bertforge.files import atomic_path, torch_save

__all__ = ["save_checkpoint", "load_checkpoint", "find_latest", "list_checkpoints",
           "prune_checkpoints", "checkpoint_name", "capture_rng_state", "restore_rng_state",
           "unpickling_refusal"]

_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


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
    """Load a checkpoint dict safely (``weights_only=True``).

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


#: Python objects that old NVIDIA/NGC checkpoints pickle besides tensors (the training
#: arguments, numpy scalars): refused by the safe loader, yet harmless, so for these alone
#: the refusal points to ``convert --trust_checkpoint``.
BENIGN_GLOBALS = frozenset({
    "argparse.Namespace", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.dtype", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.ndarray", "_codecs.encode", "builtins.set", "builtins.slice",
})


def pickled_globals(path: str | os.PathLike, limit: int = 64 * 2**20) -> list[str]:
    """``module.name`` of every Python global a pickle (torch zip or legacy file) refers to,
    except torch's own and ``collections.OrderedDict``, in order; read without running it."""
    import io
    import pickletools
    import zipfile

    p = Path(path)
    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name)[:limit] if name else b""
        else:
            with open(p, "rb") as fh:
                data = fh.read(limit)
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    found: list[str] = []
    buf = io.BytesIO(data)
    for _ in range(4):  # a legacy file is several pickles in a row (magic, protocol, ...)
        strings: list[str] = []
        memo: dict = {}
        try:
            for op, arg, _pos in pickletools.genops(buf):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[arg] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "GLOBAL":
                    found.append(".".join(str(arg).split(" ", 1)))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # not (or no longer) a pickle: stop scanning
            break
        if buf.tell() >= len(data):
            break
    py2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol-2 pickles' names
    found = [py2.get(g.split(".", 1)[0], g.split(".", 1)[0]) + g[len(g.split(".", 1)[0]):]
             for g in found]
    return [g for g in found if not g.startswith("torch.") and g != "collections.OrderedDict"]


def unpickling_refusal(path: str | os.PathLike, e: BaseException, hint: str = "") -> CheckpointError:
    """The error for a file torch's ``weights_only`` unpickler refused, naming the cause.

    A pickle that names a Python global (``GLOBAL io.open``, ``GLOBAL posix.system``) would
    import and call it on load: that is how a malicious checkpoint runs code. The global is
    found by reading the pickle's opcodes (never by running it) and named. ``hint`` (the
    way to load a trusted file) is only given for the harmless objects old NGC checkpoints
    hold (:data:`BENIGN_GLOBALS`), never for anything else. Other refusals (an unknown
    opcode) mean the file is not a torch checkpoint or is damaged.
    """
    text = str(e)
    names = pickled_globals(path)
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", text)
    if names:
        bad = next((g for g in names if g not in BENIGN_GLOBALS), None)
        if bad is None:
            return CheckpointError(
                f"checkpoint {path} holds a pickled Python object (GLOBAL {names[0]}) that would "
                f"be imported and called on load, so it could run code; refused{hint}")
        return CheckpointError(
            f"checkpoint {path} holds a pickled Python object (GLOBAL {bad}) that would be "
            "imported and called on load, so it could run code; refused: torch.save never "
            "writes such a call, do not load this file (not with --trust_checkpoint either)")
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)", text, re.S)
    detail = " ".join((m.group(1) if m else (text.splitlines() or [type(e).__name__])[0]).split())
    detail = detail.split(". ")[0][:160]
    return CheckpointError(
        f"checkpoint {path} was refused by the safe loader: it is not a torch checkpoint or is "
        f"damaged (unpickling stopped: {detail})")


# -- RNG state for exact resume -------------------------------------------------------------
def capture_rng_state() -> dict:
    """Every generator a training step may draw from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
