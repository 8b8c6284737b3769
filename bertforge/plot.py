"""Plot a dllogger JSON log: loss, learning rate, throughput, loss scale (and held-out accuracy).

    python -m bertforge.plot results/dllogger.json -o results/curves.png

Reads any dllogger-format file (``DLLL {json}`` lines, as bertforge and NVIDIA's scripts
write with ``--json-summary``), also one that a running job is still writing: a partial
last line is skipped. Training records are those whose ``step`` is a list
``[epoch, global_step]`` (or ``[global_step]``); the x axis is the last element. When a
run was resumed from a checkpoint the steps logged after that checkpoint appear twice;
the later value wins. A PARAMETER record carrying ``"phase": 2`` marks where phase 2
begins (a dashed line). Only the panels whose metric is in the log are drawn.

Needs matplotlib (``pip install 'bertforge[plot]'``); the PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.cli.args import ArgumentParser
from bertforge.errors import DataError, UserError, cli_entry
from bertforge.files import atomic_path

__all__ = ["PANELS", "Curves", "read_records", "extract_curves", "plot_curves", "build_parser",
           "main"]

#: (panel title, y label, candidate keys in order of preference, log-scale y)
PANELS: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("training loss", "loss", ("average_loss", "step_loss", "loss", "train_loss"), False),
    ("learning rate", "learning rate", ("learning_rate", "lr"), False),
    ("throughput", "sequences / s", ("sequences_per_second", "training_sequences_per_second",
                                     "throughput_train", "samples_per_second"), False),
    ("fp16 loss scale", "loss scale", ("loss_scale", "scale"), True),
    ("held-out MLM accuracy", "accuracy", ("eval_mlm_accuracy",), False),
)


def read_records(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The JSON records of a dllogger file and the number of unreadable lines skipped.

    Lines are ``DLLL {json}`` (a bare ``{json}`` line is accepted too); anything else,
    such as a last line the writer has not finished, is skipped and counted.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"log {p} does not exist" if not p.exists() else f"log {p} is not a file")
    records, bad = [], 0
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            if line.startswith("DLLL "):
                line = line[5:]
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


@dataclass
class Curves:
    """Per-metric curves: ``series[key] = (steps, values)`` sorted by step, one value per step.

    ``phase_starts`` holds the global steps after which a new phase began (phase 2 ...).
    """

    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    phase_starts: list[tuple[int, int]] = field(default_factory=list)  # (phase, first step - 1)
    final: dict = field(default_factory=dict)  # the last summary record (step [])

    def first_key(self, keys: tuple[str, ...]) -> str | None:
        """The first of ``keys`` that has a curve with at least one point."""
        return next((k for k in keys if self.series.get(k, ([], []))[0]), None)


def _number(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):  # dllogger writes these as strings
        return float(v)
    return None


def extract_curves(records: list[dict]) -> Curves:
    """Curves of every numeric metric logged at a training step (later records win)."""
    points: dict[str, dict[int, float]] = {}
    curves = Curves()
    last_step, phase = None, None
    for rec in records:
        if rec.get("type", "LOG") != "LOG":
            continue
        step, data = rec.get("step"), rec.get("data") or {}
        if not isinstance(data, dict):
            continue
        if step == "PARAMETER":
            new_phase = data.get("phase")
            if isinstance(new_phase, int) and phase is not None and new_phase != phase \
                    and last_step is not None:
                curves.phase_starts.append((new_phase, last_step))
            if isinstance(new_phase, int):
                phase = new_phase
            continue
        if isinstance(step, list) and not step:
            curves.final = data
            continue
        if not (isinstance(step, list) and isinstance(step[-1], int)):
            continue
        gstep = step[-1]
        last_step = gstep if last_step is None else max(last_step, gstep)
        for k, v in data.items():
            x = _number(v)
            if x is not None:
                points.setdefault(k, {})[gstep] = x
    for k, by_step in points.items():
        steps = sorted(by_step)
        curves.series[k] = (steps, [by_step[s] for s in steps])
    # keep one marker per phase (a resumed phase 2 logs its PARAMETER record again)
    seen: dict[int, int] = {}
    for ph, s in curves.phase_starts:
        seen.setdefault(ph, s)
    curves.phase_starts = sorted(seen.items(), key=lambda t: t[1])
    return curves


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib, which is not installed: "
                        "pip install 'bertforge[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, never a window (works without a display)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: Curves, out: str | os.PathLike, title: str | None = None) -> list[str]:
    """Draw one panel per metric present and write a PNG to ``out`` (atomically).

    Returns the metric keys drawn. Raises DataError when the log has no training curve.
    """
    panels = [(t, y, k, log) for t, y, keys, log in PANELS if (k := curves.first_key(keys))]
    if not panels:
        raise DataError("the log has no training records yet (no loss, learning rate, "
                        "throughput or loss scale at any step)")
    plt = _pyplot()
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.4 * rows), squeeze=False)
    for ax, (ptitle, ylabel, key, log) in zip(axes.flat, panels, strict=False):  # more axes than panels
        steps, values = curves.series[key]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        ax.set_title(f"{ptitle} ({key})", fontsize=10)
        ax.set_xlabel("global step")
        ax.set_ylabel(ylabel)
        if log and all(v > 0 for v in values):
            ax.set_yscale("log")
        for phase, s in curves.phase_starts:
            ax.axvline(s, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(f"phase {phase}", (s, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="grey")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return [k for _, _, k, _ in panels]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m bertforge.plot",
        description="Plot loss, learning rate, throughput and loss scale from a dllogger JSON "
                    "log (also one a running job is still writing).")
    p.add_argument("log", help="the dllogger file (--json-summary of a run)")
    p.add_argument("-o", "--output", default=None,
                   help="PNG to write (default: the log's name with .png)")
    p.add_argument("--title", default=None, help="figure title (default: the log's path)")
    return p.check(outputs={"output": "file"})


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = Path(args.log)
    out = Path(args.output) if args.output else log.with_suffix(".png")
    if out.suffix.lower() != ".png":
        raise UserError(f"-o {out}: the output must be a .png file")
    records, bad = read_records(log)
    curves = extract_curves(records)
    try:
        drawn = plot_curves(curves, out, title=args.title or str(log))
    except DataError as e:
        raise DataError(f"{log}: {e}") from None
    steps = curves.series[drawn[0]][0]
    note = f" ({bad} unreadable line(s) skipped)" if bad else ""
    print(f"plotted {', '.join(drawn)} over steps {steps[0]}..{steps[-1]} "
          f"from {log}{note} -> {out}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    main()
