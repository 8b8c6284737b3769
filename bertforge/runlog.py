"""Run logging: dllogger-format JSON lines, a readable stdout line, TensorBoard when installed.

The JSON file (``--json-summary``) has one record per line, in NVIDIA dllogger's format, so
their parsing scripts read ours::

    DLLL {"timestamp": "1718000000.123", "datetime": "2024-06-10 08:00:00.123456",
          "elapsedtime": 1.23, "type": "LOG", "step": [0, 100], "data": {"average_loss": 7.1}}

``step`` is a list (NVIDIA logs ``(epoch, global_step)`` during training and ``()`` for the
final summary); metadata records are ``{"type": "METADATA", "metric": name, "metadata": {...}}``.
When the real ``dllogger`` package is importable its ``JSONStreamBackend`` writes the file;
otherwise this module writes the same format itself. Only rank 0 should create a Logger
with outputs (other ranks pass ``json_path=None, stdout=False``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Logger", "format_step", "read_dllogger", "require_tensorboard"]


def require_tensorboard(flag: str = "--tensorboard_dir") -> None:
    """ConfigError (one line) unless ``torch.utils.tensorboard`` can write: the
    ``tensorboard`` package (``pip install 'bertforge[tensorboard]'``) is installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from bertforge.errors import ConfigError

        raise ConfigError(f"{flag} needs the tensorboard package, which is not installed: "
                          "pip install 'bertforge[tensorboard]' (or leave the flag out)") from None


def format_step(step: Any) -> str:
    if isinstance(step, str):
        return step
    if isinstance(step, (list, tuple)):
        if len(step) == 0:
            return "final"
        if len(step) == 2:
            return f"epoch {step[0]} step {step[1]}"
        return " ".join(str(s) for s in step)
    return f"step {step}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.4e}"
        return f"{v:.4f}"
    return str(v)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # tensors and numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Infinity
    return v


class Logger:
    """Log training metrics to a dllogger JSON-lines file, stdout and TensorBoard.

    Args:
        json_path: the ``--json-summary`` file, or None for no file.
        stdout: print a one-line progress record per :meth:`log` call.
        append: append to an existing file (a resumed run keeps one loss curve).
        tensorboard_dir: also write TensorBoard scalars there (needs the ``tensorboard``
            package: a ConfigError without it, never a silent no-op).
    """

    def __init__(self, json_path: str | os.PathLike | None = None, stdout: bool = True,
                 append: bool = False, tensorboard_dir: str | os.PathLike | None = None) -> None:
        self.stdout = stdout
        self.start = time.time()
        self._fh = None
        self._dll = None
        self._tb = None
        if json_path is not None:
            path = Path(json_path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    import dllogger  # type: ignore[import-not-found]

                    self._dll = dllogger.JSONStreamBackend(dllogger.Verbosity.VERBOSE, str(path),
                                                           append=append)
                except OSError:
                    raise
                except Exception:  # not installed, or an incompatible version: write it ourselves
                    self._dll = None
                    self._fh = open(path, "a" if append else "w", encoding="utf-8", buffering=1)
            except OSError as e:
                from bertforge.errors import UserError

                raise UserError(f"cannot write the log {path}: {e.strerror}") from None
        if tensorboard_dir is not None:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    # -- records --------------------------------------------------------------------------
    def _write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write("DLLL " + json.dumps(record) + "\n")

    def _stamp(self) -> dict:
        now = time.time()
        return {"timestamp": str(now),
                "datetime": datetime.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S.%f"),
                "elapsedtime": now - self.start}

    def metadata(self, metric: str, meta: dict) -> None:
        """Describe a metric (unit, format), as ``dllogger.metadata`` does."""
        if self._dll is not None:  # dllogger's Backend API: (timestamp, elapsedtime, ...)
            self._dll.metadata(datetime.datetime.now(), time.time() - self.start, metric, meta)
        self._write({**self._stamp(), "type": "METADATA", "metric": metric, "metadata": meta})

    def log(self, step: Any = (), data: dict | None = None, verbosity: int = 0) -> None:
        """Record ``data`` (name -> number or string) at ``step``.

        Args:
            step: ``(epoch, global_step)`` during training, ``()`` for final values,
                ``"PARAMETER"`` for run parameters (dllogger's conventions).
            data: the values; tensors are converted with ``.item()``.
        """
        data = {k: _jsonable(v) for k, v in (data or {}).items()}
        step_json = list(step) if isinstance(step, (list, tuple)) else step
        if self._dll is not None:
            self._dll.log(datetime.datetime.now(), time.time() - self.start,
                          step if not isinstance(step, list) else tuple(step), data)
        self._write({**self._stamp(), "type": "LOG", "step": step_json, "data": data})
        if self.stdout:
            fields = " | ".join(f"{k} {_fmt_value(v)}" for k, v in data.items())
            print(f"{format_step(step)} | {fields}", file=sys.stdout, flush=True)
        if self._tb is not None and isinstance(step, (list, tuple)) and step:
            gstep = int(step[-1])
            for k, v in data.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, gstep)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()
        if self._dll is not None:
            self._dll.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_dllogger(path: str | os.PathLike) -> list[dict]:
    """The records of a dllogger JSON-lines file (lines without the ``DLLL`` prefix skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("DLLL "):
            out.append(json.loads(line[5:]))
    return out
