"""User-facing errors: one line, non-zero exit, no traceback.

Library code raises :class:`UserError` (or a subclass) for anything the user can fix:
a bad flag, a missing or malformed file. Entry points wrap ``main`` with
:func:`cli_entry`, which prints ``error: <message>`` on stderr and exits with status 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["UserError", "ConfigError", "CheckpointError", "DataError", "cli_entry"]

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """An error caused by input the user can fix. Its message is one line."""

    exit_code = 2


class ConfigError(UserError):
    """A malformed or inconsistent configuration (config file or flags)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not match the model."""


class DataError(UserError):
    """A data file (shard, vocab, dataset) that is missing or malformed."""


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def cli_entry(func: F) -> F:
    """Decorate a ``main(argv=None)``: turn UserError into a one-line message and exit 2.

    KeyboardInterrupt exits 130 without a traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as e:
            print(f"error: {_one_line(str(e))}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
