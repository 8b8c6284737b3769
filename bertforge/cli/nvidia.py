"""NVIDIA's flags at the command-line edge, shared by the five entry points.

Every flag of NVIDIA's ``run_pretraining.py``, ``run_squad.py``, ``run_glue.py``,
``inference.py`` and ``create_pretraining_data.py`` (both generations; the tables are
tests/nvidia/flags.json) is accepted with NVIDIA's type and default. A flag acts as in
NVIDIA's code where it can; the few that cannot act here print ONE line when given::

    note: --use_env has no effect: the local rank is always read from LOCAL_RANK ...

never parsed and silently ignored. docs/nvidia.md lists every deliberate difference.

``--dry_run`` (ours, on every entry point): check the flags and the inputs they name, print
what would run, and stop before any training, data writing or model loading.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bertforge.errors import DataError

__all__ = ["given", "note", "add_dry_run", "check_model_files", "number", "argv_of", "on_rank0"]


def argv_of(argv: Sequence[str] | None) -> list[str]:
    """The command-line arguments ``main`` parses (``sys.argv[1:]`` when None)."""
    return list(sys.argv[1:] if argv is None else argv)


def given(argv: Sequence[str], *options: str) -> bool:
    """True when one of ``options`` is on the command line (``--flag`` or ``--flag=value``)."""
    return any(tok == o or tok.startswith(o + "=") for tok in argv for o in options)


def on_rank0() -> bool:
    """True in the first process of a launch (RANK / SLURM_PROCID unset or 0)."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "").strip()
        if value:
            return value == "0"
    return True


def note(option: str, why: str) -> None:
    """The one line a flag that cannot act here prints (on the first rank only)."""
    if on_rank0():
        print(f"note: {option} has no effect: {why}", flush=True)


def number(s: str) -> int | float:
    """NVIDIA declares some counts as float (``--max_steps 1e6``, ``--log_freq 1.0``): accept
    every float NVIDIA accepts; a whole number comes back as an int."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    return int(v) if v.is_integer() else v


def add_dry_run(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--dry_run", action="store_true",
                        help=f"check the flags and the files they name, print what would run, and "
                             f"exit before {what} (the scripts pass it with DRY_RUN=1)")


def check_model_files(args: argparse.Namespace) -> None:
    """A fine-tuning or inference dry run's check of the files that define the model:
    ``--vocab_file`` and ``--config_file`` (when given) and ``--init_checkpoint``."""
    for flag in ("vocab_file", "config_file"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise DataError(f"--{flag} {path}: no such file")
    if not Path(args.init_checkpoint).exists():
        raise DataError(f"--init_checkpoint {args.init_checkpoint}: no such file or directory")
