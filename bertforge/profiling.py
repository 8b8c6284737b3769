"""``--profile``: a torch.profiler trace of a few training (or prediction) steps.

NVIDIA's ``run_pretraining.py`` and ``run_squad.py`` accept ``--profile`` (and
``--profile-start``) but never read them. Here they record a trace: the steps
``start + 1 .. start + steps`` (``start`` = ``--profile-start``, default 0: from the first
step) are recorded with :mod:`torch.profiler` (CPU, and CUDA when the run is on a GPU) and
written as a Chrome trace (open it in chrome://tracing, Perfetto or TensorBoard) to
``<directory>/profile_rank<R>.json``; one line names the file and the most expensive op.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["StepProfiler", "DEFAULT_STEPS"]

#: Steps recorded by default: enough for the steady state, small enough to open in a browser.
DEFAULT_STEPS = 5


class StepProfiler:
    """Call :meth:`step` with the number of completed steps after each step (and once with
    the starting count before the first); :meth:`close` when the loop ends.

    Args:
        directory: where the trace goes (created when needed).
        start: completed steps before recording starts.
        steps: steps recorded.
        rank: the process's rank (one trace per rank).
        enabled: False makes every call a no-op (``--profile`` not given).
    """

    def __init__(self, directory: str | os.PathLike, *, start: int = 0, steps: int = DEFAULT_STEPS,
                 rank: int = 0, enabled: bool = True, what: str = "steps") -> None:
        self.enabled = enabled
        self.directory = Path(directory)
        self.start, self.steps, self.rank, self.what = int(start), int(steps), rank, what
        self._prof: torch.profiler.profile | None = None
        self._first: int | None = None
        self._last: int | None = None
        self.path: Path | None = None

    def step(self, completed: int) -> None:
        if not self.enabled or self.path is not None:
            return
        if self._prof is None:
            if completed < self.start:
                return
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._prof = torch.profiler.profile(activities=activities, record_shapes=False)
            self._prof.__enter__()
            self._first = completed + 1
            return
        self._last = completed
        if completed - self._first + 1 >= self.steps:
            self._finish()

    def _finish(self) -> None:
        prof, self._prof = self._prof, None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"profile_rank{self.rank}.json"
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, self.path)
        events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
        top = max(events, key=lambda e: e.self_cpu_time_total, default=None)
        top_txt = f"; most self CPU time: {top.key} ({top.self_cpu_time_total / 1e3:.1f} ms)" if top else ""
        span = f"{self._first}-{self._last}" if self._last and self._last != self._first else f"{self._first}"
        if self.rank == 0:
            print(f"profile: {self.what} {span} recorded in {self.path}{top_txt}", flush=True)

    def close(self) -> None:
        """End a recording the loop stopped early (fewer steps than asked)."""
        if self._prof is not None:
            if self._last is None:  # started but no step completed: nothing worth writing
                self._prof.__exit__(None, None, None)
                self._prof = None
                return
            self._finish()
